//! A trained reward model as a reward function (the learned reward of RLHF: Ouyang et al. 2022,
//! "Training language models to follow instructions with human feedback"): `r = r_θ(x, y)`,
//! one attribute of a `plumb train-rm` folder, reported as `plumb score` reports it
//! ([`bench_harness::RewardModelScorer`], transforms from [`rm_pipeline::score::score_transform`]):
//! - `raw`: the head's output;
//! - `normalized`: `(r − μ)/σ` with the statistics stored in the model;
//! - `log_sigmoid`: `log σ(r − r_ref)` with `r_ref` the reward of a fixed reference response to
//!   the same prompt (Wang et al. 2024, "Transforming and Combining Rewards for Aligning Large
//!   Language Models").
//!
//! An ensemble folder (`ensemble.json`, `plumb train-rm` with `[ensemble]`) works too: its
//! aggregation of the members' normalized rewards; so does a DMoERM folder (`dmoerm.json`,
//! `plumb multiobj dmoerm`): its routed task's aggregated reward.
//!
//! A batch is scored in one call; when that fails (a prompt its chat template cannot render,
//! a non-finite reward, …) every sample is scored on its own and only those that fail are
//! errors.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use bench_harness::eval::{ScoreItem, Scorer};
use bench_harness::{RewardModelScorer, ScoreTransform};
use rm_core::burn::tensor::Device;
use rm_core::models::reward::RewardModelBundle;
use rm_pipeline::score::{TransformKind, score_transform};
use serde::{Deserialize, Serialize};

use super::{RewardError, RewardFunction, RewardSample, finite};

/// Texts per forward pass when a recipe does not say.
pub const DEFAULT_BATCH_SIZE: usize = 8;

/// How raw rewards become the component's value (as `plumb score --transform`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RmTransform {
    #[default]
    Raw,
    Normalized,
    LogSigmoid {
        reference: String,
    },
}

impl RmTransform {
    /// The `plumb score` transform (checked as `plumb score` checks it: a non-empty reference).
    pub fn score_transform(&self) -> anyhow::Result<ScoreTransform> {
        match self {
            RmTransform::Raw => score_transform(TransformKind::Raw, None),
            RmTransform::Normalized => score_transform(TransformKind::Normalized, None),
            RmTransform::LogSigmoid { reference } => {
                score_transform(TransformKind::LogSigmoid, Some(reference.clone()))
            }
        }
    }
}

/// Settings of a [`ModelReward`].
#[derive(Clone, Debug, PartialEq)]
pub struct RewardModelSpec {
    pub path: PathBuf,
    pub transform: RmTransform,
    pub batch_size: usize,
    /// The attribute's name; `None`: the first.
    pub attribute: Option<String>,
}

/// A reward model reward.
pub struct ModelReward {
    name: String,
    scorer: Mutex<Box<dyn Scorer + Send>>,
}

impl ModelReward {
    /// Loads the folder and checks the settings against it.
    pub fn load(name: &str, spec: &RewardModelSpec, device: &Device) -> anyhow::Result<Self> {
        if rm_pipeline::ensemble::is_ensemble_dir(&spec.path) {
            return Self::ensemble(name, spec, device);
        }
        if rm_multiobj::dmoerm::is_dmoerm_dir(&spec.path) {
            return Self::dmoerm(name, spec, device);
        }
        let bundle = RewardModelBundle::load(&spec.path, device)
            .with_context(|| format!("reward model {}", spec.path.display()))?;
        Self::from_bundle(name, bundle, spec)
    }

    /// A loaded reward model (`spec.path` is only used in messages).
    pub fn from_bundle(
        name: &str,
        bundle: RewardModelBundle,
        spec: &RewardModelSpec,
    ) -> anyhow::Result<Self> {
        if spec.batch_size == 0 {
            anyhow::bail!("reward_model: batch_size must be at least 1");
        }
        let transform = spec
            .transform
            .score_transform()
            .context("reward_model: transform")?;
        let attributes = &bundle.spec.attributes;
        let attribute = match &spec.attribute {
            None => 0,
            Some(a) => attributes.iter().position(|x| x == a).ok_or_else(|| {
                anyhow::anyhow!(
                    "reward_model {}: no attribute {a:?} (the model has {attributes:?})",
                    spec.path.display()
                )
            })?,
        };
        if transform == ScoreTransform::Normalized {
            bundle
                .normalize(&vec![0.0; attributes.len()])
                .with_context(|| {
                    format!(
                        "reward_model {}: transform = \"normalized\"",
                        spec.path.display()
                    )
                })?;
        }
        let mut scorer = RewardModelScorer::new(bundle, spec.batch_size, name);
        scorer.attribute = attribute;
        scorer.transform = transform;
        Ok(Self {
            name: name.to_string(),
            scorer: Mutex::new(Box::new(scorer)),
        })
    }

    /// An ensemble folder (`ensemble.json`): its aggregation of the members' first attribute on
    /// their common (normalized) scale, see [`rm_pipeline::ensemble`]. `raw` and `normalized`
    /// both mean that scale; `log_sigmoid` and `attribute` are refused.
    fn ensemble(name: &str, spec: &RewardModelSpec, device: &Device) -> anyhow::Result<Self> {
        if spec.batch_size == 0 {
            anyhow::bail!("reward_model: batch_size must be at least 1");
        }
        if let RmTransform::LogSigmoid { .. } = spec.transform {
            anyhow::bail!(
                "reward_model {}: an ensemble folder takes transform = \"raw\" (its aggregate on the members' normalized scale), not log_sigmoid",
                spec.path.display()
            );
        }
        if let Some(a) = &spec.attribute {
            anyhow::bail!(
                "reward_model {}: an ensemble folder scores its members' first attribute; drop attribute = {a:?}",
                spec.path.display()
            );
        }
        let ensemble = rm_pipeline::ensemble::Ensemble::load(&spec.path, device)
            .with_context(|| format!("reward model ensemble {}", spec.path.display()))?;
        let scorer = rm_pipeline::ensemble::EnsembleScorer::new(ensemble, None, spec.batch_size);
        Ok(Self {
            name: name.to_string(),
            scorer: Mutex::new(Box::new(scorer)),
        })
    }
}

impl ModelReward {
    /// A DMoERM folder (`dmoerm.json`, `plumb multiobj dmoerm`): the routed task's aggregated
    /// reward. It has one scale and one output, so `transform` must be `raw` and `attribute`
    /// unset.
    fn dmoerm(name: &str, spec: &RewardModelSpec, device: &Device) -> anyhow::Result<Self> {
        if spec.batch_size == 0 {
            anyhow::bail!("reward_model: batch_size must be at least 1");
        }
        if spec.transform != RmTransform::Raw || spec.attribute.is_some() {
            anyhow::bail!(
                "reward_model {}: a DMoERM folder gives one raw reward; drop transform and attribute",
                spec.path.display()
            );
        }
        let model = rm_multiobj::dmoerm::DmoermModel::load(&spec.path, device)
            .with_context(|| format!("DMoERM {}", spec.path.display()))?;
        Ok(Self {
            name: name.to_string(),
            scorer: Mutex::new(Box::new(DmoermScorer {
                model,
                batch_size: spec.batch_size,
                name: name.to_string(),
            })),
        })
    }
}

/// A DMoERM model as a [`Scorer`].
struct DmoermScorer {
    model: rm_multiobj::dmoerm::DmoermModel,
    batch_size: usize,
    name: String,
}

impl Scorer for DmoermScorer {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn score(&mut self, items: &[ScoreItem<'_>]) -> anyhow::Result<Vec<f32>> {
        let pairs: Vec<(&rm_core::types::Prompt, &str)> =
            items.iter().map(|i| (i.prompt, i.response)).collect();
        Ok(self
            .model
            .score_items(&pairs, self.batch_size)?
            .into_iter()
            .map(|s| s.reward as f32)
            .collect())
    }
}

impl RewardFunction for ModelReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
        let mut scorer = self.scorer.lock().unwrap_or_else(|e| e.into_inner());
        let items: Vec<ScoreItem<'_>> = samples
            .iter()
            .map(|s| ScoreItem {
                prompt: s.prompt,
                response: s.completion,
            })
            .collect();
        score_with_fallback(&items, |batch| scorer.score(batch))
    }
}

/// Scores `items` in one call of `score`; when that fails (or returns the wrong count), one call
/// per item, each failure an error for its item only.
pub fn score_with_fallback<T>(
    items: &[T],
    mut score: impl FnMut(&[T]) -> anyhow::Result<Vec<f32>>,
) -> Vec<Result<f32, RewardError>>
where
    T: Clone,
{
    if items.is_empty() {
        return Vec::new();
    }
    if let Ok(values) = score(items)
        && values.len() == items.len()
        && values.iter().all(|v| v.is_finite())
    {
        return values.into_iter().map(Ok).collect();
    }
    items
        .iter()
        .map(|item| match score(std::slice::from_ref(item)) {
            Ok(v) if v.len() == 1 => finite(v[0]),
            Ok(v) => Err(RewardError::WrongCount {
                expected: 1,
                got: v.len(),
            }),
            Err(e) => Err(RewardError::Model(format!("{e:#}"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_batch_falls_back_to_one_call_per_item_and_masks_only_the_failures() {
        let mut calls = Vec::new();
        let items = [1.0f32, -1.0, 2.0, f32::NAN];
        let out = score_with_fallback(&items, |batch| {
            calls.push(batch.len());
            if batch.iter().any(|&x| x < 0.0) {
                anyhow::bail!("negative input");
            }
            Ok(batch.iter().map(|x| x * 10.0).collect())
        });
        assert_eq!(calls, [4, 1, 1, 1, 1]);
        assert_eq!(out[0], Ok(10.0));
        assert_eq!(out[1], Err(RewardError::Model("negative input".into())));
        assert_eq!(out[2], Ok(20.0));
        assert!(matches!(out[3], Err(RewardError::NonFinite(_))));

        let mut calls = 0;
        let out = score_with_fallback(&items[..1], |b| {
            calls += 1;
            Ok(b.to_vec())
        });
        assert_eq!((calls, out), (1, vec![Ok(1.0)]));
    }
}
