//! Number-for-number parity of the BERT encoder with PyTorch/transformers on all-MiniLM-L6-v2:
//! token ids equal and mean-pooled vectors within 1e-4 of `../shared/golden/minilm.json`
//! (four texts batched together with right padding).

use rm_core::device::test_device;
use rm_core::models::bert::BertEmbedder;
use rm_core::models::pooling::Pooling;
use rm_core::paths::for_tests::{golden_dir, models_dir};
use serde_json::Value;

#[test]
fn minilm_matches_transformers() {
    let folder = models_dir().join("minilm");
    assert!(
        folder.join("model.safetensors").is_file(),
        "{} is missing: run `cargo xtask fetch-models`",
        folder.display()
    );
    assert!(
        folder.join("config.json").is_file(),
        "{} is missing: run `cargo xtask fetch-models`",
        folder.join("config.json").display()
    );
    let golden_file = golden_dir().join("minilm.json");
    let text = std::fs::read_to_string(&golden_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", golden_file.display()));
    let golden: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not json: {e}", golden_file.display()));
    let rows = golden["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no \"rows\" array", golden_file.display()));
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();

    let embedder = BertEmbedder::load(&folder, &test_device()).unwrap();
    let out = embedder.embed(&texts, Pooling::Mean, None).unwrap();

    let mut worst = 0.0f32;
    for (i, row) in rows.iter().enumerate() {
        let ids: Vec<u32> = row["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(out.ids[i], ids, "token ids of text {i}");
        let expected: Vec<f32> = row["mean_pooled"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(out.vectors[i].len(), expected.len());
        let err = out.vectors[i]
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!(
            "minilm text {i} ({} tokens): max abs error {err:.2e}",
            ids.len()
        );
        worst = worst.max(err);
    }
    println!(
        "minilm parity: max abs error {worst:.2e} over {} texts",
        rows.len()
    );
    assert!(worst < 1e-4, "max abs error {worst} exceeds 1e-4");
}
