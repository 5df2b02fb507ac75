//! Tests of [`super::dpo_loss`] against a naive scalar f64 implementation of TRL's pipeline
//! written here from the formulas (not calling the library), plus extreme inputs, gradients,
//! hyper-parameter validation, serde and the TR-DPO refresh.

use super::*;
use crate::testing::{assert_close, check_gradients, matrix, scalar, values, vector};
use burn::tensor::{Device, TensorData};
use rm_core::device::test_device;

/// A batch of `B = 3` pairs, `T = 8`, rows `[chosen…, rejected…]`, in f64.
struct Case {
    policy: Vec<Vec<f64>>,
    reference: Vec<Vec<f64>>,
    mask: Vec<Vec<f64>>,
    lssp: Vec<Vec<f64>>,
}

const T: usize = 8;

/// Completion masks `[2B, T]`: a prompt, then the completion, then padding; lengths differ
/// within each pair (chosen 3, 5, 1; rejected 4, 2, 6) so LD-DPO has a tail on both sides.
const MASK: [[f64; T]; 6] = [
    [0., 0., 1., 1., 1., 0., 0., 0.],
    [0., 1., 1., 1., 1., 1., 0., 0.],
    [0., 0., 0., 1., 0., 0., 0., 0.],
    [0., 0., 1., 1., 1., 1., 0., 0.],
    [0., 1., 1., 0., 0., 0., 0., 0.],
    [0., 0., 1., 1., 1., 1., 1., 1.],
];

/// A deterministic pseudo-random stream in `[0, 1)`.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Case {
    /// Log-probs in `[−scale, 0)` on the shifted mask, 0 off it.
    fn new(seed: u64, scale: f64) -> Self {
        let mut rng = Lcg(seed);
        let mut draw = |on: f64| {
            if on != 0.0 {
                -scale * (0.05 + rng.next())
            } else {
                0.0
            }
        };
        let mut policy = Vec::new();
        let mut reference = Vec::new();
        let mut lssp = Vec::new();
        for row in MASK {
            let shifted = &row[1..];
            policy.push(shifted.iter().map(|&m| draw(m)).collect());
            reference.push(shifted.iter().map(|&m| draw(m)).collect());
            lssp.push(shifted.iter().map(|&m| draw(m) * 0.5).collect());
        }
        Case {
            policy,
            reference,
            mask: MASK.iter().map(|r| r.to_vec()).collect(),
            lssp,
        }
    }

    fn batch(&self, device: &Device) -> DpoBatch {
        let m = |rows: &[Vec<f64>]| {
            let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
            matrix(&flat, [rows.len(), rows[0].len()], device)
        };
        DpoBatch::new(m(&self.policy), m(&self.reference), m(&self.mask))
            .with_log_sum_sq_probs(m(&self.lssp))
    }
}

/// `log σ(x)`, stable in f64.
fn log_sig(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// TRL's `_compute_loss`, scalar by scalar, in f64.
fn naive(cfg: &DpoConfig, case: &Case) -> f64 {
    let rows = case.policy.len();
    let b = rows / 2;
    let shift = |i: usize, t: usize| case.mask[i][t + 1];
    let len_shift: Vec<f64> = (0..rows)
        .map(|i| (0..T - 1).map(|t| shift(i, t)).sum())
        .collect();
    let token =
        |v: &Vec<Vec<f64>>, i: usize, t: usize| if shift(i, t) != 0.0 { v[i][t] } else { 0.0 };
    let sequence = |v: &Vec<Vec<f64>>, i: usize| -> f64 {
        let partner = if i < b { i + b } else { i - b };
        let shared = len_shift[i].min(len_shift[partner]);
        let mut pos = 0.0;
        let mut sum = 0.0;
        for t in 0..T - 1 {
            pos += shift(i, t);
            let w = match cfg.ld_alpha {
                Some(a) if pos > shared => a as f64,
                _ => 1.0,
            };
            sum += w * token(v, i, t);
        }
        sum
    };
    let beta = cfg.beta as f64;
    let eps = cfg.label_smoothing as f64;
    let tau = cfg.discopop_tau as f64;
    let alpha = cfg.f_alpha_divergence_coef as f64;
    let p: Vec<f64> = (0..rows).map(|i| sequence(&case.policy, i)).collect();
    let q: Vec<f64> = (0..rows).map(|i| sequence(&case.reference, i)).collect();
    let delta: Vec<f64> = (0..rows).map(|i| p[i] - q[i]).collect();
    let f = |d: f64| match cfg.f_divergence_type {
        FDivergence::ReverseKl => d,
        FDivergence::ForwardKl => -(-d).exp(),
        FDivergence::JsDivergence => log_sig(d),
        FDivergence::AlphaDivergence => {
            if (alpha - 1.0).abs() < 1e-6 {
                d
            } else {
                ((alpha - 1.0) * d).min(80.0).exp() / (alpha - 1.0)
            }
        }
    };
    let s: Vec<f64> = delta.iter().map(|&d| f(d)).collect();
    let n: Vec<f64> = case
        .mask
        .iter()
        .map(|r| r.iter().sum::<f64>().max(1.0))
        .collect();
    let chosen_tokens: f64 = (0..b).map(|i| len_shift[i]).sum();
    let sft = -(0..b)
        .map(|i| (0..T - 1).map(|t| token(&case.policy, i, t)).sum::<f64>())
        .sum::<f64>()
        / chosen_tokens.max(1.0);
    let weight = |i: usize| {
        let aligned: f64 = (0..T - 1)
            .map(|t| shift(i, t) * (token(&case.policy, i, t) - case.lssp[i][t]))
            .sum();
        (aligned / len_shift[i].max(1.0)).exp()
    };
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    };
    let smooth = |d: f64| -(1.0 - eps) * log_sig(d) - eps * log_sig(-d);
    let aot_policy = sorted((0..b).map(|i| p[i] - p[i + b]).collect());
    let aot_ref = sorted((0..b).map(|i| q[i] - q[i + b]).collect());
    let aot_c = sorted(delta[..b].to_vec());
    let aot_r = sorted(delta[b..].to_vec());

    let mut total = 0.0;
    for (&kind, w) in cfg.loss_type.iter().zip(cfg.weights()) {
        let mut mean = 0.0;
        for i in 0..b {
            let (sc, sr) = (s[i], s[i + b]);
            let (dc, dr) = (delta[i], delta[i + b]);
            let x = beta * (sc - sr);
            let norm = sc / n[i] - sr / n[i + b];
            let loss = match kind {
                DpoLossType::Sigmoid => -log_sig(x),
                DpoLossType::Hinge => (1.0 - x).max(0.0),
                DpoLossType::Ipo => (norm - 1.0 / (2.0 * beta)).powi(2),
                DpoLossType::ExoPair => {
                    sig(x) * (log_sig(x) - (1.0 - eps).ln()) + sig(-x) * (log_sig(-x) - eps.ln())
                }
                DpoLossType::NcaPair => {
                    -log_sig(beta * sc) - 0.5 * log_sig(-beta * sc) - 0.5 * log_sig(-beta * sr)
                }
                DpoLossType::Robust => {
                    (-(1.0 - eps) * log_sig(x) + eps * log_sig(-x)) / (1.0 - 2.0 * eps)
                }
                DpoLossType::BcoPair => -log_sig(beta * sc) - log_sig(-beta * sr),
                DpoLossType::SppoHard => (sc - 0.5 / beta).powi(2) + (sr + 0.5 / beta).powi(2),
                DpoLossType::Aot => smooth(beta * (aot_policy[i] - aot_ref[i])),
                DpoLossType::AotUnpaired => smooth(beta * (aot_c[i] - aot_r[i])),
                DpoLossType::ApoZero => 1.0 - sig(beta * dc) + sig(beta * dr),
                DpoLossType::ApoDown => sig(beta * dc) + 1.0 - sig(x),
                DpoLossType::Discopop => {
                    let m = sig(x / tau);
                    -log_sig(x) * (1.0 - m) + (-x).exp() * m
                }
                DpoLossType::Sft => sft,
                DpoLossType::SigmoidNorm => -log_sig(beta * norm),
            };
            let omega = if cfg.use_weighting {
                weight(i) * weight(i + b)
            } else {
                1.0
            };
            mean += loss * omega / b as f64;
        }
        total += w as f64 * mean;
    }
    total
}

fn close(actual: f32, expected: f64, what: &str) {
    let tol = 2e-5 * expected.abs().max(1.0);
    assert!(
        (actual as f64 - expected).abs() <= tol,
        "{what}: got {actual}, naive f64 {expected}"
    );
}

fn config(loss_type: DpoLossType, beta: f32, eps: f32) -> DpoConfig {
    DpoConfig {
        label_smoothing: eps,
        ..DpoConfig::new(loss_type, beta)
    }
}

#[test]
fn every_loss_type_matches_the_naive_implementation() {
    let d = test_device();
    for (seed, scale) in [(1, 0.5), (7, 3.0)] {
        let case = Case::new(seed, scale);
        for kind in DpoLossType::ALL {
            for beta in [0.1, 0.5, 2.0] {
                for eps in [0.0, 0.1, 0.3] {
                    let cfg = config(kind, beta, eps);
                    if cfg.validate().is_err() {
                        continue; // exo_pair at ε = 0
                    }
                    let out = dpo_loss(&cfg, case.batch(&d)).unwrap();
                    let what = format!("{} β={beta} ε={eps} seed {seed}", kind.name());
                    close(scalar(out.loss), naive(&cfg, &case), &what);
                }
            }
        }
    }
}

#[test]
fn divergences_ld_dpo_wpo_and_combinations_match_the_naive_implementation() {
    let d = test_device();
    let case = Case::new(3, 1.0);
    let mut configs = Vec::new();
    for f in [
        FDivergence::ForwardKl,
        FDivergence::JsDivergence,
        FDivergence::AlphaDivergence,
    ] {
        for kind in [
            DpoLossType::Sigmoid,
            DpoLossType::Ipo,
            DpoLossType::NcaPair,
            DpoLossType::SppoHard,
        ] {
            for coef in [0.3, 1.0, 2.5] {
                configs.push(DpoConfig {
                    f_divergence_type: f,
                    f_alpha_divergence_coef: coef,
                    ..DpoConfig::new(kind, 0.3)
                });
            }
        }
    }
    for ld in [0.0, 0.3, 1.0] {
        for kind in [DpoLossType::Sigmoid, DpoLossType::Aot, DpoLossType::Sft] {
            configs.push(DpoConfig {
                ld_alpha: Some(ld),
                label_smoothing: 0.1,
                ..DpoConfig::new(kind, 0.2)
            });
        }
    }
    for kind in [DpoLossType::Sigmoid, DpoLossType::Ipo, DpoLossType::Hinge] {
        configs.push(DpoConfig {
            use_weighting: true,
            ld_alpha: Some(0.5),
            ..DpoConfig::new(kind, 0.5)
        });
    }
    configs.push(DpoConfig {
        loss_type: vec![DpoLossType::Sigmoid, DpoLossType::BcoPair, DpoLossType::Sft],
        loss_weights: Some(vec![0.8, 0.2, 1.0]),
        ..DpoConfig::default()
    });
    for cfg in configs {
        let out = dpo_loss(&cfg, case.batch(&d)).unwrap();
        close(scalar(out.loss), naive(&cfg, &case), &format!("{cfg:?}"));
    }
}

#[test]
fn rewards_are_beta_times_log_ratios_per_pair() {
    let d = test_device();
    let case = Case::new(5, 1.0);
    let cfg = DpoConfig::new(DpoLossType::Sigmoid, 0.25);
    let out = dpo_loss(&cfg, case.batch(&d)).unwrap();
    let logratio = |i: usize| -> f64 {
        (0..T - 1)
            .filter(|&t| MASK[i][t + 1] != 0.0)
            .map(|t| case.policy[i][t] - case.reference[i][t])
            .sum()
    };
    let chosen = values(out.chosen_rewards);
    let rejected = values(out.rejected_rewards);
    assert_eq!((chosen.len(), rejected.len()), (3, 3));
    for i in 0..3 {
        close(chosen[i], 0.25 * logratio(i), "chosen reward");
        close(rejected[i], 0.25 * logratio(i + 3), "rejected reward");
    }
}

/// One pair whose single completion token has log-ratio `Δc` (chosen) and `Δr` (rejected).
fn one_token_pair(dc: f32, dr: f32, d: &Device) -> DpoBatch {
    let policy = matrix(&[dc - 1.0, dr - 1.0], [2, 1], d);
    let reference = matrix(&[-1.0, -1.0], [2, 1], d);
    let mask = matrix(&[0.0, 1.0, 0.0, 1.0], [2, 2], d);
    DpoBatch::new(policy, reference, mask)
}

#[test]
fn large_log_ratios_stay_finite() {
    let d = test_device();
    // β·Δ = ±1000: a naive log σ(x) = −log(1 + e^{−x}) overflows to −∞ (even in f64).
    let naive_log_sigmoid = |x: f64| -(1.0 + (-x).exp()).ln();
    assert!(naive_log_sigmoid(-1000.0).is_infinite());
    for (dc, dr) in [
        (1000.0, -1000.0),
        (-1000.0, 1000.0),
        (1000.0, 0.0),
        (0.0, 1000.0),
    ] {
        for kind in DpoLossType::ALL {
            let cfg = config(kind, 1.0, 0.1);
            let out = dpo_loss(&cfg, one_token_pair(dc, dr, &d)).unwrap();
            let loss = scalar(out.loss);
            assert!(
                loss.is_finite(),
                "{} at Δc={dc}, Δr={dr}: {loss}",
                kind.name()
            );
        }
    }
    // The wrong way round by 2000: −log σ(−2000) = 2000, DiscoPOP's logistic side likewise.
    let wrong = |kind| {
        scalar(
            dpo_loss(&config(kind, 1.0, 0.1), one_token_pair(-1000.0, 1000.0, &d))
                .unwrap()
                .loss,
        )
    };
    assert_close(wrong(DpoLossType::Sigmoid), 2000.0, 1e-3);
    assert_close(wrong(DpoLossType::Discopop), 2000.0, 1e-3);
    assert_close(wrong(DpoLossType::Robust), 0.9 * 2000.0 / 0.8, 1e-2);
    assert_close(wrong(DpoLossType::Hinge), 2001.0, 1e-3);
    // Right way round: the logistic losses vanish.
    let right = |kind| {
        scalar(
            dpo_loss(&config(kind, 1.0, 0.1), one_token_pair(1000.0, -1000.0, &d))
                .unwrap()
                .loss,
        )
    };
    assert_close(right(DpoLossType::Sigmoid), 0.0, 1e-6);
    assert_close(right(DpoLossType::Discopop), 0.0, 1e-6);
    assert_close(right(DpoLossType::BcoPair), 0.0, 1e-6);
    assert_close(right(DpoLossType::ApoZero), 0.0, 1e-6);
    assert_close(right(DpoLossType::ExoPair), -(0.9f32.ln()), 1e-5);
}

#[test]
fn the_alpha_divergence_is_clamped_like_trl() {
    let d = test_device();
    // (α − 1)·Δ = 2·100 = 200 > 80: both scores saturate at e^80/2, the margin is 0 → ln 2.
    let cfg = DpoConfig {
        f_divergence_type: FDivergence::AlphaDivergence,
        f_alpha_divergence_coef: 3.0,
        ..DpoConfig::new(DpoLossType::Sigmoid, 0.1)
    };
    let loss = scalar(
        dpo_loss(&cfg, one_token_pair(100.0, 90.0, &d))
            .unwrap()
            .loss,
    );
    assert_close(loss, std::f32::consts::LN_2, 1e-6);
}

#[test]
fn halves_stack_into_the_concatenated_batch() {
    let d = test_device();
    let case = Case::new(9, 1.0);
    let full = case.batch(&d);
    let half = |start: usize| DpoBatch {
        policy_logps: full.policy_logps.clone().narrow(0, start, 3),
        ref_logps: full.ref_logps.clone().narrow(0, start, 3),
        completion_mask: full.completion_mask.clone().narrow(0, start, 3),
        log_sum_sq_probs: full.log_sum_sq_probs.clone().map(|t| t.narrow(0, start, 3)),
    };
    let stacked = DpoBatch::from_halves(half(0), half(3)).unwrap();
    let cfg = DpoConfig {
        use_weighting: true,
        ..DpoConfig::new(DpoLossType::Ipo, 0.3)
    };
    let a = scalar(dpo_loss(&cfg, stacked).unwrap().loss);
    let b = scalar(dpo_loss(&cfg, full.clone()).unwrap().loss);
    assert_eq!(a, b);
    let mut lopsided = half(3);
    lopsided.log_sum_sq_probs = None;
    assert!(matches!(
        DpoBatch::from_halves(half(0), lopsided),
        Err(LossError::MissingInput { .. })
    ));
    let short = DpoBatch::new(
        matrix(&[0.0; 7], [1, 7], &d),
        matrix(&[0.0; 7], [1, 7], &d),
        matrix(&[0.0; 8], [1, 8], &d),
    );
    assert!(matches!(
        DpoBatch::from_halves(
            DpoBatch {
                log_sum_sq_probs: None,
                ..half(0)
            },
            short
        ),
        Err(LossError::ShapeMismatch { .. })
    ));
}

#[test]
fn off_mask_tokens_are_ignored_even_when_not_finite() {
    let d = test_device();
    let clean = one_token_pair(0.5, -0.2, &d);
    let mut dirty = clean.clone();
    // Put −∞ and NaN in position 0 of a wider batch, off the shifted mask.
    let pad = |t: Tensor<2>, v: f32| Tensor::cat(vec![matrix(&[v, v], [2, 1], &d), t], 1);
    dirty.policy_logps = pad(dirty.policy_logps, f32::NEG_INFINITY);
    dirty.ref_logps = pad(dirty.ref_logps, f32::NAN);
    dirty.completion_mask = pad(dirty.completion_mask, 0.0);
    for kind in DpoLossType::ALL {
        let cfg = config(kind, 0.5, 0.1);
        let a = scalar(dpo_loss(&cfg, clean.clone()).unwrap().loss);
        let b = scalar(dpo_loss(&cfg, dirty.clone()).unwrap().loss);
        assert_close(b, a, 1e-6);
    }
}

/// The `[6, 7]` policy log-probs of [`Case`] as f32, for the gradient checks.
fn policy_values(case: &Case) -> Vec<f32> {
    case.policy.iter().flatten().map(|&v| v as f32).collect()
}

#[test]
fn gradients_match_finite_differences() {
    let case = Case::new(11, 1.0);
    let policy = policy_values(&case);
    let constants = |device: &Device| {
        let b = case.batch(device);
        (b.ref_logps, b.completion_mask, b.log_sum_sq_probs.unwrap())
    };
    let mut configs: Vec<DpoConfig> = DpoLossType::ALL
        .into_iter()
        .map(|kind| config(kind, 0.5, 0.1))
        .collect();
    configs.push(DpoConfig {
        f_divergence_type: FDivergence::JsDivergence,
        ld_alpha: Some(0.4),
        ..DpoConfig::new(DpoLossType::Sigmoid, 0.5)
    });
    configs.push(DpoConfig {
        f_divergence_type: FDivergence::AlphaDivergence,
        use_weighting: true,
        ..DpoConfig::new(DpoLossType::NcaPair, 0.5)
    });
    configs.push(DpoConfig {
        f_divergence_type: FDivergence::ForwardKl,
        loss_type: vec![DpoLossType::Sigmoid, DpoLossType::Sft],
        loss_weights: Some(vec![1.0, 0.5]),
        ..DpoConfig::default()
    });
    for cfg in configs {
        check_gradients(&[(&policy, [6, T - 1])], |t| {
            let (reference, mask, lssp) = constants(&t[0].device());
            // The WPO weight is a detached function of `policy − log_sum_sq_probs`; a finite
            // difference on the policy alone would move it. Shifting `log_sum_sq_probs` with the
            // policy keeps the weight at its base value on both sides, as autodiff sees it.
            let lssp = if cfg.use_weighting {
                let base = Tensor::<2>::from_data(
                    TensorData::new(policy.clone(), [6, T - 1]),
                    &t[0].device(),
                );
                t[0].clone() - (base - lssp)
            } else {
                lssp
            };
            let batch = DpoBatch::new(t[0].clone(), reference, mask).with_log_sum_sq_probs(lssp);
            dpo_loss(&cfg, batch).unwrap().loss
        });
    }
}

#[test]
fn no_gradient_reaches_the_reference_or_the_wpo_weights() {
    let d = test_device().autodiff();
    let case = Case::new(2, 1.0);
    let b = case.batch(&d);
    let reference = b.ref_logps.require_grad();
    let lssp = b.log_sum_sq_probs.unwrap().require_grad();
    let policy = b.policy_logps.require_grad();
    let cfg = DpoConfig {
        use_weighting: true,
        ..DpoConfig::default()
    };
    let batch = DpoBatch::new(policy.clone(), reference.clone(), b.completion_mask)
        .with_log_sum_sq_probs(lssp.clone());
    let grads = dpo_loss(&cfg, batch).unwrap().loss.backward();
    assert!(policy.grad(&grads).is_some());
    for (name, t) in [("reference", reference), ("log_sum_sq_probs", lssp)] {
        let g = t.grad(&grads).map(values).unwrap_or_default();
        assert!(g.iter().all(|&v| v == 0.0), "{name} got a gradient {g:?}");
    }
}

fn invalid_parameter(cfg: DpoConfig) -> &'static str {
    match cfg.validate() {
        Err(LossError::InvalidParameter { parameter, .. }) => parameter,
        other => panic!("{cfg:?}: expected InvalidParameter, got {other:?}"),
    }
}

#[test]
fn invalid_hyper_parameters_are_clear_errors() {
    let with = |f: fn(&mut DpoConfig)| {
        let mut c = DpoConfig::default();
        f(&mut c);
        c
    };
    let cases: Vec<(DpoConfig, &str)> = vec![
        (with(|c| c.beta = 0.0), "beta"),
        (with(|c| c.beta = -0.1), "beta"),
        (with(|c| c.beta = f32::NAN), "beta"),
        (with(|c| c.loss_type.clear()), "loss_type"),
        (
            with(|c| c.loss_weights = Some(vec![1.0, 2.0])),
            "loss_weights",
        ),
        (
            with(|c| c.loss_weights = Some(vec![f32::INFINITY])),
            "loss_weights",
        ),
        (config(DpoLossType::Robust, 0.1, 0.5), "label_smoothing"),
        (config(DpoLossType::Robust, 0.1, 0.7), "label_smoothing"),
        (config(DpoLossType::ExoPair, 0.1, 0.0), "label_smoothing"),
        (config(DpoLossType::Aot, 0.1, 1.0), "label_smoothing"),
        (config(DpoLossType::Sigmoid, 0.1, -0.1), "label_smoothing"),
        (with(|c| c.ld_alpha = Some(1.5)), "ld_alpha"),
        (with(|c| c.ld_alpha = Some(-0.1)), "ld_alpha"),
        (with(|c| c.ld_alpha = Some(f32::NAN)), "ld_alpha"),
        (with(|c| c.discopop_tau = 0.0), "discopop_tau"),
        (
            with(|c| c.f_alpha_divergence_coef = f32::INFINITY),
            "f_alpha_divergence_coef",
        ),
        (
            with(|c| {
                c.loss_type = vec![DpoLossType::AotUnpaired];
                c.use_weighting = true;
            }),
            "use_weighting",
        ),
        (
            with(|c| c.ref_model_mixup_alpha = 1.2),
            "ref_model_mixup_alpha",
        ),
        (with(|c| c.ref_model_sync_steps = 0), "ref_model_sync_steps"),
    ];
    for (cfg, parameter) in cases {
        assert_eq!(invalid_parameter(cfg.clone()), parameter, "{cfg:?}");
        // The loss refuses it too, before looking at the batch.
        let d = test_device();
        assert!(dpo_loss(&cfg, one_token_pair(0.0, 0.0, &d)).is_err());
    }
    let err = config(DpoLossType::Robust, 0.1, 0.5)
        .validate()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "dpo: `label_smoothing` = 0.5 is invalid; expected 0 <= label_smoothing < 0.5 for robust \
         (at 0.5 it divides by 0)"
    );
    // The valid edges.
    for cfg in [
        with(|c| c.ld_alpha = Some(0.0)),
        with(|c| c.ld_alpha = Some(1.0)),
        config(DpoLossType::Robust, 0.1, 0.0),
        config(DpoLossType::ExoPair, 0.1, 1e-3),
        with(|c| c.ref_model_mixup_alpha = 1.0),
    ] {
        cfg.validate().unwrap();
    }
}

#[test]
fn bad_batches_are_errors() {
    let d = test_device();
    let cfg = DpoConfig::default();
    let m = |rows: usize, cols: usize| matrix(&vec![0.0; rows * cols], [rows, cols], &d);
    assert!(matches!(
        dpo_loss(&cfg, DpoBatch::new(m(0, 3), m(0, 3), m(0, 4))),
        Err(LossError::EmptyBatch { objective: "dpo" })
    ));
    assert!(matches!(
        dpo_loss(&cfg, DpoBatch::new(m(3, 3), m(3, 3), m(3, 4))),
        Err(LossError::ShapeMismatch { .. })
    ));
    let err = dpo_loss(&cfg, DpoBatch::new(m(2, 3), m(2, 3), m(2, 3))).unwrap_err();
    assert_eq!(
        err,
        LossError::ShapeMismatch {
            objective: "dpo",
            input: "completion_mask",
            expected: vec![2, 4],
            actual: vec![2, 3],
        }
    );
    assert!(matches!(
        dpo_loss(&cfg, DpoBatch::new(m(2, 3), m(2, 2), m(2, 4))),
        Err(LossError::ShapeMismatch {
            input: "ref_logps",
            ..
        })
    ));
    let wpo = DpoConfig {
        use_weighting: true,
        ..DpoConfig::default()
    };
    assert_eq!(
        dpo_loss(&wpo, DpoBatch::new(m(2, 3), m(2, 3), m(2, 4))).unwrap_err(),
        LossError::MissingInput {
            objective: "dpo",
            input: "log_sum_sq_probs"
        }
    );
    assert!(matches!(
        dpo_loss(
            &wpo,
            DpoBatch::new(m(2, 3), m(2, 3), m(2, 4)).with_log_sum_sq_probs(m(2, 4))
        ),
        Err(LossError::ShapeMismatch {
            input: "log_sum_sq_probs",
            ..
        })
    ));
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Recipe {
    objective: DpoConfig,
}

#[test]
fn config_reads_trl_names_from_toml() {
    let plain: Recipe = toml::from_str("[objective]\n").unwrap();
    assert_eq!(plain.objective, DpoConfig::default());
    let one: Recipe = toml::from_str("[objective]\nloss_type = \"ipo\"\nbeta = 0.5\n").unwrap();
    assert_eq!(one.objective, DpoConfig::new(DpoLossType::Ipo, 0.5));
    let full: Recipe = toml::from_str(
        "[objective]\nloss_type = [\"sigmoid\", \"bco_pair\", \"sft\"]\n\
         loss_weights = [0.8, 0.2, 1.0]\nbeta = 0.2\nlabel_smoothing = 0.1\n\
         f_divergence_type = \"alpha_divergence\"\nf_alpha_divergence_coef = 0.3\n\
         ld_alpha = 0.5\nuse_weighting = true\ndiscopop_tau = 0.1\nsync_ref_model = true\n\
         ref_model_mixup_alpha = 0.9\nref_model_sync_steps = 64\n",
    )
    .unwrap();
    let expected = DpoConfig {
        loss_type: vec![DpoLossType::Sigmoid, DpoLossType::BcoPair, DpoLossType::Sft],
        loss_weights: Some(vec![0.8, 0.2, 1.0]),
        beta: 0.2,
        label_smoothing: 0.1,
        f_divergence_type: FDivergence::AlphaDivergence,
        f_alpha_divergence_coef: 0.3,
        ld_alpha: Some(0.5),
        use_weighting: true,
        discopop_tau: 0.1,
        sync_ref_model: true,
        ref_model_mixup_alpha: 0.9,
        ref_model_sync_steps: 64,
    };
    assert_eq!(full.objective, expected);
    for objective in [DpoConfig::default(), expected] {
        let recipe = Recipe { objective };
        let text = toml::to_string(&recipe).unwrap();
        assert_eq!(toml::from_str::<Recipe>(&text).unwrap(), recipe, "{text}");
    }
    // Every TRL name parses to the variant of that name.
    for kind in DpoLossType::ALL {
        let r: Recipe =
            toml::from_str(&format!("[objective]\nloss_type = \"{}\"\n", kind.name())).unwrap();
        assert_eq!(r.objective.loss_type, vec![kind]);
    }
    let unknown = toml::from_str::<Recipe>("[objective]\nloss_type = \"kto_pair\"\n")
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("expected one of"), "{unknown}");
    assert!(toml::from_str::<Recipe>("[objective]\nbetas = 0.1\n").is_err());
    assert!(toml::from_str::<Recipe>("[objective]\nf_divergence_type = \"kl\"\n").is_err());
}

#[test]
fn tr_dpo_refresh_mixes_or_copies_on_schedule() {
    let d = test_device();
    let reference = vector(&[1.0, 2.0, -1.0], &d);
    let policy = vector(&[3.0, 0.0, -1.0], &d);
    let mixed = refresh_reference(reference.clone(), policy.clone(), 0.25).unwrap();
    assert_eq!(values(mixed), vec![1.5, 1.5, -1.0]);
    let copied = refresh_reference(reference.clone(), policy.clone(), 1.0).unwrap();
    assert_eq!(values(copied), vec![3.0, 0.0, -1.0]);
    let kept = refresh_reference(reference.clone(), policy.clone(), 0.0).unwrap();
    assert_eq!(values(kept), vec![1.0, 2.0, -1.0]);
    assert!(matches!(
        refresh_reference(reference.clone(), policy, 1.5),
        Err(LossError::InvalidParameter { .. })
    ));
    assert!(matches!(
        refresh_reference(reference, vector(&[1.0], &d), 0.5),
        Err(LossError::ShapeMismatch { .. })
    ));
    let weights = Tensor::<2>::from_data(TensorData::new(vec![2.0f32; 4], [2, 2]), &d);
    let mixed = refresh_reference(weights.zeros_like(), weights, 0.5).unwrap();
    assert_eq!(values(mixed), vec![1.0; 4]);

    let cfg = DpoConfig {
        sync_ref_model: true,
        ref_model_mixup_alpha: 0.6,
        ref_model_sync_steps: 4,
        ..DpoConfig::default()
    };
    let due: Vec<usize> = (0..=12)
        .filter(|&s| cfg.reference_refresh(s).is_some())
        .collect();
    assert_eq!(due, vec![4, 8, 12]);
    assert_eq!(cfg.reference_refresh(8), Some(0.6));
    assert_eq!(DpoConfig::default().reference_refresh(512), None);
}
