//! TRL's DPO losses, exactly as `trl` 1.16's `DPOTrainer._compute_loss` computes them from
//! per-token log-probs: the 15 loss types (combinable with weights), the f-divergence scores,
//! LD-DPO's down-weighting of the verbose tail, WPO's pair weights; and the TR-DPO reference
//! refresh.
//!
//! The pipeline of [`dpo_loss`], on a batch whose rows are `[chosen…, rejected…]`:
//!
//! 1. per-token log-probs off the shifted completion mask `m = completion_mask[:, 1:]` are set
//!    to 0; each sequence's log-prob is `Σ_t m_t·log π_t` (LD-DPO: the tokens past the shorter
//!    completion of the pair count `α` times, `log π = Σ_shared + α·Σ_tail`), for the policy
//!    (`pc`, `pr`) and the reference (`qc`, `qr`);
//! 2. `Δc = pc − qc`, `Δr = pr − qr`, and the scores `sc = f(Δc)`, `sr = f(Δr)` of the chosen
//!    f-divergence ([`FDivergence`]; reverse KL, plain DPO: `f(Δ) = Δ`);
//! 3. per loss type `k` with weight `w_k`, a per-pair loss `ℓ_k` ([`DpoLossType`] documents each
//!    formula), times the WPO pair weight when `use_weighting`;
//!    `L = Σ_k w_k · mean_pairs ℓ_k`.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, relu, sigmoid};
use serde::{Deserialize, Deserializer, Serialize};

use super::{masked, row_sum};
use crate::LossError;
use crate::checks::{finite, in_range, positive, same_shape};
use crate::pairwise::{hard_nll, smoothed_nll};

const OBJECTIVE: &str = "dpo";

/// One of TRL's DPO loss types (`DPOConfig.loss_type`), by TRL's name.
///
/// In the formulas `x = β·(sc − sr)` is the scaled score margin, `sc`, `sr` the f-divergence
/// scores of `Δc`, `Δr` (equal to `Δc`, `Δr` for the default reverse KL), `n_c`, `n_r` the
/// completion lengths (`completion_mask` row sums, clamped at 1) and `ε` the label smoothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossType {
    /// `−log σ(x)`: DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language
    /// Model is Secretly a Reward Model"). TRL applies no label smoothing here.
    Sigmoid,
    /// `max(0, 1 − x)`: the hinge loss of RSO (Liu et al. 2023, "Statistical Rejection
    /// Sampling Improves Preference Optimization"; SLiC, Zhao et al. 2023).
    Hinge,
    /// `(sc/n_c − sr/n_r − 1/(2β))²`: IPO (Azar et al. 2023, "A General Theoretical Paradigm to
    /// Understand Learning from Human Preferences", Eq. 17), on length-normalised scores as
    /// TRL computes it (`β` is the paper's `τ`).
    Ipo,
    /// `σ(x)·(log σ(x) − log(1−ε)) + σ(−x)·(log σ(−x) − log ε)`: EXO-pref, the reverse KL from
    /// the model's to the smoothed label distribution over the pair (Ji et al. 2024, "Towards
    /// Efficient Exact Optimization of Language Model Alignment", Eq. 16). Needs `0 < ε < 1`.
    ExoPair,
    /// `−log σ(β·sc) − ½ log σ(−β·sc) − ½ log σ(−β·sr)`: NCA (Chen et al. 2024, "Noise
    /// Contrastive Alignment of Language Models with Explicit Rewards").
    NcaPair,
    /// `[−(1−ε) log σ(x) + ε log σ(−x)] / (1 − 2ε)`: robust DPO, unbiased under labels flipped
    /// with probability `ε` (Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language
    /// Models with Noisy Feedback"). Needs `0 ≤ ε < 0.5`.
    Robust,
    /// `−log σ(β·sc) − log σ(−β·sr)`: paired BCO without the reward shift (Jung et al. 2024,
    /// "Binary Classifier Optimization for Large Language Model Alignment").
    BcoPair,
    /// `(sc − 1/(2β))² + (sr + 1/(2β))²`: SPPO with hard win probabilities 1 and 0 (Wu et al.
    /// 2024, "Self-Play Preference Optimization for Language Model Alignment", Eq. 4.7).
    SppoHard,
    /// `−(1−ε) log σ(β·d) − ε log σ(−β·d)`, `d = sort(pc − pr) − sort(qc − qr)` (sorted over the
    /// batch): AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via
    /// Optimal Transport"). Uses raw log-probs, not f-divergence scores.
    Aot,
    /// As [`DpoLossType::Aot`] with `d = sort(Δc) − sort(Δr)`: AOT, unpaired.
    AotUnpaired,
    /// `1 − σ(β·Δc) + σ(β·Δr)`: APO-zero, raise the chosen and lower the rejected likelihood
    /// (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    /// Revisions", Eq. 7).
    ApoZero,
    /// `σ(β·Δc) + 1 − σ(x)`: APO-down, lower both, the rejected more (same paper, Eq. 8).
    ApoDown,
    /// `−log σ(x)·(1 − σ(x/τ)) + e^{−x}·σ(x/τ)`: DiscoPOP's log-ratio-modulated loss (Chris Lu
    /// et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
    /// Models", Eq. 5), `τ = discopop_tau`. The exponential term is evaluated as
    /// `exp(log σ(x/τ) − x)`, finite where `e^{−x}` alone overflows.
    Discopop,
    /// `−Σ_{chosen tokens} log π_t / #chosen tokens`: the policy's NLL of the chosen
    /// completions (a batch constant per pair), as in RPO (Pang et al. 2024) or MPO when
    /// combined with `sigmoid`. Uses the policy's per-token log-probs, not LD-DPO's weighting.
    Sft,
    /// `−log σ(β·(sc/n_c − sr/n_r))`: DPO on length-normalised scores (as in SimPO's
    /// normalisation, Meng et al. 2024, with a reference model).
    SigmoidNorm,
}

impl DpoLossType {
    /// TRL's name of the loss type.
    pub fn name(self) -> &'static str {
        match self {
            DpoLossType::Sigmoid => "sigmoid",
            DpoLossType::Hinge => "hinge",
            DpoLossType::Ipo => "ipo",
            DpoLossType::ExoPair => "exo_pair",
            DpoLossType::NcaPair => "nca_pair",
            DpoLossType::Robust => "robust",
            DpoLossType::BcoPair => "bco_pair",
            DpoLossType::SppoHard => "sppo_hard",
            DpoLossType::Aot => "aot",
            DpoLossType::AotUnpaired => "aot_unpaired",
            DpoLossType::ApoZero => "apo_zero",
            DpoLossType::ApoDown => "apo_down",
            DpoLossType::Discopop => "discopop",
            DpoLossType::Sft => "sft",
            DpoLossType::SigmoidNorm => "sigmoid_norm",
        }
    }

    /// Every loss type, in TRL's order.
    pub const ALL: [DpoLossType; 15] = [
        DpoLossType::Sigmoid,
        DpoLossType::Hinge,
        DpoLossType::Ipo,
        DpoLossType::ExoPair,
        DpoLossType::NcaPair,
        DpoLossType::Robust,
        DpoLossType::BcoPair,
        DpoLossType::SppoHard,
        DpoLossType::Aot,
        DpoLossType::AotUnpaired,
        DpoLossType::ApoZero,
        DpoLossType::ApoDown,
        DpoLossType::Discopop,
        DpoLossType::Sft,
        DpoLossType::SigmoidNorm,
    ];
}

/// The f-divergence regulariser between policy and reference (`f_divergence_type`; Wang et al.
/// 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence
/// Constraints"). It maps each log-ratio `Δ` to a score `f'(e^Δ)` without constants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FDivergence {
    /// `s = Δ` (standard DPO).
    #[default]
    ReverseKl,
    /// `s = −e^{−Δ}`.
    ForwardKl,
    /// `s = log σ(Δ)` (Jensen–Shannon).
    JsDivergence,
    /// `s = exp(min((α−1)·Δ, 80)) / (α−1)`, `α = f_alpha_divergence_coef` (TRL's clamp at 80
    /// keeps `exp` finite in float32); `|α − 1| < 1e-6` falls back to reverse KL.
    AlphaDivergence,
}

/// TRL's DPO hyper-parameters under TRL's `DPOConfig` field names, with TRL's defaults; a
/// recipe's `[objective]` table or TRL's own config JSON deserialises into it:
///
/// ```toml
/// loss_type = ["sigmoid", "sft"]   # or one name: loss_type = "ipo"
/// loss_weights = [1.0, 0.5]        # default: 1 each
/// beta = 0.1
/// label_smoothing = 0.0            # robust, exo_pair, aot, aot_unpaired
/// f_divergence_type = "reverse_kl" # forward_kl, js_divergence, alpha_divergence
/// f_alpha_divergence_coef = 0.5
/// ld_alpha = 0.5                   # LD-DPO (absent: off)
/// use_weighting = false            # WPO
/// discopop_tau = 0.05
/// sync_ref_model = false           # TR-DPO (see `reference_refresh`)
/// ref_model_mixup_alpha = 0.6
/// ref_model_sync_steps = 512
/// ```
///
/// Unknown fields and loss types are rejected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// The loss types summed into the loss (one name or a list).
    #[serde(deserialize_with = "one_or_many")]
    pub loss_type: Vec<DpoLossType>,
    /// One weight per loss type; `None`: 1 each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_weights: Option<Vec<f32>>,
    /// `β > 0`, the inverse strength of the KL regularisation (IPO's `τ`).
    pub beta: f32,
    /// `ε`: the flip probability of `robust` (`[0, 0.5)`), EXO's smoothing (`(0, 1)`), AOT's
    /// smoothing (`[0, 1)`); unused by the other loss types.
    pub label_smoothing: f32,
    /// The f-divergence of the scores.
    pub f_divergence_type: FDivergence,
    /// `α` of [`FDivergence::AlphaDivergence`].
    pub f_alpha_divergence_coef: f32,
    /// LD-DPO's `α ∈ [0, 1]` (Liu et al. 2024, "Length Desensitization in Direct Preference
    /// Optimization"): the weight of the log-probs of the tokens past the shorter completion of
    /// each pair. `None` (or 1): plain sums.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ld_alpha: Option<f32>,
    /// WPO (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization",
    /// Eq. 2): weight each pair's loss by `w_c·w_r`,
    /// `w = exp( Σ_t m_t·(log π_t − log Σ_v π_v²) / Σ_t m_t )`, the length-normalised probability
    /// of the completion under the policy's renormalised squared distribution, without gradient.
    /// Needs the batch's `log_sum_sq_probs`; not with `aot`/`aot_unpaired`.
    pub use_weighting: bool,
    /// DiscoPOP's temperature `τ > 0`.
    pub discopop_tau: f32,
    /// TR-DPO: refresh the reference from the policy every `ref_model_sync_steps` steps.
    pub sync_ref_model: bool,
    /// TR-DPO's `α ∈ [0, 1]`: `π_ref ← α·π_θ + (1−α)·π_ref` (1: a hard copy).
    pub ref_model_mixup_alpha: f32,
    /// TR-DPO's `τ ≥ 1`: the refresh period in optimiser steps.
    pub ref_model_sync_steps: usize,
}

impl Default for DpoConfig {
    /// TRL's defaults: plain DPO (`sigmoid`), `β = 0.1`.
    fn default() -> Self {
        Self {
            loss_type: vec![DpoLossType::Sigmoid],
            loss_weights: None,
            beta: 0.1,
            label_smoothing: 0.0,
            f_divergence_type: FDivergence::ReverseKl,
            f_alpha_divergence_coef: 0.5,
            ld_alpha: None,
            use_weighting: false,
            discopop_tau: 0.05,
            sync_ref_model: false,
            ref_model_mixup_alpha: 0.6,
            ref_model_sync_steps: 512,
        }
    }
}

/// `loss_type` as TRL accepts it: one name or a list of names.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DpoLossType>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(DpoLossType),
        Many(Vec<DpoLossType>),
    }
    // Untagged enums swallow the inner error; name the accepted values instead.
    let value = OneOrMany::deserialize(d).map_err(|_| {
        serde::de::Error::custom(format!(
            "loss_type: expected one of {:?} or a list of them",
            DpoLossType::ALL.map(DpoLossType::name)
        ))
    })?;
    Ok(match value {
        OneOrMany::One(t) => vec![t],
        OneOrMany::Many(v) => v,
    })
}

fn invalid(parameter: &'static str, value: f32, expected: &'static str) -> LossError {
    LossError::InvalidParameter {
        objective: OBJECTIVE,
        parameter,
        value,
        expected,
    }
}

impl DpoConfig {
    /// A config of one loss type with TRL's other defaults.
    pub fn new(loss_type: DpoLossType, beta: f32) -> Self {
        Self {
            loss_type: vec![loss_type],
            beta,
            ..Self::default()
        }
    }

    /// The weight of each loss type (1 each without `loss_weights`).
    pub fn weights(&self) -> Vec<f32> {
        self.loss_weights
            .clone()
            .unwrap_or_else(|| vec![1.0; self.loss_type.len()])
    }

    /// Checks the hyper-parameters: at least one loss type and one finite weight per type;
    /// `β > 0`; `ε` in the range of every loss type that uses it (`robust`: `[0, 0.5)`,
    /// `exo_pair`: `(0, 1)`, `aot*`: `[0, 1)`; always `[0, 1)`); a finite `α` of the
    /// α-divergence; `ld_alpha ∈ [0, 1]`; `discopop_tau > 0`; no WPO weighting with `aot*`;
    /// `ref_model_mixup_alpha ∈ [0, 1]` and `ref_model_sync_steps ≥ 1`.
    pub fn validate(&self) -> Result<(), LossError> {
        if self.loss_type.is_empty() {
            return Err(invalid("loss_type", 0.0, "at least one loss type"));
        }
        let weights = self.weights();
        if weights.len() != self.loss_type.len() {
            return Err(invalid(
                "loss_weights",
                weights.len() as f32,
                "exactly one weight per loss_type",
            ));
        }
        for w in weights {
            finite(OBJECTIVE, "loss_weights", w)?;
        }
        positive(OBJECTIVE, "beta", self.beta)?;
        let eps = self.label_smoothing;
        in_range(
            OBJECTIVE,
            "label_smoothing",
            eps,
            0.0,
            1.0,
            "0 <= label_smoothing < 1",
        )?;
        let uses = |t: DpoLossType| self.loss_type.contains(&t);
        if uses(DpoLossType::Robust) {
            in_range(
                OBJECTIVE,
                "label_smoothing",
                eps,
                0.0,
                0.5,
                "0 <= label_smoothing < 0.5 for robust (at 0.5 it divides by 0)",
            )?;
        }
        if uses(DpoLossType::ExoPair) && eps <= 0.0 {
            return Err(invalid(
                "label_smoothing",
                eps,
                "0 < label_smoothing < 1 for exo_pair (EXO takes log ε; the paper uses 1e-3)",
            ));
        }
        finite(
            OBJECTIVE,
            "f_alpha_divergence_coef",
            self.f_alpha_divergence_coef,
        )?;
        if let Some(a) = self.ld_alpha
            && !(0.0..=1.0).contains(&a)
        {
            return Err(invalid("ld_alpha", a, "0 <= ld_alpha <= 1"));
        }
        positive(OBJECTIVE, "discopop_tau", self.discopop_tau)?;
        if self.use_weighting && (uses(DpoLossType::Aot) || uses(DpoLossType::AotUnpaired)) {
            return Err(invalid(
                "use_weighting",
                1.0,
                "use_weighting = false with aot/aot_unpaired (they sort the batch, which misaligns \
                 the pair weights)",
            ));
        }
        if !(0.0..=1.0).contains(&self.ref_model_mixup_alpha) {
            return Err(invalid(
                "ref_model_mixup_alpha",
                self.ref_model_mixup_alpha,
                "0 <= ref_model_mixup_alpha <= 1",
            ));
        }
        if self.ref_model_sync_steps == 0 {
            return Err(invalid(
                "ref_model_sync_steps",
                0.0,
                "ref_model_sync_steps >= 1",
            ));
        }
        Ok(())
    }

    /// [`dpo_loss`] under this config.
    pub fn loss(&self, batch: DpoBatch) -> Result<DpoOutput, LossError> {
        dpo_loss(self, batch)
    }

    /// TR-DPO's schedule (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good
    /// Alignment"): after optimiser step `global_step` (counted from 1), the mixing weight `α`
    /// to pass to [`refresh_reference`] for every parameter when the reference is due for a
    /// refresh (`sync_ref_model` and `global_step` a multiple of `ref_model_sync_steps`, as
    /// TRL's `SyncRefModelCallback`), else `None`.
    pub fn reference_refresh(&self, global_step: usize) -> Option<f32> {
        (self.sync_ref_model
            && self.ref_model_sync_steps > 0
            && global_step > 0
            && global_step.is_multiple_of(self.ref_model_sync_steps))
        .then_some(self.ref_model_mixup_alpha)
    }
}

/// TR-DPO's soft reference update of one parameter tensor:
///
/// `θ_ref ← α·θ + (1 − α)·θ_ref`
///
/// (`α = 1`: the hard update, a copy of the policy). The result is detached: the reference is
/// never trained. Call it for every parameter when [`DpoConfig::reference_refresh`] says so.
///
/// Errors: `α` outside `[0, 1]`; tensors of different shapes.
pub fn refresh_reference<const D: usize>(
    reference: Tensor<D>,
    policy: Tensor<D>,
    alpha: f32,
) -> Result<Tensor<D>, LossError> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(LossError::InvalidParameter {
            objective: "tr-dpo",
            parameter: "ref_model_mixup_alpha",
            value: alpha,
            expected: "0 <= ref_model_mixup_alpha <= 1",
        });
    }
    if reference.dims() != policy.dims() {
        return Err(LossError::ShapeMismatch {
            objective: "tr-dpo",
            input: "policy",
            expected: reference.dims().to_vec(),
            actual: policy.dims().to_vec(),
        });
    }
    let policy = policy.detach();
    let reference = reference.detach();
    if alpha == 1.0 {
        return Ok(policy);
    }
    Ok(policy.mul_scalar(alpha) + reference.mul_scalar(1.0 - alpha))
}

/// One batch of the DPO objectives, per token, rows `[chosen…, rejected…]` (`2B` rows: chosen
/// completion `i` in row `i`, its rejected one in row `B + i`), as TRL's `DPOTrainer` builds it.
#[derive(Clone, Debug)]
pub struct DpoBatch {
    /// `[2B, T−1]`: the policy's next-token log-probs, `log π(ids[t+1] | ids[..=t])`.
    pub policy_logps: Tensor<2>,
    /// `[2B, T−1]`: the reference's, likewise.
    pub ref_logps: Tensor<2>,
    /// `[2B, T]`: 1 on completion tokens of `ids`; the log-probs' mask is `completion_mask[:, 1:]`.
    /// IPO and `sigmoid_norm` normalise by its row sums, as TRL does.
    pub completion_mask: Tensor<2>,
    /// `[2B, T−1]`: `logsumexp(2·logits) − 2·logsumexp(logits)` at each position, for WPO.
    pub log_sum_sq_probs: Option<Tensor<2>>,
}

impl DpoBatch {
    /// A batch without WPO's `log_sum_sq_probs`.
    pub fn new(policy_logps: Tensor<2>, ref_logps: Tensor<2>, completion_mask: Tensor<2>) -> Self {
        Self {
            policy_logps,
            ref_logps,
            completion_mask,
            log_sum_sq_probs: None,
        }
    }

    /// The same batch with WPO's `log_sum_sq_probs`.
    pub fn with_log_sum_sq_probs(mut self, log_sum_sq_probs: Tensor<2>) -> Self {
        self.log_sum_sq_probs = Some(log_sum_sq_probs);
        self
    }

    /// The batch of `B` pairs from their chosen half and rejected half (each `[B, ·]`, the same
    /// shapes; both with `log_sum_sq_probs` or neither), stacked `[chosen…, rejected…]`.
    ///
    /// Errors: halves of different shapes; `log_sum_sq_probs` on one half only.
    pub fn from_halves(chosen: DpoBatch, rejected: DpoBatch) -> Result<Self, LossError> {
        let check = |input, c: &Tensor<2>, r: &Tensor<2>| same_shape(OBJECTIVE, input, c.dims(), r);
        check(
            "rejected.policy_logps",
            &chosen.policy_logps,
            &rejected.policy_logps,
        )?;
        check("rejected.ref_logps", &chosen.ref_logps, &rejected.ref_logps)?;
        check(
            "rejected.completion_mask",
            &chosen.completion_mask,
            &rejected.completion_mask,
        )?;
        let cat = |c: Tensor<2>, r: Tensor<2>| Tensor::cat(vec![c, r], 0);
        let log_sum_sq_probs = match (chosen.log_sum_sq_probs, rejected.log_sum_sq_probs) {
            (None, None) => None,
            (Some(c), Some(r)) => {
                check("rejected.log_sum_sq_probs", &c, &r)?;
                Some(cat(c, r))
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(LossError::MissingInput {
                    objective: OBJECTIVE,
                    input: "log_sum_sq_probs (of both halves)",
                });
            }
        };
        Ok(Self {
            policy_logps: cat(chosen.policy_logps, rejected.policy_logps),
            ref_logps: cat(chosen.ref_logps, rejected.ref_logps),
            completion_mask: cat(chosen.completion_mask, rejected.completion_mask),
            log_sum_sq_probs,
        })
    }
}

/// The loss of a DPO batch and the implicit rewards of its pairs.
#[derive(Clone, Debug)]
pub struct DpoOutput {
    /// `Σ_k w_k · mean_pairs ℓ_k`, a `[1]` tensor.
    pub loss: Tensor<1>,
    /// `β·Δc` per pair (`[B]`, detached), TRL's `rewards/chosen`.
    pub chosen_rewards: Tensor<1>,
    /// `β·Δr` per pair (`[B]`, detached), TRL's `rewards/rejected`.
    pub rejected_rewards: Tensor<1>,
}

/// The first and second half of `[2B]` rows.
fn halves<const D: usize>(t: Tensor<D>, b: usize) -> (Tensor<D>, Tensor<D>) {
    (t.clone().narrow(0, 0, b), t.narrow(0, b, b))
}

/// LD-DPO's per-token weights `[2B, L]`: 1 up to the pair's shared length (the shorter
/// completion's), `α` past it. Positions count completion tokens only (`cumsum` of the mask).
fn ld_weights(shift_mask: &Tensor<2>, b: usize, alpha: f32) -> Tensor<2> {
    let on = shift_mask.clone().not_equal_elem(0.0).float();
    let dims = on.dims();
    let position = on.clone().cumsum(1);
    let (chosen_len, rejected_len) = halves(on.sum_dim(1), b);
    let shared = chosen_len.min_pair(rejected_len);
    let shared = Tensor::cat(vec![shared.clone(), shared], 0).expand(dims);
    let tail = position.greater(shared).float();
    tail.mul_scalar(alpha - 1.0).add_scalar(1.0)
}

/// The f-divergence score of each log-ratio.
fn score(f: FDivergence, alpha: f32, delta: Tensor<1>) -> Tensor<1> {
    match f {
        FDivergence::ReverseKl => delta,
        FDivergence::ForwardKl => delta.neg().exp().neg(),
        FDivergence::JsDivergence => log_sigmoid(delta),
        FDivergence::AlphaDivergence if (alpha - 1.0).abs() < 1e-6 => delta,
        FDivergence::AlphaDivergence => delta
            .mul_scalar(alpha - 1.0)
            .clamp_max(80.0)
            .exp()
            .div_scalar(alpha - 1.0),
    }
}

/// Everything a loss type may read, per pair (`[B]`) unless noted.
struct Terms {
    beta: f32,
    eps: f32,
    tau: f32,
    /// `pc`, `pr`, `qc`, `qr` (after LD-DPO's weighting).
    pc: Tensor<1>,
    pr: Tensor<1>,
    qc: Tensor<1>,
    qr: Tensor<1>,
    /// `Δc`, `Δr`.
    dc: Tensor<1>,
    dr: Tensor<1>,
    /// `f(Δc)`, `f(Δr)`.
    sc: Tensor<1>,
    sr: Tensor<1>,
    /// Completion lengths from the unshifted mask, clamped at 1.
    nc: Tensor<1>,
    nr: Tensor<1>,
    /// The chosen completions' token-mean NLL, `[1]`.
    sft: Tensor<1>,
}

impl Terms {
    /// `x = β·(sc − sr)`.
    fn margin(&self) -> Tensor<1> {
        (self.sc.clone() - self.sr.clone()).mul_scalar(self.beta)
    }

    /// `sc/n_c − sr/n_r`.
    fn normalised_margin(&self) -> Tensor<1> {
        self.sc.clone() / self.nc.clone() - self.sr.clone() / self.nr.clone()
    }

    /// The per-pair loss `ℓ` of one loss type (formulas on [`DpoLossType`]).
    fn per_pair(&self, loss_type: DpoLossType) -> Tensor<1> {
        let beta = self.beta;
        let eps = self.eps;
        match loss_type {
            DpoLossType::Sigmoid => hard_nll(self.margin()),
            DpoLossType::Hinge => relu(self.margin().neg().add_scalar(1.0)),
            DpoLossType::Ipo => self
                .normalised_margin()
                .sub_scalar(1.0 / (2.0 * beta))
                .square(),
            DpoLossType::ExoPair => {
                let x = self.margin();
                let win = sigmoid(x.clone()) * log_sigmoid(x.clone()).sub_scalar((-eps).ln_1p());
                let lose = sigmoid(x.clone().neg()) * log_sigmoid(x.neg()).sub_scalar(eps.ln());
                win + lose
            }
            DpoLossType::NcaPair => {
                let rc = self.sc.clone().mul_scalar(beta);
                let rr = self.sr.clone().mul_scalar(beta);
                hard_nll(rc.clone()) + (hard_nll(rc.neg()) + hard_nll(rr.neg())).mul_scalar(0.5)
            }
            DpoLossType::Robust => {
                let x = self.margin();
                let clean = hard_nll(x.clone()).mul_scalar(1.0 - eps);
                let flipped = hard_nll(x.neg()).mul_scalar(eps);
                (clean - flipped).div_scalar(1.0 - 2.0 * eps)
            }
            DpoLossType::BcoPair => {
                hard_nll(self.sc.clone().mul_scalar(beta))
                    + hard_nll(self.sr.clone().mul_scalar(-beta))
            }
            DpoLossType::SppoHard => {
                let half = 0.5 / beta;
                self.sc.clone().sub_scalar(half).square()
                    + self.sr.clone().add_scalar(half).square()
            }
            DpoLossType::Aot => {
                let policy = (self.pc.clone() - self.pr.clone()).sort(0);
                let reference = (self.qc.clone() - self.qr.clone()).sort(0);
                smoothed_nll((policy - reference).mul_scalar(beta), eps)
            }
            DpoLossType::AotUnpaired => {
                let d = self.dc.clone().sort(0) - self.dr.clone().sort(0);
                smoothed_nll(d.mul_scalar(beta), eps)
            }
            DpoLossType::ApoZero => {
                sigmoid(self.dc.clone().mul_scalar(beta))
                    .neg()
                    .add_scalar(1.0)
                    + sigmoid(self.dr.clone().mul_scalar(beta))
            }
            DpoLossType::ApoDown => {
                sigmoid(self.dc.clone().mul_scalar(beta))
                    + sigmoid(self.margin()).neg().add_scalar(1.0)
            }
            DpoLossType::Discopop => {
                let x = self.margin();
                let scaled = x.clone().div_scalar(self.tau);
                // −log σ(x)·σ(−x/τ) + exp(log σ(x/τ) − x)
                let logistic = hard_nll(x.clone()) * sigmoid(scaled.clone().neg());
                let exponential = (log_sigmoid(scaled) - x).exp();
                logistic + exponential
            }
            DpoLossType::Sft => self.sft.clone().expand([self.pc.dims()[0]]),
            DpoLossType::SigmoidNorm => hard_nll(self.normalised_margin().mul_scalar(beta)),
        }
    }
}

/// TRL's DPO-family loss of a batch of `B` preference pairs (the module docs give the
/// pipeline, [`DpoLossType`] each loss type's formula, [`DpoConfig`] the options), exactly as
/// `trl` 1.16's `DPOTrainer._compute_loss`:
///
/// `L = Σ_k w_k · (1/B) Σ_i ω_i · ℓ_k(i)`
///
/// with `ω_i = w_c,i·w_r,i` under WPO, else 1. Also returns the implicit rewards `β·Δc`,
/// `β·Δr` per pair. Gradients flow to `policy_logps` only: the reference's log-probs and the WPO
/// weights are constants.
///
/// Differences from TRL, in degenerate cases only: an `sft` term over zero chosen tokens is 0
/// (TRL: NaN); `sft` with `use_weighting` is weighted like the other types (TRL raises).
///
/// Errors: invalid hyper-parameters ([`DpoConfig::validate`]); no rows, or an odd number;
/// inputs whose shapes disagree with `policy_logps` `[2B, L]` (`completion_mask` must be
/// `[2B, L+1]`); `use_weighting` without `log_sum_sq_probs`.
pub fn dpo_loss(config: &DpoConfig, batch: DpoBatch) -> Result<DpoOutput, LossError> {
    config.validate()?;
    let [rows, len] = batch.policy_logps.dims();
    if rows == 0 {
        return Err(LossError::EmptyBatch {
            objective: OBJECTIVE,
        });
    }
    if rows % 2 != 0 {
        return Err(LossError::ShapeMismatch {
            objective: OBJECTIVE,
            input: "policy_logps (rows [chosen…, rejected…], an even count)",
            expected: vec![rows + 1, len],
            actual: vec![rows, len],
        });
    }
    same_shape(OBJECTIVE, "ref_logps", [rows, len], &batch.ref_logps)?;
    same_shape(
        OBJECTIVE,
        "completion_mask",
        [rows, len + 1],
        &batch.completion_mask,
    )?;
    if let Some(lssp) = &batch.log_sum_sq_probs {
        same_shape(OBJECTIVE, "log_sum_sq_probs", [rows, len], lssp)?;
    }
    let b = rows / 2;
    let beta = config.beta;

    let mask = batch.completion_mask;
    let shift_mask = mask.clone().narrow(1, 1, len);
    let policy_tokens = masked(batch.policy_logps, &shift_mask);
    let ref_tokens = masked(batch.ref_logps.detach(), &shift_mask);
    let token_weights = match config.ld_alpha {
        Some(alpha) if alpha != 1.0 => Some(ld_weights(&shift_mask, b, alpha)),
        _ => None,
    };
    let sequence = |tokens: Tensor<2>| match &token_weights {
        Some(w) => row_sum(tokens * w.clone()),
        None => row_sum(tokens),
    };
    let (pc, pr) = halves(sequence(policy_tokens.clone()), b);
    let (qc, qr) = halves(sequence(ref_tokens), b);
    let dc = pc.clone() - qc.clone();
    let dr = pr.clone() - qr.clone();
    let f = |d: Tensor<1>| score(config.f_divergence_type, config.f_alpha_divergence_coef, d);
    let (nc, nr) = halves(row_sum(mask).clamp_min(1.0), b);

    let uses_sft = config.loss_type.contains(&DpoLossType::Sft);
    let sft = if uses_sft {
        let (chosen_tokens, _) = halves(policy_tokens.clone(), b);
        let (chosen_mask, _) = halves(shift_mask.clone().not_equal_elem(0.0).float(), b);
        chosen_tokens.sum().neg() / chosen_mask.sum().clamp_min(1.0)
    } else {
        dc.clone().sum().zeros_like()
    };

    let pair_weights = if config.use_weighting {
        let lssp = batch.log_sum_sq_probs.ok_or(LossError::MissingInput {
            objective: OBJECTIVE,
            input: "log_sum_sq_probs",
        })?;
        let on = shift_mask.clone().not_equal_elem(0.0).float();
        let aligned = masked(policy_tokens.detach() - lssp.detach(), &shift_mask);
        let w = (row_sum(aligned) / row_sum(on).clamp_min(1.0)).exp();
        let (wc, wr) = halves(w, b);
        Some(wc * wr)
    } else {
        None
    };

    let terms = Terms {
        beta,
        eps: config.label_smoothing,
        tau: config.discopop_tau,
        sc: f(dc.clone()),
        sr: f(dr.clone()),
        pc,
        pr,
        qc,
        qr,
        dc: dc.clone(),
        dr: dr.clone(),
        nc,
        nr,
        sft,
    };
    let mut loss = terms.sft.zeros_like();
    for (&loss_type, w) in config.loss_type.iter().zip(config.weights()) {
        let mut per_pair = terms.per_pair(loss_type);
        if let Some(weights) = &pair_weights {
            per_pair = per_pair * weights.clone();
        }
        loss = loss + per_pair.mean().mul_scalar(w);
    }
    Ok(DpoOutput {
        loss,
        chosen_rewards: dc.detach().mul_scalar(beta),
        rejected_rewards: dr.detach().mul_scalar(beta),
    })
}

#[cfg(test)]
#[path = "dpo_tests.rs"]
mod tests;
