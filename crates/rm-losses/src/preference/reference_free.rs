//! Preference objectives without a reference model (ORPO, CPO, SimPO, AlphaPO), and RPO, which
//! adds a likelihood term to DPO.
//!
//! Inputs are the policy's [`Completions`] of the chosen and the rejected completion of `B`
//! pairs (`pc`, `pr` summed log-probs, `|y_c|`, `|y_r|` lengths); `p̄ = log π(y|x)/|y|` is a
//! length-averaged log-prob. `NLL_c = −Σ_i pc_i / Σ_i |y_c,i|` is the token-mean negative
//! log-likelihood of the chosen completions (the cross-entropy of supervised fine-tuning on
//! them). Every loss is a `[1]` tensor.

use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;

use super::{Completions, pair_completions};
use crate::LossError;
use crate::checks::{finite, in_range, positive, same_len};
use crate::pairwise::{check_label_smoothing, hard_nll, smoothed_nll};

fn non_negative(
    objective: &'static str,
    parameter: &'static str,
    value: f32,
) -> Result<(), LossError> {
    in_range(
        objective,
        parameter,
        value,
        0.0,
        f32::INFINITY,
        "a finite value >= 0",
    )
}

/// `log(1 − e^x)` for `x < 0`, evaluated as `log(−2t) − log(1 − t)` with `t = tanh(x/2)`
/// (`1 − e^x = −2t/(1 − t)`), accurate both near 0, where `1 − e^x` cancels, and for very
/// negative `x`, and free of overflow. `x = 0` gives `−∞`.
pub(crate) fn log1mexp(x: Tensor<1>) -> Tensor<1> {
    let t = x.div_scalar(2.0).tanh();
    t.clone().mul_scalar(-2.0).log() - t.neg().add_scalar(1.0).log()
}

/// ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference
/// Model", Eqs. 4–7, as TRL's `ORPOTrainer`): supervised fine-tuning on the chosen completions
/// plus an odds-ratio preference term on length-averaged log-probs,
///
/// `L = NLL_c − λ · mean_i log σ( log odds(p̄c,i) − log odds(p̄r,i) )`,
/// `log odds(p̄) = p̄ − log(1 − e^{p̄})`
///
/// (`λ` is TRL's `beta`, 0.1 by default). Average log-probs must be `< 0` (a probability-1
/// completion has infinite odds).
///
/// Errors: `λ` negative or not finite; an empty batch; completions of different counts.
pub fn orpo_loss(
    chosen: Completions,
    rejected: Completions,
    lambda: f32,
) -> Result<Tensor<1>, LossError> {
    const OBJECTIVE: &str = "orpo";
    non_negative(OBJECTIVE, "lambda", lambda)?;
    pair_completions(OBJECTIVE, &chosen, &rejected)?;
    let c = chosen.mean_logps();
    let r = rejected.mean_logps();
    let log_odds = (c.clone() - r.clone()) - (log1mexp(c) - log1mexp(r));
    let ratio = log_sigmoid(log_odds).mean();
    Ok(chosen.nll() - ratio.mul_scalar(lambda))
}

/// CPO (Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM
/// Performance in Machine Translation", Eq. 3, as TRL's `CPOTrainer` with `loss_type =
/// "sigmoid"`): DPO with a uniform reference, plus a behaviour-cloning term on the chosen,
///
/// `L = mean_i [ −(1−ε) log σ(β(pc_i − pr_i)) − ε log σ(−β(pc_i − pr_i)) ] + λ·NLL_c`
///
/// (`λ` is TRL's `cpo_alpha`, 1 by default; `ε = 0` is the paper's loss).
///
/// Errors: `β ≤ 0`; `ε` outside `[0, 0.5)`; `λ` negative; an empty batch; completions of
/// different counts.
pub fn cpo_loss(
    chosen: Completions,
    rejected: Completions,
    beta: f32,
    label_smoothing: f32,
    nll_weight: f32,
) -> Result<Tensor<1>, LossError> {
    const OBJECTIVE: &str = "cpo";
    positive(OBJECTIVE, "beta", beta)?;
    check_label_smoothing(OBJECTIVE, label_smoothing)?;
    non_negative(OBJECTIVE, "cpo_alpha", nll_weight)?;
    pair_completions(OBJECTIVE, &chosen, &rejected)?;
    let margin = (chosen.logps.clone() - rejected.logps).mul_scalar(beta);
    let preference = smoothed_nll(margin, label_smoothing).mean();
    if nll_weight == 0.0 {
        return Ok(preference);
    }
    Ok(preference + chosen.nll().mul_scalar(nll_weight))
}

/// SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
/// Reward", Eq. 6): the length-averaged log-prob as the reward, with a target margin `γ`,
///
/// `L = mean_i [ −(1−ε) log σ(β(p̄c,i − p̄r,i) − γ) − ε log σ(−(β(p̄c,i − p̄r,i) − γ)) ]`
///
/// (`ε = 0` is the paper's loss). [`alphapo_loss`] with `α = 0`.
///
/// Errors: `β ≤ 0`; `γ` not finite; `ε` outside `[0, 0.5)`; an empty batch; completions of
/// different counts.
pub fn simpo_loss(
    chosen: Completions,
    rejected: Completions,
    beta: f32,
    gamma: f32,
    label_smoothing: f32,
) -> Result<Tensor<1>, LossError> {
    margin_loss("simpo", chosen, rejected, beta, gamma, 0.0, label_smoothing)
}

/// AlphaPO (Gupta et al. 2025, "AlphaPO: Reward Shape Matters for LLM Alignment", as TRL's
/// `CPOTrainer` with `loss_type = "simpo"` and `alpha ≠ 0`): SimPO with the reward reshaped by
/// `α`,
///
/// `r_α(y) = (1 − π(y|x)^{−α/|y|}) / α = (1 − e^{−α·p̄}) / α`  (`→ p̄` as `α → 0`),
/// `L = mean_i [ −(1−ε) log σ(β(r_α(c_i) − r_α(r_i)) − γ) − ε log σ(−(…)) ]`.
///
/// `α = 0` is SimPO exactly.
///
/// Errors: `β ≤ 0`; `γ` or `α` not finite; `ε` outside `[0, 0.5)`; an empty batch;
/// completions of different counts.
pub fn alphapo_loss(
    chosen: Completions,
    rejected: Completions,
    beta: f32,
    gamma: f32,
    alpha: f32,
    label_smoothing: f32,
) -> Result<Tensor<1>, LossError> {
    margin_loss(
        "alphapo",
        chosen,
        rejected,
        beta,
        gamma,
        alpha,
        label_smoothing,
    )
}

/// The shared body of SimPO and AlphaPO.
fn margin_loss(
    objective: &'static str,
    chosen: Completions,
    rejected: Completions,
    beta: f32,
    gamma: f32,
    alpha: f32,
    label_smoothing: f32,
) -> Result<Tensor<1>, LossError> {
    positive(objective, "beta", beta)?;
    finite(objective, "gamma", gamma)?;
    finite(objective, "alpha", alpha)?;
    check_label_smoothing(objective, label_smoothing)?;
    pair_completions(objective, &chosen, &rejected)?;
    let reward = |c: &Completions| {
        let mean = c.mean_logps();
        if alpha == 0.0 {
            mean
        } else {
            mean.mul_scalar(-alpha)
                .exp()
                .neg()
                .add_scalar(1.0)
                .div_scalar(alpha)
        }
    };
    let margin = (reward(&chosen) - reward(&rejected))
        .mul_scalar(beta)
        .sub_scalar(gamma);
    Ok(smoothed_nll(margin, label_smoothing).mean())
}

/// RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization", Eq. 1): DPO plus `η`
/// times the NLL of the chosen completions,
///
/// `L = mean_i −log σ(β(Δc,i − Δr,i)) + η·NLL_c`,  `Δ = log π_θ − log π_ref`
///
/// with TRL's token-mean NLL (`rpo_alpha`; the same as [`super::dpo_loss`] with
/// `loss_type = ["sigmoid", "sft"]`, `loss_weights = [1, η]`). The reference log-probs
/// `ref_chosen`, `ref_rejected` (`[B]`) are constants.
///
/// Errors: `β ≤ 0`; `η` negative or not finite; an empty batch; inputs of different lengths.
pub fn rpo_loss(
    chosen: Completions,
    rejected: Completions,
    ref_chosen: Tensor<1>,
    ref_rejected: Tensor<1>,
    beta: f32,
    eta: f32,
) -> Result<Tensor<1>, LossError> {
    const OBJECTIVE: &str = "rpo";
    positive(OBJECTIVE, "beta", beta)?;
    non_negative(OBJECTIVE, "eta", eta)?;
    let n = pair_completions(OBJECTIVE, &chosen, &rejected)?;
    same_len(OBJECTIVE, "ref_chosen", n, &ref_chosen)?;
    same_len(OBJECTIVE, "ref_rejected", n, &ref_rejected)?;
    let dc = chosen.logps.clone() - ref_chosen.detach();
    let dr = rejected.logps - ref_rejected.detach();
    let dpo = hard_nll((dc - dr).mul_scalar(beta)).mean();
    Ok(dpo + chosen.nll().mul_scalar(eta))
}
