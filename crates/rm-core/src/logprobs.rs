//! Sequence log-probabilities: what DPO, PPO/GRPO, implicit rewards and RewardBench's DPO mode
//! consume.
//!
//! For a padded batch of token ids `y` `[B, T]`, logits `z` `[B, T, V]` from a causal model and
//! a completion mask `m` `[B, T]`, the log-prob of token `t` is `log softmax(z[t−1])[y[t]]`
//! (the first token has no prediction). Only tokens with `m[t] = 1` count:
//! `sum = Σ_t m[t]·log p(y[t] | y[<t])`, `count = Σ_t m[t]`, `mean = sum / count`.
//! Optionally the per-position `logsumexp(2·z[t−1])` under the mask (the full-vocabulary
//! statistic WPO's weights need, log Σ_v p_v² = logsumexp(2z) − 2·logsumexp(z)).
//!
//! Everything is batched tensor work and differentiable: on an autodiff device gradients flow
//! into the logits and, through [`model_sequence_logprobs`], the model. On a model,
//! [`head_logprobs`] runs the LM head only on the positions that predict a completion token
//! (it reads the completion mask on the host to find them).
//! Sequences shorter than two tokens predict nothing: their result is
//! [`SequenceLogprobs::empty`], not an error.

use anyhow::{Result, anyhow, bail};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::policy::CausalPolicy;

/// Per-token and per-sequence log-probs of a batch. Position `j` of the `[B, T−1]` tensors is
/// the prediction of token `j + 1`.
#[derive(Clone, Debug)]
pub struct SequenceLogprobs {
    /// `[B, T−1]`: log p of token `t+1` given the tokens before it, times the mask (0 where
    /// masked).
    pub token_logprobs: Tensor<2>,
    /// `[B, T−1]`: the mask aligned with `token_logprobs` (as floats).
    pub mask: Tensor<2>,
    /// `[B]`: masked sums.
    pub sum: Tensor<1>,
    /// `[B]`: number of counted tokens.
    pub count: Tensor<1>,
    /// `[B]`: `sum / max(count, 1)`.
    pub mean: Tensor<1>,
    /// `[B, T−1]`: `logsumexp(2·logits)` of the predicting position, times the mask, when
    /// requested.
    pub logsumexp_2x: Option<Tensor<2>>,
    /// `[B, T−1]`: `log Σ_v p_v² = logsumexp(2·logits) − 2·logsumexp(logits)` of the predicting
    /// position (times the mask, detached), requested with `logsumexp_2x`: the input of WPO's
    /// weights (`rm_losses::preference::DpoBatch::log_sum_sq_probs`).
    pub log_sum_sq_probs: Option<Tensor<2>>,
}

/// Gathers the log-probs of `input_ids` `[B, T]` under `logits` `[B, T, V]`, counting the
/// tokens where `completion_mask` `[B, T]` is 1; see the module docs. Works on autodiff
/// devices (gradients flow into `logits`). `T < 2` (nothing is predicted) gives the
/// [empty result](SequenceLogprobs::empty); shapes that disagree are an error.
pub fn sequence_logprobs(
    logits: Tensor<3>,
    input_ids: Tensor<2, Int>,
    completion_mask: Tensor<2, Int>,
    with_logsumexp_2x: bool,
) -> Result<SequenceLogprobs> {
    let [b, t, _] = logits.dims();
    check_shape("input ids", &input_ids, [b, t], "the logits' [B, T]")?;
    check_shape(
        "completion mask",
        &completion_mask,
        [b, t],
        "the logits' [B, T]",
    )?;
    if t < 2 {
        return Ok(SequenceLogprobs::empty(
            b,
            with_logsumexp_2x,
            &logits.device(),
        ));
    }
    Ok(shifted_logprobs(
        logits.narrow(1, 0, t - 1),
        input_ids,
        completion_mask,
        with_logsumexp_2x,
    ))
}

/// [`sequence_logprobs`] of `model` (any [`CausalPolicy`]: the module being trained, LoRA or
/// not) on a padded batch: `input_ids` and `attention_mask` `[B, T]` (1 real, 0 pad; left or
/// right padding), `completion_mask` `[B, T]` (1 on the tokens to score, a subset of the real
/// ones). One pass through the backbone, then [`head_logprobs`]: the LM head runs on the
/// positions that predict a completion token only. Gradients flow into the model on autodiff
/// devices. `T < 2` gives the [empty result](SequenceLogprobs::empty) without running the
/// model; shapes that disagree are an error.
pub fn model_sequence_logprobs<P: CausalPolicy + ?Sized>(
    model: &P,
    input_ids: Tensor<2, Int>,
    attention_mask: Tensor<2, Int>,
    completion_mask: Tensor<2, Int>,
    with_logsumexp_2x: bool,
) -> Result<SequenceLogprobs> {
    let [b, t] = input_ids.dims();
    check_shape(
        "attention mask",
        &attention_mask,
        [b, t],
        "the input ids' [B, T]",
    )?;
    check_shape(
        "completion mask",
        &completion_mask,
        [b, t],
        "the input ids' [B, T]",
    )?;
    if t < 2 {
        return Ok(SequenceLogprobs::empty(
            b,
            with_logsumexp_2x,
            &input_ids.device(),
        ));
    }
    let hidden = model.hidden_states(input_ids.clone(), attention_mask)?;
    head_logprobs(model, hidden, input_ids, completion_mask, with_logsumexp_2x)
}

/// The completion log-probs of `model`'s LM head on its hidden states `hidden` `[B, T, D]`
/// (`input_ids` and `completion_mask` `[B, T]`), as [`sequence_logprobs`] gives them on the
/// full logits — but the head (a `D × V` GEMM and a log-softmax over the vocabulary, and both
/// again in the backward pass) runs only on the [`HeadPositions`] that predict a completion
/// token. Prompt and padding positions, whose log-probs the mask zeroes anyway, cost nothing;
/// in a DPO batch of chat pairs they are most of the `B·(T−1)` positions. Every output keeps
/// its `[B, T−1]` shape and values. `T < 2` gives the [empty result](SequenceLogprobs::empty).
pub fn head_logprobs<P: CausalPolicy + ?Sized>(
    model: &P,
    hidden: Tensor<3>,
    input_ids: Tensor<2, Int>,
    completion_mask: Tensor<2, Int>,
    with_logsumexp_2x: bool,
) -> Result<SequenceLogprobs> {
    let [b, t, _] = hidden.dims();
    check_shape("input ids", &input_ids, [b, t], "the hidden states' [B, T]")?;
    check_shape(
        "completion mask",
        &completion_mask,
        [b, t],
        "the hidden states' [B, T]",
    )?;
    if t < 2 {
        return Ok(SequenceLogprobs::empty(
            b,
            with_logsumexp_2x,
            &hidden.device(),
        ));
    }
    let positions = HeadPositions::of(&completion_mask)?;
    let logits = positions.logits(model, hidden);
    Ok(positions.logprobs(logits, input_ids, completion_mask, with_logsumexp_2x))
}

/// Where a batch's LM head must run: the positions `j` of the `[B, T]` batch (`T ≥ 2`) whose
/// next token is scored, `completion_mask[r, j + 1] = 1`. [`Self::logits`] runs the head there
/// only, [`Self::logprobs`] and [`Self::spread`] put per-position results back on the
/// `[B, T−1]` grid of [`SequenceLogprobs`] (0 elsewhere). When every position is scored (or
/// none: the full path then keeps the zero result attached to the model's graph) nothing is
/// gathered and the head runs on all `B·(T−1)` predicting positions.
pub struct HeadPositions {
    /// The scored positions as row-major indices `r·T + j` into the `[B·T]` positions; `None`:
    /// all `[B, T−1]` predicting positions.
    index: Option<Tensor<1, Int>>,
    /// `B`.
    batch: usize,
    /// `T`.
    len: usize,
}

impl HeadPositions {
    /// The positions of `completion_mask` `[B, T]` (`T ≥ 2`); its values are read on the host.
    pub fn of(completion_mask: &Tensor<2, Int>) -> Result<Self> {
        let [b, t] = completion_mask.dims();
        if t < 2 {
            bail!("completion mask is [{b}, {t}]: no position predicts a token (T < 2)");
        }
        let flags: Vec<i64> = completion_mask
            .clone()
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| anyhow!("reading the completion mask: {e:?}"))?;
        let scored: Vec<i64> = (0..b)
            .flat_map(|r| (0..t - 1).map(move |j| (r, j)))
            .filter(|&(r, j)| flags[r * t + j + 1] != 0)
            .map(|(r, j)| (r * t + j) as i64)
            .collect();
        let n = scored.len();
        let index = (n > 0 && n < b * (t - 1))
            .then(|| Tensor::from_data(TensorData::new(scored, [n]), &completion_mask.device()));
        Ok(Self {
            index,
            batch: b,
            len: t,
        })
    }

    /// Whether the head runs on every predicting position (`[B, T−1, V]` logits) rather than on
    /// the scored ones only.
    pub fn all_scored(&self) -> bool {
        self.index.is_none()
    }

    /// The LM head's logits at these positions of `hidden` `[B, T, D]`: `[B, T−1, V]` when
    /// every position is scored, `[1, N, V]` (the `N` scored positions in row-major order)
    /// otherwise.
    pub fn logits<P: CausalPolicy + ?Sized>(&self, model: &P, hidden: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = hidden.dims();
        match &self.index {
            None => model.logits(hidden.narrow(1, 0, t - 1)),
            Some(index) => {
                let rows = index.dims()[0];
                let picked = hidden.reshape([b * t, d]).select(0, index.clone());
                model.logits(picked.reshape([1, rows, d]))
            }
        }
    }

    /// The [`SequenceLogprobs`] of `logits` from [`Self::logits`], with the batch's
    /// `input_ids` and `completion_mask` `[B, T]`.
    pub fn logprobs(
        &self,
        logits: Tensor<3>,
        input_ids: Tensor<2, Int>,
        completion_mask: Tensor<2, Int>,
        with_logsumexp_2x: bool,
    ) -> SequenceLogprobs {
        let Some(index) = &self.index else {
            return shifted_logprobs(logits, input_ids, completion_mask, with_logsumexp_2x);
        };
        let [_, rows, vocab] = logits.dims();
        let [b, t] = input_ids.dims();
        let targets = input_ids
            .reshape([b * t])
            .slice(1..)
            .select(0, index.clone());
        let out = row_logprobs(logits.reshape([rows, vocab]), targets, with_logsumexp_2x);
        let spread = |v: Tensor<1>| self.spread(v.reshape([1, rows]));
        SequenceLogprobs::of_tokens(
            spread(out.token),
            completion_mask.narrow(1, 1, t - 1).float(),
            out.logsumexp_2x.map(spread),
            out.log_sum_sq_probs.map(spread),
        )
    }

    /// A per-position value computed on [`Self::logits`]' rows (`[B, T−1]` or `[1, N]`) on the
    /// `[B, T−1]` grid, 0 at the positions that were not scored. The scatter's backward gathers
    /// the gradient of the scored positions.
    pub fn spread(&self, values: Tensor<2>) -> Tensor<2> {
        let Some(index) = &self.index else {
            return values;
        };
        let (b, t) = (self.batch, self.len);
        let rows = index.dims()[0];
        Tensor::<1>::zeros([b * t], &values.device())
            .select_assign(
                0,
                index.clone(),
                values.reshape([rows]),
                IndexingUpdateOp::Add,
            )
            .reshape([b, t])
            .narrow(1, 0, t - 1)
    }
}

/// [`sequence_logprobs`] from the logits of the predicting positions only: `predicting`
/// `[B, T−1, V]` (positions `0 … T−2`, e.g. the LM head run on `hidden[:, :T−1]` when the same
/// hidden states also feed a value head), `input_ids` and `completion_mask` `[B, T]` (T ≥ 2).
pub fn predicted_logprobs(
    predicting: Tensor<3>,
    input_ids: Tensor<2, Int>,
    completion_mask: Tensor<2, Int>,
    with_logsumexp_2x: bool,
) -> Result<SequenceLogprobs> {
    let [b, n, _] = predicting.dims();
    check_shape(
        "input ids",
        &input_ids,
        [b, n + 1],
        "one more than the predicting positions",
    )?;
    check_shape(
        "completion mask",
        &completion_mask,
        [b, n + 1],
        "one more than the predicting positions",
    )?;
    Ok(shifted_logprobs(
        predicting,
        input_ids,
        completion_mask,
        with_logsumexp_2x,
    ))
}

fn check_shape(what: &str, t: &Tensor<2, Int>, expected: [usize; 2], whose: &str) -> Result<()> {
    if t.dims() != expected {
        bail!("{what} is {:?}, expected {expected:?} ({whose})", t.dims());
    }
    Ok(())
}

impl SequenceLogprobs {
    /// The log-probs of `batch` sequences shorter than two tokens: nothing is predicted, so
    /// the per-token tensors are `[B, 0]` and `sum = count = mean = 0` (constants: nothing to
    /// differentiate). A PPO rollout whose prompt is one token and whose response is empty
    /// lands here.
    pub fn empty(batch: usize, with_logsumexp_2x: bool, device: &Device) -> Self {
        Self {
            token_logprobs: Tensor::zeros([batch, 0], device),
            mask: Tensor::zeros([batch, 0], device),
            sum: Tensor::zeros([batch], device),
            count: Tensor::zeros([batch], device),
            mean: Tensor::zeros([batch], device),
            logsumexp_2x: with_logsumexp_2x.then(|| Tensor::zeros([batch, 0], device)),
            log_sum_sq_probs: with_logsumexp_2x.then(|| Tensor::zeros([batch, 0], device)),
        }
    }
}

/// `predicting` `[B, T−1, V]`: the logits of positions `0 … T−2`.
fn shifted_logprobs(
    predicting: Tensor<3>,
    input_ids: Tensor<2, Int>,
    completion_mask: Tensor<2, Int>,
    with_logsumexp_2x: bool,
) -> SequenceLogprobs {
    let [b, n, v] = predicting.dims();
    let targets = input_ids.narrow(1, 1, n).reshape([b * n]);
    let mask = completion_mask.narrow(1, 1, n).float();
    let out = row_logprobs(predicting.reshape([b * n, v]), targets, with_logsumexp_2x);
    let token = out.token.reshape([b, n]) * mask.clone();
    let masked = |l: Tensor<1>| l.reshape([b, n]) * mask.clone();
    SequenceLogprobs::of_tokens(
        token,
        mask.clone(),
        out.logsumexp_2x.map(masked),
        out.log_sum_sq_probs.map(masked),
    )
}

/// Per-row results of [`row_logprobs`].
pub(crate) struct RowLogprobs {
    /// `[N]`: `log softmax(z)[y]`.
    pub token: Tensor<1>,
    /// `[N]`: `logsumexp(2·z)`, when asked for.
    pub logsumexp_2x: Option<Tensor<1>>,
    /// `[N]`: `logsumexp(2·z) − 2·logsumexp(z)`, detached, when asked for.
    pub log_sum_sq_probs: Option<Tensor<1>>,
}

/// The log-prob of `targets` `[N]` under each row of `logits` `[N, V]`, and optionally the
/// statistics WPO needs.
pub(crate) fn row_logprobs(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    with_logsumexp_2x: bool,
) -> RowLogprobs {
    let [rows, _] = logits.dims();
    // log p(y) = z_y − logsumexp(z), with the max taken out for stability (its gradient
    // cancels, so it is detached).
    let max = logits.clone().max_dim(1).detach();
    let shifted = logits.clone() - max.clone();
    let lse = shifted.clone().exp().sum_dim(1).log() + max.clone();
    let logsumexp_2x = with_logsumexp_2x.then(|| {
        (shifted.mul_scalar(2.0).exp().sum_dim(1).log() + max.mul_scalar(2.0)).reshape([rows])
    });
    let lse = lse.reshape([rows]);
    let log_sum_sq_probs = logsumexp_2x
        .as_ref()
        .map(|l2| (l2.clone() - lse.clone().mul_scalar(2.0)).detach());
    let target = logits.gather(1, targets.reshape([rows, 1])).reshape([rows]);
    RowLogprobs {
        token: target - lse,
        logsumexp_2x,
        log_sum_sq_probs,
    }
}

impl SequenceLogprobs {
    /// Sums, counts and means of masked per-token log-probs `token` `[B, T−1]` (0 where
    /// `mask` is 0).
    pub(crate) fn of_tokens(
        token: Tensor<2>,
        mask: Tensor<2>,
        logsumexp_2x: Option<Tensor<2>>,
        log_sum_sq_probs: Option<Tensor<2>>,
    ) -> Self {
        let [b, _] = token.dims();
        let sum = token.clone().sum_dim(1).reshape([b]);
        let count = mask.clone().sum_dim(1).reshape([b]);
        let mean = sum.clone() / count.clone().clamp_min(1.0);
        Self {
            token_logprobs: token,
            mask,
            sum,
            count,
            mean,
            logsumexp_2x,
            log_sum_sq_probs,
        }
    }
}

/// The per-token log-probs of one text under a causal LM, as `plumb logprobs` prints them and
/// transformers computes them: `token_logprobs[i] = log p(ids[i+1] | ids[..=i])` (so `n − 1`
/// values for `n` ids; none for a one-token text), their sum, and the argmax next token after
/// the last id.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TextLogprobs {
    /// The text as given.
    pub text: String,
    /// Its token ids (the model's tokenizer, no special tokens added).
    pub ids: Vec<u32>,
    /// `log p(ids[i+1] | ids[..=i])` for `i < n − 1`.
    pub token_logprobs: Vec<f32>,
    /// `Σ token_logprobs` in f64 (0 for a one-token text).
    pub sum_logprob: f64,
    /// `argmax_v p(v | ids)`, the greedy next token.
    pub argmax_next_token: u32,
}

/// [`TextLogprobs`] of every text under `lm`, `batch_size` texts per forward pass (right
/// padding; padding never changes a row's values). One pass through the backbone per batch;
/// per batch only the chosen log-probs and the argmax ids come to the host, never the
/// `[B, T, V]` logits. A text with no tokens is an error naming it.
pub fn text_logprobs(
    lm: &crate::models::llama::CausalLm,
    texts: &[String],
    batch_size: usize,
) -> Result<Vec<TextLogprobs>> {
    use crate::tokenize::{PaddingSide, Sequence, TokenBatch};
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let mut out = Vec::with_capacity(texts.len());
    for (chunk_index, chunk) in texts.chunks(batch_size).enumerate() {
        let seqs = chunk
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let ids = lm.tokenizer.encode(text, false)?;
                if ids.is_empty() {
                    bail!(
                        "text {} ({text:?}) has no tokens: nothing to score",
                        chunk_index * batch_size + i + 1
                    );
                }
                Ok(Sequence::from_ids(ids))
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = TokenBatch::pad(&seqs, lm.tokenizer.pad_id(), PaddingSide::Right)?;
        let device = &lm.device;
        let ids = batch.ids_tensor(device);
        let mask = batch.attention_tensor(device);
        let (b, t) = (batch.batch_size, batch.seq_len);
        let hidden = lm.hidden_states(ids.clone(), mask.clone())?;
        let last: Vec<i64> = batch.lengths.iter().map(|&n| n as i64 - 1).collect();
        let last = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(last, [b, 1]), device);
        let next = lm
            .logits(crate::models::heads::gather_positions(
                hidden.clone(),
                last,
            )?)
            .argmax(2);
        let next: Vec<i64> = next
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("reading the argmax ids: {e:?}"))?;
        let token_lp: Vec<f32> = if t >= 2 {
            let predicting = lm.logits(hidden.narrow(1, 0, t - 1));
            predicted_logprobs(predicting, ids, mask, false)?
                .token_logprobs
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading the log-probs: {e:?}"))?
        } else {
            Vec::new()
        };
        for (i, text) in chunk.iter().enumerate() {
            let n = batch.lengths[i];
            let row = token_lp[i * (t.max(1) - 1)..][..n - 1].to_vec();
            out.push(TextLogprobs {
                text: text.clone(),
                ids: batch.row_ids(i).to_vec(),
                // `+ 0.0`: an empty f64 sum is −0.0, printed as such.
                sum_logprob: row.iter().map(|&x| x as f64).sum::<f64>() + 0.0,
                token_logprobs: row,
                argmax_next_token: next[i] as u32,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::models::llama::tests::tiny_model;
    use burn::tensor::TensorData;

    fn vec1(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn vec2(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn closed_form_example() {
        let device = test_device();
        // V = 2, logits [0, ln 3] → p = [1/4, 3/4] at every position.
        let l = (3.0f32).ln();
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![0.0, l, 0.0, l, 0.0, l], [1, 3, 2]),
            &device,
        );
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1, 0], [1, 3]), &device);
        let mask = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1, 1], [1, 3]), &device);
        let out = sequence_logprobs(logits, ids, mask, true).unwrap();
        let expect = (0.75f32).ln() + (0.25f32).ln();
        assert!((vec1(out.sum)[0] - expect).abs() < 1e-6);
        assert_eq!(vec1(out.count), [2.0]);
        assert!((vec1(out.mean)[0] - expect / 2.0).abs() < 1e-6);
        let tokens = vec2(out.token_logprobs);
        assert!((tokens[0] - (0.75f32).ln()).abs() < 1e-6);
        assert!((tokens[1] - (0.25f32).ln()).abs() < 1e-6);
        // logsumexp(2z) = ln(1 + 9) at both predicting positions.
        for lse in vec2(out.logsumexp_2x.unwrap()) {
            assert!((lse - (10.0f32).ln()).abs() < 1e-5);
        }
        // log Σ p² = ln(1/16 + 9/16).
        for l in vec2(out.log_sum_sq_probs.unwrap()) {
            assert!((l - (10.0f32 / 16.0).ln()).abs() < 1e-5, "{l}");
        }
        // Large logits stay finite.
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![1000.0f32, 1000.0 + l, 0.0, 0.0], [1, 2, 2]),
            &device,
        );
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1], [1, 2]), &device);
        let out = sequence_logprobs(logits, ids, Tensor::ones([1, 2], &device), true).unwrap();
        let sum = vec1(out.sum)[0];
        assert!((sum - (0.75f32).ln()).abs() < 1e-4, "{sum}");
        let lse2 = vec2(out.logsumexp_2x.unwrap())[0];
        assert!((lse2 - (2000.0 + (10.0f32).ln())).abs() < 1e-3, "{lse2}");
        let lssp = vec2(out.log_sum_sq_probs.unwrap())[0];
        assert!((lssp - (10.0f32 / 16.0).ln()).abs() < 1e-4, "{lssp}");
    }

    #[test]
    fn batched_padded_equals_one_sequence_at_a_time() {
        let device = test_device();
        let model = tiny_model(&device);
        let seqs: [&[i64]; 3] = [&[3, 4, 5, 6, 7], &[8, 9, 10], &[11, 12, 13, 14]];
        let completion_from = [2, 1, 3];
        let t = 5;
        for left in [false, true] {
            // Naive: each sequence alone, host-side log-softmax per position.
            let mut naive = Vec::new();
            for (s, &from) in seqs.iter().zip(&completion_from) {
                let n = s.len();
                let ids = Tensor::<2, Int>::from_data(TensorData::new(s.to_vec(), [1, n]), &device);
                let logits = model
                    .forward(ids, Tensor::ones([1, n], &device))
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                let v = logits.len() / n;
                let mut tokens = Vec::new();
                let mut lse2 = Vec::new();
                for i in 1..n {
                    let row = &logits[(i - 1) * v..i * v];
                    let lp = crate::sampling::log_softmax(row)[s[i] as usize];
                    tokens.push(if i >= from { lp } else { 0.0 });
                    let doubled: Vec<f32> = row.iter().map(|x| 2.0 * x).collect();
                    let m = doubled.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                    let s2: f64 = doubled.iter().map(|&x| (x as f64 - m).exp()).sum();
                    lse2.push(if i >= from { (m + s2.ln()) as f32 } else { 0.0 });
                }
                naive.push((tokens, lse2, (n - from) as f32));
            }
            // Batched, padded on the right or on the left.
            let (mut ids, mut attn, mut comp) = (Vec::new(), Vec::new(), Vec::new());
            for (s, &from) in seqs.iter().zip(&completion_from) {
                let pad = t - s.len();
                let offset = if left { pad } else { 0 };
                for i in 0..t {
                    let j = i.wrapping_sub(offset);
                    let real = i >= offset && j < s.len();
                    ids.push(if real { s[j] } else { 0 });
                    attn.push(real as i64);
                    comp.push((real && j >= from) as i64);
                }
            }
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [3, t]), &device);
            let attn = Tensor::<2, Int>::from_data(TensorData::new(attn, [3, t]), &device);
            let comp = Tensor::<2, Int>::from_data(TensorData::new(comp, [3, t]), &device);
            let logits = model.forward(ids.clone(), attn.clone());
            let out = sequence_logprobs(logits, ids.clone(), comp.clone(), true).unwrap();
            let via_model = model_sequence_logprobs(&model, ids, attn, comp, true).unwrap();
            let tokens = vec2(out.token_logprobs);
            let lse2 = vec2(out.logsumexp_2x.unwrap());
            let (sums, counts, means) = (vec1(out.sum), vec1(out.count), vec1(out.mean));
            for (r, (s, (naive_tokens, naive_lse2, naive_count))) in
                seqs.iter().zip(&naive).enumerate()
            {
                let offset = if left { t - s.len() } else { 0 };
                for (k, (a, b)) in naive_tokens.iter().zip(naive_lse2).enumerate() {
                    let j = r * (t - 1) + offset + k;
                    assert!(
                        (tokens[j] - a).abs() < 1e-5,
                        "row {r} token {k}, left {left}"
                    );
                    assert!((lse2[j] - b).abs() < 1e-5, "row {r} lse2 {k}, left {left}");
                }
                let naive_sum: f32 = naive_tokens.iter().sum();
                assert!((sums[r] - naive_sum).abs() < 1e-5, "{sums:?} left {left}");
                assert_eq!(counts[r], *naive_count);
                assert!((means[r] - naive_sum / naive_count).abs() < 1e-5);
            }
            // The model path runs the head on the completion-predicting positions only; every
            // output equals the full-logits path's, element for element.
            for (a, b) in vec1(via_model.sum).iter().zip(&sums) {
                assert!((a - b).abs() < 1e-5, "model path vs logits path");
            }
            assert_eq!(vec1(via_model.count), counts);
            assert_eq!(vec2(via_model.mask), vec2(out.mask.clone()));
            for (what, a, b) in [
                ("tokens", vec2(via_model.token_logprobs), tokens.clone()),
                ("lse2", vec2(via_model.logsumexp_2x.unwrap()), lse2.clone()),
                (
                    "log Σp²",
                    vec2(via_model.log_sum_sq_probs.unwrap()),
                    vec2(out.log_sum_sq_probs.unwrap()),
                ),
            ] {
                assert_eq!(a.len(), b.len(), "{what}");
                for (j, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (x - y).abs() < 1e-5,
                        "{what} at {j}: {x} vs {y}, left {left}"
                    );
                }
            }
        }
    }

    #[test]
    fn gradients_flow_into_the_logits() {
        let device = test_device().autodiff();
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 0.0, 0.0], [1, 2, 2]),
            &device,
        )
        .require_grad();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1], [1, 2]), &device);
        let mask = Tensor::<2, Int>::ones([1, 2], &device);
        let out = sequence_logprobs(logits.clone(), ids, mask, false).unwrap();
        let grads = out.sum.sum().backward();
        let g = logits
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // d log softmax(z)[1] / dz at z = 0: [-1/2, 1/2] at position 0; nothing at position 1.
        assert_eq!(g, [-0.5, 0.5, 0.0, 0.0]);
    }

    #[test]
    fn gradients_flow_through_the_model() {
        let device = test_device().autodiff();
        let model = tiny_model(&device);
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, 3, 4, 5, 6, 7, 8, 9], [2, 4]),
            &device,
        );
        let attn = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, 1, 1, 1, 1, 1, 1, 1], [2, 4]),
            &device,
        );
        let comp = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, 0, 1, 1, 0, 1, 1, 1], [2, 4]),
            &device,
        );
        let out = model_sequence_logprobs(&model, ids, attn, comp, true).unwrap();
        let loss = out.mean.sum() + out.logsumexp_2x.unwrap().sum().mul_scalar(0.01);
        let grads = loss.backward();
        for (name, g) in [
            (
                "q_proj",
                model.layers[0].self_attn.q_proj.weight.val().grad(&grads),
            ),
            ("embed", model.embed_tokens.weight.val().grad(&grads)),
            (
                "norm",
                model.norm.weight.val().grad(&grads).map(|g| g.unsqueeze()),
            ),
        ] {
            let g = g.unwrap_or_else(|| panic!("no gradient for {name}"));
            let g: Vec<f32> = g.into_data().try_to_vec().unwrap();
            assert!(g.iter().all(|x| x.is_finite()), "{name}");
            assert!(g.iter().any(|&x| x != 0.0), "{name} gradient is zero");
        }
    }

    #[test]
    fn the_completion_only_head_has_the_full_heads_gradients() {
        let device = test_device().autodiff();
        let model = tiny_model(&device);
        let int = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [2, 5]), &device);
        let ids = int(vec![3, 4, 5, 6, 7, 0, 8, 9, 10, 11]);
        let attn = int(vec![1, 1, 1, 1, 1, 0, 1, 1, 1, 1]);
        let comp = int(vec![0, 0, 0, 1, 1, 0, 0, 1, 1, 0]);
        let weight = |grads: &burn::tensor::Gradients| -> Vec<f32> {
            let g = model.layers[0].self_attn.q_proj.weight.val().grad(grads);
            g.unwrap().into_data().try_to_vec().unwrap()
        };
        // The loss mixes every output WPO and DPO read.
        let loss = |out: SequenceLogprobs| {
            out.sum.sum() + out.logsumexp_2x.unwrap().sum().mul_scalar(0.01)
        };
        let head_only =
            model_sequence_logprobs(&model, ids.clone(), attn.clone(), comp.clone(), true).unwrap();
        let a = weight(&loss(head_only).backward());
        let full = sequence_logprobs(model.forward(ids.clone(), attn), ids, comp, true).unwrap();
        let b = weight(&loss(full).backward());
        assert!(a.iter().any(|&x| x != 0.0));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn short_sequences_give_the_empty_result_and_bad_shapes_are_errors() {
        let device = test_device();
        let model = tiny_model(&device);
        for t in [0, 1] {
            let ids =
                Tensor::<2, Int>::from_data(TensorData::new(vec![5i64; 3 * t], [3, t]), &device);
            let ones = ids.ones_like();
            for out in [
                model_sequence_logprobs(&model, ids.clone(), ones.clone(), ones.clone(), true)
                    .unwrap(),
                sequence_logprobs(
                    Tensor::zeros([3, t, 32], &device),
                    ids.clone(),
                    ones.clone(),
                    true,
                )
                .unwrap(),
            ] {
                assert_eq!(out.token_logprobs.dims(), [3, 0]);
                assert_eq!(out.logsumexp_2x.unwrap().dims(), [3, 0]);
                assert_eq!(vec2(out.token_logprobs), Vec::<f32>::new());
                for v in [out.sum, out.count, out.mean] {
                    assert_eq!(vec1(v), [0.0; 3], "T = {t}");
                }
            }
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 4, 5], [1, 3]), &device);
        let err = model_sequence_logprobs(
            &model,
            ids.clone(),
            Tensor::ones([1, 2], &device),
            ids.ones_like(),
            false,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "attention mask is [1, 2], expected [1, 3] (the input ids' [B, T])"
        );
        let err = sequence_logprobs(
            Tensor::zeros([2, 3, 32], &device),
            ids.clone(),
            ids.ones_like(),
            false,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "input ids is [1, 3], expected [2, 3] (the logits' [B, T])"
        );
    }
}
