//! The truncated importance-sampling correction between the distribution completions were
//! sampled from (`q`: temperature, top-k/top-p) and the policy's own (`π_old`, recomputed by
//! the trainer): each token's advantage is weighted by `min(π_old/q, cap)` (or the token
//! masked above the cap), per token or with one ratio per sequence.

use serde::{Deserialize, Serialize};

/// How the importance-sampling correction between the sampler and the policy is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionLevel {
    /// No correction (the sampler draws from the policy itself: temperature 1, no top-k/p).
    #[default]
    Off,
    /// Per-token ratios `π_old(y_t)/q(y_t)`.
    Token,
    /// One ratio per sequence, `Π_t π_old(y_t)/q(y_t)`, for all its tokens.
    Sequence,
}

/// What happens to a ratio above the cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionMode {
    /// Truncated importance sampling: the weight is `min(ratio, cap)` (Ionides 2008; as verl's
    /// and TRL's `vllm_importance_sampling_correction`).
    #[default]
    Truncate,
    /// The token (or sequence) gets no loss.
    Mask,
}

/// `[rollout.importance_correction]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportanceCorrection {
    #[serde(default)]
    pub level: CorrectionLevel,
    #[serde(default)]
    pub mode: CorrectionMode,
    #[serde(default = "cap")]
    pub cap: f64,
}

fn cap() -> f64 {
    2.0
}

impl Default for ImportanceCorrection {
    fn default() -> Self {
        Self {
            level: CorrectionLevel::Off,
            mode: CorrectionMode::Truncate,
            cap: cap(),
        }
    }
}

/// The importance weights of one completion's tokens (old policy over sampler, both as log-probs)
/// and whether each was capped.
pub fn importance_weights(
    correction: &ImportanceCorrection,
    old: &[f32],
    sampler: &[f32],
) -> (Vec<f32>, usize) {
    let n = old.len();
    let log_ratios: Vec<f64> = old
        .iter()
        .zip(sampler)
        .map(|(&o, &q)| o as f64 - q as f64)
        .collect();
    let ratios: Vec<f64> = match correction.level {
        CorrectionLevel::Off => return (vec![1.0; n], 0),
        CorrectionLevel::Token => log_ratios.iter().map(|l| l.exp()).collect(),
        CorrectionLevel::Sequence => vec![log_ratios.iter().sum::<f64>().exp(); n],
    };
    let mut capped = 0;
    let weights = ratios
        .iter()
        .map(|&r| {
            if r > correction.cap {
                capped += 1;
                match correction.mode {
                    CorrectionMode::Truncate => correction.cap as f32,
                    CorrectionMode::Mask => 0.0,
                }
            } else {
                r as f32
            }
        })
        .collect();
    (weights, capped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    /// Truncated importance sampling by hand: ratios e^(old − q) per token, or their product per
    /// sequence, capped at 2 (truncate) or zeroed (mask); off gives ones.
    #[test]
    fn importance_weights_truncate_or_mask_per_token_or_per_sequence() {
        let old = [-1.0f32, -2.0, -0.5];
        let q = [-1.5f32, -1.0, -0.5];
        let token = ImportanceCorrection {
            level: CorrectionLevel::Token,
            mode: CorrectionMode::Truncate,
            cap: 1.5,
        };
        let (w, capped) = importance_weights(&token, &old, &q);
        // e^0.5 = 1.6487 > 1.5 is capped; e^-1 = 0.3679; e^0 = 1.
        assert!(close(&w, &[1.5, (-1.0f32).exp(), 1.0]), "{w:?}");
        assert_eq!(capped, 1);
        let mask = ImportanceCorrection {
            mode: CorrectionMode::Mask,
            ..token.clone()
        };
        let (w, capped) = importance_weights(&mask, &old, &q);
        assert!(close(&w, &[0.0, (-1.0f32).exp(), 1.0]), "{w:?}");
        assert_eq!(capped, 1);
        // Per sequence: e^(0.5 − 1 + 0) = e^-0.5 for every token, below the cap.
        let sequence = ImportanceCorrection {
            level: CorrectionLevel::Sequence,
            ..token.clone()
        };
        let (w, capped) = importance_weights(&sequence, &old, &q);
        assert!(close(&w, &[(-0.5f32).exp(); 3]), "{w:?}");
        assert_eq!(capped, 0);
        let (w, _) = importance_weights(&sequence, &[0.0, 0.0], &[-1.0, -1.0]);
        assert!(close(&w, &[1.5, 1.5]), "e^2 is capped: {w:?}");
        let (w, capped) = importance_weights(&ImportanceCorrection::default(), &old, &q);
        assert!(close(&w, &[1.0; 3]) && capped == 0);
    }
}
