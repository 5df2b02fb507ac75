//! PRO: listwise preference ranking of a policy's responses, with a temperature set by the
//! reward gaps, plus supervised fine-tuning on the best response.

use burn::tensor::{Bool, Tensor, TensorData};

use crate::LossError;
use crate::checks::{host_values, in_range};
use crate::listwise::sequential_choice_log_probs;

const OBJECTIVE: &str = "pro";

/// PRO (Song et al. 2023, "Preference Ranking Optimization for Human Alignment", Eqs. 4–8, as
/// the authors' code computes it).
///
/// Row `b` of the `[B, K]` inputs is one prompt's `K` responses `y^1 … y^K`, ranked best-first by
/// a reward model: `rewards` holds `r_φ(x, y^k)` (non-increasing along the row), `logps` the
/// policy's summed `log π_θ(y^k|x)` and `lengths` their token counts `|y^k|`. The policy's score
/// of a response is its length-normalised log-prob `s_k = log π_θ(y^k|x) / |y^k|` (`|y|` clamped
/// at 1). Each position `k` of the ranking is a softmax choice among the responses not yet
/// ranked, each logit divided by a temperature set by the reward gaps:
///
/// `T_k^i = 1 / (r_k − r_i)` for `i > k`,  `T_k^k = min_{i>k} T_k^i = 1 / max_{i>k}(r_k − r_i)`,
///
/// `L_rank = (1/B) Σ_b Σ_{k=1}^{K−1} −log( exp(s_k / T_k^k) / Σ_{i ≥ k} exp(s_i / T_k^i) )`,
///
/// `L = L_rank + λ · (1/B) Σ_b −log π_θ(y_b^1 | x_b)`
///
/// (the SFT term on the best response: its summed, not length-averaged, negative log-likelihood,
/// as in the authors' code, whose weight is `λ = sft_weight·(K−1)²`; pass that product as
/// `sft_weight` to reproduce it). `1/T` multiplies the logits, so a tie `r_k = r_i` gives that
/// candidate a logit of 0 rather than an infinite temperature; the sum over positions (not a mean)
/// follows the code. The rewards are constants (no gradient reaches them).
///
/// `mask` (`[B, K]`, `true` = a real response) lets rankings be shorter than `K`, as in
/// [`crate::plackett_luce_loss`]: masked entries leave the ranking (the numerators, every
/// normaliser and every `max` of the gaps), whatever values they hold.
///
/// Errors: `B = 0` or `K = 0`; inputs of other shapes; `λ` negative or not finite; a ranking whose
/// first (best) entry is masked; a non-finite reward, or rewards that increase along a ranking.
pub fn pro_loss(
    logps: Tensor<2>,
    lengths: Tensor<2>,
    rewards: Tensor<2>,
    mask: Option<Tensor<2, Bool>>,
    sft_weight: f32,
) -> Result<Tensor<1>, LossError> {
    let [b, k] = logps.dims();
    if b == 0 || k == 0 {
        return Err(LossError::EmptyBatch {
            objective: OBJECTIVE,
        });
    }
    for (input, dims) in [("lengths", lengths.dims()), ("rewards", rewards.dims())] {
        if dims != [b, k] {
            return Err(shape_error(input, [b, k], dims));
        }
    }
    if let Some(mask) = &mask
        && mask.dims() != [b, k]
    {
        return Err(shape_error("mask", [b, k], mask.dims()));
    }
    in_range(
        OBJECTIVE,
        "sft_weight",
        sft_weight,
        0.0,
        f32::INFINITY,
        "a finite value >= 0",
    )?;
    let device = logps.device();
    let real: Vec<bool> = match &mask {
        Some(m) => host_values(OBJECTIVE, "mask", &m.clone().float())?
            .into_iter()
            .map(|v| v != 0.0)
            .collect(),
        None => vec![true; b * k],
    };
    let r = host_values(OBJECTIVE, "rewards", &rewards)?;
    let gaps = inverse_temperatures(&r, &real, b, k)?;

    let real_t = Tensor::<2, Bool>::from_data(TensorData::new(real, [b, k]), &device);
    let padding = real_t.clone().bool_not();
    let scores = (logps.clone() / lengths.clamp_min(1.0)).mask_fill(padding.clone(), 0.0);
    let gaps = Tensor::<3>::from_data(TensorData::new(gaps, [b, k, k]), &device);
    let logits = scores.reshape([b, 1, k]).expand([b, k, k]) * gaps;
    let rank = sequential_choice_log_probs(logits, real_t.float())
        .sum_dim(1)
        .neg()
        .mean();
    if sft_weight == 0.0 {
        return Ok(rank);
    }
    let best = logps.slice([0..b, 0..1]).reshape([b]);
    Ok(rank + best.mean().neg().mul_scalar(sft_weight))
}

fn shape_error(input: &'static str, expected: [usize; 2], actual: [usize; 2]) -> LossError {
    LossError::ShapeMismatch {
        objective: OBJECTIVE,
        input,
        expected: expected.to_vec(),
        actual: actual.to_vec(),
    }
}

/// The `[B, K, K]` grid of inverse temperatures `1/T_k^i` (row `k` = position, column `i` =
/// candidate), 0 where a candidate is excluded; checks the rankings on the way.
fn inverse_temperatures(
    rewards: &[f32],
    real: &[bool],
    b: usize,
    k: usize,
) -> Result<Vec<f32>, LossError> {
    let invalid = |reason: String| LossError::InvalidInput {
        objective: OBJECTIVE,
        input: "rewards",
        reason,
    };
    let mut grid = vec![0.0f32; b * k * k];
    for row in 0..b {
        let entries: Vec<usize> = (0..k).filter(|&i| real[row * k + i]).collect();
        if entries.first() != Some(&0) {
            return Err(LossError::InvalidInput {
                objective: OBJECTIVE,
                input: "mask",
                reason: format!("ranking {row}: its first (best) response is masked"),
            });
        }
        let r = |i: usize| rewards[row * k + i];
        for pair in entries.windows(2) {
            if !r(pair[0]).is_finite() || !r(pair[1]).is_finite() {
                return Err(invalid(format!("ranking {row}: a reward is not finite")));
            }
            if r(pair[1]) > r(pair[0]) {
                return Err(invalid(format!(
                    "ranking {row}: rewards must not increase along the ranking (best first), \
                     got {} then {}",
                    r(pair[0]),
                    r(pair[1])
                )));
            }
        }
        for (n, &pos) in entries.iter().enumerate() {
            let cell = |i: usize| (row * k + pos) * k + i;
            let mut widest = 0.0f32;
            for &i in &entries[n + 1..] {
                let gap = r(pos) - r(i);
                grid[cell(i)] = gap;
                widest = widest.max(gap);
            }
            grid[cell(pos)] = widest;
        }
    }
    Ok(grid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, matrix, scalar};
    use rm_core::device::test_device;

    fn mask(values: &[bool], shape: [usize; 2]) -> Tensor<2, Bool> {
        Tensor::from_data(TensorData::new(values.to_vec(), shape), &test_device())
    }

    /// PRO of one ranking, scalar by scalar in f64 (the authors' loop, with a stable
    /// log-sum-exp).
    fn naive(logps: &[f64], lengths: &[f64], rewards: &[f64], sft: f64) -> f64 {
        let n = logps.len();
        let s: Vec<f64> = (0..n).map(|i| logps[i] / lengths[i].max(1.0)).collect();
        let mut loss = 0.0;
        for k in 0..n.saturating_sub(1) {
            let neg: Vec<f64> = (k + 1..n).map(|i| rewards[k] - rewards[i]).collect();
            let pos = neg.iter().cloned().fold(f64::MIN, f64::max);
            let mut logits = vec![s[k] * pos];
            logits.extend((k + 1..n).map(|i| s[i] * neg[i - k - 1]));
            let top = logits.iter().cloned().fold(f64::MIN, f64::max);
            let lse = top + logits.iter().map(|l| (l - top).exp()).sum::<f64>().ln();
            loss += lse - s[k] * pos;
        }
        loss - sft * logps[0]
    }

    fn flat(rows: &[Vec<f64>]) -> Vec<f32> {
        rows.iter().flatten().map(|&v| v as f32).collect()
    }

    #[test]
    fn matches_the_naive_implementation_for_several_sft_weights() {
        let d = test_device();
        let logps = vec![
            vec![-12.0, -20.0, -9.0, -30.0],
            vec![-5.0, -4.0, -16.0, -7.5],
        ];
        let lengths = vec![vec![6.0, 8.0, 3.0, 10.0], vec![2.0, 1.0, 4.0, 5.0]];
        let rewards = vec![vec![2.5, 1.0, 0.2, -1.0], vec![0.9, 0.9, -0.3, -2.0]];
        for sft in [0.0, 0.05, 1.5] {
            let l = pro_loss(
                matrix(&flat(&logps), [2, 4], &d),
                matrix(&flat(&lengths), [2, 4], &d),
                matrix(&flat(&rewards), [2, 4], &d),
                None,
                sft as f32,
            )
            .unwrap();
            let expected = (0..2)
                .map(|r| naive(&logps[r], &lengths[r], &rewards[r], sft))
                .sum::<f64>()
                / 2.0;
            assert_close(scalar(l), expected as f32, 1e-4);
        }
    }

    #[test]
    fn masked_entries_leave_the_ranking() {
        let d = test_device();
        // Row 0: [a, pad, b]; row 1: a single real response (rank term 0). Padding holds
        // garbage, including a reward that would break the ordering.
        let logps = [-6.0, f32::NAN, -3.0, -4.0, -1e6, -2.0];
        let lengths = [3.0, 0.0, 2.0, 2.0, 1.0, 1.0];
        let rewards = [1.0, 50.0, -0.5, 0.3, 9.0, 9.0];
        let m = [true, false, true, true, false, false];
        let l = pro_loss(
            matrix(&logps, [2, 3], &d),
            matrix(&lengths, [2, 3], &d),
            matrix(&rewards, [2, 3], &d),
            Some(mask(&m, [2, 3])),
            0.1,
        )
        .unwrap();
        let expected = (naive(&[-6.0, -3.0], &[3.0, 2.0], &[1.0, -0.5], 0.1)
            + naive(&[-4.0], &[2.0], &[0.3], 0.1))
            / 2.0;
        assert_close(scalar(l), expected as f32, 1e-5);
    }

    #[test]
    fn two_responses_are_bradley_terry_on_gap_scaled_scores() {
        let d = test_device();
        // K = 2: −log σ(g·(s1 − s2)) with g = r1 − r2.
        let l = pro_loss(
            matrix(&[-2.0, -6.0], [1, 2], &d),
            matrix(&[2.0, 3.0], [1, 2], &d),
            matrix(&[3.0, 0.5], [1, 2], &d),
            None,
            0.0,
        )
        .unwrap();
        let x: f64 = 2.5 * (-1.0 - -2.0);
        assert_close(scalar(l), (1.0 + (-x).exp()).ln() as f32, 1e-6);
    }

    #[test]
    fn huge_gaps_and_log_probs_stay_finite() {
        let d = test_device();
        let logps = [-1e4, -3e4, -2e4];
        let lengths = [1.0, 1.0, 1.0];
        let rewards = [1e3, -1e3, -2e3];
        let l = scalar(
            pro_loss(
                matrix(&logps, [1, 3], &d),
                matrix(&lengths, [1, 3], &d),
                matrix(&rewards, [1, 3], &d),
                None,
                0.0,
            )
            .unwrap(),
        );
        let expected = naive(
            &[-1e4, -3e4, -2e4],
            &[1.0, 1.0, 1.0],
            &[1e3, -1e3, -2e3],
            0.0,
        );
        assert!(l.is_finite());
        assert_close(l, expected as f32, 1e-2 * expected.abs() as f32);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let d = test_device();
        let call = |rewards: &[f32], m: Option<&[bool]>, sft: f32| {
            pro_loss(
                matrix(&[-1.0, -2.0], [1, 2], &d),
                matrix(&[1.0, 1.0], [1, 2], &d),
                matrix(rewards, [1, 2], &d),
                m.map(|m| mask(m, [1, 2])),
                sft,
            )
        };
        assert!(matches!(
            call(&[0.0, 1.0], None, 0.0),
            Err(LossError::InvalidInput {
                input: "rewards",
                ..
            })
        ));
        assert!(matches!(
            call(&[f32::NAN, 1.0], None, 0.0),
            Err(LossError::InvalidInput { .. })
        ));
        assert!(matches!(
            call(&[1.0, 0.0], Some(&[false, true]), 0.0),
            Err(LossError::InvalidInput { input: "mask", .. })
        ));
        for sft in [-0.1, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                call(&[1.0, 0.0], None, sft),
                Err(LossError::InvalidParameter {
                    parameter: "sft_weight",
                    ..
                })
            ));
        }
        let empty = pro_loss(
            Tensor::zeros([0, 2], &d),
            Tensor::zeros([0, 2], &d),
            Tensor::zeros([0, 2], &d),
            None,
            0.0,
        );
        assert_eq!(
            empty.unwrap_err(),
            LossError::EmptyBatch {
                objective: OBJECTIVE
            }
        );
        let shape = pro_loss(
            matrix(&[-1.0, -2.0], [1, 2], &d),
            matrix(&[1.0], [1, 1], &d),
            matrix(&[1.0, 0.0], [1, 2], &d),
            None,
            0.0,
        );
        assert!(matches!(
            shape,
            Err(LossError::ShapeMismatch {
                input: "lengths",
                ..
            })
        ));
    }

    #[test]
    fn gradients_match_finite_differences() {
        let lengths = [3.0, 2.0, 4.0, 2.0, 1.0, 5.0];
        let rewards = [1.5, 0.5, -1.0, 2.0, 2.0, 0.0];
        check_gradients(&[(&[-3.0, -1.0, -6.0, -2.0, -1.5, -4.0], [2, 3])], |t| {
            let d = t[0].device();
            pro_loss(
                t[0].clone(),
                matrix(&lengths, [2, 3], &d),
                matrix(&rewards, [2, 3], &d),
                None,
                0.3,
            )
            .unwrap()
        });
    }
}
