//! P3O's pairwise policy loss (Wu et al. 2023, "Pairwise Proximal Policy Optimization:
//! Harnessing Relative Feedback for LLM Alignment") on burn tensors, differentiable in
//! `log_prob`.
//!
//! Two completions `y_i`, `y_j` of one prompt with (KL-shaped) sequence rewards `R_i`, `R_j`
//! enter only through their difference `Δ = R_i − R_j`: the pairwise policy gradient is
//! `½·Δ·(∇log π(y_i) − ∇log π(y_j))`, invariant to any per-prompt shift of the reward. P3O makes
//! it proximal with sequence-level importance ratios `ρ_k = π_θ(y_k)/π_old(y_k) =
//! exp(Σ_t m_t (ℓ_t − ℓ⁰_t))` (log clamped to ±20), clipped in one of two ways:
//!
//! - **joint** (the paper's P3O with joint clipping): the pair's ratio `ρ = ρ_i/ρ_j`,
//!   `L = ½·max(−Δ·ρ, −Δ·clip(ρ, 1 − ε, 1 + ε))`;
//! - **separate**: each response clipped like PPO with advantage `±Δ/2`,
//!   `L = ½·[max(−Δ·ρ_i, −Δ·clip(ρ_i, 1 ± ε)) + max(Δ·ρ_j, Δ·clip(ρ_j, 1 ± ε))]`.
//!
//! At `ρ = 1` both give the pairwise policy gradient above. The loss is the mean over pairs.

use rm_core::burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::AlgoError;
use super::aggregation::{masked, same_shape};
use super::error::invalid;

/// How P3O clips its importance ratios (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum P3oClip {
    /// One ratio per pair, `ρ_i/ρ_j`.
    #[default]
    Joint,
    /// One ratio per response.
    Separate,
}

/// [`p3o_loss`]'s loss and metrics.
#[derive(Clone, Debug)]
pub struct P3oOutput {
    /// The mean over pairs, shape `[1]`.
    pub loss: Tensor<1>,
    /// Pairs in the micro-batch (the weight of `loss` across micro-batches).
    pub pairs: f64,
    /// Share of the clipped units (pairs when joint, responses when separate) whose clipped
    /// surrogate is the larger loss.
    pub clipfrac: Tensor<1>,
    /// Mean `|log ρ|` of the clipped units (the pair's log-ratio when joint).
    pub log_ratio_abs: Tensor<1>,
}

/// `max(−a·r, −a·clip(r, 1 − ε, 1 + ε))` and whether the clipped term is the larger.
fn clipped_surrogate(a: Tensor<1>, r: Tensor<1>, eps: f64) -> (Tensor<1>, Tensor<1>) {
    let unclipped = a.clone().neg() * r.clone();
    let clipped = a.neg() * r.clamp(1.0 - eps, 1.0 + eps);
    let clip_active = clipped.clone().greater(unclipped.clone()).float();
    (unclipped.max_pair(clipped), clip_active)
}

/// P3O's loss for `P` pairs: rows `0..P` of the `[2P, T]` inputs are the `y_i`, rows `P..2P` the
/// `y_j` (row `P + p` pairs with row `p`); `delta[p] = R_i − R_j`. `old_log_prob` and `delta`
/// are constants. Off-mask entries are ignored.
pub fn p3o_loss(
    clip: P3oClip,
    clip_ratio: f64,
    old_log_prob: Tensor<2>,
    log_prob: Tensor<2>,
    mask: Tensor<2>,
    delta: Tensor<1>,
) -> Result<P3oOutput, AlgoError> {
    const WHAT: &str = "p3o_loss";
    if !(clip_ratio.is_finite() && clip_ratio > 0.0 && clip_ratio < 1.0) {
        return Err(invalid(WHAT, "clip_ratio", clip_ratio, "in (0, 1)"));
    }
    let [rows, width] = log_prob.dims();
    same_shape(WHAT, "old_log_prob", [rows, width], &old_log_prob)?;
    same_shape(WHAT, "mask", [rows, width], &mask)?;
    if rows % 2 != 0 || delta.dims() != [rows / 2] {
        return Err(AlgoError::ShapeMismatch {
            what: WHAT,
            array: "delta",
            expected: vec![rows / 2],
            actual: delta.dims().to_vec(),
        });
    }
    let pairs = rows / 2;
    let device = log_prob.device();
    if pairs == 0 {
        let zero = Tensor::<1>::zeros([1], &device);
        return Ok(P3oOutput {
            loss: zero.clone(),
            pairs: 0.0,
            clipfrac: zero.clone(),
            log_ratio_abs: zero,
        });
    }
    let seq: Tensor<1> = masked(log_prob - old_log_prob.detach(), &mask)
        .sum_dim(1)
        .reshape([rows])
        .clamp(-20.0, 20.0);
    let seq_i = seq.clone().narrow(0, 0, pairs);
    let seq_j = seq.narrow(0, pairs, pairs);
    let delta = delta.detach();
    let (per_pair, clip_active, log_ratio_abs) = match clip {
        P3oClip::Joint => {
            let log_ratio = (seq_i - seq_j).clamp(-20.0, 20.0);
            let (l, c) = clipped_surrogate(delta, log_ratio.clone().exp(), clip_ratio);
            (l, c, log_ratio.abs())
        }
        P3oClip::Separate => {
            let (li, ci) = clipped_surrogate(delta.clone(), seq_i.clone().exp(), clip_ratio);
            let (lj, cj) = clipped_surrogate(delta.neg(), seq_j.clone().exp(), clip_ratio);
            (
                li + lj,
                Tensor::cat(vec![ci, cj], 0),
                Tensor::cat(vec![seq_i.abs(), seq_j.abs()], 0),
            )
        }
    };
    Ok(P3oOutput {
        loss: per_pair.mean().mul_scalar(0.5),
        pairs: pairs as f64,
        clipfrac: clip_active.mean(),
        log_ratio_abs: log_ratio_abs.mean(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::online::algos::testing::{check_gradient, device, gradient, matrix, scalar};
    use rm_core::burn::tensor::{Device, TensorData};

    fn vector(v: &[f32], device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
    }

    /// One pair, two tokens; the second token of `y_j` is off the mask (with a garbage old
    /// log-prob). `Σ(ℓ − ℓ⁰)`: `y_i` 0.1 + 0.2 = 0.3, `y_j` −0.1; Δ = 2, ε = 0.2.
    fn pair(clip: P3oClip, log_prob: Tensor<2>) -> P3oOutput {
        let d = log_prob.device();
        p3o_loss(
            clip,
            0.2,
            matrix(&[vec![-1.1, -1.2], vec![-1.9, 5.0]], &d),
            log_prob,
            matrix(&[vec![1.0, 1.0], vec![1.0, 0.0]], &d),
            vector(&[2.0], &d),
        )
        .unwrap()
    }

    #[test]
    fn joint_and_separate_clipping_on_hand_worked_numbers() {
        let d = device();
        let log_prob = || matrix(&[vec![-1.0, -1.0], vec![-2.0, 0.0]], &d);
        // Joint: ρ = e^{0.3 + 0.1} = 1.4918 > 1.2, so the clipped −Δ·1.2 = −2.4 is the larger
        // loss: L = ½·(−2.4).
        let joint = pair(P3oClip::Joint, log_prob());
        assert!((scalar(joint.loss) + 1.2).abs() < 1e-5);
        assert_eq!(scalar(joint.clipfrac), 1.0);
        assert!((scalar(joint.log_ratio_abs) - 0.4).abs() < 1e-5);
        assert_eq!(joint.pairs, 1.0);
        // Separate: ρ_i = e^{0.3} clips to −2.4; ρ_j = e^{−0.1} = 0.9048 is inside the range,
        // Δ·ρ_j = 1.8097. L = ½·(−2.4 + 1.8097).
        let separate = pair(P3oClip::Separate, log_prob());
        let expected = 0.5 * (-2.4 + 2.0 * (-0.1f64).exp());
        assert!((scalar(separate.loss) - expected).abs() < 1e-5);
        assert_eq!(scalar(separate.clipfrac), 0.5);
    }

    #[test]
    fn at_the_old_policy_both_give_the_pairwise_policy_gradient() {
        // ℓ = ℓ⁰ on the mask: ρ = 1, so ∂L/∂ℓ_t = −Δ/2 on y_i's tokens and +Δ/2 on y_j's, 0 off
        // the mask (the garbage old log-prob there included).
        let at_old = [vec![-1.1, -1.2], vec![-1.9, 0.0]];
        for clip in [P3oClip::Joint, P3oClip::Separate] {
            let g = gradient(&at_old, &|x| pair(clip, x).loss);
            assert_eq!(g, [vec![-1.0, -1.0], vec![1.0, 0.0]], "{clip:?}");
        }
        // Inside the clip range the autodiff gradient matches finite differences; where the
        // joint ratio is clipped the gradient is 0.
        let near = [vec![-1.15, -1.2], vec![-1.9, 0.0]];
        for clip in [P3oClip::Joint, P3oClip::Separate] {
            check_gradient(&near, 2e-3, &|x| pair(clip, x).loss);
        }
        let clipped = gradient(&[vec![-1.0, -1.0], vec![-2.0, 0.0]], &|x| {
            pair(P3oClip::Joint, x).loss
        });
        assert_eq!(clipped, [vec![0.0, 0.0], vec![0.0, 0.0]]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let d = device();
        let two = || matrix(&[vec![0.0], vec![0.0]], &d);
        let err = p3o_loss(P3oClip::Joint, 1.5, two(), two(), two(), vector(&[1.0], &d));
        assert!(matches!(err, Err(AlgoError::InvalidParameter { .. })));
        let three = || matrix(&[vec![0.0], vec![0.0], vec![0.0]], &d);
        let err = p3o_loss(
            P3oClip::Joint,
            0.2,
            three(),
            three(),
            three(),
            vector(&[1.0], &d),
        );
        assert!(matches!(err, Err(AlgoError::ShapeMismatch { .. })));
        let err = p3o_loss(
            P3oClip::Joint,
            0.2,
            two(),
            two(),
            two(),
            vector(&[1.0, 2.0], &d),
        );
        assert!(matches!(err, Err(AlgoError::ShapeMismatch { .. })));
    }
}
