//! Attribute heads on frozen features: `r_k(x) = w_k · φ(x) + b_k`, fitted in closed form.
//!
//! - [`fit_ridge`]: ridge regression on rated attributes (ArmoRM stage 1, Wang et al. 2024,
//!   "Interpretable Preferences via Multi-Objective Reward Modeling and Mixture-of-Experts"):
//!   `min_{w,b} Σᵢ (yᵢ − w·xᵢ − b)² + λ‖w‖²`, solved exactly with centred data:
//!   `w = (X̃ᵀX̃ + λI)⁻¹ X̃ᵀỹ`, `b = ȳ − x̄·w` (`X̃`, `ỹ` centred; the bias is not penalized).
//! - [`fit_bradley_terry`]: an attribute known only through preference pairs (chosen ≻
//!   rejected): L2-regularized Bradley–Terry, `min_w Σᵢ −log σ(w·(x_cᵢ − x_rᵢ)) + (λ/2)‖w‖²`
//!   (Bradley & Terry 1952), solved by Newton's method (the loss is strictly convex for λ > 0).
//!   The bias cancels in a pair and is 0.
//!
//! λ is chosen on dev ([`select_ridge`], [`select_bradley_terry`]): lowest dev MSE for
//! regression, highest dev pair accuracy for Bradley–Terry.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::linalg::{cholesky_solve, pair_accuracy, pearson, r_squared, sigmoid};

/// One linear attribute head `r(x) = w·x + b`, with the standardization measured on its
/// training features (`z = (r − mean) / std`), so that heads of different scales combine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearHead {
    pub weight: Vec<f64>,
    pub bias: f64,
    /// Mean and standard deviation of the raw head output on the features it was fitted on.
    pub mean: f64,
    pub std: f64,
}

impl LinearHead {
    /// The raw output `w·x + b`.
    pub fn raw(&self, x: &[f32]) -> f64 {
        self.weight
            .iter()
            .zip(x)
            .map(|(w, &v)| w * v as f64)
            .sum::<f64>()
            + self.bias
    }

    /// The standardized output `(w·x + b − mean) / std`.
    pub fn score(&self, x: &[f32]) -> f64 {
        (self.raw(x) - self.mean) / self.std
    }

    fn with_standardization(mut self, features: &[&[f32]]) -> Self {
        let raw: Vec<f64> = features.iter().map(|x| self.raw(x)).collect();
        let n = raw.len().max(1) as f64;
        let mean = raw.iter().sum::<f64>() / n;
        let var = raw.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
        self.mean = mean;
        self.std = if var > 0.0 { var.sqrt() } else { 1.0 };
        self
    }
}

fn check_rows(x: &[&[f32]], what: &str) -> Result<usize> {
    let Some(first) = x.first() else {
        bail!("{what}: no rows to fit on");
    };
    let d = first.len();
    if d == 0 {
        bail!("{what}: feature vectors are empty");
    }
    for (i, row) in x.iter().enumerate() {
        if row.len() != d {
            bail!("{what}: row {i} has {} features, row 0 has {d}", row.len());
        }
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            bail!("{what}: row {i} feature {j} is {}, not finite", row[j]);
        }
    }
    Ok(d)
}

/// Ridge regression in closed form (module docs). `intercept = false` fits `y ≈ w·x` with no
/// centring (the textbook `w = (XᵀX + λI)⁻¹Xᵀy`).
pub fn fit_ridge(x: &[&[f32]], y: &[f64], lambda: f64, intercept: bool) -> Result<LinearHead> {
    let d = check_rows(x, "ridge regression")?;
    if y.len() != x.len() {
        bail!("ridge regression: {} rows but {} targets", x.len(), y.len());
    }
    if let Some(i) = y.iter().position(|v| !v.is_finite()) {
        bail!("ridge regression: target {i} is {}, not finite", y[i]);
    }
    if !(lambda >= 0.0 && lambda.is_finite()) {
        bail!("ridge regression: λ = {lambda} must be a finite number ≥ 0");
    }
    let n = x.len() as f64;
    let (x_mean, y_mean) = if intercept {
        let mut m = vec![0f64; d];
        for row in x {
            for (mj, &v) in m.iter_mut().zip(row.iter()) {
                *mj += v as f64 / n;
            }
        }
        (m, y.iter().sum::<f64>() / n)
    } else {
        (vec![0f64; d], 0.0)
    };
    let mut a = vec![0f64; d * d];
    let mut b = vec![0f64; d];
    let mut xc = vec![0f64; d];
    for (row, &yi) in x.iter().zip(y) {
        for j in 0..d {
            xc[j] = row[j] as f64 - x_mean[j];
        }
        let yc = yi - y_mean;
        for i in 0..d {
            let xi = xc[i];
            b[i] += xi * yc;
            let ai = &mut a[i * d..i * d + i + 1];
            for (aij, &xj) in ai.iter_mut().zip(&xc[..=i]) {
                *aij += xi * xj;
            }
        }
    }
    symmetrize_and_shift(&mut a, d, lambda);
    let w = cholesky_solve(&a, &b, d)?;
    let bias = y_mean - w.iter().zip(&x_mean).map(|(w, m)| w * m).sum::<f64>();
    Ok(LinearHead {
        weight: w,
        bias,
        mean: 0.0,
        std: 1.0,
    }
    .with_standardization(x))
}

/// Copies the lower triangle to the upper one and adds `lambda` to the diagonal.
fn symmetrize_and_shift(a: &mut [f64], d: usize, lambda: f64) {
    for i in 0..d {
        for j in 0..i {
            a[j * d + i] = a[i * d + j];
        }
        a[i * d + i] += lambda;
    }
}

/// Regression metrics of a head on rated rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    pub r2: f64,
    pub pearson: f64,
    pub mse: f64,
    pub count: usize,
}

/// R², Pearson correlation and MSE of `head` on `(x, y)`.
pub fn regression_metrics(head: &LinearHead, x: &[&[f32]], y: &[f64]) -> RegressionMetrics {
    let pred: Vec<f64> = x.iter().map(|r| head.raw(r)).collect();
    let mse = pred
        .iter()
        .zip(y)
        .map(|(p, t)| (p - t).powi(2))
        .sum::<f64>()
        / y.len().max(1) as f64;
    RegressionMetrics {
        r2: r_squared(y, &pred),
        pearson: pearson(y, &pred),
        mse,
        count: y.len(),
    }
}

/// One λ tried on dev.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LambdaTrial {
    pub lambda: f64,
    /// Dev MSE (ridge) or dev pair accuracy (Bradley–Terry).
    pub dev: f64,
}

/// Fits ridge heads for every λ of `lambdas` on train and keeps the one with the lowest dev MSE.
pub fn select_ridge(
    train: (&[&[f32]], &[f64]),
    dev: (&[&[f32]], &[f64]),
    lambdas: &[f64],
) -> Result<(LinearHead, f64, Vec<LambdaTrial>)> {
    if lambdas.is_empty() {
        bail!("ridge regression: the λ grid is empty");
    }
    let mut best: Option<(LinearHead, f64, f64)> = None;
    let mut trials = Vec::new();
    for &lambda in lambdas {
        let head = fit_ridge(train.0, train.1, lambda, true)?;
        let mse = regression_metrics(&head, dev.0, dev.1).mse;
        trials.push(LambdaTrial { lambda, dev: mse });
        if best.as_ref().is_none_or(|b| mse < b.2) {
            best = Some((head, lambda, mse));
        }
    }
    let (head, lambda, _) = best.expect("a non-empty grid");
    Ok((head, lambda, trials))
}

/// Bradley–Terry head on pairs `(chosen, rejected)` by Newton's method (module docs).
/// Stops when the Newton decrement is below 1e-10 or after 50 steps.
pub fn fit_bradley_terry(
    chosen: &[&[f32]],
    rejected: &[&[f32]],
    lambda: f64,
) -> Result<LinearHead> {
    let d = check_rows(chosen, "Bradley–Terry head (chosen)")?;
    let dr = check_rows(rejected, "Bradley–Terry head (rejected)")?;
    if dr != d || chosen.len() != rejected.len() {
        bail!(
            "Bradley–Terry head: {} chosen rows of {d} features vs {} rejected rows of {dr}",
            chosen.len(),
            rejected.len()
        );
    }
    if !(lambda > 0.0 && lambda.is_finite()) {
        bail!("Bradley–Terry head: λ = {lambda} must be a finite number > 0");
    }
    let diffs: Vec<Vec<f64>> = chosen
        .iter()
        .zip(rejected)
        .map(|(c, r)| {
            c.iter()
                .zip(r.iter())
                .map(|(a, b)| (*a - *b) as f64)
                .collect()
        })
        .collect();
    let mut w = vec![0f64; d];
    for _ in 0..50 {
        let mut grad: Vec<f64> = w.iter().map(|wi| lambda * wi).collect();
        let mut hess = vec![0f64; d * d];
        for di in &diffs {
            let m: f64 = w.iter().zip(di).map(|(a, b)| a * b).sum();
            // d/dm −log σ(m) = −σ(−m); d²/dm² = σ(m)σ(−m).
            let g = -sigmoid(-m);
            let h = sigmoid(m) * sigmoid(-m);
            for i in 0..d {
                grad[i] += g * di[i];
                let hi = h * di[i];
                let row = &mut hess[i * d..i * d + i + 1];
                for (hij, &dj) in row.iter_mut().zip(&di[..=i]) {
                    *hij += hi * dj;
                }
            }
        }
        symmetrize_and_shift(&mut hess, d, lambda);
        let step = cholesky_solve(&hess, &grad, d)?;
        let decrement: f64 = step.iter().zip(&grad).map(|(s, g)| s * g).sum();
        for (wi, si) in w.iter_mut().zip(&step) {
            *wi -= si;
        }
        if decrement < 1e-10 {
            break;
        }
    }
    let all: Vec<&[f32]> = chosen.iter().chain(rejected).copied().collect();
    Ok(LinearHead {
        weight: w,
        bias: 0.0,
        mean: 0.0,
        std: 1.0,
    }
    .with_standardization(&all))
}

/// Pair accuracy of a head: the fraction of pairs with `r(chosen) > r(rejected)`.
pub fn head_pair_accuracy(head: &LinearHead, chosen: &[&[f32]], rejected: &[&[f32]]) -> f64 {
    let c: Vec<f64> = chosen.iter().map(|x| head.raw(x)).collect();
    let r: Vec<f64> = rejected.iter().map(|x| head.raw(x)).collect();
    pair_accuracy(&c, &r)
}

/// Fits Bradley–Terry heads for every λ and keeps the one with the best dev pair accuracy (the
/// larger λ on ties, the smoother head).
pub fn select_bradley_terry(
    train: (&[&[f32]], &[&[f32]]),
    dev: (&[&[f32]], &[&[f32]]),
    lambdas: &[f64],
) -> Result<(LinearHead, f64, Vec<LambdaTrial>)> {
    if lambdas.is_empty() {
        bail!("Bradley–Terry head: the λ grid is empty");
    }
    let mut best: Option<(LinearHead, f64, f64)> = None;
    let mut trials = Vec::new();
    for &lambda in lambdas {
        let head = fit_bradley_terry(train.0, train.1, lambda)?;
        let acc = head_pair_accuracy(&head, dev.0, dev.1);
        trials.push(LambdaTrial { lambda, dev: acc });
        if best
            .as_ref()
            .is_none_or(|b| acc > b.2 || (acc == b.2 && lambda > b.1))
        {
            best = Some((head, lambda, acc));
        }
    }
    let (head, lambda, _) = best.expect("a non-empty grid");
    Ok((head, lambda, trials))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[Vec<f32>]) -> Vec<&[f32]> {
        v.iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn ridge_matches_the_hand_worked_2x2_case() {
        // X = [[1, 0], [1, 1]], y = [1, 2], λ = 1, no intercept:
        // XᵀX + I = [[3, 1], [1, 2]], Xᵀy = [3, 2] → w = (1/5)[[2, −1], [−1, 3]]·[3, 2] = [0.8, 0.6].
        let x = vec![vec![1.0f32, 0.0], vec![1.0, 1.0]];
        let head = fit_ridge(&rows(&x), &[1.0, 2.0], 1.0, false).unwrap();
        assert!((head.weight[0] - 0.8).abs() < 1e-12, "{:?}", head.weight);
        assert!((head.weight[1] - 0.6).abs() < 1e-12, "{:?}", head.weight);
        assert_eq!(head.bias, 0.0);
        // λ = 0: the exact solution of X w = y, w = [1, 1].
        let exact = fit_ridge(&rows(&x), &[1.0, 2.0], 0.0, false).unwrap();
        assert!((exact.weight[0] - 1.0).abs() < 1e-12 && (exact.weight[1] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ridge_with_intercept_recovers_a_line_and_lambda_is_picked_on_dev() {
        let x: Vec<Vec<f32>> = (0..6).map(|i| vec![i as f32]).collect();
        let y: Vec<f64> = (0..6).map(|i| 2.0 * i as f64 + 3.0).collect();
        let head = fit_ridge(&rows(&x), &y, 0.0, true).unwrap();
        assert!((head.weight[0] - 2.0).abs() < 1e-9 && (head.bias - 3.0).abs() < 1e-9);
        let m = regression_metrics(&head, &rows(&x), &y);
        assert!((m.r2 - 1.0).abs() < 1e-12 && m.mse < 1e-18);
        // Centred: Σx̃² = 17.5, so λ = 17.5 halves the slope (w = 35 / 35) and the bias
        // keeps the line through the means (x̄ = 2.5, ȳ = 8).
        let shrunk = fit_ridge(&rows(&x), &y, 17.5, true).unwrap();
        assert!((shrunk.weight[0] - 1.0).abs() < 1e-9, "{:?}", shrunk.weight);
        assert!((shrunk.bias - 5.5).abs() < 1e-9);
        let (_, lambda, trials) =
            select_ridge((&rows(&x), &y), (&rows(&x), &y), &[17.5, 0.0, 100.0]).unwrap();
        assert_eq!(lambda, 0.0);
        assert_eq!(trials.len(), 3);
    }

    #[test]
    fn bradley_terry_head_orders_pairs_and_solves_its_optimality_condition() {
        // Attribute = first feature; the second is noise.
        let chosen: Vec<Vec<f32>> = (0..20).map(|i| vec![1.0, (i % 3) as f32]).collect();
        let rejected: Vec<Vec<f32>> = (0..20).map(|i| vec![0.0, ((i + 1) % 3) as f32]).collect();
        let head = fit_bradley_terry(&rows(&chosen), &rows(&rejected), 0.1).unwrap();
        assert_eq!(
            head_pair_accuracy(&head, &rows(&chosen), &rows(&rejected)),
            1.0
        );
        // Stationarity: Σ σ(−w·dᵢ) dᵢ = λ w.
        let mut lhs = [0f64; 2];
        for (c, r) in chosen.iter().zip(&rejected) {
            let d = [(c[0] - r[0]) as f64, (c[1] - r[1]) as f64];
            let m = head.weight[0] * d[0] + head.weight[1] * d[1];
            for j in 0..2 {
                lhs[j] += sigmoid(-m) * d[j];
            }
        }
        for j in 0..2 {
            assert!(
                (lhs[j] - 0.1 * head.weight[j]).abs() < 1e-8,
                "{lhs:?} {:?}",
                head.weight
            );
        }
        assert!(fit_bradley_terry(&rows(&chosen), &rows(&rejected), 0.0).is_err());
    }

    #[test]
    fn bad_rows_are_errors() {
        let x = vec![vec![1.0f32, 0.0], vec![1.0]];
        let err = fit_ridge(&rows(&x), &[1.0, 2.0], 1.0, true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ridge regression: row 1 has 1 features, row 0 has 2"
        );
        let x = vec![vec![1.0f32, f32::NAN]];
        let err = fit_ridge(&rows(&x), &[1.0], 1.0, true).unwrap_err();
        assert!(err.to_string().contains("row 0 feature 1 is NaN"), "{err}");
        assert!(fit_ridge(&[], &[], 1.0, true).is_err());
    }
}
