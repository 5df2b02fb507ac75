//! Turning rewards into the rows the estimators take: several reward components into one
//! score (sum-then-normalise or GDPO's normalise-then-sum), a DPO policy's token-level rewards
//! (RTO) and macro-action advantages (MA-RLHF). Host-side, on f32 rows, computed in f64.

use serde::{Deserialize, Serialize};

use super::AlgoError;
use super::advantage::{GrpoScale, grpo_scores};
use super::error::invalid;
use super::rows::{check_len, check_rows};

/// The ε of the group normalisation in [`aggregate_reward_components`] (verl's GRPO default).
pub const GROUP_NORM_EPSILON: f64 = 1e-6;

/// How [`aggregate_reward_components`] combines `K` reward components.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentAggregation {
    /// `z(Σ_k w_k·c_k)`: the weighted sum, then one group normalisation (GRPO on a summed
    /// reward).
    #[default]
    SumThenNormalize,
    /// `Σ_k w_k·z(c_k)`: each component group-normalised on its own, then the weighted sum
    /// (GDPO, "Group reward-Decoupled Normalization Policy Optimization", NVIDIA 2026), so a
    /// component of large spread cannot drown the others and distinct component combinations
    /// keep distinct advantages.
    NormalizeThenSum,
}

/// Combines `components` (`[K][B]`: component `k`'s reward for row `i`) with `weights` (`[K]`)
/// into one per-row score, group by group (`group[i]` is row `i`'s prompt). The group
/// normalisation is GRPO's, `z(x)_i = (x_i − mean_g x) / (std_g x + ε)` with the unbiased
/// standard deviation and `ε = 1e-6`; a group of one has mean 0 and standard deviation 1 (verl's
/// convention) and an all-equal group normalises to 0. Errors: `weights` not `[K]`, a component
/// not `[B]`, a non-finite weight, no component.
pub fn aggregate_reward_components(
    components: &[Vec<f32>],
    weights: &[f64],
    group: &[usize],
    mode: ComponentAggregation,
) -> Result<Vec<f32>, AlgoError> {
    const WHAT: &str = "aggregate_reward_components";
    if components.is_empty() {
        return Err(AlgoError::ShapeMismatch {
            what: WHAT,
            array: "components",
            expected: vec![weights.len().max(1), group.len()],
            actual: vec![0],
        });
    }
    check_len(WHAT, "weights", weights.len(), components.len())?;
    let b = group.len();
    check_rows(WHAT, "components", components, components.len(), Some(b))?;
    if let Some(&w) = weights.iter().find(|w| !w.is_finite()) {
        return Err(invalid(WHAT, "weights", w, "finite weights"));
    }
    let z = |xs: &[f64]| grpo_scores(xs, group, GrpoScale::GroupStd, GROUP_NORM_EPSILON);
    let weighted_sum = |rows: &[Vec<f64>]| -> Vec<f64> {
        (0..b)
            .map(|i| rows.iter().zip(weights).map(|(r, &w)| w * r[i]).sum())
            .collect()
    };
    let rows: Vec<Vec<f64>> = components
        .iter()
        .map(|c| c.iter().map(|&x| f64::from(x)).collect())
        .collect();
    let out = match mode {
        ComponentAggregation::SumThenNormalize => z(&weighted_sum(&rows)),
        ComponentAggregation::NormalizeThenSum => {
            let normalised: Vec<Vec<f64>> = rows.iter().map(|r| z(r)).collect();
            weighted_sum(&normalised)
        }
    };
    Ok(out.into_iter().map(|x| x as f32).collect())
}

/// Token-level rewards from a DPO-trained policy (RTO, Zhong et al. 2024, "DPO Meets PPO:
/// Reinforced Token Optimization for RLHF"):
/// `r_t = β·(log π_dpo(y_t) − log π_ref(y_t))·m_t`, plus the sequence reward `R_i` on the last
/// token of row `i`'s mask. All inputs `[B][T]` except `sequence_rewards` (`[B]`); a row with an
/// empty mask gets all zeros (its sequence reward has no token to sit on). Errors: mismatched
/// shapes, `β` negative or not finite.
pub fn dpo_token_rewards(
    dpo_log_prob: &[Vec<f32>],
    ref_log_prob: &[Vec<f32>],
    response_mask: &[Vec<f32>],
    sequence_rewards: &[f32],
    beta: f64,
) -> Result<Vec<Vec<f32>>, AlgoError> {
    const WHAT: &str = "dpo_token_rewards";
    if !(beta.is_finite() && beta >= 0.0) {
        return Err(invalid(WHAT, "beta", beta, "a finite value >= 0"));
    }
    let b = dpo_log_prob.len();
    let t = check_rows(WHAT, "dpo_log_prob", dpo_log_prob, b, None)?;
    check_rows(WHAT, "ref_log_prob", ref_log_prob, b, Some(t))?;
    check_rows(WHAT, "response_mask", response_mask, b, Some(t))?;
    check_len(WHAT, "sequence_rewards", sequence_rewards.len(), b)?;
    Ok((0..b)
        .map(|i| {
            let m = &response_mask[i];
            let last = m.iter().rposition(|&w| w != 0.0);
            (0..t)
                .map(|k| {
                    if m[k] == 0.0 {
                        return 0.0;
                    }
                    let delta = f64::from(dpo_log_prob[i][k]) - f64::from(ref_log_prob[i][k]);
                    let mut r = beta * delta * f64::from(m[k]);
                    if Some(k) == last {
                        r += f64::from(sequence_rewards[i]);
                    }
                    r as f32
                })
                .collect()
        })
        .collect())
}

/// Macro-action advantages (MA-RLHF, Chai et al. 2024, "MA-RLHF: Reinforcement Learning from
/// Human Feedback with Macro Actions", fixed n-gram termination): the response tokens of each row
/// are cut, in order, into macro actions of `n` consecutive response tokens (the last may be
/// shorter), and every token of a macro action gets the mean of their advantages; entries off the
/// mask stay 0. Errors: `n = 0`, mismatched shapes.
pub fn macro_action_advantages(
    advantages: &[Vec<f32>],
    response_mask: &[Vec<f32>],
    n: usize,
) -> Result<Vec<Vec<f32>>, AlgoError> {
    const WHAT: &str = "macro_action_advantages";
    if n == 0 {
        return Err(invalid(WHAT, "n", 0.0, "a macro-action length >= 1"));
    }
    let b = advantages.len();
    let t = check_rows(WHAT, "advantages", advantages, b, None)?;
    check_rows(WHAT, "response_mask", response_mask, b, Some(t))?;
    Ok(advantages
        .iter()
        .zip(response_mask)
        .map(|(a, m)| {
            let positions: Vec<usize> = (0..t).filter(|&k| m[k] != 0.0).collect();
            let mut out = vec![0.0f32; t];
            for chunk in positions.chunks(n) {
                let mean = chunk.iter().map(|&k| f64::from(a[k])).sum::<f64>() / chunk.len() as f64;
                for &k in chunk {
                    out[k] = mean as f32;
                }
            }
            out
        })
        .collect())
}
