//! `[goal_conditioned]` end to end on the tiny in-code Llama of `rm_core::fixtures`: every
//! training step logs the pairwise and the contrastive term, the loss is their λ-weighted sum,
//! the contrastive term falls as it trains, and the sections it does not combine with are
//! refused.

use std::path::Path;

use rm_core::train::RunMode;
use rm_core::train::metrics::read_records;
use rm_pipeline::{RewardRecipe, train_reward_model};

mod common;

use common::{request, write_pairs};

fn recipe(root: &Path, section: &str) -> RewardRecipe {
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
[train]
epochs = 4
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
        out = root.join("run").display().to_string(),
    );
    rm_core::recipe::parse(&text, "goal-conditioned-test", &[]).unwrap()
}

#[test]
fn the_contrastive_term_is_added_logged_and_learned() {
    let _lock = rm_core::device::seeded_test_lock();
    let root = common::tmp("goal-conditioned");
    rm_core::fixtures::write_tiny_llama(&root.join("base"), 5).unwrap();
    write_pairs(&root.join("train.jsonl"), 32);
    write_pairs(&root.join("dev.jsonl"), 8);
    let section = "[goal_conditioned]\nweight = 0.5\ntemperature = 0.2\nsamples_per_pair = 2\n";
    train_reward_model(recipe(&root, section), &request(&root, RunMode::Fresh)).unwrap();
    let records = read_records(&root.join("run/metrics.jsonl"), "train").unwrap();
    assert_eq!(records.len(), 16);
    let value = |r: &serde_json::Value, k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("train record without {k}: {r}"))
    };
    for r in &records {
        // Every pair is drawn from (its chosen response has 3+ tokens past the prompt), so the
        // micro-batch weights agree and the logged means keep the sum exact.
        let (loss, pairwise, goal) = (
            value(r, "loss"),
            value(r, "pairwise_loss"),
            value(r, "goal_loss"),
        );
        assert!((loss - (pairwise + 0.5 * goal)).abs() < 1e-4, "{r}");
        assert!((0.0..=1.0).contains(&value(r, "goal_accuracy")));
    }
    let mean = |rs: &[serde_json::Value]| {
        rs.iter().map(|r| value(r, "goal_loss")).sum::<f64>() / rs.len() as f64
    };
    let (first, last) = (mean(&records[..4]), mean(&records[12..]));
    eprintln!("goal_loss: first epoch {first:.4}, last epoch {last:.4}");
    assert!(
        last < first,
        "the contrastive term did not fall: {first} → {last}"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn it_does_not_combine_with_more_or_collaborative() {
    let root = Path::new("/nonexistent");
    for other in [
        "[collaborative]\ndrop_rate = 0.25\n",
        "[more]\nsources = [{ source = \"jsonl\", path = \"x.jsonl\" }]\n",
    ] {
        let r = recipe(root, &format!("[goal_conditioned]\n{other}"));
        let err = r.validate().unwrap_err().to_string();
        assert!(err.contains("[goal_conditioned]"), "{err}");
    }
}
