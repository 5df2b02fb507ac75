//! Training on noisy preferences, end to end on the tiny in-code Llama of `rm_core::fixtures`,
//! with injected label noise (`[data] label_noise`):
//! - collaborative reward modeling: two models trained by peer review, the reviewers' withheld
//!   pairs checked against the flipped ones, the two-member ensemble it writes, exact resume of
//!   the curriculum, the recipe refusals;
//! - `[preference_strength]`: a judge's vote flips the noisy pairs back and sets adaptive
//!   margins;
//! - `[more]`: a second preference set that disagrees, weighted by MORE.

use std::path::{Path, PathBuf};

use rm_core::train::RunMode;
use rm_core::train::metrics::{read_records, without_wall_time};
use rm_pipeline::RewardRecipe;
use rm_pipeline::collaborative::train_collaborative;
use rm_pipeline::ensemble::{Aggregation, EnsembleSpec};

mod common;

use common::{request, write_pairs};

fn tmp(name: &str) -> PathBuf {
    common::tmp(&format!("crm-{name}"))
}

fn recipe(root: &Path, out: &str, extra: &[&str]) -> RewardRecipe {
    recipe_with(root, out, extra, COLLABORATIVE)
}

const COLLABORATIVE: &str = "[collaborative]\ndrop_rate = 0.375\nramp = 0.25\n";

fn recipe_with(root: &Path, out: &str, extra: &[&str], section: &str) -> RewardRecipe {
    let text = format!(
        r#"
[model]
backbone = {backbone:?}
max_len = 24
truncation = "left"
attributes = ["reward"]
template = "plain"
head_init_std = 0.5
[data]
train = {{ source = "jsonl", path = {train:?} }}
eval = {{ source = "jsonl", path = {dev:?} }}
label_noise = {{ rate = 0.25, seed = 3 }}
[train]
epochs = 3
batch_size = 8
lr = 1e-2
seed = 5
eval_every = 0
out_dir = {out:?}
[eval]
batch_size = 8
{section}
"#,
        backbone = root.join("base").display().to_string(),
        train = root.join("train.jsonl").display().to_string(),
        dev = root.join("dev.jsonl").display().to_string(),
        out = root.join(out).display().to_string(),
    );
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    rm_core::recipe::parse(&text, "collaborative-test", &overrides).unwrap()
}

fn setup(name: &str) -> PathBuf {
    let root = tmp(name);
    rm_core::fixtures::write_tiny_llama(&root.join("base"), 5).unwrap();
    write_pairs(&root.join("train.jsonl"), 32);
    write_pairs(&root.join("dev.jsonl"), 8);
    root
}

fn train_records(out: &Path) -> Vec<serde_json::Value> {
    read_records(&out.join("metrics.jsonl"), "train")
        .unwrap()
        .into_iter()
        .map(without_wall_time)
        .collect()
}

fn values(records: &[serde_json::Value], key: &str) -> Vec<f64> {
    records
        .iter()
        .filter_map(|r| r.get(key).and_then(|v| v.as_f64()))
        .collect()
}

/// A quarter of the training labels are flipped. Peer review withholds mostly those pairs once
/// the models have learnt the pattern, both models learn it anyway, and the pair is written as
/// a two-member ensemble with both members normalized.
#[test]
fn peers_withhold_the_flipped_pairs_and_both_learn_through_the_noise() {
    let _seeded = rm_core::device::seeded_test_lock();
    let root = setup("learn");
    let report =
        train_collaborative(recipe(&root, "crm", &[]), &request(&root, RunMode::Fresh)).unwrap();
    assert_eq!(report.flipped_pairs, 8, "round(0.25 · 32) labels flipped");
    assert_eq!(report.outcome.steps, 12, "3 epochs of 4 steps");

    let records = train_records(&report.out_dir);
    let drop = values(&records, "peer/drop");
    // 12 steps, ramp over the first 3: 0, 1/3, 2/3 of 0.375, then 0.375.
    assert_eq!(drop.len(), 12);
    assert_eq!(drop[0], 0.0);
    assert!((drop[1] - 0.125).abs() < 1e-9, "{drop:?}");
    assert!(
        drop[3..].iter().all(|d| (d - 0.375).abs() < 1e-9),
        "{drop:?}"
    );
    // The flipped pairs are a quarter of the data; the reviewers' withheld pairs in the last
    // epoch are mostly flipped ones.
    let noisy = values(&records, "peer/noisy_dropped");
    assert_eq!(noisy.len(), 11, "no pair is withheld at step 0");
    let late: f64 = noisy[noisy.len() - 4..].iter().sum::<f64>() / 4.0;
    assert!(
        late > 0.6,
        "share of withheld pairs that were flipped: {noisy:?}"
    );
    let agreement = values(&records, "peer/agreement");
    assert!(agreement.iter().all(|a| (0.0..=1.0).contains(a)));

    // Both members rank the dev pairs correctly (the clean pattern won over the noise).
    let ev = &report.evaluation;
    assert_eq!(ev.members.len(), 2);
    assert_eq!(ev.normalized, [true, true]);
    for m in &ev.members {
        assert!(m.accuracy >= 0.99, "{}: {}", m.name, m.accuracy);
    }
    let spec = EnsembleSpec::read(&report.final_dir).unwrap();
    assert_eq!(
        spec.members,
        [PathBuf::from("member-0"), PathBuf::from("member-1")]
    );
    assert_eq!(spec.aggregation, Aggregation::Mean);
    assert!(report.out_dir.join("best/ensemble.json").is_file());
    assert!(report.out_dir.join("report.md").is_file());
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report.out_dir.join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["flipped_training_pairs"], 8);
    // The two members differ (different head seeds).
    let a = std::fs::read(report.final_dir.join("member-0/model.safetensors")).unwrap();
    let b = std::fs::read(report.final_dir.join("member-1/model.safetensors")).unwrap();
    assert_ne!(a, b);
}

/// Stopped after 5 steps and resumed, the run logs exactly what the uninterrupted one does:
/// the curriculum's clock comes back from the checkpoint.
#[test]
fn a_stopped_collaborative_run_resumes_exactly() {
    let _seeded = rm_core::device::seeded_test_lock();
    let root = setup("resume");
    let save_every = "train.save_every=1";
    let whole = train_collaborative(
        recipe(&root, "whole", &[save_every]),
        &request(&root, RunMode::Fresh),
    )
    .unwrap();
    train_collaborative(
        recipe(&root, "split", &[save_every, "train.max_steps=5"]),
        &request(&root, RunMode::Fresh),
    )
    .unwrap();
    let resumed = train_collaborative(
        recipe(&root, "split", &[save_every]),
        &request(
            &root,
            RunMode::Resume {
                allow_changes: false,
            },
        ),
    )
    .unwrap();
    assert_eq!(resumed.outcome.steps, whole.outcome.steps);
    assert_eq!(
        train_records(&resumed.out_dir),
        train_records(&whole.out_dir)
    );
    let drop = values(&train_records(&resumed.out_dir), "peer/drop");
    assert!((drop[5] - 0.375).abs() < 1e-9, "{drop:?}");
}

#[test]
fn collaborative_recipes_are_checked() {
    let root = setup("refuse");
    for (set, needle) in [
        ("collaborative.drop_rate=1.0", "drop_rate"),
        ("collaborative.ramp=2.0", "ramp"),
        ("data.label_noise.rate=1.0", "label_noise.rate"),
        ("collaborative.peer_seed=5", "peer_seed"),
        ("ensemble={ members = 2 }", "[collaborative]"),
    ] {
        let err = train_collaborative(
            recipe(&root, "bad", &[set]),
            &request(&root, RunMode::Fresh),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains(needle), "{set}: {err:#}");
    }
    // The plain trainer refuses the section instead of ignoring it.
    let err = rm_pipeline::train_reward_model(
        recipe(&root, "plain", &[]),
        &request(&root, RunMode::Fresh),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("train_collaborative"),
        "{err:#}"
    );
}

/// A judge trained on clean pairs votes on a training set with a quarter of its labels flipped:
/// `flip = below 0` flips back exactly the noisy pairs, every pair gets the margin `μ̂`, and the
/// model trained on the result learns the pattern.
#[test]
fn an_ensemble_vote_flips_the_noisy_pairs_back_and_sets_margins() {
    let _seeded = rm_core::device::seeded_test_lock();
    let root = setup("strength");
    let judge = recipe_with(
        &root,
        "judge",
        &["data.label_noise.rate=0.0", "train.epochs=4"],
        "",
    );
    let judge = rm_pipeline::train_reward_model(judge, &request(&root, RunMode::Fresh)).unwrap();
    assert!(judge.report.overall >= 0.99, "{}", judge.report.overall);
    let section = format!(
        "[preference_strength]\nensemble = {:?}\nflip = {{ rule = \"below\", threshold = 0.0 }}\nadaptive_margin = 1.0\n",
        judge.final_dir.display().to_string()
    );
    let student = recipe_with(
        &root,
        "student",
        &["objective={ kind = \"bradley-terry\", margin = true }"],
        &section,
    );
    let report = rm_pipeline::train_reward_model(student, &request(&root, RunMode::Fresh)).unwrap();
    let s = report.preference_strength.as_ref().unwrap();
    assert_eq!((s.members, s.pairs), (1, 32));
    assert_eq!(
        s.voted_against, 8,
        "the judge disagrees with exactly the flipped pairs"
    );
    assert_eq!((s.flipped, s.flipped_injected), (8, Some(8)));
    assert!(s.mean_margin.unwrap() > 0.0);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&s.file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 32);
    for r in &rows {
        // A flipped pair's margin is −μ̂ > 0: after the flip every margin is positive.
        assert_eq!(r["flipped"], r["injected_noise"]);
        assert!(r["margin"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(report.report.overall >= 0.99, "{}", report.report.overall);
}

#[test]
fn preference_strength_sections_are_checked() {
    let root = setup("strength-refuse");
    let judge = root.join("nowhere").display().to_string();
    for (section, extra, needle) in [
        (
            format!("[preference_strength]\nensemble = {judge:?}\nadaptive_margin = 1.0\n"),
            "train.seed=5",
            "objective.margin = true",
        ),
        (
            format!("[preference_strength]\nensemble = {judge:?}\n"),
            "train.seed=5",
            "neither flip nor adaptive_margin",
        ),
        (
            format!(
                "[preference_strength]\nensemble = {judge:?}\nflip = {{ rule = \"below\", threshold = 1.0 }}\n"
            ),
            "train.seed=5",
            "threshold",
        ),
        (
            format!(
                "[preference_strength]\nensemble = {judge:?}\nflip = {{ rule = \"lowest\", fraction = 0.1 }}\n"
            ),
            "train.seed=5",
            "nowhere",
        ),
    ] {
        let r = recipe_with(&root, "bad", &[extra], &section);
        let err = rm_pipeline::train_reward_model(r, &request(&root, RunMode::Fresh)).unwrap_err();
        assert!(format!("{err:#}").contains(needle), "{section}: {err:#}");
    }
}

/// Pairs whose chosen response is the longer one (no `w7` pattern): a preference set that
/// disagrees with `write_pairs` on what matters.
fn write_longer_pairs(path: &Path, n: usize) {
    let rows: String = (0..n)
        .map(|i| {
            let filler = format!("w{}", 10 + i % 30);
            format!(
                "{{\"prompt\": \"w3 w5 {filler}\", \"chosen\": \"w8 {filler} w9 w12 w13 w14\", \"rejected\": \"w7 {filler}\"}}\n"
            )
        })
        .collect();
    std::fs::write(path, rows).unwrap();
}

fn more_recipe(root: &Path, out: &str, extra: &[&str]) -> RewardRecipe {
    let section = format!(
        "[more]\nsources = [{{ source = \"jsonl\", path = {:?} }}]\nmomentum = 0.5\nnormalize = \"none\"\n",
        root.join("longer.jsonl").display().to_string()
    );
    let mut overrides = vec!["data.label_noise.rate=0.0", "train.save_every=1"];
    overrides.extend_from_slice(extra);
    recipe_with(root, out, &overrides, &section)
}

/// Two preference sets, 32 `w7` pairs and 16 that prefer the opposite: MORE's weights sum to 1
/// over the batches holding both and move to the set the model can fit, the model learns the
/// first set's preference, the run resumes exactly (the gradient averages are in the
/// checkpoint), and every evaluation reports the calibration error.
#[test]
fn more_weights_two_preference_sets_and_resumes_exactly() {
    let _seeded = rm_core::device::seeded_test_lock();
    let root = setup("more");
    write_longer_pairs(&root.join("longer.jsonl"), 16);
    let whole = rm_pipeline::train_reward_model(
        more_recipe(&root, "whole", &[]),
        &request(&root, RunMode::Fresh),
    )
    .unwrap();
    assert_eq!(whole.outcome.steps, 18, "3 epochs of ⌈48 / 8⌉ steps");
    let records = train_records(&whole.out_dir);
    let (l0, l1) = (
        values(&records, "more/lambda_0"),
        values(&records, "more/lambda_1"),
    );
    assert_eq!(l0.len(), 18, "source 0 is in every batch");
    assert!(!l1.is_empty());
    for r in &records {
        if let (Some(a), Some(b)) = (r.get("more/lambda_0"), r.get("more/lambda_1")) {
            let sum = a.as_f64().unwrap() + b.as_f64().unwrap();
            assert!((sum - 1.0).abs() < 1e-9, "{r}");
        }
    }
    // The min-norm point leans to the set the model fits (its gradient shrinks): the
    // disagreeing set's weight falls from about 0.3 to a few percent, and its loss stays high.
    let tail = |v: &[f64]| v[v.len() - 6..].iter().sum::<f64>() / 6.0;
    assert!(l1[0] > 0.2 && tail(&l1) < 0.1, "{l1:?}");
    let (loss0, loss1) = (
        values(&records, "more/loss_0"),
        values(&records, "more/loss_1"),
    );
    assert!(
        tail(&loss0) < 0.1 && tail(&loss1) > 0.3,
        "{loss0:?} {loss1:?}"
    );
    let eval = whole.outcome.final_eval.as_ref().unwrap();
    assert!(eval.metrics["ece"] >= 0.0 && eval.metrics["ece"] <= 1.0);
    assert!(whole.report.overall >= 0.99, "{}", whole.report.overall);

    rm_pipeline::train_reward_model(
        more_recipe(&root, "split", &["train.max_steps=7"]),
        &request(&root, RunMode::Fresh),
    )
    .unwrap();
    let resumed = rm_pipeline::train_reward_model(
        more_recipe(&root, "split", &[]),
        &request(
            &root,
            RunMode::Resume {
                allow_changes: false,
            },
        ),
    )
    .unwrap();
    assert_eq!(train_records(&resumed.out_dir), records);
    let err = rm_pipeline::train_reward_model(
        more_recipe(&root, "bad", &["objective={ kind = \"distillation\" }"]),
        &request(&root, RunMode::Fresh),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("bradley-terry"), "{err:#}");
}
