//! One training engine for every trainer — reward models, DPO, PRMs, PPO/GRPO — made of pieces:
//!
//! - [`config::TrainConfig`]: the `[train]` section (batch geometry, AdamW, schedule, parameter
//!   groups, cadence, run folder), validated before anything runs;
//! - [`optimizer`]: AdamW with global-norm clipping and parameter groups by path pattern (no
//!   decay on biases and norms by default, an own learning rate per group);
//! - [`schedule`]: warm-up + linear/cosine/constant decay;
//! - [`task`]: what a task gives the trainer — the loss of a micro-batch **with its own
//!   weight** (examples, sequences or tokens, so accumulation is exact for sequence-mean and
//!   token-mean losses alike), evaluation, its model folder, and its own resumable state;
//! - [`metrics`]: named values per step, read from the device once per optimizer step, and the
//!   JSONL log (`metrics.jsonl`, the contract plots and reports read);
//! - [`run_dir`]: the run folder — a lock, no silent overwrite, the run's identity checked on
//!   resume, all-or-nothing checkpoints (`last/` with a checksummed manifest, swapped in by
//!   renames) and atomically swapped model folders (`best/`, `final/`);
//! - two drivers over one step machinery: [`epoch`] (fixed datasets) and [`rollout`]
//!   (`collect(policy) → buffer → ppo_epochs × minibatches`, then collect again).
//!
//! Dropout is seeded per micro-batch from `(seed, step, micro-batch)` and rollouts per iteration
//! from `(seed, iteration)`, so a resumed run reproduces the uninterrupted one exactly. A NaN or
//! infinite loss stops the run with an error naming the step; nothing already saved is touched.
//!
//! Data parallelism plugs in at [`session::accumulate`]: it is the only place gradients are
//! produced (a DDP strategy would all-reduce the accumulated gradients and the step's weight
//! there before the update).

pub mod config;
pub mod epoch;
pub mod metrics;
pub mod optimizer;
mod progress;
pub mod rollout;
pub mod run_dir;
pub mod schedule;
pub mod session;
pub mod task;
pub mod trainable;

use burn::tensor::Device;

pub use config::TrainConfig;
pub use epoch::{epoch_order, step_examples};
pub use metrics::{LossOutput, Metric, StepValues};
pub use rollout::RolloutConfig;
pub use run_dir::{RunDir, RunMode};
pub use session::RunState;
pub use task::{Collected, EpochTask, Evaluation, RolloutTask, TrainTask};
pub use trainable::{
    combine_params, load_all_params, load_trainable, save_all_params, save_trainable,
};

/// Runs training loops ([`Trainer::run_epochs`], [`Trainer::run_rollouts`]).
pub struct Trainer {
    pub config: TrainConfig,
    /// The autodiff device the model lives on.
    pub device: Device,
    /// Show a progress bar (else a line every few steps on stderr when it is not a terminal).
    pub progress: bool,
}

/// The result of a training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// Optimizer steps done (in all invocations of the run).
    pub steps: u64,
    pub final_eval: Option<Evaluation>,
    pub best_score: Option<f64>,
    pub best_step: Option<u64>,
    /// Examples per second over the training steps of this invocation (evaluation excluded).
    pub examples_per_second: f64,
    pub train_seconds: f64,
}

/// The fields of `[train]` a resumed run may change without changing what it computes.
pub const RESUMABLE_TRAIN_FIELDS: &[&str] = &[
    "train.out_dir",
    "train.max_steps",
    "train.eval_every",
    "train.save_every",
];

#[cfg(test)]
mod tests;
