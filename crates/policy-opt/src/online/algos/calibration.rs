//! InfAlign's calibrate-and-transform reward (Balashankar et al. 2024, "InfAlign:
//! Inference-aware language model alignment"): align for the way the policy will be *used* —
//! e.g. best-of-N sampling — by training on a transformed, calibrated reward.
//!
//! - Calibration: the reward's quantile under the reference policy's own samples for the same
//!   prompt, `C(x, y) = P_{z∼π_ref(·|x)}[r(x, z) < r(x, y)] + ½·P[r(x, z) = r(x, y)]`, estimated
//!   from `M` reference samples per prompt ([`calibrated_reward`]). It is in `[0, 1]`, invariant
//!   to any monotone change of the reward, and comparable across prompts.
//! - Transform `Φ` ([`CalibrationTransform`]): `exp(t·C)` for best-of-N inference (the paper's
//!   exponential transform; larger `t` for larger N), `−exp(−t·C)` for worst-of-N, or the
//!   identity (calibration alone). The paper tunes `t` per N; here it is the recipe's.

use serde::{Deserialize, Serialize};

/// `Φ` of InfAlign's calibrate-and-transform.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CalibrationTransform {
    /// `Φ(c) = c`.
    Identity,
    /// `Φ(c) = exp(t·c)` (best-of-N inference).
    Exp { t: f64 },
    /// `Φ(c) = −exp(−t·c)` (worst-of-N inference).
    NegExp { t: f64 },
}

impl CalibrationTransform {
    /// `Φ(c)`.
    pub fn apply(self, c: f64) -> f64 {
        match self {
            CalibrationTransform::Identity => c,
            CalibrationTransform::Exp { t } => (t * c).exp(),
            CalibrationTransform::NegExp { t } => -(-t * c).exp(),
        }
    }

    /// `t` finite and > 0 where there is one.
    pub fn validate(self) -> Result<(), String> {
        match self {
            CalibrationTransform::Identity => Ok(()),
            CalibrationTransform::Exp { t } | CalibrationTransform::NegExp { t } => {
                if t.is_finite() && t > 0.0 {
                    Ok(())
                } else {
                    Err(format!("transform t must be a finite number > 0, got {t}"))
                }
            }
        }
    }
}

/// `C = (#{z < v} + ½·#{z = v}) / M` over the reference rewards `reference` (`None` when there
/// are none).
pub fn calibrated_reward(value: f32, reference: &[f32]) -> Option<f64> {
    if reference.is_empty() {
        return None;
    }
    let below = reference.iter().filter(|&&z| z < value).count() as f64;
    let ties = reference.iter().filter(|&&z| z == value).count() as f64;
    Some((below + 0.5 * ties) / reference.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_transforms_on_hand_worked_numbers() {
        let reference = [0.1, 0.5, 0.5, 0.9];
        assert_eq!(calibrated_reward(0.0, &reference), Some(0.0));
        assert_eq!(calibrated_reward(1.0, &reference), Some(1.0));
        // Below 0.5: one; ties: two → (1 + 1)/4.
        assert_eq!(calibrated_reward(0.5, &reference), Some(0.5));
        assert_eq!(calibrated_reward(0.7, &reference), Some(0.75));
        assert_eq!(calibrated_reward(0.7, &[]), None);
        // Monotone in the reward, whatever its scale.
        let scaled: Vec<f32> = reference.iter().map(|x| 100.0 * x - 3.0).collect();
        assert_eq!(calibrated_reward(67.0, &scaled), Some(0.75));
        let exp = CalibrationTransform::Exp { t: 2.0 };
        assert!((exp.apply(0.5) - 1f64.exp()).abs() < 1e-12);
        let neg = CalibrationTransform::NegExp { t: 2.0 };
        assert!((neg.apply(0.5) + (-1f64).exp()).abs() < 1e-12);
        assert_eq!(CalibrationTransform::Identity.apply(0.3), 0.3);
        assert!(CalibrationTransform::Exp { t: 0.0 }.validate().is_err());
        assert!(
            CalibrationTransform::NegExp { t: f64::NAN }
                .validate()
                .is_err()
        );
        assert!(exp.validate().is_ok());
    }
}
