//! # rm-pipeline
//!
//! Reward-model pipelines as library calls, so the command line only parses and prints:
//! - [`train::train_reward_model`]: recipe → data → encoding → [`train::RewardTask`] on the
//!   shared engine ([`rm_core::train`]) → the final model's RewardBench-style report →
//!   normalization stored with the model → report, summary, curves;
//! - [`eval::evaluate_reward_model`]: a report of a trained model on reward-bench v1/v2 or
//!   pairs JSONL, or on HH-RLHF;
//! - [`score::score_rows`]: rewards of JSONL rows (raw, normalized, log-sigmoid);
//! - [`ensemble::train_ensemble`] / [`ensemble::evaluate_ensemble`]: reward-model ensembles
//!   (a recipe's `[ensemble]` section), each member and each aggregation evaluated;
//! - [`collaborative::train_collaborative`]: two reward models trained by peer review with a
//!   curriculum (a recipe's `[collaborative]` section), saved as a two-member ensemble;
//! - [`math_probe::probe_math`]: the RewardMATH-style one-correct-vs-many probe on GSM8K;
//! - [`goal_conditioned`]: a recipe's `[goal_conditioned]` section, a contrastive term on the
//!   reward model's hidden states beside the pairwise objective;
//! - [`more`]: a recipe's `[more]` section, several preference sets weighted by MORE;
//! - [`strength`]: a recipe's `[preference_strength]` section, an ensemble's vote on each
//!   training pair turned into label flips and adaptive margins before training.
//!
//! Why a crate of its own: the pipeline needs the objectives (`rm-losses`) and the RewardBench
//! report (`bench-harness`), and `bench-harness` itself stands on `rm-core`, so neither
//! `rm-core` nor the CLI is the right home; DPO (`policy-opt`) and PRM (`rm-process`) pipelines
//! sit in their crates the same way, all on the one trainer in `rm_core::train`.

pub mod collaborative;
pub mod ensemble;
pub mod eval;
pub mod goal_conditioned;
pub mod math_probe;
pub mod more;
pub mod recipe;
pub mod reports;
pub mod score;
pub mod strength;
pub mod train;

pub use recipe::{DataConfig, EvalConfig, PairShape, PairSource, RewardRecipe};
pub use train::{TrainReport, TrainRequest, train_reward_model};
