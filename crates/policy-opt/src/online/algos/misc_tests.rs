//! KL estimators and controllers, entropy, reward shaping, and recipe (serde) forms.

use rm_core::burn::tensor::{Tensor, TensorData};

use super::testing::{check_gradient, device, matrix, rows, values};
use super::*;

#[test]
fn kl_estimators_have_their_closed_forms_and_clamps() {
    let dev = device();
    let lp = vec![vec![-1.0f32, -2.0, -0.5, -30.0]];
    let rf = vec![vec![-1.5f32, -1.0, -0.5, -1.0]];
    let run = |e| rows(kl_penalty(e, matrix(&lp, &dev), matrix(&rf, &dev)))[0].clone();
    assert_eq!(run(KlEstimator::K1), vec![0.5, -1.0, 0.0, -29.0]);
    assert_eq!(run(KlEstimator::Abs), vec![0.5, 1.0, 0.0, 29.0]);
    assert_eq!(run(KlEstimator::K2), vec![0.125, 0.5, 0.0, 420.5]);
    let k3 = run(KlEstimator::K3);
    // k3 = e^{−δ} + δ − 1 with δ = lp − ref.
    let expected = [(-0.5f64).exp() + 0.5 - 1.0, 1f64.exp() - 1.0 - 1.0, 0.0];
    for k in 0..3 {
        assert!(
            (f64::from(k3[k]) - expected[k]).abs() < 1e-6,
            "{k}: {}",
            k3[k]
        );
    }
    // δ = −29: e^{29} is clamped (−δ to 20), then the result to 10.
    assert_eq!(k3[3], 10.0);
    // k3's gradient in log_prob is 1 − e^{−δ} (finite differences agree).
    let f = |x: Tensor<2>| {
        let dev = x.device();
        kl_penalty(KlEstimator::K3, x, matrix(&[vec![-1.5, -1.0, -0.5]], &dev)).sum()
    };
    check_gradient(&[vec![-1.0, -2.0, -0.7]], 2e-3, &f);
    let err = kl_penalty_checked(
        KlEstimator::K1,
        matrix(&lp, &dev),
        matrix(&[vec![0.0; 3]], &dev),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        AlgoError::ShapeMismatch {
            array: "ref_log_prob",
            ..
        }
    ));
}

#[test]
fn kl_estimator_names_and_verl_aliases() {
    let parse = |s: &str| serde_json::from_str::<KlEstimator>(&format!("\"{s}\"")).unwrap();
    assert_eq!(parse("k1"), KlEstimator::K1);
    assert_eq!(parse("kl"), KlEstimator::K1);
    assert_eq!(parse("abs"), KlEstimator::Abs);
    assert_eq!(parse("mse"), KlEstimator::K2);
    assert_eq!(parse("k2"), KlEstimator::K2);
    assert_eq!(parse("low_var_kl"), KlEstimator::K3);
    assert_eq!(parse("k3"), KlEstimator::K3);
    assert!(serde_json::from_str::<KlEstimator>("\"full\"").is_err());
}

#[test]
fn adaptive_kl_controller_follows_ziegler_and_resumes() {
    let config: KlControllerConfig =
        toml::from_str("kind = \"adaptive\"\ninit_coef = 0.1\ntarget = 6.0\nhorizon = 10000.0")
            .unwrap();
    let mut c = KlController::new(config).unwrap();
    assert_eq!(c.value(), 0.1);
    // KL twice the target: the error is clipped to +0.2 → β·(1 + 0.2·100/10000).
    c.update(12.0, 100);
    assert!((c.value() - 0.1 * 1.002).abs() < 1e-15);
    // KL half the target: error −0.5 → −0.2.
    c.update(3.0, 100);
    assert!((c.value() - 0.1 * 1.002 * 0.998).abs() < 1e-15);
    // A small error is not clipped: 6.6 / 6 − 1 = 0.1.
    let before = c.value();
    c.update(6.6, 1000);
    assert!((c.value() - before * 1.01).abs() < 1e-12);
    // The state survives a round trip (resume; serde_json's float parsing is within an ulp)
    // and keeps updating as the uninterrupted controller.
    let saved = serde_json::to_string(&c).unwrap();
    let mut resumed: KlController = serde_json::from_str(&saved).unwrap();
    assert_eq!(resumed.config(), c.config());
    assert!((resumed.value() - c.value()).abs() <= 1e-16);
    resumed.update(1.0, 10);
    c.update(1.0, 10);
    assert!((resumed.value() - c.value()).abs() <= 1e-16);
    assert!(c.value() < before * 1.01, "KL below target lowers β");
    // NaN KL leaves β alone.
    let v = c.value();
    c.update(f64::NAN, 10);
    assert_eq!(c.value(), v);

    let mut fixed = KlController::new(KlControllerConfig::Fixed { coef: 0.05 }).unwrap();
    fixed.update(100.0, 1000);
    assert_eq!(fixed.value(), 0.05);
    let err = KlController::new(KlControllerConfig::Adaptive {
        init_coef: 0.1,
        target: 6.0,
        horizon: 0.0,
    })
    .unwrap_err();
    assert!(matches!(
        err,
        AlgoError::InvalidParameter {
            parameter: "horizon",
            ..
        }
    ));
    assert!(toml::from_str::<KlControllerConfig>("kind = \"fixed\"\ncoef = 0.1\nx = 1").is_err());
}

#[test]
fn token_entropy_closed_forms_and_stability() {
    let dev = device();
    let ln3 = 3f32.ln();
    // [B = 1, T = 3, V = 2]: uniform, p = (1/4, 3/4) and the same shifted by 1000.
    let logits = vec![0.0, 0.0, 0.0, ln3, 1000.0, 1000.0 + ln3];
    let t = Tensor::<3>::from_data(TensorData::new(logits, [1, 3, 2]), &dev);
    let h = values(token_entropy(t));
    let two = -(0.25f64 * 0.25f64.ln() + 0.75 * 0.75f64.ln());
    assert!((f64::from(h[0]) - 2f64.ln()).abs() < 1e-6);
    assert!((f64::from(h[1]) - two).abs() < 1e-6);
    assert!(
        (f64::from(h[2]) - two).abs() < 1e-5,
        "large logits: {}",
        h[2]
    );
    // Its gradient agrees with finite differences.
    let f = |x: Tensor<2>| token_entropy(x.reshape([1, 2, 3])).sum();
    check_gradient(&[vec![0.3, -1.0, 2.0], vec![0.0, 0.5, 0.1]], 2e-3, &f);
}

#[test]
fn reward_components_sum_then_normalise_or_gdpo() {
    let components = vec![vec![1.0f32, 0.0, 0.0], vec![0.0, 2.0, 4.0]];
    let weights = [1.0, 1.0];
    let group = [0, 0, 0];
    let sum = aggregate_reward_components(
        &components,
        &weights,
        &group,
        ComponentAggregation::SumThenNormalize,
    )
    .unwrap();
    // Σ = (1, 2, 4): mean 7/3, std √(7/3).
    let std = (7.0f64 / 3.0).sqrt() + 1e-6;
    for (a, e) in sum.iter().zip([-4.0 / 3.0, -1.0 / 3.0, 5.0 / 3.0]) {
        assert!((f64::from(*a) - e / std).abs() < 1e-6, "{a}");
    }
    let gdpo = aggregate_reward_components(
        &components,
        &weights,
        &group,
        ComponentAggregation::NormalizeThenSum,
    )
    .unwrap();
    // z(c₁) = (2/3, −1/3, −1/3)/√(1/3), z(c₂) = (−1, 0, 1).
    let s1 = (1.0f64 / 3.0).sqrt() + 1e-6;
    let s2 = 2.0 + 1e-6;
    let expected = [
        (2.0 / 3.0) / s1 - 2.0 / s2,
        (-1.0 / 3.0) / s1,
        (-1.0 / 3.0) / s1 + 2.0 / s2,
    ];
    for (a, e) in gdpo.iter().zip(expected) {
        assert!((f64::from(*a) - e).abs() < 1e-6, "{a} vs {e}");
    }
    // Weights scale a component; groups are normalised separately.
    let two_groups = aggregate_reward_components(
        &[vec![1.0, 3.0, 10.0, 30.0]],
        &[2.0],
        &[0, 1, 0, 1],
        ComponentAggregation::NormalizeThenSum,
    )
    .unwrap();
    let z = 2.0 * (9.0 / 2f64.sqrt().mul_add(9.0, 1e-6));
    assert!(
        (f64::from(two_groups[0]) + z).abs() < 1e-5,
        "{two_groups:?}"
    );
    assert!(aggregate_reward_components(&components, &[1.0], &group, Default::default()).is_err());
    let err = aggregate_reward_components(&components, &weights, &[0, 0], Default::default())
        .unwrap_err();
    assert!(matches!(
        err,
        AlgoError::RaggedRows {
            array: "components",
            ..
        }
    ));
}

#[test]
fn rto_token_rewards_put_the_sequence_reward_on_the_last_token() {
    let dpo = vec![vec![-1.0f32, -2.0, -3.0], vec![-1.0, -1.0, -1.0]];
    let reference = vec![vec![-1.5f32, -2.0, -2.0], vec![0.0, 0.0, 0.0]];
    let mask = vec![vec![1.0f32, 1.0, 0.0], vec![0.0; 3]];
    let r = dpo_token_rewards(&dpo, &reference, &mask, &[2.0, 5.0], 0.1).unwrap();
    assert!((r[0][0] - 0.05).abs() < 1e-7);
    assert!((r[0][1] - 2.0).abs() < 1e-7);
    assert_eq!(r[0][2], 0.0);
    assert_eq!(r[1], vec![0.0; 3], "an empty mask has no last token");
    assert!(dpo_token_rewards(&dpo, &reference, &mask, &[2.0], 0.1).is_err());
    assert!(dpo_token_rewards(&dpo, &reference, &mask, &[2.0, 5.0], -1.0).is_err());
}

#[test]
fn macro_actions_share_the_mean_advantage_of_their_tokens() {
    let adv = vec![
        vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 0.0],
        vec![1.0, 9.0, 3.0, 5.0, 0.0, 0.0],
    ];
    let mask = vec![
        vec![1.0f32, 1.0, 1.0, 1.0, 1.0, 0.0],
        vec![1.0, 0.0, 1.0, 1.0, 0.0, 0.0],
    ];
    let out = macro_action_advantages(&adv, &mask, 2).unwrap();
    assert_eq!(out[0], vec![1.5, 1.5, 3.5, 3.5, 5.0, 0.0]);
    assert_eq!(out[1], vec![2.0, 0.0, 2.0, 5.0, 0.0, 0.0]);
    assert_eq!(
        macro_action_advantages(&adv, &mask, 1).unwrap()[0],
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 0.0]
    );
    assert!(macro_action_advantages(&adv, &mask, 0).is_err());
}

#[test]
fn policy_losses_and_aggregations_read_from_toml() {
    let parse = |s: &str| toml::from_str::<PolicyLoss>(s);
    let ppo =
        parse("name = \"ppo\"\nclip_ratio_low = 0.2\nclip_ratio_high = 0.28\nclip_ratio_c = 3.0")
            .unwrap();
    assert_eq!(
        ppo,
        PolicyLoss::Vanilla {
            clip_ratio_low: 0.2,
            clip_ratio_high: 0.28,
            clip_ratio_c: Some(3.0)
        }
    );
    assert_eq!(
        parse("name = \"vanilla\"\nclip_ratio_low = 0.2\nclip_ratio_high = 0.2").unwrap(),
        PolicyLoss::Vanilla {
            clip_ratio_low: 0.2,
            clip_ratio_high: 0.2,
            clip_ratio_c: None
        }
    );
    assert_eq!(
        parse("name = \"cispo\"\nclip_ratio_low = 1.0\nclip_ratio_high = 4.0").unwrap(),
        PolicyLoss::Cispo {
            clip_ratio_low: 1.0,
            clip_ratio_high: 4.0
        }
    );
    assert!(
        parse("name = \"gspo\"\nclip_ratio_low = 0.2\nclip_ratio_high = 0.2\nclip_ratio_c = 3.0")
            .is_err()
    );
    #[derive(serde::Deserialize)]
    struct R {
        agg: LossAggregation,
    }
    for mode in [
        LossAggregation::TokenMean,
        LossAggregation::SeqMeanTokenSum,
        LossAggregation::SeqMeanTokenMean,
        LossAggregation::SeqMeanTokenSumNorm,
    ] {
        let r: R = toml::from_str(&format!("agg = \"{}\"", mode.name())).unwrap();
        assert_eq!(r.agg, mode);
    }
}

#[test]
fn kl_penalty_in_the_reward_and_the_batch_kl() {
    let scores = vec![
        vec![0.0f32, 0.0, 1.0],
        vec![0.0, 2.0, 0.0],
        vec![0.5, 0.0, 0.0],
    ];
    let kl = vec![
        vec![0.1f32, 0.2, 0.3],
        vec![0.4, -0.2, 9.0],
        vec![1.0, 1.0, 1.0],
    ];
    let mask = vec![vec![1.0f32, 1.0, 1.0], vec![1.0, 1.0, 0.0], vec![0.0; 3]];
    let (r, current) = apply_kl_penalty(&scores, &kl, &mask, 0.5).unwrap();
    let expect = [[-0.05f32, -0.1, 0.85], [-0.2, 2.1, 0.0], [0.5, 0.0, 0.0]];
    for (row, e) in r.iter().zip(expect) {
        for (a, b) in row.iter().zip(e) {
            assert!((a - b).abs() < 1e-6, "{row:?} vs {e:?}");
        }
    }
    // Row means 0.2 and 0.1, the empty row 0: (0.2 + 0.1 + 0) / 3.
    assert!((current - 0.1).abs() < 1e-7, "{current}");
    assert!(apply_kl_penalty(&scores, &kl[..2], &mask, 0.5).is_err());
    assert!(apply_kl_penalty(&scores, &kl, &mask, f64::NAN).is_err());
}
