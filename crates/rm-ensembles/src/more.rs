//! MORE, multi-objective reward learning across diverse preference sets (Zeng et al. 2023,
//! "On Diversified Preferences of Large Language Model Alignment", arXiv:2312.07401).
//!
//! A reward model trained on a mix of preference sets (sources) whose annotators disagree
//! drifts towards whichever source's preferences dominate the gradient. MORE treats each source
//! `k` as an objective and weights the sources' losses so that the update follows the
//! preferences they *share*:
//!
//! 1. For every source `k` in the batch, the gradient of its Bradley–Terry loss with respect to
//!    the reward head's weight `w`, on the pooled features `φ` (no gradient into the backbone):
//!    `g_k = mean_{i ∈ k} −σ(−Δ_i) (φ(y_c,i) − φ(y_r,i))`, `Δ_i = r_c,i − r_r,i`;
//!    smoothed across steps, `G_k ← β G_k + (1 − β) g_k`, and normalized ([`GradientNormalization`]).
//! 2. The weights `λ` are the min-norm point of the sources' gradients' convex hull (MGDA;
//!    Désidéri 2012, Sener & Koltun 2018): `λ = argmin_{λ ∈ Δ^K} ‖Σ_k λ_k G_k‖²`, the
//!    direction no source's loss ascends along to first order.
//! 3. The loss is `L = Σ_k λ_k · K · (n_k / N) · L_k` (`n_k` of the batch's `N` pairs from
//!    source `k`, `L_k` their mean loss): with uniform `λ = 1/K` it is the plain mean.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// How each source's gradient is scaled before the min-norm problem.
///
/// Unscaled is the paper's default: the min-norm point then leans towards the sources whose
/// gradients are short (the preferences the model already fits, shared ones). With `l2` and
/// two sources the min-norm point of two unit vectors is always their midpoint, `λ = (½, ½)`,
/// which is the plain mean loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GradientNormalization {
    /// `G_k / ‖G_k‖` (a zero gradient stays zero): every source counts alike.
    L2,
    /// `G_k / p_k` with `p_k = (L_k + 1) / Σ_j (L_j + 1)`: sources with a higher loss get
    /// shorter gradients, hence more weight.
    Loss,
    /// Unscaled (the default).
    #[default]
    None,
}

/// The reward recipe's `[more]` section (the further preference sets are the pipeline's).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoreWeighting {
    /// `β` of the gradients' moving average (0, the default as in the paper's code: this
    /// micro-batch's gradients only).
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub normalize: GradientNormalization,
}

fn default_momentum() -> f64 {
    0.0
}

impl Default for MoreWeighting {
    fn default() -> Self {
        Self {
            momentum: default_momentum(),
            normalize: GradientNormalization::default(),
        }
    }
}

impl MoreWeighting {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.momentum) {
            bail!(
                "more.momentum {} must be in [0, 1) (the moving average's weight on the past)",
                self.momentum
            );
        }
        Ok(())
    }
}

/// `g = mean_i −σ(−Δ_i) (φ_c,i − φ_r,i)`: the gradient of the mean Bradley–Terry loss
/// `mean_i −log σ(Δ_i)` with respect to a linear head's weight, `Δ_i = w·(φ_c,i − φ_r,i)`.
/// `chosen` and `rejected` hold one feature row per pair.
pub fn head_gradient(deltas: &[f32], chosen: &[Vec<f32>], rejected: &[Vec<f32>]) -> Vec<f64> {
    let dim = chosen.first().map_or(0, Vec::len);
    let mut g = vec![0.0f64; dim];
    for ((&d, c), r) in deltas.iter().zip(chosen).zip(rejected) {
        let coef = -1.0 / (1.0 + (d as f64).exp()); // −σ(−Δ)
        for ((gj, &cj), &rj) in g.iter_mut().zip(c).zip(r) {
            *gj += coef * (cj as f64 - rj as f64);
        }
    }
    let n = deltas.len().max(1) as f64;
    g.iter_mut().for_each(|x| *x /= n);
    g
}

/// The gradients scaled as `mode` says (`losses[k]` is source `k`'s mean loss).
pub fn normalize_gradients(
    grads: &[Vec<f64>],
    losses: &[f64],
    mode: GradientNormalization,
) -> Vec<Vec<f64>> {
    let scale = |g: &Vec<f64>, s: f64| g.iter().map(|x| x / s).collect::<Vec<_>>();
    match mode {
        GradientNormalization::None => grads.to_vec(),
        GradientNormalization::L2 => grads
            .iter()
            .map(|g| {
                let n = g.iter().map(|x| x * x).sum::<f64>().sqrt();
                if n > 0.0 { scale(g, n) } else { g.clone() }
            })
            .collect(),
        GradientNormalization::Loss => {
            let total: f64 = losses.iter().map(|l| l + 1.0).sum();
            grads
                .iter()
                .zip(losses)
                .map(|(g, l)| scale(g, (l + 1.0) / total))
                .collect()
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `argmin_{γ ∈ [0, 1]} ‖(1 − γ) a + γ b‖²` from the inner products `aa = a·a`, `ab`, `bb`.
fn line_min(aa: f64, ab: f64, bb: f64) -> f64 {
    let denom = aa - 2.0 * ab + bb;
    if denom <= 1e-18 {
        return 0.0;
    }
    ((aa - ab) / denom).clamp(0.0, 1.0)
}

/// The min-norm weights `λ ∈ Δ^K` of `grads` (see the module docs): exact for two sources,
/// Frank–Wolfe with exact line search otherwise (stops when `λ` moves less than 1e-9 in L1, or
/// after 1,000 iterations). One source gets `[1]`; no source is an error.
pub fn min_norm_weights(grads: &[Vec<f64>]) -> Result<Vec<f64>> {
    let k = grads.len();
    if k == 0 {
        bail!("MORE weights need at least one source's gradient");
    }
    if k == 1 {
        return Ok(vec![1.0]);
    }
    let gram: Vec<Vec<f64>> = grads
        .iter()
        .map(|a| grads.iter().map(|b| dot(a, b)).collect())
        .collect();
    if k == 2 {
        // λ₀ a + (1 − λ₀) b: γ is the weight on b.
        let gamma = line_min(gram[0][0], gram[0][1], gram[1][1]);
        return Ok(vec![1.0 - gamma, gamma]);
    }
    let mut lambda = vec![1.0 / k as f64; k];
    for _ in 0..1000 {
        // M λ: the inner product of each gradient with the current point.
        let m_lambda: Vec<f64> = gram.iter().map(|row| dot(row, &lambda)).collect();
        let t = (0..k)
            .min_by(|&a, &b| m_lambda[a].total_cmp(&m_lambda[b]))
            .unwrap_or(0);
        let aa = dot(&lambda, &m_lambda);
        let ab = m_lambda[t];
        let bb = gram[t][t];
        let gamma = line_min(aa, ab, bb);
        let mut next: Vec<f64> = lambda.iter().map(|l| (1.0 - gamma) * l).collect();
        next[t] += gamma;
        let change: f64 = next.iter().zip(&lambda).map(|(a, b)| (a - b).abs()).sum();
        lambda = next;
        if change < 1e-9 {
            break;
        }
    }
    Ok(lambda)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm_of_mix(grads: &[Vec<f64>], lambda: &[f64]) -> f64 {
        let dim = grads[0].len();
        let mix: Vec<f64> = (0..dim)
            .map(|j| grads.iter().zip(lambda).map(|(g, l)| l * g[j]).sum())
            .collect();
        dot(&mix, &mix).sqrt()
    }

    #[test]
    fn min_norm_weights_match_closed_forms() {
        // Two orthogonal unit gradients: the midpoint, norm 1/√2.
        let w = min_norm_weights(&[vec![1.0, 0.0], vec![0.0, 1.0]]).unwrap();
        assert!(
            (w[0] - 0.5).abs() < 1e-12 && (w[1] - 0.5).abs() < 1e-12,
            "{w:?}"
        );
        // Parallel gradients of lengths 1 and 0.5: all weight on the shorter one.
        let w = min_norm_weights(&[vec![1.0, 0.0], vec![0.5, 0.0]]).unwrap();
        assert_eq!(w, [0.0, 1.0]);
        // Opposed gradients (1, 0) and (−3, 0): the hull holds 0 at λ = (3/4, 1/4).
        let w = min_norm_weights(&[vec![1.0, 0.0], vec![-3.0, 0.0]]).unwrap();
        assert!((w[0] - 0.75).abs() < 1e-12, "{w:?}");
        // Three gradients around the origin: the hull holds 0, at λ = (1/3, 1/3, 1/3).
        let g = [vec![1.0, 0.0], vec![0.0, 1.0], vec![-1.0, -1.0]];
        let w = min_norm_weights(&g).unwrap();
        assert!(norm_of_mix(&g, &w) < 1e-4, "{w:?}");
        for x in &w {
            assert!((x - 1.0 / 3.0).abs() < 1e-3, "{w:?}");
        }
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // (1, 0), (0, 1), (0.2, 0.2): both edges leave the vertex (0.2, 0.2) uphill, so it is
        // the min-norm point, λ = (0, 0, 1).
        let g = [vec![1.0, 0.0], vec![0.0, 1.0], vec![0.2, 0.2]];
        let w = min_norm_weights(&g).unwrap();
        assert!(w[2] > 0.999, "{w:?}");
        assert!(
            (norm_of_mix(&g, &w) - 0.2 * 2f64.sqrt()).abs() < 1e-6,
            "{w:?}"
        );
        assert_eq!(min_norm_weights(&[vec![3.0]]).unwrap(), [1.0]);
        assert!(min_norm_weights(&[]).is_err());
    }

    #[test]
    fn the_head_gradient_is_the_bradley_terry_loss_derivative() {
        // One pair, features differ by (1, 2), Δ = 0 → −σ(0)·(1, 2) = (−0.5, −1).
        let g = head_gradient(&[0.0], &[vec![1.0, 3.0]], &[vec![0.0, 1.0]]);
        assert_eq!(g, [-0.5, -1.0]);
        // Finite differences of mean −log σ(w·d) at w = (0.3, −0.2) over two pairs.
        let d = [vec![1.0f32, 2.0], vec![-0.5, 0.7]];
        let w = [0.3f64, -0.2];
        let loss = |w: &[f64]| -> f64 {
            d.iter()
                .map(|di| {
                    let delta = w[0] * di[0] as f64 + w[1] * di[1] as f64;
                    (1.0 + (-delta).exp()).ln()
                })
                .sum::<f64>()
                / 2.0
        };
        let deltas: Vec<f32> = d
            .iter()
            .map(|di| (w[0] * di[0] as f64 + w[1] * di[1] as f64) as f32)
            .collect();
        let zeros = vec![vec![0.0f32, 0.0]; 2];
        let g = head_gradient(&deltas, &d, &zeros);
        for j in 0..2 {
            let mut up = w;
            let mut down = w;
            up[j] += 1e-5;
            down[j] -= 1e-5;
            let fd = (loss(&up) - loss(&down)) / 2e-5;
            assert!((g[j] - fd).abs() < 1e-6, "{j}: {} vs {fd}", g[j]);
        }
    }

    #[test]
    fn normalizations_scale_as_documented() {
        let g = vec![vec![3.0, 4.0], vec![0.0, 0.0]];
        let l2 = normalize_gradients(&g, &[0.5, 0.5], GradientNormalization::L2);
        assert_eq!(l2, [vec![0.6, 0.8], vec![0.0, 0.0]]);
        // losses 1 and 3 → p = (2/6, 4/6) → g / p.
        let by_loss = normalize_gradients(&g, &[1.0, 3.0], GradientNormalization::Loss);
        assert!((by_loss[0][0] - 9.0).abs() < 1e-12);
        assert_eq!(
            normalize_gradients(&g, &[0.0, 0.0], GradientNormalization::None),
            g
        );
        let bad = MoreWeighting {
            momentum: 1.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("momentum"));
    }
}
