//! Advantage estimators, policy losses, KL estimators, value loss and loss aggregation (verl core_algos).
//!
//! verl's `core_algos` as a registry of pure functions, selected by name from recipes (serde
//! data with tagged enums):
//! - [`advantage`]: [`AdvantageEstimator`] (GAE, GRPO / Dr. GRPO, RLOO, REINFORCE++ and its
//!   baseline form, ReMax, OPO) and [`compute_advantages`], host-side on `[B][T]` rows;
//! - [`policy_loss`](mod@policy_loss): [`PolicyLoss`] (PPO clip with clip-higher and dual clip,
//!   GSPO, CISPO) on burn tensors, with verl's metrics; [`pairwise`]: P3O's pairwise loss;
//! - [`aggregation`]: [`LossAggregation`] and [`aggregate`], whose `(mean, weight)` compose
//!   exactly over micro-batches;
//! - [`kl`]: [`KlEstimator`] (k1, abs, k2, k3), the in-reward penalty [`apply_kl_penalty`] and
//!   the fixed / adaptive [`KlController`];
//! - [`calibration`]: InfAlign's calibrated (reference-quantile) reward and its transforms;
//! - [`consistency`]: CREAM's consistency rate (Kendall's τ-b between two iterations' rankings);
//! - [`value_loss`]: the clipped value loss; [`entropy`]: per-token entropy from logits;
//! - [`process`](mod@process): process rewards — PURE's min-form credit assignment and its
//!   RLOO, PRIME's implicit process rewards and implicit-PRM loss;
//! - [`reward_shaping`]: multi-component rewards (sum-then-normalise, GDPO), RTO's DPO token
//!   rewards and MA-RLHF's macro-action advantages.
//!
//! Every function checks its inputs and returns an [`AlgoError`]; none panics on bad input.

pub mod advantage;
pub mod aggregation;
pub mod calibration;
pub mod consistency;
pub mod entropy;
mod error;
pub mod kl;
pub mod pairwise;
pub mod policy_loss;
pub mod process;
pub mod reward_shaping;
mod rows;
pub mod value_loss;

#[cfg(test)]
mod advantage_tests;
#[cfg(test)]
mod loss_tests;
#[cfg(test)]
mod misc_tests;
#[cfg(test)]
mod process_tests;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

pub use advantage::{
    AdvantageEstimator, AdvantageInput, Advantages, GrpoScale, compute_advantages,
};
pub use aggregation::{LossAggregation, aggregate};
pub use calibration::{CalibrationTransform, calibrated_reward};
pub use consistency::{consistency_rate, kendall_tau_b};
pub use entropy::token_entropy;
pub use error::AlgoError;
pub use kl::{
    KlController, KlControllerConfig, KlEstimator, apply_kl_penalty, kl_penalty, kl_penalty_checked,
};
pub use pairwise::{P3oClip, P3oOutput, p3o_loss};
pub use policy_loss::{PolicyLoss, PolicyLossOutput, policy_loss};
pub use process::{
    CreditAssignment, approx_min_form, implicit_prm_loss, implicit_process_rewards,
    process_returns, process_rloo_advantages, pure_step_reward,
};
pub use reward_shaping::{
    ComponentAggregation, aggregate_reward_components, dpo_token_rewards, macro_action_advantages,
};
pub use value_loss::{ValueLossOutput, clipped_value_loss};
