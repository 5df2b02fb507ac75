//! Follow-up likelihood as reward (FLR; Zhang et al. 2024, "Aligning Language Models Using
//! Follow-up Likelihood as Reward Signal"): how likely a judge language model finds that the
//! user's next turn is a positive follow-up rather than a negative one,
//!
//! `r(x, y) = (1/|P|) Σ_{f∈P} ℓ(f | x, y) − (1/|N|) Σ_{f∈N} ℓ(f | x, y)`,
//!
//! with `ℓ(f | x, y)` the mean per-token log-probability of the follow-up utterance `f` as the
//! user turn after the conversation `x` and the assistant response `y` (rendered with the
//! judge's chat template), `P` positive follow-ups ("Thanks, that's exactly what I needed.")
//! and `N` negative ones ("That's not what I asked."). No reward model is trained: any causal
//! LM folder serves as judge (the policy's own base gives the paper's self-judging variant,
//! frozen at its starting point). Without negatives the reward is the positive term alone.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, bail};
use rm_core::burn::tensor::Device;
use rm_core::chat::ChatTemplate;
use rm_core::models::llama::CausalLm;
use rm_core::policy::CausalPolicy;
use rm_core::tokenize::{PaddingSide, Sequence, TokenBatch};
use rm_core::types::{Conversation, Prompt, Role, Turn};
use serde::{Deserialize, Serialize};

use super::model::score_with_fallback;
use super::{RewardError, RewardFunction, RewardSample};

/// Settings of a [`FollowUpReward`] (`kind = "follow_up"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUpSpec {
    /// The judge: an HF Llama-family folder or a `.gguf`.
    pub model: PathBuf,
    /// Positive follow-up utterances (at least one).
    pub positive: Vec<String>,
    /// Negative follow-up utterances (may be empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub negative: Vec<String>,
    /// How the conversation is rendered for the judge (default ChatML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<ChatTemplate>,
    /// Sequences per forward pass (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

/// The follow-up-likelihood reward over a loaded judge.
pub struct FollowUpReward {
    name: String,
    judge: Mutex<CausalLm>,
    positive: Vec<String>,
    negative: Vec<String>,
    template: ChatTemplate,
    batch_size: usize,
}

impl FollowUpReward {
    /// Loads the judge and checks the settings.
    pub fn load(name: &str, spec: &FollowUpSpec, device: &Device) -> anyhow::Result<Self> {
        if spec.positive.is_empty() {
            bail!("follow_up: `positive` needs at least one follow-up utterance");
        }
        if let Some(f) = spec
            .positive
            .iter()
            .chain(&spec.negative)
            .find(|f| f.trim().is_empty())
        {
            bail!("follow_up: the follow-up {f:?} is empty");
        }
        if spec.batch_size == Some(0) {
            bail!("follow_up: batch_size must be at least 1");
        }
        let judge = CausalLm::load(&spec.model, device)
            .with_context(|| format!("follow_up: loading the judge {}", spec.model.display()))?;
        Ok(Self {
            name: name.to_string(),
            judge: Mutex::new(judge),
            positive: spec.positive.clone(),
            negative: spec.negative.clone(),
            template: spec.template.unwrap_or(ChatTemplate::ChatMl),
            batch_size: spec.batch_size.unwrap_or(8),
        })
    }

    /// The judge's sequence for `follow_up` after `prompt` + `completion`: the rendered
    /// conversation up to the follow-up's text, then the follow-up's tokens (flagged).
    fn sequence(
        &self,
        judge: &CausalLm,
        prompt: &Prompt,
        completion: &str,
        follow_up: &str,
    ) -> anyhow::Result<Sequence> {
        let mut turns = match prompt {
            Prompt::Text(t) => vec![Turn::new(Role::User, t.clone())],
            Prompt::Conversation(c) => c.turns.clone(),
        };
        turns.push(Turn::new(Role::Assistant, completion.to_string()));
        turns.push(Turn::new(Role::User, follow_up.to_string()));
        let text = self.template.render(&Conversation::new(turns), false)?;
        let Some(at) = text.rfind(follow_up) else {
            bail!("the rendered conversation does not contain the follow-up");
        };
        let mut ids = judge.tokenizer.encode(&text[..at], true)?;
        let content = judge.tokenizer.encode(follow_up, false)?;
        if content.is_empty() {
            bail!("the follow-up {follow_up:?} has no tokens");
        }
        let mut completion_flags = vec![false; ids.len()];
        completion_flags.resize(ids.len() + content.len(), true);
        ids.extend(content);
        Ok(Sequence {
            ids,
            completion: completion_flags,
        })
    }

    /// `r` of each sample (see the module docs), in one batched pass over all
    /// (sample, follow-up) sequences.
    fn score(&self, samples: &[RewardSample<'_>]) -> anyhow::Result<Vec<f32>> {
        let judge = self
            .judge
            .lock()
            .map_err(|_| anyhow::anyhow!("the judge's lock is poisoned"))?;
        let follow_ups: Vec<&String> = self.positive.iter().chain(&self.negative).collect();
        let mut seqs = Vec::with_capacity(samples.len() * follow_ups.len());
        for s in samples {
            for f in &follow_ups {
                seqs.push(self.sequence(&judge, s.prompt, s.completion, f)?);
            }
        }
        let max = judge.config.max_position_embeddings;
        if let Some(s) = seqs.iter().find(|s| s.len() > max) {
            bail!(
                "a judged conversation has {} tokens, more than the judge's {max} positions",
                s.len()
            );
        }
        let mut means = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(self.batch_size) {
            let batch = TokenBatch::pad(chunk, judge.tokenizer.pad_id(), PaddingSide::Right)?;
            let device = &judge.device;
            let lp = judge.model.completion_logprobs(
                batch.ids_tensor(device),
                batch.attention_tensor(device),
                batch.completion_tensor(device),
                false,
            )?;
            let values: Vec<f32> = lp
                .mean
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .map_err(|e| anyhow::anyhow!("reading the judge's log-probs: {e:?}"))?;
            means.extend(values);
        }
        let (p, k) = (self.positive.len(), follow_ups.len());
        Ok(means
            .chunks(k)
            .map(|row| {
                let pos = row[..p].iter().map(|&x| f64::from(x)).sum::<f64>() / p as f64;
                let neg = match k - p {
                    0 => 0.0,
                    n => row[p..].iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64,
                };
                (pos - neg) as f32
            })
            .collect())
    }
}

impl RewardFunction for FollowUpReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
        score_with_fallback(samples, |batch| self.score(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::device::test_device;
    use rm_core::logprobs::text_logprobs;

    fn sample<'a>(prompt: &'a Prompt, completion: &'a str) -> RewardSample<'a> {
        RewardSample {
            prompt,
            completion,
            references: &[],
            truncated: false,
        }
    }

    /// On a tiny judge with a word-level tokenizer and the plain template (turns joined by
    /// blank lines), `r` is the mean log-prob of the positive follow-up's words minus the
    /// negative one's, as `text_logprobs` of the whole rendered conversation gives them; equal
    /// lists give 0, swapped lists the negation; bad settings are build errors.
    #[test]
    fn the_reward_is_the_positive_minus_the_negative_follow_up_likelihood() {
        let dir = std::env::temp_dir().join(format!("plumb-flr-{}", std::process::id()));
        rm_core::fixtures::write_tiny_llama(&dir, 4).unwrap();
        let device = test_device();
        let spec = |positive: &[&str], negative: &[&str]| FollowUpSpec {
            model: dir.clone(),
            positive: positive.iter().map(|s| s.to_string()).collect(),
            negative: negative.iter().map(|s| s.to_string()).collect(),
            template: Some(ChatTemplate::Plain),
            batch_size: Some(3),
        };
        let reward =
            FollowUpReward::load("flr", &spec(&["w5 w6"], &["w9 w10 w11"]), &device).unwrap();
        let prompt = Prompt::Text("w2 w3".into());
        let samples = [sample(&prompt, "w7 w8"), sample(&prompt, "w12")];
        let got: Vec<f32> = reward
            .score_batch(&samples)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let lm = CausalLm::load(&dir, &device).unwrap();
        let mean_tail = |completion: &str, follow_up: &str| -> f64 {
            let text = format!("w2 w3\n\n{completion}\n\n{follow_up}");
            let lp = &text_logprobs(&lm, &[text], 1).unwrap()[0];
            let k = follow_up.split_whitespace().count();
            let tail = &lp.token_logprobs[lp.token_logprobs.len() - k..];
            tail.iter().map(|&x| f64::from(x)).sum::<f64>() / k as f64
        };
        for (s, g) in samples.iter().zip(&got) {
            let expected = mean_tail(s.completion, "w5 w6") - mean_tail(s.completion, "w9 w10 w11");
            assert!((f64::from(*g) - expected).abs() < 1e-5, "{g} vs {expected}");
        }
        assert!(
            (got[0] - got[1]).abs() > 1e-4,
            "the completion matters: {got:?}"
        );
        let same = FollowUpReward::load("flr", &spec(&["w5 w6"], &["w5 w6"]), &device).unwrap();
        for r in same.score_batch(&samples) {
            assert!(r.unwrap().abs() < 1e-6);
        }
        let swapped =
            FollowUpReward::load("flr", &spec(&["w9 w10 w11"], &["w5 w6"]), &device).unwrap();
        for (r, g) in swapped.score_batch(&samples).into_iter().zip(&got) {
            assert!((r.unwrap() + g).abs() < 1e-5);
        }
        for (bad, says) in [
            (spec(&[], &["w5"]), "positive"),
            (spec(&["  "], &[]), "empty"),
            (
                FollowUpSpec {
                    batch_size: Some(0),
                    ..spec(&["w5"], &[])
                },
                "batch_size",
            ),
            (
                FollowUpSpec {
                    model: dir.join("missing"),
                    ..spec(&["w5"], &[])
                },
                "loading the judge",
            ),
        ] {
            let err = format!(
                "{:#}",
                FollowUpReward::load("flr", &bad, &device).err().unwrap()
            );
            assert!(err.contains(says), "{err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
