//! Process rewards for RL: step rewards from a PRM turned into token rewards, returns and
//! advantages, host-side on `[B][T]` f32 rows (computed in f64), plus PRIME's implicit process
//! rewards and its implicit-PRM loss on burn tensors.
//!
//! Notation: `r_{i,t}` token rewards (a step's reward on the step's last token, an outcome
//! reward on the response's last token), `s_{i,t}` the step mask (1 on the tokens that carry a
//! process reward: step ends, and the last token when an outcome reward sits there), `m_{i,t}`
//! the response mask.
//!
//! - [`pure_step_reward`]: PURE's reward of a step from the PRM's probability;
//! - [`approx_min_form`]: PURE's transformation of the process rewards (soft-min weighting),
//!   after which the ordinary sum-form returns approximate the min-form ones;
//! - [`process_returns`]: sum-form `G_t = Σ_{k≥t} γ^{k−t} r_k` or min-form
//!   `G_t = min_{k≥t, s_k=1} r_k` ([`CreditAssignment`]);
//! - [`process_rloo_advantages`]: PURE's RLOO on those returns (the estimator
//!   [`super::AdvantageEstimator::ProcessRloo`]);
//! - [`implicit_process_rewards`], [`implicit_prm_loss`]: PRIME.

use rm_core::burn::tensor::Tensor;
use rm_core::burn::tensor::activation::log_sigmoid;
use serde::{Deserialize, Serialize};

use super::AlgoError;
use super::error::invalid;
use super::reward_shaping::dpo_token_rewards;
use super::rows::{check_rows, groups, to_f32};

/// PURE's reward of one step (Cheng et al. 2025, "Stop Summation: Min-Form Credit Assignment
/// Is All Process Reward Model Needs for Reasoning", arXiv 2504.15275; their code reads a
/// two-class PRM as `p(correct) − p(wrong)`): with a one-logit PRM of step probability `p`,
/// `r = p − (1 − p) = 2p − 1 ∈ [−1, 1]`, so a step judged wrong is a negative reward.
pub fn pure_step_reward(p: f32) -> f32 {
    2.0 * p - 1.0
}

/// How a row's returns are formed from its token rewards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "snake_case", deny_unknown_fields)]
pub enum CreditAssignment {
    /// The canonical sum form: `G_t = Σ_{k≥t} γ^{k−t}·r_k·m_k` over the response tokens.
    Sum {
        /// Discount γ in `[0, 1]` (default 1, as PURE's RLOO).
        #[serde(default = "one")]
        gamma: f64,
    },
    /// PURE's strict min form: `G_t = min_{k≥t, s_k=1} r_k`, the smallest process reward still
    /// ahead of token `t`; a token with no process reward ahead of it (after the last step, or
    /// a row without steps) has `G_t = 0`.
    #[default]
    Min,
}

fn one() -> f64 {
    1.0
}

/// PURE's approximate min-form transformation of the process rewards (Cheng et al. 2025,
/// arXiv 2504.15275, §"min-form credit assignment"; their code's `credit_assignment = T`):
/// on each row, over the tokens of its step mask,
/// `w_j = exp(−r_j/T) / Σ_{k: s_k=1} exp(−r_k/T)` and `r*_j = w_j·r_j`; entries off the step
/// mask become 0. The sum of a row's transformed rewards is a soft minimum of its rewards
/// (→ `min_j r_j` as `T → 0`, → their mean as `T → ∞`), so the ordinary sum-form returns of
/// `r*` approximate the min form. A row with an empty step mask is all zeros. Errors: `T` not
/// finite and > 0, mismatched shapes.
pub fn approx_min_form(
    token_rewards: &[Vec<f32>],
    step_mask: &[Vec<f32>],
    temperature: f64,
) -> Result<Vec<Vec<f32>>, AlgoError> {
    const WHAT: &str = "approx_min_form";
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(invalid(
            WHAT,
            "temperature",
            temperature,
            "a finite value > 0",
        ));
    }
    let b = token_rewards.len();
    let t = check_rows(WHAT, "token_rewards", token_rewards, b, None)?;
    check_rows(WHAT, "step_mask", step_mask, b, Some(t))?;
    Ok(token_rewards
        .iter()
        .zip(step_mask)
        .map(|(r, s)| {
            let on: Vec<usize> = (0..t).filter(|&k| s[k] != 0.0).collect();
            let mut out = vec![0.0f32; t];
            if on.is_empty() {
                return out;
            }
            // Shift by the smallest reward (the largest exponent) for stability.
            let lowest = on
                .iter()
                .map(|&k| f64::from(r[k]))
                .fold(f64::INFINITY, f64::min);
            let e: Vec<f64> = on
                .iter()
                .map(|&k| (-(f64::from(r[k]) - lowest) / temperature).exp())
                .collect();
            let z: f64 = e.iter().sum();
            for (&k, &ek) in on.iter().zip(&e) {
                out[k] = (ek / z * f64::from(r[k])) as f32;
            }
            out
        })
        .collect())
}

/// The returns of each row under `credit` (see [`CreditAssignment`]), 0 off the response mask.
/// Errors: γ outside `[0, 1]`, mismatched shapes.
pub fn process_returns(
    token_rewards: &[Vec<f32>],
    step_mask: &[Vec<f32>],
    response_mask: &[Vec<f32>],
    credit: CreditAssignment,
) -> Result<Vec<Vec<f32>>, AlgoError> {
    Ok(to_f32(returns_f64(
        "process_returns",
        token_rewards,
        step_mask,
        response_mask,
        credit,
    )?))
}

fn returns_f64(
    what: &'static str,
    token_rewards: &[Vec<f32>],
    step_mask: &[Vec<f32>],
    response_mask: &[Vec<f32>],
    credit: CreditAssignment,
) -> Result<Vec<Vec<f64>>, AlgoError> {
    let b = token_rewards.len();
    let t = check_rows(what, "token_level_rewards", token_rewards, b, None)?;
    check_rows(what, "step_mask", step_mask, b, Some(t))?;
    check_rows(what, "response_mask", response_mask, b, Some(t))?;
    if let CreditAssignment::Sum { gamma } = credit
        && !(0.0..=1.0).contains(&gamma)
    {
        return Err(invalid(what, "gamma", gamma, "a value in [0, 1]"));
    }
    Ok((0..b)
        .map(|i| {
            let (r, s, m) = (&token_rewards[i], &step_mask[i], &response_mask[i]);
            let mut out = vec![0.0f64; t];
            match credit {
                CreditAssignment::Sum { gamma } => {
                    let mut g = 0.0;
                    for k in (0..t).rev() {
                        g = f64::from(r[k]) * f64::from(m[k]) + gamma * g;
                        out[k] = g * f64::from(m[k]);
                    }
                }
                CreditAssignment::Min => {
                    let mut g: Option<f64> = None;
                    for k in (0..t).rev() {
                        if s[k] != 0.0 && m[k] != 0.0 {
                            let x = f64::from(r[k]);
                            g = Some(g.map_or(x, |v| v.min(x)));
                        }
                        out[k] = g.unwrap_or(0.0) * f64::from(m[k]);
                    }
                }
            }
            out
        })
        .collect())
}

/// PURE's RLOO advantages on process returns (Cheng et al. 2025, arXiv 2504.15275; RLOO of
/// Ahmadian et al. 2024): `G` = [`process_returns`] under `credit`, `Ḡ_j = Σ_t G_{j,t}/|y_j|`
/// the mean return over row `j`'s response tokens, and
/// `A_{i,t} = (G_{i,t} − mean_{j∈g(i), j≠i} Ḡ_j)·m_{i,t}`. PURE's code divides the other rows'
/// summed returns by the padded response width instead of each row's length; here the mean is
/// over each row's own tokens, so padding cannot move the baseline. A group of one has
/// baseline 0; a row with an empty mask has `Ḡ = 0` (it still counts in its group) and an
/// all-zero advantage row. The returns reported are `A` (as PURE's code). Errors: as
/// [`process_returns`], and `group` not `[B]`.
pub fn process_rloo_advantages(
    token_rewards: &[Vec<f32>],
    step_mask: &[Vec<f32>],
    response_mask: &[Vec<f32>],
    group: &[usize],
    credit: CreditAssignment,
) -> Result<Vec<Vec<f32>>, AlgoError> {
    const WHAT: &str = "process_rloo";
    let g = returns_f64(WHAT, token_rewards, step_mask, response_mask, credit)?;
    super::rows::check_len(WHAT, "group", group.len(), g.len())?;
    let mean_return: Vec<f64> = g
        .iter()
        .zip(response_mask)
        .map(|(row, m)| {
            let len: f64 = m.iter().map(|&w| f64::from(w)).sum();
            if len > 0.0 {
                row.iter().sum::<f64>() / len
            } else {
                0.0
            }
        })
        .collect();
    let mut baseline = vec![0.0f64; g.len()];
    for members in groups(group) {
        let n = members.len();
        if n < 2 {
            continue;
        }
        let total: f64 = members.iter().map(|&i| mean_return[i]).sum();
        for &i in &members {
            baseline[i] = (total - mean_return[i]) / (n - 1) as f64;
        }
    }
    Ok(g.iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .zip(&response_mask[i])
                .map(|(&x, &w)| ((x - baseline[i]) * f64::from(w)) as f32)
                .collect()
        })
        .collect())
}

/// PRIME's implicit process rewards (Cui et al. 2025, "Process Reinforcement through Implicit
/// Rewards", arXiv 2502.01456): with an implicit PRM `π_φ` (a causal LM trained as an outcome
/// reward model whose reward is `β·log π_φ/π_ref`), the token reward is
/// `r_t = β·(log π_φ(y_t|y_<t) − log π_ref(y_t|y_<t))·m_t`. The same formula as RTO's DPO token
/// rewards ([`dpo_token_rewards`]) without a sequence reward. All inputs `[B][T]`. Errors:
/// mismatched shapes, `β` negative or not finite.
pub fn implicit_process_rewards(
    prm_log_prob: &[Vec<f32>],
    ref_log_prob: &[Vec<f32>],
    response_mask: &[Vec<f32>],
    beta: f64,
) -> Result<Vec<Vec<f32>>, AlgoError> {
    let zeros = vec![0.0f32; prm_log_prob.len()];
    dpo_token_rewards(prm_log_prob, ref_log_prob, response_mask, &zeros, beta)
}

/// PRIME's implicit-PRM loss (Cui et al. 2025, arXiv 2502.01456, the cross-entropy update of
/// `φ` on the rollouts' outcome labels): with the sequence reward
/// `R_i = β·Σ_t m_{i,t}·(log π_φ(y_{i,t}) − log π_ref(y_{i,t}))` and the outcome label
/// `y_i ∈ {0, 1}` (e.g. the verifier's correctness),
/// `L = −(1/B)·Σ_i [y_i·log σ(R_i) + (1 − y_i)·log σ(−R_i)]`.
/// `prm_log_prob`, `ref_log_prob`, `mask`: `[B, T]`; `labels`: `[B]`. Returns `[1]`, with
/// gradients through `prm_log_prob`. Errors: mismatched shapes, `β` not finite and > 0, an empty
/// batch.
pub fn implicit_prm_loss(
    prm_log_prob: Tensor<2>,
    ref_log_prob: Tensor<2>,
    mask: Tensor<2>,
    labels: Tensor<1>,
    beta: f64,
) -> Result<Tensor<1>, AlgoError> {
    const WHAT: &str = "implicit_prm_loss";
    if !(beta.is_finite() && beta > 0.0) {
        return Err(invalid(WHAT, "beta", beta, "a finite value > 0"));
    }
    let dims = prm_log_prob.dims();
    for (array, d) in [("ref_log_prob", ref_log_prob.dims()), ("mask", mask.dims())] {
        if d != dims {
            return Err(AlgoError::ShapeMismatch {
                what: WHAT,
                array,
                expected: dims.to_vec(),
                actual: d.to_vec(),
            });
        }
    }
    if labels.dims() != [dims[0]] {
        return Err(AlgoError::ShapeMismatch {
            what: WHAT,
            array: "labels",
            expected: vec![dims[0]],
            actual: labels.dims().to_vec(),
        });
    }
    if dims[0] == 0 {
        return Err(invalid(WHAT, "batch size", 0.0, "at least one row"));
    }
    let reward = ((prm_log_prob - ref_log_prob) * mask)
        .sum_dim(1)
        .squeeze_dim::<1>(1)
        .mul_scalar(beta);
    let y = labels;
    let nll = (y.clone() * log_sigmoid(reward.clone())
        + (y.neg() + 1.0) * log_sigmoid(reward.neg()))
    .neg();
    Ok(nll.mean())
}
