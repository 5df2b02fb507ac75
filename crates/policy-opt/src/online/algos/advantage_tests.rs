//! Hand-worked advantage cases: groups of one, all-equal groups, empty masks, non-adjacent
//! groups, closed forms for GAE / ReMax / batch-std GRPO, and the errors.

use super::*;

const EPS: f64 = 1e-6;

fn run(
    estimator: &AdvantageEstimator,
    rewards: &[Vec<f32>],
    mask: &[Vec<f32>],
    group: &[usize],
) -> Result<Advantages, AlgoError> {
    compute_advantages(
        estimator,
        &AdvantageInput {
            token_level_rewards: rewards,
            response_mask: mask,
            group,
            values: None,
            reward_baselines: None,
            step_mask: None,
        },
    )
}

fn grpo() -> AdvantageEstimator {
    AdvantageEstimator::Grpo {
        scale: GrpoScale::GroupStd,
        epsilon: EPS,
    }
}

fn close(a: f32, e: f64, tol: f64) {
    assert!(
        (f64::from(a) - e).abs() <= tol,
        "got {a}, expected {e} (tolerance {tol})"
    );
}

/// Outcome rewards on the last token of each row (rows of width 3, full masks).
fn outcome_rows(scores: &[f32]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let rewards = scores.iter().map(|&s| vec![0.0, 0.0, s]).collect();
    let mask = scores.iter().map(|_| vec![1.0; 3]).collect();
    (rewards, mask)
}

#[test]
fn a_group_of_one_keeps_its_score() {
    // Row 0 is alone in group 7; rows 1, 2 share group 3.
    let (rewards, mask) = outcome_rows(&[0.7, 1.0, 3.0]);
    let group = [7, 3, 3];
    let g = run(&grpo(), &rewards, &mask, &group).unwrap();
    // mean 0, std 1: 0.7 / (1 + ε).
    close(g.advantages[0][0], 0.7 / (1.0 + EPS), 1e-7);
    // the pair: ±1 / √2 (unbiased std of {1, 3} is √2).
    close(g.advantages[1][2], -1.0 / (2f64.sqrt() + EPS), 1e-6);
    for est in [
        AdvantageEstimator::Rloo,
        AdvantageEstimator::Opo,
        AdvantageEstimator::Grpo {
            scale: GrpoScale::None,
            epsilon: EPS,
        },
    ] {
        let out = run(&est, &rewards, &mask, &group).unwrap();
        assert_eq!(out.advantages[0], vec![0.7; 3], "{}", est.name());
    }
    // RLOO on the pair: s_i − s_j.
    let r = run(&AdvantageEstimator::Rloo, &rewards, &mask, &group).unwrap();
    close(r.advantages[1][0], -2.0, 1e-6);
    close(r.advantages[2][0], 2.0, 1e-6);
}

#[test]
fn an_all_equal_group_gets_zero_advantage() {
    let (rewards, mask) = outcome_rows(&[0.3, 0.3, 0.3, 1.0, 0.0]);
    let group = [0, 0, 0, 1, 1];
    for est in [
        grpo(),
        AdvantageEstimator::Rloo,
        AdvantageEstimator::Opo,
        AdvantageEstimator::Grpo {
            scale: GrpoScale::None,
            epsilon: EPS,
        },
    ] {
        let out = run(&est, &rewards, &mask, &group).unwrap();
        for i in 0..3 {
            assert!(
                out.advantages[i].iter().all(|&a| a.abs() < 1e-7),
                "{}: {:?}",
                est.name(),
                out.advantages[i]
            );
        }
        assert!(out.advantages[3][0] > 0.0 && out.advantages[4][0] < 0.0);
    }
}

#[test]
fn an_empty_mask_row_gets_zeros_but_counts_in_its_group() {
    let rewards = vec![vec![0.0, 1.0], vec![0.0, 0.0], vec![0.0, 2.0]];
    let mask = vec![vec![1.0, 1.0], vec![0.0, 0.0], vec![1.0, 1.0]];
    let group = [0, 0, 0];
    let g = run(&grpo(), &rewards, &mask, &group).unwrap();
    // scores {1, 0, 2}: mean 1, std 1.
    assert_eq!(g.advantages[1], vec![0.0, 0.0]);
    close(g.advantages[0][0], 0.0, 1e-7);
    close(g.advantages[2][1], 1.0 / (1.0 + EPS), 1e-7);
    // OPO's length-weighted baseline ignores the empty row: (2·1 + 2·2) / 4 = 1.5.
    let o = run(&AdvantageEstimator::Opo, &rewards, &mask, &group).unwrap();
    close(o.advantages[0][0], -0.5, 1e-7);
    close(o.advantages[2][0], 0.5, 1e-7);
    assert_eq!(o.advantages[1], vec![0.0, 0.0]);
    // A group whose only rows are empty: zeros, no NaN.
    let o = run(
        &AdvantageEstimator::Opo,
        &[rewards[1].clone(), rewards[1].clone()],
        &[mask[1].clone(), mask[1].clone()],
        &[4, 4],
    )
    .unwrap();
    assert!(o.advantages.iter().flatten().all(|&a| a == 0.0));
    // Whitening estimators skip the empty row's tokens and zero it.
    let b = run(
        &AdvantageEstimator::ReinforcePlusPlusBaseline,
        &rewards,
        &mask,
        &group,
    )
    .unwrap();
    assert_eq!(b.advantages[1], vec![0.0, 0.0]);
    // centred scores {0, ·, 1} on 4 tokens: mean 0.5, unbiased var 1/3.
    close(b.advantages[2][0], 0.5 / (1.0f64 / 3.0 + 1e-8).sqrt(), 1e-5);
}

#[test]
fn groups_need_not_be_adjacent() {
    let (rewards, mask) = outcome_rows(&[1.0, 5.0, 2.0, 7.0]);
    let interleaved = run(&grpo(), &rewards, &mask, &[0, 1, 0, 1]).unwrap();
    let order = [0usize, 2, 1, 3];
    let permuted: Vec<Vec<f32>> = order.iter().map(|&i| rewards[i].clone()).collect();
    let adjacent = run(&grpo(), &permuted, &mask, &[0, 0, 1, 1]).unwrap();
    for (k, &i) in order.iter().enumerate() {
        assert_eq!(interleaved.advantages[i], adjacent.advantages[k]);
    }
    close(
        interleaved.advantages[0][0],
        -0.5 / (0.5f64.sqrt() + EPS),
        1e-6,
    );
}

#[test]
fn batch_std_grpo_divides_by_the_batch_spread() {
    let (rewards, mask) = outcome_rows(&[1.0, 3.0, 0.0, 4.0]);
    let est = AdvantageEstimator::Grpo {
        scale: GrpoScale::BatchStd,
        epsilon: EPS,
    };
    let out = run(&est, &rewards, &mask, &[0, 0, 1, 1]).unwrap();
    // group means 2, 2; batch std of {1, 3, 0, 4} = √(10/3).
    let std = (10.0f64 / 3.0).sqrt() + EPS;
    for (i, centred) in [-1.0, 1.0, -2.0, 2.0].into_iter().enumerate() {
        close(out.advantages[i][1], centred / std, 1e-6);
    }
}

#[test]
fn gae_matches_the_hand_worked_recursion() {
    let rewards = vec![vec![0.0, 0.0, 1.0, 0.0], vec![0.5, 0.0, 0.0, 0.0]];
    let values = vec![vec![0.5, 0.5, 0.5, 9.0], vec![0.2, 0.1, 0.0, 0.0]];
    let mask = vec![vec![1.0, 1.0, 1.0, 0.0], vec![1.0, 1.0, 0.0, 0.0]];
    let est = AdvantageEstimator::Gae {
        gamma: 0.9,
        lam: 0.8,
    };
    let out = compute_advantages(
        &est,
        &AdvantageInput {
            token_level_rewards: &rewards,
            response_mask: &mask,
            group: &[],
            values: Some(&values),
            reward_baselines: None,
            step_mask: None,
        },
    )
    .unwrap();
    // Row 0 (the value 9 off the mask is skipped): δ = (−0.05, −0.05, 0.5),
    // Â₂ = 0.5, Â₁ = −0.05 + 0.72·0.5 = 0.31, Â₀ = −0.05 + 0.72·0.31 = 0.1732.
    let a0 = [0.1732, 0.31, 0.5];
    // Row 1: δ₁ = 0 − 0.1 = −0.1, δ₀ = 0.5 + 0.09 − 0.2 = 0.39; Â₁ = −0.1, Â₀ = 0.39 − 0.072.
    let a1 = [0.39 - 0.072, -0.1];
    for (&r, a) in out.returns[0].iter().zip(a0) {
        close(r, a + 0.5, 1e-6);
    }
    close(out.returns[1][0], a1[0] + 0.2, 1e-6);
    close(out.returns[1][1], a1[1] + 0.1, 1e-6);
    // Whitened over the 5 response tokens.
    let raw: Vec<f64> = a0.iter().chain(&a1).copied().collect();
    let mean = raw.iter().sum::<f64>() / 5.0;
    let var = raw.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0;
    close(
        out.advantages[0][0],
        (a0[0] - mean) / (var + 1e-8).sqrt(),
        1e-5,
    );
    close(
        out.advantages[1][1],
        (a1[1] - mean) / (var + 1e-8).sqrt(),
        1e-5,
    );
}

#[test]
fn remax_subtracts_the_greedy_reward_on_the_mask() {
    let rewards = vec![vec![0.0, 0.5, 1.0]];
    let mask = vec![vec![1.0, 1.0, 0.0]];
    let out = compute_advantages(
        &AdvantageEstimator::Remax,
        &AdvantageInput {
            token_level_rewards: &rewards,
            response_mask: &mask,
            group: &[],
            values: None,
            reward_baselines: Some(&[0.3]),
            step_mask: None,
        },
    )
    .unwrap();
    assert_eq!(out.returns, vec![vec![0.5, 0.5, 0.0]]);
    close(out.advantages[0][0], 0.2, 1e-7);
    close(out.advantages[0][1], 0.2, 1e-7);
    assert_eq!(out.advantages[0][2], 0.0);
}

#[test]
fn reinforce_pp_discounts_and_resets_after_the_response() {
    let rewards = vec![vec![1.0, 0.0, 2.0, 5.0], vec![0.0, 1.0, 0.0, 0.0]];
    let mask = vec![vec![1.0, 1.0, 1.0, 0.0], vec![1.0, 1.0, 0.0, 0.0]];
    let out = run(
        &AdvantageEstimator::ReinforcePlusPlus { gamma: 0.5 },
        &rewards,
        &mask,
        &[],
    )
    .unwrap();
    // Row 0: G₃ = 5 (off the mask, reset), G₂ = 2, G₁ = 1, G₀ = 1.5.
    assert_eq!(out.returns[0], vec![1.5, 1.0, 2.0, 5.0]);
    assert_eq!(out.returns[1], vec![0.5, 1.0, 0.0, 0.0]);
    assert_eq!(out.advantages[0][3], 0.0);
    let total: f64 = out.advantages.iter().flatten().map(|&x| f64::from(x)).sum();
    assert!(total.abs() < 1e-5, "whitened advantages sum to {total}");
}

#[test]
fn errors_name_the_input() {
    let (rewards, mask) = outcome_rows(&[1.0, 2.0]);
    let err = run(&grpo(), &rewards, &mask, &[0]).unwrap_err();
    assert_eq!(
        err,
        AlgoError::ShapeMismatch {
            what: "grpo",
            array: "group",
            expected: vec![2],
            actual: vec![1]
        }
    );
    let short = vec![vec![1.0; 3], vec![1.0; 2]];
    let err = run(&grpo(), &rewards, &short, &[0, 0]).unwrap_err();
    assert!(matches!(
        err,
        AlgoError::RaggedRows {
            array: "response_mask",
            row: 1,
            len: 2,
            expected: 3,
            ..
        }
    ));
    let err = run(
        &AdvantageEstimator::Gae {
            gamma: 1.0,
            lam: 1.0,
        },
        &rewards,
        &mask,
        &[],
    )
    .unwrap_err();
    assert_eq!(
        err,
        AlgoError::MissingInput {
            what: "gae",
            input: "values"
        }
    );
    let err = run(&AdvantageEstimator::Remax, &rewards, &mask, &[]).unwrap_err();
    assert!(matches!(
        err,
        AlgoError::MissingInput {
            input: "reward_baselines",
            ..
        }
    ));
    let err = run(
        &AdvantageEstimator::Gae {
            gamma: 1.5,
            lam: 1.0,
        },
        &rewards,
        &mask,
        &[],
    )
    .unwrap_err();
    assert!(matches!(
        err,
        AlgoError::InvalidParameter {
            parameter: "gamma",
            ..
        }
    ));
    let one = vec![vec![1.0, 0.0, 0.0]];
    let err = run(
        &AdvantageEstimator::ReinforcePlusPlus { gamma: 1.0 },
        &rewards[..1],
        &one,
        &[],
    )
    .unwrap_err();
    assert_eq!(
        err,
        AlgoError::TooFewTokens {
            what: "reinforce_plus_plus",
            tokens: 1
        }
    );
    assert!(err.to_string().contains("at least 2 response tokens"));
}

#[test]
fn estimators_read_from_toml_recipes() {
    let parse = |s: &str| toml::from_str::<AdvantageEstimator>(s);
    assert_eq!(parse("name = \"grpo\"").unwrap(), grpo());
    assert_eq!(
        parse("name = \"grpo\"\nscale = \"none\"\nepsilon = 1e-4").unwrap(),
        AdvantageEstimator::Grpo {
            scale: GrpoScale::None,
            epsilon: 1e-4
        }
    );
    assert_eq!(
        parse("name = \"gae\"\ngamma = 1.0\nlam = 0.95").unwrap(),
        AdvantageEstimator::Gae {
            gamma: 1.0,
            lam: 0.95
        }
    );
    assert_eq!(
        parse("name = \"reinforce_plus_plus_baseline\"").unwrap(),
        AdvantageEstimator::ReinforcePlusPlusBaseline
    );
    assert!(
        parse("name = \"grpo\"\nbeta = 1.0").is_err(),
        "unknown field"
    );
    assert!(parse("name = \"ppo\"").is_err(), "unknown estimator");
}

/// Online RAFT keeps the best `top_k` of each group (ties to the earlier row), broadcast on the
/// response mask; other rows, padding and groups with nothing to rank get 0; `top_k = 0` is
/// refused.
#[test]
fn raft_selects_the_best_of_each_group() {
    let rewards = vec![
        vec![0.0, 0.2],
        vec![0.0, 0.9],
        vec![0.9, 0.0],
        vec![0.0, 0.1],
        vec![0.5, 0.0],
        vec![0.0, 0.0],
        vec![0.0, 0.0],
        vec![0.3, 0.0],
    ];
    let mask = vec![
        vec![1.0, 1.0],
        vec![1.0, 1.0],
        vec![1.0, 0.0],
        vec![1.0, 1.0],
        vec![1.0, 1.0],
        vec![1.0, 1.0],
        vec![1.0, 1.0],
        vec![1.0, 1.0],
    ];
    // Group 2 is all failures (nothing to rank), group 3 a group of one.
    let group = [0, 0, 0, 1, 1, 2, 2, 3];
    let top1 = run(
        &AdvantageEstimator::Raft { top_k: 1 },
        &rewards,
        &mask,
        &group,
    )
    .unwrap();
    // Group 0: rows 1 and 2 tie at 0.9, row 1 is earlier; group 1: row 4 (0.5 > 0.1).
    assert_eq!(
        top1.advantages,
        vec![
            vec![0.0, 0.0],
            vec![1.0, 1.0],
            vec![0.0, 0.0],
            vec![0.0, 0.0],
            vec![1.0, 1.0],
            vec![0.0, 0.0],
            vec![0.0, 0.0],
            vec![0.0, 0.0],
        ]
    );
    let top2 = run(
        &AdvantageEstimator::Raft { top_k: 2 },
        &rewards,
        &mask,
        &group,
    )
    .unwrap();
    assert_eq!(
        top2.advantages[2],
        vec![1.0, 0.0],
        "row 2 joins, masked at t = 1"
    );
    assert_eq!(
        top2.advantages[3],
        vec![1.0, 1.0],
        "a group of two keeps both"
    );
    assert_eq!(top2.advantages[0], vec![0.0, 0.0]);
    let err = run(
        &AdvantageEstimator::Raft { top_k: 0 },
        &rewards,
        &mask,
        &group,
    )
    .unwrap_err();
    assert!(err.to_string().contains("top_k"), "{err}");
    let parsed: AdvantageEstimator = toml::from_str("name = \"raft\"").unwrap();
    assert_eq!(parsed, AdvantageEstimator::Raft { top_k: 1 });
}
