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
//! Preference optimisation of a policy ([`preference`]), on per-sequence / per-token log-probs:
//! - TRL's DPO losses ([`preference::dpo`]): the 15 `loss_type`s of `DPOTrainer` (sigmoid,
//!   hinge, IPO, EXO, NCA, robust, BCO-pair, SPPO-hard, AOT, AOT-unpaired, APO-zero/down,
//!   DiscoPOP, SFT, sigmoid-norm), combinable with weights, with f-divergence scores, LD-DPO and
//!   WPO, behind [`DpoConfig`] (TRL's field names); the TR-DPO reference refresh;
//! - unpaired feedback ([`preference::unpaired`]): KTO, APO-zero unpaired, BCO;
//! - reference-free ([`preference::reference_free`]): ORPO, CPO, SimPO, AlphaPO; and RPO;
//! - listwise ([`preference::pro`]): PRO with reward-gap temperatures and its SFT term;
//! - self-play against a preference oracle ([`preference::dno`]): DNO and DNO-Prct, oracle
//!   win-rates and best/worst pair selection; optimistic exploration ([`preference::selm`]):
//!   SELM;
//! - token-level ([`preference::token_level`]): T-REG, RRPO, AlignDistil;
//! - offline policy gradients on scored samples ([`preference::offline_pg`]): CoPG, A-LoL;
//! - reward filtering and relabelling ([`preference::filtering`]): RAFT's top-k selection,
//!   SuperHF's SFT + KL loss, reward-augmented DPO's reward-conditioned pairs.
//!
//! The policy losses and advantage estimators of PPO and GRPO arrive with the
//! policy-optimisation issues.

mod checks;
mod error;
pub mod general_preference;
pub mod listwise;
mod objective;
pub mod pair_classifier;
pub mod pairwise;
pub mod preference;
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
pub use preference::{
    AlignDistilParams, AlolVariant, BcoOutput, Completions, DpoBatch, DpoConfig, DpoLossType,
    DpoOutput, FDivergence, KtoOutput, KtoParams, PreferencePair, RaftKeep, RrpoBatch, RrpoOutput,
    RunningMean, ScoredPair, ScoredSamples, TokenLogps, UnpairedLogps, aligndistil_loss, alol_loss,
    alphapo_loss, apo_zero_unpaired_loss, bco_loss, condition_on_score, copg_loss, cpo_loss,
    dno_loss, dno_prct_loss, dno_select_pairs, dno_win_rates, dpo_loss, kto_loss, orpo_loss,
    pro_loss, raft_select, refresh_reference, reward_augment, rpo_loss, selm_loss, simpo_loss,
    superhf_loss, treg_loss,
};
