//! Preference strength measured by an ensemble, and what a trainer does with it: flip the
//! labels the ensemble votes against, and give every pair an adaptive margin (Wang et al. 2024,
//! "Secrets of RLHF in Large Language Models Part II: Reward Modeling", §2).
//!
//! For pair `i` and member `m`, the preference strength is the member's reward difference
//! `d_i,m = r_m(x_i, y_c,i) − r_m(x_i, y_r,i)` (on each member's normalized scale, so members
//! count alike); over the `M` members
//!
//! `μ̂_i = (1/M) Σ_m d_i,m`,  `σ̂_i = sqrt((1/M) Σ_m (d_i,m − μ̂_i)²)`.
//!
//! A negative `μ̂` means the ensemble, on average, prefers the rejected response: the pairs with
//! the lowest `μ̂` are the likely mislabelled ones, and flipping them helps (the paper flips the
//! lowest 10 %). The adaptive margin trains Bradley–Terry with `−log σ(r_c − r_r − s·μ̂_i)`: a
//! clear preference must be won by a wide margin, an ambiguous one (μ̂ ≈ 0) by none.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::aggregate::RewardMatrix;

/// The reward recipe's `[preference_strength]` section: the pairs are scored by an ensemble
/// before training, then flipped and/or given adaptive margins.
///
/// ```toml
/// [preference_strength]
/// ensemble = "runs/rm-ensemble-minilm-hh"     # an ensemble folder, or one reward-model folder
/// flip = { rule = "lowest", fraction = 0.1 }  # optional
/// adaptive_margin = 1.0                       # optional: margin = 1.0 · μ̂ (needs
///                                             # objective margin = true)
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceStrengthConfig {
    pub ensemble: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flip: Option<FlipRule>,
    /// The scale `s` of the adaptive margin `s · μ̂`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_margin: Option<f32>,
    /// Texts per scoring forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

fn default_batch_size() -> usize {
    32
}

impl PreferenceStrengthConfig {
    /// A flip rule or a margin (else the section does nothing), each in range.
    pub fn validate(&self) -> Result<()> {
        if self.flip.is_none() && self.adaptive_margin.is_none() {
            bail!(
                "[preference_strength] names neither flip nor adaptive_margin: it would score every pair and change nothing"
            );
        }
        if let Some(flip) = &self.flip {
            flip.validate()?;
        }
        if let Some(s) = self.adaptive_margin
            && !(s.is_finite() && s > 0.0)
        {
            bail!("preference_strength.adaptive_margin {s} must be a finite scale > 0");
        }
        if self.batch_size == 0 {
            bail!("preference_strength.batch_size must be at least 1");
        }
        Ok(())
    }
}

/// A pair's strength over the ensemble.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairStrength {
    /// `μ̂`: the members' mean reward difference (chosen − rejected).
    pub mean: f32,
    /// `σ̂`: their population standard deviation (0 for one member).
    pub std: f32,
}

/// Strength of every pair from a `[members × 2N]` reward matrix whose columns interleave each
/// pair's chosen and rejected response (`c₀, r₀, c₁, r₁, …`; the matrix holds only finite
/// rewards).
pub fn preference_strength(rewards: &RewardMatrix) -> Result<Vec<PairStrength>> {
    let columns = rewards.samples();
    if !columns.is_multiple_of(2) {
        bail!("{columns} rewards per member: the columns must interleave (chosen, rejected) pairs");
    }
    let members = rewards.members();
    Ok((0..columns / 2)
        .map(|i| {
            let d: Vec<f64> = (0..members)
                .map(|m| {
                    let row = rewards.row(m);
                    row[2 * i] as f64 - row[2 * i + 1] as f64
                })
                .collect();
            let mean = d.iter().sum::<f64>() / members as f64;
            let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / members as f64;
            PairStrength {
                mean: mean as f32,
                std: var.sqrt() as f32,
            }
        })
        .collect())
}

/// Which pairs to flip.
///
/// ```toml
/// flip = { rule = "lowest", fraction = 0.1 }   # the lowest 10 % by μ̂, of those with μ̂ < 0
/// flip = { rule = "below", threshold = 0.0 }   # every pair with μ̂ < threshold
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FlipRule {
    /// The `fraction · N` pairs with the lowest `μ̂`, but only those the ensemble votes against
    /// (`μ̂ < 0`): a pair the ensemble agrees with is never flipped.
    Lowest { fraction: f64 },
    /// Every pair with `μ̂ < threshold` (`threshold ≤ 0`).
    Below { threshold: f32 },
}

impl FlipRule {
    pub fn validate(&self) -> Result<()> {
        match self {
            FlipRule::Lowest { fraction } if !(0.0..=1.0).contains(fraction) => bail!(
                "preference_strength.flip.fraction {fraction} must be in [0, 1] (a share of the pairs)"
            ),
            FlipRule::Below { threshold } if !(threshold.is_finite() && *threshold <= 0.0) => {
                bail!(
                    "preference_strength.flip.threshold {threshold} must be ≤ 0: above 0 it would flip pairs the ensemble agrees with"
                )
            }
            _ => Ok(()),
        }
    }

    /// Whether each pair is flipped.
    pub fn flips(&self, strengths: &[PairStrength]) -> Vec<bool> {
        match self {
            FlipRule::Below { threshold } => {
                strengths.iter().map(|s| s.mean < *threshold).collect()
            }
            FlipRule::Lowest { fraction } => {
                let count = (fraction * strengths.len() as f64).round() as usize;
                let mut order: Vec<usize> = (0..strengths.len()).collect();
                order.sort_by(|&a, &b| {
                    strengths[a]
                        .mean
                        .total_cmp(&strengths[b].mean)
                        .then(a.cmp(&b))
                });
                let mut flip = vec![false; strengths.len()];
                for &i in order.iter().take(count) {
                    if strengths[i].mean < 0.0 {
                        flip[i] = true;
                    }
                }
                flip
            }
        }
    }
}

/// The adaptive margin of each pair after flipping: `scale · μ̂` (`−scale · μ̂` for a flipped
/// pair, whose chosen and rejected responses swap).
pub fn adaptive_margins(strengths: &[PairStrength], flipped: &[bool], scale: f32) -> Vec<f32> {
    strengths
        .iter()
        .zip(flipped)
        .map(|(s, &f)| scale * if f { -s.mean } else { s.mean })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: Vec<Vec<f32>>) -> RewardMatrix {
        RewardMatrix::new(rows).unwrap()
    }

    #[test]
    fn strength_is_the_members_mean_and_spread_of_reward_differences() {
        // Two members, two pairs. Pair 0: d = (2 − 1, 4 − 1) = (1, 3) → μ̂ 2, σ̂ 1.
        // Pair 1: d = (0 − 1, 1 − 0) = (−1, 1) → μ̂ 0, σ̂ 1.
        let s = preference_strength(&matrix(vec![
            vec![2.0, 1.0, 0.0, 1.0],
            vec![4.0, 1.0, 1.0, 0.0],
        ]))
        .unwrap();
        assert_eq!(
            s,
            [
                PairStrength {
                    mean: 2.0,
                    std: 1.0
                },
                PairStrength {
                    mean: 0.0,
                    std: 1.0
                }
            ]
        );
        let err = preference_strength(&matrix(vec![vec![1.0, 2.0, 3.0]])).unwrap_err();
        assert!(err.to_string().contains("interleave"), "{err}");
    }

    #[test]
    fn flips_take_the_lowest_pairs_the_ensemble_votes_against() {
        let s: Vec<PairStrength> = [0.5, -2.0, -0.1, 1.0, -0.5, 0.2, 3.0, -3.0, 0.0, 0.1]
            .iter()
            .map(|&mean| PairStrength { mean, std: 0.0 })
            .collect();
        // Lowest 30 % = 3 pairs: −3.0 (7), −2.0 (1), −0.5 (4).
        let lowest = FlipRule::Lowest { fraction: 0.3 }.flips(&s);
        let idx: Vec<usize> = (0..10).filter(|&i| lowest[i]).collect();
        assert_eq!(idx, [1, 4, 7]);
        // Lowest 80 % = 8 pairs, but only the 4 with μ̂ < 0 flip.
        let most = FlipRule::Lowest { fraction: 0.8 }.flips(&s);
        assert_eq!(most.iter().filter(|&&f| f).count(), 4);
        let below = FlipRule::Below { threshold: -0.3 }.flips(&s);
        let idx: Vec<usize> = (0..10).filter(|&i| below[i]).collect();
        assert_eq!(idx, [1, 4, 7]);
        // Margins: scale · μ̂, sign-flipped with the pair.
        let m = adaptive_margins(&s[..2], &[false, true], 0.5);
        assert_eq!(m, [0.25, 1.0]);
        for (rule, field) in [
            (FlipRule::Lowest { fraction: 1.5 }, "fraction"),
            (FlipRule::Below { threshold: 0.5 }, "threshold"),
        ] {
            let err = rule.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
