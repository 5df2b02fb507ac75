//! SCIR in online DPO ([`rm_losses::preference::scir`]; Zhou et al. 2025, "Self-Consistency of
//! the Internal Reward Models Improves Self-Rewarding Language Models"): the policy's
//! generative judge (its prompts, its answer tokens, its logits) and the step's objective.
//!
//! Each collection pairs every prompt's completions with the highest and the lowest implicit
//! reward (as `label = "implicit"` does) and writes the judge's two prompts for the pair, one
//! per order. At every step the current policy gives both internal judgments of each pair —
//! `p_imp = σ(m)` from its implicit reward and `p_gen` from its answer "A" or "B" to the judge
//! prompts — and trains `[Σ_{agreeing pairs} ℓ_DPO(label = the agreed winner) + λ·Σ_{pairs}
//! L_con(m, p_gen)] / P`.

use anyhow::{Context, Result, bail};
use burn::tensor::{Int, Tensor, TensorData};
use rm_core::chat::ChatTemplate;
use rm_core::models::llama::LlamaModel;
use rm_core::models::policy_folder::Policy;
use rm_core::tokenize::{PaddingSide, Sequence, TokenBatch};
use rm_core::types::{Conversation, Prompt, Role, Turn};
use serde::{Deserialize, Serialize};

/// The judge prompt; `{conversation}`, `{first}` and `{second}` are filled in.
pub const DEFAULT_JUDGE_TEMPLATE: &str = "Which response to the conversation below is more helpful and harmless? Answer with A or B.\n\n[Conversation]\n{conversation}\n\n[Response A]\n{first}\n\n[Response B]\n{second}";

/// `[algorithm.online_dpo.scir]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScirConfig {
    /// Weight `λ` of the consistency loss.
    #[serde(default = "one")]
    pub lambda: f32,
    /// The judge's instruction, with `{conversation}`, `{first}` and `{second}` (the pair's
    /// responses shown as A and B), sent as one user turn in the policy's chat template.
    #[serde(default = "default_template")]
    pub template: String,
    /// The answers whose next-token logits are the judgment: the first says "the response
    /// shown as A is better". Each must be one token of the policy's vocabulary.
    #[serde(default = "default_answers")]
    pub answers: [String; 2],
    /// Most tokens of a judge prompt: longer conversations lose their beginning.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
}

fn one() -> f32 {
    1.0
}

fn default_template() -> String {
    DEFAULT_JUDGE_TEMPLATE.into()
}

fn default_answers() -> [String; 2] {
    ["A".into(), "B".into()]
}

fn default_max_len() -> usize {
    768
}

impl Default for ScirConfig {
    fn default() -> Self {
        Self {
            lambda: one(),
            template: default_template(),
            answers: default_answers(),
            max_len: default_max_len(),
        }
    }
}

impl ScirConfig {
    /// Checks `λ`, the template's placeholders, the answers and the length.
    pub fn validate(&self) -> Result<()> {
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            bail!("scir.lambda must be finite and ≥ 0, got {}", self.lambda);
        }
        for slot in ["{conversation}", "{first}", "{second}"] {
            if !self.template.contains(slot) {
                bail!("scir.template has no {slot}");
            }
        }
        if self.answers.iter().any(|a| a.is_empty()) || self.answers[0] == self.answers[1] {
            bail!(
                "scir.answers must be two different non-empty strings, got {:?}",
                self.answers
            );
        }
        if self.max_len < 16 {
            bail!("scir.max_len {} is too small (at least 16)", self.max_len);
        }
        Ok(())
    }
}

/// The policy's generative judge: the config with its answers' token ids.
#[derive(Clone, Debug)]
pub struct Judge {
    config: ScirConfig,
    answers: [u32; 2],
}

/// A prompt as the judge shows it: a conversation as an HH transcript (`Human: …` /
/// `Assistant: …`), a text prompt as it is.
fn conversation_text(prompt: &Prompt) -> Result<String> {
    Ok(match prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Conversation(c) => ChatTemplate::HhTranscript
            .render(c, false)?
            .trim()
            .to_string(),
    })
}

impl Judge {
    /// Errors: an answer that is not exactly one token of `policy`'s vocabulary.
    pub fn new(config: &ScirConfig, policy: &Policy) -> Result<Self> {
        config.validate()?;
        let tokenizer = &policy.lm.tokenizer;
        let mut ids = [0u32; 2];
        for (slot, answer) in ids.iter_mut().zip(&config.answers) {
            let tokens = tokenizer.encode(answer, false)?;
            match tokens.as_slice() {
                [one] => *slot = *one,
                _ => bail!(
                    "scir.answers: {answer:?} is {} tokens of the policy's vocabulary ({tokens:?}); each answer must be exactly one",
                    tokens.len()
                ),
            }
        }
        Ok(Self {
            config: config.clone(),
            answers: ids,
        })
    }

    /// The judge prompt's tokens for `prompt` with `first` shown as A and `second` as B, in
    /// `policy`'s chat template. A prompt over `max_len` tokens loses the start of the
    /// conversation (a quarter at a time); one that cannot fit is an error.
    pub fn prompt_ids(
        &self,
        policy: &Policy,
        prompt: &Prompt,
        first: &str,
        second: &str,
    ) -> Result<Vec<u32>> {
        let conversation = conversation_text(prompt)?;
        let mut chars: Vec<char> = conversation.chars().collect();
        for _ in 0..12 {
            let shown: String = chars.iter().collect();
            let text = self
                .config
                .template
                .replace("{conversation}", &shown)
                .replace("{first}", first)
                .replace("{second}", second);
            let rendered =
                policy
                    .spec
                    .template
                    .render_prompt(&Prompt::Conversation(Conversation::new(vec![Turn::new(
                        Role::User,
                        text,
                    )])))?;
            let ids = policy.lm.tokenizer.encode(&rendered, true)?;
            if ids.len() <= self.config.max_len {
                return Ok(ids);
            }
            if chars.is_empty() {
                break;
            }
            let cut = (chars.len() / 4).max(1);
            chars.drain(..cut);
        }
        bail!(
            "the judge prompt does not fit scir.max_len {} tokens even without the conversation (the two responses are too long)",
            self.config.max_len
        )
    }

    /// `ℓ_A − ℓ_B` (`[N]`): the logit of the first answer minus the second's, predicted after
    /// each judge prompt of `rows`. Differentiable on autodiff devices.
    pub fn logit_gaps(&self, model: &LlamaModel, rows: &[Vec<u32>], pad: u32) -> Result<Tensor<1>> {
        if rows.is_empty() {
            bail!("no judge prompts");
        }
        let device = model.embed_tokens.weight.val().device();
        let sequences: Vec<Sequence> = rows.iter().map(|r| Sequence::from_ids(r.clone())).collect();
        let batch = TokenBatch::pad(&sequences, pad, PaddingSide::Left)?;
        let hidden =
            model.forward_hidden(batch.ids_tensor(&device), batch.attention_tensor(&device));
        let [n, t, _] = hidden.dims();
        let last = hidden.narrow(1, t - 1, 1);
        let logits = model.logits(last).reshape([n, model_vocab(model)]);
        let answers = Tensor::<1, Int>::from_data(
            TensorData::new(vec![self.answers[0] as i64, self.answers[1] as i64], [2]),
            &device,
        );
        let picked = logits.select(1, answers);
        let gap = picked.clone().narrow(1, 0, 1) - picked.narrow(1, 1, 1);
        Ok(gap.reshape([n]))
    }

    /// `λ`.
    pub fn lambda(&self) -> f32 {
        self.config.lambda
    }
}

fn model_vocab(model: &LlamaModel) -> usize {
    model.embed_tokens.weight.val().dims()[0]
}

/// Reads a `[N]` tensor to the host.
pub(crate) fn host(t: Tensor<1>) -> Result<Vec<f32>> {
    t.detach()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading SCIR's judgments: {e:?}"))
        .context("SCIR")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::task::tests::tiny_policy;
    use rm_core::device::test_device;

    fn config(max_len: usize) -> ScirConfig {
        ScirConfig {
            lambda: 1.0,
            template: "{conversation} w1 {first} w2 {second}".into(),
            answers: ["w5".into(), "w6".into()],
            max_len,
        }
    }

    /// Each gap is `ℓ(w5) − ℓ(w6)` after the row's own last token (rows of different lengths,
    /// left-padded together); a conversation too long loses its start, responses that cannot
    /// fit are an error, and an answer of two tokens is refused.
    #[test]
    fn logit_gaps_read_each_prompts_last_position_and_long_conversations_are_cut() {
        let dir = std::env::temp_dir().join(format!("plumb-scir-judge-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let device = test_device();
        let policy = tiny_policy(&dir, false, &device);
        let judge = Judge::new(&config(24), &policy).unwrap();
        let short = judge
            .prompt_ids(&policy, &Prompt::Text("w3 w4".into()), "w7 w8", "w9")
            .unwrap();
        let long = judge
            .prompt_ids(
                &policy,
                &Prompt::Text("w3 w4 w11 w12 w13".into()),
                "w9",
                "w7 w8",
            )
            .unwrap();
        assert!(long.len() > short.len());
        let pad = policy.lm.tokenizer.pad_id();
        let model = &policy.lm.model;
        let gaps = host(
            judge
                .logit_gaps(model, &[short.clone(), long.clone()], pad)
                .unwrap(),
        )
        .unwrap();
        for (ids, gap) in [short, long].iter().zip(gaps) {
            let n = ids.len();
            let input = Tensor::<2, Int>::from_data(
                TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, n]),
                &device,
            );
            let logits: Vec<f32> = model
                .forward(input.clone(), input.ones_like())
                .narrow(1, n - 1, 1)
                .into_data()
                .try_to_vec()
                .unwrap();
            let want = logits[judge.answers[0] as usize] - logits[judge.answers[1] as usize];
            assert!((gap - want).abs() < 1e-4, "{gap} vs {want}");
        }
        let words = |n: usize| {
            (0..n)
                .map(|i| format!("w{}", 10 + i % 30))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let cut = judge
            .prompt_ids(&policy, &Prompt::Text(words(40)), "w7", "w8")
            .unwrap();
        assert!(cut.len() <= 24, "{}", cut.len());
        let err = judge
            .prompt_ids(&policy, &Prompt::Text("w3".into()), &words(20), &words(20))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not fit"), "{err}");
        let mut two = config(24);
        two.answers = ["w5 w6".into(), "w7".into()];
        let err = Judge::new(&two, &policy).unwrap_err().to_string();
        assert!(err.contains("exactly one"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
