//! Backbone throughput, plumbline against its PyTorch peer in the same run.
//!
//! Workloads (issue "Foundation 2/2", item 8), all on the same token ids for both sides:
//! - `smollm2-fwd-bwd`: SmolLM2-135M-Instruct (the Q4_1 GGUF, dequantized to f32) forward +
//!   backward of the summed next-token log-probs, batch 8 × 256 tokens → tokens/s;
//! - `smollm2-sample-b1` / `-b8`: greedy generation with the KV cache, 128 new tokens (no stop
//!   token), batch 1 and 8 → new tokens/s;
//! - `minilm-encode-128` / `-256`: all-MiniLM-L6-v2 forward + mean pooling, batch 32 at 128 and
//!   256 tokens → sequences/s;
//! - `dpo-step-lora`: DPO training steps of `recipes/dpo-smollm2-hh.toml` (SmolLM2 with LoRA, the
//!   reference = the adapters switched off), one micro-batch of pairs per optimizer step: policy
//!   and reference forward, backward, global-norm clipping and AdamW on the LoRA factors, against
//!   TRL's `DPOTrainer` (`benches/peer/dpo.py`) on the same token ids → real (non-pad) tokens of
//!   the chosen + rejected sequences per second, over `--iters` steps after one warm-up step
//!   (each step on the next pairs of HH-RLHF harmless-base train);
//! - `grpo-step-lora`: GRPO steps of `recipes/grpo-smollm2-gsm8k.toml` at bench sizes (2 GSM8K
//!   prompts × a group of 4, exactly 64 new tokens per completion, micro-batches of 4), one
//!   collection — sampling with the KV cache, the rewards, the old and the LoRA-disabled
//!   reference log-probs, the group advantages — and one optimizer step over the whole buffer,
//!   against TRL's `GRPOTrainer` (`benches/peer/grpo.py`) on the same prompt token ids → seconds
//!   per GRPO step, over `--iters` steps after one warm-up step.
//!
//! Run with `cargo xtask bench` (it fetches the models and makes the peer's venv), or
//! `cargo bench --bench backbones -- [--peer-python PATH] [--threads N] [--iters N] [--only NAME]
//! [--device SPEC[,SPEC..]]`. The peer is `benches/peer/backbones.py`, handed the workloads (ids
//! included) as JSON; its figures come back as JSON on stdout. Results go to
//! `runs/bench/backbones.{json,md}`.
//!
//! `--device` takes `--device` values of `plumb` (rm-core's parser; default `flex`), several
//! separated by commas: plumbline then runs every workload on each device in turn, the peer once,
//! and the table has one row per workload and device (`cargo xtask tch -- bench` runs
//! `--device flex,tch:cpu` in a build with the `tch` feature). flex's work runs on a rayon pool of
//! `--threads` threads; LibTorch's intra-op pool reads `OMP_NUM_THREADS` when the process starts
//! (the tch xtask sets it from `--threads`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use policy_opt::online::RlRecipe;
use policy_opt::online::rewards::RewardSet;
use policy_opt::online::task::RlTask;
use policy_opt::preference::PreferenceRecipe;
use policy_opt::preference::data::encode_pairs;
use policy_opt::preference::objective::PreferenceObjective;
use policy_opt::preference::task::DpoTask;
use rm_core::burn::module::Module;
use rm_core::burn::tensor::{Device, Int, Tensor, TensorData};
use rm_core::device::DeviceSpec;
use rm_core::logprobs::model_sequence_logprobs;
use rm_core::models::bert::BertEmbedder;
use rm_core::models::llama::CausalLm;
use rm_core::models::policy_folder::Policy;
use rm_core::models::pooling::Pooling;
use rm_core::paths::for_tests;
use rm_core::sampling::{SamplingConfig, generate};
use rm_core::train::optimizer::AdamW;
use rm_core::train::rollout::collect_seed;
use rm_core::train::schedule::LrSchedule;
use rm_core::train::session::accumulate;
use rm_core::train::{RolloutTask, TrainTask, epoch_order};
use rm_core::types::Prompt;
use serde_json::{Value, json};

struct Options {
    peer_python: Option<PathBuf>,
    threads: usize,
    iters: usize,
    only: Option<String>,
    /// The devices plumbline runs on, resolved (`auto` becomes what it picks), in order.
    devices: Vec<DeviceSpec>,
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
    let iters = value("--iters")
        .map_or(Ok(3), |s| s.parse())
        .context("--iters")?;
    if iters == 0 {
        bail!("--iters must be at least 1");
    }
    let devices = parse_devices(value("--device").as_deref().unwrap_or("flex"))?;
    Ok(Options {
        peer_python: value("--peer-python").map(PathBuf::from),
        threads,
        iters,
        only: value("--only"),
        devices,
    })
}

/// `--device flex,tch:cpu`: each part parsed and resolved like `plumb --device`; an empty list
/// or a device named twice is an error.
fn parse_devices(list: &str) -> Result<Vec<DeviceSpec>> {
    let mut devices = Vec::new();
    for part in list.split(',') {
        let spec: DeviceSpec = part.parse().with_context(|| format!("--device {list}"))?;
        let spec = spec.resolve().with_context(|| format!("--device {list}"))?;
        if devices.contains(&spec) {
            bail!("--device {list}: {spec} is named twice");
        }
        devices.push(spec);
    }
    Ok(devices)
}

/// One timed workload: what it does, its inputs, and how much work one iteration is.
struct Workload {
    name: &'static str,
    unit: &'static str,
    /// Units of work per iteration (tokens, new tokens or sequences; 1 for `per_step`).
    work: f64,
    spec: Value,
    /// Tokens over the timed iterations that the peer must have processed too, when it reports
    /// its own count (the DPO steps' real tokens, the GRPO steps' completion tokens).
    tokens: Option<f64>,
    /// Reported as seconds per iteration (the ratio: peer seconds / plumbline seconds) instead
    /// of a rate.
    per_step: bool,
}

/// The DPO recipe the `dpo-step-lora` workload mirrors.
const DPO_RECIPE: &str = "recipes/dpo-smollm2-hh.toml";

/// The GRPO recipe the `grpo-step-lora` workload mirrors, and the bench's overrides: 2 prompts ×
/// a group of 4 (one generation batch of 8 rows), every completion exactly 64 new tokens (no
/// stop at end-of-sequence, so both sides do the same work), one optimizer step over the
/// buffer of 8 in micro-batches of 4.
const GRPO_RECIPE: &str = "recipes/grpo-smollm2-gsm8k.toml";
const GRPO_OVERRIDES: [&str; 7] = [
    "rollout.prompts_per_iteration=2",
    "rollout.group_size=4",
    "rollout.generation_batch=8",
    "rollout.sampling.max_new_tokens=64",
    "rollout.stop_at_eos=false",
    "train.batch_size=8",
    "train.micro_batch_size=4",
];

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
    let text = hh_text()?;
    // Workloads (their specs do not depend on the device) from the first device; seconds per
    // iteration from each.
    let mut workloads: Vec<Workload> = Vec::new();
    let mut ours: Vec<Vec<f64>> = Vec::new();
    for &spec in &opts.devices {
        let device = spec
            .device()
            .with_context(|| format!("building device {spec}"))?;
        eprintln!("plumbline on {spec}");
        let (ws, secs) = measure(spec, &device, &opts, &text, &models)?;
        if workloads.is_empty() {
            workloads = ws;
        } else if ws
            .iter()
            .map(|w| w.name)
            .ne(workloads.iter().map(|w| w.name))
        {
            bail!("{spec} ran other workloads than {}", opts.devices[0]);
        }
        ours.push(secs);
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

/// Every wanted workload on `device` (`spec` names it): the workloads and plumbline's seconds
/// per iteration of each.
fn measure(
    spec: DeviceSpec,
    device: &Device,
    opts: &Options,
    text: &str,
    models: &Path,
) -> Result<(Vec<Workload>, Vec<f64>)> {
    let device = device.clone();
    let text = text.to_string();
    let smollm2 = models.join("smollm2");
    let minilm = models.join("minilm");
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
            tokens: None,
            per_step: false,
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
                tokens: None,
                per_step: false,
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
                tokens: None,
                per_step: false,
            });
            ours.push(secs);
        }
    }

    // DPO training steps with LoRA, as `plumb train-po` runs them.
    if wanted("dpo-step-lora") {
        let (workload, secs) = dpo_step_lora(&device, models, opts.iters)?;
        workloads.push(workload);
        ours.push(secs);
    }

    // GRPO steps (one collection + one optimizer step), as `plumb train-rl` runs them.
    if wanted("grpo-step-lora") {
        let (workload, secs) = grpo_step_lora(&device, models, opts.iters)?;
        workloads.push(workload);
        ours.push(secs);
    }

    for (w, secs) in workloads.iter().zip(&ours) {
        if w.per_step {
            eprintln!("plumbline ({spec}): {}: {secs:.3} {}", w.name, w.unit);
            continue;
        }
        eprintln!(
            "plumbline ({spec}): {}: {:.3} s/iteration ({:.1} {})",
            w.name,
            secs,
            w.work / secs,
            w.unit
        );
    }
    Ok((workloads, ours))
}

/// `dpo-step-lora`: `iters` optimizer steps of DPO after one warm-up step, each on the next
/// micro-batch of the recipe's training pairs (step `k` on pairs `k·B .. (k+1)·B`, `B` the
/// recipe's micro-batch), done as the trainer's session does them: [`accumulate`] (the task's
/// loss — policy and LoRA-disabled reference forward — and backward), the step's metrics and
/// gradient norm read in one transfer, then [`AdamW::apply`] with the recipe's settings and
/// schedule. Returns the workload (its work: real tokens of the chosen + rejected sequences per
/// timed step, on average) and the mean seconds per timed step.
fn dpo_step_lora(device: &Device, models: &Path, iters: usize) -> Result<(Workload, f64)> {
    let root = rm_core::paths::repo_root_from(&std::env::current_dir()?)
        .context("finding the repository root")?;
    let mut recipe = PreferenceRecipe::load(&root.join(DPO_RECIPE), &[])?;
    recipe.model.policy = rm_core::paths::resolve_model_path(&recipe.model.policy, models);
    recipe.validate()?;
    let Some(lora) = recipe.model.lora.clone() else {
        bail!("{DPO_RECIPE} has no [model] lora: dpo-step-lora times a LoRA policy");
    };
    // TRL's DPOConfig fields, for the peer.
    let PreferenceObjective::Dpo(dpo_config) = &recipe.objective else {
        bail!("{DPO_RECIPE}: objective.kind is not \"dpo\": dpo-step-lora times DPO");
    };
    let objective = serde_json::to_value(dpo_config)?;
    let micro = recipe.train.micro_batch();
    let steps = iters + 1;
    let pairs: Vec<_> = recipe
        .data
        .train
        .load(&for_tests::data_dir())?
        .into_iter()
        .take(steps * micro)
        .collect();
    if pairs.len() < steps * micro {
        bail!(
            "{}: {} pairs, {steps} steps of {micro} need {}",
            recipe.data.train.describe(),
            pairs.len(),
            steps * micro
        );
    }

    let ad = device.clone().autodiff();
    ad.seed(recipe.train.seed);
    let policy = Policy::build(&recipe.model, &ad)?;
    let pad_id = policy.lm.tokenizer.pad_id();
    let encoded = encode_pairs(&policy, &pairs, &recipe.data.train.describe())?;
    // Real tokens of each step's [2B, T] batch (chosen rows, then rejected).
    let step_tokens: Vec<usize> = encoded
        .chunks(micro)
        .map(|c| c.iter().map(|p| p.chosen.len() + p.rejected.len()).sum())
        .collect();
    // The peer lays a sequence out as a prompt followed by its completion.
    for p in &encoded {
        for s in [&p.chosen, &p.rejected] {
            let prompt = s.completion.iter().take_while(|&&c| !c).count();
            if !s.completion[prompt..].iter().all(|&c| c) {
                bail!("dpo-step-lora: a sequence's completion tokens are not one suffix");
            }
        }
    }
    let sequence = |s: &rm_core::tokenize::Sequence| {
        let prompt = s.completion.iter().take_while(|&&c| !c).count();
        json!({"ids": s.ids, "prompt_len": prompt})
    };
    let peer_pairs: Vec<Value> = encoded
        .iter()
        .map(|p| json!({"chosen": sequence(&p.chosen), "rejected": sequence(&p.rejected)}))
        .collect();
    // The pairs as text, for the peer's report of what TRL's own tokenization would give.
    let text_pairs: Vec<Value> = pairs
        .iter()
        .map(|p| {
            let prompt = match &p.prompt {
                Prompt::Conversation(c) => c
                    .turns
                    .iter()
                    .map(|t| json!({"role": t.role.as_str(), "content": t.content}))
                    .collect(),
                Prompt::Text(t) => vec![json!({"role": "user", "content": t})],
            };
            json!({
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}],
            })
        })
        .collect();

    let mut model = policy.lm.model.clone();
    let reference = rm_core::policy::reference_policy(&model)?;
    let mut task = DpoTask::new(
        encoded,
        Vec::new(),
        recipe.objective.clone(),
        policy,
        Some(reference),
        recipe.eval.batch_size,
    )?;
    let train = &recipe.train;
    let mut optim = AdamW::new(train.adamw()).with_groups(train.param_group_rules());
    let schedule =
        LrSchedule::with_warmup_ratio(train.lr, train.warmup_ratio, steps as u64, train.schedule);
    let mut timed = 0.0;
    for (step, &tokens) in step_tokens.iter().enumerate() {
        let start = Instant::now();
        let items: Vec<usize> = (step * micro..(step + 1) * micro).collect();
        let (grads, metrics) = accumulate(&model, &mut task, &items, micro, &ad, |i| {
            train.seed ^ ((step as u64) << 8) ^ i as u64
        })?;
        let values = metrics.read(grads.squared_norm())?;
        if !values.loss.is_finite() {
            bail!("dpo-step-lora: step {}: loss {}", step + 1, values.loss);
        }
        let grad_norm = values.grad_norm.unwrap_or(0.0);
        let (updated, stats) = optim.apply(model, schedule.lr_at(step as u64), grads, grad_norm)?;
        model = updated;
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "plumbline: dpo-step-lora: step {}{}: {} tokens, {secs:.3} s, loss {:.4}, grad norm {grad_norm:.4}, {} tensors updated",
            step + 1,
            if step == 0 { " (warm-up)" } else { "" },
            tokens,
            values.loss,
            stats.params
        );
        if step > 0 {
            timed += secs;
        }
    }
    let tokens: usize = step_tokens[1..].iter().sum();
    let spec = json!({
        "kind": "dpo-step",
        "model": recipe.model.policy,
        "recipe": DPO_RECIPE,
        "pairs": peer_pairs,
        "text_pairs": text_pairs,
        "step_tokens": step_tokens,
        "pad_id": pad_id,
        "micro_batch": micro,
        "max_length": recipe.model.max_len,
        "lora": lora,
        "objective": objective,
        "train": {
            "lr": train.lr, "weight_decay": train.weight_decay, "warmup_ratio": train.warmup_ratio,
            "schedule": train.schedule, "max_grad_norm": train.max_grad_norm,
            "beta1": train.beta1, "beta2": train.beta2, "eps": train.eps, "seed": train.seed,
        },
    });
    Ok((
        Workload {
            name: "dpo-step-lora",
            unit: "tokens/s",
            work: tokens as f64 / iters as f64,
            spec,
            tokens: Some(tokens as f64),
            per_step: false,
        },
        timed / iters as f64,
    ))
}

/// `grpo-step-lora`: `iters` GRPO steps after one warm-up step, each as `plumb train-rl` runs an
/// iteration of [`GRPO_RECIPE`] with [`GRPO_OVERRIDES`]: [`RlTask::collect`] on the frozen
/// policy (sampling `P × G` completions with the KV cache, the rewards, the old policy's and the
/// LoRA-disabled reference's per-token log-probs, the group advantages), then one optimizer step
/// over the whole buffer — [`accumulate`] over the recipe's micro-batches (clip loss + k3 KL +
/// entropy, backward), the step's metrics and gradient norm in one transfer, [`AdamW::apply`]
/// (with global-norm clipping) and the task's `after_step`. Step `k` collects iteration `k`
/// (its prompts, its seed). Returns the workload (work 1: seconds per step) and the mean
/// seconds per timed step.
fn grpo_step_lora(device: &Device, models: &Path, iters: usize) -> Result<(Workload, f64)> {
    use policy_opt::online::algos::{AdvantageEstimator, LossAggregation, PolicyLoss};
    use policy_opt::online::recipe::KlPlacement;

    let root = rm_core::paths::repo_root_from(&std::env::current_dir()?)
        .context("finding the repository root")?;
    let overrides: Vec<String> = GRPO_OVERRIDES.iter().map(|s| s.to_string()).collect();
    let mut recipe = RlRecipe::load(&root.join(GRPO_RECIPE), &overrides)?;
    recipe.model.policy = rm_core::paths::resolve_model_path(&recipe.model.policy, models);
    let steps = iters + 1;
    recipe.rollout.iterations = steps as u64;
    recipe.validate()?;
    let Some(lora) = recipe.model.lora.clone() else {
        bail!("{GRPO_RECIPE} has no [model] lora: grpo-step-lora times a LoRA policy");
    };
    // What the peer's GRPOConfig is made of: refuse what TRL's GRPOTrainer would not match.
    let algorithm = &recipe.algorithm;
    if !matches!(algorithm.estimator, AdvantageEstimator::Grpo { .. }) {
        bail!("{GRPO_RECIPE}: algorithm.estimator is not grpo");
    }
    let PolicyLoss::Vanilla {
        clip_ratio_low,
        clip_ratio_high,
        clip_ratio_c: None,
    } = algorithm.policy_loss
    else {
        bail!("{GRPO_RECIPE}: grpo-step-lora needs the vanilla clip loss without dual clip");
    };
    if algorithm.loss_aggregation != LossAggregation::TokenMean {
        bail!("{GRPO_RECIPE}: grpo-step-lora needs loss_aggregation = \"token-mean\" (TRL's dapo)");
    }
    let beta = match (algorithm.kl.coef, algorithm.kl.placement) {
        (Some(c), KlPlacement::Loss) if c > 0.0 && algorithm.kl.controller.is_none() => c,
        _ => bail!(
            "{GRPO_RECIPE}: grpo-step-lora needs a fixed KL coef > 0 in the loss (TRL's beta)"
        ),
    };
    if algorithm.entropy_coef != 0.0 || recipe.rollout.ppo_epochs != 1 {
        bail!("{GRPO_RECIPE}: grpo-step-lora needs entropy_coef 0 and ppo_epochs 1");
    }
    let n = recipe.buffer_size();
    if recipe.train.batch_size != n {
        bail!(
            "grpo-step-lora: train.batch_size must be the buffer size {n} (one step per collection)"
        );
    }
    let data = for_tests::data_dir();
    let instruction = recipe.data.instruction.as_deref();
    let train_prompts = recipe.data.train.load(&data, instruction)?;
    // The task evaluates nothing here; one prompt stands in for the evaluation set.
    let eval_prompts = train_prompts[..1].to_vec();
    let rewards = RewardSet::build(&recipe.rewards, device)?;

    let ad = device.clone().autodiff();
    ad.seed(recipe.train.seed);
    let policy = Policy::build(&recipe.model, &ad)?;
    let pad_id = policy.lm.tokenizer.pad_id();
    let sampling = recipe.rollout.sampling.clone();
    let new_tokens = sampling.max_new_tokens;
    // The prompts as the task renders them (chat template, left cut to max_len − new tokens).
    let budget = recipe.model.max_len - new_tokens;
    let rendered: Vec<(String, Vec<u32>)> = train_prompts
        .iter()
        .map(|p| {
            let text = policy.spec.template.render_prompt(&p.prompt)?;
            let ids = policy_opt::online::rollout::prompt_ids(&policy, p, budget)?;
            Ok((text, ids))
        })
        .collect::<Result<_>>()?;
    let mut model = policy.lm.model.clone();
    let mut task = RlTask::new(
        recipe.clone(),
        policy,
        rewards,
        train_prompts.clone(),
        eval_prompts,
        None,
    )?;
    let step_prompts: Vec<Value> = (0..steps as u64)
        .map(|k| {
            Value::Array(
                task.iteration_prompts(k)
                    .into_iter()
                    .map(|i| {
                        let (text, ids) = &rendered[i];
                        json!({
                            "ids": ids, "text": text,
                            "answer": train_prompts[i].references.first(),
                        })
                    })
                    .collect(),
            )
        })
        .collect();

    let train = &recipe.train;
    let micro = train.micro_batch();
    let mut optim = AdamW::new(train.adamw()).with_groups(train.param_group_rules());
    let schedule =
        LrSchedule::with_warmup_ratio(train.lr, train.warmup_ratio, steps as u64, train.schedule);
    let mut timed = 0.0;
    let mut step_tokens = Vec::with_capacity(steps);
    for step in 0..steps {
        let start = Instant::now();
        let iteration = step as u64;
        let seed = collect_seed(train.seed, iteration);
        let collected = task.collect(&model.valid(), iteration, seed)?;
        if collected.items != n {
            bail!(
                "grpo-step-lora: {} rows collected, expected {n}",
                collected.items
            );
        }
        let collect_secs = start.elapsed().as_secs_f64();
        let items = epoch_order(n, seed, 0);
        let (grads, metrics) = accumulate(&model, &mut task, &items, micro, &ad, |i| {
            train.seed ^ (iteration << 8) ^ i as u64
        })?;
        let values = metrics.read(grads.squared_norm())?;
        if !values.loss.is_finite() {
            bail!("grpo-step-lora: step {}: loss {}", step + 1, values.loss);
        }
        let grad_norm = values.grad_norm.unwrap_or(0.0);
        let (updated, stats) = optim.apply(model, schedule.lr_at(iteration), grads, grad_norm)?;
        model = updated;
        task.after_step(&model, &values)?;
        let secs = start.elapsed().as_secs_f64();
        let metric = |k: &str| collected.metrics.get(k).copied().unwrap_or(f64::NAN);
        let tokens = metric("rollout_tokens");
        if tokens != (n * new_tokens) as f64 {
            bail!(
                "grpo-step-lora: step {}: {tokens} completion tokens, expected {n} × {new_tokens} (rollout.stop_at_eos = false)",
                step + 1
            );
        }
        eprintln!(
            "plumbline: grpo-step-lora: step {}{}: {tokens} completion tokens, {secs:.3} s (collection {collect_secs:.3} s), reward {:.3}, loss {:.4}, kl {:.5}, grad norm {grad_norm:.4}, {} tensors updated",
            step + 1,
            if step == 0 { " (warm-up)" } else { "" },
            metric("reward"),
            values.loss,
            values.metrics.get("kl").copied().unwrap_or(f64::NAN),
            stats.params
        );
        step_tokens.push(tokens as usize);
        if step > 0 {
            timed += secs;
        }
    }
    let tokens: usize = step_tokens[1..].iter().sum();
    let spec = json!({
        "kind": "grpo-step",
        "model": recipe.model.policy,
        "recipe": GRPO_RECIPE,
        "overrides": GRPO_OVERRIDES,
        "steps": step_prompts,
        "step_tokens": step_tokens,
        "pad_id": pad_id,
        "group_size": recipe.rollout.group_size,
        "max_new_tokens": new_tokens,
        "max_length": recipe.model.max_len,
        "micro_batch": micro,
        "batch_size": n,
        "sampling": {
            "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
            "min_p": sampling.min_p, "repetition_penalty": sampling.repetition_penalty,
        },
        "lora": lora,
        "algorithm": {
            "beta": beta, "epsilon": clip_ratio_low, "epsilon_high": clip_ratio_high,
            "loss_type": "dapo", "scale_rewards": "group",
        },
        "rewards": recipe.rewards,
        "train": {
            "lr": train.lr, "weight_decay": train.weight_decay, "warmup_ratio": train.warmup_ratio,
            "schedule": train.schedule, "max_grad_norm": train.max_grad_norm,
            "beta1": train.beta1, "beta2": train.beta2, "eps": train.eps, "seed": train.seed,
        },
    });
    Ok((
        Workload {
            name: "grpo-step-lora",
            unit: "s/step",
            work: 1.0,
            spec,
            tokens: Some(tokens as f64),
            per_step: true,
        },
        timed / iters as f64,
    ))
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
            // Workloads whose work the peer counts itself (the DPO steps' real tokens, the GRPO
            // steps' completion tokens) must have done the same work as plumbline.
            if let (Some(tokens), Some(ours)) = (result["tokens"][w.name].as_f64(), w.tokens)
                && (tokens - ours).abs() > 0.5
            {
                bail!(
                    "{}: the peer processed {tokens} tokens, plumbline {ours}",
                    w.name
                );
            }
            result["seconds"][w.name]
                .as_f64()
                .with_context(|| format!("the peer gave no time for {}", w.name))
        })
        .collect()
}

/// The table (one row per workload and device; the peer's figure repeats on each device's row)
/// and `runs/bench/backbones.{json,md}`. `ours[d][i]`: seconds per iteration of workload `i` on
/// device `d`.
fn report(
    workloads: &[Workload],
    ours: &[Vec<f64>],
    peer: Option<&Vec<f64>>,
    opts: &Options,
) -> Result<()> {
    let devices: Vec<String> = opts.devices.iter().map(ToString::to_string).collect();
    let machine = format!(
        "{} ({} threads for both sides; burn {} backend vs PyTorch CPU, f32)",
        cpu_name(),
        opts.threads,
        devices.join(" and ")
    );
    let mut md = format!(
        "machine: {machine}\nmedian of {} iterations after one warm-up\n\n| workload | device | plumbline | peer (PyTorch) | ratio plumbline/peer |\n|---|---|---|---|---|\n",
        opts.iters
    );
    let mut rows = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        for (device, ours) in devices.iter().zip(ours) {
            table_row(&mut md, &mut rows, w, device, ours[i], peer.map(|p| p[i]));
        }
    }
    if workloads.iter().any(|w| w.name == "dpo-step-lora") {
        md.push_str(&format!(
            "\ndpo-step-lora: {} DPO optimizer steps ({DPO_RECIPE}: one micro-batch of pairs per step) after one warm-up step, each on the next pairs; total real tokens / total time; peer = TRL DPOTrainer + PEFT on the same token ids\n",
            opts.iters
        ));
    }
    if workloads.iter().any(|w| w.name == "grpo-step-lora") {
        md.push_str(&format!(
            "\ngrpo-step-lora: {} GRPO steps ({GRPO_RECIPE} with {}) after one warm-up step, each one collection (sampling, rewards, log-probs, advantages) + one optimizer step over the buffer; mean seconds per step, ratio = peer s / plumbline s; peer = TRL GRPOTrainer + PEFT on the same prompt token ids\n",
            opts.iters,
            GRPO_OVERRIDES.join(", ")
        ));
    }
    println!("\n{md}");
    let root = rm_core::paths::repo_root_from(&std::env::current_dir()?)
        .context("finding the repository root")?;
    let dir = root.join("runs/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("backbones.md"), &md)?;
    std::fs::write(
        dir.join("backbones.json"),
        serde_json::to_vec_pretty(
            &json!({"machine": machine, "devices": devices, "results": rows}),
        )?,
    )?;
    println!("written: {}", dir.join("backbones.{json,md}").display());
    Ok(())
}

/// One workload on one device: a Markdown row and a JSON record (both name the device).
fn table_row(
    md: &mut String,
    rows: &mut Vec<Value>,
    w: &Workload,
    device: &str,
    ours: f64,
    peer_secs: Option<f64>,
) {
    // Per-step workloads report seconds, the others a rate (work per second); the ratio is
    // peer seconds over ours either way (for rates, ours over the peer's).
    let (value, decimals) = match w.per_step {
        true => (ours, 2),
        false => (w.work / ours, 1),
    };
    let peer = peer_secs.map(|p| if w.per_step { p } else { w.work / p });
    let ratio = peer_secs.map(|p| p / ours);
    md.push_str(&format!(
        "| {} | {device} | {value:.decimals$} {} | {} | {} |\n",
        w.name,
        w.unit,
        peer.map_or("-".into(), |p| format!("{p:.decimals$} {}", w.unit)),
        ratio.map_or("-".into(), |r| format!("{r:.2}")),
    ));
    rows.push(json!({
        "workload": w.name, "device": device, "unit": w.unit, "plumbline": value,
        "peer": peer, "ratio": ratio,
    }));
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
