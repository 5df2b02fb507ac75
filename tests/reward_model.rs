//! Reward models on the real backbones: build, score, save, load (bit-exact scores), LoRA
//! decoders, normalization and the log-sigmoid transform.

use rm_core::device::test_device;
use rm_core::lora::LoraConfig;
use rm_core::models::pooling::Pooling;
use rm_core::models::reward::{
    BackboneKind, RewardModelBundle, RewardModelConfig, log_sigmoid_transform,
};
use rm_core::paths::for_tests::models_dir;
use rm_core::tokenize::TruncationSide;
use rm_core::types::Prompt;

fn config(backbone: &str) -> RewardModelConfig {
    RewardModelConfig {
        backbone: models_dir().join(backbone),
        pooling: None,
        max_len: 64,
        truncation: TruncationSide::Left,
        attributes: vec!["helpful".into(), "harmless".into()],
        template: None,
        lora: None,
        head_init_std: 0.02,
    }
}

fn texts(bundle: &RewardModelBundle) -> Vec<String> {
    let prompt = Prompt::Text("How do I bake bread?".into());
    [
        "Mix flour, water, salt and yeast, knead, let it rise, bake at 230 °C.",
        "No.",
    ]
    .iter()
    .map(|r| bundle.text(&prompt, r).unwrap())
    .collect()
}

#[test]
fn minilm_reward_model_scores_saves_and_loads_bit_exactly() {
    let device = test_device();
    let mut bundle = RewardModelBundle::build(&config("minilm"), 1, &device).unwrap();
    assert_eq!(bundle.spec.kind, BackboneKind::Bert);
    assert_eq!(bundle.spec.pooling, Pooling::Mean);
    let texts = texts(&bundle);
    assert!(texts[0].starts_with("\n\nHuman: How do I bake bread?\n\nAssistant: Mix"));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let scores = bundle.score_texts(&refs, 1).unwrap();
    assert_eq!(scores.len(), 2);
    assert_eq!(scores[0].len(), 2, "one reward per attribute");
    // Batching (and padding) does not change scores.
    let batched = bundle.score_texts(&refs, 8).unwrap();
    for (a, b) in scores.iter().flatten().zip(batched.iter().flatten()) {
        assert!((a - b).abs() < 1e-5, "{scores:?} vs {batched:?}");
    }
    bundle.fit_normalization(&refs, 8).unwrap();
    let norm = bundle.spec.normalization.clone().unwrap();
    // Two texts: normalized rewards are ±1.
    let n0 = bundle.normalize(&scores[0]).unwrap();
    assert!((n0[0].abs() - 1.0).abs() < 1e-3, "{n0:?} {norm:?}");

    let dir = std::env::temp_dir().join(format!("plumbline-rm-{}", std::process::id()));
    bundle.save(&dir).unwrap();
    let loaded = RewardModelBundle::load(&dir, &device).unwrap();
    assert_eq!(loaded.spec, bundle.spec);
    let again = loaded.score_texts(&refs, 8).unwrap();
    assert_eq!(again, batched, "scores after save/load");
    // A truncated weights file is an error naming it.
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", RewardModelBundle::load(&dir, &device).unwrap_err());
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn smollm2_lora_reward_model_saves_adapters_and_head_only() {
    let device = test_device();
    let mut c = config("smollm2");
    c.attributes = vec!["reward".into()];
    c.lora = Some(LoraConfig::new(4, 8.0, &["q_proj", "v_proj"]));
    let bundle = RewardModelBundle::build(&c, 2, &device).unwrap();
    assert_eq!(bundle.spec.kind, BackboneKind::Llama);
    assert_eq!(bundle.spec.pooling, Pooling::LastToken);
    let texts = texts(&bundle);
    assert!(texts[0].starts_with(
        "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\nMix"
    ));
    assert!(texts[0].ends_with("<|im_end|>"));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let scores = bundle.score_texts(&refs, 2).unwrap();
    let dir = std::env::temp_dir().join(format!("plumbline-rm-lora-{}", std::process::id()));
    bundle.save(&dir).unwrap();
    assert!(dir.join("adapter_model.safetensors").is_file());
    assert!(dir.join("score.safetensors").is_file());
    assert!(
        !dir.join("model.safetensors").exists(),
        "the base is not copied"
    );
    let loaded = RewardModelBundle::load(&dir, &device).unwrap();
    let again = loaded.score_texts(&refs, 2).unwrap();
    for (a, b) in scores.iter().flatten().zip(again.iter().flatten()) {
        assert!((a - b).abs() < 1e-5, "{scores:?} vs {again:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn decoders_refuse_mean_pooling_and_empty_attributes_are_errors() {
    let device = test_device();
    let mut c = config("smollm2");
    c.pooling = Some(Pooling::Mean);
    let err = RewardModelBundle::build(&c, 0, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("decoder reward models pool the last token"),
        "{err}"
    );
    let mut c = config("minilm");
    c.attributes.clear();
    let err = RewardModelBundle::build(&c, 0, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.attributes is empty"), "{err}");
}

#[test]
fn log_sigmoid_transform_matches_the_closed_form() {
    assert!((log_sigmoid_transform(1.0, 1.0) - (0.5f32).ln()).abs() < 1e-7);
    let expect = -(1.0f64 + (-2.0f64).exp()).ln();
    assert!((log_sigmoid_transform(3.0, 1.0) as f64 - expect).abs() < 1e-7);
    // Stable at the extremes: log σ(−100) = −100 − log(1 + e^−100), log σ(100) ≈ −e^−100.
    assert!((log_sigmoid_transform(-100.0, 0.0) + 100.0).abs() < 1e-4);
    assert!(log_sigmoid_transform(100.0, 0.0) <= 0.0);
    assert!(log_sigmoid_transform(100.0, 0.0) > -1e-30);
}
