//! The progress bonus of meta reinforcement fine-tuning (MRT; Qu et al. 2025, "Optimizing
//! Test-Time Compute via Meta Reinforcement Fine-Tuning"), `kind = "progress_bonus"`: a dense
//! reward for each episode of a completion that makes a right final answer more likely.
//!
//! The completion `z` is cut into episodes `z_1 … z_n` at a delimiter. A meta-prover `μ` is made
//! to stop and answer after each prefix `z_{1:j}` (the prefix, then the `force` text, then `k`
//! sampled continuations of `max_new_tokens`); `J_j` is the share of those answers equal to the
//! gold answer (read as the `gsm8k` reward reads answers, from the `force` text and the
//! continuation only). `J_0` is the same from the prompt alone, once per prompt and call. Episode
//! `j` gets the step reward `α·(J_j − J_{j−1})` on its last token (`α = step_weight`), and the
//! component's value is the telescoped `J_n − J_0` (give it `weight = 0` for the dense bonus
//! alone, beside an outcome reward as in MRT's `r + α·Σ_j r_prg`).
//!
//! MRT's `μ` is the policy being trained; here it is a fixed model (`prover`: the base model
//! for the paper's "the policy before fine-tuning" reading, or any other policy folder), so the
//! bonus does not move with the policy. Each completion costs `(n + 1)·k` short generations.
//! A sample without a usable gold answer or without an episode is masked, naming why.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;

use rm_core::burn::tensor::Device;
use rm_core::sampling::SamplingConfig;
use serde::{Deserialize, Serialize};

use super::math::{AnswerExtraction, Gsm8kReward, Gsm8kSpec};
use super::process::split_steps;
use super::{RewardError, RewardFunction, RewardSample, Scored, StepReward};
use crate::online::prompts::RlPrompt;
use crate::online::step_labels::{Continuer, PolicyContinuer};

fn default_delimiter() -> String {
    "\n\n".into()
}
fn default_force() -> String {
    "\nTime is up. The final answer is ".into()
}
fn default_k() -> usize {
    4
}
fn default_max_new_tokens() -> usize {
    12
}
fn default_max_len() -> usize {
    512
}
fn one() -> f64 {
    1.0
}

/// `[[reward]] kind = "progress_bonus"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressBonusSpec {
    /// The meta-prover `μ`: a policy folder or a model folder / `.gguf`.
    pub prover: PathBuf,
    /// Tokens per prompt + prefix + answer for a plain model folder (default 512).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Where the completion is cut into episodes (default a blank line).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// What follows each prefix to make `μ` stop thinking and answer.
    #[serde(default = "default_force")]
    pub force: String,
    /// Answers sampled per prefix (default 4).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Tokens per answer (default 12).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default)]
    pub extraction: AnswerExtraction,
    /// `α`, multiplying the step rewards (not the value, which `weight` multiplies).
    #[serde(default = "one")]
    pub step_weight: f64,
    /// Sequences per generation batch (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub seed: u64,
}

/// The progress-bonus reward function.
pub struct ProgressBonusReward {
    name: String,
    spec: ProgressBonusSpec,
    checker: Gsm8kReward,
    continuer: Mutex<Box<dyn Continuer + Send>>,
}

impl ProgressBonusReward {
    /// Loads the prover and checks the settings.
    pub fn load(name: &str, spec: &ProgressBonusSpec, device: &Device) -> anyhow::Result<Self> {
        let policy = PolicyContinuer::load_policy(&spec.prover, spec.max_len, device)?;
        let sampling = SamplingConfig {
            max_new_tokens: spec.max_new_tokens,
            temperature: spec.temperature as f32,
            seed: spec.seed,
            ..SamplingConfig::default()
        };
        let continuer = PolicyContinuer::new(policy, sampling, spec.batch_size.unwrap_or(16))?;
        Self::with_continuer(name, spec, Box::new(continuer))
    }

    /// The function with its answers from `continuer` (`spec.prover` only named in messages).
    pub fn with_continuer(
        name: &str,
        spec: &ProgressBonusSpec,
        continuer: Box<dyn Continuer + Send>,
    ) -> anyhow::Result<Self> {
        if spec.k == 0 {
            anyhow::bail!("progress_bonus: k must be at least 1");
        }
        if spec.force.trim().is_empty() {
            anyhow::bail!(
                "progress_bonus: force is empty; the prover needs a text that makes it answer"
            );
        }
        if !spec.step_weight.is_finite() {
            anyhow::bail!(
                "progress_bonus: step_weight {} is not a finite number",
                spec.step_weight
            );
        }
        let checker = Gsm8kReward::new(
            name,
            Gsm8kSpec {
                extraction: spec.extraction,
                ..Gsm8kSpec::default()
            },
        )?;
        Ok(Self {
            name: name.to_string(),
            spec: spec.clone(),
            checker,
            continuer: Mutex::new(continuer),
        })
    }

    /// The share of `answers` (each after `force`) that are right for `sample`'s gold answer.
    fn success(&self, sample: &RewardSample<'_>, answers: &[String]) -> Result<f32, RewardError> {
        let texts: Vec<String> = answers
            .iter()
            .map(|a| format!("{}{a}", self.spec.force))
            .collect();
        let checks: Vec<RewardSample<'_>> = texts
            .iter()
            .map(|t| RewardSample {
                completion: t,
                ..*sample
            })
            .collect();
        let mut right = 0usize;
        for r in self.checker.score_batch(&checks) {
            if r? > 0.5 {
                right += 1;
            }
        }
        Ok(right as f32 / answers.len().max(1) as f32)
    }
}

impl RewardFunction for ProgressBonusReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
        self.score_with_steps(samples)
            .into_iter()
            .map(|r| r.map(|s| s.value))
            .collect()
    }

    fn score_with_steps(&self, samples: &[RewardSample<'_>]) -> Vec<Result<Scored, RewardError>> {
        let episodes: Vec<Vec<Range<usize>>> = samples
            .iter()
            .map(|s| split_steps(s.completion, &self.spec.delimiter))
            .collect();
        // One request per distinct prompt (J_0) and per episode prefix of every sample.
        let mut distinct: Vec<usize> = Vec::new();
        let first_of: Vec<usize> = (0..samples.len())
            .map(|i| {
                match distinct
                    .iter()
                    .position(|&d| samples[d].prompt == samples[i].prompt)
                {
                    Some(p) => p,
                    None => {
                        distinct.push(i);
                        distinct.len() - 1
                    }
                }
            })
            .collect();
        let problems: Vec<RlPrompt> = samples
            .iter()
            .map(|s| RlPrompt {
                prompt: s.prompt.clone(),
                references: s.references.to_vec(),
            })
            .collect();
        let prefixes: Vec<Vec<String>> = samples
            .iter()
            .zip(&episodes)
            .map(|(s, eps)| {
                eps.iter()
                    .map(|r| format!("{}{}", &s.completion[..r.end], self.spec.force))
                    .collect()
            })
            .collect();
        let force = self.spec.force.clone();
        let mut requests: Vec<(&RlPrompt, &str)> = distinct
            .iter()
            .map(|&d| (&problems[d], force.as_str()))
            .collect();
        for (i, p) in prefixes.iter().enumerate() {
            requests.extend(p.iter().map(|x| (&problems[i], x.as_str())));
        }
        let answers = {
            let mut continuer = self.continuer.lock().unwrap_or_else(|e| e.into_inner());
            continuer.continue_prefixes(&requests, self.spec.k)
        };
        let answers = match answers {
            Ok(a) if a.len() == requests.len() => a,
            Ok(a) => {
                let e = RewardError::WrongCount {
                    expected: requests.len(),
                    got: a.len(),
                };
                return vec![Err(e); samples.len()];
            }
            Err(e) => {
                let e = RewardError::Model(format!("the prover: {e:#}"));
                return vec![Err(e); samples.len()];
            }
        };
        let mut next = distinct.len();
        (0..samples.len())
            .map(|i| {
                let own = &answers[next..next + prefixes[i].len()];
                next += prefixes[i].len();
                if episodes[i].is_empty() {
                    return Err(RewardError::Model("the completion has no episode".into()));
                }
                let start = self.success(&samples[i], &answers[first_of[i]])?;
                let mut previous = start;
                let mut steps = Vec::with_capacity(own.len());
                for (r, a) in episodes[i].iter().zip(own) {
                    let j = self.success(&samples[i], a)?;
                    steps.push(StepReward {
                        end: r.end,
                        reward: ((j - previous) as f64 * self.spec.step_weight) as f32,
                    });
                    previous = j;
                }
                Ok(Scored {
                    value: previous - start,
                    steps,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::types::Prompt;

    /// Answers by prefix: the text after the last `force` decides; records every request.
    struct Scripted {
        seen: std::sync::Arc<Mutex<Vec<String>>>,
    }

    impl Continuer for Scripted {
        fn continue_prefixes(
            &mut self,
            requests: &[(&RlPrompt, &str)],
            k: usize,
        ) -> anyhow::Result<Vec<Vec<String>>> {
            let mut seen = self.seen.lock().unwrap();
            Ok(requests
                .iter()
                .map(|(_, prefix)| {
                    seen.push(prefix.to_string());
                    // Right answers: none from the prompt, half after "a", all after "a … b".
                    let right = if prefix.contains('b') {
                        k
                    } else if prefix.contains('a') {
                        k / 2
                    } else {
                        0
                    };
                    (0..k)
                        .map(|i| if i < right { "4" } else { "3" }.to_string())
                        .collect()
                })
                .collect())
        }
    }

    fn spec() -> ProgressBonusSpec {
        ProgressBonusSpec {
            prover: "scripted".into(),
            max_len: 64,
            delimiter: "\n\n".into(),
            force: " ANSWER: ".into(),
            k: 4,
            max_new_tokens: 4,
            temperature: 1.0,
            extraction: AnswerExtraction::Flexible,
            step_weight: 2.0,
            batch_size: None,
            seed: 0,
        }
    }

    #[test]
    fn episodes_get_the_change_in_the_provers_success_rate() {
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let f = ProgressBonusReward::with_continuer(
            "mrt",
            &spec(),
            Box::new(Scripted { seen: seen.clone() }),
        )
        .unwrap();
        let (p, q) = (Prompt::Text("2+2?".into()), Prompt::Text("1+3?".into()));
        let gold = ["4".to_string()];
        let sample = |prompt, completion| RewardSample {
            prompt,
            completion,
            references: &gold,
            truncated: false,
        };
        let out = f.score_with_steps(&[
            sample(&p, "first a\n\nthen b"),
            sample(&p, "only a"),
            sample(&q, "   "),
        ]);
        // J_0 = 0, J_1 = ½, J_2 = 1 → step rewards 2·½ at both episode ends; value 1.
        let first = out[0].as_ref().unwrap();
        assert_eq!(first.value, 1.0);
        let got: Vec<(usize, f32)> = first.steps.iter().map(|s| (s.end, s.reward)).collect();
        assert_eq!(got, vec![(7, 1.0), (15, 1.0)]);
        let second = out[1].as_ref().unwrap();
        assert_eq!((second.value, second.steps[0].reward), (0.5, 1.0));
        assert!(matches!(&out[2], Err(RewardError::Model(m)) if m.contains("no episode")));
        // One J_0 request per distinct prompt, then each episode prefix with the force text.
        let requested = seen.lock().unwrap().clone();
        assert_eq!(
            requested,
            vec![
                " ANSWER: ",
                " ANSWER: ",
                "first a ANSWER: ",
                "first a\n\nthen b ANSWER: ",
                "only a ANSWER: ",
            ]
        );
        // A sample without a gold answer is masked by the answer check.
        let none = f.score_with_steps(&[RewardSample {
            prompt: &p,
            completion: "a",
            references: &[],
            truncated: false,
        }]);
        assert!(none[0].is_err());
    }

    /// From a `[[reward]]` table with a real (tiny) prover: one step reward per episode, each a
    /// difference of two shares of `k`, times α; the value telescopes them; the same seed gives
    /// the same answers.
    #[test]
    fn a_recipe_table_builds_a_prover_that_scores_episodes() {
        let dir = std::env::temp_dir().join(format!("po-mrt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        rm_core::fixtures::write_tiny_llama(&dir, 4).unwrap();
        let table = format!(
            "kind = \"progress_bonus\"\nweight = 0.0\nprover = \"{}\"\nmax_len = 48\nforce = \" w5 \"\nk = 3\nmax_new_tokens = 2\nstep_weight = 0.5",
            dir.display()
        );
        let config: super::super::RewardComponentConfig = toml::from_str(&table).unwrap();
        let device = rm_core::device::test_device();
        let set = super::super::RewardSet::build(std::slice::from_ref(&config), &device).unwrap();
        let prompt = Prompt::Text("w1 w2".into());
        let gold = ["7".to_string()];
        let sample = RewardSample {
            prompt: &prompt,
            completion: "w3 w4\n\nw8 w9\n\nw10",
            references: &gold,
            truncated: false,
        };
        let out = set.score(&[sample]);
        assert_eq!(out[0].steps.len(), 3, "{out:?}");
        let total: f32 = out[0].steps.iter().map(|s| s.reward).sum();
        for s in &out[0].steps {
            let thirds = s.reward / 0.5 * 3.0;
            assert!((thirds - thirds.round()).abs() < 1e-4 && s.reward.abs() <= 0.5 + 1e-6);
        }
        let f = config.spec.build("mrt", &device).unwrap();
        let scored = f.score_with_steps(&[sample]).remove(0).unwrap();
        assert!((scored.value * 0.5 - total).abs() < 1e-5);
        assert_eq!(scored.steps, out[0].steps, "seeded: the same answers");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_settings_are_refused() {
        let scripted = || -> Box<dyn Continuer + Send> {
            Box::new(Scripted {
                seen: Default::default(),
            })
        };
        for (change, says) in [
            (ProgressBonusSpec { k: 0, ..spec() }, "k must be at least 1"),
            (
                ProgressBonusSpec {
                    force: " ".into(),
                    ..spec()
                },
                "force is empty",
            ),
            (
                ProgressBonusSpec {
                    step_weight: f64::NAN,
                    ..spec()
                },
                "step_weight",
            ),
        ] {
            let err = ProgressBonusReward::with_continuer("mrt", &change, scripted())
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(says), "{err}");
        }
    }
}
