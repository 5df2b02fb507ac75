//! GSM8K verifiable reward: the completion's final answer against the gold answer.
//!
//! As verl's `gsm8k` reward (`verl/utils/reward_score/gsm8k.py`, after the GSM8K paper, Cobbe et
//! al. 2021 "Training Verifiers to Solve Math Word Problems"):
//!
//! `r = correct_score` if the extracted answer equals the gold answer,
//! `r = format_score` if an answer was extracted but is wrong,
//! `r = 0` if no answer could be extracted.
//!
//! A completion without any answer gets 0, not an error: the policy produced something, and it
//! is wrong — masking it would take away exactly the signal RL needs. A *sample* without a usable
//! gold answer (no reference, or a reference that is not a number) is an error (masked).
//!
//! Extraction and number parsing are [`rm_process::final_answer`]'s (strict: only `#### N`,
//! `\boxed{N}`, "the answer is N"; flexible, the default: else the last number).

pub use rm_process::final_answer::{
    AnswerExtraction, extract_answer, numbers_equal, parse_gold, parse_number,
};
use serde::{Deserialize, Serialize};

use super::{RewardError, RewardFunction, RewardSample, per_sample};

/// `kind = "gsm8k"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gsm8kSpec {
    #[serde(default)]
    pub extraction: AnswerExtraction,
    /// The reward of a correct answer (default 1).
    #[serde(default = "super::one")]
    pub correct_score: f64,
    /// The reward of an extracted but wrong answer (default 0; verl's `format_score`).
    #[serde(default)]
    pub format_score: f64,
}

impl Default for Gsm8kSpec {
    fn default() -> Self {
        Self {
            extraction: AnswerExtraction::Flexible,
            correct_score: 1.0,
            format_score: 0.0,
        }
    }
}

/// The GSM8K reward. The gold answer is `references[0]`: a number ("1,234", "-3") or a whole
/// GSM8K answer field with its `#### N` line.
pub struct Gsm8kReward {
    name: String,
    spec: Gsm8kSpec,
}

impl Gsm8kReward {
    pub fn new(name: &str, spec: Gsm8kSpec) -> anyhow::Result<Self> {
        if !(spec.correct_score.is_finite() && spec.format_score.is_finite()) {
            anyhow::bail!("gsm8k: correct_score and format_score must be finite");
        }
        Ok(Self {
            name: name.to_string(),
            spec,
        })
    }

    /// The reward of one completion against a gold answer.
    pub fn score_one(&self, completion: &str, gold: f64) -> f32 {
        match extract_answer(completion, self.spec.extraction) {
            Some(answer) if numbers_equal(answer, gold) => self.spec.correct_score as f32,
            Some(_) => self.spec.format_score as f32,
            None => 0.0,
        }
    }
}

/// The gold answer of a sample.
fn gold_answer(references: &[String]) -> Result<f64, RewardError> {
    let gold = references
        .first()
        .ok_or(RewardError::MissingReference("gsm8k needs the gold answer"))?;
    parse_gold(gold).map_err(RewardError::BadReference)
}

impl RewardFunction for Gsm8kReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
        per_sample(samples, |s| {
            let gold = gold_answer(s.references)?;
            Ok(self.score_one(s.completion, gold))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::types::Prompt;

    #[test]
    fn gsm8k_reward_is_one_zero_and_format_score_and_a_missing_gold_is_an_error() {
        let reward = Gsm8kReward::new(
            "gsm8k",
            Gsm8kSpec {
                format_score: 0.1,
                ..Gsm8kSpec::default()
            },
        )
        .unwrap();
        let prompt = Prompt::Text("q".into());
        let gold = vec!["1,234".to_string()];
        let gold_field = vec!["3 + 4 = <<3+4=7>>7\n#### 7".to_string()];
        let none: Vec<String> = vec![];
        let bad = vec!["seven".to_string()];
        let sample = |completion, references| RewardSample {
            prompt: &prompt,
            completion,
            references,
            truncated: false,
        };
        let samples = [
            sample("... so #### 1234", &gold),
            sample("The answer is 1,234.", &gold),
            sample("#### 1,233", &gold),
            sample("no idea", &gold),
            sample("3 + 4 = 7", &gold_field),
            sample("#### 7", &none),
            sample("#### 7", &bad),
        ];
        let r = reward.score_batch(&samples);
        assert_eq!(r[0], Ok(1.0));
        assert_eq!(r[1], Ok(1.0));
        assert_eq!(r[2], Ok(0.1));
        assert_eq!(r[3], Ok(0.0));
        assert_eq!(r[4], Ok(1.0));
        assert!(matches!(r[5], Err(RewardError::MissingReference(_))));
        assert!(matches!(r[6], Err(RewardError::BadReference(_))));

        let strict = Gsm8kReward::new(
            "g",
            Gsm8kSpec {
                extraction: AnswerExtraction::Strict,
                ..Gsm8kSpec::default()
            },
        )
        .unwrap();
        assert_eq!(strict.score_one("3 + 4 = 7", 7.0), 0.0);
        assert_eq!(strict.score_one("\\boxed{7.0}", 7.0), 1.0);
    }
}
