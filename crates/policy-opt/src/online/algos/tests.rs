//! Parity with verl (`verl_rl.json`, computed by verl's own `core_algos.py` in float32): every
//! case within 1e-5. The cases are read from `$PLUMB_GOLDEN_DIR/verl_rl.json`, else
//! `../shared/golden` beside the repository.

use std::collections::HashMap;

use rm_core::paths::for_tests::golden_dir;
use serde_json::Value;

use super::testing::{device, matrix, rows, scalar};
use super::*;

const FILE: &str = "verl_rl.json";
const TOLERANCE: f64 = 1e-5;

fn load() -> Vec<Value> {
    let path = golden_dir().join(FILE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the verl golden cases at {} ({e}); set PLUMB_GOLDEN_DIR to the folder \
             holding {FILE}",
            path.display()
        )
    });
    let v: Value = serde_json::from_str(&text).expect("verl_rl.json is JSON");
    v["cases"].as_array().expect("a `cases` array").clone()
}

fn grid(v: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).expect("a [B][T] array of numbers")
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("a number")
}

/// The group ids of a case (strings such as "p1") as dense integers.
fn group_ids(v: &Value) -> Vec<usize> {
    let mut ids: HashMap<String, usize> = HashMap::new();
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|g| {
                    let key = g.to_string();
                    let next = ids.len();
                    *ids.entry(key).or_insert(next)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn worst_grid(actual: &[Vec<f32>], expected: &[Vec<f32>]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "row count");
    actual
        .iter()
        .zip(expected)
        .flat_map(|(a, e)| {
            assert_eq!(a.len(), e.len(), "row width");
            a.iter().zip(e).map(|(x, y)| f64::from(x - y).abs())
        })
        .fold(0.0, f64::max)
}

fn aggregation(v: &Value) -> LossAggregation {
    serde_json::from_value(v.clone()).expect("a known loss_agg_mode")
}

/// Runs one case; returns (label, worst absolute error).
fn run_case(case: &Value) -> (String, f64) {
    let kind = case["kind"].as_str().unwrap();
    let dev = device();
    match kind {
        "advantage" => {
            let name = case["estimator"].as_str().unwrap();
            let estimator = match name {
                "gae" => AdvantageEstimator::Gae {
                    gamma: num(&case["gamma"]),
                    lam: num(&case["lam"]),
                },
                "grpo" => AdvantageEstimator::Grpo {
                    scale: GrpoScale::GroupStd,
                    epsilon: 1e-6,
                },
                "grpo_no_std" => AdvantageEstimator::Grpo {
                    scale: GrpoScale::None,
                    epsilon: 1e-6,
                },
                "rloo" => AdvantageEstimator::Rloo,
                "reinforce_plus_plus_baseline" => AdvantageEstimator::ReinforcePlusPlusBaseline,
                "opo" => AdvantageEstimator::Opo,
                "reinforce_plus_plus" => AdvantageEstimator::ReinforcePlusPlus {
                    gamma: num(&case["gamma"]),
                },
                "remax" => AdvantageEstimator::Remax,
                other => panic!("unknown estimator {other}"),
            };
            let rewards = grid(&case["token_level_rewards"]);
            let mask = grid(&case["response_mask"]);
            let group = group_ids(&case["group"]);
            let values = case.get("values").map(grid);
            let baselines: Option<Vec<f32>> = case
                .get("reward_baselines")
                .map(|v| serde_json::from_value(v.clone()).unwrap());
            let out = compute_advantages(
                &estimator,
                &AdvantageInput {
                    token_level_rewards: &rewards,
                    response_mask: &mask,
                    group: &group,
                    values: values.as_deref(),
                    reward_baselines: baselines.as_deref(),
                    step_mask: None,
                },
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let err = worst_grid(&out.advantages, &grid(&case["advantages"]))
                .max(worst_grid(&out.returns, &grid(&case["returns"])));
            (format!("advantage {name}"), err)
        }
        "policy_loss" => {
            let name = case["loss"].as_str().unwrap();
            let low = num(&case["clip_ratio_low"]);
            let high = num(&case["clip_ratio_high"]);
            let loss = match name {
                "vanilla" => PolicyLoss::Vanilla {
                    clip_ratio_low: low,
                    clip_ratio_high: high,
                    clip_ratio_c: Some(num(&case["clip_ratio_c"])),
                },
                "gspo" => PolicyLoss::Gspo {
                    clip_ratio_low: low,
                    clip_ratio_high: high,
                },
                "cispo" => PolicyLoss::Cispo {
                    clip_ratio_low: low,
                    clip_ratio_high: high,
                },
                other => panic!("unknown loss {other}"),
            };
            let mode = aggregation(&case["loss_agg_mode"]);
            let m = |k: &str| matrix(&grid(&case[k]), &dev);
            let out = policy_loss(
                &loss,
                mode,
                m("old_log_prob"),
                m("log_prob"),
                m("advantages"),
                m("response_mask"),
                None,
            )
            .unwrap();
            let metrics = &case["metrics"];
            let errs = [
                (scalar(out.loss) - num(&case["expected"])).abs(),
                (scalar(out.clipfrac) - num(&metrics["actor/pg_clipfrac"])).abs(),
                (scalar(out.ppo_kl) - num(&metrics["actor/ppo_kl"])).abs(),
                (scalar(out.clipfrac_lower) - num(&metrics["actor/pg_clipfrac_lower"])).abs(),
            ];
            (
                format!("policy_loss {name} {}", mode.name()),
                errs.into_iter().fold(0.0, f64::max),
            )
        }
        "kl" => {
            let estimator: KlEstimator = serde_json::from_value(case["estimator"].clone()).unwrap();
            let out = kl_penalty(
                estimator,
                matrix(&grid(&case["log_prob"]), &dev),
                matrix(&grid(&case["ref_log_prob"]), &dev),
            );
            let err = worst_grid(&rows(out), &grid(&case["expected"]));
            (format!("kl {estimator:?}"), err)
        }
        "value_loss" => {
            let mode = aggregation(&case["loss_agg_mode"]);
            let m = |k: &str| matrix(&grid(&case[k]), &dev);
            let out = clipped_value_loss(
                m("vpreds"),
                m("values"),
                m("returns"),
                m("response_mask"),
                num(&case["cliprange_value"]),
                mode,
                None,
            )
            .unwrap();
            let err = (scalar(out.loss) - num(&case["expected"]))
                .abs()
                .max((scalar(out.clipfrac) - num(&case["clipfrac"])).abs());
            (format!("value_loss {}", mode.name()), err)
        }
        other => panic!("unknown kind {other}"),
    }
}

#[test]
fn every_verl_golden_case_within_1e_5() {
    let cases = load();
    assert!(!cases.is_empty(), "no cases");
    let mut worst = (0.0f64, String::new());
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (label, err) = run_case(case);
        println!("case {i:2} {label:<45} worst error {err:.3e}");
        if err > worst.0 {
            worst = (err, format!("case {i} ({label})"));
        }
        if err > TOLERANCE || err.is_nan() {
            failures.push(format!("case {i} ({label}): {err:.3e}"));
        }
    }
    println!(
        "{} cases, worst error {:.3e} at {}",
        cases.len(),
        worst.0,
        worst.1
    );
    assert!(failures.is_empty(), "beyond {TOLERANCE}: {failures:#?}");
}
