//! The reward-model pipelines on real data and the real MiniLM: training on a slice of HH-RLHF,
//! then evaluation and scoring of what it wrote; run-folder rules (overwrite, resume changes).

use std::path::{Path, PathBuf};

use rm_core::paths::for_tests;
use rm_core::train::RunMode;
use rm_pipeline::eval::{EvalInput, EvalRequest, evaluate_reward_model};
use rm_pipeline::score::{ScoreRequest, score_rows};
use rm_pipeline::{RewardRecipe, TrainRequest, train_reward_model};

fn request(mode: RunMode) -> TrainRequest {
    TrainRequest {
        data_dir: for_tests::data_dir(),
        models_dir: for_tests::models_dir(),
        device: rm_core::device::test_device(),
        mode,
        progress: false,
    }
}

fn slice_recipe(out: &Path, extra: &[&str]) -> RewardRecipe {
    let backbone = for_tests::models_dir().join("minilm");
    let mut overrides: Vec<String> = vec![
        format!("model.backbone={:?}", backbone.display().to_string()),
        "model.max_len=48".into(),
        "data.train.limit=16".into(),
        "data.eval.limit=8".into(),
        "train.batch_size=8".into(),
        "train.micro_batch_size=4".into(),
        "train.eval_every=1".into(),
        format!("train.out_dir={:?}", out.display().to_string()),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    RewardRecipe::quickstart(&overrides).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("plumbline-pipeline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// The quickstart recipe on 16 train / 8 dev pairs at 48 tokens, then `eval-rm` and `score`
/// on what it wrote.
#[test]
fn train_then_evaluate_and_score_on_a_slice_of_hh_rlhf() {
    let tmp = tmp("train");
    let report = train_reward_model(slice_recipe(&tmp, &[]), &request(RunMode::Fresh)).unwrap();
    for f in [
        "report.json",
        "report.md",
        "metrics.jsonl",
        "summary.json",
        "recipe.toml",
        "run.json",
        "curves.png",
    ] {
        assert!(tmp.join(f).is_file(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(tmp.join("metrics.jsonl")).unwrap();
    let count = |kind: &str| {
        metrics
            .lines()
            .filter(|l| l.contains(&format!("\"kind\":\"{kind}\"")))
            .count()
    };
    assert_eq!(count("train"), 2);
    assert_eq!(count("eval"), 2);
    let accuracy = report.report.overall;
    assert!(
        ((accuracy * 8.0) - (accuracy * 8.0).round()).abs() < 1e-9,
        "a multiple of 1/8: {accuracy}"
    );
    let spec = rm_core::models::reward::RewardModelBundle::read_spec(&report.final_dir).unwrap();
    assert_eq!(spec.normalization.as_ref().unwrap().count, 16);
    // Bradley–Terry sees reward differences only: the head's bias is not trained and stays 0
    // (what LlamaForSequenceClassification, which has none, needs for `plumb export`).
    let trained = rm_core::models::reward::RewardModelBundle::load(
        &report.final_dir,
        &rm_core::device::test_device(),
    )
    .unwrap();
    let bias: Vec<f32> = trained
        .model
        .head
        .bias
        .unwrap()
        .val()
        .into_data()
        .try_to_vec()
        .unwrap();
    assert_eq!(bias, vec![0.0]);

    // The GSM8K one-correct-vs-many probe on the trained model: 3 problems × (1 + 4)
    // solutions, the rows written beside the report, every score a valid value at or above
    // its floor.
    let probe = |split: &str| {
        rm_pipeline::math_probe::probe_math(&rm_pipeline::math_probe::MathProbeRequest {
            rm: report.final_dir.clone(),
            data_dir: for_tests::data_dir(),
            split: split.into(),
            limit: 3,
            incorrect: 4,
            seed: 0,
            batch_size: 8,
            device: rm_core::device::test_device(),
            aggregation: None,
            out: tmp.join("probe.json"),
        })
    };
    let math = probe("test").unwrap();
    assert_eq!(
        (math.scores.problems, math.scores.incorrect_per_problem),
        (3, 4)
    );
    let s = &math.scores;
    assert!((s.one_vs_all_accuracy * 3.0 - (s.one_vs_all_accuracy * 3.0).round()).abs() < 1e-9);
    assert!(
        (0.2 - 1e-12..=1.0).contains(&s.mean_reciprocal_rank),
        "{s:?}"
    );
    assert!((s.pairwise_accuracy * 12.0 - (s.pairwise_accuracy * 12.0).round()).abs() < 1e-9);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&math.rows_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r["rejected"].as_array().unwrap().len() == 4)
    );
    assert!(tmp.join("probe.md").is_file());
    let err = probe("dev").unwrap_err();
    assert!(format!("{err:#}").contains("train and test"), "{err:#}");

    // A second fresh run into the same folder is refused; --overwrite starts over.
    let err = train_reward_model(slice_recipe(&tmp, &[]), &request(RunMode::Fresh)).unwrap_err();
    assert!(format!("{err:#}").contains("--resume"), "{err:#}");
    // Resuming with another learning rate names the field.
    let err = train_reward_model(
        slice_recipe(&tmp, &["train.lr=1e-3"]),
        &request(RunMode::Resume {
            allow_changes: false,
        }),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("train.lr"), "{err:#}");

    // eval-rm on reward-bench layout rows; score on mixed rows with one bad line.
    let rows = tmp.join("rows.jsonl");
    std::fs::write(
        &rows,
        "{\"prompt\": \"hi\", \"chosen\": \"Hello! How can I help?\", \"rejected\": \"go away\", \"subset\": \"alpacaeval-easy\"}\n\
         {\"prompt\": \"hi\", \"responses\": [\"a\", \"b\", \"c\"]}\n\
         {\"prompt\": 3, \"response\": \"x\"}\n",
    )
    .unwrap();
    let eval = |input: &Path, out: PathBuf| {
        evaluate_reward_model(
            &EvalRequest {
                rm: report.final_dir.clone(),
                input: EvalInput::File(input.to_path_buf()),
                format: None,
                batch_size: 4,
                normalized: false,
                out,
                data_dir: for_tests::data_dir(),
                device: rm_core::device::test_device(),
                aggregation: None,
                probes: false,
            },
            &mut |_| {},
            &mut |_| {},
        )
    };
    let report_path = tmp.join("eval.md");
    let missing = eval(&tmp.join("missing.jsonl"), report_path.clone())
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap();
    assert!(missing.contains("missing.jsonl"), "{missing}");
    std::fs::write(
        tmp.join("v1.jsonl"),
        "{\"prompt\": \"hi\", \"chosen\": \"Hello! How can I help?\", \"rejected\": \"go away\", \"subset\": \"alpacaeval-easy\"}\n",
    )
    .unwrap();
    let outcome = eval(&tmp.join("v1.jsonl"), report_path.clone()).unwrap();
    // `--out eval.md` wrote eval.json beside it, not over it.
    assert_eq!(outcome.json_path, tmp.join("eval.json"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("eval.json")).unwrap()).unwrap();
    assert_eq!(json["subsets"][0]["name"], "alpacaeval-easy", "{json}");
    assert!(
        std::fs::read_to_string(tmp.join("eval.md"))
            .unwrap()
            .contains("alpacaeval-easy")
    );
    // The report may not replace the input.
    assert!(eval(&tmp.join("v1.jsonl"), tmp.join("v1.jsonl")).is_err());

    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let scored = score_rows(
        &ScoreRequest {
            rm: report.final_dir.clone(),
            input: rows,
            batch_size: 4,
            transform: bench_harness::ScoreTransform::Normalized,
            device: rm_core::device::test_device(),
            aggregation: None,
        },
        &mut out,
        &mut |e| skipped.push(e.to_string()),
    )
    .unwrap();
    assert_eq!((scored.rows, scored.responses, scored.skipped), (2, 5, 1));
    assert!(skipped[0].contains(":3:"), "{skipped:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["line"], 1);
    assert_eq!(lines[0]["rewards"].as_array().unwrap().len(), 2);
    assert_eq!(lines[1]["rewards"].as_array().unwrap().len(), 3);
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// `margin = true` on data without margins names the pair; distillation takes its soft labels
/// from the data's scores and trains.
#[test]
fn objectives_get_their_inputs_from_the_data_or_say_which_pair_lacks_them() {
    let tmp = tmp("objectives");
    std::fs::create_dir_all(&tmp).unwrap();
    let data = tmp.join("pairs.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"q\", \"chosen\": \"good answer\", \"rejected\": \"bad\", \"margin\": 1.0, \"scores\": [2.0, 0.5]}\n\
         {\"prompt\": \"q\", \"chosen\": \"fine\", \"rejected\": \"rude reply\", \"scores\": [1.0, -1.0]}\n",
    )
    .unwrap();
    let source = format!(
        "{{ source = \"jsonl\", path = {:?} }}",
        data.display().to_string()
    );
    let with = |out: &str, objective: &[&str]| {
        let mut extra = vec![
            format!("data.train={source}"),
            format!("data.eval={source}"),
            "train.batch_size=2".to_string(),
        ];
        extra.extend(objective.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        slice_recipe(&tmp.join(out), &refs)
    };
    let err = train_reward_model(
        with("margin", &["objective.margin=true"]),
        &request(RunMode::Fresh),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("pair 2") && msg.contains("margin"), "{msg}");
    let report = train_reward_model(
        with("distill", &["objective.kind=distillation"]),
        &request(RunMode::Fresh),
    )
    .unwrap();
    assert_eq!(report.outcome.steps, 1);
    let evals =
        rm_core::train::metrics::read_records(&tmp.join("distill/metrics.jsonl"), "eval").unwrap();
    assert!(evals[0]["loss"].as_f64().unwrap().is_finite());
    std::fs::remove_dir_all(&tmp).unwrap();
}
