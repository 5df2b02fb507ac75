//! Number-for-number parity of the Llama decoder, GGUF reader and GGUF tokenizer with
//! PyTorch/transformers on SmolLM2-135M-Instruct Q4_1: token ids equal, every per-token log-prob
//! within 1e-3 and the argmax next token equal, for the three texts of
//! `../shared/golden/smollm2.json` run as one padded batch.

use rm_core::burn::tensor::{Int, Tensor, TensorData};
use rm_core::device::test_device;
use rm_core::logprobs::sequence_logprobs;
use rm_core::models::llama::CausalLm;
use rm_core::paths::for_tests::{golden_dir, models_dir};
use serde_json::Value;

#[test]
fn smollm2_matches_transformers() {
    let path = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models`",
        path.display()
    );
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("smollm2.json")).unwrap())
            .unwrap();
    let rows = golden["rows"].as_array().unwrap();
    let device = test_device();
    let lm = CausalLm::load(&path, &device).unwrap();

    // Token ids.
    let mut all_ids = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let ids = lm
            .tokenizer
            .encode(row["text"].as_str().unwrap(), false)
            .unwrap();
        let expected: Vec<u32> = row["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, expected, "token ids of text {i}");
        all_ids.push(ids);
    }

    // One right-padded batch.
    let t = all_ids.iter().map(Vec::len).max().unwrap();
    let b = all_ids.len();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for s in &all_ids {
        ids.extend(s.iter().map(|&x| x as i64));
        ids.extend(std::iter::repeat_n(
            lm.tokenizer.pad_id() as i64,
            t - s.len(),
        ));
        mask.extend(std::iter::repeat_n(1i64, s.len()));
        mask.extend(std::iter::repeat_n(0i64, t - s.len()));
    }
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
    let mask = Tensor::<2, Int>::from_data(TensorData::new(mask, [b, t]), &device);
    let logits = lm.model.forward(ids.clone(), mask.clone());
    let v = logits.dims()[2];
    let lp = sequence_logprobs(logits.clone(), ids, mask, false);
    let token_lp = lp.token_logprobs.into_data().try_to_vec::<f32>().unwrap();
    let logits = logits.into_data().try_to_vec::<f32>().unwrap();

    let mut worst = 0.0f32;
    for (i, row) in rows.iter().enumerate() {
        let expected: Vec<f32> = row["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let n = all_ids[i].len();
        let got = &token_lp[i * (t - 1)..i * (t - 1) + n - 1];
        let err = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let last = &logits[(i * t + n - 1) * v..(i * t + n) * v];
        let argmax = rm_core::sampling::argmax(last) as u64;
        println!(
            "smollm2 text {i} ({n} tokens): max abs log-prob error {err:.2e}; argmax {argmax} (golden {})",
            row["argmax_next_token"]
        );
        assert_eq!(
            argmax,
            row["argmax_next_token"].as_u64().unwrap(),
            "argmax of text {i}"
        );
        worst = worst.max(err);
    }
    println!("smollm2 parity: max abs log-prob error {worst:.2e}");
    assert!(worst < 1e-3, "max abs log-prob error {worst} exceeds 1e-3");
}
