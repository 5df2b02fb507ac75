//! An ensemble folder loaded: its members' reward models, scoring (prompt, response) items into
//! a [`RewardMatrix`] on a common scale, and aggregated.
//!
//! **Common scale.** Members trained separately have rewards on arbitrary, different scales
//! (a Bradley–Terry reward is only defined up to a shift). Before aggregating, each member's
//! reward goes through that member's stored normalization `(r − μ) / σ` (fitted by
//! `plumb train-rm` on the evaluation responses) when the member has one; a member without one
//! is used raw (and [`Member::normalized`] says so, as do the reports).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bench_harness::{ScoreItem, Scorer};
use rm_core::burn::tensor::Device;
use rm_core::models::reward::RewardModelBundle;

use crate::aggregate::{Aggregation, RewardMatrix};
use crate::spec::{ENSEMBLE_FILE, EnsembleSpec};

/// Whether `dir` is an ensemble folder (holds `ensemble.json`).
pub fn is_ensemble_dir(dir: &Path) -> bool {
    dir.join(ENSEMBLE_FILE).is_file()
}

/// One member of a loaded ensemble.
pub struct Member {
    /// The path as `ensemble.json` names it.
    pub name: String,
    pub dir: PathBuf,
    pub bundle: RewardModelBundle,
    /// Whether the member's rewards are normalized by its stored statistics (else raw).
    pub normalized: bool,
}

/// A loaded ensemble.
pub struct Ensemble {
    pub dir: PathBuf,
    pub members: Vec<Member>,
    /// The aggregation `ensemble.json` names (callers may override it).
    pub aggregation: Aggregation,
}

impl Ensemble {
    /// Reads `dir/ensemble.json` (checked: see [`EnsembleSpec::validate`]) and loads every
    /// member onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let spec = EnsembleSpec::read(dir)?;
        let members = spec
            .members
            .iter()
            .zip(spec.member_dirs(dir))
            .enumerate()
            .map(|(k, (name, member_dir))| {
                let bundle = RewardModelBundle::load(&member_dir, device).with_context(|| {
                    format!("{}: loading member {k}", dir.join(ENSEMBLE_FILE).display())
                })?;
                Ok(Member {
                    name: name.display().to_string(),
                    normalized: bundle.spec.normalization.is_some(),
                    dir: member_dir,
                    bundle,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            members,
            aggregation: spec.aggregation,
        })
    }

    /// One reward model as a one-member ensemble (its rewards normalized when `normalized`;
    /// an error when it stores no normalization), e.g. to probe it like an ensemble.
    pub fn single(dir: &Path, bundle: RewardModelBundle, normalized: bool) -> Result<Self> {
        if normalized && bundle.spec.normalization.is_none() {
            bail!(
                "{}: --normalized, but the model stores no normalization",
                dir.display()
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            members: vec![Member {
                name: dir.display().to_string(),
                dir: dir.to_path_buf(),
                bundle,
                normalized,
            }],
            aggregation: Aggregation::Mean,
        })
    }

    /// The members' attribute names (the same for all, checked on load).
    pub fn attributes(&self) -> &[String] {
        &self.members[0].bundle.spec.attributes
    }

    /// Every member's reward of attribute `attribute` for every item, on the common scale
    /// (rows: members, columns: items). Each member renders the prompt with its own template.
    pub fn member_rewards(
        &self,
        items: &[ScoreItem<'_>],
        attribute: usize,
        batch_size: usize,
    ) -> Result<RewardMatrix> {
        if attribute >= self.attributes().len() {
            bail!(
                "attribute {attribute} does not exist (the ensemble's members have {:?})",
                self.attributes()
            );
        }
        if items.is_empty() {
            bail!("nothing to score: no items");
        }
        let rows = self
            .members
            .iter()
            .map(|m| {
                let texts: Vec<String> = items
                    .iter()
                    .map(|it| m.bundle.text(it.prompt, it.response))
                    .collect::<Result<_>>()?;
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let raw = m
                    .bundle
                    .score_texts(&refs, batch_size)
                    .with_context(|| format!("member {}", m.name))?;
                raw.iter()
                    .map(|r| {
                        Ok(if m.normalized {
                            m.bundle.normalize(r)?[attribute]
                        } else {
                            r[attribute]
                        })
                    })
                    .collect::<Result<Vec<f32>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        RewardMatrix::new(rows)
    }

    /// The aggregated reward of every item under `aggregation`.
    pub fn score(
        &self,
        items: &[ScoreItem<'_>],
        aggregation: &Aggregation,
        batch_size: usize,
    ) -> Result<Vec<f32>> {
        aggregation.apply(&self.member_rewards(items, 0, batch_size)?)
    }
}

/// An ensemble as a RewardBench [`Scorer`]: the aggregated first attribute.
pub struct EnsembleScorer {
    pub ensemble: Ensemble,
    pub aggregation: Aggregation,
    /// Texts per forward pass.
    pub batch_size: usize,
}

impl EnsembleScorer {
    /// Scores with the ensemble's own aggregation unless `aggregation` overrides it.
    pub fn new(ensemble: Ensemble, aggregation: Option<Aggregation>, batch_size: usize) -> Self {
        let aggregation = aggregation.unwrap_or_else(|| ensemble.aggregation.clone());
        Self {
            ensemble,
            aggregation,
            batch_size,
        }
    }
}

impl Scorer for EnsembleScorer {
    fn name(&self) -> String {
        format!(
            "{} [{}]",
            self.ensemble.dir.display(),
            self.aggregation.label()
        )
    }

    fn score(&mut self, items: &[ScoreItem<'_>]) -> Result<Vec<f32>> {
        self.ensemble
            .score(items, &self.aggregation, self.batch_size)
    }
}
