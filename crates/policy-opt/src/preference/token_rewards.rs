//! T-REG's token-level rewards by contrastive prompting, computed once when the data is loaded.
//!
//! T-REG (Zhou et al. 2024, "T-REG: Preference Optimization with Token-Level Reward
//! Regularization", Sec. 3) has the model reward its own tokens: the same completion is scored
//! under a prompt asking for a better response and under one asking for a worse response, and
//! a token's reward is how much more likely the first makes it,
//!
//! `w_t = clip( log π_ref(y_t | p⁺, x, y_<t) − log π_ref(y_t | p⁻, x, y_<t), −c, c )`.
//!
//! Judgement calls: the rewards come from the frozen reference (the policy before training),
//! once, rather than from the policy at every iteration — offline there is one iteration, and
//! the reference is that iteration's model; and the contrastive instruction is a system turn
//! (ChatML; a plain-text line for other templates) put *before the pair's already-cut prompt
//! tokens*, so a long prompt that lost its beginning to `max_len` still carries it and every
//! completion token keeps its exact context. The conditioned rows are therefore longer than
//! `max_len` by the instruction; they only run through the reference, without a graph.

use anyhow::{Result, bail};
use rm_core::chat::ChatTemplate;
use rm_core::models::llama::LlamaModel;
use rm_core::models::policy_folder::Policy;
use rm_core::tokenize::Sequence;
use rm_core::types::{Conversation, Role, Turn};

use super::data::EncodedPair;
use super::objective::TregConfig;
use super::reference_cache::{PairReference, compute};

/// The token ids of `instruction` as it precedes a prompt: a ChatML system turn, or the text
/// and a blank line for the other templates; with the leading special tokens (BOS) the
/// tokenizer adds.
pub fn instruction_ids(policy: &Policy, instruction: &str) -> Result<Vec<u32>> {
    let text = match policy.spec.template {
        ChatTemplate::ChatMl => policy.spec.template.render(
            &Conversation::new(vec![Turn::new(Role::System, instruction)]),
            false,
        )?,
        ChatTemplate::HhTranscript | ChatTemplate::Plain => format!("{instruction}\n\n"),
    };
    policy.lm.tokenizer.encode(&text, true)
}

/// `sequence` with `prefix` before it (as prompt tokens). When the sequence still starts with
/// the leading special tokens `prefix` also starts with (its prompt was not cut), they are not
/// repeated.
fn prefixed(sequence: &Sequence, prefix: &[u32], leading: usize) -> Sequence {
    let skip = match sequence.ids.get(..leading) {
        Some(head) if leading > 0 && head == &prefix[..leading] => leading,
        _ => 0,
    };
    let mut ids = prefix.to_vec();
    ids.extend_from_slice(&sequence.ids[skip..]);
    let mut completion = vec![false; prefix.len()];
    completion.extend_from_slice(&sequence.completion[skip..]);
    Sequence { ids, completion }
}

/// How many special tokens the tokenizer puts before a text (BOS), measured on `text`.
fn leading_special_tokens(policy: &Policy, text: &str) -> Result<usize> {
    let tokenizer = &policy.lm.tokenizer;
    let with = tokenizer.encode(text, true)?.len();
    let without = tokenizer.encode(text, false)?.len();
    Ok(with.saturating_sub(without))
}

/// Fills every pair's `token_rewards` with T-REG's contrastive token rewards under
/// `reference`, `batch` pairs per forward pass.
pub fn fill_token_rewards(
    policy: &Policy,
    reference: &LlamaModel,
    pairs: &mut [EncodedPair],
    config: &TregConfig,
    batch: usize,
    source: &str,
) -> Result<()> {
    let pad_id = policy.lm.tokenizer.pad_id();
    let mut scored = Vec::with_capacity(2);
    for (which, instruction) in [
        ("better", &config.better_prompt),
        ("worse", &config.worse_prompt),
    ] {
        let prefix = instruction_ids(policy, instruction)?;
        let leading = leading_special_tokens(policy, instruction)?.min(prefix.len());
        let conditioned: Vec<EncodedPair> = pairs
            .iter()
            .map(|p| EncodedPair {
                chosen: prefixed(&p.chosen, &prefix, leading),
                rejected: prefixed(&p.rejected, &prefix, leading),
                scores: None,
                sampled: None,
                token_rewards: None,
            })
            .collect();
        let mut done = 0;
        let rows = compute(reference, &conditioned, pad_id, batch, |n| {
            done += n;
            if done % (16 * batch.max(1)) < n || done == pairs.len() {
                eprintln!(
                    "{source}: T-REG token rewards, {done} of {} pairs scored under the {which} prompt",
                    pairs.len()
                );
            }
        })?;
        scored.push(rows);
    }
    let (better, worse) = (&scored[0], &scored[1]);
    for (i, pair) in pairs.iter_mut().enumerate() {
        let side = |seq: &Sequence, b: &[f32], w: &[f32]| -> Result<Vec<f32>> {
            token_rewards(seq, b, w, config.clip)
                .map_err(|e| anyhow::anyhow!("{source}: pair {}: {e}", i + 1))
        };
        let chosen = side(&pair.chosen, &better[i].chosen, &worse[i].chosen)?;
        let rejected = side(&pair.rejected, &better[i].rejected, &worse[i].rejected)?;
        pair.token_rewards = Some([chosen, rejected]);
    }
    Ok(())
}

/// One sequence's rewards from its log-probs under the two conditioned rows (`better`,
/// `worse`: per-position, `len − 1` each, the completion at their ends): position `t − 1`
/// (predicting token `t`) gets `clip(better − worse)` where token `t` is a completion token,
/// 0 elsewhere.
fn token_rewards(seq: &Sequence, better: &[f32], worse: &[f32], clip: f32) -> Result<Vec<f32>> {
    let n = seq.len();
    if better.len() + 1 < n || worse.len() + 1 < n {
        bail!("the conditioned rows are shorter than the sequence");
    }
    let mut out = vec![0f32; n.saturating_sub(1)];
    // The completion is the tail of all three rows: align from the end.
    let (bo, wo) = (better.len() + 1 - n, worse.len() + 1 - n);
    for t in 1..n {
        if seq.completion[t] {
            let r = better[bo + t - 1] - worse[wo + t - 1];
            if !r.is_finite() {
                bail!("a non-finite token reward at token {t}");
            }
            out[t - 1] = r.clamp(-clip, clip);
        }
    }
    Ok(out)
}

/// Rows of `[2B]` token rewards for a batch (chosen rows, then rejected), as the
/// [`PairReference`] layout [`super::reference_cache::batch_tensor`] pads.
pub fn batch_rows(pairs: &[&EncodedPair]) -> Result<Vec<PairReference>> {
    pairs
        .iter()
        .map(|p| {
            let [chosen, rejected] = p
                .token_rewards
                .clone()
                .ok_or_else(|| anyhow::anyhow!("a pair without token rewards reached T-REG"))?;
            Ok(PairReference { chosen, rejected })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::data::encode_pairs;
    use crate::preference::task::tests::{pair, tiny_policy};
    use rm_core::device::test_device;
    use rm_core::policy::CausalPolicy;
    use rm_core::tokenize::{PaddingSide, TokenBatch};
    use rm_core::types::Prompt;

    /// The per-token log-probs of one sequence under `policy`'s module, computed on its own.
    fn row_logprobs(policy: &Policy, seq: &Sequence) -> Vec<f32> {
        let device = test_device();
        let b = TokenBatch::pad(std::slice::from_ref(seq), 0, PaddingSide::Right).unwrap();
        policy
            .lm
            .model
            .completion_logprobs(
                b.ids_tensor(&device),
                b.attention_tensor(&device),
                b.completion_tensor(&device),
                false,
            )
            .unwrap()
            .token_logprobs
            .into_data()
            .iter::<f32>()
            .collect()
    }

    /// On a tiny model with the plain template, a pair's token rewards equal the difference of
    /// the log-probs of its completion tokens when the pair is encoded from the text
    /// `"{better}\n\n{prompt}"` versus `"{worse}\n\n{prompt}"` (a separate path through
    /// `Policy::encode`), are 0 off the completion, and are clipped.
    #[test]
    fn token_rewards_equal_the_contrastive_log_prob_difference() {
        let device = test_device();
        let dir = std::env::temp_dir().join(format!("plumb-treg-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let policy = tiny_policy(&dir, false, &device);
        let pairs = vec![pair("w3 w4 w5", "w6 w7 w8", "w9")];
        let mut encoded = encode_pairs(&policy, &pairs, "test").unwrap();
        let config = TregConfig {
            better_prompt: "w40 w41".into(),
            worse_prompt: "w42 w43 w44".into(),
            clip: 100.0,
            ..TregConfig::default()
        };
        fill_token_rewards(&policy, &policy.lm.model, &mut encoded, &config, 4, "test").unwrap();
        let [chosen, rejected] = encoded[0].token_rewards.clone().unwrap();
        for (side, response, rewards) in [
            (&encoded[0].chosen, "w6 w7 w8", &chosen),
            (&encoded[0].rejected, "w9", &rejected),
        ] {
            assert_eq!(rewards.len(), side.len() - 1);
            let conditioned = |instruction: &str| {
                let seq = policy
                    .encode(
                        &Prompt::Text(format!("{instruction}\n\nw3 w4 w5")),
                        response,
                    )
                    .unwrap();
                let lp = row_logprobs(&policy, &seq);
                // The completion's log-probs: the last |completion| positions.
                let n = seq.completion.iter().filter(|c| **c).count();
                lp[lp.len() - n..].to_vec()
            };
            let (better, worse) = (conditioned("w40 w41"), conditioned("w42 w43 w44"));
            let n = better.len();
            assert_eq!(n, side.completion.iter().filter(|c| **c).count());
            let off = rewards.len() - n;
            assert!(rewards[..off].iter().all(|v| *v == 0.0), "{rewards:?}");
            for k in 0..n {
                let want = better[k] - worse[k];
                assert!(
                    (rewards[off + k] - want).abs() < 1e-5,
                    "{rewards:?} vs {want}"
                );
            }
            assert!(rewards[off..].iter().any(|v| v.abs() > 1e-4), "{rewards:?}");
        }
        // A small clip bounds every reward.
        let clipped = TregConfig {
            clip: 1e-3,
            ..config
        };
        fill_token_rewards(&policy, &policy.lm.model, &mut encoded, &clipped, 4, "test").unwrap();
        let [c, _] = encoded[0].token_rewards.clone().unwrap();
        assert!(c.iter().all(|v| v.abs() <= 1e-3));
        assert!(c.iter().any(|v| v.abs() == 1e-3), "{c:?}");
    }

    #[test]
    fn rewards_align_the_completion_from_the_end_and_clip() {
        // A 5-token sequence, completion = tokens 3 and 4; the conditioned rows are 3 tokens
        // longer (an instruction before the prompt), so their per-position values are 7 long.
        let seq = Sequence {
            ids: vec![1, 2, 3, 4, 5],
            completion: vec![false, false, false, true, true],
        };
        let better = [0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -0.5];
        let worse = [9.0, 9.0, 9.0, 9.0, 9.0, -3.0, 9.5];
        let r = token_rewards(&seq, &better, &worse, 5.0).unwrap();
        assert_eq!(r, vec![0.0, 0.0, 2.0, -5.0]);
        // The same sequence scored on itself: all zeros.
        let same = token_rewards(&seq, &better, &better, 5.0).unwrap();
        assert!(same.iter().all(|v| *v == 0.0));
        let nan = [0.0, 0.0, 0.0, f32::NAN];
        let bad = token_rewards(&seq, &nan, &[0.0; 4], 5.0).unwrap_err();
        assert!(bad.to_string().contains("non-finite"), "{bad}");
        let short = token_rewards(&seq, &[0.0; 3], &[0.0; 4], 5.0).unwrap_err();
        assert!(short.to_string().contains("shorter"), "{short}");
    }

    #[test]
    fn a_prefix_keeps_the_completion_and_drops_a_repeated_bos() {
        let seq = Sequence {
            ids: vec![0, 7, 8, 9],
            completion: vec![false, false, true, true],
        };
        let p = prefixed(&seq, &[0, 50, 51], 1);
        assert_eq!(p.ids, vec![0, 50, 51, 7, 8, 9]);
        assert_eq!(p.completion, vec![false, false, false, false, true, true]);
        // A cut prompt lost its BOS: nothing is dropped.
        let cut = Sequence {
            ids: vec![7, 8, 9],
            completion: vec![false, true, true],
        };
        assert_eq!(prefixed(&cut, &[0, 50], 1).ids, vec![0, 50, 7, 8, 9]);
        assert_eq!(prefixed(&cut, &[50], 0).ids, vec![50, 7, 8, 9]);
    }
}
