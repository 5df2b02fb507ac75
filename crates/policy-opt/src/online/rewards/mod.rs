//! Reward functions for online RL (GRPO / PPO): prompt + completion → one scalar per sample,
//! composed with weights into a [`RewardSet`].
//!
//! One concern per file:
//! - [`model`]: a trained reward model (`plumb train-rm` folder), transforms as `plumb score`;
//! - [`math`]: GSM8K-style verifiable answers (verl's `gsm8k` reward);
//! - [`format`](mod@format): a regex and/or required `<tag>…</tag>` sections;
//! - [`length`]: a target length (L1 / LCPO) or DAPO's soft overlong punishment;
//! - [`keywords`]: required / forbidden keywords;
//! - [`overlap`]: BLEU (BLEUBERI) and ROUGE-L against reference texts;
//! - [`process`](mod@process): a process reward model — a sequence value by an aggregation of
//!   its step scores, and per-step rewards the trainer places on each step's last token;
//! - [`progress_bonus`]: MRT's progress bonus — each episode's change in a prover's chance of
//!   answering right;
//! - [`shaping`]: pure functions on rewards — clipping, Gao et al.'s Clip and Delta mechanisms.
//!
//! # Failures mask samples, never the batch
//!
//! A [`RewardFunction`] returns one `Result` per sample: an `Err` (a reward model that cannot
//! score a text, a sample with no reference when the function needs one, a NaN or an infinity)
//! masks that sample only — its [`ScoredSample::total`] is `None` and the trainer gives it no
//! reward — and the run goes on.
//!
//! # Hybrid rewards
//!
//! "Beyond Monolithic Rewards: A Hybrid and Multi-Aspect Reward Optimization for MLLM Alignment"
//! (Gulhane & Indurthi 2025, arXiv 2510.05283) combines a learned reward model with rule-based (verifiable) rewards
//! and a length penalty. Here that is a [`RewardSet`] with a `reward_model`, a rule component
//! (`gsm8k`, `format`, `keywords`) and a `length` component:
//! `r = w_model·r_model + w_rule·r_rule + w_len·r_len`, each term clipped to its own range first.
//!
//! # Recipes
//!
//! Components are `[[reward]]` tables:
//! ```toml
//! [[reward]]
//! kind = "gsm8k"
//! weight = 1.0
//! [[reward]]
//! kind = "format"
//! pattern = "####"
//! weight = 0.2
//! ```

pub mod follow_up;
pub mod format;
pub mod keywords;
pub mod length;
pub mod math;
pub mod model;
pub mod overlap;
pub mod process;
pub mod progress_bonus;
pub mod shaping;

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, bail};
use rm_core::burn::tensor::Device;
use rm_core::types::Prompt;
use serde::{Deserialize, Serialize};

pub use follow_up::{FollowUpReward, FollowUpSpec};
pub use format::{FormatReward, FormatSpec};
pub use keywords::{KeywordsReward, KeywordsSpec};
pub use length::{LengthReward, LengthSpec, LengthUnit};
pub use math::{AnswerExtraction, Gsm8kReward, Gsm8kSpec, extract_answer, parse_number};
pub use model::{ModelReward, RewardModelSpec, RmTransform};
pub use overlap::{BleuReward, BleuSmoothing, BleuSpec, RougeLReward, RougeLSpec, bleu, rouge_l};
pub use process::{ProcessModelReward, ProcessModelSpec, StepRewardForm, split_steps};
pub use progress_bonus::{ProgressBonusReward, ProgressBonusSpec};
pub use shaping::{clip_process_rewards, clip_reward, delta_process_rewards};

/// One sample to score: a prompt and the policy's completion.
#[derive(Clone, Copy, Debug)]
pub struct RewardSample<'a> {
    pub prompt: &'a Prompt,
    pub completion: &'a str,
    /// gold answer / reference text(s) of the prompt, when the dataset has them (GSM8K final answer, HH chosen response)
    pub references: &'a [String],
    /// the completion hit max_new_tokens without a stop
    pub truncated: bool,
}

/// Why one sample got no reward from one function.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RewardError {
    /// The function produced NaN or ±∞.
    #[error("non-finite reward {0}")]
    NonFinite(f32),
    /// The function needs a reference (gold answer, reference text) and the sample has none.
    #[error("the sample has no reference ({0})")]
    MissingReference(&'static str),
    /// The sample's reference is unusable (e.g. a GSM8K gold answer that is not a number).
    #[error("bad reference: {0}")]
    BadReference(String),
    /// The reward model failed on this sample.
    #[error("reward model: {0}")]
    Model(String),
    /// The function returned a different number of results than samples.
    #[error("{got} results for {expected} samples")]
    WrongCount { expected: usize, got: usize },
}

/// A process reward of one step of a completion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReward {
    /// Where the step ends: a byte offset into the completion text (exclusive).
    pub end: usize,
    pub reward: f32,
}

/// A sample's value and its step rewards (none for outcome-only functions).
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub value: f32,
    pub steps: Vec<StepReward>,
}

/// A reward function over prompt + completion.
pub trait RewardFunction: Send + Sync {
    fn name(&self) -> &str;
    /// one result per sample, in order; an Err masks that sample (gets no reward) — the run goes on
    fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>>;
    /// [`RewardFunction::score_batch`] with per-step rewards: process rewards override it; the
    /// default has no steps.
    fn score_with_steps(&self, samples: &[RewardSample<'_>]) -> Vec<Result<Scored, RewardError>> {
        self.score_batch(samples)
            .into_iter()
            .map(|r| {
                r.map(|value| Scored {
                    value,
                    steps: Vec::new(),
                })
            })
            .collect()
    }
}

/// Which reward function a `[[reward]]` table builds (`kind = "…"`) and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RewardSpec {
    /// A trained reward model folder ([`model`]).
    RewardModel {
        path: PathBuf,
        /// `"raw"` (default), `"normalized"` or `{ log_sigmoid = { reference = "…" } }`.
        #[serde(default)]
        transform: RmTransform,
        /// Texts per forward pass (default 8).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch_size: Option<usize>,
        /// Which of the model's attributes is the reward (default: the first).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attribute: Option<String>,
    },
    /// GSM8K final-answer correctness ([`math`]).
    Gsm8k(Gsm8kSpec),
    /// Regex / required sections ([`format`](mod@format)).
    Format(FormatSpec),
    /// Target length or overlong penalty ([`length`]).
    Length(LengthSpec),
    /// Required / forbidden keywords ([`keywords`]).
    Keywords(KeywordsSpec),
    /// Sentence BLEU against the references ([`overlap`]).
    Bleu(BleuSpec),
    /// ROUGE-L F-measure against the references ([`overlap`]).
    RougeL(RougeLSpec),
    /// A judge LM's likelihood of a positive vs a negative user follow-up ([`follow_up`]).
    FollowUp(FollowUpSpec),
    /// A process reward model: aggregated step scores, and step rewards at each step's end
    /// ([`process`](mod@process)).
    ProcessModel(ProcessModelSpec),
    /// MRT's progress bonus: each episode's change in a prover's chance of answering right
    /// ([`progress_bonus`]).
    ProgressBonus(ProgressBonusSpec),
}

impl RewardSpec {
    /// The `kind` string: the default component name.
    pub fn kind_name(&self) -> &'static str {
        match self {
            RewardSpec::RewardModel { .. } => "reward_model",
            RewardSpec::Gsm8k(_) => "gsm8k",
            RewardSpec::Format(_) => "format",
            RewardSpec::Length(_) => "length",
            RewardSpec::Keywords(_) => "keywords",
            RewardSpec::Bleu(_) => "bleu",
            RewardSpec::RougeL(_) => "rouge_l",
            RewardSpec::FollowUp(_) => "follow_up",
            RewardSpec::ProcessModel(_) => "process_model",
            RewardSpec::ProgressBonus(_) => "progress_bonus",
        }
    }

    /// Builds the function, checking its settings (a bad regex, an empty keyword list, a reward
    /// model folder that does not load, …). `name` is what the function reports.
    pub fn build(&self, name: &str, device: &Device) -> anyhow::Result<Box<dyn RewardFunction>> {
        Ok(match self {
            RewardSpec::RewardModel {
                path,
                transform,
                batch_size,
                attribute,
            } => Box::new(ModelReward::load(
                name,
                &RewardModelSpec {
                    path: path.clone(),
                    transform: transform.clone(),
                    batch_size: batch_size.unwrap_or(model::DEFAULT_BATCH_SIZE),
                    attribute: attribute.clone(),
                },
                device,
            )?),
            RewardSpec::Gsm8k(spec) => Box::new(Gsm8kReward::new(name, spec.clone())?),
            RewardSpec::Format(spec) => Box::new(FormatReward::new(name, spec)?),
            RewardSpec::Length(spec) => Box::new(LengthReward::new(name, spec)?),
            RewardSpec::Keywords(spec) => Box::new(KeywordsReward::new(name, spec)?),
            RewardSpec::Bleu(spec) => Box::new(BleuReward::new(name, spec.clone())?),
            RewardSpec::RougeL(spec) => Box::new(RougeLReward::new(name, spec.clone())?),
            RewardSpec::FollowUp(spec) => Box::new(FollowUpReward::load(name, spec, device)?),
            RewardSpec::ProcessModel(spec) => {
                Box::new(ProcessModelReward::load(name, spec, device)?)
            }
            RewardSpec::ProgressBonus(spec) => {
                Box::new(ProgressBonusReward::load(name, spec, device)?)
            }
        })
    }
}

fn one() -> f64 {
    1.0
}

/// A `[[reward]]` table: a reward function with its weight and optional clip range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardComponentConfig {
    /// defaults to the kind
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(flatten)]
    pub spec: RewardSpec,
    /// optional clip range applied to this component
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<[f64; 2]>,
}

/// A built component of a [`RewardSet`].
pub struct RewardComponent {
    pub name: String,
    pub weight: f64,
    /// `[low, high]`: the component's value is clamped into it before weighting.
    pub clip: Option<[f64; 2]>,
    pub function: Box<dyn RewardFunction>,
}

/// Per-prompt weights of the components (the Preference Orchestrator,
/// `super::orchestrate::OrchestratorWeighting`): with one, a sample's total is
/// `Σ_i w_i · v_i(x) · z_i(clip_i(r_i))`, its prompt's weights `v(x)` times each component's
/// standardized value.
pub trait PromptWeighting: Send + Sync {
    /// The component names it weighs, in its order.
    fn objectives(&self) -> &[String];
    /// `v(x)` of each prompt, in [`PromptWeighting::objectives`] order.
    fn weights(&self, prompts: &[&Prompt]) -> anyhow::Result<Vec<Vec<f64>>>;
    /// `z` of objective `objective`'s raw value.
    fn standardize(&self, objective: usize, value: f64) -> f64;
}

struct Weighting {
    function: Box<dyn PromptWeighting>,
    /// The objective index of each component.
    objective_of: Vec<usize>,
}

/// Weighted reward functions: `total = Σ_i w_i · clip_i(r_i)`, or with a [`PromptWeighting`]
/// `Σ_i w_i · v_i(x) · z_i(clip_i(r_i))`.
pub struct RewardSet {
    components: Vec<RewardComponent>,
    weighting: Option<Weighting>,
}

/// The rewards of one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredSample {
    /// Σ weight·component (after each component's clip); None when any component failed on this sample (the sample is masked)
    pub total: Option<f32>,
    pub components: Vec<Option<f32>>,
    /// "component: message" for each failure
    pub errors: Vec<String>,
    /// The process rewards of every component that gives them, as they give them (a
    /// `process_model` scales them by its `step_weight`, not by its `weight`); empty when the
    /// sample is masked or no component gives step rewards.
    pub steps: Vec<StepReward>,
}

impl RewardSet {
    /// Builds every component of a recipe's `[[reward]]` tables. Errors: no component, a
    /// duplicate name (two components of one kind need explicit `name`s), a non-finite weight,
    /// a clip range that is not finite with low ≤ high, and any component's own build error.
    pub fn build(
        components: &[RewardComponentConfig],
        device: &Device,
    ) -> anyhow::Result<RewardSet> {
        if components.is_empty() {
            bail!("no reward components: add at least one [[reward]] table");
        }
        let mut built = Vec::with_capacity(components.len());
        for (i, c) in components.iter().enumerate() {
            let name = c
                .name
                .clone()
                .unwrap_or_else(|| c.spec.kind_name().to_string());
            let function = c
                .spec
                .build(&name, device)
                .with_context(|| format!("reward component {} ({name:?})", i + 1))?;
            built.push(RewardComponent {
                name,
                weight: c.weight,
                clip: c.clip,
                function,
            });
        }
        Self::from_components(built)
    }

    /// A set of already built functions (custom [`RewardFunction`]s included), checked as
    /// [`RewardSet::build`] checks a recipe.
    pub fn from_components(components: Vec<RewardComponent>) -> anyhow::Result<RewardSet> {
        if components.is_empty() {
            bail!("no reward components: add at least one [[reward]] table");
        }
        let mut seen = HashSet::new();
        for c in &components {
            if c.name.is_empty() {
                bail!("a reward component has an empty name");
            }
            if !seen.insert(c.name.as_str()) {
                bail!(
                    "two reward components are named {:?}: give each a distinct `name`",
                    c.name
                );
            }
            if !c.weight.is_finite() {
                bail!(
                    "reward component {:?}: weight {} is not a finite number",
                    c.name,
                    c.weight
                );
            }
            if let Some([lo, hi]) = c.clip
                && !(lo.is_finite() && hi.is_finite() && lo <= hi)
            {
                bail!(
                    "reward component {:?}: clip [{lo}, {hi}] must be two finite numbers with low ≤ high",
                    c.name
                );
            }
        }
        Ok(RewardSet {
            components,
            weighting: None,
        })
    }

    /// Weighs the components per prompt from now on. Errors: the weighting's objectives are
    /// not exactly the components (either side's extra names are listed).
    pub fn set_prompt_weighting(
        &mut self,
        function: Box<dyn PromptWeighting>,
    ) -> anyhow::Result<()> {
        let names = self.component_names();
        let objectives = function.objectives();
        let missing: Vec<&String> = names.iter().filter(|n| !objectives.contains(n)).collect();
        let extra: Vec<&String> = objectives.iter().filter(|o| !names.contains(o)).collect();
        if !missing.is_empty() || !extra.is_empty() {
            bail!(
                "the prompt weighting's objectives {objectives:?} must be the reward components {names:?} (components it does not weigh: {missing:?}; objectives with no component: {extra:?})"
            );
        }
        let objective_of = names
            .iter()
            .map(|n| objectives.iter().position(|o| o == n).expect("checked"))
            .collect();
        self.weighting = Some(Weighting {
            function,
            objective_of,
        });
        Ok(())
    }

    /// Whether a [`PromptWeighting`] is set.
    pub fn is_prompt_weighted(&self) -> bool {
        self.weighting.is_some()
    }

    /// Each sample's component multipliers: `w_i`, or `w_i · v_i(x)` with a weighting (one
    /// weighting call for the distinct prompts). `Err` when the weighting failed.
    fn multipliers(&self, samples: &[RewardSample<'_>]) -> Result<Vec<Vec<f64>>, String> {
        let fixed = self.weights();
        let Some(w) = &self.weighting else {
            return Ok(vec![fixed; samples.len()]);
        };
        let mut distinct: Vec<&Prompt> = Vec::new();
        let slot: Vec<usize> = samples
            .iter()
            .map(|s| match distinct.iter().position(|p| *p == s.prompt) {
                Some(i) => i,
                None => {
                    distinct.push(s.prompt);
                    distinct.len() - 1
                }
            })
            .collect();
        let per_prompt = w
            .function
            .weights(&distinct)
            .map_err(|e| format!("{e:#}"))?;
        if per_prompt.len() != distinct.len()
            || per_prompt.iter().any(|v| {
                v.len() != w.function.objectives().len() || v.iter().any(|x| !x.is_finite())
            })
        {
            return Err("the prompt weighting gave malformed weights".into());
        }
        Ok(slot
            .iter()
            .map(|&p| {
                fixed
                    .iter()
                    .zip(&w.objective_of)
                    .map(|(c, &o)| c * per_prompt[p][o])
                    .collect()
            })
            .collect())
    }

    /// Component names, in order (the order of [`ScoredSample::components`]).
    pub fn component_names(&self) -> Vec<String> {
        self.components.iter().map(|c| c.name.clone()).collect()
    }

    /// The components' weights, in order.
    pub fn weights(&self) -> Vec<f64> {
        self.components.iter().map(|c| c.weight).collect()
    }

    /// Scores every sample with every component. A component's non-finite value is an error
    /// for that sample; a component returning the wrong number of results fails every sample.
    pub fn score(&self, samples: &[RewardSample<'_>]) -> Vec<ScoredSample> {
        let mut out: Vec<ScoredSample> = samples
            .iter()
            .map(|_| ScoredSample {
                total: None,
                components: Vec::with_capacity(self.components.len()),
                errors: Vec::new(),
                steps: Vec::new(),
            })
            .collect();
        let mut totals = vec![Some(0f64); samples.len()];
        let multipliers = match self.multipliers(samples) {
            Ok(m) => m,
            Err(e) => {
                for scored in &mut out {
                    scored.errors.push(format!("prompt weighting: {e}"));
                }
                totals = vec![None; samples.len()];
                vec![Vec::new(); samples.len()]
            }
        };
        for (ci, c) in self.components.iter().enumerate() {
            let mut results = c.function.score_with_steps(samples);
            if results.len() != samples.len() {
                let e = RewardError::WrongCount {
                    expected: samples.len(),
                    got: results.len(),
                };
                results = vec![Err(e); samples.len()];
            }
            for (((scored, total), result), m) in out
                .iter_mut()
                .zip(&mut totals)
                .zip(results)
                .zip(&multipliers)
            {
                let result = result.and_then(|s| {
                    finite(s.value)?;
                    match s.steps.iter().find(|x| !x.reward.is_finite()) {
                        Some(x) => Err(RewardError::NonFinite(x.reward)),
                        None => Ok(s),
                    }
                });
                match result {
                    Ok(Scored { value: v, steps }) => {
                        scored.steps.extend(steps);
                        let v = match c.clip {
                            Some([lo, hi]) => clip_reward(v as f64, lo, hi) as f32,
                            None => v,
                        };
                        scored.components.push(Some(v));
                        if let Some(t) = total {
                            let value = match &self.weighting {
                                Some(w) => w.function.standardize(w.objective_of[ci], v as f64),
                                None => v as f64,
                            };
                            *t += m[ci] * value;
                        }
                    }
                    Err(e) => {
                        scored.components.push(None);
                        scored.errors.push(format!("{}: {e}", c.name));
                        *total = None;
                    }
                }
            }
        }
        for (scored, total) in out.iter_mut().zip(totals) {
            if total.is_none() {
                scored.steps.clear();
            }
            scored.total = total.map(|t| t as f32).filter(|t| t.is_finite());
            if total.is_some() && scored.total.is_none() {
                scored.errors.push("total: non-finite weighted sum".into());
            }
        }
        out
    }
}

/// `Ok(v)` when `v` is finite, else [`RewardError::NonFinite`].
pub fn finite(v: f32) -> Result<f32, RewardError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(RewardError::NonFinite(v))
    }
}

/// Scores every sample with `f` on its own: the fallback of functions whose batched call
/// failed.
pub(crate) fn per_sample<'s>(
    samples: &[RewardSample<'s>],
    f: impl Fn(&RewardSample<'s>) -> Result<f32, RewardError>,
) -> Vec<Result<f32, RewardError>> {
    samples.iter().map(|s| f(s).and_then(finite)).collect()
}

#[cfg(test)]
mod tests;
