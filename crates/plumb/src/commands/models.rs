//! `plumb embed`, `plumb logprobs` and `plumb generate`: the backbones from the command line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use rm_core::chat::ChatTemplate;
use rm_core::logprobs::text_logprobs;
use rm_core::models::action_heads::HeadWeights;
use rm_core::models::bert::BertEmbedder;
use rm_core::models::llama::CausalLm;
use rm_core::models::pooling::Pooling;
use rm_core::sampling::{SamplingConfig, generate};
use rm_core::types::{Conversation, Role, Turn};
use serde_json::json;

use super::texts::TextInput;
use crate::GlobalArgs;

fn device(global: &GlobalArgs) -> Result<rm_core::burn::tensor::Device> {
    Ok(global.device.device()?)
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// A BERT folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long, default_value = "models/minilm")]
    pub model: PathBuf,
    #[command(flatten)]
    pub input: TextInput,
    /// mean, cls or last-token.
    #[arg(long, default_value = "mean")]
    pub pooling: String,
    /// Longest input in tokens [default: the model's position limit].
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

/// Prints one JSON object per text: `{text, ids, vector}`.
pub fn embed(global: &GlobalArgs, args: EmbedArgs) -> Result<()> {
    let pooling: Pooling = serde_json::from_value(json!(args.pooling))
        .map_err(|_| anyhow::anyhow!("--pooling must be mean, cls or last-token"))?;
    let texts = args.input.read()?;
    let embedder = BertEmbedder::load(&args.model, &device(global)?)?;
    let start = Instant::now();
    for chunk in texts.chunks(args.batch_size.max(1)) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let out = embedder.embed(&refs, pooling, args.max_len)?;
        for ((text, ids), vector) in chunk.iter().zip(out.ids).zip(out.vectors) {
            println!("{}", json!({"text": text, "ids": ids, "vector": vector}));
        }
    }
    eprintln!(
        "embedded {} texts in {:.2}s",
        texts.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct LogprobsArgs {
    /// A .gguf file, a folder holding one, or an HF Llama-family folder.
    #[arg(long, default_value = "models/smollm2")]
    pub model: PathBuf,
    #[command(flatten)]
    pub input: TextInput,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

/// Prints one JSON object per text ([`rm_core::logprobs::TextLogprobs`]): ids, per-token
/// log-probs (`token_logprobs[i]` = log p(ids[i+1] | ids[..=i]); none for a one-token text),
/// their sum and the argmax next token.
pub fn logprobs(global: &GlobalArgs, args: LogprobsArgs) -> Result<()> {
    let texts = args.input.read()?;
    let lm = CausalLm::load(&args.model, &device(global)?)?;
    for row in text_logprobs(&lm, &texts, args.batch_size)? {
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A .gguf file, a folder holding one, or an HF Llama-family folder; with --input also a
    /// policy folder (`plumb train-po`, `plumb train-rl`).
    #[arg(long, default_value = "models/smollm2")]
    pub model: PathBuf,
    /// The user message (repeat for a batch).
    #[arg(
        long = "prompt",
        required_unless_present = "input",
        conflicts_with = "input"
    )]
    pub prompts: Vec<String>,
    /// Sample from every prompt of a JSONL file (`{"prompt": …}` rows) or `hh-rlhf:dev|train`,
    /// writing one JSON line per sample to --out.
    #[arg(long, requires = "out")]
    pub input: Option<String>,
    /// Where --input's samples go (JSONL).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// With --input: the first N distinct prompts.
    #[arg(long, default_value_t = 1_000_000)]
    pub limit: usize,
    /// With --input: samples per prompt.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// With --input: rows per generation batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// An optional system message.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Stop strings (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Print JSON (tokens, sampling and model log-probs) instead of plain text.
    #[arg(long)]
    pub json: bool,
    /// A MAH-DPO policy's head mixture, `NAME=WEIGHT,…` (normalised; heads not named get 0;
    /// absent: the weights it was trained with).
    #[arg(long)]
    pub head_weights: Option<HeadWeights>,
}

/// Renders each prompt with ChatML and samples continuations in one batch with the KV cache.
pub fn generate_cmd(global: &GlobalArgs, args: GenerateArgs) -> Result<()> {
    let device = device(global)?;
    if let (Some(input), Some(out)) = (&args.input, &args.out) {
        let outcome = decoding::sample_prompts(&decoding::SampleRequest {
            model: args.model.clone(),
            input: input.parse()?,
            prompts: args.limit,
            samples: args.samples,
            data_dir: rm_core::paths::data_dir(global.data_dir.as_deref()),
            sampling: SamplingConfig {
                max_new_tokens: args.max_new_tokens,
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
                min_p: args.min_p,
                repetition_penalty: args.repetition_penalty,
                stop_tokens: Vec::new(),
                stop_strings: args.stop.clone(),
                seed: global.seed,
            },
            batch_size: args.batch_size,
            out: out.clone(),
            device,
            head_weights: args.head_weights.clone(),
        })?;
        println!(
            "{} samples of {} prompts ({} tokens, {:.1} tokens/s) written to {}",
            outcome.samples,
            outcome.prompts,
            outcome.tokens,
            outcome.tokens_per_second,
            outcome.out.display()
        );
        return Ok(());
    }
    let lm = CausalLm::load_steered(&args.model, &device, args.head_weights.as_ref())?;
    let prompts = args
        .prompts
        .iter()
        .map(|p| {
            let mut turns = Vec::new();
            if let Some(s) = &args.system {
                turns.push(Turn::new(Role::System, s.clone()));
            }
            turns.push(Turn::new(Role::User, p.clone()));
            let text = ChatTemplate::ChatMl.render(&Conversation::new(turns), true)?;
            lm.tokenizer.encode(&text, false)
        })
        .collect::<Result<Vec<_>>>()?;
    let config = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        stop_tokens: lm.eos_id.into_iter().collect(),
        stop_strings: args.stop.clone(),
        seed: global.seed,
    };
    let start = Instant::now();
    let rows = generate(&lm, &lm.tokenizer, &prompts, &config, &device)?;
    let secs = start.elapsed().as_secs_f64();
    let tokens: usize = rows.iter().map(|r| r.tokens.len()).sum();
    for (prompt, row) in args.prompts.iter().zip(&rows) {
        if args.json {
            println!("{}", json!({"prompt": prompt, "completion": row}));
        } else {
            println!("{}", row.text);
        }
    }
    eprintln!(
        "generated {tokens} tokens in {secs:.2}s ({:.1} tokens/s)",
        tokens as f64 / secs
    );
    Ok(())
}
