//! Pairwise objectives on scalar rewards: Bradley–Terry and its variants (margins, centering,
//! label smoothing), distillation of preference strength, and pairwise accuracy.
//!
//! Inputs are `[N]` tensors of rewards `r_c` of the chosen and `r_r` of the rejected response of
//! `N` pairs; `Δ = r_c − r_r`. Every loss is a mean over the pairs, returned as a `[1]` tensor.
//! `σ` is the logistic sigmoid; `log σ` is evaluated stably by burn's `log_sigmoid`.

use burn::tensor::Tensor;
use burn::tensor::activation::log_sigmoid;

use crate::LossError;
use crate::checks::{in_range, pair_len, same_len};

/// Per-pair negative log-likelihood of a win, `−log σ(Δ)` (the chosen response is preferred
/// with probability 1).
pub(crate) fn hard_nll(delta: Tensor<1>) -> Tensor<1> {
    log_sigmoid(delta).neg()
}

/// Per-pair `−[(1 − ε) log σ(Δ) + ε log σ(−Δ)]` (the label is flipped with probability `ε`).
pub(crate) fn smoothed_nll(delta: Tensor<1>, eps: f32) -> Tensor<1> {
    if eps == 0.0 {
        return hard_nll(delta);
    }
    let win = log_sigmoid(delta.clone()).mul_scalar(1.0 - eps);
    let loss = log_sigmoid(delta.neg()).mul_scalar(eps);
    (win + loss).neg()
}

/// Per-pair `−[p log σ(Δ) + (1 − p) log σ(−Δ)]` (the chosen response is preferred with
/// probability `p`).
pub(crate) fn soft_nll(delta: Tensor<1>, p: Tensor<1>) -> Tensor<1> {
    let win = log_sigmoid(delta.clone()) * p.clone();
    let loss = log_sigmoid(delta.neg()) * p.neg().add_scalar(1.0);
    (win + loss).neg()
}

/// `mean((r_c + r_r)²)`, unscaled.
pub(crate) fn centering_term(chosen: Tensor<1>, rejected: Tensor<1>) -> Tensor<1> {
    (chosen + rejected).square().mean()
}

pub(crate) fn check_label_smoothing(objective: &'static str, eps: f32) -> Result<(), LossError> {
    in_range(
        objective,
        "label_smoothing",
        eps,
        0.0,
        0.5,
        "0 <= label_smoothing < 0.5 (at 0.5 the loss ignores the preference)",
    )
}

pub(crate) fn check_centering(objective: &'static str, coefficient: f32) -> Result<(), LossError> {
    in_range(
        objective,
        "centering",
        coefficient,
        0.0,
        f32::INFINITY,
        "a finite coefficient >= 0",
    )
}

/// Bradley–Terry reward-model loss:
///
/// `L = mean_i −log σ(r_c,i − r_r,i)`
///
/// the negative log-likelihood of the observed preferences under the Bradley–Terry model
/// `P(c ≻ r) = σ(r_c − r_r)` (Bradley & Terry 1952, "Rank Analysis of Incomplete Block Designs";
/// used for RLHF reward models by Ouyang et al. 2022, InstructGPT). At `Δ = 0` it is `ln 2`.
///
/// Errors: an empty batch; `rejected` not the length of `chosen`.
pub fn bradley_terry_loss(chosen: Tensor<1>, rejected: Tensor<1>) -> Result<Tensor<1>, LossError> {
    pair_len("bradley-terry", &chosen, &rejected)?;
    Ok(hard_nll(chosen - rejected).mean())
}

/// Bradley–Terry with a per-pair margin:
///
/// `L = mean_i −log σ(r_c,i − r_r,i − m_i)`
///
/// so pairs rated as clearly different (large `m`) must be separated by at least that much
/// (Touvron et al. 2023, "Llama 2", §3.2.2, margin from the annotators' preference strength).
///
/// Errors: an empty batch; `rejected` or `margin` not the length of `chosen`.
pub fn bradley_terry_margin_loss(
    chosen: Tensor<1>,
    rejected: Tensor<1>,
    margin: Tensor<1>,
) -> Result<Tensor<1>, LossError> {
    let n = pair_len("bradley-terry-margin", &chosen, &rejected)?;
    same_len("bradley-terry-margin", "margin", n, &margin)?;
    Ok(hard_nll(chosen - rejected - margin).mean())
}

/// Reward-centering penalty, added to a pairwise loss:
///
/// `L = λ · mean_i (r_c,i + r_r,i)²`
///
/// Bradley–Terry only sees reward differences, so the rewards' offset drifts freely; this pulls
/// each pair's mean reward towards zero (Eisenstein et al. 2023, "Helping or Herding? Reward Model
/// Ensembles Mitigate but do not Eliminate Reward Hacking"; `λ = coefficient`).
///
/// Errors: an empty batch; `rejected` not the length of `chosen`; `coefficient` negative or not
/// finite.
pub fn reward_centering_penalty(
    chosen: Tensor<1>,
    rejected: Tensor<1>,
    coefficient: f32,
) -> Result<Tensor<1>, LossError> {
    pair_len("reward-centering", &chosen, &rejected)?;
    check_centering("reward-centering", coefficient)?;
    Ok(centering_term(chosen, rejected).mul_scalar(coefficient))
}

/// Label-smoothed (noise-robust) Bradley–Terry:
///
/// `L = mean_i [ −(1 − ε) log σ(Δ_i) − ε log σ(−Δ_i) ]`,  `Δ_i = r_c,i − r_r,i`
///
/// the Bradley–Terry likelihood when each label is flipped with probability `ε` (label smoothing
/// for reward models, e.g. Wang et al. 2024 "Secrets of RLHF in Large Language Models Part II:
/// Reward Modeling"; the same form as conservative DPO, Mitchell 2023 "A note on DPO with noisy
/// preferences"). It bounds the optimal `Δ` at
/// `log((1 − ε)/ε)` instead of pushing it to infinity. `ε = 0` is plain Bradley–Terry.
///
/// Errors: an empty batch; `rejected` not the length of `chosen`; `ε` outside `[0, 0.5)`.
pub fn label_smoothed_bradley_terry_loss(
    chosen: Tensor<1>,
    rejected: Tensor<1>,
    label_smoothing: f32,
) -> Result<Tensor<1>, LossError> {
    pair_len("label-smoothed-bradley-terry", &chosen, &rejected)?;
    check_label_smoothing("label-smoothed-bradley-terry", label_smoothing)?;
    Ok(smoothed_nll(chosen - rejected, label_smoothing).mean())
}

/// Distillation of preference strength from soft labels `p_i = P(c ≻ r) ∈ [0, 1]` (a teacher's
/// or an annotator pool's probability):
///
/// `L = mean_i −[ p_i log σ(Δ_i) + (1 − p_i) log σ(−Δ_i) ]`
///
/// the binary cross-entropy between the teacher's and the Bradley–Terry model's preference
/// probability; minimised at `σ(Δ) = p` (reward models trained on an AI labeler's soft
/// preference probabilities, Lee et al. 2023 "RLAIF: Scaling Reinforcement Learning from Human
/// Feedback with AI Feedback"). `p = 1` everywhere is plain
/// Bradley–Terry. Values of `p` are not range-checked on the host (that would synchronise the
/// device); outside `[0, 1]` the loss is unbounded below.
///
/// Errors: an empty batch; `rejected` or `soft_label` not the length of `chosen`.
pub fn preference_distillation_loss(
    chosen: Tensor<1>,
    rejected: Tensor<1>,
    soft_label: Tensor<1>,
) -> Result<Tensor<1>, LossError> {
    let n = pair_len("preference-distillation", &chosen, &rejected)?;
    same_len("preference-distillation", "soft_label", n, &soft_label)?;
    Ok(soft_nll(chosen - rejected, soft_label).mean())
}

/// The fraction of pairs whose chosen reward is strictly greater than the rejected one; ties
/// count as wrong (a constant reward model scores 0, not 0.5).
///
/// Errors: an empty batch; `rejected` not the length of `chosen`.
pub fn pairwise_accuracy(chosen: Tensor<1>, rejected: Tensor<1>) -> Result<f32, LossError> {
    pair_len("pairwise-accuracy", &chosen, &rejected)?;
    Ok(chosen.greater(rejected).float().mean().into_scalar::<f32>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, scalar, vector};
    use rm_core::device::test_device;
    use std::f32::consts::LN_2;

    fn sig(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn bradley_terry_matches_closed_form() {
        let d = test_device();
        // Δ = 0 → ln 2.
        let l = bradley_terry_loss(vector(&[0.3, -1.0], &d), vector(&[0.3, -1.0], &d)).unwrap();
        assert_eq!(l.dims(), [1]);
        assert_close(scalar(l), LN_2, 1e-6);
        // Δ = ln 3 → −log(3/4); Δ = −ln 3 → −log(1/4); mean = (ln(4/3) + ln 4)/2.
        let l3 = 3f32.ln();
        let l = bradley_terry_loss(vector(&[l3, 0.0], &d), vector(&[0.0, l3], &d)).unwrap();
        assert_close(scalar(l), ((4.0f32 / 3.0).ln() + 4f32.ln()) / 2.0, 1e-5);
        // Large margins stay finite: −log σ(−50) = 50 (+ e^−50).
        let l = bradley_terry_loss(vector(&[-25.0], &d), vector(&[25.0], &d)).unwrap();
        assert_close(scalar(l), 50.0, 1e-4);
        let l = bradley_terry_loss(vector(&[25.0], &d), vector(&[-25.0], &d)).unwrap();
        assert_close(scalar(l), 0.0, 1e-6);
    }

    #[test]
    fn margin_shifts_the_difference() {
        let d = test_device();
        // Δ = 1, m = 1 → ln 2; Δ = 2, m = 0 → −log σ(2).
        let l = bradley_terry_margin_loss(
            vector(&[1.0, 2.0], &d),
            vector(&[0.0, 0.0], &d),
            vector(&[1.0, 0.0], &d),
        )
        .unwrap();
        assert_close(scalar(l), (LN_2 - sig(2.0).ln()) / 2.0, 1e-6);
    }

    #[test]
    fn centering_penalty_is_lambda_times_mean_square_sum() {
        let d = test_device();
        // sums 3 and −1 → mean of squares 5; λ = 0.1 → 0.5.
        let l = reward_centering_penalty(vector(&[1.0, 0.5], &d), vector(&[2.0, -1.5], &d), 0.1)
            .unwrap();
        assert_close(scalar(l), 0.5, 1e-6);
        let err = reward_centering_penalty(vector(&[1.0], &d), vector(&[2.0], &d), -0.1);
        assert!(matches!(
            err,
            Err(LossError::InvalidParameter {
                parameter: "centering",
                ..
            })
        ));
    }

    #[test]
    fn label_smoothing_mixes_both_directions() {
        let d = test_device();
        // Δ = 0 → ln 2 whatever ε.
        let l =
            label_smoothed_bradley_terry_loss(vector(&[1.0], &d), vector(&[1.0], &d), 0.2).unwrap();
        assert_close(scalar(l), LN_2, 1e-6);
        // Δ = 1, ε = 0.1: −0.9 log σ(1) − 0.1 log σ(−1).
        let l =
            label_smoothed_bradley_terry_loss(vector(&[1.0], &d), vector(&[0.0], &d), 0.1).unwrap();
        assert_close(scalar(l), -0.9 * sig(1.0).ln() - 0.1 * sig(-1.0).ln(), 1e-6);
        // ε = 0 is plain BT.
        let a = label_smoothed_bradley_terry_loss(vector(&[0.7], &d), vector(&[-0.2], &d), 0.0)
            .unwrap();
        let b = bradley_terry_loss(vector(&[0.7], &d), vector(&[-0.2], &d)).unwrap();
        assert_close(scalar(a), scalar(b), 1e-7);
        for bad in [0.5, -0.01, f32::NAN] {
            assert!(matches!(
                label_smoothed_bradley_terry_loss(vector(&[1.0], &d), vector(&[0.0], &d), bad),
                Err(LossError::InvalidParameter { .. })
            ));
        }
    }

    #[test]
    fn distillation_is_cross_entropy_to_soft_labels() {
        let d = test_device();
        // p = 0.75 and Δ = ln 3 (σ = 0.75): the entropy of 0.75.
        let l3 = 3f32.ln();
        let l = preference_distillation_loss(
            vector(&[l3], &d),
            vector(&[0.0], &d),
            vector(&[0.75], &d),
        )
        .unwrap();
        let h = -(0.75f32 * 0.75f32.ln() + 0.25 * 0.25f32.ln());
        assert_close(scalar(l), h, 1e-6);
        // p = 1 is BT, p = 0 is BT with the roles swapped.
        let l = preference_distillation_loss(
            vector(&[2.0, 2.0], &d),
            vector(&[0.0, 0.0], &d),
            vector(&[1.0, 0.0], &d),
        )
        .unwrap();
        assert_close(scalar(l), (-sig(2.0).ln() - sig(-2.0).ln()) / 2.0, 1e-6);
    }

    #[test]
    fn accuracy_counts_strict_wins_only() {
        let d = test_device();
        let acc = pairwise_accuracy(
            vector(&[1.0, 0.0, 2.0, -1.0], &d),
            vector(&[0.0, 0.0, 3.0, -2.0], &d),
        )
        .unwrap();
        assert_eq!(acc, 0.5);
        let acc = pairwise_accuracy(vector(&[1.0; 3], &d), vector(&[1.0; 3], &d)).unwrap();
        assert_eq!(acc, 0.0, "ties are wrong");
    }

    #[test]
    fn empty_batches_and_length_mismatches_are_errors() {
        let d = test_device();
        let empty = || vector(&[], &d);
        assert_eq!(
            bradley_terry_loss(empty(), empty()).unwrap_err(),
            LossError::EmptyBatch {
                objective: "bradley-terry"
            }
        );
        assert_eq!(
            bradley_terry_loss(vector(&[1.0, 2.0], &d), vector(&[1.0], &d)).unwrap_err(),
            LossError::ShapeMismatch {
                objective: "bradley-terry",
                input: "rejected",
                expected: vec![2],
                actual: vec![1],
            }
        );
        let err = bradley_terry_margin_loss(
            vector(&[1.0, 2.0], &d),
            vector(&[1.0, 0.0], &d),
            vector(&[1.0], &d),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                LossError::ShapeMismatch {
                    input: "margin",
                    ..
                }
            ),
            "{err}"
        );
        let err = preference_distillation_loss(
            vector(&[1.0], &d),
            vector(&[1.0], &d),
            vector(&[0.5, 0.5], &d),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "preference-distillation: `soft_label` has shape [2], expected [1]"
        );
        assert!(matches!(
            label_smoothed_bradley_terry_loss(empty(), empty(), 0.1),
            Err(LossError::EmptyBatch { .. })
        ));
        assert!(matches!(
            reward_centering_penalty(empty(), empty(), 0.1),
            Err(LossError::EmptyBatch { .. })
        ));
        assert!(matches!(
            pairwise_accuracy(empty(), empty()),
            Err(LossError::EmptyBatch { .. })
        ));
        assert!(matches!(
            pairwise_accuracy(vector(&[1.0], &d), empty()),
            Err(LossError::ShapeMismatch { .. })
        ));
    }

    const C: [f32; 4] = [0.5, -1.2, 2.0, 0.1];
    const R: [f32; 4] = [0.2, 0.3, -1.0, 0.1];
    const M: [f32; 4] = [0.0, 1.0, 0.5, -0.3];
    const P: [f32; 4] = [0.9, 0.2, 0.6, 1.0];

    #[test]
    fn bradley_terry_gradients_match_finite_differences() {
        check_gradients(&[(&C, [4]), (&R, [4])], |t| {
            bradley_terry_loss(t[0].clone(), t[1].clone()).unwrap()
        });
    }

    #[test]
    fn margin_gradients_match_finite_differences() {
        check_gradients(&[(&C, [4]), (&R, [4]), (&M, [4])], |t| {
            bradley_terry_margin_loss(t[0].clone(), t[1].clone(), t[2].clone()).unwrap()
        });
    }

    #[test]
    fn centering_gradients_match_finite_differences() {
        check_gradients(&[(&C, [4]), (&R, [4])], |t| {
            reward_centering_penalty(t[0].clone(), t[1].clone(), 0.3).unwrap()
        });
    }

    #[test]
    fn label_smoothing_gradients_match_finite_differences() {
        check_gradients(&[(&C, [4]), (&R, [4])], |t| {
            label_smoothed_bradley_terry_loss(t[0].clone(), t[1].clone(), 0.1).unwrap()
        });
    }

    #[test]
    fn distillation_gradients_match_finite_differences() {
        // The soft labels are differentiated too: ∂L/∂p = −Δ/N.
        check_gradients(&[(&C, [4]), (&R, [4]), (&P, [4])], |t| {
            preference_distillation_loss(t[0].clone(), t[1].clone(), t[2].clone()).unwrap()
        });
    }
}
