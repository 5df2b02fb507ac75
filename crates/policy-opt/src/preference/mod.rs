//! Offline preference optimisation of a policy: recipe → pairs → encoding → [`task::DpoTask`]
//! → the epoch driver → the policy folder, metrics, curves and a summary.
//!
//! The objective ([`PreferenceObjective`], the `[objective]` section) is any combination of
//! TRL's DPO loss types ([`rm_losses::preference::DpoConfig`], field names as TRL's
//! `DPOConfig`), the reference-free ORPO, CPO, SimPO/AlphaPO, CoPG and A-LoL on scored
//! pairs, SELM and T-REG (with what they add to each pair from the reference when the data is
//! loaded: [`reference_samples`], [`token_rewards`]), RRPO and AlignDistil (on the
//! completions' full-vocabulary logits: [`vocab_level`]), PRO on rankings ([`listwise`]), or
//! the unpaired KTO, APO-zero unpaired and BCO ([`unpaired::UnpairedTask`]). The DPO reference is the policy before training: with LoRA the same module with
//! its adapters switched off ([`rm_core::policy::reference_policy`], no second copy of the
//! weights), without LoRA a frozen snapshot.

pub mod augment;
pub mod data;
pub mod eval;
pub mod judge;
pub mod listwise;
pub mod multi_head;
pub mod objective;
pub mod recipe;
pub mod reference_cache;
pub mod reference_samples;
pub mod scored;
pub mod task;
pub mod token_rewards;
pub mod train;
pub mod unpaired;
pub mod vocab_level;

pub use eval::{ImplicitRewardScorer, PolicyEvalRequest, evaluate_policy};
pub use judge::{JudgeOutcome, JudgeRequest, judged_win_rate};
pub use multi_head::{MahDpoRecipe, train_mah_dpo};
pub use objective::PreferenceObjective;
pub use recipe::{PoRecipe, PreferenceRecipe};
pub use train::{PreferenceReport, train_po, train_preference_policy};
