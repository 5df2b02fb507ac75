//! Plain sampling from any policy over a prompt file: `plumb generate --model DIR --input
//! prompts.jsonl --out samples.jsonl` (no scorer). One JSON line per (prompt, sample): the
//! prompt, the completion, its tokens, why it stopped and its log-probs under the sampler and
//! the model; prompt `p` is sampled in batches with seeds derived from the request's.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use rm_core::burn::tensor::Device;
use rm_core::sampling::{SamplingConfig, generate};
use serde::Serialize;

use crate::error::{DecodeError, Result};
use crate::model::DecodeModel;
use crate::run::{PromptSource, load_prompts};

/// A sampling run over a prompt file.
pub struct SampleRequest {
    /// A policy folder (`plumb train-po`, `plumb train-rl`) or a model folder / `.gguf`.
    pub model: PathBuf,
    pub input: PromptSource,
    /// The first N distinct prompts.
    pub prompts: usize,
    /// Samples per prompt.
    pub samples: usize,
    pub data_dir: PathBuf,
    /// Stop tokens are added from the tokenizer.
    pub sampling: SamplingConfig,
    /// Rows per generation batch.
    pub batch_size: usize,
    pub out: PathBuf,
    pub device: Device,
    /// A MAH-DPO policy's head mixture (`None`: its default weights).
    pub head_weights: Option<rm_core::models::action_heads::HeadWeights>,
}

/// What a sampling run did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampleOutcome {
    pub prompts: usize,
    pub samples: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub out: PathBuf,
}

/// Samples `samples` completions of each prompt and writes them to `out` (created or
/// replaced).
pub fn sample_prompts(request: &SampleRequest) -> Result<SampleOutcome> {
    if request.samples == 0 || request.batch_size == 0 {
        return Err(DecodeError::config(
            "samples",
            "--samples and --batch-size must be at least 1",
        ));
    }
    request
        .sampling
        .validate()
        .map_err(|e| DecodeError::config("sampling", format!("{e:#}")))?;
    let model = DecodeModel::load_steered(
        &request.model,
        &request.device,
        request.head_weights.as_ref(),
    )?;
    let prompts = load_prompts(&request.input, &request.data_dir, request.prompts)?;
    let mut config = request.sampling.clone();
    config.stop_tokens.extend(model.stop_tokens());
    let encoded = prompts
        .iter()
        .map(|p| model.prompt_ids(p, config.max_new_tokens))
        .collect::<Result<Vec<_>>>()?;
    let rows: Vec<usize> = (0..prompts.len() * request.samples)
        .map(|r| r / request.samples)
        .collect();
    let file = std::fs::File::create(&request.out).map_err(|e| DecodeError::File {
        path: request.out.clone(),
        reason: e.to_string(),
    })?;
    let mut sink = std::io::BufWriter::new(file);
    let started = Instant::now();
    let mut tokens = 0;
    for (b, chunk) in rows.chunks(request.batch_size).enumerate() {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|&p| encoded[p].clone()).collect();
        let config = SamplingConfig {
            seed: config.seed.wrapping_add(b as u64),
            ..config.clone()
        };
        let generated = generate(
            &model.lm,
            &model.lm.tokenizer,
            &ids,
            &config,
            &request.device,
        )
        .map_err(DecodeError::model)?;
        for (&p, row) in chunk.iter().zip(generated) {
            tokens += row.tokens.len();
            let line = serde_json::json!({
                "prompt": prompts[p],
                "completion": row.text.trim(),
                "tokens": row.tokens,
                "finish_reason": row.finish_reason,
                "sampling_logprobs": row.sampling_logprobs,
                "model_logprobs": row.model_logprobs,
            });
            writeln!(sink, "{line}").map_err(|e| DecodeError::File {
                path: request.out.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    sink.flush().map_err(|e| DecodeError::File {
        path: request.out.clone(),
        reason: e.to_string(),
    })?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(SampleOutcome {
        prompts: prompts.len(),
        samples: rows.len(),
        tokens,
        seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        out: request.out.clone(),
    })
}
