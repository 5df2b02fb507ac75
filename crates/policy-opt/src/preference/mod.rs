//! Offline preference optimisation of a policy: recipe → pairs → encoding → [`task::DpoTask`]
//! → the epoch driver → the policy folder, metrics, curves and a summary.
//!
//! The objective is any combination of TRL's DPO loss types
//! ([`rm_losses::preference::DpoConfig`], the `[objective]` section, field names as TRL's
//! `DPOConfig`). The reference is the policy before training: with LoRA the same module with
//! its adapters switched off ([`rm_core::policy::reference_policy`], no second copy of the
//! weights), without LoRA a frozen snapshot.

pub mod data;
pub mod eval;
pub mod recipe;
pub mod task;
pub mod train;

pub use eval::{ImplicitRewardScorer, PolicyEvalRequest, evaluate_policy};
pub use recipe::PreferenceRecipe;
pub use train::{PreferenceReport, train_preference_policy};
