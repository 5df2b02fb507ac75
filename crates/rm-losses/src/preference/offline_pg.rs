//! Offline policy gradients on scored samples: CoPG (contrastive, on pairs of sequence-level
//! scores) and A-LoL (advantage-weighted, with clipped importance weights).
//!
//! Notation: `log π_θ(y|x)`, `log π_ref(y|x)` summed over the completion's tokens;
//! `Δ(y) = log π_θ(y|x) − log π_ref(y|x)`; `R(x, y)` a sequence-level score (reward) of a
//! sample, a constant. The samples come from a fixed behaviour distribution (a dataset, or the
//! reference), not from `π_θ`.

use burn::tensor::Tensor;

use super::{masked, row_sum};
use crate::LossError;
use crate::checks::{in_range, pair_len, positive, same_len, same_shape};

/// `B` samples at sequence level with their scores, for [`copg_loss`]: each `[B]`.
#[derive(Clone, Debug)]
pub struct ScoredSamples {
    /// `log π_θ(y|x)`.
    pub policy: Tensor<1>,
    /// `log π_ref(y|x)` (detached).
    pub reference: Tensor<1>,
    /// `R(x, y)` (a constant).
    pub reward: Tensor<1>,
}

/// CoPG (Flet-Berliac et al. 2024, "Contrastive Policy Gradient: Aligning LLMs on sequence-level
/// scores in a supervised-friendly fashion", the sample loss of Sec. 4): on pairs of independent
/// samples `(y, y')` of the same prompt, with the regularised reward
/// `R_β(y) = R(y) − β·Δ(y)`,
///
/// `L = mean_i ( R_β(y_i) − R_β(y'_i) )² = mean_i ( R(y_i) − R(y'_i) − β·(Δ(y_i) − Δ(y'_i)) )²`.
///
/// Its gradient is the contrastive policy gradient
/// `−2β·(R_β(y) − R_β(y'))·(∇log π_θ(y) − ∇log π_θ(y'))`: each sample's log-likelihood is pushed
/// by its regularised reward with the other sample's as the baseline, with no importance
/// weights, so it is valid off-policy. With `R(y_w) − R(y_l) = 1/2` it is `β²` times IPO's loss.
///
/// Errors: `β ≤ 0`; an empty batch; inputs of different lengths.
pub fn copg_loss(
    first: ScoredSamples,
    second: ScoredSamples,
    beta: f32,
) -> Result<Tensor<1>, LossError> {
    const OBJECTIVE: &str = "copg";
    positive(OBJECTIVE, "beta", beta)?;
    let n = pair_len(OBJECTIVE, &first.policy, &second.policy)?;
    for (input, t) in [
        ("first.reference", &first.reference),
        ("first.reward", &first.reward),
        ("second.reference", &second.reference),
        ("second.reward", &second.reward),
    ] {
        same_len(OBJECTIVE, input, n, t)?;
    }
    let regularised =
        |s: ScoredSamples| s.reward.detach() - (s.policy - s.reference.detach()).mul_scalar(beta);
    Ok((regularised(first) - regularised(second)).square().mean())
}

/// The A-LoL variants of Baheti et al. 2023 (the official code's `algorithm` names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AlolVariant {
    /// `a_lol`: the sequence-level importance weight `clip(π_θ(y|x)/π_ref(y|x), 1−ε, 1+ε)`.
    Alol,
    /// `a_lol_ref_free`: no importance weight (`r = 1`).
    RefFree,
    /// `a_lol_seq`: per-token importance weights `clip(π_θ(y_t|·)/π_ref(y_t|·), 1−ε, 1+ε)`, each
    /// multiplying its own token's log-likelihood.
    PerToken,
    /// `a_lol_kl`: no importance weight; a KL penalty `β·mean_i Δ(y_i)` instead.
    Kl {
        /// `β`, the penalty's coefficient; >= 0.
        beta: f32,
    },
}

/// A-LoL, Advantage-Leftover Lunch RL (Baheti et al. 2023, "Leftover Lunch: Advantage-based
/// Offline Reinforcement Learning for Language Models", Eq. 3, as the official code computes
/// it): an offline policy gradient on dataset completions, each weighted by its advantage
/// `A = R(x, y) − V_ref(x)` under the reference policy, with negative-advantage data discarded
/// (`A⁺ = max(A, 0)`), and by a clipped importance weight (constant in the backward pass):
///
/// - `Alol`:     `L = −mean_i A⁺_i · clip(e^{Δ(y_i)}, 1−ε, 1+ε) · log π_θ(y_i|x_i)`;
/// - `RefFree`:  `L = −mean_i A⁺_i · log π_θ(y_i|x_i)`;
/// - `PerToken`: `L = −mean_i A⁺_i · Σ_t m_t · clip(e^{Δ_t}, 1−ε, 1+ε) · log π_θ,t`;
/// - `Kl{β}`:    `L = −mean_i A⁺_i · log π_θ(y_i|x_i) + β·mean_i Δ(y_i)`
///
/// (`Δ_t` per token, `Δ(y) = Σ_t m_t Δ_t`; `log π_θ(y|x) = Σ_t m_t log π_θ,t`). The clip range
/// is `ε` (the code's `ppo_clip`, 0.9 by default: weights in `[0.1, 1.9]`), ignored by `RefFree`
/// and `Kl`. A huge `|Δ|` saturates the clip instead of overflowing.
///
/// Inputs: per-token log-probs of the policy and the reference and the completion mask
/// (`[B, L]`), and the advantages (`[B]`, constants).
///
/// Errors: an empty batch; inputs of other shapes; `ε` outside `(0, 1]`; a KL `β` negative or
/// not finite.
pub fn alol_loss(
    policy: Tensor<2>,
    reference: Tensor<2>,
    mask: Tensor<2>,
    advantages: Tensor<1>,
    variant: AlolVariant,
    clip: f32,
) -> Result<Tensor<1>, LossError> {
    const OBJECTIVE: &str = "a-lol";
    let dims = policy.dims();
    if dims[0] == 0 {
        return Err(LossError::EmptyBatch {
            objective: OBJECTIVE,
        });
    }
    same_shape(OBJECTIVE, "reference", dims, &reference)?;
    same_shape(OBJECTIVE, "mask", dims, &mask)?;
    same_len(OBJECTIVE, "advantages", dims[0], &advantages)?;
    let clipped = matches!(variant, AlolVariant::Alol | AlolVariant::PerToken);
    if clipped && !(clip > 0.0 && clip <= 1.0) {
        return Err(LossError::InvalidParameter {
            objective: OBJECTIVE,
            parameter: "clip",
            value: clip,
            expected: "0 < clip <= 1",
        });
    }
    if let AlolVariant::Kl { beta } = variant {
        in_range(
            OBJECTIVE,
            "beta",
            beta,
            0.0,
            f32::INFINITY,
            "a finite value >= 0",
        )?;
    }
    let advantage = advantages.detach().clamp_min(0.0);
    let tokens = masked(policy, &mask);
    let delta_tokens = || masked(tokens.clone().detach() - reference.clone().detach(), &mask);
    let weight = |log_ratio: Tensor<2>| log_ratio.exp().clamp(1.0 - clip, 1.0 + clip);
    let weighted_logp = match variant {
        AlolVariant::RefFree | AlolVariant::Kl { .. } => row_sum(tokens.clone()),
        AlolVariant::Alol => {
            let [b, _] = dims;
            let ratio = weight(row_sum(delta_tokens()).reshape([b, 1])).reshape([b]);
            row_sum(tokens.clone()) * ratio
        }
        AlolVariant::PerToken => row_sum(tokens.clone() * masked(weight(delta_tokens()), &mask)),
    };
    let pg = (weighted_logp * advantage).mean().neg();
    match variant {
        AlolVariant::Kl { beta } if beta != 0.0 => {
            let delta = row_sum(tokens - masked(reference.detach(), &mask));
            Ok(pg + delta.mean().mul_scalar(beta))
        }
        _ => Ok(pg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, matrix, scalar, vector};
    use rm_core::device::test_device;

    const B: usize = 3;
    const L: usize = 3;
    const P: [f32; 9] = [-1.0, -0.5, -2.0, -0.3, -1.2, 0.0, -0.1, -0.2, -0.3];
    const Q: [f32; 9] = [-1.5, -0.4, -1.0, -0.5, -1.0, 7.0, -0.9, -1.2, -0.8];
    const M: [f32; 9] = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
    const A: [f32; 3] = [0.7, -0.4, 1.5];

    fn naive_alol(variant: AlolVariant, clip: f64) -> f64 {
        let mut pg = 0.0;
        let mut kl = 0.0;
        for i in 0..B {
            let on = |t: usize| M[i * L + t] != 0.0;
            let lp: f64 = (0..L).filter(|&t| on(t)).map(|t| P[i * L + t] as f64).sum();
            let delta: f64 = (0..L)
                .filter(|&t| on(t))
                .map(|t| P[i * L + t] as f64 - Q[i * L + t] as f64)
                .sum();
            let a = (A[i] as f64).max(0.0);
            let w = |x: f64| x.exp().clamp(1.0 - clip, 1.0 + clip);
            let term = match variant {
                AlolVariant::RefFree | AlolVariant::Kl { .. } => lp,
                AlolVariant::Alol => w(delta) * lp,
                AlolVariant::PerToken => (0..L)
                    .filter(|&t| on(t))
                    .map(|t| w(P[i * L + t] as f64 - Q[i * L + t] as f64) * P[i * L + t] as f64)
                    .sum(),
            };
            pg -= a * term;
            kl += delta;
        }
        let beta = match variant {
            AlolVariant::Kl { beta } => beta as f64,
            _ => 0.0,
        };
        (pg + beta * kl) / B as f64
    }

    fn alol(variant: AlolVariant, clip: f32) -> Result<Tensor<1>, LossError> {
        let d = test_device();
        alol_loss(
            matrix(&P, [B, L], &d),
            matrix(&Q, [B, L], &d),
            matrix(&M, [B, L], &d),
            vector(&A, &d),
            variant,
            clip,
        )
    }

    const VARIANTS: [AlolVariant; 5] = [
        AlolVariant::Alol,
        AlolVariant::RefFree,
        AlolVariant::PerToken,
        AlolVariant::Kl { beta: 0.0 },
        AlolVariant::Kl { beta: 0.3 },
    ];

    #[test]
    fn alol_matches_the_naive_implementation() {
        for variant in VARIANTS {
            for clip in [0.2f32, 0.9, 1.0] {
                let l = scalar(alol(variant, clip).unwrap());
                assert_close(l, naive_alol(variant, clip as f64) as f32, 1e-5);
            }
        }
    }

    #[test]
    fn alol_huge_log_ratios_saturate_the_clip() {
        let d = test_device();
        let l = alol_loss(
            matrix(&[-1.0, -2.0], [2, 1], &d),
            matrix(&[-1e4, 1e4], [2, 1], &d),
            matrix(&[1.0, 1.0], [2, 1], &d),
            vector(&[1.0, 1.0], &d),
            AlolVariant::Alol,
            0.5,
        )
        .unwrap();
        // weights 1.5 and 0.5: −(1.5·(−1) + 0.5·(−2)) / 2
        assert_close(scalar(l), 1.25, 1e-6);
    }

    #[test]
    fn alol_gradients_match_finite_differences() {
        // The importance weights are constants in the backward pass (∂L/∂log π_t = −A⁺·w / B),
        // while finite differences also move them; a narrow clip saturates every weight that
        // matters (rows with A⁺ > 0), so the two must agree.
        for variant in VARIANTS {
            check_gradients(&[(&P, [B, L])], |t| {
                let d = t[0].device();
                alol_loss(
                    t[0].clone(),
                    matrix(&Q, [B, L], &d),
                    matrix(&M, [B, L], &d),
                    vector(&A, &d),
                    variant,
                    0.01,
                )
                .unwrap()
            });
        }
    }

    #[test]
    fn alol_invalid_inputs_are_errors() {
        for clip in [0.0, -0.1, 1.5, f32::NAN] {
            assert!(matches!(
                alol(AlolVariant::Alol, clip),
                Err(LossError::InvalidParameter {
                    parameter: "clip",
                    ..
                })
            ));
        }
        assert!(alol(AlolVariant::RefFree, 0.0).is_ok());
        assert!(matches!(
            alol(AlolVariant::Kl { beta: -1.0 }, 0.9),
            Err(LossError::InvalidParameter {
                parameter: "beta",
                ..
            })
        ));
        let d = test_device();
        let err = alol_loss(
            matrix(&P, [B, L], &d),
            matrix(&Q, [B, L], &d),
            matrix(&M, [B, L], &d),
            vector(&A[..2], &d),
            AlolVariant::Alol,
            0.9,
        );
        assert!(matches!(
            err,
            Err(LossError::ShapeMismatch {
                input: "advantages",
                ..
            })
        ));
    }

    fn samples(p: &[f32], q: &[f32], r: &[f32]) -> ScoredSamples {
        let d = test_device();
        ScoredSamples {
            policy: vector(p, &d),
            reference: vector(q, &d),
            reward: vector(r, &d),
        }
    }

    #[test]
    fn copg_matches_the_naive_implementation_and_generalises_ipo() {
        let (p1, q1, r1) = (
            [-10.0f32, -4.0, -7.0],
            [-11.0f32, -3.0, -7.5],
            [1.0f32, 0.2, -0.5],
        );
        let (p2, q2, r2) = (
            [-9.0f32, -6.0, -2.0],
            [-9.5f32, -5.0, -3.0],
            [0.3f32, 0.9, -0.5],
        );
        for beta in [0.01f32, 0.1, 1.0] {
            let l = copg_loss(samples(&p1, &q1, &r1), samples(&p2, &q2, &r2), beta).unwrap();
            let b = beta as f64;
            let expected = (0..3)
                .map(|i| {
                    let rb1 = r1[i] as f64 - b * (p1[i] as f64 - q1[i] as f64);
                    let rb2 = r2[i] as f64 - b * (p2[i] as f64 - q2[i] as f64);
                    (rb1 - rb2).powi(2)
                })
                .sum::<f64>()
                / 3.0;
            assert_close(scalar(l), expected as f32, 1e-5);
        }
        // R_w − R_l = 1/2: β² · (h − 1/(2β))², IPO.
        let beta = 0.25f32;
        let l = copg_loss(
            samples(&[-3.0], &[-4.0], &[0.5]),
            samples(&[-5.0], &[-4.5], &[0.0]),
            beta,
        )
        .unwrap();
        let h = 1.0 - (-0.5);
        assert_close(
            scalar(l),
            beta * beta * (h - 1.0 / (2.0 * beta)).powi(2),
            1e-6,
        );
    }

    #[test]
    fn copg_gradients_and_errors() {
        check_gradients(&[(&[-1.0, -0.4], [2]), (&[-0.2, -1.5], [2])], |t| {
            let d = t[0].device();
            copg_loss(
                ScoredSamples {
                    policy: t[0].clone(),
                    reference: vector(&[-1.1, -0.3], &d),
                    reward: vector(&[0.8, -0.2], &d),
                },
                ScoredSamples {
                    policy: t[1].clone(),
                    reference: vector(&[-0.5, -1.0], &d),
                    reward: vector(&[0.1, 0.4], &d),
                },
                0.5,
            )
            .unwrap()
        });
        let s = || samples(&[-1.0], &[-1.0], &[0.0]);
        assert!(matches!(
            copg_loss(s(), s(), 0.0),
            Err(LossError::InvalidParameter {
                parameter: "beta",
                ..
            })
        ));
        assert!(matches!(
            copg_loss(s(), samples(&[-1.0], &[-1.0, 0.0], &[0.0]), 0.1),
            Err(LossError::ShapeMismatch { .. })
        ));
    }
}
