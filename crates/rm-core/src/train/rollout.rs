//! The rollout driver: `collect(policy) → buffer`, then `ppo_epochs` passes over the buffer in
//! optimizer steps of `batch_size` items (a fresh seeded shuffle per pass), then collect again
//! with the updated policy. PPO, GRPO and their variants train through it.
//!
//! Evaluation (`eval_every`) and checkpoints (`save_every`) count iterations here, and happen
//! at iteration boundaries only, so a checkpoint never holds a half-used buffer: a resumed run
//! re-collects exactly the next iteration (the task's collection is seeded by the driver from
//! `(seed, iteration)`; its own state comes back through [`super::TrainTask::restore_state`]).
//! `max_steps` is rounded up to whole iterations.

use anyhow::{Result, bail};
use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::epoch::epoch_order;
use super::run_dir::RunDir;
use super::session::{Session, mix};
use super::task::RolloutTask;
use super::{TrainOutcome, Trainer};

/// The `[rollout]` section of an online-RL recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// Collections (each followed by `ppo_epochs` passes over its buffer).
    pub iterations: u64,
    /// Passes over each buffer.
    #[serde(default = "one")]
    pub ppo_epochs: usize,
}

fn one() -> usize {
    1
}

impl RolloutConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        if self.iterations == 0 {
            bail!("rollout.iterations must be at least 1");
        }
        if self.ppo_epochs == 0 {
            bail!("rollout.ppo_epochs must be at least 1");
        }
        Ok(())
    }
}

/// The collection seed of iteration `iteration`.
pub fn collect_seed(seed: u64, iteration: u64) -> u64 {
    mix(seed ^ mix(iteration.wrapping_add(0x5851_F42D_4C95_7F2D)))
}

impl Trainer {
    /// Trains `model` online: see the module docs. When `run` resumes, the model passed must be
    /// built as at the start.
    pub fn run_rollouts<M: Module>(
        &self,
        run: &RunDir,
        model: M,
        task: &mut dyn RolloutTask<M>,
        rollout: &RolloutConfig,
    ) -> Result<(M, TrainOutcome)> {
        let config = &self.config;
        config.validate()?;
        rollout.validate()?;
        let n = task.buffer_size();
        if n == 0 {
            bail!("the rollout buffer is empty (buffer_size 0)");
        }
        let steps_per_iteration = (n.div_ceil(config.batch_size) * rollout.ppo_epochs) as u64;
        let iterations = match config.max_steps {
            Some(m) => rollout.iterations.min(m.div_ceil(steps_per_iteration)),
            None => rollout.iterations,
        };
        let schedule_steps = steps_per_iteration
            .checked_mul(rollout.iterations)
            .filter(|&s| s <= super::config::MAX_STEPS)
            .ok_or_else(|| anyhow::anyhow!("rollout.iterations is too large"))?;
        let total = steps_per_iteration * iterations;
        let (mut session, mut model) =
            Session::start(self, run, model, task, total, schedule_steps)?;
        while session.state.iteration < iterations {
            let iteration = session.state.iteration;
            let seed = collect_seed(config.seed, iteration);
            session.bar.message(&format!(
                "collecting rollouts (iteration {})",
                iteration + 1
            ));
            let collected = task.collect(&model.valid(), iteration, seed)?;
            if collected.items != n {
                bail!(
                    "iteration {}: the collection yielded {} items, the task declared {n}",
                    iteration + 1,
                    collected.items
                );
            }
            let mut record = serde_json::json!({
                "kind": "collect", "step": session.state.step, "iteration": iteration + 1,
            });
            for (k, v) in &collected.metrics {
                record[k] = serde_json::json!(v);
            }
            session.log(&record)?;
            for pass in 0..rollout.ppo_epochs {
                let order = epoch_order(n, seed, pass as u64);
                for items in order.chunks(config.batch_size) {
                    let mut extra = serde_json::Map::new();
                    extra.insert("iteration".into(), serde_json::json!(iteration + 1));
                    model = session.step(model, task, items, extra)?;
                }
            }
            session.state.iteration += 1;
            let done = session.state.iteration;
            session.after_unit(done, done == iterations, &model, task)?;
        }
        let outcome = session.finish(&model, task)?;
        Ok((model, outcome))
    }
}
