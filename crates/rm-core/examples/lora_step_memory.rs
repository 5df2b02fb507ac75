//! Peak memory and wall time of one SmolLM2-135M training step, LoRA against full fine-tuning.
//!
//! ```text
//! cargo run -p rm-core --example lora_step_memory -- --mode lora
//! cargo run -p rm-core --example lora_step_memory -- --mode full
//! ```
//!
//! Loads `--model` (default `models/smollm2`) with `CausalLm::load` on the flex CPU device with
//! autodiff, tokenizes GSM8K questions and answers (`--data`, default
//! `../shared/datasets/gsm8k/train.jsonl`) into a batch of `--batch` (8) windows of `--len`
//! (256) real token ids, and runs `--steps` (1) training steps: forward, the summed next-token
//! log-probs of every token (`logprobs::model_sequence_logprobs`), `backward` of their negated
//! mean, `GradAccumulator::add` and one `AdamW::step`. Then it prints the peak resident set size
//! (`VmHWM` of `/proc/self/status`, Linux only) and the seconds of each step.
//!
//! Modes: `lora` puts rank-8, alpha-16 adapters on every attention and MLP projection (`q_proj`,
//! `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`) with `lora::apply`, which
//! freezes every base parameter; `full` trains every parameter. Run each mode in its own process:
//! the peak is per process. The dev profile is fine (dependencies build at opt-level 3); the
//! allocator is the system one unless rm-core's `mimalloc` feature is on.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rm_core::logprobs::model_sequence_logprobs;
use rm_core::lora::{self, LoraConfig};
use rm_core::models::llama::CausalLm;
use rm_core::train::optimizer::{AdamW, AdamWSettings, GradAccumulator};

struct Args {
    mode: String,
    model: String,
    data: String,
    batch: usize,
    len: usize,
    steps: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        mode: String::new(),
        model: "models/smollm2".into(),
        data: "../shared/datasets/gsm8k/train.jsonl".into(),
        batch: 8,
        len: 256,
        steps: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => args.mode = value()?,
            "--model" => args.model = value()?,
            "--data" => args.data = value()?,
            "--batch" => args.batch = value()?.parse().context("--batch")?,
            "--len" => args.len = value()?.parse().context("--len")?,
            "--steps" => args.steps = value()?.parse().context("--steps")?,
            other => bail!("unknown flag {other}; see the header of lora_step_memory.rs"),
        }
    }
    if args.mode != "lora" && args.mode != "full" {
        bail!("--mode lora or --mode full is required");
    }
    Ok(args)
}

/// The kB value of a `/proc/self/status` field, e.g. `VmHWM`.
fn status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .with_context(|| format!("/proc/self/status has no {field}"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unreadable {line:?}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Number of trainable parameters (elements) of `module`.
fn trainable<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let base = param.base();
            if base.is_require_grad() {
                self.0 += base.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}

/// `batch` windows of `len` consecutive token ids of the GSM8K text.
fn token_batch(lm: &CausalLm, path: &str, batch: usize, len: usize) -> Result<Vec<i64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let row: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{path}:{}", i + 1))?;
        for field in ["question", "answer"] {
            let s = row[field]
                .as_str()
                .with_context(|| format!("{path}:{}: no {field}", i + 1))?;
            ids.extend(lm.tokenizer.encode(s, false)?);
        }
        if ids.len() >= batch * len {
            break;
        }
    }
    if ids.len() < batch * len {
        bail!("{path} has only {} tokens", ids.len());
    }
    Ok(ids[..batch * len].iter().map(|&t| t as i64).collect())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = Device::flex().autodiff();
    let t0 = Instant::now();
    let lm =
        CausalLm::load(&args.model, &device).with_context(|| format!("loading {}", args.model))?;
    let ids = token_batch(&lm, &args.data, args.batch, args.len)?;
    let mut model = match args.mode.as_str() {
        "lora" => {
            let targets = [
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ];
            lora::apply(lm.model, &LoraConfig::new(8, 16.0, &targets))?
        }
        _ => lm.model,
    };
    let loaded_kib = status_kib("VmRSS")?;
    println!(
        "mode {}: {} trainable parameters, loaded in {:.1}s, RSS after load {:.0} MiB",
        args.mode,
        trainable(&model),
        t0.elapsed().as_secs_f64(),
        mib(loaded_kib)
    );

    let shape = [args.batch, args.len];
    let mut optimizer = AdamW::new(AdamWSettings::default());
    let mut seconds = Vec::new();
    for step in 0..args.steps {
        let start = Instant::now();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), shape), &device);
        let ones = Tensor::<2, Int>::ones(shape, &device);
        let lp = model_sequence_logprobs(&model, input, ones.clone(), ones, false)?;
        let loss = lp.sum.neg().mean().div_scalar(args.len as f64);
        let loss_value = loss.clone().into_scalar::<f32>();
        let mut grads = GradAccumulator::default();
        grads.add(&model, loss.backward());
        let with_grad = grads.len();
        let (updated, stats) = optimizer.step(model, 1e-4, grads)?;
        model = updated;
        let s = start.elapsed().as_secs_f64();
        println!(
            "step {step}: loss/token {loss_value:.4}, {with_grad} parameter tensors with a \
             gradient, grad norm {:.3}, {s:.2}s",
            stats.grad_norm
        );
        seconds.push(s);
    }
    let peak = status_kib("VmHWM")?;
    println!(
        "RESULT mode={} batch={}x{} peak_rss_mib={:.0} seconds_per_step={:.2}",
        args.mode,
        args.batch,
        args.len,
        mib(peak),
        seconds.iter().sum::<f64>() / seconds.len().max(1) as f64
    );
    Ok(())
}
