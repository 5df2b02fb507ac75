//! Completion log-probs with every distinct prompt run through the model once.
//!
//! A DPO micro-batch holds each prompt twice (its chosen and its rejected completion), a GRPO
//! group `G` times; HH-RLHF's multi-turn prompts are about 70% of a pair's tokens. Run as
//! plain right-padded rows, the backbone (and, when training, its backward pass) goes over
//! every prompt once per completion. [`shared_prompt_logprobs`] instead runs the distinct
//! prompts once, left-padded, keeps their keys and values (the KV cache of
//! [`LlamaModel::forward_hidden_with_cache`]), hands each completion row its prompt's cache
//! (a `select` along the batch, whose backward pass adds the rows' gradients back onto the
//! one prompt pass), and runs the completions on top. The LM head runs only on the
//! positions that predict a completion token: the prompt's last position and the
//! completion's own positions but its last.
//!
//! The result is laid out exactly as [`crate::logprobs::model_sequence_logprobs`] gives it for
//! the right-padded batch of the same sequences ([`TokenBatch::pad`] with
//! [`PaddingSide::Right`]), so objectives, metrics and cached reference log-probs see the
//! same `[R, T−1]` tensors; the values agree to float rounding (attention sums run over the
//! same keys in another blocking).
//!
//! It applies when every sequence is a non-empty prompt followed by a non-empty completion
//! that runs to its end, and some prompt occurs twice; otherwise it falls back to the
//! plain path.

use std::collections::HashMap;

use anyhow::{Result, bail};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::completion_logits::CompletionLogits;
use crate::logprobs::{HeadPositions, SequenceLogprobs, model_sequence_logprobs, row_logprobs};
use crate::models::llama::{KvCache, LlamaModel};
use crate::policy::CausalPolicy;
use crate::tokenize::{PaddingSide, Sequence, TokenBatch};

/// Which rows share which prompt.
#[derive(Debug, PartialEq)]
struct SharingPlan {
    /// The distinct prompts, in order of first appearance.
    prompts: Vec<Vec<u32>>,
    /// Row → index into `prompts`.
    prompt_of: Vec<usize>,
}

impl SharingPlan {
    /// The plan for `sequences`, or `None` when sharing does not apply (see the module docs).
    fn of(sequences: &[Sequence]) -> Option<Self> {
        let mut prompts: Vec<Vec<u32>> = Vec::new();
        let mut index: HashMap<&[u32], usize> = HashMap::new();
        let mut prompt_of = Vec::with_capacity(sequences.len());
        for s in sequences {
            let start = s.completion.iter().position(|&c| c)?;
            if start == 0 || !s.completion[start..].iter().all(|&c| c) {
                return None;
            }
            let prompt = &s.ids[..start];
            let k = *index.entry(prompt).or_insert_with(|| {
                prompts.push(prompt.to_vec());
                prompts.len() - 1
            });
            prompt_of.push(k);
        }
        (prompts.len() < sequences.len()).then_some(Self { prompts, prompt_of })
    }
}

/// The completion log-probs of `sequences` under `model` (see the module docs), laid out as
/// the right-padded batch of `sequences` with `pad_id`; `with_logsumexp_2x` as in
/// [`crate::logprobs`]. Differentiable on autodiff devices. An empty list is an error.
pub fn shared_prompt_logprobs(
    model: &LlamaModel,
    sequences: &[Sequence],
    pad_id: u32,
    with_logsumexp_2x: bool,
) -> Result<SequenceLogprobs> {
    Ok(shared_prompt_forward(model, sequences, pad_id, with_logsumexp_2x, 0)?.0)
}

/// [`shared_prompt_logprobs`], and the LM head's full-vocabulary logits on the completion
/// tokens of the first `logits_rows` sequences ([`CompletionLogits`]; `None` when
/// `logits_rows` is 0). The logits are the ones the log-probs come from (one head pass, one
/// graph). `logits_rows` above the number of sequences is an error.
pub fn shared_prompt_forward(
    model: &LlamaModel,
    sequences: &[Sequence],
    pad_id: u32,
    with_logsumexp_2x: bool,
    logits_rows: usize,
) -> Result<(SequenceLogprobs, Option<CompletionLogits>)> {
    if logits_rows > sequences.len() {
        bail!(
            "logits of {logits_rows} rows asked of a batch of {}",
            sequences.len()
        );
    }
    let device = model.embed_tokens.weight.val().device();
    let Some(plan) = SharingPlan::of(sequences) else {
        return plain_forward(model, sequences, pad_id, with_logsumexp_2x, logits_rows);
    };
    let rows = sequences.len();
    let width = sequences.iter().map(Sequence::len).max().unwrap_or(0) - 1;

    // The distinct prompts, left-padded: their last position is the last column.
    let prompt_seqs: Vec<Sequence> = plan
        .prompts
        .iter()
        .map(|p| Sequence::from_ids(p.clone()))
        .collect();
    let prompts = TokenBatch::pad(&prompt_seqs, pad_id, PaddingSide::Left)?;
    let prompt_len = prompts.seq_len;
    let mut cache = KvCache::default();
    let prompt_hidden = model.forward_hidden_with_cache(
        prompts.ids_tensor(&device),
        prompts.attention_tensor(&device),
        &mut cache,
    )?;
    let of_row = int1(plan.prompt_of.iter().map(|&k| k as i64).collect(), &device);
    let select_rows = |t: Tensor<4>| t.select(0, of_row.clone());
    cache.keys = cache.keys.into_iter().map(select_rows).collect();
    cache.values = cache.values.into_iter().map(select_rows).collect();

    // The completions, right-padded, after their prompts' cached positions.
    let completions: Vec<Sequence> = sequences
        .iter()
        .zip(&plan.prompt_of)
        .map(|(s, &k)| Sequence::from_ids(s.ids[plan.prompts[k].len()..].to_vec()))
        .collect();
    let tails = TokenBatch::pad(&completions, pad_id, PaddingSide::Right)?;
    let tail_len = tails.seq_len;
    let mask = Tensor::cat(
        vec![
            prompts.attention_tensor(&device).select(0, of_row.clone()),
            tails.attention_tensor(&device),
        ],
        1,
    );
    let tail_hidden =
        model.forward_hidden_with_cache(tails.ids_tensor(&device), mask, &mut cache)?;

    // The state that predicts completion token m of row r: the prompt's last position for
    // m = 0, the completion's position m − 1 after it.
    let last = prompt_hidden
        .narrow(1, prompt_len - 1, 1)
        .select(0, of_row.clone());
    let states = match tail_len {
        1 => last,
        _ => Tensor::cat(vec![last, tail_hidden.narrow(1, 0, tail_len - 1)], 1),
    };
    let d = states.dims()[2];
    let (mut picked, mut targets, mut destinations) = (Vec::new(), Vec::new(), Vec::new());
    for (r, (tail, &k)) in completions.iter().zip(&plan.prompt_of).enumerate() {
        let start = plan.prompts[k].len();
        for (m, &id) in tail.ids.iter().enumerate() {
            picked.push((r * tail_len + m) as i64);
            targets.push(id as i64);
            destinations.push((r * width + start + m - 1) as i64);
        }
    }
    let scored_rows = picked.len();
    let logits = model.logits(
        states
            .reshape([rows * tail_len, d])
            .select(0, int1(picked, &device))
            .reshape([1, scored_rows, d]),
    );
    let vocab = logits.dims()[2];
    let out = row_logprobs(
        logits.clone().reshape([scored_rows, vocab]),
        int1(targets, &device),
        with_logsumexp_2x,
    );
    let destinations = int1(destinations, &device);
    let spread = |values: Tensor<1>| {
        Tensor::<1>::zeros([rows * width], &device)
            .select_assign(0, destinations.clone(), values, IndexingUpdateOp::Add)
            .reshape([rows, width])
    };
    let shifted_mask: Vec<f32> = sequences
        .iter()
        .flat_map(|s| {
            (1..=width).map(move |j| s.completion.get(j).map_or(0.0, |&c| c as u8 as f32))
        })
        .collect();
    let mask = Tensor::from_data(TensorData::new(shifted_mask, [rows, width]), &device);
    let completion_logits = (logits_rows > 0).then(|| {
        // Row r's completion tokens follow each other in `picked`, from `offset`.
        let mut offset = 0;
        let scored: Vec<Vec<(usize, usize)>> = completions
            .iter()
            .zip(&plan.prompt_of)
            .take(logits_rows)
            .map(|(tail, &k)| {
                let start = plan.prompts[k].len();
                let entries = (0..tail.ids.len())
                    .map(|m| (offset + m, start + m - 1))
                    .collect();
                offset += tail.ids.len();
                entries
            })
            .collect();
        CompletionLogits::from_scored(logits.clone().reshape([scored_rows, vocab]), &scored, width)
    });
    Ok((
        SequenceLogprobs::of_tokens(
            spread(out.token),
            mask,
            out.logsumexp_2x.map(spread),
            out.log_sum_sq_probs.map(spread),
        ),
        completion_logits,
    ))
}

/// The unshared path: the right-padded batch through the backbone, the head on the scored
/// positions ([`HeadPositions`]), and their logits for the first `logits_rows` rows.
fn plain_forward(
    model: &LlamaModel,
    sequences: &[Sequence],
    pad_id: u32,
    with_logsumexp_2x: bool,
    logits_rows: usize,
) -> Result<(SequenceLogprobs, Option<CompletionLogits>)> {
    let device = model.embed_tokens.weight.val().device();
    let batch = TokenBatch::pad(sequences, pad_id, PaddingSide::Right)?;
    let (ids, completion) = (batch.ids_tensor(&device), batch.completion_tensor(&device));
    if logits_rows == 0 || batch.seq_len < 2 {
        let out = model_sequence_logprobs(
            model,
            ids,
            batch.attention_tensor(&device),
            completion,
            with_logsumexp_2x,
        )?;
        let logits = (logits_rows > 0).then(|| {
            let vocab = model.embed_tokens.weight.val().dims()[0];
            CompletionLogits::from_scored(
                Tensor::zeros([1, vocab], &device),
                &vec![Vec::new(); logits_rows],
                batch.seq_len.saturating_sub(1),
            )
        });
        return Ok((out, logits));
    }
    let hidden = model.hidden_states(ids.clone(), batch.attention_tensor(&device))?;
    let positions = HeadPositions::of(&completion)?;
    let logits = positions.logits(model, hidden);
    // The head ran on the scored positions in row-major order (all of them when every
    // position is scored, the same order).
    let t = batch.seq_len;
    let mut next = 0;
    let mut scored = Vec::with_capacity(logits_rows);
    for (r, s) in sequences.iter().enumerate() {
        let mut entries = Vec::new();
        for j in 0..t - 1 {
            let counted = s.completion.get(j + 1).copied().unwrap_or(false);
            if positions.all_scored() || counted {
                if counted && r < logits_rows {
                    entries.push((next, j));
                }
                next += 1;
            }
        }
        if r < logits_rows {
            scored.push(entries);
        }
    }
    let [_, rows, vocab] = logits.dims();
    let compact =
        CompletionLogits::from_scored(logits.clone().reshape([rows, vocab]), &scored, t - 1);
    let out = positions.logprobs(logits, ids, completion, with_logsumexp_2x);
    Ok((out, Some(compact)))
}

fn int1(values: Vec<i64>, device: &burn::tensor::Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::models::llama::tests::tiny_model;

    fn seq(prompt: &[u32], completion: &[u32]) -> Sequence {
        Sequence::prompt_completion(prompt, completion)
    }

    fn vec2(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Pairs with prompts of different lengths, a group of three on one prompt, a row alone.
    fn sequences() -> Vec<Sequence> {
        let (a, b, c): (&[u32], &[u32], &[u32]) = (&[3, 4, 5, 6], &[7, 8], &[9, 10, 11]);
        vec![
            seq(a, &[12, 13, 14]),
            seq(b, &[15]),
            seq(a, &[16, 17, 18, 19, 20]),
            seq(b, &[21, 22, 23]),
            seq(c, &[24, 25]),
            seq(b, &[26, 27]),
            seq(&[28], &[29, 30]),
        ]
    }

    #[test]
    fn the_plan_groups_rows_by_prompt_and_refuses_what_it_cannot_share() {
        let plan = SharingPlan::of(&sequences()).unwrap();
        assert_eq!(plan.prompts.len(), 4);
        assert_eq!(plan.prompt_of, [0, 1, 0, 1, 2, 1, 3]);
        // Every prompt distinct: nothing to share.
        assert_eq!(SharingPlan::of(&[seq(&[3], &[4]), seq(&[5], &[6])]), None);
        // A completion that does not run to the end, an empty prompt, no completion.
        let mut gap = seq(&[3, 4], &[5, 6]);
        gap.completion[3] = false;
        for odd in [gap, seq(&[], &[5, 6]), seq(&[3, 4, 5], &[])] {
            assert_eq!(SharingPlan::of(&[odd.clone(), odd]), None);
        }
    }

    #[test]
    fn shared_prompts_give_the_plain_paths_log_probs_and_gradients() {
        let device = test_device().autodiff();
        let model = tiny_model(&device);
        let seqs = sequences();
        let plain = || {
            let batch = TokenBatch::pad(&seqs, 0, PaddingSide::Right).unwrap();
            model_sequence_logprobs(
                &model,
                batch.ids_tensor(&device),
                batch.attention_tensor(&device),
                batch.completion_tensor(&device),
                true,
            )
            .unwrap()
        };
        let (shared, plain) = (
            shared_prompt_logprobs(&model, &seqs, 0, true).unwrap(),
            plain(),
        );
        for (what, a, b) in [
            (
                "tokens",
                shared.token_logprobs.clone(),
                plain.token_logprobs.clone(),
            ),
            ("mask", shared.mask.clone(), plain.mask.clone()),
            (
                "lse2",
                shared.logsumexp_2x.clone().unwrap(),
                plain.logsumexp_2x.clone().unwrap(),
            ),
            (
                "log Σp²",
                shared.log_sum_sq_probs.clone().unwrap(),
                plain.log_sum_sq_probs.clone().unwrap(),
            ),
        ] {
            assert_eq!(a.dims(), b.dims(), "{what}");
            let (a, b) = (vec2(a), vec2(b));
            assert!(b.iter().any(|&x| x != 0.0), "{what}");
            for (j, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!((x - y).abs() < 1e-5, "{what} at {j}: {x} vs {y}");
            }
        }
        // The same gradients, through the prompt passes shared by several rows.
        let loss = |out: SequenceLogprobs| {
            out.sum.sum() + out.logsumexp_2x.unwrap().sum().mul_scalar(0.01)
        };
        let grad = |grads: &burn::tensor::Gradients| -> Vec<f32> {
            let q = model.layers[0]
                .self_attn
                .q_proj
                .weight
                .val()
                .grad(grads)
                .unwrap();
            let e = model.embed_tokens.weight.val().grad(grads).unwrap();
            let mut v: Vec<f32> = q.into_data().try_to_vec().unwrap();
            v.extend(e.into_data().try_to_vec::<f32>().unwrap());
            v
        };
        let a = grad(&loss(shared).backward());
        let b = grad(&loss(plain).backward());
        assert!(a.iter().all(|x| x.is_finite()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn unshareable_batches_take_the_plain_path_and_an_empty_one_is_an_error() {
        let device = test_device();
        let model = tiny_model(&device);
        let seqs = [seq(&[3, 4], &[5, 6]), seq(&[7], &[8, 9, 10])];
        let out = shared_prompt_logprobs(&model, &seqs, 0, false).unwrap();
        assert_eq!(out.token_logprobs.dims(), [2, 3]);
        assert!(shared_prompt_logprobs(&model, &[], 0, false).is_err());
    }

    /// The compact completion logits are the full forward's logits at the positions that
    /// predict each completion token, on the shared and on the plain path; gathering the
    /// per-token log-probs onto their grid gives log-softmax of those logits at the tokens.
    #[test]
    fn completion_logits_are_the_full_logits_at_the_completion_positions() {
        let device = test_device();
        let model = tiny_model(&device);
        let shareable = sequences();
        let unshareable = vec![seq(&[3, 4], &[5, 6]), seq(&[7], &[8, 9, 10])];
        for (seqs, rows) in [(shareable, 5), (unshareable, 2)] {
            let batch = TokenBatch::pad(&seqs, 0, PaddingSide::Right).unwrap();
            let full = model.logits(
                model
                    .hidden_states(batch.ids_tensor(&device), batch.attention_tensor(&device))
                    .unwrap(),
            );
            let [_, t, vocab] = full.dims();
            let full: Vec<f32> = full.into_data().try_to_vec().unwrap();
            let (out, logits) = shared_prompt_forward(&model, &seqs, 0, false, rows).unwrap();
            let logits = logits.unwrap();
            let width = seqs[..rows]
                .iter()
                .map(|s| s.completion.iter().filter(|&&c| c).count())
                .max()
                .unwrap();
            assert_eq!(logits.logits().dims(), [rows, width, vocab]);
            let compact: Vec<f32> = logits.logits().into_data().try_to_vec().unwrap();
            let positions: Vec<i64> = logits
                .positions
                .clone()
                .into_data()
                .convert::<i64>()
                .try_to_vec()
                .unwrap();
            let mask = vec2(logits.mask.clone());
            let gathered = vec2(logits.gather(out.token_logprobs.clone()));
            // A per-row statistic of the scored rows (the sum of their logits), spread back
            // onto the [N, T−1] grid.
            let scored = logits.scored.dims()[0];
            let sums = logits.scored.clone().sum_dim(1).reshape([scored]);
            let spread = vec2(logits.spread(sums));
            assert_eq!(spread.len(), rows * (t - 1));
            let completion_cells: usize = seqs[..rows]
                .iter()
                .map(|s| s.completion.iter().filter(|&&c| c).count())
                .sum();
            assert_eq!(scored, completion_cells);
            assert_eq!(
                spread.iter().filter(|&&v| v != 0.0).count(),
                completion_cells
            );
            for (r, s) in seqs[..rows].iter().enumerate() {
                let start = s.completion.iter().position(|&c| c).unwrap();
                for m in 0..width {
                    let k = r * width + m;
                    let scored = start + m < s.ids.len();
                    assert_eq!(mask[k], if scored { 1.0 } else { 0.0 }, "row {r} token {m}");
                    if !scored {
                        assert_eq!(gathered[k], 0.0);
                        continue;
                    }
                    let column = start + m - 1;
                    assert_eq!(positions[k], column as i64);
                    let expected = &full[(r * t + column) * vocab..][..vocab];
                    let sum: f32 = expected.iter().sum();
                    let at = spread[r * (t - 1) + column];
                    assert!((at - sum).abs() < 1e-3 * (1.0 + sum.abs()), "{at} vs {sum}");
                    let got = &compact[k * vocab..][..vocab];
                    for (x, y) in got.iter().zip(expected) {
                        assert!((x - y).abs() < 1e-4, "row {r} token {m}: {x} vs {y}");
                    }
                    let max = expected.iter().cloned().fold(f32::MIN, f32::max);
                    let lse = max + expected.iter().map(|z| (z - max).exp()).sum::<f32>().ln();
                    let logp = expected[s.ids[start + m] as usize] - lse;
                    assert!(
                        (gathered[k] - logp).abs() < 1e-4,
                        "{} vs {logp}",
                        gathered[k]
                    );
                }
            }
        }
        let seqs = sequences();
        assert!(shared_prompt_forward(&model, &seqs, 0, false, seqs.len() + 1).is_err());
        let (_, none) = shared_prompt_forward(&model, &seqs, 0, false, 0).unwrap();
        assert!(none.is_none());
    }
}
