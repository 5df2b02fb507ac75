//! KL estimators (verl's `kl_penalty`) and the KL coefficient controllers.

use rm_core::burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::AlgoError;
use super::error::invalid;
use super::rows::check_rows;

/// A per-token estimator of `KL(π_θ ‖ π_ref)` from the sampled tokens' log-probs
/// (J. Schulman 2020, "Approximating KL Divergence", <http://joschu.net/blog/kl-approx.html>),
/// with `δ_t = log π_θ(y_t) − log π_ref(y_t)`. verl's names are accepted as aliases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `k1 = δ` (unbiased, high variance, can be negative); alias `kl`.
    #[serde(alias = "kl")]
    K1,
    /// `|δ|`.
    Abs,
    /// `k2 = ½·δ²` (biased, low variance; its gradient is the KL's); alias `mse`.
    #[serde(alias = "mse")]
    K2,
    /// `k3 = exp(−δ) + δ − 1 ≥ 0` (unbiased, low variance), with verl's clamps: `−δ` to
    /// `[−20, 20]` before the exponential and the result to `[−10, 10]`; alias `low_var_kl`.
    #[serde(alias = "low_var_kl")]
    K3,
}

/// The per-token KL estimate `[B, T]` (see [`KlEstimator`]); differentiable in both inputs.
/// The shapes must agree (burn panics on a broadcast mismatch, so the trainer checks them with
/// its masks; use [`kl_penalty_checked`] for a checked call).
pub fn kl_penalty(
    estimator: KlEstimator,
    log_prob: Tensor<2>,
    ref_log_prob: Tensor<2>,
) -> Tensor<2> {
    match estimator {
        KlEstimator::K1 => log_prob - ref_log_prob,
        KlEstimator::Abs => (log_prob - ref_log_prob).abs(),
        KlEstimator::K2 => (log_prob - ref_log_prob).square().mul_scalar(0.5),
        KlEstimator::K3 => {
            let kl = (ref_log_prob - log_prob).clamp(-20.0, 20.0);
            (kl.clone().exp() - kl).sub_scalar(1.0).clamp(-10.0, 10.0)
        }
    }
}

/// [`kl_penalty`] after checking that both inputs have the same shape.
pub fn kl_penalty_checked(
    estimator: KlEstimator,
    log_prob: Tensor<2>,
    ref_log_prob: Tensor<2>,
) -> Result<Tensor<2>, AlgoError> {
    super::aggregation::same_shape("kl_penalty", "ref_log_prob", log_prob.dims(), &ref_log_prob)?;
    Ok(kl_penalty(estimator, log_prob, ref_log_prob))
}

/// The KL penalty in the reward (verl's `apply_kl_penalty`, host-side on `[B][T]` rows):
/// `r_t = s_t − β·kl_t·m_t` for token-level scores `s` and a per-token KL estimate `kl` (e.g.
/// [`kl_penalty`] of the rollout's and the reference's log-probs). Also returns the batch's KL,
/// `mean_i (Σ_t m_t·kl_t / (Σ_t m_t + 1e-8))` (a row with an empty mask counts as 0, as verl),
/// the value to feed [`KlController::update`]. Errors: mismatched shapes, `β` negative or not
/// finite.
pub fn apply_kl_penalty(
    token_level_scores: &[Vec<f32>],
    kl: &[Vec<f32>],
    response_mask: &[Vec<f32>],
    beta: f64,
) -> Result<(Vec<Vec<f32>>, f64), AlgoError> {
    const WHAT: &str = "apply_kl_penalty";
    if !(beta.is_finite() && beta >= 0.0) {
        return Err(invalid(WHAT, "beta", beta, "a finite value >= 0"));
    }
    let b = token_level_scores.len();
    let t = check_rows(WHAT, "token_level_scores", token_level_scores, b, None)?;
    check_rows(WHAT, "kl", kl, b, Some(t))?;
    check_rows(WHAT, "response_mask", response_mask, b, Some(t))?;
    let mut total = 0.0;
    let rewards = (0..b)
        .map(|i| {
            let (mut sum, mut count) = (0.0, 0.0);
            let row = (0..t)
                .map(|k| {
                    let m = f64::from(response_mask[i][k]);
                    if m == 0.0 {
                        return token_level_scores[i][k];
                    }
                    let d = f64::from(kl[i][k]);
                    sum += d * m;
                    count += m;
                    (f64::from(token_level_scores[i][k]) - beta * d * m) as f32
                })
                .collect();
            total += sum / (count + 1e-8);
            row
        })
        .collect();
    let current = if b == 0 { 0.0 } else { total / b as f64 };
    Ok((rewards, current))
}

/// How the KL coefficient β evolves (verl's `algorithm.kl_ctrl`, a recipe's `[kl_ctrl]` table
/// with `kind = "fixed" | "adaptive"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum KlControllerConfig {
    /// A constant β.
    Fixed {
        /// β ≥ 0.
        coef: f64,
    },
    /// The adaptive controller of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
    /// Preferences"): `e = clip(KL / target − 1, −0.2, 0.2)`, `β ← β·(1 + e·n_steps / horizon)`.
    Adaptive {
        /// The initial β ≥ 0.
        init_coef: f64,
        /// The target KL > 0.
        target: f64,
        /// The horizon > 0, in steps (samples in Ziegler et al.).
        horizon: f64,
    },
}

/// A KL coefficient controller; serialisable (config and current β) so a resumed run continues
/// with the coefficient it had.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KlController {
    config: KlControllerConfig,
    value: f64,
}

impl KlController {
    /// A controller at its initial coefficient. Errors: a negative or non-finite coefficient, a
    /// target or horizon that is not positive.
    pub fn new(config: KlControllerConfig) -> Result<Self, AlgoError> {
        const WHAT: &str = "kl_ctrl";
        let non_negative = |parameter, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(invalid(WHAT, parameter, v, "a finite value >= 0"))
            }
        };
        let positive = |parameter, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(invalid(WHAT, parameter, v, "a finite value > 0"))
            }
        };
        let value = match config {
            KlControllerConfig::Fixed { coef } => non_negative("coef", coef)?,
            KlControllerConfig::Adaptive {
                init_coef,
                target,
                horizon,
            } => {
                positive("target", target)?;
                positive("horizon", horizon)?;
                non_negative("init_coef", init_coef)?
            }
        };
        Ok(Self { config, value })
    }

    /// The current coefficient β.
    pub fn value(&self) -> f64 {
        self.value
    }

    /// The configuration.
    pub fn config(&self) -> &KlControllerConfig {
        &self.config
    }

    /// Updates β after `n_steps` steps whose measured KL was `current_kl` (a no-op for the fixed
    /// controller, and for a non-finite KL, which would otherwise poison β).
    pub fn update(&mut self, current_kl: f64, n_steps: usize) {
        if let KlControllerConfig::Adaptive {
            target, horizon, ..
        } = self.config
            && current_kl.is_finite()
        {
            let error = (current_kl / target - 1.0).clamp(-0.2, 0.2);
            self.value *= 1.0 + error * n_steps as f64 / horizon;
        }
    }
}
