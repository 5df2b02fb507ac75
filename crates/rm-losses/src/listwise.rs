//! Listwise objective: the Plackett–Luce likelihood of a full ranking.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::LossError;

const OBJECTIVE: &str = "plackett-luce";

/// A logit far enough below any real reward that `exp` of it vanishes next to the real ones,
/// yet finite, so that no `−∞ · 0` reaches the backward pass.
const EXCLUDED_LOGIT: f32 = -1e30;

/// Plackett–Luce ranking loss (the listwise objective of PRO, Song et al. 2023, "Preference
/// Ranking Optimization for Human Alignment"; Plackett 1975, Luce 1959).
///
/// `rewards` is `[B, K]`: row `b` holds the rewards of one prompt's `K` responses ranked
/// best-first. The loss of a ranking is its negative Plackett–Luce log-likelihood, the chance of
/// drawing the responses in that order, each time from those not yet drawn:
///
/// `L_b = −Σ_{k=1..K} log( exp(r_k) / Σ_{j ≥ k} exp(r_j) )`
///
/// and the returned loss is the mean over the `B` rankings, `L = (1/B) Σ_b L_b` (a sum over the
/// positions of a ranking, as in PRO: a longer ranking carries more evidence and weighs more;
/// the last position's term is `log 1 = 0`). For `K = 2` it is the Bradley–Terry loss.
///
/// `mask` (`[B, K]`, `true` = a real response) lets rankings be shorter than `K`: masked
/// entries are dropped from the ranking (from both the numerators and every denominator) and the
/// remaining ones keep their order. A ranking with one real response or none contributes 0 but
/// still counts in `B`. Without a mask every entry is real.
///
/// Errors: `B = 0` or `K = 0` (empty batch); a mask whose shape is not `[B, K]`.
pub fn plackett_luce_loss(
    rewards: Tensor<2>,
    mask: Option<Tensor<2, Bool>>,
) -> Result<Tensor<1>, LossError> {
    let [b, k] = rewards.dims();
    if b == 0 || k == 0 {
        return Err(LossError::EmptyBatch {
            objective: OBJECTIVE,
        });
    }
    if let Some(mask) = &mask
        && mask.dims() != [b, k]
    {
        return Err(LossError::ShapeMismatch {
            objective: OBJECTIVE,
            input: "mask",
            expected: vec![b, k],
            actual: mask.dims().to_vec(),
        });
    }
    let device = rewards.device();
    let real = match mask {
        Some(mask) => mask.float(),
        None => Tensor::<2>::ones([b, k], &device),
    };
    let logits = rewards.reshape([b, 1, k]).expand([b, k, k]);
    Ok(sequential_choice_log_probs(logits, real)
        .sum_dim(1)
        .neg()
        .mean())
}

/// The log-probabilities of a ranking's sequential choices, shared by the Plackett–Luce loss and
/// PRO ([`crate::preference::pro_loss`]).
///
/// `logits[b, pos, j]` (`[B, K, K]`) is the logit of candidate `j` when position `pos` of ranking
/// `b` is chosen; `real` (`[B, K]`, 1 = a real response, 0 = padding) marks the entries of each
/// ranking. Returns `[B, K]`: entry `[b, pos]` is
/// `log( exp(logits[b,pos,pos]) / Σ_{j ≥ pos, j real} exp(logits[b,pos,j]) )` for a real `pos`,
/// and 0 for a masked one. Candidates before `pos` and masked candidates are excluded from every
/// normaliser (their logits are replaced by a finite, vanishing [`EXCLUDED_LOGIT`], so no
/// `−∞ · 0` reaches the backward pass and they receive no gradient).
pub(crate) fn sequential_choice_log_probs(logits: Tensor<3>, real: Tensor<2>) -> Tensor<2> {
    let [b, k, _] = logits.dims();
    let device = logits.device();
    // Row `pos` of the [K, K] grid is the choice at position `pos`: candidates are the entries
    // j ≥ pos that are real. The diagonal stays a candidate even when masked, so that every row
    // has a finite log-normaliser; the terms of masked positions are zeroed below.
    let later: Vec<f32> = (0..k)
        .flat_map(|pos| (0..k).map(move |j| if j >= pos { 1.0 } else { 0.0 }))
        .collect();
    let later = Tensor::<3>::from_data(TensorData::new(later, [1, k, k]), &device);
    let diagonal = Tensor::<2>::eye(k, &device).reshape([1, k, k]);
    let real_j = real.clone().reshape([b, 1, k]);
    let candidate = later * real_j.clone() + diagonal * real_j.neg().add_scalar(1.0); // [B, K, K]
    let excluded = candidate.lower_elem(0.5);

    let log_probs = log_softmax(logits.mask_fill(excluded, EXCLUDED_LOGIT), 2);
    let position = Tensor::<1, Int>::arange(0..k as i64, &device)
        .reshape([1, k, 1])
        .expand([b, k, 1]);
    let chosen_log_prob = log_probs.gather(2, position).reshape([b, k]); // log P(pick pos)
    chosen_log_prob * real
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bradley_terry_loss;
    use crate::testing::{assert_close, check_gradients, matrix, scalar, vector};
    use rm_core::device::test_device;

    fn mask(values: &[bool], shape: [usize; 2]) -> Tensor<2, Bool> {
        Tensor::from_data(TensorData::new(values.to_vec(), shape), &test_device())
    }

    fn log_sum_exp(xs: &[f32]) -> f32 {
        xs.iter().map(|x| x.exp()).sum::<f32>().ln()
    }

    /// −Σ_k log softmax over the suffix, on the host.
    fn reference(ranking: &[f32]) -> f32 {
        (0..ranking.len())
            .map(|k| log_sum_exp(&ranking[k..]) - ranking[k])
            .sum()
    }

    #[test]
    fn equal_rewards_give_log_k_factorial() {
        let d = test_device();
        // Every order of 3 equal items is equally likely: −log(1/3!) = ln 6.
        let l = plackett_luce_loss(matrix(&[0.4; 3], [1, 3], &d), None).unwrap();
        assert_close(scalar(l), 6f32.ln(), 1e-6);
    }

    #[test]
    fn matches_the_host_reference_and_averages_over_rankings() {
        let d = test_device();
        let rows = [[2.0, 1.0, -0.5, 0.3], [0.0, 1.5, -2.0, 1.0]];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let l = plackett_luce_loss(matrix(&flat, [2, 4], &d), None).unwrap();
        let expected = (reference(&rows[0]) + reference(&rows[1])) / 2.0;
        assert_close(scalar(l), expected, 1e-5);
    }

    #[test]
    fn two_items_is_bradley_terry() {
        let d = test_device();
        let pl = plackett_luce_loss(matrix(&[1.0, 0.2, -0.3, 0.9], [2, 2], &d), None).unwrap();
        let bt = bradley_terry_loss(vector(&[1.0, -0.3], &d), vector(&[0.2, 0.9], &d)).unwrap();
        assert_close(scalar(pl), scalar(bt), 1e-6);
    }

    #[test]
    fn masked_entries_leave_the_ranking() {
        let d = test_device();
        // Row 0: [3, 1, pad, pad] → a 2-ranking; row 1: [0.5, pad, −1, 2] → ranking [0.5, −1, 2];
        // row 2: a single real item → 0. Huge padding values must not matter.
        let r = [3.0, 1.0, 1e6, -1e6, 0.5, 1e6, -1.0, 2.0, 7.0, 1e6, 1e6, 1e6];
        let m = [
            true, true, false, false, true, false, true, true, true, false, false, false,
        ];
        let l = plackett_luce_loss(matrix(&r, [3, 4], &d), Some(mask(&m, [3, 4]))).unwrap();
        let expected = (reference(&[3.0, 1.0]) + reference(&[0.5, -1.0, 2.0]) + 0.0) / 3.0;
        assert_close(scalar(l), expected, 1e-5);
    }

    #[test]
    fn empty_batches_and_bad_masks_are_errors() {
        let d = test_device();
        let empty = Tensor::<2>::zeros([0, 3], &d);
        assert_eq!(
            plackett_luce_loss(empty, None).unwrap_err(),
            LossError::EmptyBatch {
                objective: OBJECTIVE
            }
        );
        let err = plackett_luce_loss(
            matrix(&[1.0, 2.0, 3.0, 4.0], [2, 2], &d),
            Some(mask(&[true, true], [1, 2])),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "plackett-luce: `mask` has shape [1, 2], expected [2, 2]"
        );
    }

    #[test]
    fn gradients_match_finite_differences() {
        check_gradients(
            &[(&[2.0, 1.0, -0.5, 0.3, 0.0, 1.5, -2.0, 1.0], [2, 4])],
            |t| plackett_luce_loss(t[0].clone(), None).unwrap(),
        );
    }

    #[test]
    fn masked_gradients_match_finite_differences_and_skip_padding() {
        let r = [2.0, 1.0, -0.5, 9.0, 0.0, 1.5, -2.0, 1.0];
        let m = [true, true, true, false, true, false, true, true];
        check_gradients(&[(&r, [2, 4])], |t| {
            plackett_luce_loss(
                t[0].clone(),
                Some(mask(&m, [2, 4]).to_device(&t[0].device())),
            )
            .unwrap()
        });
    }
}
