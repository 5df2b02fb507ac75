//! Online policy optimisation (PPO, GRPO and their variants): rollouts sampled from the policy
//! being trained, scored by reward functions, turned into advantages by a named estimator and
//! optimised with a named policy loss.
//!
//! - [`algos`]: verl's `core_algos` as a registry of pure functions — advantage estimators,
//!   policy losses, KL estimators, the clipped value loss and loss aggregation;
//! - [`rewards`]: reward functions over prompt + completion (model-based, verifiable, rule-based),
//!   composable with weights; a failing function masks its sample instead of stopping the run;
//! - [`prompts`], [`rollout`], [`task`], [`train`]: prompt sources, sampling and log-probs, the
//!   rollout task of the training engine, and `plumb train-rl` end to end ([`recipe`]);
//!   [`importance`] and [`filtration`]: the sampler correction and PF-PPO's row selection;
//!   [`implicit_prm`]: PRIME's implicit process reward model, updated online;
//! - [`step_labels`]: Math-Shepherd's Monte-Carlo step labels from the policy's own rollouts
//!   (`plumb label-steps`), the step-labelled JSONL `plumb train-prm` reads.

pub mod algos;
pub mod filtration;
pub mod implicit_prm;
pub mod importance;
pub mod orchestrate;
pub mod prompts;
pub mod recipe;
pub mod rewards;
pub mod rollout;
pub mod scir;
pub mod step_labels;
pub mod task;
pub mod train;

pub use recipe::RlRecipe;
pub use train::{RlReport, train_rl_policy};
