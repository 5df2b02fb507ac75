//! Length rewards. The policy's tokens are not available here, so length `L` is approximated:
//! `unit = "words"` (default) counts whitespace-separated words, `unit = "chars"` counts Unicode
//! scalar values.
//!
//! Exactly one of two modes:
//! - **target** (L1 / LCPO, Aggarwal & Welleck 2025, "L1: Controlling How Long A Reasoning Model
//!   Thinks With Reinforcement Learning": `r = 1[correct] − α·|n_gold − n_y|`; the correctness
//!   term is a separate `gsm8k` component of the set): `r = −α·|L − T|`, `α = alpha` (default
//!   `1/T`, so `r = −1` at a distance of `T`);
//! - **overlong** (DAPO's soft overlong punishment, Yu et al. 2025, "DAPO: An Open-Source LLM
//!   Reinforcement Learning System at Scale", eq. 13), with `L_max = max_length` and
//!   `L_cache = cache`:
//!   `r = 0` if `L ≤ L_max − L_cache`;
//!   `r = ((L_max − L_cache) − L) / L_cache` if `L_max − L_cache < L ≤ L_max`;
//!   `r = −1` if `L > L_max`.
//!   A truncated completion (it hit `max_new_tokens`) is treated as `L > L_max`: `r = −1`.

use serde::{Deserialize, Serialize};

use super::{RewardError, RewardFunction, RewardSample, per_sample};

/// How length is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthUnit {
    /// Whitespace-separated words.
    #[default]
    Words,
    /// Unicode scalar values.
    Chars,
}

impl LengthUnit {
    pub fn count(self, text: &str) -> usize {
        match self {
            LengthUnit::Words => text.split_whitespace().count(),
            LengthUnit::Chars => text.chars().count(),
        }
    }
}

/// `kind = "length"`: set `target` (with optional `alpha`) or `max_length` and `cache`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthSpec {
    #[serde(default)]
    pub unit: LengthUnit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Target { target: f64, alpha: f64 },
    Overlong { max: f64, cache: f64 },
}

/// The length reward.
pub struct LengthReward {
    name: String,
    unit: LengthUnit,
    mode: Mode,
}

impl LengthReward {
    pub fn new(name: &str, spec: &LengthSpec) -> anyhow::Result<Self> {
        let mode = match (spec.target, spec.max_length) {
            (Some(_), Some(_)) | (None, None) => anyhow::bail!(
                "length: set either `target` (target length) or `max_length` and `cache` (overlong penalty), not both"
            ),
            (Some(target), None) => {
                if target == 0 {
                    anyhow::bail!("length: target must be at least 1");
                }
                if spec.cache.is_some() {
                    anyhow::bail!("length: `cache` goes with `max_length`, not `target`");
                }
                let alpha = spec.alpha.unwrap_or(1.0 / target as f64);
                if !(alpha.is_finite() && alpha >= 0.0) {
                    anyhow::bail!("length: alpha {alpha} must be finite and ≥ 0");
                }
                Mode::Target {
                    target: target as f64,
                    alpha,
                }
            }
            (None, Some(max)) => {
                let Some(cache) = spec.cache else {
                    anyhow::bail!("length: `max_length` needs `cache` (DAPO's L_cache)");
                };
                if cache == 0 || cache > max {
                    anyhow::bail!("length: cache {cache} must be in 1..=max_length ({max})");
                }
                if spec.alpha.is_some() {
                    anyhow::bail!("length: `alpha` goes with `target`, not `max_length`");
                }
                Mode::Overlong {
                    max: max as f64,
                    cache: cache as f64,
                }
            }
        };
        Ok(Self {
            name: name.to_string(),
            unit: spec.unit,
            mode,
        })
    }

    /// The reward of a completion of length `len` (in the spec's unit).
    pub fn score_len(&self, len: usize, truncated: bool) -> f32 {
        let l = len as f64;
        let r = match self.mode {
            Mode::Target { target, alpha } => -alpha * (l - target).abs(),
            Mode::Overlong { .. } if truncated => -1.0,
            Mode::Overlong { max, cache } => {
                if l <= max - cache {
                    0.0
                } else if l <= max {
                    ((max - cache) - l) / cache
                } else {
                    -1.0
                }
            }
        };
        r as f32
    }
}

impl RewardFunction for LengthReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
        per_sample(samples, |s| {
            Ok(self.score_len(self.unit.count(s.completion), s.truncated))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dapo_overlong_penalty_is_zero_then_linear_then_minus_one() {
        // L_max = 20, L_cache = 4: free up to 16, −(L − 16)/4 on (16, 20], −1 beyond.
        let r = LengthReward::new(
            "len",
            &LengthSpec {
                max_length: Some(20),
                cache: Some(4),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.score_len(10, false), 0.0);
        assert_eq!(r.score_len(16, false), 0.0);
        assert_eq!(r.score_len(17, false), -0.25);
        assert_eq!(r.score_len(19, false), -0.75);
        assert_eq!(r.score_len(20, false), -1.0);
        assert_eq!(r.score_len(21, false), -1.0);
        assert_eq!(r.score_len(3, true), -1.0);
    }

    #[test]
    fn target_length_is_minus_alpha_times_the_distance_in_words_or_chars() {
        let words = LengthReward::new(
            "len",
            &LengthSpec {
                target: Some(4),
                ..Default::default()
            },
        )
        .unwrap();
        // 6 words, target 4, α = 1/4: −0.5.
        assert_eq!(
            words.score_len(LengthUnit::Words.count("a b  c\nd e f"), false),
            -0.5
        );
        assert_eq!(words.score_len(4, false), 0.0);
        let chars = LengthReward::new(
            "len",
            &LengthSpec {
                unit: LengthUnit::Chars,
                target: Some(10),
                alpha: Some(0.1),
                ..Default::default()
            },
        )
        .unwrap();
        // "héllo" is 5 chars (not 6 bytes): −0.1·5.
        assert_eq!(
            chars.score_len(LengthUnit::Chars.count("héllo"), false),
            -0.5
        );
    }

    #[test]
    fn length_needs_exactly_one_mode() {
        let bad = [
            LengthSpec::default(),
            LengthSpec {
                target: Some(3),
                max_length: Some(10),
                cache: Some(2),
                ..Default::default()
            },
            LengthSpec {
                max_length: Some(10),
                ..Default::default()
            },
            LengthSpec {
                max_length: Some(10),
                cache: Some(11),
                ..Default::default()
            },
            LengthSpec {
                target: Some(0),
                ..Default::default()
            },
        ];
        for spec in bad {
            assert!(LengthReward::new("l", &spec).is_err(), "{spec:?}");
        }
    }
}
