//! Process rewards: PURE's transformation, min- and sum-form returns, PURE's RLOO, PRIME.

use rm_core::burn::tensor::{Tensor, TensorData};

use super::testing::{check_gradient, device, gradient, matrix, scalar};
use super::*;

fn close(a: &[Vec<f32>], b: &[Vec<f64>]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "row {i}");
        for (k, (&x, &y)) in x.iter().zip(y).enumerate() {
            assert!((f64::from(x) - y).abs() < 1e-6, "[{i}][{k}]: {x} vs {y}");
        }
    }
}

#[test]
fn approx_min_form_weights_steps_by_a_softmin_and_tends_to_the_min() {
    let r = vec![vec![0.0f32, 0.5, 0.0, -0.5], vec![0.3, 0.0, 0.0, 0.0]];
    let s = vec![vec![0.0f32, 1.0, 0.0, 1.0], vec![0.0; 4]];
    let out = approx_min_form(&r, &s, 1.0).unwrap();
    // w = softmax(−r/T) over the steps {0.5, −0.5}: (e^{−0.5}, e^{0.5}) / Σ = (1, e)/(1 + e).
    let e = 1f64.exp();
    let (w1, w2) = (1.0 / (1.0 + e), e / (1.0 + e));
    // The second row has no steps: all zeros, the 0.3 off the step mask dropped.
    close(&out, &[vec![0.0, 0.5 * w1, 0.0, -0.5 * w2], vec![0.0; 4]]);
    // T → 0: the row's sum is the min; T → ∞: the mean.
    let sum = |t: f64| -> f64 {
        approx_min_form(&r, &s, t).unwrap()[0]
            .iter()
            .map(|&x| f64::from(x))
            .sum()
    };
    assert!((sum(1e-3) - -0.5).abs() < 1e-6);
    assert!(sum(1e6).abs() < 1e-6);
    assert!(approx_min_form(&r, &s, 0.0).is_err());
    assert!(approx_min_form(&r, &s, f64::NAN).is_err());
    assert!(matches!(
        approx_min_form(&r, &s[..1], 1.0),
        Err(AlgoError::ShapeMismatch {
            array: "step_mask",
            ..
        })
    ));
    assert!(approx_min_form(&[], &[], 1.0).unwrap().is_empty());
}

#[test]
fn min_form_returns_are_the_smallest_process_reward_ahead_and_sum_form_the_discounted_sum() {
    let r = vec![
        vec![0.0f32, 0.8, 0.0, 0.3, 1.0],
        vec![0.0, 0.8, 0.0, 0.3, 1.0],
        vec![0.0, 0.0, 0.0, 0.0, 0.0],
        vec![1.0, 0.0, 2.0, 0.0, 0.0],
    ];
    let s = vec![
        vec![0.0f32, 1.0, 0.0, 1.0, 1.0],
        vec![0.0, 1.0, 0.0, 1.0, 1.0],
        vec![0.0; 5],
        vec![1.0, 0.0, 1.0, 0.0, 0.0],
    ];
    let m = vec![
        vec![1.0f32; 5],
        // The last token is off the mask: its step is not ahead of anyone, its return 0.
        vec![1.0, 1.0, 1.0, 1.0, 0.0],
        vec![1.0; 5],
        vec![1.0, 1.0, 1.0, 0.0, 0.0],
    ];
    let g = process_returns(&r, &s, &m, CreditAssignment::Min).unwrap();
    close(
        &g,
        &[
            vec![0.3, 0.3, 0.3, 0.3, 1.0],
            vec![0.3, 0.3, 0.3, 0.3, 0.0],
            // No step: no process reward ahead, returns 0.
            vec![0.0; 5],
            vec![1.0, 2.0, 2.0, 0.0, 0.0],
        ],
    );
    let g = process_returns(&r, &s, &m, CreditAssignment::Sum { gamma: 0.5 }).unwrap();
    close(
        &g,
        &[
            vec![
                0.8 * 0.5 + 0.3 * 0.125 + 1.0 * 0.0625,
                0.8 + 0.3 * 0.25 + 0.125,
                0.3 * 0.5 + 0.25,
                0.3 + 0.5,
                1.0,
            ],
            vec![0.4 + 0.0375, 0.8 + 0.075, 0.15, 0.3, 0.0],
            vec![0.0; 5],
            vec![1.0 + 0.5, 1.0, 2.0, 0.0, 0.0],
        ],
    );
    assert!(process_returns(&r, &s, &m, CreditAssignment::Sum { gamma: 1.5 }).is_err());
    assert!(matches!(
        process_returns(&r, &s, &m[..3], CreditAssignment::Min),
        Err(AlgoError::ShapeMismatch {
            array: "response_mask",
            ..
        })
    ));
    // Empty batch, empty rows.
    assert!(
        process_returns(&[], &[], &[], CreditAssignment::Min)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn process_rloo_subtracts_the_leave_one_out_mean_return_of_the_group() {
    let r = vec![
        vec![0.0f32, 0.5, 1.0],
        vec![0.0, -1.0, 0.0],
        vec![0.0, 0.4, 0.0],
        vec![0.7, 0.0, 0.0],
    ];
    let s = vec![
        vec![0.0f32, 1.0, 1.0],
        vec![0.0, 1.0, 0.0],
        vec![0.0, 1.0, 0.0],
        vec![1.0, 0.0, 0.0],
    ];
    // Row 3 has an empty mask (e.g. a masked sample) in the group of row 2.
    let m = vec![
        vec![1.0f32; 3],
        vec![1.0; 3],
        vec![1.0, 1.0, 0.0],
        vec![0.0; 3],
    ];
    let group = [0, 0, 1, 1];
    let a = process_rloo_advantages(&r, &s, &m, &group, CreditAssignment::Min).unwrap();
    // Min-form returns: row 0 [0.5, 0.5, 1] (mean 2/3), row 1 [−1, −1, 0] (mean −2/3), row 2
    // [0.4, 0.4, 0] on 2 tokens (mean 0.4), row 3 none (mean 0).
    close(
        &a,
        &[
            vec![0.5 + 2.0 / 3.0, 0.5 + 2.0 / 3.0, 1.0 + 2.0 / 3.0],
            vec![-1.0 - 2.0 / 3.0, -1.0 - 2.0 / 3.0, -2.0 / 3.0],
            vec![0.4, 0.4, 0.0],
            vec![0.0; 3],
        ],
    );
    // Through the registry; a group of one keeps its returns.
    let input = AdvantageInput {
        token_level_rewards: &r[..1],
        response_mask: &m[..1],
        group: &[0],
        values: None,
        reward_baselines: None,
        step_mask: Some(&s[..1]),
    };
    let est = AdvantageEstimator::ProcessRloo {
        credit: CreditAssignment::Min,
    };
    let out = compute_advantages(&est, &input).unwrap();
    close(&out.advantages, &[vec![0.5, 0.5, 1.0]]);
    assert_eq!(out.returns, out.advantages);
    let err = compute_advantages(
        &est,
        &AdvantageInput {
            step_mask: None,
            ..input
        },
    )
    .unwrap_err();
    assert_eq!(
        err,
        AlgoError::MissingInput {
            what: "process_rloo",
            input: "step_mask"
        }
    );
    // The sum form needs no step mask: [1.5, 1.5, 1] with γ = 1.
    let sum = AdvantageEstimator::ProcessRloo {
        credit: CreditAssignment::Sum { gamma: 1.0 },
    };
    let out = compute_advantages(
        &sum,
        &AdvantageInput {
            step_mask: None,
            ..input
        },
    )
    .unwrap();
    close(&out.advantages, &[vec![1.5, 1.5, 1.0]]);
    assert!(
        compute_advantages(
            &AdvantageEstimator::ProcessRloo {
                credit: CreditAssignment::Sum { gamma: -0.1 }
            },
            &input
        )
        .is_err()
    );
    // Recipe form.
    let parsed: AdvantageEstimator =
        toml::from_str("name = \"process_rloo\"\ncredit = { form = \"sum\" }").unwrap();
    assert_eq!(parsed, sum);
    let parsed: AdvantageEstimator = toml::from_str("name = \"process_rloo\"").unwrap();
    assert_eq!(parsed, est);
}

#[test]
fn pure_step_reward_is_p_correct_minus_p_wrong() {
    assert_eq!(pure_step_reward(1.0), 1.0);
    assert_eq!(pure_step_reward(0.5), 0.0);
    assert_eq!(pure_step_reward(0.25), -0.5);
}

#[test]
fn prime_implicit_process_rewards_are_beta_times_the_log_ratio_on_the_mask() {
    let lp = vec![vec![-1.0f32, -2.0, -0.5], vec![-0.1, -0.2, -0.3]];
    let rf = vec![vec![-1.5f32, -1.0, -0.5], vec![-0.1, -0.4, -0.3]];
    let m = vec![vec![1.0f32, 1.0, 0.0], vec![0.0; 3]];
    let r = implicit_process_rewards(&lp, &rf, &m, 0.5).unwrap();
    close(&r, &[vec![0.25, -0.5, 0.0], vec![0.0; 3]]);
    assert!(implicit_process_rewards(&lp, &rf, &m, -1.0).is_err());
    assert!(implicit_process_rewards(&lp, &rf[..1], &m, 1.0).is_err());
}

#[test]
fn prime_implicit_prm_loss_is_the_outcome_cross_entropy_of_the_summed_log_ratio() {
    let dev = device();
    let lp = vec![vec![-1.0f32, -2.0], vec![-0.5, -0.5]];
    let rf = vec![vec![-1.5f32, -1.0], vec![-1.0, -1.0]];
    let m = vec![vec![1.0f32, 1.0], vec![1.0, 0.0]];
    let labels = |d: &rm_core::burn::tensor::Device| {
        Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 0.0], [2]), d)
    };
    let loss = |x: Tensor<2>| {
        let d = x.device();
        implicit_prm_loss(x, matrix(&rf, &d), matrix(&m, &d), labels(&d), 0.5).unwrap()
    };
    // R_0 = 0.5·(0.5 − 1) = −0.25 with y = 1, R_1 = 0.5·0.5 = 0.25 with y = 0: both terms are
    // −log σ(−0.25) = ln(1 + e^{0.25}).
    let got = scalar(loss(matrix(&lp, &dev)));
    let want = (1.0 + 0.25f64.exp()).ln();
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    // ∂L/∂lp_{i,t} = β·m_{i,t}·(σ(R_i) − y_i)/B.
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let g = gradient(&lp, &loss);
    let g0 = 0.5 * (sig(-0.25) - 1.0) / 2.0;
    let g1 = 0.5 * sig(0.25) / 2.0;
    close(&g, &[vec![g0, g0], vec![g1, 0.0]]);
    check_gradient(&lp, 2e-3, &loss);
    // Errors: β, shapes, an empty batch.
    let d = &dev;
    assert!(
        implicit_prm_loss(
            matrix(&lp, d),
            matrix(&rf, d),
            matrix(&m, d),
            labels(d),
            0.0
        )
        .is_err()
    );
    assert!(matches!(
        implicit_prm_loss(
            matrix(&lp, d),
            matrix(&rf[..1], d),
            matrix(&m, d),
            labels(d),
            1.0
        ),
        Err(AlgoError::ShapeMismatch {
            array: "ref_log_prob",
            ..
        })
    ));
    assert!(matches!(
        implicit_prm_loss(
            matrix(&lp, d),
            matrix(&rf, d),
            matrix(&m, d),
            Tensor::<1>::from_data(TensorData::new(vec![1.0f32], [1]), d),
            1.0
        ),
        Err(AlgoError::ShapeMismatch {
            array: "labels",
            ..
        })
    ));
}
