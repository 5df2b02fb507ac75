//! # rm-process
//!
//! Process reward models (PRMs): step-level scoring of reasoning chains.
//!
//! - [`data`]: PRM800K ratings / generic step labels → binary step targets ([`data::NeutralAs`]
//!   for rating 0), the dev split by problem;
//! - [`model`]: [`ProcessRewardModel`] — a reward-model backbone (decoder + LoRA, or encoder)
//!   with a one-logit head read at every step end in one pass ([`model::PrmShape::OnePass`]) or
//!   per (problem, previous steps, step) window ([`model::PrmShape::Window`]); `load`,
//!   `score_steps`, `score_batch`;
//! - [`train`]: the recipe and [`train::train_prm`] on [`rm_core::train::Trainer`] (masked
//!   binary cross-entropy at the step ends);
//! - [`step_pairs`]: step-level reward models — Bradley–Terry on sibling steps after one prefix;
//! - [`aggregate`]: step scores → a solution score (min, product, last, mean, Σ log p);
//! - [`metrics`]: AUROC, first-error F1, best-of-N selection and (weighted) majority votes;
//! - [`bon`]: best-of-N candidate sets, from files or built from PRM800K's rated alternatives;
//! - [`eval`]: `eval-prm`'s report;
//! - [`final_answer`]: final answers of math completions against a gold answer;
//! - [`export`]: PRM folders → TRL's PRM layout (`LlamaForTokenClassification`, 2 labels).

pub mod aggregate;
pub mod bon;
pub mod data;
pub mod eval;
pub mod export;
pub mod final_answer;
pub mod metrics;
pub mod model;
pub mod step_pairs;
pub mod train;

pub use aggregate::Aggregation;
pub use model::{PrmShape, ProcessRewardModel};
pub use rm_pipeline::TrainRequest;
pub use train::{PrmRecipe, PrmTrainReport, train_prm};

#[cfg(test)]
mod tests;
