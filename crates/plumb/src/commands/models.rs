//! `plumb embed`, `plumb logprobs` and `plumb generate`: the backbones from the command line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use rm_core::chat::ChatTemplate;
use rm_core::logprobs::text_logprobs;
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
    /// A .gguf file, a folder holding one, or an HF Llama-family folder.
    #[arg(long, default_value = "models/smollm2")]
    pub model: PathBuf,
    /// The user message (repeat for a batch).
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
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
}

/// Renders each prompt with ChatML and samples continuations in one batch with the KV cache.
pub fn generate_cmd(global: &GlobalArgs, args: GenerateArgs) -> Result<()> {
    let device = device(global)?;
    let lm = CausalLm::load(&args.model, &device)?;
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
