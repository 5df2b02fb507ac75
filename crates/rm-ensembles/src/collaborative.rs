//! Collaborative reward modeling: two reward models trained side by side, each choosing the
//! pairs its peer learns from (Zhang et al. 2025, "Two Minds Better Than One: Collaborative
//! Reward Modeling for LLM Alignment", arXiv:2505.10597).
//!
//! **Peer review.** On every batch of `n` pairs each model `m ∈ {A, B}` reviews the batch by its
//! reward margin `Δ_m,i = r_m(x_i, y_c,i) − r_m(x_i, y_r,i)` (read without gradient). It keeps
//! the `k = n − ⌊d_t · n⌋` pairs with the largest margins, the pairs it finds clean and
//! confident, and its *peer* trains on them:
//!
//! `L = mean_{i ∈ S_B} ℓ(Δ_A,i) + mean_{i ∈ S_A} ℓ(Δ_B,i)`,  `S_m = top-k_i Δ_m,i`
//!
//! with `ℓ` the recipe's pairwise loss (−log σ(Δ) for Bradley–Terry). Noisy (flipped) pairs are
//! the ones a model finds hard, with small or negative margins, so each model keeps them away
//! from the other; as the two models differ, one model's fitted mistakes are not passed to the
//! other (the co-teaching argument, Han et al. 2018, "Co-teaching: Robust Training of Deep
//! Neural Networks with Extremely Noisy Labels").
//!
//! **Curriculum.** Early in training neither model's margins mean much, so the dropped share
//! `d_t` starts at 0 and grows linearly to `drop_rate` over the first `ramp` fraction of the
//! optimizer steps: `d_t = drop_rate · min(1, t / (ramp · T))`. The models first learn from
//! every pair (the easy majority dominates the gradient), then each review filters more and
//! more hard pairs out, the easy-to-hard schedule that keeps the two reviewers in step.
//! `ramp = 0` filters at `drop_rate` from the first step.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// The recipe's `[collaborative]` section.
///
/// ```toml
/// [collaborative]
/// drop_rate = 0.2   # share of each batch a reviewer withholds from its peer, at full ramp
/// ramp = 0.5        # share of the schedule's optimizer steps (epochs × batches; max_steps
///                   # does not shorten it) over which the drop grows from 0
/// peer_seed = 43    # the second model's seed (default: train.seed + 1)
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollaborativeConfig {
    #[serde(default = "default_drop_rate")]
    pub drop_rate: f64,
    #[serde(default = "default_ramp")]
    pub ramp: f64,
    /// Model B's initialization seed (its head; the backbone is the same pretrained one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_seed: Option<u64>,
}

fn default_drop_rate() -> f64 {
    0.2
}

fn default_ramp() -> f64 {
    0.5
}

impl Default for CollaborativeConfig {
    fn default() -> Self {
        Self {
            drop_rate: default_drop_rate(),
            ramp: default_ramp(),
            peer_seed: None,
        }
    }
}

impl CollaborativeConfig {
    /// `0 ≤ drop_rate < 1`, `0 ≤ ramp ≤ 1`.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.drop_rate) {
            bail!(
                "collaborative.drop_rate {} must be in [0, 1) (at 1 a reviewer would withhold the whole batch)",
                self.drop_rate
            );
        }
        if !(0.0..=1.0).contains(&self.ramp) {
            bail!(
                "collaborative.ramp {} must be in [0, 1] (a share of the optimizer steps)",
                self.ramp
            );
        }
        Ok(())
    }

    /// Model B's seed.
    pub fn peer_seed(&self, base: u64) -> u64 {
        self.peer_seed.unwrap_or(base.wrapping_add(1))
    }

    /// The share `d_t` dropped at optimizer step `step` (0-based) of `total_steps`.
    pub fn drop_at(&self, step: u64, total_steps: u64) -> f64 {
        let ramp_steps = self.ramp * total_steps as f64;
        if ramp_steps <= 0.0 {
            return self.drop_rate;
        }
        self.drop_rate * (step as f64 / ramp_steps).min(1.0)
    }
}

/// How many of `n` pairs a reviewer keeps when it drops the share `drop`: `n − ⌊drop · n⌋`,
/// at least 1 (a batch is never emptied).
pub fn kept_count(n: usize, drop: f64) -> usize {
    let dropped = (drop * n as f64).floor() as usize;
    n.saturating_sub(dropped).max(1).min(n)
}

/// The indices (ascending) of the `keep` pairs with the largest margins; ties go to the lower
/// index, so the choice is deterministic. A margin that is not finite is an error naming the
/// pair (its rewards are broken, and ranking it would hide that).
pub fn peer_selection(margins: &[f32], keep: usize) -> Result<Vec<usize>> {
    if let Some(i) = margins.iter().position(|m| !m.is_finite()) {
        bail!(
            "pair {i} of the batch has a reward margin of {} (the reward model's output is not finite)",
            margins[i]
        );
    }
    let mut order: Vec<usize> = (0..margins.len()).collect();
    order.sort_by(|&a, &b| margins[b].total_cmp(&margins[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = order.into_iter().take(keep).collect();
    kept.sort_unstable();
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_ramps_linearly_then_holds() {
        let c = CollaborativeConfig {
            drop_rate: 0.4,
            ramp: 0.5,
            peer_seed: None,
        };
        c.validate().unwrap();
        // 100 steps, ramp over the first 50: 0 at step 0, 0.2 at 25, 0.4 from 50 on.
        assert_eq!(c.drop_at(0, 100), 0.0);
        assert!((c.drop_at(25, 100) - 0.2).abs() < 1e-12);
        assert!((c.drop_at(50, 100) - 0.4).abs() < 1e-12);
        assert!((c.drop_at(99, 100) - 0.4).abs() < 1e-12);
        let flat = CollaborativeConfig { ramp: 0.0, ..c };
        assert_eq!(flat.drop_at(0, 100), 0.4);
        assert_eq!(c.peer_seed(42), 43);
        assert_eq!(
            CollaborativeConfig {
                peer_seed: Some(7),
                ..c
            }
            .peer_seed(42),
            7
        );
    }

    #[test]
    fn bad_settings_are_refused_with_the_field() {
        for (c, field) in [
            (
                CollaborativeConfig {
                    drop_rate: 1.0,
                    ..Default::default()
                },
                "drop_rate",
            ),
            (
                CollaborativeConfig {
                    drop_rate: -0.1,
                    ..Default::default()
                },
                "drop_rate",
            ),
            (
                CollaborativeConfig {
                    ramp: 1.5,
                    ..Default::default()
                },
                "ramp",
            ),
        ] {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn a_reviewer_keeps_its_most_confident_pairs() {
        // 10 pairs, drop 0.25 → ⌊2.5⌋ = 2 dropped, 8 kept; never fewer than 1.
        assert_eq!(kept_count(10, 0.25), 8);
        assert_eq!(kept_count(10, 0.0), 10);
        assert_eq!(kept_count(1, 0.9), 1);
        assert_eq!(kept_count(3, 0.99), 1);
        let margins = [0.5, -2.0, 3.0, 0.1, -0.3];
        // Keep 3: margins 3.0 (2), 0.5 (0), 0.1 (3).
        assert_eq!(peer_selection(&margins, 3).unwrap(), [0, 2, 3]);
        assert_eq!(peer_selection(&margins, 5).unwrap(), [0, 1, 2, 3, 4]);
        // Ties go to the lower index.
        assert_eq!(peer_selection(&[1.0, 1.0, 1.0], 2).unwrap(), [0, 1]);
        let err = peer_selection(&[0.0, f32::NAN], 1).unwrap_err().to_string();
        assert!(err.contains("pair 1"), "{err}");
    }
}
