//! Batched, seeded text generation with a KV cache.
//!
//! The loop is model-agnostic: anything implementing [`IncrementalDecoder`] (prefill a
//! left-padded batch, then feed one token per row) can be sampled from. Each step turns the
//! model's next-token logits into a sampling distribution with the processors of
//! [`SamplingConfig`] — repetition penalty, temperature, top-k, top-p (nucleus), min-p — in that
//! order, draws a token per row from a per-row RNG seeded by `(seed, row)`, and records two
//! log-probs of the drawn token:
//! - under the **sampling** distribution (what the sampler actually used), and
//! - under the **unmodified model** (plain log-softmax of the logits): the one PPO/GRPO
//!   importance ratios need. Using the former in a trainer is the rollout/trainer mismatch that
//!   peers suffer from.
//!
//! Greedy decoding is `temperature = 0`. Rows stop at a stop token, a stop string (the text is
//! cut before the stop string) or `max_new_tokens`.

use anyhow::{Result, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::tokenize::TextTokenizer;

/// How to sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0 = off).
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` × the top token's (0 = off).
    pub min_p: f32,
    /// CTRL-style penalty on tokens already in the prompt or the output (1.0 = off): positive
    /// logits are divided by it, negative ones multiplied.
    pub repetition_penalty: f32,
    /// Token ids that end a row (the stop token itself is kept in the output tokens).
    pub stop_tokens: Vec<u32>,
    /// Strings that end a row; the returned text is cut before the first occurrence.
    pub stop_strings: Vec<String>,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
            seed: 42,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks the ranges of every knob.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            bail!(
                "temperature must be a finite number ≥ 0, got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("top_p must be in (0, 1], got {}", self.top_p);
        }
        if !(0.0..1.0).contains(&self.min_p) {
            bail!("min_p must be in [0, 1), got {}", self.min_p);
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            bail!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            );
        }
        Ok(())
    }
}

/// Why a row stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    StopToken,
    StopString,
    MaxNewTokens,
}

/// The output of [`generate`] for one row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneratedRow {
    pub tokens: Vec<u32>,
    /// log p(token) under the processed distribution the sampler drew from (0 for greedy).
    pub sampling_logprobs: Vec<f32>,
    /// log p(token) under the unmodified model (log-softmax of the raw logits).
    pub model_logprobs: Vec<f32>,
    /// Decoded text (special tokens skipped), cut before a stop string.
    pub text: String,
    pub finish_reason: FinishReason,
}

/// A causal language model that can be decoded incrementally with a cache.
pub trait IncrementalDecoder {
    type Cache;
    /// Runs the left-padded prompt batch `ids` `[B, T]` with `attention_mask` `[B, T]` (1 real,
    /// 0 pad) and returns the logits of the last position `[B, V]` and the filled cache.
    fn prefill(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Result<(Tensor<2>, Self::Cache)>;
    /// Feeds one token per row (`ids` `[B, 1]`); `attention_mask` `[B, T + k + 1]` covers every
    /// position so far, the new one included. Returns the next logits `[B, V]`.
    fn step(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        cache: &mut Self::Cache,
    ) -> Result<Tensor<2>>;
}

/// Log-softmax of one row of logits, in f64 for accuracy.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

/// Applies the repetition penalty to `logits` for every token in `seen`.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = vec![false; logits.len()];
    for &t in seen {
        let t = t as usize;
        if t < logits.len() && !done[t] {
            done[t] = true;
            let l = &mut logits[t];
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Turns processed logits into a sparse distribution `(token, probability)` after temperature,
/// top-k, top-p and min-p, sorted by decreasing probability. `temperature` must be > 0.
pub fn sampling_distribution(
    logits: &[f32],
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
) -> Vec<(u32, f32)> {
    let scaled: Vec<f32> = logits.iter().map(|&l| l / temperature).collect();
    let logp = log_softmax(&scaled);
    let mut order: Vec<(u32, f32)> = logp
        .iter()
        .enumerate()
        .filter(|(_, lp)| lp.is_finite())
        .map(|(i, &lp)| (i as u32, lp.exp()))
        .collect();
    order.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if top_k > 0 && order.len() > top_k {
        order.truncate(top_k);
    }
    if top_p < 1.0 {
        let mut cumulative = 0.0;
        let mut keep = order.len();
        for (i, &(_, p)) in order.iter().enumerate() {
            cumulative += p;
            if cumulative >= top_p {
                keep = i + 1;
                break;
            }
        }
        order.truncate(keep.max(1));
    }
    if min_p > 0.0
        && let Some(&(_, top)) = order.first()
    {
        let threshold = min_p * top;
        order.retain(|&(_, p)| p >= threshold);
    }
    let total: f32 = order.iter().map(|&(_, p)| p).sum();
    for entry in &mut order {
        entry.1 /= total;
    }
    order
}

/// Draws from a sparse distribution with a uniform number `u` in [0, 1).
fn draw(distribution: &[(u32, f32)], u: f32) -> (u32, f32) {
    let mut cumulative = 0.0;
    for &(token, p) in distribution {
        cumulative += p;
        if u < cumulative {
            return (token, p);
        }
    }
    *distribution
        .last()
        .expect("a sampling distribution is never empty")
}

/// Index of the largest value (first one on ties).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Chooses the next token of one row: returns `(token, sampling log-prob, model log-prob)`.
pub fn choose_token(
    raw_logits: &[f32],
    seen: &[u32],
    config: &SamplingConfig,
    rng: &mut StdRng,
) -> (u32, f32, f32) {
    let model_logp = log_softmax(raw_logits);
    let mut logits = raw_logits.to_vec();
    apply_repetition_penalty(&mut logits, seen, config.repetition_penalty);
    if config.temperature == 0.0 {
        let token = argmax(&logits);
        return (token as u32, 0.0, model_logp[token]);
    }
    let distribution = sampling_distribution(
        &logits,
        config.temperature,
        config.top_k,
        config.top_p,
        config.min_p,
    );
    let (token, p) = draw(&distribution, rng.random::<f32>());
    (token, p.ln(), model_logp[token as usize])
}

/// Generates continuations of `prompts` (token ids, unpadded) in one batch with the KV cache.
///
/// Prompts are left-padded with `pad_id`; finished rows keep being fed `pad_id` (masked out)
/// until every row is done, so the batch stays rectangular.
pub fn generate<M: IncrementalDecoder>(
    model: &M,
    tokenizer: &TextTokenizer,
    prompts: &[Vec<u32>],
    config: &SamplingConfig,
    device: &Device,
) -> Result<Vec<GeneratedRow>> {
    config.validate()?;
    if prompts.is_empty() {
        bail!("generate needs at least one prompt");
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        bail!("prompt {i} is empty: generation needs at least one prompt token");
    }
    let batch = prompts.len();
    let prompt_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let pad_id = tokenizer.pad_id();

    let mut ids = Vec::with_capacity(batch * prompt_len);
    let mut mask: Vec<Vec<i64>> = Vec::with_capacity(batch);
    for p in prompts {
        let pad = prompt_len - p.len();
        ids.extend(std::iter::repeat_n(pad_id as i64, pad));
        ids.extend(p.iter().map(|&t| t as i64));
        let mut m = vec![0i64; pad];
        m.extend(std::iter::repeat_n(1i64, p.len()));
        mask.push(m);
    }
    let ids_t = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, prompt_len]), device);
    let (mut logits, mut cache) = model.prefill(ids_t, mask_tensor(&mask, device))?;

    let mut rngs: Vec<StdRng> = (0..batch)
        .map(|row| {
            StdRng::seed_from_u64(config.seed ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        })
        .collect();
    let mut rows: Vec<GeneratedRow> = (0..batch)
        .map(|_| GeneratedRow {
            tokens: Vec::new(),
            sampling_logprobs: Vec::new(),
            model_logprobs: Vec::new(),
            text: String::new(),
            finish_reason: FinishReason::MaxNewTokens,
        })
        .collect();
    let mut done = vec![false; batch];

    for step in 0..config.max_new_tokens {
        let host = logits.into_data().convert::<f32>();
        let host = host
            .as_slice::<f32>()
            .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
        let vocab = host.len() / batch;
        let mut next = Vec::with_capacity(batch);
        for row in 0..batch {
            if done[row] {
                next.push(pad_id);
                mask[row].push(0);
                continue;
            }
            let row_logits = &host[row * vocab..(row + 1) * vocab];
            if row_logits.iter().any(|x| x.is_nan()) {
                bail!("the model produced NaN logits at generation step {step} (row {row})");
            }
            let mut seen = prompts[row].clone();
            seen.extend_from_slice(&rows[row].tokens);
            let (token, sampling_lp, model_lp) =
                choose_token(row_logits, &seen, config, &mut rngs[row]);
            let out = &mut rows[row];
            out.tokens.push(token);
            out.sampling_logprobs.push(sampling_lp);
            out.model_logprobs.push(model_lp);
            if config.stop_tokens.contains(&token) {
                out.finish_reason = FinishReason::StopToken;
                done[row] = true;
            } else if !config.stop_strings.is_empty() {
                let text = tokenizer.decode(&out.tokens, true)?;
                if config
                    .stop_strings
                    .iter()
                    .any(|s| text.contains(s.as_str()))
                {
                    out.finish_reason = FinishReason::StopString;
                    done[row] = true;
                }
            }
            next.push(token);
            mask[row].push(1);
        }
        if done.iter().all(|&d| d) || step + 1 == config.max_new_tokens {
            break;
        }
        let next_t = Tensor::<2, Int>::from_data(
            TensorData::new(
                next.iter().map(|&t| t as i64).collect::<Vec<_>>(),
                [batch, 1],
            ),
            device,
        );
        logits = model.step(next_t, mask_tensor(&mask, device), &mut cache)?;
    }

    for row in &mut rows {
        let mut text = tokenizer.decode(&row.tokens, true)?;
        if let Some(cut) = config
            .stop_strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(cut);
        }
        row.text = text;
    }
    Ok(rows)
}

fn mask_tensor(mask: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let cols = mask[0].len();
    let flat: Vec<i64> = mask.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [mask.len(), cols]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn log_softmax_matches_closed_form() {
        let lp = log_softmax(&[0.0, (2.0f32).ln(), (5.0f32).ln()]);
        // probabilities 1/8, 2/8, 5/8
        assert!(close(lp[0], (0.125f32).ln()));
        assert!(close(lp[1], (0.25f32).ln()));
        assert!(close(lp[2], (0.625f32).ln()));
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn filters_match_hand_computed_sets() {
        // probabilities 0.5, 0.25, 0.125, 0.125 (logits are their logs).
        let logits: Vec<f32> = [0.5f32, 0.25, 0.125, 0.125]
            .iter()
            .map(|p| p.ln())
            .collect();
        let all = sampling_distribution(&logits, 1.0, 0, 1.0, 0.0);
        assert_eq!(all.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert!(close(all[0].1, 0.5));
        let k2 = sampling_distribution(&logits, 1.0, 2, 1.0, 0.0);
        assert_eq!(k2.len(), 2);
        assert!(close(k2[0].1, 2.0 / 3.0) && close(k2[1].1, 1.0 / 3.0));
        // top_p 0.7: 0.5 < 0.7 ≤ 0.75 → tokens 0 and 1.
        let p = sampling_distribution(&logits, 1.0, 0, 0.7, 0.0);
        assert_eq!(p.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 1]);
        // min_p 0.3: threshold 0.15 keeps 0.5 and 0.25.
        let m = sampling_distribution(&logits, 1.0, 0, 1.0, 0.3);
        assert_eq!(m.len(), 2);
        // temperature 0.5 squares the odds: 0.25 : 0.0625 : 0.015625 : 0.015625
        let t = sampling_distribution(&logits, 0.5, 0, 1.0, 0.0);
        let z = 0.25 + 0.0625 + 2.0 * 0.015625;
        assert!(close(t[0].1, 0.25 / z));
    }

    #[test]
    fn greedy_reports_the_model_logprob() {
        let mut rng = StdRng::seed_from_u64(0);
        let logits = [0.0f32, 3.0, 1.0];
        let (tok, slp, mlp) = choose_token(&logits, &[], &SamplingConfig::greedy(1), &mut rng);
        assert_eq!(tok, 1);
        assert_eq!(slp, 0.0);
        assert!(close(mlp, log_softmax(&logits)[1]));
    }

    #[test]
    fn sampled_tokens_follow_the_distribution_and_are_seeded() {
        let logits: Vec<f32> = [0.7f32, 0.2, 0.1].iter().map(|p| p.ln()).collect();
        let config = SamplingConfig::default();
        let mut counts = [0usize; 3];
        let mut rng = StdRng::seed_from_u64(7);
        let mut first = Vec::new();
        for _ in 0..20_000 {
            let (t, slp, mlp) = choose_token(&logits, &[], &config, &mut rng);
            counts[t as usize] += 1;
            assert!(close(slp, mlp), "plain sampling: both log-probs agree");
            if first.len() < 10 {
                first.push(t);
            }
        }
        let freq0 = counts[0] as f64 / 20_000.0;
        assert!((freq0 - 0.7).abs() < 0.02, "{counts:?}");
        let mut rng = StdRng::seed_from_u64(7);
        let again: Vec<u32> = (0..10)
            .map(|_| choose_token(&logits, &[], &config, &mut rng).0)
            .collect();
        assert_eq!(first, again);
    }

    #[test]
    fn bad_configs_are_rejected() {
        for c in [
            SamplingConfig {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingConfig {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingConfig {
                min_p: 1.0,
                ..Default::default()
            },
            SamplingConfig {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
