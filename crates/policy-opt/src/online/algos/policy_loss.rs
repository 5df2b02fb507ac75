//! Policy losses (verl's `compute_policy_loss_*`) on burn tensors `[B, T]`, differentiable in
//! `log_prob`.
//!
//! Notation: `ℓ_t = log π_θ(y_t)` (`log_prob`), `ℓ⁰_t = log π_old(y_t)` (`old_log_prob`), `A_t`
//! the advantages, `m_t` the response mask, `r_t = exp(clamp(ℓ_t − ℓ⁰_t, −20, 20))` the token
//! importance ratio. `old_log_prob` and `advantages` are constants (detached). Entries off the
//! mask are ignored in the values, even when not finite, but must be finite for the backward
//! pass (their zero gradient would otherwise meet a NaN partial).
//!
//! The metrics are verl's, token means over the micro-batch's mask:
//! - `clipfrac`: the fraction of tokens whose clipped surrogate is the larger loss
//!   (vanilla, GSPO), or whose ratio lies outside the clip range (CISPO);
//! - `clipfrac_lower`: the fraction of tokens where the dual clip bounds the loss (vanilla with
//!   `clip_ratio_c`; 0 otherwise);
//! - `ppo_kl`: `mean(ℓ⁰ − ℓ)`, the k1 estimate of `KL(π_old ‖ π_θ)`.

use rm_core::burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::AlgoError;
use super::aggregation::{LossAggregation, aggregate, masked, masked_mean, same_shape};
use super::error::invalid;

/// A named policy loss, as a recipe's `[policy_loss]` table selects it (`name = "vanilla"`, …).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyLoss {
    /// PPO's clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization
    /// Algorithms") with separate low/high ε (DAPO's clip-higher, Yu et al. 2025) and the
    /// optional dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
    /// Reinforcement Learning"):
    ///
    /// `L¹_t = max(−A_t·r_t, −A_t·clip(r_t, 1 − ε_low, 1 + ε_high))`,
    /// `L_t = min(L¹_t, −A_t·c)` where `A_t < 0` and `c` is given, else `L¹_t`.
    ///
    /// verl's "vanilla"; "ppo" is accepted as an alias.
    #[serde(alias = "ppo")]
    Vanilla {
        /// ε_low in `[0, 1)`.
        clip_ratio_low: f64,
        /// ε_high ≥ 0.
        clip_ratio_high: f64,
        /// The dual clip's `c > 1` (verl's default 3.0; `None`: no dual clip).
        #[serde(default)]
        clip_ratio_c: Option<f64>,
    },
    /// GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): the sequence-level ratio
    /// `s_i = exp(Σ_t m_t (ℓ_t − ℓ⁰_t) / Σ_t m_t)` in its token form
    /// `s_{i,t} = sg[s_i]·π_θ(y_t)/sg[π_θ(y_t)]` (value `s_i`, gradient `s_i·∇ℓ_t`; log clamped at
    /// 10), clipped like PPO: `L_t = max(−A_t·s_{i,t}, −A_t·clip(s_{i,t}, 1 − ε_low, 1 + ε_high))`.
    /// verl always aggregates GSPO with seq-mean-token-mean; here the caller's aggregation is
    /// used, so recipes should choose it.
    Gspo {
        /// ε_low in `[0, 1)`.
        clip_ratio_low: f64,
        /// ε_high ≥ 0.
        clip_ratio_high: f64,
    },
    /// CISPO (MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning
    /// Attention"): the importance weight is clipped and detached instead of the surrogate, so
    /// every token keeps a gradient: `L_t = −sg[clip(r_t, 1 − ε_low, 1 + ε_high)]·A_t·ℓ_t`.
    /// verl reads the same `clip_ratio_low` / `clip_ratio_high` as PPO.
    Cispo {
        /// ε_low in `[0, 1]`.
        clip_ratio_low: f64,
        /// ε_high ≥ 0.
        clip_ratio_high: f64,
    },
}

/// A policy loss over one micro-batch, with verl's metrics.
#[derive(Clone, Debug)]
pub struct PolicyLossOutput {
    /// the aggregate over this micro-batch's units, shape `[1]`
    pub loss: Tensor<1>,
    /// how many units `loss` is a mean over (tokens for token-mean, sequences for seq-mean-*)
    pub weight: f64,
    /// Response tokens of the micro-batch (`Σ mask`): the weight that combines the metrics below,
    /// which are token means, across micro-batches (`Σ tokensᵢ·clipfracᵢ / Σ tokensᵢ`).
    pub tokens: f64,
    /// verl's `actor/pg_clipfrac`, shape `[1]`.
    pub clipfrac: Tensor<1>,
    /// verl's `actor/pg_clipfrac_lower`, shape `[1]`.
    pub clipfrac_lower: Tensor<1>,
    /// verl's `actor/ppo_kl`, shape `[1]`.
    pub ppo_kl: Tensor<1>,
}

impl PolicyLoss {
    /// verl's name of the loss.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Vanilla { .. } => "vanilla",
            Self::Gspo { .. } => "gspo",
            Self::Cispo { .. } => "cispo",
        }
    }

    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<(), AlgoError> {
        let what = self.name();
        let (low, high) = match *self {
            Self::Vanilla {
                clip_ratio_low,
                clip_ratio_high,
                ..
            }
            | Self::Gspo {
                clip_ratio_low,
                clip_ratio_high,
            }
            | Self::Cispo {
                clip_ratio_low,
                clip_ratio_high,
            } => (clip_ratio_low, clip_ratio_high),
        };
        let low_ok = if matches!(self, Self::Cispo { .. }) {
            (0.0..=1.0).contains(&low)
        } else {
            (0.0..1.0).contains(&low)
        };
        if !low_ok {
            return Err(invalid(what, "clip_ratio_low", low, "a value in [0, 1)"));
        }
        if !(high.is_finite() && high >= 0.0) {
            return Err(invalid(
                what,
                "clip_ratio_high",
                high,
                "a finite value >= 0",
            ));
        }
        if let Self::Vanilla {
            clip_ratio_c: Some(c),
            ..
        } = *self
            && !(c.is_finite() && c > 1.0)
        {
            return Err(invalid(what, "clip_ratio_c", c, "a finite value > 1"));
        }
        Ok(())
    }
}

/// Computes the named policy loss on one micro-batch and aggregates it with `aggregation`
/// (see [`aggregate`] for the weight and `norm_length`). Errors: a hyper-parameter out of range;
/// inputs of different shapes (naming the array).
pub fn policy_loss(
    loss: &PolicyLoss,
    aggregation: LossAggregation,
    old_log_prob: Tensor<2>,
    log_prob: Tensor<2>,
    advantages: Tensor<2>,
    response_mask: Tensor<2>,
    norm_length: Option<usize>,
) -> Result<PolicyLossOutput, AlgoError> {
    loss.validate()?;
    let what = loss.name();
    let dims = log_prob.dims();
    same_shape(what, "old_log_prob", dims, &old_log_prob)?;
    same_shape(what, "advantages", dims, &advantages)?;
    same_shape(what, "response_mask", dims, &response_mask)?;
    let old = old_log_prob.detach();
    let adv = advantages.detach();
    let mask = response_mask.detach();
    let device = log_prob.device();
    let zero = || Tensor::<1>::zeros([1], &device);

    let (per_token, clipfrac, clipfrac_lower, ppo_kl) = match *loss {
        PolicyLoss::Vanilla {
            clip_ratio_low,
            clip_ratio_high,
            clip_ratio_c,
        } => {
            let neg_kl = (log_prob - old).clamp(-20.0, 20.0);
            let ppo_kl = masked_mean(neg_kl.clone().neg().detach(), &mask);
            let ratio = neg_kl.exp();
            let l1 = adv.clone().neg() * ratio.clone();
            let l2 = adv.clone().neg() * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high);
            let clipfrac = masked_mean(l2.clone().greater(l1.clone()).float(), &mask);
            let clipped = l1.max_pair(l2);
            match clip_ratio_c {
                Some(c) => {
                    let l3 = adv.clone().neg().mul_scalar(c);
                    let negative = adv.lower_elem(0.0);
                    let lower = clipped
                        .clone()
                        .greater(l3.clone())
                        .float()
                        .mask_fill(negative.clone().bool_not(), 0.0);
                    let clipfrac_lower = masked_mean(lower, &mask);
                    let dual = clipped.clone().min_pair(l3);
                    (
                        clipped.mask_where(negative, dual),
                        clipfrac,
                        clipfrac_lower,
                        ppo_kl,
                    )
                }
                None => (clipped, clipfrac, zero(), ppo_kl),
            }
        }
        PolicyLoss::Gspo {
            clip_ratio_low,
            clip_ratio_high,
        } => {
            let neg_kl = log_prob.clone() - old;
            let ppo_kl = masked_mean(neg_kl.clone().neg().detach(), &mask);
            let lengths = mask.clone().sum_dim(1).clamp_min(1.0);
            let seq = (masked(neg_kl, &mask).sum_dim(1) / lengths).detach();
            let log_ratio = (log_prob.clone() - log_prob.detach()) + seq;
            let ratio = log_ratio.clamp_max(10.0).exp();
            let l1 = adv.clone().neg() * ratio.clone();
            let l2 = adv.neg() * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high);
            let clipfrac = masked_mean(l2.clone().greater(l1.clone()).float(), &mask);
            (l1.max_pair(l2), clipfrac, zero(), ppo_kl)
        }
        PolicyLoss::Cispo {
            clip_ratio_low,
            clip_ratio_high,
        } => {
            let neg_kl = (log_prob.clone() - old).clamp(-20.0, 20.0).detach();
            let ppo_kl = masked_mean(neg_kl.clone().neg(), &mask);
            let ratio = neg_kl.exp();
            let weight = ratio
                .clone()
                .clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high);
            let clipfrac = masked_mean(ratio.not_equal(weight.clone()).float(), &mask);
            ((weight * adv).neg() * log_prob, clipfrac, zero(), ppo_kl)
        }
    };
    let tokens = f64::from(mask.clone().sum().into_scalar::<f32>());
    let (loss, weight) = aggregate(per_token, mask, aggregation, norm_length)?;
    Ok(PolicyLossOutput {
        loss,
        weight,
        tokens,
        clipfrac: clipfrac.detach(),
        clipfrac_lower: clipfrac_lower.detach(),
        ppo_kl: ppo_kl.detach(),
    })
}
