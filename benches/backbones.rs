//! Backbone throughput, plumbline against its PyTorch peer in the same run.
//!
//! Workloads (issue "Foundation 2/2", item 8), all on the same token ids for both sides:
//! - `smollm2-fwd-bwd`: SmolLM2-135M-Instruct (the Q4_1 GGUF, dequantized to f32) forward +
//!   backward of the summed next-token log-probs, batch 8 × 256 tokens → tokens/s;
//! - `smollm2-sample-b1` / `-b8`: greedy generation with the KV cache, 128 new tokens (no stop
//!   token), batch 1 and 8 → new tokens/s;
//! - `minilm-encode-128` / `-256`: all-MiniLM-L6-v2 forward + mean pooling, batch 32 at 128 and
//!   256 tokens → sequences/s.
//!
//! Run with `cargo xtask bench` (it fetches the models and makes the peer's venv), or
//! `cargo bench --bench backbones -- [--peer-python PATH] [--threads N] [--iters N] [--only NAME]`.
//! The peer is `benches/peer/backbones.py`, handed the workloads (ids included) as JSON; its
//! figures come back as JSON on stdout. Results go to `runs/bench/backbones.{json,md}`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rm_core::burn::tensor::{Device, Int, Tensor, TensorData};
use rm_core::logprobs::model_sequence_logprobs;
use rm_core::models::bert::BertEmbedder;
use rm_core::models::llama::CausalLm;
use rm_core::models::pooling::Pooling;
use rm_core::paths::for_tests;
use rm_core::sampling::{SamplingConfig, generate};
use serde_json::{Value, json};

struct Options {
    peer_python: Option<PathBuf>,
    threads: usize,
    iters: usize,
    only: Option<String>,
}

fn options() -> Result<Options> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let threads = match value("--threads") {
        Some(t) => t.parse().context("--threads")?,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    Ok(Options {
        peer_python: value("--peer-python").map(PathBuf::from),
        threads,
        iters: value("--iters")
            .map_or(Ok(3), |s| s.parse())
            .context("--iters")?,
        only: value("--only"),
    })
}

/// One timed workload: what it does, its inputs, and how much work one iteration is.
struct Workload {
    name: &'static str,
    unit: &'static str,
    /// Units of work per iteration (tokens, new tokens or sequences).
    work: f64,
    spec: Value,
}

/// A token stream from HH-RLHF harmless train transcripts (chosen side), cut into `rows` rows of
/// `len` ids each.
fn token_rows(ids: &[u32], rows: usize, len: usize) -> Result<Vec<Vec<u32>>> {
    if ids.len() < rows * len {
        bail!("only {} tokens of text for {rows}×{len}", ids.len());
    }
    Ok(ids.chunks(len).take(rows).map(<[u32]>::to_vec).collect())
}

fn hh_text() -> Result<String> {
    let path = for_tests::data_dir().join("hh-rlhf/harmless-base.train.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = String::new();
    for line in text.lines().take(400) {
        let row: Value = serde_json::from_str(line)?;
        out.push_str(row["chosen"].as_str().unwrap_or_default());
    }
    Ok(out)
}

fn int_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

/// Median seconds per iteration over `iters` runs after one warm-up run.
fn time_it(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> Result<()> {
    rm_core::allocator::keep_freed_memory();
    let opts = options()?;
    // rayon's pool drives burn's flex backend; the peer gets the same thread count.
    rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build_global()
        .ok();
    let models = for_tests::models_dir();
    let smollm2 = models.join("smollm2");
    let minilm = models.join("minilm");
    for dir in [&smollm2, &minilm] {
        if !dir.is_dir() {
            bail!(
                "{} is missing: run `cargo xtask fetch-models`",
                dir.display()
            );
        }
    }
    let device = Device::flex();
    let text = hh_text()?;
    let wanted = |name: &str| opts.only.as_deref().is_none_or(|o| name.starts_with(o));

    let mut workloads: Vec<Workload> = Vec::new();
    let mut ours: Vec<f64> = Vec::new();

    // SmolLM2 forward + backward, 8 × 256.
    if wanted("smollm2-fwd-bwd") {
        let ad = device.clone().autodiff();
        let lm = CausalLm::load(&smollm2, &ad)?;
        let ids = lm.tokenizer.encode(&text, false)?;
        let rows = token_rows(&ids, 8, 256)?;
        let input = int_tensor(&rows, &ad);
        let ones = input.ones_like();
        let secs = time_it(opts.iters, || {
            let lp = model_sequence_logprobs(
                &lm.model,
                input.clone(),
                ones.clone(),
                ones.clone(),
                false,
            )?;
            let grads = lp.sum.sum().backward();
            drop(grads);
            Ok(())
        })?;
        workloads.push(Workload {
            name: "smollm2-fwd-bwd",
            unit: "tokens/s",
            work: 8.0 * 256.0,
            spec: json!({"kind": "lm-fwd-bwd", "model": smollm2, "ids": rows}),
        });
        ours.push(secs);
    }

    // SmolLM2 greedy sampling with the KV cache, batch 1 and 8, 128 new tokens.
    if wanted("smollm2-sample") {
        let lm = CausalLm::load(&smollm2, &device)?;
        let ids = lm.tokenizer.encode(&text, false)?;
        for (name, batch) in [("smollm2-sample-b1", 1), ("smollm2-sample-b8", 8)] {
            let prompts = token_rows(&ids[4096..], batch, 32)?;
            let config = SamplingConfig::greedy(128);
            let secs = time_it(opts.iters, || {
                let out = generate(&lm, &lm.tokenizer, &prompts, &config, &device)?;
                let produced: usize = out.iter().map(|r| r.tokens.len()).sum();
                if produced != 128 * batch {
                    bail!("{name}: {produced} new tokens, expected {}", 128 * batch);
                }
                Ok(())
            })?;
            workloads.push(Workload {
                name,
                unit: "new tokens/s",
                work: 128.0 * batch as f64,
                spec: json!({"kind": "lm-sample", "model": smollm2, "ids": prompts, "new_tokens": 128}),
            });
            ours.push(secs);
        }
    }

    // MiniLM encoding, batch 32 at 128 and 256 tokens.
    if wanted("minilm-encode") {
        let embedder = BertEmbedder::load(&minilm, &device)?;
        let ids = embedder.tokenizer.encode(&text, false)?;
        for (name, len) in [("minilm-encode-128", 128), ("minilm-encode-256", 256)] {
            let rows = token_rows(&ids, 32, len)?;
            let input = int_tensor(&rows, &device);
            let mask = input.ones_like();
            let secs = time_it(opts.iters, || {
                let hidden = embedder.model.forward(input.clone(), mask.clone(), None);
                let pooled = Pooling::Mean.pool(hidden, mask.clone());
                let _ = pooled.into_data();
                Ok(())
            })?;
            workloads.push(Workload {
                name,
                unit: "sequences/s",
                work: 32.0,
                spec: json!({"kind": "bert-encode", "model": minilm, "ids": rows}),
            });
            ours.push(secs);
        }
    }

    for (w, secs) in workloads.iter().zip(&ours) {
        eprintln!(
            "plumbline: {}: {:.3} s/iteration ({:.1} {})",
            w.name,
            secs,
            w.work / secs,
            w.unit
        );
    }
    let peer = match &opts.peer_python {
        Some(python) => Some(run_peer(python, &workloads, &opts)?),
        None => {
            eprintln!("no --peer-python: printing plumbline's figures alone");
            None
        }
    };
    report(&workloads, &ours, peer.as_ref(), &opts)
}

/// Runs `benches/peer/backbones.py` on the same workloads; returns its seconds per iteration.
fn run_peer(python: &Path, workloads: &[Workload], opts: &Options) -> Result<Vec<f64>> {
    let root = rm_core::paths::repo_root_from(&std::env::current_dir()?)
        .context("finding the repository root")?;
    let spec_path = root.join("runs/bench/backbones-workloads.json");
    std::fs::create_dir_all(spec_path.parent().unwrap_or(&root))?;
    let spec = json!({
        "threads": opts.threads,
        "iters": opts.iters,
        "workloads": workloads.iter().map(|w| {
            let mut s = w.spec.clone();
            s["name"] = json!(w.name);
            s
        }).collect::<Vec<_>>(),
    });
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    eprintln!("running the PyTorch peer ({})", python.display());
    let out = Command::new(python)
        .arg(root.join("benches/peer/backbones.py"))
        .arg(&spec_path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", python.display()))?;
    if !out.status.success() {
        bail!("the peer failed ({})", out.status);
    }
    let result: Value = serde_json::from_slice(&out.stdout).context("reading the peer's JSON")?;
    workloads
        .iter()
        .map(|w| {
            result["seconds"][w.name]
                .as_f64()
                .with_context(|| format!("the peer gave no time for {}", w.name))
        })
        .collect()
}

fn report(
    workloads: &[Workload],
    ours: &[f64],
    peer: Option<&Vec<f64>>,
    opts: &Options,
) -> Result<()> {
    let machine = format!(
        "{} ({} threads for both sides; burn flex backend vs PyTorch CPU, f32)",
        cpu_name(),
        opts.threads
    );
    let mut md = format!(
        "machine: {machine}\nmedian of {} iterations after one warm-up\n\n| workload | plumbline | peer (PyTorch) | ratio plumbline/peer |\n|---|---|---|---|\n",
        opts.iters
    );
    let mut rows = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let ours_rate = w.work / ours[i];
        let peer_rate = peer.map(|p| w.work / p[i]);
        let ratio = peer_rate.map(|p| ours_rate / p);
        md.push_str(&format!(
            "| {} | {:.1} {} | {} | {} |\n",
            w.name,
            ours_rate,
            w.unit,
            peer_rate.map_or("-".into(), |p| format!("{p:.1} {}", w.unit)),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
        ));
        rows.push(json!({
            "workload": w.name, "unit": w.unit, "plumbline": ours_rate,
            "peer": peer_rate, "ratio": ratio,
        }));
    }
    println!("\n{md}");
    let root = rm_core::paths::repo_root_from(&std::env::current_dir()?)
        .context("finding the repository root")?;
    let dir = root.join("runs/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("backbones.md"), &md)?;
    std::fs::write(
        dir.join("backbones.json"),
        serde_json::to_vec_pretty(&json!({"machine": machine, "results": rows}))?,
    )?;
    println!("written: {}", dir.join("backbones.{json,md}").display());
    Ok(())
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
