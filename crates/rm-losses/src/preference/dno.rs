//! DNO: Direct Nash Optimization, batched on-policy self-improvement against a general
//! preference oracle, with the previous iterate as the reference.
//!
//! Rosset et al. 2024, "Direct Nash Optimization: Teaching Language Models to Self-Improve with
//! General Preferences". At iteration `t` the policy `π_t` samples `K` responses per prompt, a
//! preference oracle `P(y ≻ y' | x)` scores them, and `π_{t+1}` is trained on pairs of them with
//! `π_t` as the (frozen) reference. Notation: `Δ(y) = log π_θ(y|x) − log π_t(y|x)` (summed over
//! tokens), `η` the paper's learning rate of the mirror-descent step (DPO's `β`), and
//! `r_t(x, y) = E_{y'∼π_t}[P(y ≻ y' | x)]` the win-rate of `y` against the current policy, which
//! [`dno_win_rates`] estimates from the oracle's preferences among the `K` samples.

use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

use crate::LossError;
use crate::checks::{finite, pair_len, positive, same_len};
use crate::pairwise::{hard_nll, soft_nll};

/// The batch-level regression objective of DNO (its Algorithm 1): on pairs `(y, y')` of
/// samples of `π_t` with win-rates `r_t(y)`, `r_t(y')`, the log-ratio margin is regressed onto
/// the win-rate gap through the logistic cross-entropy,
///
/// `h = Δ(y) − Δ(y')`,  `p = σ(r_t(y) − r_t(y'))`,
/// `L = mean_i −[ p_i log σ(η h_i) + (1 − p_i) log σ(−η h_i) ]`.
///
/// The win-rates are constants; `prev_*` (`log π_t`) are detached.
///
/// Errors: `η ≤ 0`; an empty batch; inputs of different lengths; a non-finite win-rate is not
/// checked on the device (it yields a NaN loss).
#[allow(clippy::too_many_arguments)]
pub fn dno_loss(
    policy_first: Tensor<1>,
    policy_second: Tensor<1>,
    prev_first: Tensor<1>,
    prev_second: Tensor<1>,
    win_rate_first: Tensor<1>,
    win_rate_second: Tensor<1>,
    eta: f32,
) -> Result<Tensor<1>, LossError> {
    const OBJECTIVE: &str = "dno";
    positive(OBJECTIVE, "eta", eta)?;
    let n = pair_len(OBJECTIVE, &policy_first, &policy_second)?;
    same_len(OBJECTIVE, "prev_first", n, &prev_first)?;
    same_len(OBJECTIVE, "prev_second", n, &prev_second)?;
    same_len(OBJECTIVE, "win_rate_first", n, &win_rate_first)?;
    same_len(OBJECTIVE, "win_rate_second", n, &win_rate_second)?;
    let h = (policy_first - prev_first.detach()) - (policy_second - prev_second.detach());
    let p = sigmoid((win_rate_first - win_rate_second).detach());
    Ok(soft_nll(h.mul_scalar(eta), p).mean())
}

/// DNO-Prct, the practical version (Algorithm 2): the pair of each prompt is its best and worst
/// sample by win-rate ([`dno_select_pairs`]), and the objective is the contrastive loss with the
/// previous iterate `π_t` as the reference,
///
/// `L = mean_i −log σ( η·(Δ(y_w,i) − Δ(y_l,i)) )`
///
/// (DPO's loss with `π_t` in place of `π_ref`; `prev_*` are detached).
///
/// Errors: `η ≤ 0`; an empty batch; inputs of different lengths.
pub fn dno_prct_loss(
    policy_chosen: Tensor<1>,
    policy_rejected: Tensor<1>,
    prev_chosen: Tensor<1>,
    prev_rejected: Tensor<1>,
    eta: f32,
) -> Result<Tensor<1>, LossError> {
    const OBJECTIVE: &str = "dno-prct";
    positive(OBJECTIVE, "eta", eta)?;
    let n = pair_len(OBJECTIVE, &policy_chosen, &policy_rejected)?;
    same_len(OBJECTIVE, "prev_chosen", n, &prev_chosen)?;
    same_len(OBJECTIVE, "prev_rejected", n, &prev_rejected)?;
    let h = (policy_chosen - prev_chosen.detach()) - (policy_rejected - prev_rejected.detach());
    Ok(hard_nll(h.mul_scalar(eta)).mean())
}

/// Win-rates `r(y_i) = (1/(K−1)) Σ_{j≠i} P(y_i ≻ y_j | x)` of `K` samples per prompt from the
/// oracle's pairwise preferences: `preferences` holds, prompt after prompt, a row-major `K × K`
/// matrix with `P(y_i ≻ y_j)` at `[i, j]` (the diagonal is ignored). Returns `K` win-rates per
/// prompt, prompt-major.
///
/// Errors: `K < 2`; a length that is not a multiple of `K²` or is 0; a preference outside
/// `[0, 1]` (or NaN) off the diagonal.
pub fn dno_win_rates(preferences: &[f32], k: usize) -> Result<Vec<f32>, LossError> {
    const OBJECTIVE: &str = "dno-win-rates";
    if k < 2 {
        return Err(LossError::InvalidParameter {
            objective: OBJECTIVE,
            parameter: "k",
            value: k as f32,
            expected: "at least 2 samples per prompt",
        });
    }
    if preferences.is_empty() {
        return Err(LossError::EmptyBatch {
            objective: OBJECTIVE,
        });
    }
    if !preferences.len().is_multiple_of(k * k) {
        return Err(LossError::InvalidInput {
            objective: OBJECTIVE,
            input: "preferences",
            reason: format!(
                "length {} is not a multiple of K² = {}",
                preferences.len(),
                k * k
            ),
        });
    }
    let mut rates = Vec::with_capacity(preferences.len() / k);
    for block in preferences.chunks(k * k) {
        for i in 0..k {
            let mut sum = 0.0f64;
            for j in (0..k).filter(|&j| j != i) {
                let p = block[i * k + j];
                if !(0.0..=1.0).contains(&p) {
                    return Err(LossError::InvalidInput {
                        objective: OBJECTIVE,
                        input: "preferences",
                        reason: format!("P(y_{i} ≻ y_{j}) = {p} is not a probability"),
                    });
                }
                sum += p as f64;
            }
            rates.push((sum / (k - 1) as f64) as f32);
        }
    }
    Ok(rates)
}

/// The DNO-Prct pair of each prompt (Algorithm 2): from the scores (win-rates, or any
/// oracle score where higher is better) of its `K` samples, `y_w` is the best and `y_l` the worst
/// (the first of equals for both), kept only when `r(y_w) − r(y_l) ≥ min_gap` (the paper keeps
/// pairs whose winner beats the loser by a clear margin; `min_gap = 0` keeps every prompt whose
/// samples are not all tied). The paper ranks the gold (dataset) response together with the
/// policy's samples; include it as one of the `K`. `scores` is prompt-major, `K` per prompt;
/// returns per prompt
/// `Some((w, l))`, indices within the prompt's samples, or `None` when filtered out.
///
/// Errors: `K < 2`; an empty or ragged `scores`; a non-finite score; `min_gap` negative or not
/// finite.
pub fn dno_select_pairs(
    scores: &[f32],
    k: usize,
    min_gap: f32,
) -> Result<Vec<Option<(usize, usize)>>, LossError> {
    const OBJECTIVE: &str = "dno-select-pairs";
    finite(OBJECTIVE, "min_gap", min_gap)?;
    if min_gap < 0.0 || k < 2 {
        return Err(LossError::InvalidParameter {
            objective: OBJECTIVE,
            parameter: if k < 2 { "k" } else { "min_gap" },
            value: if k < 2 { k as f32 } else { min_gap },
            expected: if k < 2 {
                "at least 2 samples per prompt"
            } else {
                "a finite value >= 0"
            },
        });
    }
    if scores.is_empty() {
        return Err(LossError::EmptyBatch {
            objective: OBJECTIVE,
        });
    }
    if !scores.len().is_multiple_of(k) {
        return Err(LossError::InvalidInput {
            objective: OBJECTIVE,
            input: "scores",
            reason: format!("length {} is not a multiple of K = {k}", scores.len()),
        });
    }
    if let Some(bad) = scores.iter().find(|s| !s.is_finite()) {
        return Err(LossError::InvalidInput {
            objective: OBJECTIVE,
            input: "scores",
            reason: format!("score {bad} is not finite"),
        });
    }
    Ok(scores
        .chunks(k)
        .map(|row| {
            let mut best = 0;
            let mut worst = 0;
            for (i, &s) in row.iter().enumerate() {
                if s > row[best] {
                    best = i;
                }
                if s < row[worst] {
                    worst = i;
                }
            }
            let gap = row[best] - row[worst];
            (best != worst && gap > 0.0 && gap >= min_gap).then_some((best, worst))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, scalar, vector};
    use rm_core::device::test_device;

    fn log_sig(x: f64) -> f64 {
        if x >= 0.0 {
            -(-x).exp().ln_1p()
        } else {
            x - x.exp().ln_1p()
        }
    }

    const PA: [f32; 3] = [-10.0, -4.0, -30.0];
    const PB: [f32; 3] = [-12.0, -3.5, -20.0];
    const QA: [f32; 3] = [-11.0, -4.5, -28.0];
    const QB: [f32; 3] = [-11.5, -3.0, -21.0];

    fn h(i: usize) -> f64 {
        (PA[i] as f64 - QA[i] as f64) - (PB[i] as f64 - QB[i] as f64)
    }

    #[test]
    fn regression_form_matches_the_naive_implementation() {
        let d = test_device();
        let ra = [0.8f32, 0.3, 0.5];
        let rb = [0.1f32, 0.6, 0.5];
        for eta in [0.01f32, 0.1, 2.0] {
            let l = dno_loss(
                vector(&PA, &d),
                vector(&PB, &d),
                vector(&QA, &d),
                vector(&QB, &d),
                vector(&ra, &d),
                vector(&rb, &d),
                eta,
            )
            .unwrap();
            let expected = (0..3)
                .map(|i| {
                    let p = 1.0 / (1.0 + (-(ra[i] as f64 - rb[i] as f64)).exp());
                    let x = eta as f64 * h(i);
                    -(p * log_sig(x) + (1.0 - p) * log_sig(-x))
                })
                .sum::<f64>()
                / 3.0;
            assert_close(scalar(l), expected as f32, 1e-5);
        }
    }

    #[test]
    fn practical_form_matches_the_naive_implementation_and_stays_finite() {
        let d = test_device();
        for eta in [0.05f32, 0.5, 5.0] {
            let l = dno_prct_loss(
                vector(&PA, &d),
                vector(&PB, &d),
                vector(&QA, &d),
                vector(&QB, &d),
                eta,
            )
            .unwrap();
            let expected = (0..3).map(|i| -log_sig(eta as f64 * h(i))).sum::<f64>() / 3.0;
            assert_close(scalar(l), expected as f32, 1e-5);
        }
        // |η·h| = 1e4: naive log(1 + e^{−x}) overflows; the loss must be ≈ 1e4 and 0.
        let z = vector(&[0.0, 0.0], &d);
        let l = dno_prct_loss(
            vector(&[-1e4, 1e4], &d),
            vector(&[0.0, 0.0], &d),
            z.clone(),
            z,
            1.0,
        )
        .unwrap();
        assert_close(scalar(l), 5e3, 1.0);
    }

    #[test]
    fn win_rates_and_pair_selection() {
        // K = 3: P[i][j]; y_1 beats everyone, y_2 loses to everyone.
        let p = [
            0.5, 0.2, 0.9, //
            0.8, 0.5, 1.0, //
            0.1, 0.0, 0.5,
        ];
        let r = dno_win_rates(&p, 3).unwrap();
        for (got, want) in r.iter().zip([0.55, 0.9, 0.05]) {
            assert_close(*got, want, 1e-6);
        }
        let pairs =
            dno_select_pairs(&[0.55, 0.9, 0.05, 0.4, 0.4, 0.4, 0.5, 0.45, 0.52], 3, 0.1).unwrap();
        assert_eq!(pairs, vec![Some((1, 2)), None, None]);
        let pairs = dno_select_pairs(&[0.5, 0.45, 0.6], 3, 0.0).unwrap();
        assert_eq!(pairs, vec![Some((2, 1))]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let d = test_device();
        let v = || vector(&[1.0, 2.0], &d);
        for eta in [0.0, -1.0, f32::NAN] {
            assert!(matches!(
                dno_prct_loss(v(), v(), v(), v(), eta),
                Err(LossError::InvalidParameter {
                    parameter: "eta",
                    ..
                })
            ));
            assert!(matches!(
                dno_loss(v(), v(), v(), v(), v(), v(), eta),
                Err(LossError::InvalidParameter {
                    parameter: "eta",
                    ..
                })
            ));
        }
        assert!(matches!(
            dno_loss(v(), v(), v(), v(), vector(&[1.0], &d), v(), 0.1),
            Err(LossError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            dno_prct_loss(vector(&[], &d), vector(&[], &d), v(), v(), 0.1),
            Err(LossError::EmptyBatch { .. })
        ));
        assert!(dno_win_rates(&[0.5; 4], 1).is_err());
        assert!(dno_win_rates(&[0.5; 5], 2).is_err());
        assert!(dno_win_rates(&[0.5, 1.5, 0.0, 0.5], 2).is_err());
        assert!(dno_win_rates(&[], 2).is_err());
        assert!(dno_select_pairs(&[0.1, 0.2], 2, -0.1).is_err());
        assert!(dno_select_pairs(&[0.1, f32::NAN], 2, 0.0).is_err());
        assert!(dno_select_pairs(&[0.1, 0.2, 0.3], 2, 0.0).is_err());
        assert!(dno_select_pairs(&[0.1, 0.2], 1, 0.0).is_err());
    }
}
