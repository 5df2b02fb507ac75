//! Tests of T-REG, RRPO and AlignDistil against naive scalar f64 implementations written here
//! from the formulas, plus extreme inputs, gradients and validation.

use super::*;
use crate::testing::{assert_close, check_gradients, matrix, scalar, tensor3, values};
use burn::tensor::Device;
use rm_core::device::test_device;

fn log_sig(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

fn log_softmax_row(z: &[f64]) -> Vec<f64> {
    let top = z.iter().cloned().fold(f64::MIN, f64::max);
    let lse = top + z.iter().map(|v| (v - top).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

const B: usize = 2;
const L: usize = 4;

/// Policy/reference per-token log-probs and masks of both sides; row-major `[B, L]`.
const PC: [f32; 8] = [-1.0, -0.5, -2.0, 9.0, -0.3, -1.2, -0.7, -0.9];
const QC: [f32; 8] = [-1.2, -0.4, -2.5, 9.0, -0.5, -1.0, -0.6, -1.3];
const MC: [f32; 8] = [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0];
const PR: [f32; 8] = [-2.0, -0.8, -1.5, -0.2, -3.0, -0.1, f32::NAN, 0.0];
const QR: [f32; 8] = [-1.5, -1.0, -1.0, -0.4, -2.0, -0.3, 0.0, 0.0];
const MR: [f32; 8] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
const WC: [f32; 8] = [0.5, -0.2, 1.0, 7.0, 0.3, 0.0, 0.8, -0.4];
const WR: [f32; 8] = [-0.6, 0.1, -1.0, -0.3, -0.9, 0.2, 5.0, 5.0];

fn side(p: &[f32], q: &[f32], m: &[f32], d: &Device) -> TokenLogps {
    TokenLogps::new(
        matrix(p, [B, L], d),
        matrix(q, [B, L], d),
        matrix(m, [B, L], d),
    )
}

fn on(m: &[f32], i: usize, t: usize) -> bool {
    m[i * L + t] != 0.0
}

/// `Σ_t m_t w_t Δ_t` for row `i`, in f64.
fn weighted_delta(p: &[f32], q: &[f32], m: &[f32], w: Option<&[f32]>, i: usize) -> f64 {
    (0..L)
        .filter(|&t| on(m, i, t))
        .map(|t| {
            let k = i * L + t;
            w.map_or(1.0, |w| w[k] as f64) * (p[k] as f64 - q[k] as f64)
        })
        .sum()
}

fn naive_treg(beta: f64, alpha: f64) -> f64 {
    (0..B)
        .map(|i| {
            let dc = weighted_delta(&PC, &QC, &MC, None, i);
            let dr = weighted_delta(&PR, &QR, &MR, None, i);
            let rc = weighted_delta(&PC, &QC, &MC, Some(&WC), i);
            let rr = weighted_delta(&PR, &QR, &MR, Some(&WR), i);
            -log_sig(beta * (dc - dr)) + alpha * (-log_sig(beta * rc) - log_sig(beta * rr))
        })
        .sum::<f64>()
        / B as f64
}

fn treg(beta: f32, alpha: f32) -> Result<Tensor<1>, LossError> {
    let d = test_device();
    treg_loss(
        side(&PC, &QC, &MC, &d),
        side(&PR, &QR, &MR, &d),
        matrix(&WC, [B, L], &d),
        matrix(&WR, [B, L], &d),
        beta,
        alpha,
    )
}

#[test]
fn treg_matches_the_naive_implementation() {
    for beta in [0.05f32, 0.5, 3.0] {
        for alpha in [0.0f32, 0.2, 1.0] {
            let l = scalar(treg(beta, alpha).unwrap());
            assert_close(l, naive_treg(beta as f64, alpha as f64) as f32, 1e-5);
        }
    }
}

#[test]
fn treg_large_log_ratios_stay_finite() {
    let d = test_device();
    let big = [-1e4, 0.0, 0.0, 0.0, 1e4, 0.0, 0.0, 0.0];
    let zeros = [0.0; 8];
    let ones = [1.0; 8];
    let l = scalar(
        treg_loss(
            side(&big, &zeros, &ones, &d),
            side(&zeros, &zeros, &ones, &d),
            matrix(&ones, [B, L], &d),
            matrix(&ones, [B, L], &d),
            1.0,
            1.0,
        )
        .unwrap(),
    );
    // Row 0: DPO −log σ(−1e4) = 1e4, reg 1e4 + ln 2; row 1: DPO ≈ 0, reg ≈ 0 + ln 2.
    assert!(l.is_finite());
    assert_close(l, (2e4 + 2.0 * 2f32.ln()) / 2.0, 1.0);
}

#[test]
fn treg_gradients_match_finite_differences() {
    let pr: Vec<f32> = PR
        .iter()
        .map(|v| if v.is_nan() { 0.0 } else { *v })
        .collect();
    check_gradients(&[(&PC, [B, L]), (&pr, [B, L])], |t| {
        let d = t[0].device();
        treg_loss(
            TokenLogps::new(
                t[0].clone(),
                matrix(&QC, [B, L], &d),
                matrix(&MC, [B, L], &d),
            ),
            TokenLogps::new(
                t[1].clone(),
                matrix(&QR, [B, L], &d),
                matrix(&MR, [B, L], &d),
            ),
            matrix(&WC, [B, L], &d),
            matrix(&WR, [B, L], &d),
            0.8,
            0.5,
        )
        .unwrap()
    });
}

#[test]
fn treg_invalid_inputs_are_errors() {
    for beta in [0.0, -1.0, f32::NAN] {
        assert!(matches!(
            treg(beta, 0.1),
            Err(LossError::InvalidParameter {
                parameter: "beta",
                ..
            })
        ));
    }
    for alpha in [-0.5, f32::INFINITY] {
        assert!(matches!(
            treg(0.1, alpha),
            Err(LossError::InvalidParameter {
                parameter: "alpha",
                ..
            })
        ));
    }
    let d = test_device();
    let err = treg_loss(
        side(&PC, &QC, &MC, &d),
        side(&PR, &QR, &MR, &d),
        matrix(&WC[..4], [1, 4], &d),
        matrix(&WR, [B, L], &d),
        0.1,
        0.1,
    );
    assert!(matches!(
        err,
        Err(LossError::ShapeMismatch {
            input: "chosen_token_rewards",
            ..
        })
    ));
    let empty = || {
        TokenLogps::new(
            Tensor::zeros([0, 3], &d),
            Tensor::zeros([0, 3], &d),
            Tensor::zeros([0, 3], &d),
        )
    };
    assert!(matches!(
        treg_loss(
            empty(),
            empty(),
            Tensor::zeros([0, 3], &d),
            Tensor::zeros([0, 3], &d),
            0.1,
            0.1
        ),
        Err(LossError::EmptyBatch { .. })
    ));
}

// RRPO: V = 3; segments 1..=2.
const V: usize = 3;
const SC: [f32; 8] = [1.0, 1.0, 0.0, 2.0, 0.0, 1.0, 2.0, 2.0];
const SR: [f32; 8] = [0.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 0.0];

fn logits(seed: f32) -> Vec<f32> {
    (0..B * L * V)
        .map(|i| (i as f32 * 0.37 + seed).sin() * 2.0)
        .collect()
}

fn naive_rrpo(beta: f64, alpha: f64, zp: &[f32], zq: &[f32]) -> (f64, Vec<f64>) {
    let mut total = 0.0;
    let mut chosen_rewards = Vec::new();
    for i in 0..B {
        let mut margin = 0.0;
        for k in 1..=2 {
            let seg = |p: &[f32], q: &[f32], m: &[f32], s: &[f32]| -> f64 {
                (0..L)
                    .filter(|&t| on(m, i, t) && s[i * L + t] == k as f32)
                    .map(|t| p[i * L + t] as f64 - q[i * L + t] as f64)
                    .sum()
            };
            let uc = seg(&PC, &QC, &MC, &SC);
            let ur = seg(&PR, &QR, &MR, &SR);
            chosen_rewards.push(beta * uc);
            margin += uc - ur;
        }
        let mut kl = 0.0;
        for t in (0..L).filter(|&t| on(&MC, i, t)) {
            let at = |z: &[f32]| -> Vec<f64> {
                (0..V)
                    .map(|v| z[(i * L + t) * V + v] as f64)
                    .collect::<Vec<_>>()
            };
            let lp = log_softmax_row(&at(zp));
            let lq = log_softmax_row(&at(zq));
            kl += (0..V).map(|v| lq[v].exp() * (lq[v] - lp[v])).sum::<f64>();
        }
        total += -log_sig(beta * margin) + alpha * kl;
    }
    (total / B as f64, chosen_rewards)
}

fn rrpo_batch(d: &Device, zp: &[f32], zq: &[f32]) -> RrpoBatch {
    RrpoBatch {
        chosen: side(&PC, &QC, &MC, d),
        rejected: side(&PR, &QR, &MR, d),
        chosen_segments: matrix(&SC, [B, L], d),
        rejected_segments: matrix(&SR, [B, L], d),
        policy_chosen_logits: tensor3(zp, [B, L, V], d),
        reference_chosen_logits: tensor3(zq, [B, L, V], d),
    }
}

#[test]
fn rrpo_matches_the_naive_implementation() {
    let d = test_device();
    let (zp, zq) = (logits(0.1), logits(1.3));
    for beta in [0.1f32, 0.5, 2.0] {
        for alpha in [0.0f32, 0.05, 1.0] {
            let out = rrpo_loss(rrpo_batch(&d, &zp, &zq), 2, beta, alpha).unwrap();
            let (expected, rewards) = naive_rrpo(beta as f64, alpha as f64, &zp, &zq);
            assert_close(scalar(out.loss), expected as f32, 1e-5);
            for (got, want) in values(out.chosen_rewards).iter().zip(rewards) {
                assert_close(*got, want as f32, 1e-5);
            }
        }
    }
}

#[test]
fn rrpo_large_margins_stay_finite_and_inputs_are_checked() {
    let d = test_device();
    let (zp, zq) = (logits(0.1), logits(1.3));
    let mut batch = rrpo_batch(&d, &zp, &zq);
    batch.chosen.policy = batch.chosen.policy.add_scalar(-1e4);
    let l = scalar(rrpo_loss(batch, 2, 1.0, 0.0).unwrap().loss);
    assert!(l.is_finite() && l > 1e3);
    assert!(matches!(
        rrpo_loss(rrpo_batch(&d, &zp, &zq), 0, 1.0, 0.0),
        Err(LossError::InvalidParameter {
            parameter: "num_segments",
            ..
        })
    ));
    assert!(rrpo_loss(rrpo_batch(&d, &zp, &zq), 2, 0.0, 0.0).is_err());
    assert!(rrpo_loss(rrpo_batch(&d, &zp, &zq), 2, 0.1, -1.0).is_err());
    let mut bad = rrpo_batch(&d, &zp, &zq);
    bad.reference_chosen_logits = tensor3(&zq[..B * L * 2], [B, L, 2], &d);
    assert!(matches!(
        rrpo_loss(bad, 2, 0.1, 0.1),
        Err(LossError::ShapeMismatch {
            input: "reference_chosen_logits",
            ..
        })
    ));
}

#[test]
fn rrpo_gradients_match_finite_differences() {
    let (zp, zq) = (logits(0.1), logits(1.3));
    check_gradients(&[(&zp, [B, L, V])], |t| {
        let d = t[0].device();
        let mut batch = rrpo_batch(&d, &zp, &zq);
        batch.policy_chosen_logits = t[0].clone();
        rrpo_loss(batch, 2, 0.5, 0.3).unwrap().loss
    });
}

/// AlignDistil on the host, token by token.
fn naive_aligndistil(zs: &[f32], zd: &[f32], zr: &[f32], m: &[f32], p: AlignDistilParams) -> f64 {
    let mut total = 0.0;
    for i in 0..B {
        let mut seq = 0.0;
        let mut n = 0.0;
        for t in (0..L).filter(|&t| on(m, i, t)) {
            let at =
                |z: &[f32]| -> Vec<f64> { (0..V).map(|v| z[(i * L + t) * V + v] as f64).collect() };
            let (s, d, r) = (at(zs), at(zd), at(zr));
            let (ld, lr) = (log_softmax_row(&d), log_softmax_row(&r));
            let tv: f64 = (0..V).map(|v| (ld[v].exp() - lr[v].exp()).abs()).sum();
            let w = p.extrapolation as f64 * tv + 1e-3;
            let teacher: Vec<f64> = (0..V)
                .map(|v| (d[v] + w * (d[v] - r[v])) / p.temperature as f64)
                .collect();
            let lt = log_softmax_row(&teacher);
            let ls = log_softmax_row(&s);
            let kl: f64 = (0..V).map(|v| ls[v].exp() * (ls[v] - lt[v])).sum();
            seq += p.beta as f64 / w * kl;
            n += 1.0;
        }
        total += if p.length_normalize { seq / n } else { seq };
    }
    total / B as f64
}

fn aligndistil(p: AlignDistilParams, zs: &[f32]) -> Result<Tensor<1>, LossError> {
    let d = test_device();
    aligndistil_loss(
        tensor3(zs, [B, L, V], &d),
        tensor3(&logits(0.7), [B, L, V], &d),
        tensor3(&logits(2.9), [B, L, V], &d),
        matrix(&MC, [B, L], &d),
        p,
    )
}

#[test]
fn aligndistil_matches_the_naive_implementation() {
    let zs = logits(0.1);
    for beta in [0.05f32, 0.1, 1.0] {
        for extrapolation in [0.0f32, 1.0, 5.0] {
            for (temperature, length_normalize) in [(1.0f32, false), (0.7, true)] {
                let p = AlignDistilParams {
                    beta,
                    extrapolation,
                    temperature,
                    length_normalize,
                };
                let l = scalar(aligndistil(p, &zs).unwrap());
                let expected = naive_aligndistil(&zs, &logits(0.7), &logits(2.9), &MC, p) as f32;
                assert_close(l, expected, 1e-4 * expected.abs().max(1.0));
            }
        }
    }
}

#[test]
fn aligndistil_extreme_logits_stay_finite() {
    let zs: Vec<f32> = logits(0.1).iter().map(|v| v * 1e3).collect();
    let l = scalar(aligndistil(AlignDistilParams::default(), &zs).unwrap());
    assert!(l.is_finite() && l > 0.0);
}

#[test]
fn aligndistil_gradients_match_finite_differences() {
    let zs = logits(0.1);
    let p = AlignDistilParams {
        beta: 0.1,
        extrapolation: 2.0,
        temperature: 1.0,
        length_normalize: true,
    };
    check_gradients(&[(&zs, [B, L, V])], |t| {
        let d = t[0].device();
        aligndistil_loss(
            t[0].clone(),
            tensor3(&logits(0.7), [B, L, V], &d),
            tensor3(&logits(2.9), [B, L, V], &d),
            matrix(&MC, [B, L], &d),
            p,
        )
        .unwrap()
    });
}

#[test]
fn aligndistil_invalid_inputs_are_errors() {
    let zs = logits(0.1);
    let with = |f: fn(&mut AlignDistilParams)| {
        let mut p = AlignDistilParams::default();
        f(&mut p);
        aligndistil(p, &zs)
    };
    assert!(matches!(
        with(|p| p.beta = 0.0),
        Err(LossError::InvalidParameter {
            parameter: "beta",
            ..
        })
    ));
    assert!(matches!(
        with(|p| p.extrapolation = -1.0),
        Err(LossError::InvalidParameter {
            parameter: "extrapolation",
            ..
        })
    ));
    assert!(matches!(
        with(|p| p.temperature = f32::NAN),
        Err(LossError::InvalidParameter {
            parameter: "temperature",
            ..
        })
    ));
    let d = test_device();
    let err = aligndistil_loss(
        tensor3(&zs, [B, L, V], &d),
        tensor3(&zs[..B * L * 2], [B, L, 2], &d),
        tensor3(&zs, [B, L, V], &d),
        matrix(&MC, [B, L], &d),
        AlignDistilParams::default(),
    );
    assert!(matches!(
        err,
        Err(LossError::ShapeMismatch {
            input: "dpo_logits",
            ..
        })
    ));
}
