//! Batched, seeded text generation with a KV cache.
//!
//! The loop is model-agnostic: anything implementing [`IncrementalDecoder`] (prefill a
//! left-padded batch, then feed one token per row) can be sampled from. Each step turns the
//! model's next-token logits into a sampling distribution with the processors of
//! [`SamplingConfig`] — repetition penalty, temperature, top-k, top-p (nucleus), min-p — in that
//! order, draws a token per row by inverse CDF over the distribution — sorted by decreasing
//! probability when top-k, top-p or min-p is on (they need the ranking), in id order when none
//! is (plain temperature sampling: the same distribution without sorting the vocabulary at
//! every token) — with one uniform number per row and token from a per-row RNG seeded by
//! `(seed, row)`, and records two log-probs of the drawn token:
//! - under the **sampling** distribution (what the sampler actually used), and
//! - under the **unmodified model** (plain log-softmax of the logits): the one PPO/GRPO
//!   importance ratios need. Using the former in a trainer is the rollout/trainer mismatch that
//!   peers suffer from.
//!
//! Greedy decoding is `temperature = 0`. Rows stop at a stop token, a stop string (the text is
//! cut before the stop string) or `max_new_tokens`.
//!
//! The processors and the draw run as tensor ops on the model's device (`sampling/device.rs`): per token
//! only the `B` uniform numbers go up and the chosen ids with their two log-probs come back, in
//! one read. The host functions here ([`choose_token`], [`sampling_distribution`], …) are the
//! reference implementation the device path is tested against, token for token.
//!
//! Defined behaviour at the edges (both paths):
//! - Logits are shifted by their row maximum before the division by the temperature, so a
//!   temperature so small that `logit / T` would overflow (`max|logit| / T` not finite in f32) is
//!   exact, not NaN: the distribution collapses onto the argmax, i.e. greedy decoding (sampling
//!   log-prob 0; ties at the maximum share the mass).
//! - A repetition penalty below 1 that would push a logit past `f32::MAX` saturates there.
//! - A row of model logits with a NaN, a `+inf`, or only `−inf` is an error naming the row and
//!   the generation step; nothing panics.
//! - With a filter on, ties in probability are ordered by token id on the host; the device sort
//!   may order exactly equal probabilities differently, which moves the draw only when `u` lands
//!   inside a tie.

mod device;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::tokenize::TextTokenizer;
use device::DeviceSampler;

/// How to sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// Most tokens generated per row (a stop token or string may end a row earlier).
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
    /// Seeds the per-row RNGs: row `r` uses `StdRng::seed_from_u64(seed ^ r·0x9E3779B97F4A7C15)`.
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
        if let Some(i) = self.stop_strings.iter().position(String::is_empty) {
            bail!(
                "stop string {} is empty: it would match before the first new token, so every \
                 row would stop at once; drop it",
                i + 1
            );
        }
        Ok(())
    }
}

/// Why a row stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The last token is one of [`SamplingConfig::stop_tokens`].
    StopToken,
    /// The decoded text contains one of [`SamplingConfig::stop_strings`].
    StopString,
    /// [`SamplingConfig::max_new_tokens`] were generated.
    MaxNewTokens,
}

/// The output of [`generate`] for one row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneratedRow {
    /// The generated token ids (a stop token included).
    pub tokens: Vec<u32>,
    /// log p(token) under the processed distribution the sampler drew from (0 for greedy).
    pub sampling_logprobs: Vec<f32>,
    /// log p(token) under the unmodified model (log-softmax of the raw logits).
    pub model_logprobs: Vec<f32>,
    /// Decoded text (special tokens skipped), cut before a stop string.
    pub text: String,
    /// Why the row stopped.
    pub finish_reason: FinishReason,
}

/// A causal language model that can be decoded incrementally with a cache.
pub trait IncrementalDecoder {
    /// The key/value cache that `prefill` fills and `step` extends.
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

/// Checks that one row of model logits can be sampled from: no NaN, no `+inf`, and at least one
/// logit above `−inf` (`−inf` alone is a mask and fine).
pub fn check_logits(logits: &[f32]) -> Result<()> {
    if logits.is_empty() {
        bail!("the row has no logits (vocabulary of 0)");
    }
    if let Some(i) = logits.iter().position(|x| x.is_nan()) {
        bail!("logit of token {i} is NaN");
    }
    if let Some(i) = logits.iter().position(|&x| x == f32::INFINITY) {
        bail!("logit of token {i} is +inf");
    }
    if logits.iter().all(|&x| x == f32::NEG_INFINITY) {
        bail!("every logit is -inf");
    }
    Ok(())
}

/// Applies the CTRL-style repetition penalty (Keskar et al. 2019, "CTRL", §4.1) to `logits` for
/// every token in `seen`: `l / penalty` where `l > 0`, else `l · penalty`. A result past
/// `f32::MAX` (a penalty below 1) saturates at `f32::MAX`.
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
            *l = if *l > 0.0 {
                (*l / penalty).min(f32::MAX)
            } else {
                *l * penalty
            };
        }
    }
}

/// Whether any of top-k, top-p and min-p removes tokens (each needs the tokens ranked by
/// probability; with none of them the draw goes over the vocabulary in id order).
pub(crate) fn filters_on(top_k: usize, top_p: f32, min_p: f32) -> bool {
    top_k > 0 || top_p < 1.0 || min_p > 0.0
}

/// Turns processed logits into a sparse distribution `(token, probability)` after temperature,
/// top-k, top-p and min-p: sorted by decreasing probability (ties by id) when one of the
/// filters is on, in id order when none is; only tokens of positive probability are kept. `temperature` must be > 0; the logits are shifted by their
/// maximum before the division, so any positive temperature is exact (a tiny one gives the
/// argmax). Empty only when [`check_logits`] rejects the row.
pub fn sampling_distribution(
    logits: &[f32],
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scaled: Vec<f32> = logits.iter().map(|&l| (l - max) / temperature).collect();
    let logp = log_softmax(&scaled);
    let mut order: Vec<(u32, f32)> = logp
        .iter()
        .enumerate()
        .map(|(i, &lp)| (i as u32, lp.exp()))
        .filter(|&(_, p)| p > 0.0)
        .collect();
    if !filters_on(top_k, top_p, min_p) {
        // No filter needs the ranking: the same distribution in id order, without sorting the
        // whole vocabulary at every token.
        let total: f32 = order.iter().map(|&(_, p)| p).sum();
        for entry in &mut order {
            entry.1 /= total;
        }
        return order;
    }
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

/// Draws from a sparse distribution with a uniform number `u` in [0, 1): the first entry whose
/// cumulative probability exceeds `u`, or the last one when rounding leaves the total below `u`.
fn draw(distribution: &[(u32, f32)], u: f32) -> Option<(u32, f32)> {
    let mut cumulative = 0.0;
    for &(token, p) in distribution {
        cumulative += p;
        if u < cumulative {
            return Some((token, p));
        }
    }
    distribution.last().copied()
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

/// Chooses the next token of one row on the host with the uniform number `u` (unused when
/// greedy): returns `(token, sampling log-prob, model log-prob)`, or an error when
/// [`check_logits`] rejects the row. The reference implementation of the device sampler.
pub fn choose_token(
    raw_logits: &[f32],
    seen: &[u32],
    config: &SamplingConfig,
    u: f32,
) -> Result<(u32, f32, f32)> {
    check_logits(raw_logits)?;
    let model_logp = log_softmax(raw_logits);
    let mut logits = raw_logits.to_vec();
    apply_repetition_penalty(&mut logits, seen, config.repetition_penalty);
    if config.temperature == 0.0 {
        let token = argmax(&logits);
        return Ok((token as u32, 0.0, model_logp[token]));
    }
    let distribution = sampling_distribution(
        &logits,
        config.temperature,
        config.top_k,
        config.top_p,
        config.min_p,
    );
    let (token, p) = draw(&distribution, u)
        .ok_or_else(|| anyhow!("no token has positive probability after the filters"))?;
    Ok((token, p.ln(), model_logp[token as usize]))
}

/// What one step chose for one row.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Choice {
    token: u32,
    sampling_logprob: f32,
    model_logprob: f32,
}

/// Turns a step's logits `[B, V]` into one token per row. Implemented on the device
/// ([`DeviceSampler`], what [`generate`] uses) and on the host (`HostSampler`, the reference the
/// tests compare against).
trait TokenChooser: Sized {
    /// A chooser for `prompts` (the repetition penalty counts their ids as seen) over a
    /// vocabulary of `vocab` ids.
    fn start(
        config: &SamplingConfig,
        prompts: &[Vec<u32>],
        vocab: usize,
        device: &Device,
    ) -> Result<Self>;

    /// Chooses every row's token; `u[row]` is the row's uniform number (0 when greedy or done).
    /// Rows with `done[row]` get an arbitrary token and are not checked. Every chosen token
    /// counts as seen from the next step on.
    fn choose(
        &mut self,
        logits: Tensor<2>,
        u: &[f32],
        done: &[bool],
        step: usize,
    ) -> Result<Vec<Choice>>;
}

/// The error for a row whose logits [`check_logits`] rejects.
fn bad_row(step: usize, row: usize, e: anyhow::Error) -> anyhow::Error {
    anyhow!("the model's logits cannot be sampled at generation step {step} (row {row}): {e}")
}

/// The host reference: reads the whole `[B, V]` logits and runs [`choose_token`] per row (what
/// `generate` did before sampling moved to the device); the tests check the device against it.
#[cfg(test)]
struct HostSampler {
    config: SamplingConfig,
    seen: Vec<Vec<u32>>,
}

#[cfg(test)]
impl TokenChooser for HostSampler {
    fn start(config: &SamplingConfig, prompts: &[Vec<u32>], _: usize, _: &Device) -> Result<Self> {
        Ok(Self {
            config: config.clone(),
            seen: prompts.to_vec(),
        })
    }

    fn choose(
        &mut self,
        logits: Tensor<2>,
        u: &[f32],
        done: &[bool],
        step: usize,
    ) -> Result<Vec<Choice>> {
        let host: Vec<f32> = logits
            .try_into_data()
            .map_err(|e| anyhow!("reading the logits at generation step {step}: {e:?}"))?
            .iter::<f32>()
            .collect();
        let vocab = host.len() / done.len().max(1);
        let mut out = Vec::with_capacity(done.len());
        for (row, &finished) in done.iter().enumerate() {
            if finished {
                out.push(Choice {
                    token: 0,
                    sampling_logprob: 0.0,
                    model_logprob: 0.0,
                });
                continue;
            }
            let row_logits = &host[row * vocab..(row + 1) * vocab];
            let (token, sampling_logprob, model_logprob) =
                choose_token(row_logits, &self.seen[row], &self.config, u[row])
                    .map_err(|e| bad_row(step, row, e))?;
            self.seen[row].push(token);
            out.push(Choice {
                token,
                sampling_logprob,
                model_logprob,
            });
        }
        Ok(out)
    }
}

/// Generates continuations of `prompts` (token ids, unpadded) in one batch with the KV cache.
///
/// Prompts are left-padded with the tokenizer's pad id; finished rows keep being fed it (masked
/// out) until every row is done, so the batch stays rectangular. The sampling processors run on
/// `device`; per token one small read brings the chosen ids and log-probs to the host.
pub fn generate<M: IncrementalDecoder>(
    model: &M,
    tokenizer: &TextTokenizer,
    prompts: &[Vec<u32>],
    config: &SamplingConfig,
    device: &Device,
) -> Result<Vec<GeneratedRow>> {
    generate_with::<M, DeviceSampler>(model, tokenizer, prompts, config, device)
}

/// [`generate`] with the token chooser `C`.
fn generate_with<M: IncrementalDecoder, C: TokenChooser>(
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
    let [logit_rows, vocab] = logits.dims();
    if logit_rows != batch {
        bail!("the model returned logits for {logit_rows} rows, expected {batch}");
    }
    let mut chooser = C::start(config, prompts, vocab, device)?;

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
        // One uniform number per live row and token, as the host sampler always drew them.
        let u: Vec<f32> = rngs
            .iter_mut()
            .zip(&done)
            .map(|(rng, &d)| {
                if d || config.temperature == 0.0 {
                    0.0
                } else {
                    rng.random::<f32>()
                }
            })
            .collect();
        let choices = chooser.choose(logits, &u, &done, step)?;
        let mut next = Vec::with_capacity(batch);
        for (row, choice) in choices.into_iter().enumerate() {
            if done[row] {
                next.push(pad_id);
                mask[row].push(0);
                continue;
            }
            let token = choice.token;
            let out = &mut rows[row];
            out.tokens.push(token);
            out.sampling_logprobs.push(choice.sampling_logprob);
            out.model_logprobs.push(choice.model_logprob);
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
        logits = model
            .step(next_t, mask_tensor(&mask, device), &mut cache)
            .with_context(|| format!("decoding step {}", step + 1))?;
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
        let (tok, slp, mlp) =
            choose_token(&logits, &[], &SamplingConfig::greedy(1), rng.random()).unwrap();
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
            let (t, slp, mlp) = choose_token(&logits, &[], &config, rng.random()).unwrap();
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
            .map(|_| choose_token(&logits, &[], &config, rng.random()).unwrap().0)
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
        // `--stop ""` would end every row before its first token: a flag that does nothing
        // useful is an error naming it.
        let c = SamplingConfig {
            stop_strings: vec!["</s>".into(), String::new()],
            ..Default::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "stop string 2 is empty: it would match before the first new token, so every row \
             would stop at once; drop it"
        );
    }
    use crate::device::test_device;
    use crate::models::llama::CausalLm;
    use crate::models::llama::tests::{tiny_config, tiny_model, tiny_tokenizer};

    /// A `[rows, V]` logits tensor.
    fn logits_tensor(rows: &[Vec<f32>], device: &Device) -> Tensor<2> {
        let v = rows[0].len();
        Tensor::from_data(TensorData::new(rows.concat(), [rows.len(), v]), device)
    }

    /// One step of chooser `C` on host-given logits.
    fn choose_once<C: TokenChooser>(
        config: &SamplingConfig,
        prompts: &[Vec<u32>],
        rows: &[Vec<f32>],
        u: &[f32],
    ) -> Result<Vec<Choice>> {
        let device = test_device();
        let mut chooser = C::start(config, prompts, rows[0].len(), &device)?;
        chooser.choose(logits_tensor(rows, &device), u, &vec![false; rows.len()], 0)
    }

    /// Normal-ish logits (sum of uniforms) scaled by `scale`, with every 7th token masked −inf
    /// when `masked`.
    fn random_logits(rng: &mut StdRng, v: usize, scale: f32, masked: bool) -> Vec<f32> {
        (0..v)
            .map(|i| {
                if masked && i % 7 == 3 {
                    f32::NEG_INFINITY
                } else {
                    let z: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum();
                    z * scale
                }
            })
            .collect()
    }

    /// The configs the device path is checked on: each processor alone and combined.
    fn configs() -> Vec<SamplingConfig> {
        let base = SamplingConfig::default();
        vec![
            SamplingConfig::greedy(8),
            SamplingConfig {
                repetition_penalty: 1.5,
                ..SamplingConfig::greedy(8)
            },
            base.clone(),
            SamplingConfig {
                temperature: 0.7,
                ..base.clone()
            },
            SamplingConfig {
                top_k: 12,
                ..base.clone()
            },
            SamplingConfig {
                top_p: 0.8,
                ..base.clone()
            },
            SamplingConfig {
                min_p: 0.05,
                ..base.clone()
            },
            SamplingConfig {
                repetition_penalty: 1.3,
                ..base.clone()
            },
            SamplingConfig {
                repetition_penalty: 0.7,
                temperature: 1.3,
                ..base.clone()
            },
            SamplingConfig {
                temperature: 0.9,
                top_k: 40,
                top_p: 0.9,
                min_p: 0.02,
                repetition_penalty: 1.2,
                ..base
            },
        ]
    }

    /// Whether float differences may legitimately change the host's draw for `row`: `u` lies
    /// within 1e-5 of a cumulative-probability boundary of the host's distribution, or a filter
    /// sits on its edge (the probability mass before some token within 1e-5 of `top_p`, or a
    /// probability within 1e-5 relative of the `min_p` threshold).
    fn near_a_boundary(row: &[f32], seen: &[u32], config: &SamplingConfig, u: f32) -> bool {
        let mut logits = row.to_vec();
        apply_repetition_penalty(&mut logits, seen, config.repetition_penalty);
        let kept = |top_p, min_p| {
            sampling_distribution(&logits, config.temperature, config.top_k, top_p, min_p)
        };
        let mut c = 0.0f32;
        let at_u = kept(config.top_p, config.min_p).iter().any(|&(_, p)| {
            c += p;
            (c - u).abs() < 1e-5
        });
        // Ranked by probability (a top-k past the vocabulary filters nothing but sorts).
        let unfiltered = sampling_distribution(
            &logits,
            config.temperature,
            if config.top_k > 0 {
                config.top_k
            } else {
                usize::MAX
            },
            1.0,
            0.0,
        );
        let mut mass = 0.0f32;
        let at_top_p = config.top_p < 1.0
            && unfiltered.iter().any(|&(_, p)| {
                mass += p;
                (mass - config.top_p).abs() < 1e-5
            });
        let threshold = config.min_p * unfiltered.first().map_or(0.0, |e| e.1);
        let at_min_p = config.min_p > 0.0
            && unfiltered
                .iter()
                .any(|&(_, p)| (p - threshold).abs() <= 1e-5 * threshold);
        at_u || at_top_p || at_min_p
    }

    #[test]
    fn device_sampler_matches_the_host_reference_on_synthetic_logits() {
        let (batch, vocab, steps) = (4, 300, 3);
        let (mut draws, mut straddles) = (0, 0);
        for (ci, config) in configs().into_iter().enumerate() {
            for seed in 0..25u64 {
                let mut rng = StdRng::seed_from_u64(seed * 31 + ci as u64);
                let prompts: Vec<Vec<u32>> = (0..batch)
                    .map(|_| (0..6).map(|_| rng.random_range(0..vocab as u32)).collect())
                    .collect();
                let device = test_device();
                let mut on_device =
                    DeviceSampler::start(&config, &prompts, vocab, &device).unwrap();
                let mut on_host = HostSampler::start(&config, &prompts, vocab, &device).unwrap();
                'steps: for step in 0..steps {
                    let scale = [3.0, 10.0, 0.5][step % 3];
                    let rows: Vec<Vec<f32>> = (0..batch)
                        .map(|r| random_logits(&mut rng, vocab, scale, r % 2 == 1))
                        .collect();
                    let u: Vec<f32> = (0..batch).map(|_| rng.random()).collect();
                    let seen_before = on_host.seen.clone();
                    let done = vec![false; batch];
                    let d = on_device
                        .choose(logits_tensor(&rows, &device), &u, &done, step)
                        .unwrap();
                    let h = on_host
                        .choose(logits_tensor(&rows, &device), &u, &done, step)
                        .unwrap();
                    for row in 0..batch {
                        draws += 1;
                        let what = format!("config {ci} seed {seed} step {step} row {row}");
                        let (ds, hs) = (d[row].sampling_logprob, h[row].sampling_logprob);
                        if d[row].token != h[row].token || (ds - hs).abs() >= 1e-5 {
                            assert!(
                                near_a_boundary(&rows[row], &seen_before[row], &config, u[row]),
                                "{what}: device {:?} vs host {:?}",
                                d[row],
                                h[row]
                            );
                            straddles += 1;
                            // The seen sets may now differ: go on with the next seed.
                            break 'steps;
                        }
                        let (dm, hm) = (d[row].model_logprob, h[row].model_logprob);
                        assert!((dm - hm).abs() < 1e-5, "{what}: model {dm} vs {hm}");
                    }
                }
            }
        }
        // Straddles are rare: a float tie at a boundary, not a different algorithm.
        assert!(
            draws > 2500 && straddles * 200 < draws,
            "{draws} draws compared, {straddles} on a boundary"
        );
    }

    #[test]
    fn device_filters_match_hand_computed_draws() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 (logits are their logs).
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let base = SamplingConfig::default();
        let cases = [
            // No filter: cumulative 0.5, 0.8, 0.95, 1 → u = 0.9 lands on token 2.
            (base.clone(), 0.9, 2, 0.15f32),
            (base.clone(), 0.1, 0, 0.5),
            // top-k 2: 0.625, 0.375 → u = 0.7 is token 1.
            (
                SamplingConfig {
                    top_k: 2,
                    ..base.clone()
                },
                0.7,
                1,
                0.375,
            ),
            // top-p 0.75: 0.5 < 0.75 ≤ 0.8 keeps tokens 0 and 1.
            (
                SamplingConfig {
                    top_p: 0.75,
                    ..base.clone()
                },
                0.99,
                1,
                0.375,
            ),
            // min-p 0.2: threshold 0.1 drops token 3; 0.15 / 0.95.
            (
                SamplingConfig {
                    min_p: 0.2,
                    ..base.clone()
                },
                0.9,
                2,
                0.15 / 0.95,
            ),
            // Temperature 0.5 squares the odds: 0.25 : 0.09 : 0.0225 : 0.0025.
            (
                SamplingConfig {
                    temperature: 0.5,
                    ..base.clone()
                },
                0.5,
                0,
                0.25 / 0.365,
            ),
            // u past the float total lands on the last kept token.
            (
                SamplingConfig { top_k: 3, ..base },
                0.999_999_94,
                2,
                0.15 / 0.95,
            ),
        ];
        for (config, u, token, p) in cases {
            let c = choose_once::<DeviceSampler>(
                &config,
                &[vec![]],
                std::slice::from_ref(&logits),
                &[u],
            )
            .unwrap()[0];
            assert_eq!(c.token, token, "{config:?} u {u}");
            assert!(
                (c.sampling_logprob - p.ln()).abs() < 1e-5,
                "{config:?}: {c:?}"
            );
            assert!((c.model_logprob - logits[token as usize]).abs() < 1e-5);
        }
    }

    #[test]
    fn device_repetition_penalty_follows_ctrl() {
        // Token 0 (logit 2, seen) becomes 1 under penalty 2, so token 1 (1.5) wins greedily;
        // token 2 (-1, seen) becomes -2.
        let logits = vec![2.0f32, 1.5, -1.0, 0.0];
        let config = SamplingConfig {
            repetition_penalty: 2.0,
            ..SamplingConfig::greedy(1)
        };
        let c = choose_once::<DeviceSampler>(
            &config,
            &[vec![0, 2, 0]],
            std::slice::from_ref(&logits),
            &[0.0],
        )
        .unwrap()[0];
        assert_eq!(c.token, 1);
        assert_eq!(c.sampling_logprob, 0.0);
        assert!((c.model_logprob - log_softmax(&logits)[1]).abs() < 1e-6);
        // Sampling: the distribution is softmax([1, 1.5, -2, 0]).
        let config = SamplingConfig {
            repetition_penalty: 2.0,
            ..SamplingConfig::default()
        };
        // p ≈ [0.326, 0.538, 0.016, 0.120], drawn in id order (no filter): cumulative 0.326,
        // 0.864, 0.880, 1, so u = 0.5 lands on token 1 and u = 0.87 on token 2.
        let expected = log_softmax(&[1.0, 1.5, -2.0, 0.0]);
        for (u, token) in [(0.5, 1), (0.87, 2), (0.9, 3), (0.1, 0)] {
            let c = choose_once::<DeviceSampler>(
                &config,
                &[vec![0, 2]],
                std::slice::from_ref(&logits),
                &[u],
            )
            .unwrap()[0];
            assert_eq!(c.token, token, "u = {u}");
            assert!((c.sampling_logprob - expected[token as usize]).abs() < 1e-6);
        }
    }

    #[test]
    fn a_penalty_below_one_saturates_instead_of_overflowing() {
        let mut l = vec![3.0e38f32, -3.0e38, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1], 0.5);
        assert_eq!(l, [f32::MAX, -1.5e38, 1.0]);
        let config = SamplingConfig {
            repetition_penalty: 0.5,
            ..SamplingConfig::default()
        };
        let rows = vec![vec![3.0e38f32, 2.0e38, 1.0]];
        for u in [0.0, 0.5, 0.99] {
            let d = choose_once::<DeviceSampler>(&config, &[vec![0, 1]], &rows, &[u]).unwrap()[0];
            let h = choose_once::<HostSampler>(&config, &[vec![0, 1]], &rows, &[u]).unwrap()[0];
            // Penalized logits f32::MAX and 4e38 → MAX: a tie between tokens 0 and 1.
            assert!(d.token < 2 && h.token < 2, "{d:?} {h:?}");
            assert!((d.sampling_logprob - 0.5f32.ln()).abs() < 1e-6, "{d:?}");
            assert!((h.sampling_logprob - 0.5f32.ln()).abs() < 1e-6, "{h:?}");
        }
    }

    #[test]
    fn a_temperature_that_overflows_every_logit_decodes_greedily() {
        // logit / T overflows f32 for every logit (|l| ≥ 1, T ≤ 1e-38): the limit is the argmax.
        let rows = vec![
            vec![1.0f32, 7.5, -3.0, 7.25],
            vec![-20.0, -30.0, -10.0, -40.0],
        ];
        for temperature in [1e-38f32, 1e-45, f32::MIN_POSITIVE] {
            let config = SamplingConfig {
                temperature,
                top_p: 0.5,
                ..SamplingConfig::default()
            };
            for u in [0.0, 0.3, 0.999] {
                for c in [
                    choose_once::<DeviceSampler>(&config, &[vec![], vec![]], &rows, &[u, u]),
                    choose_once::<HostSampler>(&config, &[vec![], vec![]], &rows, &[u, u]),
                ] {
                    let c = c.unwrap();
                    assert_eq!([c[0].token, c[1].token], [1, 2], "T {temperature}");
                    assert_eq!(c[0].sampling_logprob, 0.0);
                    assert_eq!(c[1].sampling_logprob, 0.0);
                    assert!((c[0].model_logprob - log_softmax(&rows[0])[1]).abs() < 1e-6);
                }
            }
        }
    }

    /// A decoder that replays scripted logits: `script[0]` for the prefill, `script[k]` for step
    /// `k`.
    struct Scripted {
        script: Vec<Vec<Vec<f32>>>,
        device: Device,
    }

    impl IncrementalDecoder for Scripted {
        type Cache = usize;

        fn prefill(&self, _: Tensor<2, Int>, _: Tensor<2, Int>) -> Result<(Tensor<2>, usize)> {
            Ok((logits_tensor(&self.script[0], &self.device), 0))
        }

        fn step(&self, _: Tensor<2, Int>, _: Tensor<2, Int>, k: &mut usize) -> Result<Tensor<2>> {
            *k += 1;
            Ok(logits_tensor(&self.script[*k], &self.device))
        }
    }

    #[test]
    fn unsampleable_logits_are_errors_naming_the_row_and_step() {
        let device = test_device();
        let tokenizer = tiny_tokenizer();
        let good: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
        let stop = argmax(&good) as u32;
        let other: Vec<f32> = good.iter().rev().copied().collect();
        let go_on = argmax(&other) as u32;
        assert_ne!(stop, go_on);
        for (bad_value, what) in [
            (f32::NAN, "NaN"),
            (f32::INFINITY, "+inf"),
            (f32::NEG_INFINITY, "every logit is -inf"),
        ] {
            let mut bad = good.clone();
            if bad_value == f32::NEG_INFINITY {
                bad.fill(bad_value);
            } else {
                bad[5] = bad_value;
            }
            // Row 0 stops at step 0 (its later logits are garbage and must not matter); row 1
            // goes on and turns bad at step 2.
            let script = vec![
                vec![good.clone(), other.clone()],
                vec![bad.clone(), other.clone()],
                vec![bad.clone(), bad.clone()],
            ];
            let model = Scripted {
                script,
                device: device.clone(),
            };
            for temperature in [0.0, 1.0] {
                let config = SamplingConfig {
                    max_new_tokens: 3,
                    temperature,
                    top_k: 1,
                    stop_tokens: vec![stop],
                    ..SamplingConfig::default()
                };
                let prompts = [vec![3u32], vec![4u32]];
                for e in [
                    generate(&model, &tokenizer, &prompts, &config, &device).unwrap_err(),
                    generate_with::<_, HostSampler>(&model, &tokenizer, &prompts, &config, &device)
                        .unwrap_err(),
                ] {
                    let msg = format!("{e:#}");
                    assert!(
                        msg.contains("step 2 (row 1)") && msg.contains(what),
                        "T {temperature}: {msg}"
                    );
                }
                // Without the bad step both rows finish: row 0 at its stop token.
                let ok = SamplingConfig {
                    max_new_tokens: 2,
                    ..config
                };
                let rows = generate(&model, &tokenizer, &prompts, &ok, &device).unwrap();
                assert_eq!(rows[0].tokens, [stop]);
                assert_eq!(rows[1].tokens, [go_on, go_on]);
            }
        }
    }

    fn tiny_lm() -> CausalLm {
        let device = test_device();
        CausalLm {
            model: tiny_model(&device),
            config: tiny_config(),
            tokenizer: tiny_tokenizer(),
            bos_id: None,
            eos_id: None,
            device,
        }
    }

    #[test]
    fn generation_on_the_device_equals_the_host_reference_on_the_tiny_llama() {
        let lm = tiny_lm();
        let prompts = vec![vec![3u32, 4, 5], vec![6, 7], vec![9, 10, 11, 12], vec![1]];
        for (ci, config) in configs().into_iter().enumerate() {
            for seed in [0u64, 1, 7, 42, 1234] {
                let config = SamplingConfig {
                    max_new_tokens: 12,
                    seed,
                    stop_tokens: vec![31],
                    ..config.clone()
                };
                let d = generate(&lm, &lm.tokenizer, &prompts, &config, &lm.device).unwrap();
                let h = generate_with::<_, HostSampler>(
                    &lm,
                    &lm.tokenizer,
                    &prompts,
                    &config,
                    &lm.device,
                )
                .unwrap();
                for (row, (d, h)) in d.iter().zip(&h).enumerate() {
                    let what = format!("config {ci} seed {seed} row {row}");
                    assert_eq!(d.tokens, h.tokens, "{what}");
                    assert_eq!(d.finish_reason, h.finish_reason, "{what}");
                    assert_eq!(d.text, h.text, "{what}");
                    for k in 0..d.tokens.len() {
                        let (ds, hs) = (d.sampling_logprobs[k], h.sampling_logprobs[k]);
                        let (dm, hm) = (d.model_logprobs[k], h.model_logprobs[k]);
                        assert!((ds - hs).abs() < 1e-5, "{what} token {k}: {ds} vs {hs}");
                        assert!((dm - hm).abs() < 1e-5, "{what} token {k}: {dm} vs {hm}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_vanishing_temperature_generates_the_greedy_tokens() {
        let lm = tiny_lm();
        let prompts = vec![vec![3u32, 4, 5], vec![6, 7]];
        let greedy = generate(
            &lm,
            &lm.tokenizer,
            &prompts,
            &SamplingConfig::greedy(10),
            &lm.device,
        )
        .unwrap();
        let config = SamplingConfig {
            max_new_tokens: 10,
            temperature: 1e-40,
            ..SamplingConfig::default()
        };
        let tiny = generate(&lm, &lm.tokenizer, &prompts, &config, &lm.device).unwrap();
        for (g, t) in greedy.iter().zip(&tiny) {
            assert_eq!(g.tokens, t.tokens);
            assert!(t.sampling_logprobs.iter().all(|&lp| lp == 0.0));
            assert_eq!(g.model_logprobs, t.model_logprobs);
        }
    }
}
