//! SELM: DPO with an optimism term that pushes the policy away from the reference's own
//! samples, for active exploration in online alignment.

use burn::tensor::Tensor;

use crate::LossError;
use crate::checks::{in_range, pair_len, positive, same_len};
use crate::pairwise::hard_nll;

const OBJECTIVE: &str = "selm";

/// SELM (Zhang et al. 2024, "Self-Exploring Language Models: Active Preference Elicitation for
/// Online Alignment", its final objective, as the official `SELMTrainer.
/// optimistic_dpo_loss` computes it):
///
/// `L = mean_i [ −log σ(β·((pc_i − qc_i) − (pr_i − qr_i))) + α·β·(ps_i − qs_i) ]`
///
/// where `pc`, `pr` (`qc`, `qr`) are the policy's (reference's) summed log-probs of the chosen
/// and rejected completions, and `ps = log π_θ(y_s|x)`, `qs = log π_ref(y_s|x)` those of a
/// response `y_s ∼ π_ref(·|x)` sampled from the reference (the previous iterate) for the same
/// prompt. The optimism term `α·β·log π_θ(y_s|x)/π_ref(y_s|x)` is the reparameterised
/// `−α·max_y r(x, y)` of the paper's bilevel objective: minimising it lowers the policy's
/// likelihood of what the reference already generates, biasing it towards unexplored,
/// potentially high-reward responses. `α = 0` is DPO. The reference log-probs are detached
/// (`qs` shifts the value, not the gradient; it is kept so the value matches the official code).
///
/// Errors: `β ≤ 0`; `α` negative or not finite; an empty batch; inputs of different lengths.
#[allow(clippy::too_many_arguments)]
pub fn selm_loss(
    policy_chosen: Tensor<1>,
    policy_rejected: Tensor<1>,
    ref_chosen: Tensor<1>,
    ref_rejected: Tensor<1>,
    policy_sampled: Tensor<1>,
    ref_sampled: Tensor<1>,
    beta: f32,
    alpha: f32,
) -> Result<Tensor<1>, LossError> {
    positive(OBJECTIVE, "beta", beta)?;
    in_range(
        OBJECTIVE,
        "alpha",
        alpha,
        0.0,
        f32::INFINITY,
        "a finite value >= 0",
    )?;
    let n = pair_len(OBJECTIVE, &policy_chosen, &policy_rejected)?;
    same_len(OBJECTIVE, "ref_chosen", n, &ref_chosen)?;
    same_len(OBJECTIVE, "ref_rejected", n, &ref_rejected)?;
    same_len(OBJECTIVE, "policy_sampled", n, &policy_sampled)?;
    same_len(OBJECTIVE, "ref_sampled", n, &ref_sampled)?;
    let h = (policy_chosen - ref_chosen.detach()) - (policy_rejected - ref_rejected.detach());
    let dpo = hard_nll(h.mul_scalar(beta)).mean();
    let optimism = (policy_sampled - ref_sampled.detach()).mean();
    Ok(dpo + optimism.mul_scalar(alpha * beta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, scalar, vector};
    use rm_core::device::test_device;

    fn log_sig(x: f64) -> f64 {
        if x >= 0.0 {
            -(-x).exp().ln_1p()
        } else {
            x - x.exp().ln_1p()
        }
    }

    const PC: [f32; 3] = [-10.0, -4.0, -30.0];
    const PR: [f32; 3] = [-12.0, -3.5, -20.0];
    const QC: [f32; 3] = [-11.0, -4.5, -28.0];
    const QR: [f32; 3] = [-11.5, -3.0, -21.0];
    const PS: [f32; 3] = [-8.0, -15.0, -2.0];
    const QS: [f32; 3] = [-7.0, -16.0, -2.5];

    fn naive(beta: f64, alpha: f64) -> f64 {
        (0..3)
            .map(|i| {
                let h = (PC[i] as f64 - QC[i] as f64) - (PR[i] as f64 - QR[i] as f64);
                -log_sig(beta * h) + alpha * beta * (PS[i] as f64 - QS[i] as f64)
            })
            .sum::<f64>()
            / 3.0
    }

    fn call(beta: f32, alpha: f32) -> Result<Tensor<1>, LossError> {
        let d = test_device();
        selm_loss(
            vector(&PC, &d),
            vector(&PR, &d),
            vector(&QC, &d),
            vector(&QR, &d),
            vector(&PS, &d),
            vector(&QS, &d),
            beta,
            alpha,
        )
    }

    #[test]
    fn matches_the_naive_implementation() {
        for beta in [0.01f32, 0.1, 1.0, 4.0] {
            for alpha in [0.0f32, 0.001, 0.5] {
                let l = scalar(call(beta, alpha).unwrap());
                assert_close(l, naive(beta as f64, alpha as f64) as f32, 1e-5);
            }
        }
    }

    #[test]
    fn large_margins_stay_finite() {
        let d = test_device();
        let z = || vector(&[0.0, 0.0], &d);
        let l = selm_loss(
            vector(&[-1e4, 1e4], &d),
            z(),
            z(),
            z(),
            vector(&[-3.0, -1.0], &d),
            z(),
            1.0,
            0.1,
        )
        .unwrap();
        // mean(−log σ(−1e4), −log σ(1e4)) + 0.1·mean(−3, −1)
        assert_close(scalar(l), 5e3 - 0.2, 1.0);
    }

    #[test]
    fn invalid_hyper_parameters_are_errors() {
        for beta in [0.0, -0.1, f32::NAN] {
            assert!(matches!(
                call(beta, 0.1),
                Err(LossError::InvalidParameter {
                    parameter: "beta",
                    ..
                })
            ));
        }
        for alpha in [-0.1, f32::INFINITY] {
            assert!(matches!(
                call(0.1, alpha),
                Err(LossError::InvalidParameter {
                    parameter: "alpha",
                    ..
                })
            ));
        }
        let d = test_device();
        let v = || vector(&[1.0, 2.0], &d);
        assert!(matches!(
            selm_loss(v(), v(), v(), v(), vector(&[1.0], &d), v(), 0.1, 0.1),
            Err(LossError::ShapeMismatch {
                input: "policy_sampled",
                ..
            })
        ));
    }

    #[test]
    fn gradients_match_finite_differences() {
        check_gradients(
            &[
                (&[-1.0, -0.4, -3.0], [3]),
                (&[-1.2, -0.35, -2.0], [3]),
                (&[-0.8, -1.5, -0.2], [3]),
            ],
            |t| {
                let d = t[0].device();
                selm_loss(
                    t[0].clone(),
                    t[1].clone(),
                    vector(&[-1.1, -0.45, -2.8], &d),
                    vector(&[-1.15, -0.3, -2.1], &d),
                    t[2].clone(),
                    vector(&[-0.7, -1.6, -0.25], &d),
                    0.7,
                    0.2,
                )
                .unwrap()
            },
        );
    }
}
