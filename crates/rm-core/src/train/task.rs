//! What a trainer needs from a task: [`TrainTask`] (loss, evaluation, saving, its own state),
//! and what each driver adds: [`EpochTask`] (a fixed dataset) and [`RolloutTask`] (a buffer
//! collected from the current policy).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};
use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::metrics::{LossOutput, StepValues};

/// An evaluation: named metrics and the score by which the best model is kept (higher is
/// better).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub metrics: BTreeMap<String, f64>,
    pub score: f64,
}

/// The part every driver uses.
pub trait TrainTask<M: Module> {
    /// The loss of the items `items` (indices into the dataset or the rollout buffer) with the
    /// weight its mean is over, and metrics to log.
    fn loss(&mut self, model: &M, items: &[usize]) -> Result<LossOutput>;

    /// Evaluates (the trainer passes a frozen copy).
    fn evaluate(&mut self, model: &M) -> Result<Evaluation>;

    /// Saves a usable model into `dir` (e.g. a reward-model folder); the trainer swaps the folder
    /// in atomically.
    fn save_model(&self, model: &M, dir: &Path) -> Result<()>;

    /// The task's own state that a resume must restore (a KL controller, a running reward mean,
    /// …); saved with every checkpoint. Stateless tasks keep the default (`null`).
    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Restores what [`TrainTask::state`] returned.
    fn restore_state(&mut self, state: serde_json::Value) -> Result<()> {
        if !state.is_null() {
            bail!("the checkpoint holds task state, but this task keeps none");
        }
        Ok(())
    }

    /// Tensors of the task's state too large for [`TrainTask::state`] (a reference model that
    /// changes during the run): written into the checkpoint folder `dir`, as part of the same
    /// all-or-nothing checkpoint. Default: none.
    fn save_state_files(&self, dir: &Path) -> Result<()> {
        let _ = dir;
        Ok(())
    }

    /// Reads what [`TrainTask::save_state_files`] wrote, from the checkpoint folder `dir`, when a
    /// run resumes.
    fn load_state_files(&mut self, dir: &Path) -> Result<()> {
        let _ = dir;
        Ok(())
    }

    /// Whether a step whose micro-batches all carry zero weight is skipped (logged as
    /// `"skipped": true`, no update) rather than an error: online tasks whose masks can empty a
    /// whole step (every group tied, every completion truncated). Default: an error.
    fn allows_empty_steps(&self) -> bool {
        false
    }

    /// Called after every optimizer step with the updated model and the step's values as read
    /// on the host (e.g. to adapt a KL coefficient, or refresh a reference from the policy);
    /// default: nothing.
    fn after_step(&mut self, model: &M, values: &StepValues) -> Result<()> {
        let _ = (model, values);
        Ok(())
    }
}

/// A task over a fixed dataset (reward models, DPO, PRMs): the epoch driver shuffles its
/// `num_examples()` indices per epoch.
pub trait EpochTask<M: Module>: TrainTask<M> {
    /// Number of training examples.
    fn num_examples(&self) -> usize;
}

/// What one collection produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Collected {
    /// Items in the buffer (must equal [`RolloutTask::buffer_size`]).
    pub items: usize,
    /// Values to log with the collection (mean reward, lengths, …).
    pub metrics: BTreeMap<String, f64>,
}

/// A task whose data comes from the policy being trained (PPO, GRPO, …): the rollout driver
/// calls [`RolloutTask::collect`] with a frozen copy of the current policy, then runs
/// `ppo_epochs` passes of optimizer steps over the buffer, then collects again.
pub trait RolloutTask<M: Module>: TrainTask<M> {
    /// Items every collection yields (fixes the number of optimizer steps per iteration).
    fn buffer_size(&self) -> usize;

    /// Fills the buffer for iteration `iteration` (0-based) from `policy`; all randomness must
    /// come from `seed` (derived by the driver from the run's seed and the iteration), so a
    /// resumed run collects exactly what the uninterrupted one did.
    fn collect(&mut self, policy: &M, iteration: u64, seed: u64) -> Result<Collected>;
}
