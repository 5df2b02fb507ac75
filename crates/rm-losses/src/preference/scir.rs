//! SCIR, Self-Consistent Internal Rewards (Zhou, Guo, Ma, Gui, Zhang & Huang 2025,
//! "Self-Consistency of the Internal Reward Models Improves Self-Rewarding Language Models",
//! arXiv 2502.08922): a self-rewarding policy holds two reward models of its own — the
//! implicit DPO reward and a generative judge (the policy asked which of two responses is
//! better) — which often disagree. SCIR trains them to agree and trains DPO only on the pairs
//! where they already do.
//!
//! For an unlabelled pair `(y₁, y₂)` of a prompt `x`:
//! - implicit: `p_imp = σ(m)`, `m = β[(log π(y₁|x) − log π_ref(y₁|x)) − (log π(y₂|x) −
//!   log π_ref(y₂|x))]`;
//! - generative, position-debiased over both orders ([`debiased_judgment`]):
//!   `p_gen = ½[σ(d₁₂) + σ(−d₂₁)]`, `d_ij = ℓ_A − ℓ_B` the judge's next-token logits of the
//!   answers "A" and "B" with `y_i` shown as A and `y_j` as B;
//! - consistency ([`scir_consistency_loss`]): `L_con = −log(p_imp·p_gen + (1 − p_imp)(1 −
//!   p_gen))`, the negative log-probability that the two internal reward models, read as
//!   independent Bernoulli judgments, name the same winner. It is small only when they agree
//!   *and* are confident — the paper's "inconsistency penalty" that "enforces consistency and
//!   confidence"; the paper's exact penalty is not reachable from here, so this form is this
//!   implementation's reading of it;
//! - selection ([`scir_agreement`]): DPO trains on the pairs where both put the same response
//!   ahead (`m > 0` and `p_gen > ½`, or `m < 0` and `p_gen < ½`), labelled by that agreement,
//!   recomputed at every step from the current policy ("dynamic consistency preference
//!   optimisation").
//!
//! The step's objective is `Σ_{consistent} ℓ_DPO + λ·Σ_{all} L_con`, over the number of pairs.

use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

use crate::LossError;
use crate::checks::pair_len;

const OBJECTIVE: &str = "scir";

/// Below this the agreement probability is clamped before its log (a pair where both models
/// are certain and opposed gives `−log 1e-6 ≈ 13.8`, not ∞).
const MIN_AGREEMENT: f32 = 1e-6;

/// The generative judge's position-debiased probability that the first response wins:
/// `½[σ(first_as_a) + σ(−second_as_a)]`, with `first_as_a` = `ℓ_A − ℓ_B` when the first
/// response is shown as A, `second_as_a` the same with the order swapped (`[P]` each).
///
/// Errors: an empty batch; lengths differ.
pub fn debiased_judgment(
    first_as_a: Tensor<1>,
    second_as_a: Tensor<1>,
) -> Result<Tensor<1>, LossError> {
    pair_len(OBJECTIVE, &first_as_a, &second_as_a)?;
    Ok((sigmoid(first_as_a) + sigmoid(second_as_a.neg())).mul_scalar(0.5))
}

/// SCIR's consistency loss per pair (`[P]`): `−log max(σ(m)·q + (1 − σ(m))(1 − q), 10⁻⁶)` for
/// implicit margins `m` and judge probabilities `q` (see the module docs). Gradients reach both
/// inputs.
///
/// Errors: an empty batch; lengths differ.
pub fn scir_consistency_loss(
    implicit_margin: Tensor<1>,
    judge: Tensor<1>,
) -> Result<Tensor<1>, LossError> {
    pair_len(OBJECTIVE, &implicit_margin, &judge)?;
    let p = sigmoid(implicit_margin);
    let agree =
        p.clone() * judge.clone() + (p.neg().add_scalar(1.0)) * (judge.neg().add_scalar(1.0));
    Ok(agree.clamp_min(MIN_AGREEMENT).log().neg())
}

/// Which pairs the two internal reward models agree on: `Some(true)` when both prefer the
/// first response (`m > 0`, `q > ½`), `Some(false)` when both prefer the second (`m < 0`,
/// `q < ½`), `None` otherwise (including exact ties).
pub fn scir_agreement(implicit_margin: &[f32], judge: &[f32]) -> Vec<Option<bool>> {
    implicit_margin
        .iter()
        .zip(judge)
        .map(|(&m, &q)| match (m > 0.0, m < 0.0, q > 0.5, q < 0.5) {
            (true, _, true, _) => Some(true),
            (_, true, _, true) => Some(false),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{check_gradients, values, vector};
    use rm_core::device::test_device;

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn debiased_judgment_averages_both_orders() {
        let d = test_device();
        let q = debiased_judgment(vector(&[2.0, 0.0, -1.0], &d), vector(&[-2.0, 0.0, 3.0], &d))
            .unwrap();
        let want = [
            0.5 * (sig(2.0) + sig(2.0)),
            0.5,
            0.5 * (sig(-1.0) + sig(-3.0)),
        ];
        for (g, w) in values(q).iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
        // A judge that answers "A" whatever the order says nothing.
        let q = debiased_judgment(vector(&[4.0], &d), vector(&[4.0], &d)).unwrap();
        assert!((values(q)[0] - 0.5).abs() < 1e-6);
        assert!(debiased_judgment(vector(&[], &d), vector(&[], &d)).is_err());
        assert!(debiased_judgment(vector(&[1.0], &d), vector(&[1.0, 2.0], &d)).is_err());
    }

    #[test]
    fn consistency_loss_matches_the_scalar_formula_and_rewards_confident_agreement() {
        let d = test_device();
        let margins = [3.0f32, -2.0, 0.0, 4.0, 30.0];
        let judges = [0.9f32, 0.2, 0.5, 0.1, 0.0];
        let got = values(scir_consistency_loss(vector(&margins, &d), vector(&judges, &d)).unwrap());
        for ((&m, &q), g) in margins.iter().zip(&judges).zip(&got) {
            let p = sig(m as f64);
            let q = q as f64;
            let want = -(p * q + (1.0 - p) * (1.0 - q)).max(1e-6).ln();
            assert!(
                (*g as f64 - want).abs() < 1e-4,
                "m {m} q {q}: {g} vs {want}"
            );
        }
        // Confident agreement costs less than an unsure pair, which costs less than
        // disagreement; certain opposition is clamped, finite.
        assert!((got[0] as f64) < std::f64::consts::LN_2);
        assert!(got[3] > got[2]);
        assert!(
            got[4].is_finite() && (got[4] - 13.8155).abs() < 1e-2,
            "{}",
            got[4]
        );
    }

    #[test]
    fn consistency_loss_gradients_match_finite_differences() {
        check_gradients(&[(&[0.8, 0.4, -1.2], [3]), (&[0.7, 0.3, 0.55], [3])], |t| {
            scir_consistency_loss(t[0].clone(), t[1].clone())
                .unwrap()
                .sum()
        });
        check_gradients(&[(&[1.5, -0.3], [2]), (&[-0.5, 2.0], [2])], |t| {
            debiased_judgment(t[0].clone(), t[1].clone()).unwrap().sum()
        });
    }

    #[test]
    fn agreement_keeps_the_pairs_both_models_order_alike() {
        assert_eq!(
            scir_agreement(
                &[1.0, -1.0, 1.0, -1.0, 0.0, 2.0],
                &[0.8, 0.1, 0.4, 0.6, 0.9, 0.5]
            ),
            vec![Some(true), Some(false), None, None, None, None]
        );
    }
}
