//! Ensemble training end to end on the tiny in-code Llama of `rm_core::fixtures`: two members,
//! a few steps each, the ensemble folder, per-member and per-aggregation accuracies, resume
//! skipping finished members, and `eval-rm` / `score` on the folder.

use std::path::{Path, PathBuf};

use bench_harness::ScoreItem;
use bench_harness::contrast::{ContrastScores, contrast_consistency};
use rm_core::train::RunMode;
use rm_core::types::Prompt;
use rm_pipeline::RewardRecipe;
use rm_pipeline::ensemble::{Aggregation, ENSEMBLE_FILE, Ensemble, EnsembleSpec, train_ensemble};
use rm_pipeline::eval::{EvalInput, EvalRequest, evaluate_reward_model};
use rm_pipeline::score::{ScoreRequest, score_rows};

mod common;

use common::{request, write_pairs};

fn tmp(name: &str) -> PathBuf {
    common::tmp(&format!("ensemble-{name}"))
}

fn recipe(root: &Path) -> RewardRecipe {
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
batch_size = 4
lr = 1e-2
seed = 5
eval_every = 0
out_dir = {out:?}
[eval]
batch_size = 8
[ensemble]
members = 2
bootstrap = true
aggregation = {{ kind = "brme", lambda = 0.5 }}
"#,
        backbone = root.join("base").display().to_string(),
        train = root.join("train.jsonl").display().to_string(),
        dev = root.join("dev.jsonl").display().to_string(),
        out = root.join("ens").display().to_string(),
    );
    rm_core::recipe::parse(&text, "ensemble-test", &[]).unwrap()
}

#[test]
fn two_members_train_into_an_ensemble_folder_and_resume_skips_them() {
    let root = tmp("train");
    rm_core::fixtures::write_tiny_llama(&root.join("base"), 5).unwrap();
    write_pairs(&root.join("train.jsonl"), 8);
    write_pairs(&root.join("dev.jsonl"), 6);
    let out = root.join("ens");

    let report = train_ensemble(recipe(&root), &request(&root, RunMode::Fresh)).unwrap();
    assert_eq!(report.members.len(), 2);
    assert_eq!(
        report.members.iter().map(|m| m.seed).collect::<Vec<_>>(),
        [5, 6],
        "seeds default to train.seed + i"
    );
    assert!(report.members.iter().all(|m| !m.skipped && m.bootstrap));
    for i in 0..2 {
        let m = out.join(format!("member-{i}"));
        assert!(m.join("final").join("reward_model.json").is_file());
        assert!(m.join("summary.json").is_file());
        let member_recipe = std::fs::read_to_string(m.join("recipe.toml")).unwrap();
        assert!(
            member_recipe.contains(&format!("bootstrap_seed = {}", 5 + i)),
            "{member_recipe}"
        );
        assert!(!member_recipe.contains("[ensemble]"), "{member_recipe}");
    }
    let spec = EnsembleSpec::read(&out).unwrap();
    assert_eq!(
        spec.members,
        [
            PathBuf::from("member-0/final"),
            PathBuf::from("member-1/final")
        ]
    );
    assert_eq!(spec.aggregation, Aggregation::Brme { lambda: 0.5 });

    // Each member's and each aggregation's accuracy is a multiple of 1/6 (6 dev pairs), and the
    // report names them all.
    let ev = &report.evaluation;
    assert_eq!(ev.members.len(), 2);
    assert_eq!(ev.normalized, [true, true], "members store a normalization");
    let names: Vec<&str> = ev.aggregations.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "mean",
            "median",
            "min",
            "mean-minus-std(λ=1)",
            "brme(λ=0.5)"
        ]
    );
    for r in ev.members.iter().chain(&ev.aggregations) {
        assert!(
            ((r.accuracy * 6.0) - (r.accuracy * 6.0).round()).abs() < 1e-9,
            "{r:?}"
        );
        assert!(
            r.calibration.is_some() && r.consistency.len() == 3,
            "{}",
            r.name
        );
    }
    // Contrast instructions: the 6 dev prompts "w3 w4 w1x" are pairwise 2/4 similar, so the
    // greedy matching makes instances (0,1), (2,3), (4,5); member 0's figures equal a direct
    // scoring of the four combinations of each.
    let ensemble = Ensemble::load(&out, &rm_core::device::test_device()).unwrap();
    let dev: Vec<(Prompt, String)> = (10..16)
        .map(|i| (Prompt::Text(format!("w3 w4 w{i}")), format!("w7 w7 w{i}")))
        .collect();
    let items: Vec<ScoreItem> = [(0, 1), (2, 3), (4, 5)]
        .iter()
        .flat_map(|&(a, b)| [(a, a), (a, b), (b, b), (b, a)])
        .map(|(p, r)| ScoreItem {
            prompt: &dev[p].0,
            response: &dev[r].1,
        })
        .collect();
    let direct = ensemble.member_rewards(&items, 0, 8).unwrap();
    let scores: Vec<ContrastScores> = direct
        .row(0)
        .chunks_exact(4)
        .map(|x| ContrastScores {
            aa: x[0],
            ab: x[1],
            bb: x[2],
            ba: x[3],
        })
        .collect();
    let expected = contrast_consistency(&scores).unwrap();
    let got = ev.members[0].contrast.as_ref().unwrap();
    assert_eq!(got.instances, 3);
    for (g, e) in [
        (got.response, expected.response),
        (got.instruction, expected.instruction),
        (got.response_both, expected.response_both),
        (got.instruction_both, expected.instruction_both),
    ] {
        assert!((g - e).abs() < 1e-9, "{got:?} vs {expected:?}");
    }
    assert!(ev.aggregations.iter().all(|a| a.contrast.is_some()));

    // With two members the median is the mean.
    assert_eq!(
        ev.get("mean").unwrap().accuracy,
        ev.get("median").unwrap().accuracy
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["member_dev_accuracy"].as_array().unwrap().len(), 2);
    assert_eq!(
        summary["aggregation_dev_accuracy"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("member-1/final")
            && md.contains("brme(λ=0.5)")
            && md.contains("Contrast instructions: 3 instances"),
        "{md}"
    );

    // A fresh run into the folder is refused; --resume skips both finished members and
    // evaluates again to the same figures.
    let err = train_ensemble(recipe(&root), &request(&root, RunMode::Fresh)).unwrap_err();
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
    let resumed = train_ensemble(
        recipe(&root),
        &request(
            &root,
            RunMode::Resume {
                allow_changes: false,
            },
        ),
    )
    .unwrap();
    assert!(resumed.members.iter().all(|m| m.skipped));
    assert_eq!(resumed.evaluation, report.evaluation);

    // Resume after member 1 is lost: member 0 is skipped, member 1 trains again (fresh).
    std::fs::remove_dir_all(out.join("member-1")).unwrap();
    let again = train_ensemble(
        recipe(&root),
        &request(
            &root,
            RunMode::Resume {
                allow_changes: false,
            },
        ),
    )
    .unwrap();
    assert_eq!(
        again.members.iter().map(|m| m.skipped).collect::<Vec<_>>(),
        [true, false]
    );
    // Retrained with the same seed and resample: the same member.
    assert_eq!(
        again.evaluation.members[1].accuracy,
        report.evaluation.members[1].accuracy
    );

    // A changed recipe is refused for a finished member.
    let mut changed = recipe(&root);
    changed.train.lr = 5e-3;
    let err = train_ensemble(
        changed,
        &request(
            &root,
            RunMode::Resume {
                allow_changes: false,
            },
        ),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("member-0"), "{err:#}");

    // eval-rm on the folder: the override comes first; score lists every member.
    let eval = evaluate_reward_model(
        &EvalRequest {
            rm: out.clone(),
            input: EvalInput::File(root.join("dev.jsonl")),
            format: None,
            batch_size: 8,
            normalized: false,
            out: root.join("eval.json"),
            data_dir: root.clone(),
            device: rm_core::device::test_device(),
            aggregation: Some(Aggregation::Min),
            probes: false,
        },
        &mut |_| {},
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(eval.rows, 6);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("eval.json")).unwrap()).unwrap();
    assert_eq!(json["aggregations"][0]["name"], "min");
    assert_eq!(
        json["aggregations"][0]["accuracy"].as_f64().unwrap(),
        report.evaluation.get("min").unwrap().accuracy
    );
    let rows = root.join("rows.jsonl");
    std::fs::write(
        &rows,
        "{\"prompt\": \"w3\", \"responses\": [\"w7 w7\", \"w8 w9\"]}\n",
    )
    .unwrap();
    let mut sink = Vec::new();
    let scored = score_rows(
        &ScoreRequest {
            rm: out.clone(),
            input: rows,
            batch_size: 4,
            transform: bench_harness::ScoreTransform::Raw,
            device: rm_core::device::test_device(),
            aggregation: Some(Aggregation::Mean),
        },
        &mut sink,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((scored.rows, scored.responses), (1, 2));
    let line: serde_json::Value = serde_json::from_slice(&sink).unwrap();
    let members = line["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for j in 0..2 {
        let mean = (members[0][j].as_f64().unwrap() + members[1][j].as_f64().unwrap()) / 2.0;
        assert!(
            (line["rewards"][j].as_f64().unwrap() - mean).abs() < 1e-5,
            "{line}"
        );
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn ensemble_folders_with_unlike_members_are_refused_by_name() {
    use rm_core::models::reward::{RewardModelBundle, RewardModelConfig};
    let root = tmp("unlike");
    rm_core::fixtures::write_tiny_llama(&root.join("base"), 5).unwrap();
    let build = |attributes: Vec<String>, dir: &str| {
        RewardModelBundle::build(
            &RewardModelConfig {
                backbone: root.join("base"),
                pooling: None,
                max_len: 16,
                truncation: rm_core::tokenize::TruncationSide::Left,
                attributes,
                template: Some(rm_core::chat::ChatTemplate::Plain),
                lora: None,
                head_init_std: 0.5,
            },
            1,
            &rm_core::device::test_device(),
        )
        .unwrap()
        .save(&root.join(dir))
        .unwrap();
    };
    build(vec!["reward".into()], "a");
    build(vec!["help".into(), "harm".into()], "b");
    let spec = EnsembleSpec::new(vec!["a".into(), "b".into()], Aggregation::Mean);
    let err = format!("{:#}", spec.write(&root).unwrap_err());
    assert!(
        err.contains("member 1") && err.contains("[\"help\", \"harm\"]"),
        "{err}"
    );
    assert!(
        !root.join(ENSEMBLE_FILE).exists(),
        "nothing written on error"
    );
    // A member given by absolute path from another folder is fine.
    let spec = EnsembleSpec::new(vec!["a".into(), root.join("a")], Aggregation::Min);
    spec.write(&root).unwrap();
    assert_eq!(EnsembleSpec::read(&root).unwrap(), spec);
    std::fs::remove_dir_all(&root).ok();
}
