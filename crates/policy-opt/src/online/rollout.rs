//! Sampling completions from a policy and reading per-token log-probs back: what a collection
//! and an evaluation of online RL are made of.
//!
//! Prompts are rendered with the policy's chat template and cut on the left to leave room for
//! `max_new_tokens` within `max_len`; completions keep their stop token (the policy learns to
//! stop). Log-probs are recomputed with one full forward pass per batch (right-padded) rather
//! than taken from the sampler, as verl does: the loss's ratio starts at exactly 1 on-policy,
//! and the sampler's own numbers stay available to measure the mismatch and to correct for a
//! sampling distribution that differs from the policy (temperature, top-k/top-p).

use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use rm_core::burn::tensor::{Device, Tensor};
use rm_core::logprobs::head_logprobs;
use rm_core::models::heads::ValueHead;
use rm_core::models::llama::LlamaModel;
use rm_core::models::policy_folder::Policy;
use rm_core::policy::CausalPolicy;
use rm_core::sampling::{FinishReason, SamplingConfig, generate};
use rm_core::shared_prompt::shared_prompt_logprobs;
use rm_core::tokenize::{PaddingSide, Sequence, TokenBatch};
use rm_core::train::rollout::collect_seed;

use super::prompts::RlPrompt;

/// One sampled completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// Which of the prompts it answers.
    pub prompt_index: usize,
    /// The rendered prompt's tokens (after left truncation).
    pub prompt_ids: Vec<u32>,
    /// The generated tokens (a stop token included).
    pub tokens: Vec<u32>,
    /// Decoded, trimmed text (cut before a stop string).
    pub text: String,
    /// Hit `max_new_tokens` without stopping.
    pub truncated: bool,
    /// log q(token) under the distribution the sampler drew from (0 for greedy).
    pub sampling_logprobs: Vec<f32>,
    /// log π(token) under the unmodified model, as the sampler computed it.
    pub model_logprobs: Vec<f32>,
}

impl Completion {
    /// Prompt + completion as one sequence, the completion flagged.
    pub fn sequence(&self) -> Sequence {
        Sequence::prompt_completion(&self.prompt_ids, &self.tokens)
    }
}

/// `config` with the policy's end-of-sequence and ChatML end-of-turn tokens as stop tokens.
pub fn with_stop_tokens(mut config: SamplingConfig, policy: &Policy) -> SamplingConfig {
    config.stop_tokens.extend(policy.lm.stop_tokens());
    config.stop_tokens.sort_unstable();
    config.stop_tokens.dedup();
    config
}

/// The device a model's weights live on.
pub fn device_of(model: &LlamaModel) -> Device {
    model.embed_tokens.weight.val().device()
}

/// The tokens of `prompt` rendered for generation, cut on the left to `budget`.
pub fn prompt_ids(policy: &Policy, prompt: &RlPrompt, budget: usize) -> Result<Vec<u32>> {
    let text = policy.spec.template.render_prompt(&prompt.prompt)?;
    let mut ids = policy.lm.tokenizer.encode(&text, true)?;
    if ids.len() > budget {
        ids.drain(..ids.len() - budget);
    }
    if ids.is_empty() {
        anyhow::bail!("the prompt renders to no tokens");
    }
    Ok(ids)
}

/// What a sampling pass produced, and how fast.
pub struct Sampled {
    pub completions: Vec<Completion>,
    /// Generated tokens (stop tokens included).
    pub tokens: usize,
    pub seconds: f64,
}

/// Samples `repeats` completions of each prompt of `prompts` (row `r` answers prompt
/// `r / repeats`) from `model`, `batch` rows per generation batch, batch `b` seeded from
/// `(seed, b)`.
pub fn sample(
    model: &LlamaModel,
    policy: &Policy,
    prompts: &[&RlPrompt],
    repeats: usize,
    config: &SamplingConfig,
    seed: u64,
    batch: usize,
) -> Result<Sampled> {
    let started = Instant::now();
    let budget = policy.spec.max_len - config.max_new_tokens;
    let encoded = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| prompt_ids(policy, p, budget).with_context(|| format!("prompt {}", i + 1)))
        .collect::<Result<Vec<_>>>()?;
    let rows: Vec<usize> = (0..prompts.len() * repeats).map(|r| r / repeats).collect();
    let device = device_of(model);
    let mut completions = Vec::with_capacity(rows.len());
    let mut tokens = 0;
    for (b, chunk) in rows.chunks(batch.max(1)).enumerate() {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|&p| encoded[p].clone()).collect();
        let config = SamplingConfig {
            seed: collect_seed(seed, b as u64),
            ..config.clone()
        };
        let generated = generate(model, &policy.lm.tokenizer, &ids, &config, &device)?;
        for (&p, row) in chunk.iter().zip(generated) {
            tokens += row.tokens.len();
            completions.push(Completion {
                prompt_index: p,
                prompt_ids: encoded[p].clone(),
                truncated: row.finish_reason == FinishReason::MaxNewTokens,
                text: row.text.trim().to_string(),
                tokens: row.tokens,
                sampling_logprobs: row.sampling_logprobs,
                model_logprobs: row.model_logprobs,
            });
        }
    }
    Ok(Sampled {
        completions,
        tokens,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Per completion: the log-probs of its tokens and, with a value head, the values of the
/// states that choose them (`values[k]` = V of the prefix before token `k`).
pub struct CompletionScores {
    pub logprobs: Vec<Vec<f32>>,
    pub values: Option<Vec<Vec<f32>>>,
}

fn host(t: Tensor<2>, what: &str) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec()
        .map_err(|e| anyhow!("reading {what}: {e:?}"))
}

/// Where [`score_completions`] reads values from.
#[derive(Clone, Copy, Debug)]
pub enum ValueSource<'a> {
    /// No critic: log-probs only.
    None,
    /// A value head on the policy's own hidden states (one pass for both).
    Shared(&'a ValueHead),
    /// A value head on a separate value model's hidden states (a second pass, the same tokens).
    Separate(&'a LlamaModel, &'a ValueHead),
}

/// The per-token log-probs of each completion's tokens under `model`, and the values of the
/// critic `values` names (one forward pass per `batch` rows, right-padded; no graph is kept
/// when the models are frozen copies).
pub fn score_completions(
    model: &LlamaModel,
    values: ValueSource<'_>,
    completions: &[Completion],
    pad_id: u32,
    batch: usize,
) -> Result<CompletionScores> {
    let device = device_of(model);
    let mut logprobs = Vec::with_capacity(completions.len());
    let value_source = values;
    let mut values = match value_source {
        ValueSource::None => None,
        _ => Some(Vec::with_capacity(completions.len())),
    };
    for chunk in completions.chunks(batch.max(1)) {
        let seqs: Vec<Sequence> = chunk.iter().map(Completion::sequence).collect();
        let width = seqs.iter().map(Sequence::len).max().unwrap_or(1) - 1;
        let (lp, v) = match value_source {
            // A group's completions share their prompt: it runs once.
            ValueSource::None => (shared_prompt_logprobs(model, &seqs, pad_id, false)?, None),
            ValueSource::Separate(critic, head) => {
                let padded = TokenBatch::pad(&seqs, pad_id, PaddingSide::Right)?;
                let hidden = critic
                    .hidden_states(padded.ids_tensor(&device), padded.attention_tensor(&device))?;
                let values = host(head.forward(hidden.narrow(1, 0, width))?, "values")?;
                (
                    shared_prompt_logprobs(model, &seqs, pad_id, false)?,
                    Some(values),
                )
            }
            ValueSource::Shared(head) => {
                let padded = TokenBatch::pad(&seqs, pad_id, PaddingSide::Right)?;
                let hidden = model
                    .hidden_states(padded.ids_tensor(&device), padded.attention_tensor(&device))?;
                let values = host(head.forward(hidden.clone().narrow(1, 0, width))?, "values")?;
                let lp = head_logprobs(
                    model,
                    hidden,
                    padded.ids_tensor(&device),
                    padded.completion_tensor(&device),
                    false,
                )?;
                (lp, Some(values))
            }
        };
        let lp = host(lp.token_logprobs, "log-probs")?;
        for (row, c) in chunk.iter().enumerate() {
            let start = row * width + c.prompt_ids.len() - 1;
            let range = start..start + c.tokens.len();
            logprobs.push(lp[range.clone()].to_vec());
            if let (Some(out), Some(v)) = (values.as_mut(), v.as_ref()) {
                out.push(v[range].to_vec());
            }
        }
    }
    Ok(CompletionScores { logprobs, values })
}

/// [`score_completions`] without values.
pub fn completion_logprobs(
    model: &LlamaModel,
    completions: &[Completion],
    pad_id: u32,
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    Ok(score_completions(model, ValueSource::None, completions, pad_id, batch)?.logprobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::device::test_device;
    use rm_core::models::heads::ValueHeadConfig;
    use rm_core::models::llama::CausalLm;

    fn completion(prompt_index: usize, prompt_ids: &[u32], tokens: &[u32]) -> Completion {
        Completion {
            prompt_index,
            prompt_ids: prompt_ids.to_vec(),
            tokens: tokens.to_vec(),
            text: String::new(),
            truncated: false,
            sampling_logprobs: vec![0.0; tokens.len()],
            model_logprobs: vec![0.0; tokens.len()],
        }
    }

    /// Groups of completions share their prompt's pass; with a value head every row runs in
    /// full. Both give each completion token's log-prob, to float rounding; a separate critic
    /// of the same weights gives the shared head's values.
    #[test]
    fn grouped_completions_score_as_rows_run_in_full() {
        let dir = std::env::temp_dir().join(format!("plumb-rollout-{}", std::process::id()));
        rm_core::fixtures::write_tiny_llama(&dir, 5).unwrap();
        let device = test_device();
        let model = CausalLm::load(&dir, &device).unwrap().model;
        let head = ValueHeadConfig::new(16).init(&device);
        let (a, b): (&[u32], &[u32]) = (&[3, 4, 5, 6, 7], &[8, 9]);
        let completions = vec![
            completion(0, a, &[10, 11, 12]),
            completion(0, a, &[13]),
            completion(0, a, &[14, 15, 16, 17, 18, 19]),
            completion(1, b, &[20, 21]),
            completion(1, b, &[22, 23, 24, 25]),
            completion(1, b, &[26]),
        ];
        let critic = CausalLm::load(&dir, &device).unwrap().model;
        for batch in [6, 4] {
            let shared =
                score_completions(&model, ValueSource::None, &completions, 0, batch).unwrap();
            let full =
                score_completions(&model, ValueSource::Shared(&head), &completions, 0, batch)
                    .unwrap();
            assert!(shared.values.is_none() && full.values.is_some());
            // The same weights as a separate critic give the same values and log-probs.
            let separate = score_completions(
                &model,
                ValueSource::Separate(&critic, &head),
                &completions,
                0,
                batch,
            )
            .unwrap();
            for (x, y) in separate
                .values
                .as_ref()
                .unwrap()
                .iter()
                .flatten()
                .zip(full.values.as_ref().unwrap().iter().flatten())
            {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
            assert_eq!(separate.logprobs, shared.logprobs);
            for (c, (x, y)) in completions
                .iter()
                .zip(shared.logprobs.iter().zip(&full.logprobs))
            {
                assert_eq!(x.len(), c.tokens.len());
                assert_eq!(y.len(), c.tokens.len());
                for (u, v) in x.iter().zip(y) {
                    assert!(*u < 0.0 && (u - v).abs() < 1e-5, "{x:?} vs {y:?}");
                }
            }
        }
    }
}
