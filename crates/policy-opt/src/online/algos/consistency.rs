//! CREAM's consistency rate (Wang et al. 2025, "CREAM: Consistency Regularized Self-Rewarding
//! Language Models", ICLR): how far two iterations of a self-rewarding model agree on the
//! ranking of the same completions, used to soften the preference labels the current one
//! gives.
//!
//! For each prompt, the completions are scored twice — by the current policy's implicit reward
//! and by the previous iterate's — and compared with Kendall's τ-b; the prompt's consistency is
//! `(τ + 1)/2 ∈ [0, 1]`, and the rate `C` is its mean over the prompts where τ is defined. The
//! DPO loss on the current labels then becomes
//! `C·L(y_w, y_l) + (1 − C)·L(y_l, y_w)`: a fully consistent pair of iterations trains the
//! plain objective, a disagreeing one (C → ½) hardly trains at all.

/// Kendall's τ-b of `x` and `y` (paired scores of the same items): `(n_c − n_d) /
/// √((n₀ − t_x)(n₀ − t_y))` with `n₀ = n(n−1)/2` and `t_x`, `t_y` the pairs tied in `x`, `y`
/// (SciPy's default `kendalltau`). `None` when it is undefined: fewer than two items, a
/// length mismatch, or either list constant.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let (mut concordant, mut discordant, mut tied_x, mut tied_y) = (0i64, 0i64, 0i64, 0i64);
    let n = x.len();
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i] - x[j];
            let dy = y[i] - y[j];
            match (dx == 0.0, dy == 0.0) {
                (true, true) => {
                    tied_x += 1;
                    tied_y += 1;
                }
                (true, false) => tied_x += 1,
                (false, true) => tied_y += 1,
                (false, false) if (dx > 0.0) == (dy > 0.0) => concordant += 1,
                (false, false) => discordant += 1,
            }
        }
    }
    let pairs = (n * (n - 1) / 2) as i64;
    let denominator = (((pairs - tied_x) * (pairs - tied_y)) as f64).sqrt();
    (denominator > 0.0).then(|| (concordant - discordant) as f64 / denominator)
}

/// CREAM's consistency rate over `groups` (each a prompt's completions scored by the current
/// and by the previous iterate): the mean of `(τ_b + 1)/2` over the groups where τ_b is
/// defined; `None` when it is defined for none.
pub fn consistency_rate(groups: &[(Vec<f64>, Vec<f64>)]) -> Option<f64> {
    let rates: Vec<f64> = groups
        .iter()
        .filter_map(|(current, previous)| kendall_tau_b(current, previous))
        .map(|tau| (tau + 1.0) / 2.0)
        .collect();
    (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kendall_tau_b_on_hand_worked_numbers() {
        // Same order: 1; reversed: −1.
        assert_eq!(
            kendall_tau_b(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]),
            Some(1.0)
        );
        assert_eq!(
            kendall_tau_b(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]),
            Some(-1.0)
        );
        // (1,2,3,4) vs (1,3,2,4): 6 pairs, one discordant (2,3) → (5 − 1)/6.
        let t = kendall_tau_b(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((t - 4.0 / 6.0).abs() < 1e-12);
        // A tie in x: x = (1,1,2), y = (1,2,3): pairs (0,1) tied in x, (0,2), (1,2) concordant;
        // τ_b = 2/√((3 − 1)(3 − 0)) = 2/√6 (SciPy: 0.8164965809).
        let t = kendall_tau_b(&[1.0, 1.0, 2.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((t - 2.0 / 6f64.sqrt()).abs() < 1e-12);
        // Undefined: constant scores (the reference as the previous iterate), too few, mismatch.
        assert_eq!(kendall_tau_b(&[0.0, 0.0, 0.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(kendall_tau_b(&[1.0], &[1.0]), None);
        assert_eq!(kendall_tau_b(&[1.0, 2.0], &[1.0]), None);
    }

    #[test]
    fn the_rate_averages_defined_groups() {
        let groups = vec![
            (vec![1.0, 2.0, 3.0], vec![1.0, 2.0, 3.0]), // τ 1 → 1
            (vec![1.0, 2.0, 3.0], vec![3.0, 2.0, 1.0]), // τ −1 → 0
            (vec![1.0, 2.0, 3.0], vec![0.0, 0.0, 0.0]), // undefined: skipped
        ];
        assert_eq!(consistency_rate(&groups), Some(0.5));
        assert_eq!(consistency_rate(&groups[2..]), None);
        assert_eq!(consistency_rate(&[]), None);
    }
}
