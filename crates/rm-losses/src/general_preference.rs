//! The General Preference Model: preferences from skew-symmetric products of preference
//! embeddings, which can express intransitive (cyclic) preferences that no scalar reward can.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, sigmoid};

use crate::LossError;
use crate::checks::in_range;

const OBJECTIVE: &str = "general-preference";

fn check_embeddings(a: &Tensor<2>, b: &Tensor<2>) -> Result<[usize; 2], LossError> {
    let [n, dim] = a.dims();
    if n == 0 {
        return Err(LossError::EmptyBatch {
            objective: OBJECTIVE,
        });
    }
    if dim == 0 || dim % 2 != 0 {
        return Err(LossError::OddEmbeddingWidth {
            objective: OBJECTIVE,
            width: dim,
        });
    }
    if b.dims() != [n, dim] {
        return Err(LossError::ShapeMismatch {
            objective: OBJECTIVE,
            input: "second embeddings",
            expected: vec![n, dim],
            actual: b.dims().to_vec(),
        });
    }
    Ok([n, dim])
}

fn check_beta(beta: f32) -> Result<(), LossError> {
    if beta > 0.0 {
        in_range(
            OBJECTIVE,
            "beta",
            beta,
            0.0,
            f32::INFINITY,
            "a finite beta > 0",
        )
    } else {
        Err(LossError::InvalidParameter {
            objective: OBJECTIVE,
            parameter: "beta",
            value: beta,
            expected: "a finite beta > 0",
        })
    }
}

/// General Preference Model score (Zhang et al. 2024, "Beyond Bradley-Terry: General Preference
/// Modeling with Preference Representations"):
///
/// `s(a ≻ b) = v_aᵀ R v_b`,  `R = diag(J, …, J)`,  `J = [[0, −1], [1, 0]]`
///
/// for preference embeddings `v ∈ R^{2k}` (`a`, `b`: `[N, 2k]`, one row per pair). Per block `l`
/// this is `v_a[2l+1]·v_b[2l] − v_a[2l]·v_b[2l+1]`, the sine of the angle from `v_b` to `v_a`
/// times their lengths. `R` is skew-symmetric, so `s(a ≻ b) = −s(b ≻ a)` and `s(a ≻ a) = 0`;
/// unlike a scalar reward difference it can be positive around a cycle. Returns `[N]`.
///
/// Errors: an empty batch; an odd or zero embedding width; `b` not the shape of `a`.
pub fn general_preference_score(a: Tensor<2>, b: Tensor<2>) -> Result<Tensor<1>, LossError> {
    let [n, dim] = check_embeddings(&a, &b)?;
    let blocks = dim / 2;
    let a = a.reshape([n, blocks, 2]);
    let b = b.reshape([n, blocks, 2]);
    let (a_even, a_odd) = (a.clone().narrow(2, 0, 1), a.narrow(2, 1, 1));
    let (b_even, b_odd) = (b.clone().narrow(2, 0, 1), b.narrow(2, 1, 1));
    let per_block = a_odd * b_even - a_even * b_odd; // [N, k, 1]
    Ok(per_block.reshape([n, blocks]).sum_dim(1).reshape([n]))
}

/// `P(a ≻ b) = σ(s(a ≻ b) / β)` under the General Preference Model; see
/// [`general_preference_score`]. `P(a ≻ b) + P(b ≻ a) = 1`. Returns `[N]`.
///
/// Errors: those of [`general_preference_score`]; `β` not finite and positive.
pub fn general_preference_probability(
    a: Tensor<2>,
    b: Tensor<2>,
    beta: f32,
) -> Result<Tensor<1>, LossError> {
    check_beta(beta)?;
    Ok(sigmoid(general_preference_score(a, b)?.div_scalar(beta)))
}

/// General Preference Model loss (Zhang et al. 2024): the negative log-likelihood of the chosen
/// response winning,
///
/// `L = mean_i −log σ( s(c_i ≻ r_i) / β )`
///
/// with `s` from [`general_preference_score`] on the chosen and rejected preference embeddings
/// (`[N, 2k]` each). `β = 1` is the plain `−log σ(s(c ≻ r))`.
///
/// Errors: those of [`general_preference_score`]; `β` not finite and positive.
pub fn general_preference_loss(
    chosen: Tensor<2>,
    rejected: Tensor<2>,
    beta: f32,
) -> Result<Tensor<1>, LossError> {
    check_beta(beta)?;
    let score = general_preference_score(chosen, rejected)?;
    Ok(log_sigmoid(score.div_scalar(beta)).neg().mean())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, matrix, scalar, values};
    use rm_core::device::test_device;

    #[test]
    fn score_is_the_skew_symmetric_form() {
        let d = test_device();
        // Per block: a_odd·b_even − a_even·b_odd.
        let a = matrix(&[1.0, 0.0, 2.0, 3.0, 0.0, 1.0, 0.0, 0.0], [2, 4], &d);
        let b = matrix(&[0.0, 1.0, 5.0, 8.0, 1.0, 0.0, 4.0, 4.0], [2, 4], &d);
        // Row 0: (0·0 − 1·1) + (3·5 − 2·8) = −1 − 1 = −2. Row 1: (1·1 − 0·0) + (0·4 − 0·4) = 1.
        assert_eq!(
            values(general_preference_score(a.clone(), b.clone()).unwrap()),
            [-2.0, 1.0]
        );
        // Antisymmetric, and zero against itself.
        assert_eq!(
            values(general_preference_score(b, a.clone()).unwrap()),
            [2.0, -1.0]
        );
        assert_eq!(
            values(general_preference_score(a.clone(), a).unwrap()),
            [0.0, 0.0]
        );
    }

    #[test]
    fn loss_and_probability_match_closed_form() {
        let d = test_device();
        // s = 1·1 − 0·0 = 1 for (0,1) ≻ (1,0); β = 2 → −log σ(0.5).
        let c = matrix(&[0.0, 1.0], [1, 2], &d);
        let r = matrix(&[1.0, 0.0], [1, 2], &d);
        let l = general_preference_loss(c.clone(), r.clone(), 2.0).unwrap();
        assert_close(scalar(l), (1.0 + (-0.5f32).exp()).ln(), 1e-6);
        let p = general_preference_probability(c.clone(), r.clone(), 1.0).unwrap();
        let q = general_preference_probability(r, c, 1.0).unwrap();
        let (p, q) = (scalar(p), scalar(q));
        assert_close(p, 1.0 / (1.0 + (-1.0f32).exp()), 1e-6);
        assert_close(p + q, 1.0, 1e-6);
    }

    #[test]
    fn bad_shapes_and_parameters_are_errors() {
        let d = test_device();
        let two = matrix(&[1.0, 2.0], [1, 2], &d);
        assert!(matches!(
            general_preference_score(
                Tensor::<2>::zeros([0, 2], &d),
                Tensor::<2>::zeros([0, 2], &d)
            ),
            Err(LossError::EmptyBatch { .. })
        ));
        let odd = matrix(&[1.0, 2.0, 3.0], [1, 3], &d);
        assert_eq!(
            general_preference_score(odd.clone(), odd).unwrap_err(),
            LossError::OddEmbeddingWidth {
                objective: OBJECTIVE,
                width: 3
            }
        );
        let err =
            general_preference_loss(two.clone(), matrix(&[1.0; 4], [1, 4], &d), 1.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "general-preference: `second embeddings` has shape [1, 4], expected [1, 2]"
        );
        for beta in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(matches!(
                general_preference_loss(two.clone(), two.clone(), beta),
                Err(LossError::InvalidParameter {
                    parameter: "beta",
                    ..
                })
            ));
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let c = [0.5, -1.0, 0.3, 0.8, 1.2, 0.1, -0.4, 0.9];
        let r = [0.2, 0.7, -1.1, 0.4, 0.0, -0.6, 0.5, 0.25];
        check_gradients(&[(&c, [2, 4]), (&r, [2, 4])], |t| {
            general_preference_loss(t[0].clone(), t[1].clone(), 0.7).unwrap()
        });
    }
}
