//! Synthetic label noise for robustness studies: the labels of a seeded random share of the
//! training pairs are flipped (chosen ↔ rejected), as in the noisy-preference experiments of
//! Zhang et al. 2025 ("Two Minds Better Than One", 20–40 % flipped) and of label-smoothing and
//! noise-robust reward-model work. Which pairs were flipped is returned, so a trainer can report
//! how many of the pairs it filtered out were the noisy ones.

use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// The `[data] label_noise = { rate = 0.4, seed = 7 }` setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelNoise {
    /// Share of the training pairs whose labels are flipped, in `[0, 1)`.
    pub rate: f64,
    #[serde(default)]
    pub seed: u64,
}

impl LabelNoise {
    /// `0 ≤ rate < 1`.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.rate) {
            bail!(
                "data.label_noise.rate {} must be in [0, 1) (the share of training pairs whose labels are flipped)",
                self.rate
            );
        }
        Ok(())
    }

    /// Which of `n` pairs to flip: exactly `round(rate · n)` of them, drawn without replacement
    /// from `StdRng(seed)` (`true` = flip).
    pub fn flips(&self, n: usize) -> Vec<bool> {
        let count = ((self.rate * n as f64).round() as usize).min(n);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(self.seed));
        let mut flip = vec![false; n];
        for &i in &order[..count] {
            flip[i] = true;
        }
        flip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flipped_share_is_exact_and_seeded() {
        let noise = LabelNoise { rate: 0.4, seed: 7 };
        noise.validate().unwrap();
        let f = noise.flips(1000);
        assert_eq!(f.iter().filter(|&&x| x).count(), 400);
        assert_eq!(f, noise.flips(1000), "same seed, same pairs");
        assert_ne!(f, LabelNoise { seed: 8, ..noise }.flips(1000));
        assert_eq!(LabelNoise { rate: 0.0, seed: 1 }.flips(5), [false; 5]);
        // round(0.25 · 6) = 2 (1.5 rounds away from zero).
        let six = LabelNoise {
            rate: 0.25,
            seed: 1,
        }
        .flips(6);
        assert_eq!(six.iter().filter(|&&x| x).count(), 2);
        for rate in [1.0, -0.1, f64::NAN] {
            let err = LabelNoise { rate, seed: 0 }.validate().unwrap_err();
            assert!(err.to_string().contains("label_noise.rate"), "{err}");
        }
    }
}
