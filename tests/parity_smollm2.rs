//! Number-for-number parity of the Llama decoder, GGUF reader and GGUF tokenizer with
//! PyTorch/transformers on SmolLM2-135M-Instruct Q4_1: token ids equal (GGUF tokenizer, no BOS),
//! every per-token log-prob within 1e-3 and the argmax next token equal, for the three texts of
//! `../shared/golden/smollm2.json` — each text alone, and all three as one right-padded and one
//! left-padded batch (which must also agree with the unbatched runs).

use std::time::Instant;

use rm_core::burn::tensor::{Device, Int, Tensor, TensorData};
use rm_core::device::test_device;
use rm_core::logprobs::sequence_logprobs;
use rm_core::models::llama::CausalLm;
use rm_core::paths::for_tests::{golden_dir, models_dir};
use serde_json::Value;

/// One text of the golden file.
struct Row {
    text: String,
    ids: Vec<u32>,
    token_logprobs: Vec<f32>,
    argmax: usize,
}

fn read_golden() -> Vec<Row> {
    let file = golden_dir().join("smollm2.json");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let golden: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not json: {e}", file.display()));
    golden["rows"]
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
            argmax: row["argmax_next_token"].as_u64().expect("argmax") as usize,
        })
        .collect()
}

/// Per-token log-probs (`n − 1` per text) and last-position logits of `seqs` run as one batch
/// padded with `pad` on the left or the right.
fn run(lm: &CausalLm, seqs: &[Vec<u32>], left: bool, device: &Device) -> Vec<(Vec<f32>, Vec<f32>)> {
    let t = seqs.iter().map(Vec::len).max().unwrap();
    let b = seqs.len();
    let pad = lm.tokenizer.pad_id() as i64;
    let (mut ids, mut mask) = (Vec::<i64>::new(), Vec::<i64>::new());
    for s in seqs {
        let real: Vec<i64> = s.iter().map(|&x| x as i64).collect();
        let fill = t - s.len();
        let (pads, ones) = (vec![pad; fill], vec![1i64; s.len()]);
        if left {
            ids.extend(pads.iter().chain(&real));
            mask.extend(std::iter::repeat_n(0, fill).chain(ones));
        } else {
            ids.extend(real.iter().chain(&pads));
            mask.extend(ones.into_iter().chain(std::iter::repeat_n(0, fill)));
        }
    }
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device);
    let mask = Tensor::<2, Int>::from_data(TensorData::new(mask, [b, t]), device);
    let logits = lm.model.forward(ids.clone(), mask.clone());
    let v = logits.dims()[2];
    let lp = sequence_logprobs(logits.clone(), ids, mask, false);
    let token_lp = lp.token_logprobs.into_data().try_to_vec::<f32>().unwrap();
    let logits = logits.into_data().try_to_vec::<f32>().unwrap();
    seqs.iter()
        .enumerate()
        .map(|(i, s)| {
            let n = s.len();
            let start = if left { t - n } else { 0 };
            let tokens = token_lp[i * (t - 1) + start..i * (t - 1) + start + n - 1].to_vec();
            let last = (i * t + start + n - 1) * v;
            (tokens, logits[last..last + v].to_vec())
        })
        .collect()
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
    let path = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models`",
        path.display()
    );
    let rows = read_golden();
    assert_eq!(rows.len(), 3, "the golden file holds three texts");
    let device = test_device();
    let lm = CausalLm::load(&path, &device).unwrap();

    // Token ids (GGUF tokenizer, no BOS).
    let seqs: Vec<Vec<u32>> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let ids = lm.tokenizer.encode(&row.text, false).unwrap();
            assert_eq!(ids, row.ids, "token ids of text {i}");
            assert_eq!(
                row.token_logprobs.len(),
                ids.len() - 1,
                "golden of text {i}"
            );
            ids
        })
        .collect();

    let start = Instant::now();
    let alone: Vec<_> = seqs
        .iter()
        .map(|s| run(&lm, std::slice::from_ref(s), false, &device).remove(0))
        .collect();
    let alone_time = start.elapsed();
    let start = Instant::now();
    let right = run(&lm, &seqs, false, &device);
    let batch_time = start.elapsed();
    let left = run(&lm, &seqs, true, &device);

    let mut worst = 0.0f32;
    for (i, row) in rows.iter().enumerate() {
        for (mode, (tokens, last)) in [
            ("alone", &alone[i]),
            ("right-padded", &right[i]),
            ("left-padded", &left[i]),
        ] {
            let err = max_abs_diff(tokens, &row.token_logprobs);
            let argmax = rm_core::sampling::argmax(last);
            println!(
                "smollm2 text {i} ({} tokens, {mode}): max abs log-prob error {err:.2e}; argmax {argmax} (golden {})",
                seqs[i].len(),
                row.argmax
            );
            assert!(
                err < 1e-3,
                "text {i} ({mode}): max abs log-prob error {err} exceeds 1e-3"
            );
            assert_eq!(argmax, row.argmax, "argmax next token of text {i} ({mode})");
            worst = worst.max(err);
        }
        for (mode, batched) in [("right-padded", &right[i]), ("left-padded", &left[i])] {
            let diff =
                max_abs_diff(&batched.0, &alone[i].0).max(max_abs_diff(&batched.1, &alone[i].1));
            println!("smollm2 text {i}: {mode} batch vs alone: max abs difference {diff:.2e}");
            assert!(
                diff < 1e-4,
                "text {i}: {mode} batch differs from the unbatched run by {diff}"
            );
        }
    }
    println!(
        "smollm2 parity: max abs log-prob error {worst:.2e}; forward of the three texts one at a time {:.0} ms, batched {:.0} ms",
        alone_time.as_secs_f64() * 1e3,
        batch_time.as_secs_f64() * 1e3
    );
}
