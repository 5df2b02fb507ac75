//! The saved multi-objective reward model: a folder with `multiobj.json`
//! ([`MultiObjectiveSpec`]: the embedder, the attribute heads, the verbosity debiasing, the
//! gating network, the fallback combination). Loading it brings the backbone back, so
//! [`MultiObjectiveModel::score`] takes raw texts: `φ(prompt)`, `φ(prompt, response)` → K
//! standardized attribute rewards → debiased → gated sum.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use rm_core::checkpoint::write_bytes_atomically;
use rm_core::types::Prompt;
use serde::{Deserialize, Serialize};

use crate::combine::Combination;
use crate::features::{Embedder, EmbedderConfig};
use crate::gating::{HostGating, VerbosityDebias};
use crate::heads::LinearHead;

pub const SPEC_FILE: &str = "multiobj.json";
pub const FORMAT_VERSION: u32 = 1;

/// `multiobj.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiObjectiveSpec {
    pub format_version: u32,
    /// With absolute paths.
    pub embedder: EmbedderConfig,
    pub attributes: Vec<String>,
    /// One head per attribute, standardized outputs.
    pub heads: Vec<LinearHead>,
    pub debias: VerbosityDebias,
    /// ArmoRM's gating; without it the combination below gives the reward.
    pub gating: Option<HostGating>,
    pub combination: Combination,
}

/// One response's rewards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Standardized attribute rewards `rₖ`.
    pub attributes: Vec<f64>,
    /// After verbosity debiasing, `r'ₖ`.
    pub debiased: Vec<f64>,
    /// The gating weights `w(x)` (empty without gating).
    pub weights: Vec<f64>,
    /// `Σ wₖ r'ₖ`, or the combination of `r'` without gating.
    pub reward: f64,
}

impl MultiObjectiveSpec {
    /// Checks the lengths against each other and the feature width `dim` when given.
    pub fn validate(&self, dim: Option<usize>) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            bail!(
                "format version {} (this build reads {FORMAT_VERSION})",
                self.format_version
            );
        }
        let k = self.attributes.len();
        if k == 0 || self.heads.len() != k || self.debias.penalties.len() != k {
            bail!(
                "{k} attributes, {} heads, {} debiasing penalties: they must match (and be > 0)",
                self.heads.len(),
                self.debias.penalties.len()
            );
        }
        self.combination.validate(k)?;
        if let Some(d) = dim {
            if let Some(i) = self.heads.iter().position(|h| h.weight.len() != d) {
                bail!(
                    "head {i} reads {} features, the embedder gives {d}",
                    self.heads[i].weight.len()
                );
            }
            if let Some(g) = &self.gating
                && g.layers.first().is_some_and(|l| l.d_in != d)
            {
                bail!(
                    "the gating network reads {} features, the embedder gives {d}",
                    g.layers[0].d_in
                );
            }
        }
        if let Some(g) = &self.gating
            && g.layers.last().is_some_and(|l| l.d_out != k)
        {
            bail!(
                "the gating network gives {} weights for {k} attributes",
                g.layers.last().unwrap().d_out
            );
        }
        Ok(())
    }

    /// The rewards of one response from cached features.
    pub fn score_features(&self, prompt: &[f32], response: &[f32]) -> Result<Scored> {
        let attributes: Vec<f64> = self.heads.iter().map(|h| h.score(response)).collect();
        let debiased = self.debias.apply(&attributes);
        let (weights, reward) = match &self.gating {
            Some(g) => {
                let w = g.weights(prompt);
                let r = w.iter().zip(&debiased).map(|(a, b)| a * b).sum();
                (w, r)
            }
            None => (vec![], self.combination.combine(&debiased)?),
        };
        Ok(Scored {
            attributes,
            debiased,
            weights,
            reward,
        })
    }
}

/// A loaded model: spec + backbone.
#[derive(Debug)]
pub struct MultiObjectiveModel {
    pub spec: MultiObjectiveSpec,
    pub embedder: Embedder,
}

impl MultiObjectiveModel {
    /// Writes `dir/multiobj.json`.
    pub fn save_spec(spec: &MultiObjectiveSpec, dir: &Path) -> Result<()> {
        spec.validate(None)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_bytes_atomically(
            &dir.join(SPEC_FILE),
            serde_json::to_string(spec)?.as_bytes(),
        )
    }

    /// Reads a folder written by [`MultiObjectiveModel::save_spec`] and loads its backbone.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (a folder written by `plumb multiobj train`?)",
                path.display()
            )
        })?;
        let spec: MultiObjectiveSpec = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a multi-objective spec", path.display()))?;
        spec.validate(None)
            .with_context(|| path.display().to_string())?;
        let embedder = Embedder::load(&spec.embedder, device)
            .with_context(|| format!("loading the backbone named by {}", path.display()))?;
        Ok(Self { spec, embedder })
    }

    /// Rewards of `responses` to `prompt`, from raw texts.
    pub fn score(
        &self,
        prompt: &Prompt,
        responses: &[String],
        batch_size: usize,
    ) -> Result<Vec<Scored>> {
        if responses.is_empty() {
            bail!("no responses to score");
        }
        let p = self
            .embedder
            .embed(&[self.embedder.prompt_text(prompt)?], 1)?;
        let texts: Vec<String> = responses
            .iter()
            .map(|r| self.embedder.pair_text(prompt, r))
            .collect::<Result<_>>()?;
        let feats = self.embedder.embed(&texts, batch_size)?;
        self.spec.validate(Some(p[0].len()))?;
        feats
            .iter()
            .map(|f| self.spec.score_features(&p[0], f))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(gating: Option<HostGating>) -> MultiObjectiveSpec {
        let head = |w: Vec<f64>| LinearHead {
            weight: w,
            bias: 0.0,
            mean: 0.0,
            std: 2.0,
        };
        MultiObjectiveSpec {
            format_version: FORMAT_VERSION,
            embedder: EmbedderConfig::Backbone {
                path: "/nowhere".into(),
                pooling: None,
                max_len: 16,
            },
            attributes: vec!["a".into(), "verbosity".into()],
            heads: vec![head(vec![2.0, 0.0]), head(vec![0.0, 2.0])],
            debias: VerbosityDebias {
                verbosity: 1,
                penalties: vec![0.5, 1.0],
                spearman_before: vec![],
                spearman_after: vec![],
                threshold: 0.03,
            },
            gating,
            combination: Combination::WeightedSum {
                weights: vec![1.0, 1.0],
            },
        }
    }

    #[test]
    fn features_to_rewards_by_hand() {
        // r = (2·1, 2·3) / 2 = (1, 3); r' = (1 − 0.5·3, 3 − 3) = (−0.5, 0); sum = −0.5.
        let s = spec(None).score_features(&[0.0], &[1.0, 3.0]).unwrap();
        assert_eq!(s.attributes, vec![1.0, 3.0]);
        assert_eq!(s.debiased, vec![-0.5, 0.0]);
        assert_eq!(s.reward, -0.5);
        // A gating network whose output layer has zero weights and biases (2, 0): τ = 1, β = 2
        // → w = 2·softmax(2, 0).
        let gating = HostGating {
            layers: vec![crate::HostLinear {
                d_in: 1,
                d_out: 2,
                weight: vec![0.0, 0.0],
                bias: vec![2.0, 0.0],
            }],
            logit_scale: 2.0,
            temperature: 1.0,
        };
        let s = spec(Some(gating))
            .score_features(&[5.0], &[1.0, 3.0])
            .unwrap();
        let w0 = 2.0 * 2f64.exp() / (2f64.exp() + 1.0);
        assert!((s.weights[0] - w0).abs() < 1e-12);
        assert!((s.reward - w0 * -0.5).abs() < 1e-12);
        let mut bad = spec(None);
        bad.heads.pop();
        assert!(
            bad.validate(None)
                .unwrap_err()
                .to_string()
                .contains("1 heads")
        );
        assert!(
            spec(None)
                .validate(Some(3))
                .unwrap_err()
                .to_string()
                .contains("head 0 reads 2 features")
        );
    }
}
