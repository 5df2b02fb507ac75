//! [`Scorer`] for plumbline reward models: one attribute's reward (raw, normalized, or through
//! the log-sigmoid transform against a reference response).

use anyhow::{Result, bail};
use rm_core::models::reward::{RewardModelBundle, log_sigmoid_transform};

use crate::eval::{ScoreItem, Scorer};

/// How raw rewards are reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ScoreTransform {
    /// The head's output.
    #[default]
    Raw,
    /// `(r − μ) / σ` with the statistics stored in the model.
    Normalized,
    /// `log σ(r − r_ref)` with `r_ref` the reward of `reference` to the same prompt.
    LogSigmoid { reference: String },
}

/// A reward model scoring (prompt, response) pairs in length-sorted batches.
pub struct RewardModelScorer {
    pub bundle: RewardModelBundle,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Which of the model's attributes is the score.
    pub attribute: usize,
    pub transform: ScoreTransform,
    /// A display name for reports.
    pub name: String,
}

impl RewardModelScorer {
    pub fn new(bundle: RewardModelBundle, batch_size: usize, name: impl Into<String>) -> Self {
        Self {
            bundle,
            batch_size,
            attribute: 0,
            transform: ScoreTransform::Raw,
            name: name.into(),
        }
    }
}

impl Scorer for RewardModelScorer {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn score(&mut self, items: &[ScoreItem<'_>]) -> Result<Vec<f32>> {
        if self.attribute >= self.bundle.spec.attributes.len() {
            bail!(
                "attribute {} does not exist (the model has {:?})",
                self.attribute,
                self.bundle.spec.attributes
            );
        }
        let mut texts: Vec<String> = items
            .iter()
            .map(|it| self.bundle.text(it.prompt, it.response))
            .collect::<Result<_>>()?;
        if let ScoreTransform::LogSigmoid { reference } = &self.transform {
            for it in items {
                texts.push(self.bundle.text(it.prompt, reference)?);
            }
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let raw = self.bundle.score_texts(&refs, self.batch_size)?;
        let a = self.attribute;
        Ok(match &self.transform {
            ScoreTransform::Raw => raw[..items.len()].iter().map(|r| r[a]).collect(),
            ScoreTransform::Normalized => raw[..items.len()]
                .iter()
                .map(|r| Ok(self.bundle.normalize(r)?[a]))
                .collect::<Result<_>>()?,
            ScoreTransform::LogSigmoid { .. } => (0..items.len())
                .map(|i| log_sigmoid_transform(raw[i][a], raw[items.len() + i][a]))
                .collect(),
        })
    }
}
