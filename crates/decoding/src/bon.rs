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
