//! PRM export: TRL's layout read by hand gives plumbline's step scores; the export reloads with
//! the same scores; refusals.

use std::path::{Path, PathBuf};

use rm_core::burn::tensor::{Int, Tensor, TensorData};
use rm_core::chat::ChatTemplate;
use rm_core::device::test_device;
use rm_core::export::{ExportError, ExportOptions, RewardScale};
use rm_core::lora::LoraConfig;
use rm_core::models::reward::{RewardModelBundle, RewardModelConfig};
use rm_core::models::safetensors::SafetensorsWeights;
use rm_core::models::weights::WeightSource;
use rm_core::tokenize::TruncationSide;
use rm_core::train::{RunDir, RunMode, TrainConfig, Trainer};
use serde_json::Value;

use super::*;
use crate::data::StepExample;
use crate::train::{PrmTask, encode_examples};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rm-process-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const SEP: &str = " w6";

fn config(base: &Path, lora: bool) -> RewardModelConfig {
    RewardModelConfig {
        backbone: base.to_path_buf(),
        pooling: None,
        max_len: 48,
        truncation: TruncationSide::Left,
        attributes: vec!["step_correct".into()],
        template: Some(ChatTemplate::Plain),
        lora: lora.then(|| LoraConfig {
            rank: 2,
            alpha: 4.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }),
        head_init_std: 0.3,
    }
}

/// A one-pass tiny PRM with LoRA, trained for 2 epochs (so the adapters and the head bias are
/// not at their initial values); returns its `final/` folder.
fn trained_prm(root: &Path) -> PathBuf {
    let device = test_device().autodiff();
    rm_core::fixtures::write_tiny_llama(&root.join("base"), 5).unwrap();
    let prm = ProcessRewardModel::build(
        &config(&root.join("base"), true),
        PrmShape::OnePass {
            separator: SEP.into(),
        },
        3,
        &device,
    )
    .unwrap();
    let examples: Vec<StepExample> = (0..8usize)
        .map(|i| StepExample {
            prompt: format!("w{}", 30 + i % 4),
            steps: vec![format!("w{} w{}", 10 + i % 7, 20 + i % 5), "w7 w11".into()],
            targets: vec![Some(true), Some(i % 2 == 1)],
            soft: Vec::new(),
        })
        .collect();
    let (train, _) = encode_examples(&prm, &examples, 48).unwrap();
    let (dev, _) = encode_examples(&prm, &examples[..2], 48).unwrap();
    let model = prm.bundle.model.clone();
    let mut task = PrmTask {
        train,
        dev,
        template: prm,
        batch_size: 4,
    };
    let mut cfg = TrainConfig::new(4, 5e-2, root.join("run"));
    cfg.epochs = 2;
    let run = RunDir::open(&cfg.out_dir, RunMode::Fresh, &serde_json::json!({}), &[]).unwrap();
    let trainer = Trainer {
        config: cfg,
        device,
        progress: false,
    };
    trainer.run_epochs(&run, model, &mut task).unwrap();
    root.join("run/final")
}

const SOLUTIONS: [(&str, &[&str]); 3] = [
    ("w1 w2", &["w3 w4", "w5", "w7 w8 w9"]),
    ("w30", &["w12"]),
    ("w31 w2 w2", &["w10 w20", "w7 w11", "w13", "w14 w15"]),
];

fn solutions() -> Vec<(&'static str, Vec<&'static str>)> {
    SOLUTIONS.iter().map(|(p, s)| (*p, s.to_vec())).collect()
}

/// TRL's reading of the exported folder, written out here: the backbone's hidden states (the
/// folder's own weights), the two-label score layer from `model.safetensors`, `softmax(z)₁` at
/// the last token of each step's separator (ids: the prompt with special tokens, then each
/// `step + sep` piece).
fn trl_step_probs(out: &Path) -> Vec<Vec<f32>> {
    let device = test_device();
    // The folder loads as a 2-output reward model: its backbone is the exported one.
    let bundle = RewardModelBundle::load(out, &device).unwrap();
    let weights = SafetensorsWeights::open(out.join("model.safetensors")).unwrap();
    let w = weights.tensor("score.weight").unwrap();
    let b = weights.tensor("score.bias").unwrap();
    assert_eq!(
        (w.shape.as_slice(), b.shape.as_slice()),
        (&[2, 16][..], &[2][..])
    );
    let sep = read_json(&out.join("config.json"))["step_separator"]
        .as_str()
        .unwrap()
        .to_string();
    let tok = &bundle.tokenizer;
    let mut out_probs = Vec::new();
    for (prompt, steps) in SOLUTIONS {
        let mut ids = tok.encode(prompt, true).unwrap();
        let mut ends = Vec::new();
        for s in steps {
            ids.extend(tok.encode(&format!("{s}{sep}"), false).unwrap());
            ends.push(ids.len() - 1);
        }
        let n = ids.len();
        let t = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, n]),
            &device,
        );
        let hidden: Vec<f32> = bundle
            .model
            .backbone
            .hidden(t, Tensor::ones([1, n], &device))
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let d = 16;
        out_probs.push(
            ends.iter()
                .map(|&e| {
                    let h = &hidden[e * d..(e + 1) * d];
                    let z = |k: usize| -> f64 {
                        b.values[k] as f64
                            + (0..d)
                                .map(|j| w.values[k * d + j] as f64 * h[j] as f64)
                                .sum::<f64>()
                    };
                    let (z0, z1) = (z(0), z(1));
                    (z1.exp() / (z0.exp() + z1.exp())) as f32
                })
                .collect(),
        );
    }
    out_probs
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn a_one_pass_prm_exports_in_trls_layout_and_reloads_with_the_same_step_scores() {
    let _lock = rm_core::device::seeded_test_lock();
    let device = test_device();
    let root = temp_dir("trl");
    let trained = trained_prm(&root);
    // LoRA training leaves the head bias at 0 (as in the real runs): give it a value, so that
    // the exported bias is checked too.
    let mut source = ProcessRewardModel::load(&trained, &device).unwrap();
    let trained_head = hf_head(&source.bundle, RewardScale::Raw, &trained).unwrap();
    source.bundle.model = with_head(
        source.bundle.model,
        &HfHead {
            bias: vec![0.37],
            ..trained_head
        },
        &device,
    );
    let dir = root.join("biased");
    source.save(&dir).unwrap();
    let source = ProcessRewardModel::load(&dir, &device).unwrap();
    assert!(source.bundle.spec.lora.is_some());
    let before = source.score_batch(&solutions(), 2).unwrap();

    let out = root.join("hf");
    let report = export(&dir, &out, &ExportOptions::default(), &device).unwrap();
    assert_eq!(report.architecture, "LlamaForTokenClassification");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "reward_model.json",
        "prm.json",
    ] {
        assert!(
            report.files.contains(&PathBuf::from(f)),
            "{f}: {:?}",
            report.files
        );
    }
    let config = read_json(&out.join("config.json"));
    assert_eq!(config["architectures"][0], "LlamaForTokenClassification");
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["num_labels"], 2);
    assert_eq!(config["id2label"]["1"], "correct");
    assert_eq!(config["label2id"]["wrong"], 0);
    assert_eq!(config["step_separator"], SEP);
    let tok = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tok["step_separator"], SEP);
    assert!(tok["chat_template"].is_string());
    let prm_json = read_json(&out.join("prm.json"));
    assert_eq!(prm_json["head"]["kind"], "two-label");
    assert_eq!(prm_json["head"]["attribute"], "step_correct");

    // The score layer: row 0 (wrong) and its bias zero, row 1 the trained head.
    let weights = SafetensorsWeights::open(out.join("model.safetensors")).unwrap();
    assert!(!weights.names().iter().any(|n| n.contains("lora")));
    let w = weights.tensor("score.weight").unwrap();
    let b = weights.tensor("score.bias").unwrap();
    let head = hf_head(&source.bundle, RewardScale::Raw, &dir).unwrap();
    assert!(w.values[..16].iter().all(|&x| x == 0.0));
    assert_eq!(&w.values[16..], head.weight.as_slice());
    assert_eq!(b.values, vec![0.0, head.bias[0]]);
    assert_eq!(head.bias, vec![0.37]);

    // TRL's reading gives plumbline's step probabilities.
    let trl = trl_step_probs(&out);
    assert!(max_abs_diff(&before, &trl) < 1e-5, "{before:?} vs {trl:?}");
    // A different separator reading would not: the scores are not all alike.
    assert!(before[0].iter().any(|&p| (p - before[0][0]).abs() > 1e-4));

    // Loads back into plumbline with the same step scores.
    let reloaded = ProcessRewardModel::load(&out, &device).unwrap();
    assert_eq!(reloaded.bundle.spec.attributes, vec!["step_correct"]);
    assert!(reloaded.bundle.spec.lora.is_none());
    assert_eq!(reloaded.spec.head, PrmHead::OneLogit);
    let after = reloaded.score_batch(&solutions(), 3).unwrap();
    assert!(
        max_abs_diff(&before, &after) < 1e-5,
        "{before:?} vs {after:?}"
    );

    // An export of the export is the same TRL folder.
    let again = root.join("hf2");
    export(&out, &again, &ExportOptions::default(), &device).unwrap();
    let twice = ProcessRewardModel::load(&again, &device).unwrap();
    let scores = twice.score_batch(&solutions(), 3).unwrap();
    assert!(max_abs_diff(&after, &scores) < 1e-6);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn window_prms_normalized_prms_and_prms_through_rm_core_are_refused() {
    let device = test_device();
    let root = temp_dir("refuse");
    rm_core::fixtures::write_tiny_llama(&root.join("base"), 5).unwrap();
    let window = ProcessRewardModel::build(
        &config(&root.join("base"), false),
        PrmShape::Window {
            separator: SEP.into(),
        },
        3,
        &device,
    )
    .unwrap();
    window.save(&root.join("window")).unwrap();
    let err = export(
        &root.join("window"),
        &root.join("hf-window"),
        &ExportOptions::default(),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, PrmExportError::WindowShape(_)), "{err}");
    assert!(err.to_string().contains("window PRM"), "{err}");
    assert!(err.to_string().contains("no equivalent"), "{err}");
    assert!(!root.join("hf-window").exists());

    let one_pass = ProcessRewardModel::build(
        &config(&root.join("base"), false),
        PrmShape::OnePass {
            separator: SEP.into(),
        },
        3,
        &device,
    )
    .unwrap();
    let dir = root.join("one-pass");
    one_pass.save(&dir).unwrap();
    let normalized = ExportOptions {
        rewards: RewardScale::Normalized,
        ..Default::default()
    };
    let err = export(&dir, &root.join("hf-norm"), &normalized, &device).unwrap_err();
    assert!(matches!(err, PrmExportError::Normalized(_)), "{err}");
    // rm-core alone would write a sequence classifier that scores the last step only: refused.
    let err = rm_core::export::export(
        &dir,
        &root.join("hf-rm"),
        &ExportOptions::default(),
        &device,
    )
    .unwrap_err();
    assert!(matches!(err, ExportError::ProcessRewardModel(_)), "{err}");
    assert!(err.to_string().contains("prm.json"), "{err}");
    assert!(!root.join("hf-rm").exists());

    // A reward-model folder goes through to rm-core's export.
    let rm = RewardModelBundle::build(&config(&root.join("base"), false), 1, &device).unwrap();
    rm.save(&root.join("rm")).unwrap();
    let report = export(
        &root.join("rm"),
        &root.join("hf-seq"),
        &ExportOptions::default(),
        &device,
    )
    .unwrap();
    assert_eq!(report.architecture, "LlamaForSequenceClassification");
    std::fs::remove_dir_all(&root).ok();
}
