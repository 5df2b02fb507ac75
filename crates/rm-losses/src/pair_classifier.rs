//! Pairwise preference models: a classifier reads both responses together and outputs the logit
//! of `P(a ≻ b | x)`, trained on both presentation orders.

use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;

use crate::LossError;
use crate::checks::pair_len;

/// Order-swap-augmented loss of a pairwise preference model (PairRM, Jiang et al. 2023,
/// "LLM-Blender: Ensembling Large Language Models with Pairwise Ranking and Generative Fusion").
///
/// The model scores the concatenated input `(x, a, b)` with a logit `s_ab`, read as
/// `P(a ≻ b | x) = σ(s_ab)`. Each preference pair (chosen `c`, rejected `r`) is shown in both
/// orders, so the model cannot learn a position bias:
///
/// `L = mean_i ½ [ −log σ(s_cr,i) − log σ(−s_rc,i) ]`
///
/// `chosen_first` holds `s_cr` (the logits with the chosen response first) and `rejected_first`
/// holds `s_rc` (the same pairs, swapped). With `s_rc = −s_cr` it is Bradley–Terry on `s_cr`.
///
/// Errors: an empty batch; `rejected_first` not the length of `chosen_first`.
pub fn pairwise_preference_swap_loss(
    chosen_first: Tensor<1>,
    rejected_first: Tensor<1>,
) -> Result<Tensor<1>, LossError> {
    pair_len("pairwise-preference-swap", &chosen_first, &rejected_first)?;
    let forward = log_sigmoid(chosen_first);
    let swapped = log_sigmoid(rejected_first.neg());
    Ok((forward + swapped).mul_scalar(-0.5).mean())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, scalar, vector};
    use rm_core::device::test_device;

    fn sig(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn averages_both_orders() {
        let d = test_device();
        // Undecided logits → ln 2.
        let l = pairwise_preference_swap_loss(vector(&[0.0], &d), vector(&[0.0], &d)).unwrap();
        assert_close(scalar(l), std::f32::consts::LN_2, 1e-6);
        // s_cr = 2, s_rc = 1 (a position bias towards the first response): ½[−log σ(2) − log σ(−1)].
        let l = pairwise_preference_swap_loss(vector(&[2.0], &d), vector(&[1.0], &d)).unwrap();
        assert_close(scalar(l), 0.5 * (-sig(2.0).ln() - sig(-1.0).ln()), 1e-6);
    }

    #[test]
    fn errors_on_empty_and_mismatched_batches() {
        let d = test_device();
        assert!(matches!(
            pairwise_preference_swap_loss(vector(&[], &d), vector(&[], &d)),
            Err(LossError::EmptyBatch { .. })
        ));
        assert!(matches!(
            pairwise_preference_swap_loss(vector(&[1.0], &d), vector(&[1.0, 2.0], &d)),
            Err(LossError::ShapeMismatch {
                input: "rejected",
                ..
            })
        ));
    }

    #[test]
    fn gradients_match_finite_differences() {
        check_gradients(&[(&[0.5, -1.0, 2.0], [3]), (&[0.3, 0.8, -1.5], [3])], |t| {
            pairwise_preference_swap_loss(t[0].clone(), t[1].clone()).unwrap()
        });
    }
}
