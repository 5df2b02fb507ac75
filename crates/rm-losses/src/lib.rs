//! # rm-losses
//!
//! Every plumbline objective as a documented pure function over burn tensors, each with its
//! formula in plain math and the paper it comes from. Every function checks its inputs and
//! returns a [`LossError`] for an empty batch, mismatched shapes or an out-of-range
//! hyper-parameter; none panics on bad input.
//!
//! Reward-model objectives (this crate so far):
//! - scalar pairwise ([`pairwise`]): Bradley–Terry, with per-pair margins, reward centering,
//!   label smoothing; distillation of soft preference labels; [`pairwise_accuracy`];
//! - listwise ([`listwise`]): Plackett–Luce over rankings (PRO), with masks for short rankings;
//! - pair classifiers ([`pair_classifier`]): PairRM's order-swap-augmented loss;
//! - the General Preference Model ([`general_preference`]): skew-symmetric scores of preference
//!   embeddings, which fit intransitive preferences;
//! - [`PairwiseObjective`]: the scalar pairwise objectives as a serde-tagged enum that trainers
//!   select from a recipe's `[objective]` table.
//!
//! The DPO family and the policy losses and advantage estimators of PPO and GRPO arrive with the
//! policy-optimisation issues.

mod checks;
mod error;
pub mod general_preference;
pub mod listwise;
mod objective;
pub mod pair_classifier;
pub mod pairwise;
#[cfg(test)]
mod testing;

pub use error::LossError;
pub use general_preference::{
    general_preference_loss, general_preference_probability, general_preference_score,
};
pub use listwise::plackett_luce_loss;
pub use objective::{PairwiseObjective, PairwiseRewards};
pub use pair_classifier::pairwise_preference_swap_loss;
pub use pairwise::{
    bradley_terry_loss, bradley_terry_margin_loss, label_smoothed_bradley_terry_loss,
    pairwise_accuracy, preference_distillation_loss, reward_centering_penalty,
};
