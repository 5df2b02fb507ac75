//! The sampling processors and the categorical draw as tensor ops on the model's device.
//!
//! Per step, for logits `z` `[B, V]` (f32) and one uniform number `u` per row (drawn on the host
//! from the same per-row RNGs as the host reference, uploaded as `[B, 1]`):
//! 1. model log-prob: `log p(t) = z_t − logsumexp(z)`;
//! 2. repetition penalty on a `[B, V]` count of seen ids kept on the device (the prompt ids,
//!    then each chosen token scattered in): `z / r` where `z > 0`, else `z · r`, saturated at
//!    `f32::MAX`;
//! 3. greedy (`T = 0`): `argmax` (first on ties). Otherwise `p = softmax((z − max z) / T)`.
//!    Without top-k, top-p or min-p the draw is over `p` in id order: the id is the count of ids
//!    whose `cumsum(p) ≤ u`, capped at the last id with `p > 0` (no sort). With a filter `p` is
//!    sorted descending; the kept prefix is `p > 0`, rank `< top_k`, probability mass before the
//!    token `< top_p`, `p ≥ min_p · p_max`; `q` = the kept `p` renormalized; the drawn position is
//!    the first whose cumulative `q` exceeds `u` — the count of kept positions with
//!    `cumsum(q) ≤ u`, capped at the last kept one.
//!
//! Then one read brings back the `[B, 1]` ids and the `[B, 2]` (sampling, model) log-probs.

use anyhow::{Result, anyhow, bail};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, FloatDType, IndexingUpdateOp, Int, Tensor, TensorData, Transaction};

use super::{Choice, SamplingConfig, TokenChooser, bad_row, check_logits, filters_on};

/// Chooses tokens on the device; see the module docs for the ops.
pub(crate) struct DeviceSampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    penalty: f32,
    /// `[B, V]` count of each id in the prompt and the output so far (only with a penalty ≠ 1).
    seen: Option<Tensor<2>>,
    batch: usize,
    vocab: usize,
    device: Device,
}

impl DeviceSampler {
    /// The repetition penalty applied to `logits` where `seen` counts an id.
    fn penalize(&self, logits: Tensor<2>) -> Tensor<2> {
        let Some(seen) = &self.seen else {
            return logits;
        };
        let r = self.penalty;
        let non_positive = logits.clone().lower_equal_elem(0.0);
        let penalized = logits
            .clone()
            .div_scalar(r)
            .mask_where(non_positive, logits.clone().mul_scalar(r))
            .clamp_max(f32::MAX);
        logits.mask_where(seen.clone().greater_elem(0.0), penalized)
    }

    /// Draws one token per row from the processed distribution of `z` with the uniform numbers
    /// `u`: returns the ids `[B, 1]` and their log-probs under that distribution `[B, 1]`.
    fn draw(&self, z: Tensor<2>, u: &[f32]) -> (Tensor<2, Int>, Tensor<2>) {
        let [b, v] = z.dims();
        let max = z.clone().max_dim(1);
        let p = softmax((z - max).div_scalar(self.temperature), 1);
        let u = Tensor::<2>::from_data(TensorData::new(u.to_vec(), [b, 1]), &self.device)
            .cast(FloatDType::F32);
        if !filters_on(self.top_k, self.top_p, self.min_p) {
            return Self::draw_in_id_order(p, u);
        }
        let (mut sorted, mut ids) = p.sort_descending_with_indices(1);
        let mut n = v;
        if self.top_k > 0 && self.top_k < v {
            n = self.top_k;
            sorted = sorted.narrow(1, 0, n);
            ids = ids.narrow(1, 0, n);
        }
        let first = sorted.clone().narrow(1, 0, 1);
        let mut keep = sorted.clone().greater_elem(0.0);
        if self.top_p < 1.0 {
            // The mass strictly before each position: keep while it is below top_p, i.e. up to
            // and including the first position whose cumulative mass reaches top_p.
            let before = if n > 1 {
                Tensor::cat(
                    vec![
                        first.zeros_like(),
                        sorted.clone().cumsum(1).narrow(1, 0, n - 1),
                    ],
                    1,
                )
            } else {
                first.zeros_like()
            };
            keep = keep.bool_and(before.lower_elem(self.top_p));
        }
        if self.min_p > 0.0 {
            let threshold = first.mul_scalar(self.min_p).expand([b, n]);
            keep = keep.bool_and(sorted.clone().greater_equal(threshold));
        }
        let kept = sorted.mask_fill(keep.clone().bool_not(), 0.0);
        let total = kept.clone().sum_dim(1).expand([b, n]);
        let q = kept / total;
        let u = u.expand([b, n]);
        let below = q
            .clone()
            .cumsum(1)
            .lower_equal(u)
            .bool_and(keep.clone())
            .int()
            .sum_dim(1);
        let last_kept = keep.int().sum_dim(1).sub_scalar(1).clamp_min(0);
        let position = below.min_pair(last_kept);
        let token = ids.gather(1, position.clone());
        (token, q.gather(1, position).log())
    }

    /// The unfiltered draw over `p` `[B, V]` in id order: the drawn id is the count of ids whose
    /// cumulative probability is `≤ u` (a prefix, the cumsum being non-decreasing, so the id it
    /// lands on has `p > 0`), capped at the last id of positive probability.
    fn draw_in_id_order(p: Tensor<2>, u: Tensor<2>) -> (Tensor<2, Int>, Tensor<2>) {
        let [b, v] = p.dims();
        let below = p
            .clone()
            .cumsum(1)
            .lower_equal(u.expand([b, v]))
            .int()
            .sum_dim(1);
        let ids = Tensor::<1, Int>::arange(0..v as i64, &p.device())
            .reshape([1, v])
            .expand([b, v]);
        let last_positive = ids
            .mask_fill(p.clone().lower_equal_elem(0.0), -1)
            .max_dim(1)
            .clamp_min(0);
        let token = below.min_pair(last_positive);
        (token.clone(), p.gather(1, token).log())
    }
}

impl TokenChooser for DeviceSampler {
    fn start(
        config: &SamplingConfig,
        prompts: &[Vec<u32>],
        vocab: usize,
        device: &Device,
    ) -> Result<Self> {
        if vocab == 0 {
            bail!("the model returned no logits (vocabulary of 0)");
        }
        let batch = prompts.len();
        let seen = (config.repetition_penalty != 1.0).then(|| {
            let mut counts = vec![0f32; batch * vocab];
            for (row, prompt) in prompts.iter().enumerate() {
                for &t in prompt.iter().filter(|&&t| (t as usize) < vocab) {
                    counts[row * vocab + t as usize] = 1.0;
                }
            }
            Tensor::<2>::from_data(TensorData::new(counts, [batch, vocab]), device)
                .cast(FloatDType::F32)
        });
        Ok(Self {
            temperature: config.temperature,
            top_k: config.top_k,
            top_p: config.top_p,
            min_p: config.min_p,
            penalty: config.repetition_penalty,
            seen,
            batch,
            vocab,
            device: device.clone(),
        })
    }

    fn choose(
        &mut self,
        logits: Tensor<2>,
        u: &[f32],
        done: &[bool],
        step: usize,
    ) -> Result<Vec<Choice>> {
        let dims = logits.dims();
        if dims != [self.batch, self.vocab] {
            bail!(
                "generation step {step}: the model returned logits of shape {dims:?}, expected [{}, {}]",
                self.batch,
                self.vocab
            );
        }
        let raw = logits.cast(FloatDType::F32);
        let max = raw.clone().max_dim(1);
        let lse = (raw.clone() - max.clone()).exp().sum_dim(1).log() + max;
        let z = self.penalize(raw.clone());
        let (token, sampling_logprob) = if self.temperature == 0.0 {
            (z.argmax(1), lse.zeros_like())
        } else {
            self.draw(z, u)
        };
        let model_logprob = raw.clone().gather(1, token.clone()) - lse;
        if let Some(seen) = self.seen.take() {
            let ones = sampling_logprob.ones_like();
            self.seen = Some(seen.scatter(1, token.clone(), ones, IndexingUpdateOp::Add));
        }
        let read = Transaction::default()
            .register(token)
            .register(Tensor::cat(vec![sampling_logprob, model_logprob], 1))
            .try_execute()
            .map_err(|e| anyhow!("reading the sampled tokens at generation step {step}: {e:?}"))?;
        let [tokens, logprobs]: [TensorData; 2] = read
            .try_into()
            .map_err(|_| anyhow!("the device read returned the wrong number of tensors"))?;
        let tokens: Vec<i64> = tokens.iter::<i64>().collect();
        let logprobs: Vec<f32> = logprobs.iter::<f32>().collect();
        let mut out = Vec::with_capacity(self.batch);
        for (row, &finished) in done.iter().enumerate() {
            let model_logprob = logprobs[2 * row + 1];
            // A finite max and no NaN make every log-prob finite; otherwise say what is wrong.
            if !finished && !model_logprob.is_finite() {
                let row_logits: Vec<f32> = raw
                    .clone()
                    .narrow(0, row, 1)
                    .try_into_data()
                    .map_err(|e| anyhow!("reading row {row} of the logits: {e:?}"))?
                    .iter::<f32>()
                    .collect();
                let e = check_logits(&row_logits)
                    .err()
                    .unwrap_or_else(|| anyhow!("model log-prob {model_logprob}"));
                return Err(bad_row(step, row, e));
            }
            out.push(Choice {
                token: u32::try_from(tokens[row])
                    .map_err(|_| anyhow!("the device chose token {} for row {row}", tokens[row]))?,
                sampling_logprob: logprobs[2 * row],
                model_logprob,
            });
        }
        Ok(out)
    }
}
