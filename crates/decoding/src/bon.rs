//! The closed forms of best-of-n: its KL bound, the reward curve over n, the soft selection.

use serde::Serialize;

use crate::error::{DecodeError, Result};

/// The KL divergence bound of the best-of-n policy from the base policy,
/// `KL(π_bon ‖ π) ≤ log n − (n − 1)/n` (Beirami et al. 2024, "Theoretical guarantees on the
/// best-of-n alignment policy"; Yang et al. 2024, "Asymptotics of Language Model Alignment").
/// 0 at n = 1; n = 0 is an error.
pub fn kl_bound(n: usize) -> Result<f64> {
    if n == 0 {
        return Err(DecodeError::config("n", "best-of-n needs n ≥ 1, got 0"));
    }
    let n = n as f64;
    Ok(n.ln() - (n - 1.0) / n)
}

/// One point of the best-of-n curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    pub n: usize,
    /// Mean over prompts of `max_{i < n} r_i` (the best of the first n samples).
    pub mean_reward: f64,
    /// [`kl_bound`]`(n)`.
    pub kl_bound: f64,
}

/// The best-of-n curve from one sampling pass: for each n in `ns`, the mean over prompts of
/// `max(r_1 … r_n)` over each prompt's first n samples (samples are i.i.d., so the first n are
/// a best-of-n draw), with the KL bound `log n − (n − 1)/n`. Monotone in n by construction.
/// `rewards[p]` are prompt p's sample rewards in sampling order; every prompt needs at least
/// `max(ns)` of them.
pub fn best_of_n_curve(rewards: &[Vec<f32>], ns: &[usize]) -> Result<Vec<CurvePoint>> {
    if rewards.is_empty() {
        return Err(DecodeError::EmptyInput(
            "the curve needs at least one prompt".into(),
        ));
    }
    ns.iter()
        .map(|&n| {
            let kl = kl_bound(n)?;
            if let Some(p) = rewards.iter().position(|r| r.len() < n) {
                return Err(DecodeError::config(
                    "curve",
                    format!("n = {n} but prompt {p} has {} samples", rewards[p].len()),
                ));
            }
            let sum: f64 = rewards
                .iter()
                .map(|r| f64::from(r[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max)))
                .sum();
            Ok(CurvePoint {
                n,
                mean_reward: sum / rewards.len() as f64,
                kl_bound: kl,
            })
        })
        .collect()
}

/// The unbiased best-of-n weights over `m` samples: `w_j = C(j − 1, n − 1) / C(m, n)` for
/// the sample of ascending rank `j = 1 … m` — the probability that it is the best of a
/// uniformly drawn n-subset of the m samples (it must be in the subset and the n − 1 others
/// below it). They sum to 1 (the hockey-stick identity); n = 1 gives 1/m each, n = m puts
/// all weight on the top sample. Computed in log space, so large m does not overflow.
/// Errors for n = 0 and n > m.
pub fn best_of_n_weights(m: usize, n: usize) -> Result<Vec<f64>> {
    if n == 0 {
        return Err(DecodeError::config("n", "best-of-n needs n ≥ 1, got 0"));
    }
    if n > m {
        return Err(DecodeError::config(
            "n",
            format!("best-of-{n} needs at least {n} samples per prompt, there are {m}"),
        ));
    }
    let ln_choose =
        |a: usize, b: usize| -> f64 { (1..=b).map(|t| ((a - b + t) as f64 / t as f64).ln()).sum() };
    let total = ln_choose(m, n);
    Ok((1..=m)
        .map(|j| {
            if j < n {
                0.0
            } else {
                (ln_choose(j - 1, n - 1) - total).exp()
            }
        })
        .collect())
}

/// The unbiased estimate, from `m` i.i.d. samples of one prompt, of `E[value of the best-of-n
/// choice]` when the choice is made by `selector` (a proxy reward) and judged by `value` (a
/// gold reward, or the proxy itself):
/// `Ê_n = Σ_j C(j − 1, n − 1) / C(m, n) · value_(j)`, samples ranked by ascending selector
/// (ties: the lower index ranks higher, as [`best_index`] picks it) — the mean over all
/// C(m, n) subsets of size n of the value of each subset's best-of-n choice (Nakano et al.
/// 2021, "WebGPT", appendix; Gao et al. 2023, "Scaling Laws for Reward Model
/// Overoptimization"). Errors for n = 0, n > m, or slices of different lengths.
pub fn expected_best_of_n(selector: &[f32], value: &[f32], n: usize) -> Result<f64> {
    if selector.len() != value.len() {
        return Err(DecodeError::config(
            "rewards",
            format!(
                "{} selector rewards but {} values",
                selector.len(),
                value.len()
            ),
        ));
    }
    let weights = best_of_n_weights(selector.len(), n)?;
    let mut order: Vec<usize> = (0..selector.len()).collect();
    order.sort_by(|&a, &b| selector[a].total_cmp(&selector[b]).then(b.cmp(&a)));
    Ok(order
        .iter()
        .zip(&weights)
        .map(|(&i, w)| w * f64::from(value[i]))
        .sum())
}

/// Index of the largest reward (the first on ties): the best-of-n choice.
pub fn best_index(rewards: &[f32]) -> usize {
    rm_core::sampling::argmax(rewards)
}

/// The soft best-of-n choice (Verdun et al. 2025, "Soft Best-of-n Sampling"): sample i with
/// probability `p_i = exp(r_i/λ) / Σ_j exp(r_j/λ)`, drawn by inverse CDF with the uniform
/// number `u ∈ [0, 1)`. λ = 0 is best-of-n (the argmax); λ → ∞ is uniform over the samples.
/// Computed as `exp((r_i − max r)/λ)` so that no λ overflows.
pub fn soft_best_index(rewards: &[f32], lambda: f64, u: f64) -> usize {
    if lambda == 0.0 || rewards.len() <= 1 {
        return best_index(rewards);
    }
    let max = rewards.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = rewards
        .iter()
        .map(|&r| ((f64::from(r) - max) / lambda).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = 0.0;
    for (i, w) in weights.iter().enumerate() {
        cumulative += w / total;
        if u < cumulative {
            return i;
        }
    }
    rewards.len() - 1
}
