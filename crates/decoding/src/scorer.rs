//! What the strategies steer by: anything that turns (prompt, response) pairs into rewards.

use rm_core::models::reward::RewardModelBundle;
use rm_core::types::Prompt;

use crate::error::{DecodeError, Result};

/// A reward for (prompt, response) pairs: a reward model, a heuristic, a closed form in a test.
pub trait Scorer {
    /// One reward per pair, in order; higher is better.
    fn score(&mut self, pairs: &[(&Prompt, &str)]) -> Result<Vec<f32>>;

    /// The step-level scorer behind this scorer, for the PRM-guided searches (beam search,
    /// DVTS, MCTS); `None` (the default) for scorers that only score whole responses.
    fn steps(&mut self) -> Option<&mut dyn StepScorer> {
        None
    }
}

/// A process reward: for each partial solution (a prompt and the texts of its steps so far),
/// the probability that each step is correct, in `[0, 1]`, one per step, in order.
pub trait StepScorer {
    fn score_steps(&mut self, solutions: &[(&Prompt, Vec<&str>)]) -> Result<Vec<Vec<f32>>>;
}

/// A trained reward model (`plumb train-rm`) scores with its first attribute, the raw head
/// output r(x, y), texts rendered with the model's own template, 16 texts per forward pass.
impl Scorer for RewardModelBundle {
    fn score(&mut self, pairs: &[(&Prompt, &str)]) -> Result<Vec<f32>> {
        let texts: Vec<String> = pairs
            .iter()
            .map(|(p, r)| self.text(p, r))
            .collect::<anyhow::Result<_>>()
            .map_err(|e| DecodeError::Scorer(format!("{e:#}")))?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let rewards = self
            .score_texts(&refs, 16)
            .map_err(|e| DecodeError::Scorer(format!("{e:#}")))?;
        Ok(rewards.into_iter().map(|r| r[0]).collect())
    }
}

/// An ensemble folder (`plumb train-rm` with `[ensemble]`, rm-ensembles) scores with its
/// aggregation (mean, median, min, mean − λ·std, BRME; see [`rm_ensembles::Aggregation`]) of
/// the members' first attribute, each member on its stored normalized scale.
impl Scorer for rm_ensembles::EnsembleScorer {
    fn score(&mut self, pairs: &[(&Prompt, &str)]) -> Result<Vec<f32>> {
        let items: Vec<bench_harness::ScoreItem<'_>> = pairs
            .iter()
            .map(|&(prompt, response)| bench_harness::ScoreItem { prompt, response })
            .collect();
        bench_harness::Scorer::score(self, &items)
            .map_err(|e| DecodeError::Scorer(format!("{e:#}")))
    }
}

/// A DMoERM folder (`plumb multiobj dmoerm`) scores with its routed task's aggregated reward
/// ([`rm_multiobj::dmoerm`]), 16 texts per forward pass.
impl Scorer for rm_multiobj::dmoerm::DmoermModel {
    fn score(&mut self, pairs: &[(&Prompt, &str)]) -> Result<Vec<f32>> {
        Ok(self
            .score_items(pairs, 16)
            .map_err(|e| DecodeError::Scorer(format!("{e:#}")))?
            .into_iter()
            .map(|s| s.reward as f32)
            .collect())
    }
}

/// A scorer from a closure `f(prompt, response) → reward` (keyword or length rewards, tests).
pub struct FnScorer<F>(pub F);

impl<F: FnMut(&Prompt, &str) -> f32> Scorer for FnScorer<F> {
    fn score(&mut self, pairs: &[(&Prompt, &str)]) -> Result<Vec<f32>> {
        Ok(pairs.iter().map(|(p, r)| (self.0)(p, r)).collect())
    }
}

/// A step scorer from a closure `f(prompt, steps) → one probability per step` (tests).
pub struct FnStepScorer<F>(pub F);

impl<F: FnMut(&Prompt, &[&str]) -> Vec<f32>> StepScorer for FnStepScorer<F> {
    fn score_steps(&mut self, solutions: &[(&Prompt, Vec<&str>)]) -> Result<Vec<Vec<f32>>> {
        Ok(solutions.iter().map(|(p, s)| (self.0)(p, s)).collect())
    }
}

/// Wraps a scorer: counts calls and texts, checks the answer's length and finiteness.
pub(crate) struct Counted<'a> {
    inner: &'a mut dyn Scorer,
    pub calls: usize,
    pub texts: usize,
}

impl<'a> Counted<'a> {
    pub fn new(inner: &'a mut dyn Scorer) -> Self {
        Self {
            inner,
            calls: 0,
            texts: 0,
        }
    }

    /// Rewards of `responses` to `prompt` (one scorer call).
    pub fn score(&mut self, prompt: &Prompt, responses: &[&str]) -> Result<Vec<f32>> {
        let pairs: Vec<(&Prompt, &str)> = responses.iter().map(|r| (prompt, *r)).collect();
        let out = self.inner.score(&pairs)?;
        self.calls += 1;
        self.texts += pairs.len();
        if out.len() != pairs.len() {
            return Err(DecodeError::Scorer(format!(
                "returned {} rewards for {} texts",
                out.len(),
                pairs.len()
            )));
        }
        if let Some(i) = out.iter().position(|r| !r.is_finite()) {
            return Err(DecodeError::Scorer(format!(
                "reward {} of text {i} is not finite",
                out[i]
            )));
        }
        Ok(out)
    }

    /// Step probabilities of `solutions` (each a list of step texts) to `prompt` (one call of
    /// the step scorer, counted like a reward call); each answer is checked to have one
    /// probability in `[0, 1]` per step.
    pub fn step_scores(
        &mut self,
        prompt: &Prompt,
        solutions: &[Vec<&str>],
    ) -> Result<Vec<Vec<f32>>> {
        let steps = self.inner.steps().ok_or_else(|| {
            DecodeError::config(
                "scorer",
                "the PRM-guided searches need a process reward model (--prm DIR)",
            )
        })?;
        let batch: Vec<(&Prompt, Vec<&str>)> =
            solutions.iter().map(|s| (prompt, s.clone())).collect();
        let out = steps.score_steps(&batch)?;
        self.calls += 1;
        self.texts += solutions.len();
        if out.len() != solutions.len() {
            return Err(DecodeError::Scorer(format!(
                "returned step scores for {} solutions, asked for {}",
                out.len(),
                solutions.len()
            )));
        }
        for (i, (probs, steps)) in out.iter().zip(solutions).enumerate() {
            if probs.len() != steps.len() {
                return Err(DecodeError::Scorer(format!(
                    "solution {i}: {} step scores for {} steps",
                    probs.len(),
                    steps.len()
                )));
            }
            if let Some(p) = probs.iter().find(|p| !(0.0..=1.0).contains(*p)) {
                return Err(DecodeError::Scorer(format!(
                    "solution {i}: step probability {p} is outside [0, 1]"
                )));
            }
        }
        Ok(out)
    }
}

/// A keyword reward (DeAL's keyword constraints): `r = |{k ∈ K : k occurs in the response}| / |K|`,
/// matched case-insensitively as substrings; 0 for an empty keyword list.
/// No scorer ([`crate::ScorerSpec::None`]): every call is an error, for strategies that never
/// score (MCTS valued by answer-checked rollouts alone).
pub(crate) struct NoScorer;

impl Scorer for NoScorer {
    fn score(&mut self, _pairs: &[(&Prompt, &str)]) -> Result<Vec<f32>> {
        Err(DecodeError::config(
            "scorer",
            "this run has no scorer (give --rm or --prm)",
        ))
    }
}

pub struct KeywordScorer {
    pub keywords: Vec<String>,
}

impl Scorer for KeywordScorer {
    fn score(&mut self, pairs: &[(&Prompt, &str)]) -> Result<Vec<f32>> {
        let keys: Vec<String> = self.keywords.iter().map(|k| k.to_lowercase()).collect();
        Ok(pairs
            .iter()
            .map(|(_, r)| {
                if keys.is_empty() {
                    return 0.0;
                }
                let r = r.to_lowercase();
                keys.iter().filter(|k| r.contains(k.as_str())).count() as f32 / keys.len() as f32
            })
            .collect())
    }
}

/// A length reward (DeAL's length constraint): `r = −|words(response) − target|`, words split
/// on whitespace; 0 exactly at the target.
pub struct LengthScorer {
    pub target_words: usize,
}

impl Scorer for LengthScorer {
    fn score(&mut self, pairs: &[(&Prompt, &str)]) -> Result<Vec<f32>> {
        Ok(pairs
            .iter()
            .map(|(_, r)| -(r.split_whitespace().count() as f32 - self.target_words as f32).abs())
            .collect())
    }
}
