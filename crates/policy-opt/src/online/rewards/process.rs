//! A process reward model as a reward function (`kind = "process_model"`): the completion is cut
//! into steps at a delimiter, a `plumb train-prm` folder ([`rm_process::ProcessRewardModel`])
//! gives each step its probability of being correct `p_j`, and the function delivers
//! - a **sequence value**, `agg(p_1 … p_n)` by an [`Aggregation`] (min, product, last, mean,
//!   Σ log p), which enters the reward set's total like any component's value;
//! - **step rewards** `ρ_j = f(p_j)` (`step_reward = "pure"`: PURE's `2p − 1`, see
//!   [`crate::online::algos::pure_step_reward`]; `"probability"`: `p`; `"progress"`: PAV's
//!   `p_j − p_{j−1}`; `"none"`: no step rewards), each placed by the trainer on the last token of step `j`, times the component's
//!   `step_weight` — token-level rewards as RTO's token rewards reach the estimators, through
//!   `token_level_rewards` (and the step mask the min-form credit assignment reads).
//!
//! Process supervision of RL as in Lightman et al. 2023 ("Let's Verify Step by Step"), Wang et
//! al. 2024 ("Math-Shepherd": step-by-step PPO with PRM rewards at each step's end) and Cheng et
//! al. 2025 (PURE, with `estimator = { name = "process_rloo" }`).
//!
//! A completion with no step (empty after trimming) or that the PRM cannot score is an error
//! for that sample only (it is masked); a batch that fails is scored sample by sample.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use rm_core::burn::tensor::Device;
use rm_core::types::Prompt;
use rm_process::{Aggregation, ProcessRewardModel};
use serde::{Deserialize, Serialize};

use super::{RewardError, RewardFunction, RewardSample, Scored, StepReward, finite};
use crate::online::algos::{approx_min_form, pure_step_reward};

/// Solutions per PRM batch when a recipe does not say.
pub const DEFAULT_PRM_BATCH: usize = 8;

fn default_delimiter() -> String {
    "\n".into()
}

fn default_aggregation() -> Aggregation {
    Aggregation::Min
}

fn one() -> f64 {
    1.0
}

/// How a step's probability becomes its token reward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepRewardForm {
    /// PURE's `2p − 1` (a wrong step is negative).
    #[default]
    Pure,
    /// `p` itself.
    Probability,
    /// No token-level rewards: the component is an outcome reward (its aggregation) only.
    None,
    /// PAV's progress (Setlur et al. 2024, "Rewarding Progress: Scaling Automated Process
    /// Verifiers for LLM Reasoning"): `p_j − p_{j−1}`, the step's change in the verifier's
    /// estimate of reaching the right answer — a PRM trained on soft labels
    /// (`train-prm` with `data.targets = "soft"`) estimates the prover's `Q^μ`. The start
    /// `p_0 ≈ V^μ(q)` is the mean first-step probability of the completions of the same prompt
    /// in the call (its group); the steps' progress then telescopes to `p_n − p_0`. The paper's
    /// dense reward `Q^π + α·A^μ` is this component with `step_weight = α` beside an outcome
    /// reward.
    Progress,
}

impl StepRewardForm {
    /// The token reward of a step of probability `p` for the forms that read one step;
    /// `None` for [`StepRewardForm::None`] and [`StepRewardForm::Progress`] (see
    /// [`StepRewardForm::rewards`]).
    pub fn apply(self, p: f32) -> Option<f32> {
        match self {
            StepRewardForm::Pure => Some(pure_step_reward(p)),
            StepRewardForm::Probability => Some(p),
            StepRewardForm::None | StepRewardForm::Progress => None,
        }
    }

    /// The token rewards of a completion's steps of probabilities `probs`; `start` is `p_0`
    /// of [`StepRewardForm::Progress`]. `None` for [`StepRewardForm::None`].
    pub fn rewards(self, probs: &[f32], start: f32) -> Option<Vec<f32>> {
        match self {
            StepRewardForm::None => None,
            StepRewardForm::Progress => Some(
                std::iter::once(start)
                    .chain(probs.iter().copied())
                    .collect::<Vec<f32>>()
                    .windows(2)
                    .map(|w| w[1] - w[0])
                    .collect(),
            ),
            form => probs.iter().map(|&p| form.apply(p)).collect(),
        }
    }
}

/// The `[[reward]]` table of `kind = "process_model"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessModelSpec {
    /// A `plumb train-prm` folder (`prm.json` + the reward-model files).
    pub path: PathBuf,
    /// Where the completion is cut into steps (default `"\n"`); empty pieces are dropped.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// The component's sequence value (default `min`).
    #[serde(default = "default_aggregation")]
    pub aggregation: Aggregation,
    /// Each step's token reward (default `pure`).
    #[serde(default)]
    pub step_reward: StepRewardForm,
    /// Multiplies the step rewards (independent of the component's `weight`, which weights the
    /// sequence value; set `weight = 0` for token-level process rewards only).
    #[serde(default = "one")]
    pub step_weight: f64,
    /// Solutions per PRM batch (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// PURE's approximate min form with temperature `T` (their default credit assignment,
    /// `T = 0.1`): each completion's step rewards become `ρ_j·softmax_j(−ρ/T)`
    /// ([`crate::online::algos::approx_min_form`]) before `step_weight`, so that sum-form
    /// returns (`process_rloo` with `credit = { form = "sum" }`, REINFORCE++, GAE) approximate
    /// the min form while an outcome reward still adds on the last token. Absent: untransformed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_form_temperature: Option<f64>,
}

/// The byte ranges of the steps of `text`: the pieces between `delimiter`s, each trimmed of
/// surrounding whitespace, empty pieces dropped. An empty delimiter makes the whole (trimmed)
/// text one step.
pub fn split_steps(text: &str, delimiter: &str) -> Vec<Range<usize>> {
    let mut pieces: Vec<Range<usize>> = Vec::new();
    if delimiter.is_empty() {
        pieces.push(0..text.len());
    } else {
        let mut start = 0;
        for (at, _) in text.match_indices(delimiter) {
            pieces.push(start..at);
            start = at + delimiter.len();
        }
        pieces.push(start..text.len());
    }
    pieces
        .into_iter()
        .filter_map(|r| {
            let piece = &text[r.clone()];
            let lead = piece.len() - piece.trim_start().len();
            let trimmed = piece.trim();
            (!trimmed.is_empty()).then(|| r.start + lead..r.start + lead + trimmed.len())
        })
        .collect()
}

/// The text a PRM reads as the problem: a text prompt as it is, a conversation's last turn.
pub fn prompt_text(prompt: &Prompt) -> &str {
    match prompt {
        Prompt::Text(t) => t,
        Prompt::Conversation(c) => c.last().map_or("", |t| t.content.as_str()),
    }
}

/// The index of the token on which each step ends: for a step ending at byte `end` of the
/// completion text, the first token `k` whose decoded prefix (`covered(k)`: the length of the
/// text of tokens `0..=k`, as the completion text was made) reaches `end`; a step the tokens
/// never reach (the text was cut before a stop string) ends on the last token. The last step
/// always ends on the last token, so the trailing stop token belongs to it (and its reward
/// shares that token with any outcome reward). Binary search over the monotone `covered`.
/// `n_tokens = 0` gives no positions.
pub fn step_end_tokens(
    ends: &[usize],
    n_tokens: usize,
    mut covered: impl FnMut(usize) -> usize,
) -> Vec<usize> {
    if n_tokens == 0 {
        return Vec::new();
    }
    let mut out: Vec<usize> = ends
        .iter()
        .map(|&end| {
            let (mut lo, mut hi) = (0usize, n_tokens - 1);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if covered(mid) >= end {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            lo
        })
        .collect();
    if let Some(last) = out.last_mut() {
        *last = n_tokens - 1;
    }
    out
}

/// The PRM reward.
pub struct ProcessModelReward {
    name: String,
    spec: ProcessModelSpec,
    model: Mutex<ProcessRewardModel>,
}

impl ProcessModelReward {
    /// Loads the PRM folder and checks the settings.
    pub fn load(name: &str, spec: &ProcessModelSpec, device: &Device) -> anyhow::Result<Self> {
        let model = ProcessRewardModel::load(&spec.path, device)
            .with_context(|| format!("process_model {}", spec.path.display()))?;
        Self::from_model(name, spec, model)
    }

    /// A loaded PRM (`spec.path` is only used in messages).
    pub fn from_model(
        name: &str,
        spec: &ProcessModelSpec,
        model: ProcessRewardModel,
    ) -> anyhow::Result<Self> {
        if spec.batch_size == Some(0) {
            anyhow::bail!("process_model: batch_size must be at least 1");
        }
        if let Some(t) = spec.min_form_temperature
            && !(t.is_finite() && t > 0.0)
        {
            anyhow::bail!("process_model: min_form_temperature {t} must be a finite number > 0");
        }
        if !spec.step_weight.is_finite() {
            anyhow::bail!(
                "process_model: step_weight {} is not a finite number",
                spec.step_weight
            );
        }
        Ok(Self {
            name: name.to_string(),
            spec: spec.clone(),
            model: Mutex::new(model),
        })
    }

    fn score_one(
        &self,
        steps: &[Range<usize>],
        probs: &[f32],
        start: f32,
    ) -> Result<Scored, RewardError> {
        if probs.len() != steps.len() {
            return Err(RewardError::WrongCount {
                expected: steps.len(),
                got: probs.len(),
            });
        }
        let value = self
            .spec
            .aggregation
            .apply(probs)
            .map_err(|e| RewardError::Model(format!("{e:#}")))?;
        let value = finite(value as f32)?;
        let Some(mut rho) = self.spec.step_reward.rewards(probs, start) else {
            return Ok(Scored {
                value,
                steps: Vec::new(),
            });
        };
        if let Some(t) = self.spec.min_form_temperature {
            rho = approx_min_form(std::slice::from_ref(&rho), &[vec![1.0; rho.len()]], t)
                .map_err(|e| RewardError::Model(e.to_string()))?
                .remove(0);
        }
        let steps = steps
            .iter()
            .zip(rho)
            .map(|(r, x)| StepReward {
                end: r.end,
                reward: (f64::from(x) * self.spec.step_weight) as f32,
            })
            .collect();
        Ok(Scored { value, steps })
    }
}

impl RewardFunction for ProcessModelReward {
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
        let model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        let batch = self.spec.batch_size.unwrap_or(DEFAULT_PRM_BATCH);
        let steps: Vec<Vec<Range<usize>>> = samples
            .iter()
            .map(|s| split_steps(s.completion, &self.spec.delimiter))
            .collect();
        let solution = |i: usize| -> (&str, Vec<&str>) {
            let text = samples[i].completion;
            (
                prompt_text(samples[i].prompt),
                steps[i].iter().map(|r| &text[r.clone()]).collect(),
            )
        };
        let scorable: Vec<usize> = (0..samples.len())
            .filter(|&i| !steps[i].is_empty())
            .collect();
        let solutions: Vec<(&str, Vec<&str>)> = scorable.iter().map(|&i| solution(i)).collect();
        let mut probs: Vec<Option<Result<Vec<f32>, RewardError>>> = vec![None; samples.len()];
        match model.score_batch(&solutions, batch) {
            Ok(all) if all.len() == scorable.len() => {
                for (&i, p) in scorable.iter().zip(all) {
                    probs[i] = Some(Ok(p));
                }
            }
            _ => {
                for &i in &scorable {
                    probs[i] = Some(
                        model
                            .score_batch(&[solution(i)], 1)
                            .map_err(|e| RewardError::Model(format!("{e:#}")))
                            .and_then(|mut v| {
                                v.pop().ok_or(RewardError::WrongCount {
                                    expected: 1,
                                    got: 0,
                                })
                            }),
                    );
                }
            }
        }
        // Progress's p_0: the mean first-step probability of each prompt's scored completions.
        let starts: Vec<f32> = (0..samples.len())
            .map(|i| {
                let firsts: Vec<f32> = (0..samples.len())
                    .filter(|&j| samples[j].prompt == samples[i].prompt)
                    .filter_map(|j| match &probs[j] {
                        Some(Ok(p)) => p.first().copied(),
                        _ => None,
                    })
                    .collect();
                firsts.iter().sum::<f32>() / firsts.len().max(1) as f32
            })
            .collect();
        probs
            .into_iter()
            .enumerate()
            .map(|(i, p)| match p {
                None => Err(RewardError::Model(
                    "the completion has no step to score".into(),
                )),
                Some(p) => p.and_then(|p| self.score_one(&steps[i], &p, starts[i])),
            })
            .collect()
    }
}

/// A fresh one-pass PRM (step separator ` w6`, head init std 0.5, seed 3) on the tiny test
/// Llama at `backbone` (`rm_core::fixtures::write_tiny_llama`).
#[cfg(test)]
pub(crate) fn tiny_prm(backbone: &std::path::Path, max_len: usize) -> ProcessRewardModel {
    ProcessRewardModel::build(
        &rm_core::models::reward::RewardModelConfig {
            backbone: backbone.to_path_buf(),
            pooling: None,
            max_len,
            truncation: rm_core::tokenize::TruncationSide::Left,
            attributes: vec!["step_correct".into()],
            template: Some(rm_core::chat::ChatTemplate::Plain),
            lora: None,
            head_init_std: 0.5,
        },
        rm_process::PrmShape::OnePass {
            separator: " w6".into(),
        },
        3,
        &rm_core::device::test_device(),
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_trimmed_pieces_between_delimiters_with_byte_ranges() {
        let text = "  a = 1\n\nb = 2 \nc";
        let r = split_steps(text, "\n");
        let pieces: Vec<&str> = r.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(pieces, ["a = 1", "b = 2", "c"]);
        assert_eq!(r, [2..7, 9..14, 16..17]);
        let r = split_steps(text, "\n\n");
        assert_eq!(r, [2..7, 9..17]);
        assert_eq!(split_steps(" x ", ""), [Range { start: 1, end: 2 }]);
        assert!(split_steps(" \n \n", "\n").is_empty());
        // A multi-byte character before a delimiter keeps byte offsets right.
        let text = "é\nü";
        let r = split_steps(text, "\n");
        assert_eq!(r, [0..2, 3..5]);
    }

    #[test]
    fn step_ends_map_to_the_first_token_covering_them_and_the_last_step_to_the_last_token() {
        // Tokens decode to "ab", "c\n", "de", "f", "<eos>" (nothing): prefix lengths 2 4 6 7 7.
        let covered = [2usize, 4, 6, 7, 7];
        let mut calls = 0;
        let ends = step_end_tokens(&[3, 5, 7], 5, |k| {
            calls += 1;
            covered[k]
        });
        // "abc" ends at byte 3 → token 1; "de" ends at 5 → token 2; the last step → token 4.
        assert_eq!(ends, [1, 2, 4]);
        assert!(calls <= 3 * 3, "binary search: {calls} decodes");
        // A step past what the tokens cover ends on the last token.
        assert_eq!(step_end_tokens(&[100, 200], 3, |_| 1), [2, 2]);
        assert!(step_end_tokens(&[1], 0, |_| 0).is_empty());
        assert!(step_end_tokens(&[], 4, |_| 0).is_empty());
    }

    /// The function's values and step rewards are the PRM's own step probabilities (scored
    /// here directly on the hand-split steps) aggregated and transformed; a completion without
    /// steps is masked in the set, the others are not.
    #[test]
    fn a_prm_gives_the_aggregated_value_and_pure_step_rewards_at_each_steps_end() {
        let dir = std::env::temp_dir().join(format!("po-process-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        rm_core::fixtures::write_tiny_llama(&dir.join("base"), 5).unwrap();
        let prm = tiny_prm(&dir.join("base"), 48);
        let direct = prm.score_steps("w1 w2", &["w3 w4", "w5"]).unwrap();
        let single = prm.score_steps("w1 w2", &["w7"]).unwrap();
        let spec = ProcessModelSpec {
            path: dir.clone(),
            delimiter: "\n".into(),
            aggregation: Aggregation::Min,
            step_reward: StepRewardForm::Pure,
            step_weight: 2.0,
            batch_size: Some(2),
            min_form_temperature: None,
        };
        let f = ProcessModelReward::from_model("prm", &spec, prm).unwrap();
        let prompt = Prompt::Text("w1 w2".into());
        let sample = |completion| RewardSample {
            prompt: &prompt,
            completion,
            references: &[],
            truncated: false,
        };
        let samples = [sample(" w3 w4\n\nw5\n"), sample("  "), sample("w7")];
        let out = f.score_with_steps(&samples);
        let first = out[0].as_ref().unwrap();
        assert!((first.value - direct[0].min(direct[1])).abs() < 1e-6);
        assert_eq!(first.steps.len(), 2);
        assert_eq!((first.steps[0].end, first.steps[1].end), (6, 10));
        for (s, p) in first.steps.iter().zip(&direct) {
            assert!((s.reward - 2.0 * (2.0 * p - 1.0)).abs() < 1e-5);
        }
        assert!(matches!(out[1], Err(RewardError::Model(_))));
        let third = out[2].as_ref().unwrap();
        assert!((third.value - single[0]).abs() < 1e-6);
        assert_eq!(third.steps[0].end, 2);
        assert_eq!(
            f.score_batch(&samples[..1]),
            vec![Ok(first.value)],
            "score_batch is the value of score_with_steps"
        );

        // PURE's soft-min transform: weights softmax(−ρ/T) over the completion's two steps.
        let rho: Vec<f64> = direct.iter().map(|&p| 2.0 * f64::from(p) - 1.0).collect();
        let soft = ProcessModelReward::from_model(
            "prm",
            &ProcessModelSpec {
                min_form_temperature: Some(0.5),
                ..spec.clone()
            },
            tiny_prm(&dir.join("base"), 48),
        )
        .unwrap();
        let z: f64 = rho.iter().map(|r| (-r / 0.5).exp()).sum();
        let got = soft.score_with_steps(&samples[..1]).remove(0).unwrap();
        for (s, r) in got.steps.iter().zip(&rho) {
            let want = 2.0 * r * (-r / 0.5).exp() / z;
            assert!(
                (f64::from(s.reward) - want).abs() < 1e-5,
                "{} vs {want}",
                s.reward
            );
        }
        assert!(
            ProcessModelReward::from_model(
                "prm",
                &ProcessModelSpec {
                    min_form_temperature: Some(0.0),
                    ..spec.clone()
                },
                tiny_prm(&dir.join("base"), 48),
            )
            .is_err()
        );

        let set = super::super::RewardSet::from_components(vec![super::super::RewardComponent {
            name: "prm".into(),
            weight: 0.5,
            clip: None,
            function: Box::new(f),
        }])
        .unwrap();
        let scored = set.score(&samples);
        assert!((scored[0].total.unwrap() - 0.5 * first.value).abs() < 1e-6);
        assert_eq!(
            scored[0].steps, first.steps,
            "step rewards are not scaled by weight"
        );
        assert_eq!((scored[1].total, scored[1].steps.len()), (None, 0));
        assert!(scored[1].errors[0].starts_with("prm: reward model: "));
        assert!(scored[2].total.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn step_reward_forms() {
        assert_eq!(StepRewardForm::Pure.apply(0.75), Some(0.5));
        assert_eq!(StepRewardForm::Pure.apply(0.0), Some(-1.0));
        assert_eq!(StepRewardForm::Probability.apply(0.75), Some(0.75));
        assert_eq!(StepRewardForm::None.apply(0.75), None);
        assert_eq!(StepRewardForm::None.rewards(&[0.5], 0.0), None);
        assert_eq!(
            StepRewardForm::Pure.rewards(&[0.75, 0.0], 0.3),
            Some(vec![0.5, -1.0])
        );
        // Progress: 0.5 − 0.25, 0.875 − 0.5, 0.125 − 0.875.
        assert_eq!(
            StepRewardForm::Progress.rewards(&[0.5, 0.875, 0.125], 0.25),
            Some(vec![0.25, 0.375, -0.75])
        );
    }

    /// `step_reward = "progress"` in a call with two completions of one prompt and one of
    /// another: each prompt's `p_0` is its completions' mean first-step probability, and a
    /// completion's step rewards are the differences from there (checked against the PRM's own
    /// probabilities).
    #[test]
    fn progress_rewards_start_from_the_prompts_mean_first_step() {
        let dir = std::env::temp_dir().join(format!("po-progress-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        rm_core::fixtures::write_tiny_llama(&dir.join("base"), 5).unwrap();
        let prm = tiny_prm(&dir.join("base"), 48);
        let a = prm.score_steps("w1 w2", &["w3 w4", "w5"]).unwrap();
        let b = prm.score_steps("w1 w2", &["w7"]).unwrap();
        let c = prm.score_steps("w9", &["w3 w4", "w8"]).unwrap();
        let spec = ProcessModelSpec {
            path: dir.clone(),
            delimiter: "\n".into(),
            aggregation: Aggregation::Last,
            step_reward: StepRewardForm::Progress,
            step_weight: 1.0,
            batch_size: None,
            min_form_temperature: None,
        };
        let f = ProcessModelReward::from_model("pav", &spec, prm).unwrap();
        let (p, q) = (Prompt::Text("w1 w2".into()), Prompt::Text("w9".into()));
        let sample = |prompt, completion| RewardSample {
            prompt,
            completion,
            references: &[],
            truncated: false,
        };
        let out = f.score_with_steps(&[
            sample(&p, "w3 w4\nw5"),
            sample(&p, "w7"),
            sample(&q, "w3 w4\nw8"),
        ]);
        let start_p = (a[0] + b[0]) / 2.0;
        let want = [
            vec![a[0] - start_p, a[1] - a[0]],
            vec![b[0] - start_p],
            vec![0.0, c[1] - c[0]],
        ];
        for (got, want) in out.iter().zip(&want) {
            let got: Vec<f32> = got
                .as_ref()
                .unwrap()
                .steps
                .iter()
                .map(|s| s.reward)
                .collect();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
