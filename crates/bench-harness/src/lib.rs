//! # bench-harness
//!
//! Evaluation of reward models: RewardBench-style accuracy reports (v1 sections and v2 best-of-4
//! scoring) over reward-bench JSONL layouts and plumbline's datasets, with a [`Scorer`] trait so
//! that any model — including a DPO policy scored by its implicit reward — plugs in.
//!
//! - [`data`]: v1 / v2 / generic-pairs JSONL readers (strict and lenient) and HH-RLHF rows;
//! - [`v1`]: pairwise accuracy, sections weighted by reward-bench's `EXAMPLE_COUNTS`
//!   ([`sections`]), overall;
//! - [`v2`]: best-of-N with the tie penalty, the Ties subset's composite score, overall;
//! - [`eval`]: the [`Scorer`] trait, [`evaluate_v1`] and [`evaluate_v2`];
//! - [`implicit`]: DPO implicit rewards (`reference`, `sum`, `avg`, `norm`);
//! - [`reward_model_scorer`]: plumbline reward models as a [`Scorer`];
//! - [`robustness`]: probes of scores on pairs: length bias, calibration (ECE), consistency
//!   under meaning-preserving edits;
//! - [`math_probe`]: the RewardMATH-style one-correct-vs-many probe on GSM8K;
//! - [`contrast`]: contrast instructions (response and instruction consistency).
//!
//! The scoring itself works on `f32` scores; no tensors here. Every formula's source in
//! allenai/reward-bench is named in its module's docs.

pub mod contrast;
pub mod data;
pub mod eval;
pub mod implicit;
pub mod math_probe;
pub mod reward_model_scorer;
pub mod robustness;
pub mod sections;
pub mod v1;
pub mod v2;

pub use data::{Loaded, V1Row, V2Row};
pub use eval::{Progress, ScoreItem, Scorer, evaluate_v1, evaluate_v2};
pub use implicit::{ImplicitRewardMode, SequenceLogProbs, implicit_reward, implicit_rewards};
pub use reward_model_scorer::{RewardModelScorer, ScoreTransform};
pub use v1::{V1Report, V1Scored, v1_report};
pub use v2::{TiesScore, V2Report, V2Scored, best_of_n, ties_score, v2_report};
