//! Loss aggregation over uneven micro-batches, finite-difference gradients of the losses, and
//! where clipping must (and must not) kill the gradient.

use rm_core::burn::tensor::Tensor;

use super::testing::{check_gradient, device, gradient, matrix, scalar};
use super::*;

const MODES: [LossAggregation; 4] = [
    LossAggregation::TokenMean,
    LossAggregation::SeqMeanTokenSum,
    LossAggregation::SeqMeanTokenMean,
    LossAggregation::SeqMeanTokenSumNorm,
];

/// A deterministic pseudo-random value in [−1, 1).
fn noise(i: usize, salt: usize) -> f32 {
    let x = ((i * 2654435761 + salt * 40503) % 10007) as f32 / 10007.0;
    2.0 * x - 1.0
}

/// 7 rows of width 6 with lengths 3, 6, 1, 0 (empty), 4, 2, 5.
fn batch() -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let lengths = [3, 6, 1, 0, 4, 2, 5];
    let values = (0..7)
        .map(|i| (0..6).map(|t| 3.0 * noise(i * 6 + t, 1)).collect())
        .collect();
    let mask = lengths
        .iter()
        .map(|&l| (0..6).map(|t| if t < l { 1.0 } else { 0.0 }).collect())
        .collect();
    (values, mask)
}

/// Rows `range` of `rows`, trimmed to their longest mask (padding columns dropped).
fn micro(
    rows: &[Vec<f32>],
    mask: &[Vec<f32>],
    range: std::ops::Range<usize>,
) -> [Vec<Vec<f32>>; 2] {
    let width = mask[range.clone()]
        .iter()
        .map(|m| m.iter().filter(|&&w| w != 0.0).count())
        .max()
        .unwrap()
        .max(1);
    let trim = |r: &[Vec<f32>]| {
        r[range.clone()]
            .iter()
            .map(|x| x[..width].to_vec())
            .collect()
    };
    [trim(rows), trim(mask)]
}

/// The whole-batch aggregate, by hand on the host (verl's `agg_loss` formulas).
fn by_hand(values: &[Vec<f32>], mask: &[Vec<f32>], mode: LossAggregation, norm: f64) -> f64 {
    let mut tokens = 0.0;
    let mut sum = 0.0;
    let mut seq_means = 0.0;
    let mut sequences = 0.0;
    for (v, m) in values.iter().zip(mask) {
        let n: f64 = m.iter().map(|&w| f64::from(w)).sum();
        let s: f64 = v.iter().zip(m).map(|(&x, &w)| f64::from(x * w)).sum();
        tokens += n;
        sum += s;
        if n > 0.0 {
            sequences += 1.0;
            seq_means += s / n;
        }
    }
    match mode {
        LossAggregation::TokenMean => sum / tokens,
        LossAggregation::SeqMeanTokenSum => sum / sequences,
        LossAggregation::SeqMeanTokenMean => seq_means / sequences,
        LossAggregation::SeqMeanTokenSumNorm => sum / (norm * sequences),
    }
}

#[test]
fn micro_batches_of_uneven_sizes_and_widths_combine_to_the_whole_batch() {
    let dev = device();
    let (values, mask) = batch();
    let splits = [0..2, 2..4, 4..5, 5..7];
    for mode in MODES {
        let norm = Some(6);
        let (whole, whole_weight) =
            aggregate(matrix(&values, &dev), matrix(&mask, &dev), mode, norm).unwrap();
        let whole = scalar(whole);
        let expected = by_hand(&values, &mask, mode, 6.0);
        assert!(
            (whole - expected).abs() < 1e-5,
            "{mode:?}: {whole} vs {expected}"
        );
        let (mut num, mut den, mut naive) = (0.0, 0.0, 0.0);
        for range in splits.clone() {
            let [v, m] = micro(&values, &mask, range);
            let (loss, weight) = aggregate(matrix(&v, &dev), matrix(&m, &dev), mode, norm).unwrap();
            let loss = scalar(loss);
            num += weight * loss;
            den += weight;
            naive += loss / splits.len() as f64;
        }
        let combined = num / den;
        assert!(
            (combined - whole).abs() < 1e-5,
            "{mode:?}: micro-batches combine to {combined}, the whole batch is {whole}"
        );
        assert_eq!(den, whole_weight, "{mode:?}: the weights add up");
        // The equal-weight mean of micro-batch means (the bug) is visibly different.
        assert!(
            (naive - whole).abs() > 1e-2,
            "{mode:?}: naive {naive} vs {whole}"
        );
    }
}

#[test]
fn weights_count_tokens_or_non_empty_sequences() {
    let dev = device();
    let (values, mask) = batch();
    let w = |mode| {
        aggregate(matrix(&values, &dev), matrix(&mask, &dev), mode, None)
            .unwrap()
            .1
    };
    assert_eq!(w(LossAggregation::TokenMean), 21.0);
    for mode in &MODES[1..] {
        assert_eq!(w(*mode), 6.0, "{mode:?}: the empty row is not counted");
    }
    // Nothing on the mask: (0, 0).
    let empty = vec![vec![0.0; 3]; 2];
    for mode in MODES {
        let (loss, weight) =
            aggregate(matrix(&empty, &dev), matrix(&empty, &dev), mode, None).unwrap();
        assert_eq!((scalar(loss), weight), (0.0, 0.0));
    }
    // ... and a fully masked micro-batch of a policy loss backpropagates a zero gradient.
    let [old, new, adv, _] = rollout();
    let f = loss_fn(
        vanilla(),
        LossAggregation::TokenMean,
        old,
        adv,
        vec![vec![0.0; 4]; 3],
    );
    assert!(gradient(&new, &f).iter().flatten().all(|&g| g == 0.0));
    // Entries off the mask are ignored even when not finite.
    let mut poisoned = values.clone();
    poisoned[3][0] = f32::NAN;
    poisoned[0][5] = f32::INFINITY;
    let (a, _) = aggregate(matrix(&poisoned, &dev), matrix(&mask, &dev), MODES[0], None).unwrap();
    let (b, _) = aggregate(matrix(&values, &dev), matrix(&mask, &dev), MODES[0], None).unwrap();
    assert_eq!(scalar(a), scalar(b));
    let err = aggregate(
        matrix(&values, &dev),
        matrix(&mask[..2], &dev),
        MODES[0],
        None,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        AlgoError::ShapeMismatch { array: "mask", .. }
    ));
    assert!(
        aggregate(
            matrix(&values, &dev),
            matrix(&mask, &dev),
            MODES[3],
            Some(0)
        )
        .is_err()
    );
}

fn vanilla() -> PolicyLoss {
    PolicyLoss::Vanilla {
        clip_ratio_low: 0.2,
        clip_ratio_high: 0.28,
        clip_ratio_c: Some(3.0),
    }
}

fn gspo() -> PolicyLoss {
    PolicyLoss::Gspo {
        clip_ratio_low: 0.2,
        clip_ratio_high: 0.28,
    }
}

fn cispo() -> PolicyLoss {
    PolicyLoss::Cispo {
        clip_ratio_low: 0.2,
        clip_ratio_high: 0.28,
    }
}

/// old log-probs, log-prob offsets within ±0.12 (inside every clip range), sequence-level
/// advantages of both signs, and a padded mask.
fn rollout() -> [Vec<Vec<f32>>; 4] {
    let old: Vec<Vec<f32>> = (0..3)
        .map(|i| (0..4).map(|t| -1.0 - noise(i * 4 + t, 2).abs()).collect())
        .collect();
    let new = old
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.iter()
                .enumerate()
                .map(|(t, &x)| x + 0.12 * noise(i * 4 + t, 3))
                .collect()
        })
        .collect();
    let adv = [0.8f32, -1.3, 0.5].iter().map(|&a| vec![a; 4]).collect();
    let mask = vec![
        vec![1.0, 1.0, 1.0, 0.0],
        vec![1.0, 1.0, 1.0, 1.0],
        vec![1.0, 1.0, 0.0, 0.0],
    ];
    [old, new, adv, mask]
}

fn loss_fn(
    loss: PolicyLoss,
    mode: LossAggregation,
    old: Vec<Vec<f32>>,
    adv: Vec<Vec<f32>>,
    mask: Vec<Vec<f32>>,
) -> impl Fn(Tensor<2>) -> Tensor<1> + Clone {
    move |log_prob: Tensor<2>| {
        let dev = log_prob.device();
        policy_loss(
            &loss,
            mode,
            matrix(&old, &dev),
            log_prob,
            matrix(&adv, &dev),
            matrix(&mask, &dev),
            None,
        )
        .unwrap()
        .loss
    }
}

#[test]
fn vanilla_and_gspo_gradients_match_finite_differences() {
    let [old, new, adv, mask] = rollout();
    for loss in [vanilla(), gspo()] {
        for mode in MODES {
            let f = loss_fn(loss.clone(), mode, old.clone(), adv.clone(), mask.clone());
            let worst = check_gradient(&new, 2e-3, &f);
            println!(
                "{} {}: worst |autodiff − FD| {worst:.2e}",
                loss.name(),
                mode.name()
            );
        }
    }
}

#[test]
fn unclipped_gradients_have_their_closed_forms() {
    let [old, new, adv, mask] = rollout();
    let tokens: f32 = mask.iter().flatten().sum();
    for loss in [vanilla(), cispo()] {
        // token-mean: ∂L/∂ℓ_t = −A_t·r_t / N on the mask (CISPO: −sg[r_t]·A_t / N), 0 off it.
        let f = loss_fn(
            loss.clone(),
            LossAggregation::TokenMean,
            old.clone(),
            adv.clone(),
            mask.clone(),
        );
        let g = gradient(&new, &f);
        for i in 0..3 {
            for t in 0..4 {
                let r = (new[i][t] - old[i][t]).exp();
                let expected = -adv[i][t] * r * mask[i][t] / tokens;
                assert!(
                    (g[i][t] - expected).abs() < 1e-6,
                    "{} [{i}, {t}]: {} vs {expected}",
                    loss.name(),
                    g[i][t]
                );
            }
        }
    }
}

#[test]
fn cispo_gradient_matches_finite_differences_where_its_weight_is_clipped() {
    // Offsets ±0.5: every ratio is outside [0.8, 1.28], so the detached weight is a constant
    // and the loss is linear in ℓ.
    let [old, _, adv, mask] = rollout();
    let new: Vec<Vec<f32>> = old
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.iter()
                .enumerate()
                .map(|(t, &x)| x + if (i + t) % 2 == 0 { 0.5 } else { -0.5 })
                .collect()
        })
        .collect();
    for mode in MODES {
        let f = loss_fn(cispo(), mode, old.clone(), adv.clone(), mask.clone());
        check_gradient(&new, 2e-3, &f);
        // and the gradient is alive: −clip(r)·A / N on every masked token.
        let g = gradient(&new, &f);
        if mode == LossAggregation::TokenMean {
            let tokens: f32 = mask.iter().flatten().sum();
            for i in 0..3 {
                for t in 0..4 {
                    let w = if (i + t) % 2 == 0 { 1.28 } else { 0.8 };
                    let expected = -w * adv[i][t] * mask[i][t] / tokens;
                    assert!(
                        (g[i][t] - expected).abs() < 1e-6,
                        "[{i}, {t}]: {} vs {expected}",
                        g[i][t]
                    );
                }
            }
        }
    }
}

/// The token-mean gradient of a one-token batch at log-ratio `delta` with advantage `a`.
fn one_token_gradient(loss: &PolicyLoss, delta: f32, a: f32) -> (f32, f64) {
    let dev = device();
    let old = vec![vec![-1.0f32]];
    let new = vec![vec![-1.0 + delta]];
    let adv = vec![vec![a]];
    let mask = vec![vec![1.0]];
    let f = loss_fn(
        loss.clone(),
        LossAggregation::TokenMean,
        old.clone(),
        adv.clone(),
        mask.clone(),
    );
    let g = gradient(&new, &f)[0][0];
    let value = scalar(f(matrix(&new, &dev)));
    (g, value)
}

#[test]
fn clipping_kills_the_gradient_exactly_where_it_should() {
    let ppo = vanilla();
    let up = 0.5f32; // r = 1.65 > 1.28
    let down = -0.5f32; // r = 0.61 < 0.8
    // A > 0, r above 1 + ε_high: clipped, no gradient, loss −A·1.28.
    let (g, v) = one_token_gradient(&ppo, up, 1.0);
    assert_eq!(g, 0.0);
    assert!((v + 1.28).abs() < 1e-6);
    // A < 0, r below 1 − ε_low: clipped, no gradient, loss −A·0.8.
    let (g, v) = one_token_gradient(&ppo, down, -1.0);
    assert_eq!(g, 0.0);
    assert!((v - 0.8).abs() < 1e-6);
    // The other sides are not clipped: the gradient −A·r survives.
    let (g, _) = one_token_gradient(&ppo, down, 1.0);
    assert!((g + down.exp()).abs() < 1e-6, "{g}");
    let (g, _) = one_token_gradient(&ppo, up, -1.0);
    assert!((g - up.exp()).abs() < 1e-6, "{g}");
    // Dual clip: A < 0 and r > c = 3 → the loss is −A·c with no gradient.
    let (g, v) = one_token_gradient(&ppo, 1.5, -2.0);
    assert_eq!(g, 0.0);
    assert!((v - 6.0).abs() < 1e-5, "{v}");
    // Without the dual clip the same token keeps its gradient.
    let plain = PolicyLoss::Vanilla {
        clip_ratio_low: 0.2,
        clip_ratio_high: 0.28,
        clip_ratio_c: None,
    };
    let (g, _) = one_token_gradient(&plain, 1.5, -2.0);
    assert!((g - 2.0 * 1.5f32.exp()).abs() < 1e-4, "{g}");
    // GSPO clips the sequence ratio the same way.
    let (g, _) = one_token_gradient(&gspo(), up, 1.0);
    assert_eq!(g, 0.0);
    let (g, _) = one_token_gradient(&gspo(), down, 1.0);
    assert!(g < 0.0);
    // CISPO never kills it: −clip(r)·A.
    let (g, _) = one_token_gradient(&cispo(), up, 1.0);
    assert!((g + 1.28).abs() < 1e-6, "{g}");
    let (g, _) = one_token_gradient(&cispo(), down, -1.0);
    assert!((g - 0.8).abs() < 1e-6, "{g}");
}

#[test]
fn policy_losses_combine_over_micro_batches() {
    let dev = device();
    let [old, new, adv, mask] = rollout();
    let rows = |m: &[Vec<f32>], r: std::ops::Range<usize>, w: usize| -> Vec<Vec<f32>> {
        m[r].iter().map(|x| x[..w].to_vec()).collect()
    };
    for loss in [vanilla(), gspo(), cispo()] {
        for mode in MODES {
            let run = |r: std::ops::Range<usize>, w: usize| {
                let out = policy_loss(
                    &loss,
                    mode,
                    matrix(&rows(&old, r.clone(), w), &dev),
                    matrix(&rows(&new, r.clone(), w), &dev),
                    matrix(&rows(&adv, r.clone(), w), &dev),
                    matrix(&rows(&mask, r, w), &dev),
                    Some(4),
                )
                .unwrap();
                (scalar(out.loss), out.weight, scalar(out.ppo_kl), out.tokens)
            };
            let (whole, _, whole_kl, _) = run(0..3, 4);
            // Rows 0..2 at full width, row 2 trimmed to its 2 tokens.
            let (a, wa, kl_a, ta) = run(0..2, 4);
            let (b, wb, kl_b, tb) = run(2..3, 2);
            let combined = (a * wa + b * wb) / (wa + wb);
            assert!(
                (combined - whole).abs() < 1e-6,
                "{} {}: {combined} vs {whole}",
                loss.name(),
                mode.name()
            );
            // The metrics are token means, combined by token counts.
            assert_eq!((ta, tb), (7.0, 2.0));
            let kl = (kl_a * ta + kl_b * tb) / (ta + tb);
            assert!((kl - whole_kl).abs() < 1e-7, "ppo_kl {kl} vs {whole_kl}");
        }
    }
}

#[test]
fn value_loss_gradient_and_clipping() {
    let dev = device();
    let values = vec![vec![0.0f32, 1.0, -1.0], vec![0.5, 0.5, 0.5]];
    let returns = vec![vec![1.0f32, 0.0, 0.0], vec![2.0, -1.0, 0.5]];
    let mask = vec![vec![1.0f32, 1.0, 0.0], vec![1.0, 1.0, 1.0]];
    // vpreds within ±0.3 of values (inside the clip range 0.5): the plain squared error.
    let vpreds = vec![vec![0.3f32, 0.8, -1.2], vec![0.2, 0.7, 0.6]];
    let f = |v: Tensor<2>| {
        let dev = v.device();
        clipped_value_loss(
            v,
            matrix(&values, &dev),
            matrix(&returns, &dev),
            matrix(&mask, &dev),
            0.5,
            LossAggregation::TokenMean,
            None,
        )
        .unwrap()
        .loss
    };
    check_gradient(&vpreds, 2e-3, &f);
    let g = gradient(&vpreds, &f);
    for i in 0..2 {
        for t in 0..3 {
            let expected = (vpreds[i][t] - returns[i][t]) * mask[i][t] / 5.0;
            assert!((g[i][t] - expected).abs() < 1e-6);
        }
    }
    // A prediction 1.0 past its old value toward the return: the clipped term (larger) has no
    // gradient... v = 2.0, V = 0.5, R = 1.0: (v − R)² = 1, (v̂ − R)² = 0 → unclipped wins.
    // v = 2.0, V = 0.5, R = 3.0: (v − R)² = 1, (1.0 − 3)² = 4 → clipped wins, gradient 0.
    let one = |v: f32, old: f32, ret: f32| {
        let out = clipped_value_loss(
            matrix(&[vec![v]], &dev),
            matrix(&[vec![old]], &dev),
            matrix(&[vec![ret]], &dev),
            matrix(&[vec![1.0]], &dev),
            0.5,
            LossAggregation::TokenMean,
            None,
        )
        .unwrap();
        (scalar(out.loss), scalar(out.clipfrac))
    };
    assert_eq!(one(2.0, 0.5, 1.0), (0.5, 0.0));
    assert_eq!(one(2.0, 0.5, 3.0), (2.0, 1.0));
    let g = gradient(&[vec![2.0]], &|v| {
        let dev = v.device();
        clipped_value_loss(
            v,
            matrix(&[vec![0.5]], &dev),
            matrix(&[vec![3.0]], &dev),
            matrix(&[vec![1.0]], &dev),
            0.5,
            LossAggregation::TokenMean,
            None,
        )
        .unwrap()
        .loss
    });
    assert_eq!(g[0][0], 0.0);
}

#[test]
fn loss_errors_name_the_array_and_parameter() {
    let dev = device();
    let a = matrix(&vec![vec![0.0; 3]; 2], &dev);
    let b = matrix(&vec![vec![0.0; 4]; 2], &dev);
    let err = policy_loss(
        &vanilla(),
        LossAggregation::TokenMean,
        a.clone(),
        a.clone(),
        b.clone(),
        a.clone(),
        None,
    )
    .unwrap_err();
    assert_eq!(
        err,
        AlgoError::ShapeMismatch {
            what: "vanilla",
            array: "advantages",
            expected: vec![2, 3],
            actual: vec![2, 4]
        }
    );
    let bad = PolicyLoss::Vanilla {
        clip_ratio_low: 0.2,
        clip_ratio_high: 0.2,
        clip_ratio_c: Some(0.5),
    };
    let err = policy_loss(
        &bad,
        LossAggregation::TokenMean,
        a.clone(),
        a.clone(),
        a.clone(),
        a.clone(),
        None,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        AlgoError::InvalidParameter {
            parameter: "clip_ratio_c",
            ..
        }
    ));
    assert!(err.to_string().contains("clip_ratio_c"));
    let err = clipped_value_loss(
        a.clone(),
        b,
        a.clone(),
        a.clone(),
        0.5,
        LossAggregation::TokenMean,
        None,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        AlgoError::ShapeMismatch {
            array: "values",
            ..
        }
    ));
    assert!(
        clipped_value_loss(
            a.clone(),
            a.clone(),
            a.clone(),
            a,
            -1.0,
            LossAggregation::TokenMean,
            None
        )
        .is_err()
    );
}
