//! Step scores → one solution score.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// How the step probabilities `p_1 … p_n` (each the PRM's probability that step `i` is correct)
/// of a solution become its score. Higher is better for every variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// `min_i p_i`: a solution is as good as its weakest step (Lightman et al., "Let's Verify
    /// Step by Step", 2023, compare it with the product; Wang et al., "Math-Shepherd", 2024,
    /// rank by it).
    Min,
    /// `∏_i p_i`: the probability that every step is correct if the steps were independent
    /// (Lightman et al., 2023, their PRM's solution score).
    Product,
    /// `p_n`: the last step's probability (the PRM used as an outcome verifier).
    Last,
    /// `(1/n) Σ_i p_i`.
    Mean,
    /// `Σ_i ln p_i` = `ln ∏_i p_i` (Lightman et al.'s product in log space, which does not
    /// underflow for long solutions; it ranks exactly as [`Aggregation::Product`]).
    SumLogProb,
}

impl Aggregation {
    /// Every aggregation, in report order.
    pub const ALL: [Aggregation; 5] = [
        Aggregation::Min,
        Aggregation::Product,
        Aggregation::Last,
        Aggregation::Mean,
        Aggregation::SumLogProb,
    ];

    /// The name used in recipes and reports.
    pub fn name(self) -> &'static str {
        match self {
            Aggregation::Min => "min",
            Aggregation::Product => "product",
            Aggregation::Last => "last",
            Aggregation::Mean => "mean",
            Aggregation::SumLogProb => "sum-log-prob",
        }
    }

    /// The solution score of step probabilities `probs`; an empty list or a probability outside
    /// [0, 1] (NaN included) is an error.
    pub fn apply(self, probs: &[f32]) -> Result<f64> {
        if probs.is_empty() {
            bail!("cannot aggregate the step scores of a solution with no steps");
        }
        if let Some((i, p)) = probs
            .iter()
            .enumerate()
            .find(|(_, p)| !(0.0..=1.0).contains(*p))
        {
            bail!("step {i} has probability {p}, outside [0, 1]");
        }
        let p = probs.iter().map(|&p| p as f64);
        Ok(match self {
            Aggregation::Min => p.fold(f64::INFINITY, f64::min),
            Aggregation::Product => p.product(),
            Aggregation::Last => probs[probs.len() - 1] as f64,
            Aggregation::Mean => p.sum::<f64>() / probs.len() as f64,
            // ln 0 = −∞ ranks a certainly wrong step last, as the product's 0 does.
            Aggregation::SumLogProb => p.map(f64::ln).sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregations_on_hand_worked_numbers() {
        let p = [0.9f32, 0.5, 0.8];
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        close(Aggregation::Min.apply(&p).unwrap(), 0.5);
        close(Aggregation::Product.apply(&p).unwrap(), 0.36);
        close(Aggregation::Last.apply(&p).unwrap(), 0.8);
        close(Aggregation::Mean.apply(&p).unwrap(), 2.2 / 3.0);
        close(Aggregation::SumLogProb.apply(&p).unwrap(), 0.36f64.ln());
        assert_eq!(
            Aggregation::SumLogProb.apply(&[0.0, 1.0]).unwrap(),
            f64::NEG_INFINITY
        );
        assert!(Aggregation::Min.apply(&[]).is_err());
        assert!(
            Aggregation::Mean
                .apply(&[0.5, f32::NAN])
                .unwrap_err()
                .to_string()
                .contains("step 1")
        );
    }
}
