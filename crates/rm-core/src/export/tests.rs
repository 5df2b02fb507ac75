//! Export → reload in plumbline gives the same rewards / log-probs; config fields; refusals.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;
use crate::checkpoint::tests::temp_dir;
use crate::device::test_device;
use crate::fixtures::write_tiny_llama;
use crate::logprobs::text_logprobs;
use crate::lora::LoraConfig;
use crate::models::llama::CausalLm;
use crate::models::policy_folder::{Policy, PolicyModelConfig};
use crate::models::reward::tests::tiny_bert_folder;
use crate::models::reward::{RewardModelBundle, RewardModelConfig};

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rm_config(backbone: &Path, extra: Value) -> RewardModelConfig {
    let mut v = serde_json::json!({"backbone": backbone, "max_len": 16});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const LLAMA_TEXTS: [&str; 4] = ["w3 w4 w5", "w7", "w9 w10 w11 w12 w13 w2", "w1 w1 w30"];
const BERT_TEXTS: [&str; 3] = ["a b c", "d e", "f g h a"];

fn opts(rewards: RewardScale) -> ExportOptions {
    ExportOptions {
        rewards,
        ..Default::default()
    }
}

/// A tiny decoder reward-model folder (LoRA on q/v, Plain template) with a normalization.
fn tiny_llama_rm(root: &Path, lora: bool) -> (PathBuf, RewardModelBundle) {
    let device = test_device();
    let base = root.join("tiny-llama");
    write_tiny_llama(&base, 3).unwrap();
    let mut extra = serde_json::json!({
        "template": "plain",
        "attributes": ["helpful", "harmless"],
        "head_init_std": 0.5,
    });
    if lora {
        extra["lora"] =
            serde_json::json!({"rank": 2, "alpha": 4.0, "target_modules": ["q_proj", "v_proj"]});
    }
    let mut bundle = RewardModelBundle::build(&rm_config(&base, extra), 11, &device).unwrap();
    if lora {
        bundle.model = crate::lora::tests::random_b(bundle.model);
    }
    bundle.fit_normalization(&LLAMA_TEXTS, 2).unwrap();
    let dir = root.join("rm");
    bundle.save(&dir).unwrap();
    let bundle = RewardModelBundle::load(&dir, &device).unwrap();
    (dir, bundle)
}

#[test]
fn a_decoder_reward_model_exports_as_llama_for_sequence_classification_and_reloads() {
    let device = test_device();
    let root = temp_dir("export-llama-rm");
    let (dir, source) = tiny_llama_rm(&root, true);
    let before = source.score_texts(&LLAMA_TEXTS, 3).unwrap();

    let out = root.join("hf");
    let report = export(&dir, &out, &opts(RewardScale::Raw), &device).unwrap();
    assert_eq!(report.architecture, "LlamaForSequenceClassification");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "reward_model.json",
    ] {
        assert!(
            report.files.contains(&PathBuf::from(f)),
            "{f}: {:?}",
            report.files
        );
    }
    let config = read_json(&out.join("config.json"));
    assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["num_labels"], 2);
    assert_eq!(config["id2label"]["0"], "helpful");
    assert_eq!(config["id2label"]["1"], "harmless");
    assert_eq!(config["label2id"]["harmless"], 1);
    assert_eq!(config["pad_token_id"], source.spec.pad_id);
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["hidden_size"], 16);
    assert_eq!(config["num_key_value_heads"], 2);
    let tok = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(
        tok["chat_template"],
        chat_template_jinja(ChatTemplate::Plain)
    );
    assert_eq!(tok["model_max_length"], 16);
    let weights =
        crate::models::safetensors::SafetensorsWeights::open(out.join("model.safetensors"))
            .unwrap();
    use crate::models::weights::WeightSource;
    assert_eq!(weights.tensor("score.weight").unwrap().shape, [2, 16]);
    assert!(!weights.contains("score.bias"));
    assert!(!weights.contains("lm_head.weight"));
    assert!(!weights.names().iter().any(|n| n.contains("lora")));

    // Loads back into plumbline: the folder is its own base, the LoRA merged.
    let reloaded = RewardModelBundle::load(&out, &device).unwrap();
    assert!(reloaded.spec.lora.is_none());
    assert_eq!(reloaded.spec.normalization, source.spec.normalization);
    let after = reloaded.score_texts(&LLAMA_TEXTS, 3).unwrap();
    assert!(max_abs_diff(&before, &after) < 1e-5, "{before:?} {after:?}");

    // Normalized rewards need a bias, which LlamaForSequenceClassification lacks.
    let err = export(
        &dir,
        &root.join("hf-norm"),
        &opts(RewardScale::Normalized),
        &device,
    )
    .unwrap_err();
    assert!(
        matches!(err, ExportError::BiasNotRepresentable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("has no bias"), "{err}");
    assert!(!root.join("hf-norm").exists());
}

#[test]
fn a_pooling_without_an_hf_equivalent_is_refused() {
    let root = temp_dir("export-refuse");
    let (dir, mut bundle) = tiny_llama_rm(&root, false);
    bundle.spec.pooling = Pooling::Mean;
    let staging = root.join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let err = reward::write_bundle(&bundle, &dir, &staging, RewardScale::Raw).unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::UnsupportedPooling {
                pooling: Pooling::Mean,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("has no Hugging Face equivalent"), "{msg}");
    assert!(msg.contains("it is not exported"), "{msg}");
}

#[test]
fn encoder_reward_models_export_as_sentence_transformers_with_the_normalization_folded() {
    let device = test_device();
    let root = temp_dir("export-bert-rm");
    let bert = tiny_bert_folder(&root, "tiny-bert", |_| {});
    for (pooling, mode) in [("mean", "mean"), ("cls", "cls")] {
        let mut bundle = RewardModelBundle::build(
            &rm_config(
                &bert,
                serde_json::json!({"pooling": pooling, "head_init_std": 0.5}),
            ),
            5,
            &device,
        )
        .unwrap();
        bundle.fit_normalization(&BERT_TEXTS, 2).unwrap();
        let dir = root.join(format!("rm-{pooling}"));
        bundle.save(&dir).unwrap();
        let raw = bundle.score_texts(&BERT_TEXTS, 2).unwrap();
        let normalized: Vec<Vec<f32>> = raw.iter().map(|r| bundle.normalize(r).unwrap()).collect();

        let out = root.join(format!("hf-{pooling}"));
        let report = export(&dir, &out, &opts(RewardScale::Normalized), &device).unwrap();
        assert_eq!(report.architecture, "SentenceTransformer");
        let modules = read_json(&out.join("modules.json"));
        assert_eq!(modules.as_array().unwrap().len(), 3);
        assert_eq!(modules[2]["path"], "2_Dense");
        assert_eq!(
            read_json(&out.join("1_Pooling/config.json"))["pooling_mode"],
            mode
        );
        let dense = read_json(&out.join("2_Dense/config.json"));
        assert_eq!(dense["out_features"], 1);
        assert_eq!(dense["in_features"], 8);
        assert_eq!(
            dense["activation_function"],
            "torch.nn.modules.linear.Identity"
        );
        assert_eq!(
            read_json(&out.join("config.json"))["architectures"][0],
            "BertModel"
        );
        let tok = read_json(&out.join("tokenizer_config.json"));
        assert_eq!(tok["truncation_side"], "left");
        assert_eq!(tok["model_max_length"], 16);
        assert!(
            std::fs::read_to_string(out.join("README.md"))
                .unwrap()
                .contains("**Rewards are normalized**")
        );

        // Reloaded, the raw rewards of the export are the source's normalized rewards.
        let reloaded = RewardModelBundle::load(&out, &device).unwrap();
        assert!(reloaded.spec.normalization.is_none());
        let after = reloaded.score_texts(&BERT_TEXTS, 2).unwrap();
        assert!(
            max_abs_diff(&normalized, &after) < 1e-5,
            "{normalized:?} {after:?}"
        );

        // Raw: bit-identical rewards, the normalization kept in the spec.
        let out_raw = root.join(format!("hf-raw-{pooling}"));
        export(&dir, &out_raw, &opts(RewardScale::Raw), &device).unwrap();
        let reloaded = RewardModelBundle::load(&out_raw, &device).unwrap();
        assert_eq!(reloaded.spec.normalization, bundle.spec.normalization);
        assert_eq!(reloaded.score_texts(&BERT_TEXTS, 2).unwrap(), raw);
    }
}

#[test]
fn outputs_are_refused_unless_empty_or_forced_and_never_over_the_input() {
    let device = test_device();
    let root = temp_dir("export-out");
    let bert = tiny_bert_folder(&root, "tiny-bert", |_| {});
    let bundle =
        RewardModelBundle::build(&rm_config(&bert, serde_json::json!({})), 0, &device).unwrap();
    let dir = root.join("rm");
    bundle.save(&dir).unwrap();
    let out = root.join("hf");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let err = export(&dir, &out, &ExportOptions::default(), &device).unwrap_err();
    assert!(matches!(err, ExportError::OutputNotEmpty(_)), "{err}");
    assert!(err.to_string().contains("pass --force"), "{err}");
    assert!(out.join("keep.txt").is_file());
    let forced = ExportOptions {
        force: true,
        ..Default::default()
    };
    export(&dir, &out, &forced, &device).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("modules.json").is_file());
    // No temporary folders left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // An empty folder is fine; the model folder itself, or a folder holding it, never.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    export(&dir, &empty, &ExportOptions::default(), &device).unwrap();
    for bad in [&dir, &root] {
        let err = export(&dir, bad, &forced, &device).unwrap_err();
        assert!(matches!(err, ExportError::OutputOverInput { .. }), "{err}");
    }
    assert!(dir.join("reward_model.json").is_file());
    let err = export(&root, &root.join("x"), &forced, &device).unwrap_err();
    assert!(matches!(err, ExportError::NotAModelFolder(_)), "{err}");
}

fn texts() -> Vec<String> {
    LLAMA_TEXTS.iter().map(|s| s.to_string()).collect()
}

fn logprobs(lm: &CausalLm) -> Vec<Vec<f32>> {
    text_logprobs(lm, &texts(), 2)
        .unwrap()
        .into_iter()
        .map(|t| t.token_logprobs)
        .collect()
}

#[test]
fn a_lora_policy_exports_merged_or_as_a_peft_adapter_and_reloads_with_the_same_logprobs() {
    let device = test_device();
    let root = temp_dir("export-policy");
    let base = root.join("tiny-llama");
    write_tiny_llama(&base, 9).unwrap();
    let config = PolicyModelConfig {
        policy: base.clone(),
        max_len: 32,
        template: Some(ChatTemplate::Plain),
        lora: Some(LoraConfig::new(2, 4.0, &["q_proj", "v_proj", "down_proj"])),
    };
    let policy = Policy::build(&config, &device).unwrap();
    let model = crate::lora::tests::random_b(policy.lm.model.clone());
    let dir = root.join("policy");
    policy.save(&model, &dir).unwrap();
    let mut source = Policy::load(&dir, &device).unwrap().lm;
    source.model = crate::lora::merge(&source.model);
    let before = logprobs(&source);

    // Merged: one LlamaForCausalLM folder.
    let merged = root.join("hf-merged");
    let report = export(
        &dir,
        &merged,
        &ExportOptions {
            merge_lora: true,
            ..Default::default()
        },
        &device,
    )
    .unwrap();
    assert_eq!(report.architecture, "LlamaForCausalLM");
    let c = read_json(&merged.join("config.json"));
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["eos_token_id"], 1);
    assert_eq!(c["vocab_size"], crate::fixtures::TINY_VOCAB);
    assert!(merged.join("generation_config.json").is_file());
    assert!(merged.join("tokenizer_config.json").is_file());
    let lm = CausalLm::load(&merged, &device).unwrap();
    assert_eq!(logprobs(&lm), before);

    // Adapter: PEFT files at the top, the base in base/, policy.json for plumbline.
    let adapter = root.join("hf-adapter");
    let report = export(&dir, &adapter, &ExportOptions::default(), &device).unwrap();
    assert_eq!(report.architecture, "PeftModel over LlamaForCausalLM");
    let a = read_json(&adapter.join("adapter_config.json"));
    assert_eq!(
        a["base_model_name_or_path"],
        adapter.join("base").display().to_string()
    );
    assert_eq!(a["task_type"], "CAUSAL_LM");
    assert_eq!(a["r"], 2);
    assert!(adapter.join("adapter_model.safetensors").is_file());
    assert_eq!(
        read_json(&adapter.join("base/config.json"))["architectures"][0],
        "LlamaForCausalLM"
    );
    let base_lm = CausalLm::load(adapter.join("base"), &device).unwrap();
    let original_base = CausalLm::load(&base, &device).unwrap();
    assert_eq!(logprobs(&base_lm), logprobs(&original_base));
    let reloaded = CausalLm::load(&adapter, &device).unwrap();
    assert_eq!(logprobs(&reloaded), before);
}
