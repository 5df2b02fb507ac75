//! Parity with TRL: every case of `trl_dpo.json` (computed by `trl` 1.16's own
//! `DPOTrainer._compute_loss`, float32) must come out of [`dpo_loss`] within 1e-5, absolute, or
//! relative where `|loss| > 1`.
//!
//! The cases are read from `$PLUMB_GOLDEN_DIR/trl_dpo.json`, else `../shared/golden` beside the
//! repository (`rm_core::paths::for_tests::golden_dir`). Each case's `config` deserialises into
//! [`DpoConfig`] under TRL's own field names, so an unknown `loss_type` or field fails the test.

use rm_core::burn::tensor::{Device, Tensor, TensorData};
use rm_core::device::test_device;
use rm_core::paths::for_tests::golden_dir;
use rm_losses::{DpoBatch, DpoConfig, dpo_loss};
use serde::Deserialize;

const FILE: &str = "trl_dpo.json";
const TOLERANCE: f64 = 1e-5;
const CASES: usize = 37;

#[derive(Deserialize)]
struct Golden {
    source: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    config: serde_json::Value,
    completion_mask: Vec<Vec<f32>>,
    policy_logps: Vec<Vec<f32>>,
    ref_logps: Vec<Vec<f32>>,
    log_sum_sq_probs: Option<Vec<Vec<f32>>>,
    loss: f64,
}

fn matrix(rows: &[Vec<f32>], device: &Device) -> Tensor<2> {
    let width = rows.first().map_or(0, Vec::len);
    assert!(rows.iter().all(|r| r.len() == width), "ragged matrix");
    let values: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(values, [rows.len(), width]), device)
}

/// Absolute error, or relative where the expected loss exceeds 1 in magnitude.
fn error(actual: f64, expected: f64) -> f64 {
    let diff = (actual - expected).abs();
    if expected.abs() > 1.0 {
        diff / expected.abs()
    } else {
        diff
    }
}

#[test]
fn dpo_loss_matches_trl_on_every_golden_case() {
    let path = golden_dir().join(FILE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the TRL golden cases at {} ({e}); set PLUMB_GOLDEN_DIR to the folder \
             holding {FILE}",
            path.display()
        )
    });
    let golden: Golden = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not the trl_dpo layout: {e}", path.display()));
    println!(
        "{}: {} cases from {}",
        path.display(),
        golden.cases.len(),
        golden.source
    );
    assert!(!golden.cases.is_empty(), "{}: no cases", path.display());
    if golden.cases.len() != CASES {
        println!(
            "note: {} cases, the shipped file has {CASES}",
            golden.cases.len()
        );
    }

    let device = test_device();
    let mut worst = (0.0f64, usize::MAX);
    let mut failures = Vec::new();
    for (i, case) in golden.cases.iter().enumerate() {
        let config: DpoConfig = serde_json::from_value(case.config.clone()).unwrap_or_else(|e| {
            panic!(
                "case {i}: config {} is not TRL's DPOConfig: {e}",
                case.config
            )
        });
        let mut batch = DpoBatch::new(
            matrix(&case.policy_logps, &device),
            matrix(&case.ref_logps, &device),
            matrix(&case.completion_mask, &device),
        );
        if let Some(lssp) = &case.log_sum_sq_probs {
            batch = batch.with_log_sum_sq_probs(matrix(lssp, &device));
        }
        let out =
            dpo_loss(&config, batch).unwrap_or_else(|e| panic!("case {i} ({}): {e}", case.config));
        let actual = f64::from(out.loss.into_scalar::<f32>());
        let err = error(actual, case.loss);
        println!(
            "case {i:2} {:<90} loss {actual:>12.7} expected {:>12.7} error {err:.2e}",
            case.config.to_string(),
            case.loss
        );
        // A NaN error fails too.
        if err.is_nan() || err > TOLERANCE {
            failures.push(format!(
                "case {i} {}: {actual} vs {} (error {err:.2e})",
                case.config, case.loss
            ));
        }
        if err.is_nan() || err > worst.0 || worst.1 == usize::MAX {
            worst = (err, i);
        }
    }
    println!(
        "worst error over {} cases: {:.3e} (case {})",
        golden.cases.len(),
        worst.0,
        worst.1
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from TRL by more than {TOLERANCE}:\n{}",
        failures.len(),
        golden.cases.len(),
        failures.join("\n")
    );
}
