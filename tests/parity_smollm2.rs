//! Number-for-number parity of the Llama decoder, GGUF reader and GGUF tokenizer with
//! PyTorch/transformers on SmolLM2-135M-Instruct Q4_1: token ids equal (GGUF tokenizer, no BOS),
//! every per-token log-prob within 1e-3 and the argmax next token equal — through
//! [`text_logprobs`] (what `plumb logprobs` prints), each text alone and all as one right-padded
//! batch, and through a left-padded batch of the decoder (which must also agree with the
//! unbatched runs). The texts are those of `$PLUMB_GOLDEN_DIR/smollm2.json` (default
//! `../shared/golden`), any number of them, and the committed `tests/golden/smollm2_extra.json`
//! (one-token texts: argmax only; written by `benches/peer/golden_smollm2.py`).

use std::path::Path;
use std::time::Instant;

use rm_core::burn::tensor::{Device, Int, Tensor, TensorData};
use rm_core::device::test_device;
use rm_core::logprobs::{sequence_logprobs, text_logprobs};
use rm_core::models::llama::CausalLm;
use rm_core::paths::for_tests::{golden_dir, models_dir};
use serde_json::Value;

/// One text of a golden file.
struct Row {
    text: String,
    ids: Vec<u32>,
    token_logprobs: Vec<f32>,
    argmax: u32,
}

fn read_golden(file: &Path) -> Vec<Row> {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let golden: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not json: {e}", file.display()));
    let rows: Vec<Row> = golden["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| Row {
            text: row["text"].as_str().expect("text").to_string(),
            ids: row["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect(),
            token_logprobs: row["token_logprobs"]
                .as_array()
                .expect("token_logprobs")
                .iter()
                .map(|v| v.as_f64().expect("log-prob") as f32)
                .collect(),
            argmax: row["argmax_next_token"].as_u64().expect("argmax") as u32,
        })
        .collect();
    assert!(!rows.is_empty(), "{} holds no rows", file.display());
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row.token_logprobs.len() + 1,
            row.ids.len(),
            "{} row {i}: one log-prob per id after the first",
            file.display()
        );
    }
    rows
}

fn load_smollm2(device: &Device) -> CausalLm {
    let path = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models`",
        path.display()
    );
    CausalLm::load(&path, device).unwrap()
}

/// Per-token log-probs (`n − 1` per text) and the argmax next token of `seqs` run through the
/// decoder as one left-padded batch.
fn left_padded(lm: &CausalLm, seqs: &[Vec<u32>], device: &Device) -> Vec<(Vec<f32>, u32)> {
    let t = seqs.iter().map(Vec::len).max().unwrap();
    let b = seqs.len();
    let pad = lm.tokenizer.pad_id() as i64;
    let (mut ids, mut mask) = (Vec::<i64>::new(), Vec::<i64>::new());
    for s in seqs {
        let fill = t - s.len();
        ids.extend(std::iter::repeat_n(pad, fill).chain(s.iter().map(|&x| x as i64)));
        mask.extend(std::iter::repeat_n(0, fill).chain(std::iter::repeat_n(1, s.len())));
    }
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device);
    let mask = Tensor::<2, Int>::from_data(TensorData::new(mask, [b, t]), device);
    let logits = lm.model.forward(ids.clone(), mask.clone());
    let v = logits.dims()[2];
    let lp = sequence_logprobs(logits.clone(), ids, mask, false).unwrap();
    let token_lp = lp.token_logprobs.into_data().try_to_vec::<f32>().unwrap();
    let logits = logits.into_data().try_to_vec::<f32>().unwrap();
    seqs.iter()
        .enumerate()
        .map(|(i, s)| {
            let n = s.len();
            let start = t - n;
            let tokens = token_lp[i * (t - 1) + start..][..n - 1].to_vec();
            let last = (i * t + t - 1) * v;
            let argmax = rm_core::sampling::argmax(&logits[last..last + v]) as u32;
            (tokens, argmax)
        })
        .collect()
}

/// Checks every row of `file` against `lm` three ways; returns the worst log-prob error.
fn check_file(lm: &CausalLm, file: &Path, device: &Device) -> f32 {
    let rows = read_golden(file);
    let texts: Vec<String> = rows.iter().map(|r| r.text.clone()).collect();
    let start = Instant::now();
    let alone: Vec<_> = texts
        .iter()
        .map(|t| {
            text_logprobs(lm, std::slice::from_ref(t), 1)
                .unwrap()
                .remove(0)
        })
        .collect();
    let alone_time = start.elapsed();
    let start = Instant::now();
    let right = text_logprobs(lm, &texts, texts.len()).unwrap();
    let batch_time = start.elapsed();
    let seqs: Vec<Vec<u32>> = alone.iter().map(|r| r.ids.clone()).collect();
    let left = left_padded(lm, &seqs, device);

    let mut worst = 0.0f32;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(alone[i].ids, row.ids, "token ids of text {i}");
        assert_eq!(right[i].ids, row.ids, "token ids of text {i} (batched)");
        for (mode, tokens, argmax) in [
            (
                "alone",
                &alone[i].token_logprobs,
                alone[i].argmax_next_token,
            ),
            (
                "right-padded",
                &right[i].token_logprobs,
                right[i].argmax_next_token,
            ),
            ("left-padded", &left[i].0, left[i].1),
        ] {
            let err = max_abs_diff(tokens, &row.token_logprobs);
            println!(
                "smollm2 text {i} ({} tokens, {mode}): max abs log-prob error {err:.2e}; argmax {argmax} (golden {})",
                row.ids.len(),
                row.argmax
            );
            assert!(
                err < 1e-3,
                "text {i} ({mode}): max abs log-prob error {err} exceeds 1e-3"
            );
            assert_eq!(argmax, row.argmax, "argmax next token of text {i} ({mode})");
            worst = worst.max(err);
        }
        for (mode, batched) in [
            ("right-padded", &right[i].token_logprobs),
            ("left-padded", &left[i].0),
        ] {
            let diff = max_abs_diff(batched, &alone[i].token_logprobs);
            println!("smollm2 text {i}: {mode} batch vs alone: max abs difference {diff:.2e}");
            assert!(
                diff < 1e-4,
                "text {i}: {mode} batch differs from the unbatched run by {diff}"
            );
        }
        let sum: f64 = alone[i].token_logprobs.iter().map(|&x| x as f64).sum();
        assert!((alone[i].sum_logprob - sum).abs() < 1e-9);
    }
    println!(
        "smollm2 parity ({}): max abs log-prob error {worst:.2e}; {} texts one at a time {:.0} ms, batched {:.0} ms",
        file.display(),
        rows.len(),
        alone_time.as_secs_f64() * 1e3,
        batch_time.as_secs_f64() * 1e3
    );
    worst
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

#[test]
fn smollm2_matches_transformers() {
    let device = test_device();
    let lm = load_smollm2(&device);
    check_file(&lm, &golden_dir().join("smollm2.json"), &device);
}

/// One-token texts predict no token: an empty per-token list and transformers' argmax, as
/// `plumb logprobs` prints them. An empty text is an error naming it.
#[test]
fn smollm2_one_token_texts_match_transformers() {
    let device = test_device();
    let lm = load_smollm2(&device);
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/smollm2_extra.json");
    let rows = read_golden(&file);
    assert!(
        rows.iter().any(|r| r.ids.len() == 1),
        "{} must hold a one-token text",
        file.display()
    );
    check_file(&lm, &file, &device);
    let err = text_logprobs(&lm, &["Hi".to_string(), String::new()], 8)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "text 2 (\"\") has no tokens: nothing to score");
}
