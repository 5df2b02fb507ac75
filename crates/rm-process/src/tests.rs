//! Model-level tests on a tiny in-code Llama (word-level tokenizer over `w0 … w47`).

use std::path::PathBuf;

use rm_core::burn::tensor::{Int, Tensor, TensorData};
use rm_core::chat::ChatTemplate;
use rm_core::device::test_device;
use rm_core::models::reward::RewardModelConfig;
use rm_core::tokenize::TruncationSide;
use rm_core::train::{EpochTask, RunDir, RunMode, TrainConfig, TrainTask, Trainer};

use crate::data::StepExample;
use crate::model::{PrmShape, ProcessRewardModel, encode_one_pass, unit_logits};
use crate::train::{PrmTask, encode_examples};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rm-process-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny_prm(dir: &std::path::Path, device: &rm_core::burn::tensor::Device) -> ProcessRewardModel {
    rm_core::fixtures::write_tiny_llama(&dir.join("base"), 5).unwrap();
    ProcessRewardModel::build(
        &RewardModelConfig {
            backbone: dir.join("base"),
            pooling: None,
            max_len: 48,
            truncation: TruncationSide::Left,
            attributes: vec!["step_correct".into()],
            template: Some(ChatTemplate::Plain),
            lora: None,
            head_init_std: 0.1,
        },
        PrmShape::OnePass {
            separator: " w6".into(),
        },
        3,
        device,
    )
    .unwrap()
}

#[test]
fn one_pass_encoding_reads_each_step_at_its_last_token() {
    let dir = temp_dir("gather");
    let device = test_device();
    let prm = tiny_prm(&dir, &device);
    let tok = &prm.bundle.tokenizer;
    // prefix [w1 w2] · step 0 [w3 w4 w6] · step 1 [w5 w6] → ends at 4 and 6.
    let u = encode_one_pass(tok, "w1 w2", &["w3 w4", "w5"], " w6", None)
        .unwrap()
        .unwrap();
    assert_eq!(u.seq.ids, vec![1, 2, 3, 4, 6, 5, 6]);
    assert_eq!(u.ends, Some(vec![4, 6]));
    // max_len 5: only step 0 fits.
    let u5 = encode_one_pass(tok, "w1 w2", &["w3 w4", "w5"], " w6", Some(5))
        .unwrap()
        .unwrap();
    assert_eq!(
        (u5.seq.ids.clone(), u5.ends.clone()),
        (vec![1, 2, 3, 4, 6], Some(vec![4]))
    );
    // max_len 4: the prefix loses its start so that step 0 fits.
    let u4 = encode_one_pass(tok, "w1 w2", &["w3 w4", "w5"], " w6", Some(4))
        .unwrap()
        .unwrap();
    assert_eq!(
        (u4.seq.ids.clone(), u4.ends.clone()),
        (vec![2, 3, 4, 6], Some(vec![3]))
    );
    assert!(
        encode_one_pass(tok, "w1", &["w3 w4 w5"], " w6", Some(3))
            .unwrap()
            .is_none()
    );

    // The logits are the head at exactly those hidden states, in a padded batch too.
    let short = encode_one_pass(tok, "w1", &["w9"], " w6", None)
        .unwrap()
        .unwrap();
    let z = unit_logits(
        &prm.bundle.model,
        prm.bundle.spec.pooling,
        0,
        &[&u, &short],
        &device,
    )
    .unwrap();
    assert_eq!(z.dims(), [2, 2]);
    let z: Vec<f32> = z.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(
            u.seq.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [1, 7],
        ),
        &device,
    );
    let hidden = prm
        .bundle
        .model
        .backbone
        .hidden(ids, Tensor::ones([1, 7], &device));
    let all: Vec<f32> = prm
        .bundle
        .model
        .head
        .forward(hidden)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    assert!((z[0] - all[4]).abs() < 1e-5, "{} vs {}", z[0], all[4]);
    assert!((z[1] - all[6]).abs() < 1e-5, "{} vs {}", z[1], all[6]);
    assert!((z[0] - all[5]).abs() > 1e-6, "reads the wrong position");

    // score_steps returns σ of the same logits, saved and loaded.
    prm.save(&dir.join("prm")).unwrap();
    let loaded = ProcessRewardModel::load(&dir.join("prm"), &device).unwrap();
    let p = loaded.score_steps("w1 w2", &["w3 w4", "w5"]).unwrap();
    let expect = |x: f32| 1.0 / (1.0 + (-x).exp());
    // Plain renders the prompt as itself (no special tokens in the tiny tokenizer).
    assert!((p[0] - expect(all[4])).abs() < 1e-4, "{p:?}");
    assert!((p[1] - expect(all[6])).abs() < 1e-4, "{p:?}");
    assert!(loaded.score_steps("w1", &[]).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn loss_decreases_on_a_learnable_step_task() {
    let _lock = rm_core::device::seeded_test_lock();
    let dir = temp_dir("learn");
    let device = test_device().autodiff();
    let prm = tiny_prm(&dir, &device);
    // A step is wrong iff it contains w7.
    let mut examples = Vec::new();
    for i in 0..24usize {
        let a = format!("w{} w{}", 10 + i % 7, 20 + i % 5);
        let bad = if i % 2 == 0 { "w7 w11" } else { "w12 w13" };
        examples.push(StepExample {
            prompt: format!("w{}", 30 + i % 4),
            steps: vec![a, bad.to_string(), "w7".into()],
            targets: vec![Some(true), Some(i % 2 == 1), Some(false)],
            soft: Vec::new(),
        });
    }
    let (units, skipped) = encode_examples(&prm, &examples, 48).unwrap();
    assert_eq!((units.len(), skipped), (24, 0));
    let (dev, _) = encode_examples(&prm, &examples[..8], 48).unwrap();
    let model = prm.bundle.model.clone();
    let mut task = PrmTask {
        train: units,
        dev,
        template: prm,
        batch_size: 8,
    };
    assert_eq!(task.num_examples(), 24);
    let before = task.evaluate(&model).unwrap().metrics["loss"];
    let mut config = TrainConfig::new(8, 3e-2, dir.join("run"));
    config.epochs = 6;
    let run = RunDir::open(&config.out_dir, RunMode::Fresh, &serde_json::json!({}), &[]).unwrap();
    let trainer = Trainer {
        config,
        device: device.clone(),
        progress: false,
    };
    let (model, _) = trainer.run_epochs(&run, model, &mut task).unwrap();
    let after = task.evaluate(&model).unwrap();
    assert!(
        after.metrics["loss"] < 0.5 * before,
        "loss {before} → {}",
        after.metrics["loss"]
    );
    assert!(after.metrics["step_accuracy"] > 0.9, "{:?}", after.metrics);
    assert!(
        dir.join("run/final")
            .join(crate::model::PRM_SPEC_FILE)
            .exists()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// PAV's verifier: trained on soft labels (a step with `w7` reaches the answer a quarter of
/// the time, any other three quarters), the PRM's probabilities settle on the soft labels —
/// not on 0/1 as a classifier of the hard labels would — and the dev Brier score against
/// them falls near 0; the accuracy still reads `y > ½`.
#[test]
fn soft_targets_train_a_value_estimate_not_a_classifier() {
    let _lock = rm_core::device::seeded_test_lock();
    let dir = temp_dir("soft");
    let device = test_device().autodiff();
    let prm = tiny_prm(&dir, &device);
    let soft_of = |step: &str| if step.contains("w7") { 0.25f32 } else { 0.75 };
    let mut examples = Vec::new();
    for i in 0..24usize {
        let a = format!("w{} w{}", 10 + i % 7, 20 + i % 5);
        let b = if i % 2 == 0 { "w7 w11" } else { "w12 w13" }.to_string();
        let steps = vec![a, b, "w7".to_string()];
        examples.push(StepExample {
            prompt: format!("w{}", 30 + i % 4),
            targets: steps.iter().map(|s| Some(soft_of(s) > 0.5)).collect(),
            soft: steps.iter().map(|s| Some(soft_of(s))).collect(),
            steps,
        });
    }
    let encode = |e: &[StepExample]| {
        crate::train::encode_examples_with(&prm, e, 48, crate::data::StepTargets::Soft).unwrap()
    };
    let (units, _) = encode(&examples);
    let (dev, _) = encode(&examples[..8]);
    assert_eq!(units[0].targets, vec![0.75, 0.25, 0.25]);
    let model = prm.bundle.model.clone();
    let mut task = PrmTask {
        train: units,
        dev,
        template: prm,
        batch_size: 8,
    };
    let before = task.evaluate(&model).unwrap().metrics["brier"];
    let mut config = TrainConfig::new(8, 3e-2, dir.join("run"));
    config.epochs = 8;
    let run = RunDir::open(&config.out_dir, RunMode::Fresh, &serde_json::json!({}), &[]).unwrap();
    let trainer = Trainer {
        config,
        device: device.clone(),
        progress: false,
    };
    let (model, _) = trainer.run_epochs(&run, model, &mut task).unwrap();
    let after = task.evaluate(&model).unwrap();
    assert!(
        after.metrics["brier"] < 0.01,
        "Brier {before} → {:?}",
        after.metrics
    );
    assert!(after.metrics["step_accuracy"] > 0.99, "{:?}", after.metrics);
    let loaded = ProcessRewardModel::load(&dir.join("run/final"), &test_device()).unwrap();
    let p = loaded
        .score_steps("w31", &["w11 w22", "w7 w11", "w7"])
        .unwrap();
    for (got, want) in p.iter().zip([0.75f32, 0.25, 0.25]) {
        assert!((got - want).abs() < 0.1, "{p:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `plumb train-prm` with `data.targets = "soft"` on label-steps-style rows: it trains on the
/// soft labels, logs the dev Brier score, and refuses a source without soft labels.
#[test]
fn train_prm_reads_soft_labels_from_step_labelled_jsonl() {
    let _lock = rm_core::device::seeded_test_lock();
    let dir = temp_dir("soft-run");
    rm_core::fixtures::write_tiny_llama(&dir.join("base"), 5).unwrap();
    let rows: Vec<String> = (0..12)
        .map(|i| {
            serde_json::json!({
                "prompt": format!("w{}", 30 + i),
                "steps": [format!("w{}", 10 + i % 5), "w7 w11"],
                "labels": [true, false],
                "soft_labels": [0.75, 0.25],
            })
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("labels.jsonl"), rows.join("\n")).unwrap();
    let text = format!(
        r#"
[model]
backbone = "{base}"
max_len = 48
attributes = ["step_correct"]
template = "plain"
head_init_std = 0.1

[prm]
shape = {{ kind = "one-pass", separator = " w6" }}

[data]
train = {{ source = "jsonl", path = "{labels}" }}
dev_fraction = 0.25
targets = "soft"

[train]
epochs = 2
batch_size = 4
lr = 3e-2
seed = 1
eval_every = 2
out_dir = "{out}"

[eval]
batch_size = 4
bon_n = 2
"#,
        base = dir.join("base").display(),
        labels = dir.join("labels.jsonl").display(),
        out = dir.join("run").display(),
    );
    let recipe: crate::PrmRecipe = rm_core::recipe::parse(&text, "soft", &[]).unwrap();
    let request = rm_pipeline::TrainRequest {
        data_dir: dir.clone(),
        models_dir: dir.clone(),
        device: test_device(),
        mode: RunMode::Fresh,
        progress: false,
    };
    let report = crate::train::train_prm(recipe.clone(), &request).unwrap();
    assert_eq!(report.coarse_examples, 0);
    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"brier\""), "{metrics}");
    // HRM: the 9 training solutions of two steps each add one merged unit apiece (the second
    // consecutive path would hold only an untargeted single step and is left out).
    let mut hrm = recipe.clone();
    hrm.train.out_dir = dir.join("run-hrm");
    hrm.data.hierarchical = Some(crate::data::HierarchicalConfig {
        consecutive: true,
        compress_probability: 0.0,
    });
    let report = crate::train::train_prm(hrm.clone(), &request).unwrap();
    assert_eq!(report.coarse_examples, report.train_solutions);
    assert_eq!(report.train_solutions, 9);
    // … and a step-preference recipe refuses it.
    hrm.prm.objective = crate::train::PrmObjective::StepPreference;
    let err = hrm.validate().unwrap_err().to_string();
    assert!(err.contains("data.hierarchical"), "{err}");
    // Rows without soft labels: refused, naming the field to add.
    let rows: Vec<String> = (0..6)
        .map(|i| {
            serde_json::json!({"prompt": format!("w{}", 30 + i), "steps": ["w10"], "labels": [true]})
                .to_string()
        })
        .collect();
    std::fs::write(dir.join("labels.jsonl"), rows.join("\n")).unwrap();
    let mut r = recipe;
    r.train.out_dir = dir.join("run2");
    let err = crate::train::train_prm(r, &request)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no soft labels") && err.contains("soft_labels"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn window_encoding_keeps_the_prompt_start_and_the_steps_end() {
    let dir = temp_dir("window");
    let prm = tiny_prm(&dir, &test_device());
    let tok = &prm.bundle.tokenizer;
    let u = crate::model::encode_window(tok, "w1 w2", &["w3", "w4 w5"], 1, " w6 ", 5).unwrap();
    // prompt [1 2] (≤ 5/2 tokens), then the last 3 of "w3 w6 w4 w5".
    assert_eq!(u.seq.ids, vec![1, 2, 6, 4, 5]);
    assert_eq!((u.ends, u.steps), (None, vec![1]));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_shipped_recipes_parse() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    for name in [
        "prm-smollm2-prm800k.toml",
        "prm-minilm-prm800k.toml",
        "srm-minilm-prm800k.toml",
        "hrm-minilm-prm800k.toml",
    ] {
        let r = crate::PrmRecipe::load(&root.join(name), &["data.train_limit=5".into()]).unwrap();
        r.validate().unwrap();
        assert_eq!(r.data.train_limit, 5, "{name}");
    }
    let r = crate::PrmRecipe::load(&root.join("prm-smollm2-prm800k.toml"), &[]).unwrap();
    assert_eq!(
        r.prm.shape,
        PrmShape::OnePass {
            separator: "\n\n".into()
        }
    );
    assert_eq!(r.prm.objective, crate::train::PrmObjective::Classification);
    let r = crate::PrmRecipe::load(&root.join("srm-minilm-prm800k.toml"), &[]).unwrap();
    assert_eq!(r.prm.objective, crate::train::PrmObjective::StepPreference);
    let r = crate::PrmRecipe::load(&root.join("hrm-minilm-prm800k.toml"), &[]).unwrap();
    assert!(r.data.hierarchical.as_ref().is_some_and(|h| h.consecutive));
}

/// `train-prm` with `prm.objective = "step-preference"` on a step-pairs JSONL: trains on the
/// pairs (dev pair accuracy logged), then the usual step report; a source without sibling
/// pairs is refused, naming what to give.
#[test]
fn train_prm_trains_a_step_level_rm_on_step_pairs() {
    let _lock = rm_core::device::seeded_test_lock();
    let dir = temp_dir("srm-run");
    rm_core::fixtures::write_tiny_llama(&dir.join("base"), 5).unwrap();
    let rows: Vec<String> = (0..16)
        .map(|i| {
            serde_json::json!({
                "prompt": format!("w{}", 30 + i),
                "prefix": [format!("w{}", 10 + i % 5)],
                "chosen": "w12 w13",
                "rejected": "w7 w11",
            })
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("pairs.jsonl"), rows.join("\n")).unwrap();
    let text = format!(
        r#"
[model]
backbone = "{base}"
max_len = 48
attributes = ["step_correct"]
template = "plain"
head_init_std = 0.1

[prm]
shape = {{ kind = "one-pass", separator = " w6" }}
objective = "step-preference"

[data]
train = {{ source = "step-pairs", path = "{pairs}" }}
dev_fraction = 0.25
alternatives = true

[train]
epochs = 3
batch_size = 4
lr = 3e-2
seed = 1
eval_every = 3
out_dir = "{out}"

[eval]
batch_size = 4
bon_n = 2
"#,
        base = dir.join("base").display(),
        pairs = dir.join("pairs.jsonl").display(),
        out = dir.join("run").display(),
    );
    let recipe: crate::PrmRecipe = rm_core::recipe::parse(&text, "srm", &[]).unwrap();
    let request = rm_pipeline::TrainRequest {
        data_dir: dir.clone(),
        models_dir: dir.clone(),
        device: test_device(),
        mode: RunMode::Fresh,
        progress: false,
    };
    let report = crate::train::train_prm(recipe.clone(), &request).unwrap();
    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    let last_eval = metrics.lines().rfind(|l| l.contains("\"eval\"")).unwrap();
    let v: serde_json::Value = serde_json::from_str(last_eval).unwrap();
    assert_eq!(v["pair_accuracy"], 1.0, "{last_eval}");
    // The step report scores the dev alternatives: every rejected step below every chosen one.
    let steps = report.report.steps.unwrap();
    assert_eq!(steps.auroc, Some(1.0), "{steps:?}");
    // Classification data gives no pair.
    std::fs::write(
        dir.join("steps.jsonl"),
        (0..6)
            .map(|i| format!(r#"{{"prompt": "w{i}", "steps": ["w10"], "labels": [true]}}"#))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let mut r = recipe;
    r.data.train = crate::data::StepSource::Jsonl {
        path: dir.join("steps.jsonl"),
    };
    r.train.out_dir = dir.join("run2");
    let err = crate::train::train_prm(r, &request)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no step pair") && err.contains("step-pairs"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `eval-prm --merged-steps` scores HRM's coarse units: each consecutive pair once, labelled by
/// its later step; a file with nothing to merge is refused.
#[test]
fn evaluation_on_merged_steps_scores_each_consecutive_pair_once() {
    let device = test_device();
    let dir = temp_dir("merged-eval");
    let prm = tiny_prm(&dir, &device);
    let path = dir.join("steps.jsonl");
    let rows = [
        r#"{"prompt": "w30", "steps": ["w10", "w11", "w12"], "labels": [true, false, true]}"#,
        r#"{"prompt": "w31", "steps": ["w13 w14", "w15"], "labels": [null, false]}"#,
        r#"{"prompt": "w32", "steps": ["w16"], "labels": [true]}"#,
    ];
    std::fs::write(&path, rows.join("\n")).unwrap();
    let request = |merged_steps| crate::eval::EvalRequest {
        input: path.clone(),
        format: crate::eval::EvalFormat::Steps,
        threshold: 0.5,
        batch_size: 4,
        neutral: crate::data::NeutralAs::Positive,
        bon_from_alternatives: 0,
        seed: 0,
        limit: 0,
        merged_steps,
    };
    let fine = crate::eval::evaluate_file(&prm, "tiny", &request(false)).unwrap();
    let fine = fine.steps.unwrap();
    assert_eq!((fine.solutions, fine.labelled_steps), (3, 5));
    // Units: (w10 ⊕ w11) → false, (w11 ⊕ w12) → true, (w13 w14 ⊕ w15) → false; the one-step
    // solution has nothing to merge.
    let coarse = crate::eval::evaluate_file(&prm, "tiny", &request(true)).unwrap();
    let coarse = coarse.steps.unwrap();
    assert_eq!(coarse.labelled_steps, 3);
    assert!((coarse.positive_rate - 1.0 / 3.0).abs() < 1e-12);
    std::fs::write(&path, rows[2]).unwrap();
    let err = crate::eval::evaluate_file(&prm, "tiny", &request(true))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no solution has a labelled step after another step"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
