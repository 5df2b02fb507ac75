//! The `[train]` section of every recipe: batch geometry, optimizer, schedule, parameter groups,
//! evaluation and checkpoint cadence, and where the run folder is. Every number is checked by
//! [`TrainConfig::validate`] before anything runs.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::optimizer::{AdamWSettings, ParamGroup, ParamGroups};
use super::schedule::DecayKind;

/// The `[train]` section of a recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over a fixed dataset (epoch driver; the rollout driver counts iterations instead).
    #[serde(default = "one")]
    pub epochs: usize,
    /// Examples (or buffer items) per optimizer step.
    pub batch_size: usize,
    /// Examples per forward/backward (default: `batch_size`); the last micro-batch of a step may
    /// be smaller.
    #[serde(default)]
    pub micro_batch_size: Option<usize>,
    pub lr: f64,
    /// Decoupled weight decay of every parameter not in a group that says otherwise (biases and
    /// normalization weights get none unless `decay_biases_and_norms`).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Decay biases and normalization weights too (off: the usual `no_decay = [bias, LayerNorm]`).
    #[serde(default)]
    pub decay_biases_and_norms: bool,
    /// Parameter groups by path pattern, first match wins (see [`ParamGroup`]).
    #[serde(default)]
    pub param_groups: Vec<ParamGroup>,
    #[serde(default)]
    pub warmup_ratio: f64,
    #[serde(default)]
    pub schedule: DecayKind,
    #[serde(default = "default_clip")]
    pub max_grad_norm: Option<f64>,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Optimizer steps (rollout driver: iterations) between evaluations (0: only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Optimizer steps (rollout driver: iterations) between run checkpoints for `--resume`
    /// (default: `eval_every`, else only at the end).
    #[serde(default)]
    pub save_every: Option<u64>,
    /// Stop after this many optimizer steps (the schedule still spans the full run).
    #[serde(default)]
    pub max_steps: Option<u64>,
    pub out_dir: PathBuf,
}

fn one() -> usize {
    1
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_clip() -> Option<f64> {
    Some(1.0)
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_seed() -> u64 {
    42
}

/// The largest step count a run may have: step numbers go through `f64` in the metrics and the
/// schedule, which are exact below 2⁵³.
pub const MAX_STEPS: u64 = 1 << 53;

impl TrainConfig {
    /// A config with the recipe defaults for everything but the batch size, learning rate and
    /// run folder.
    pub fn new(batch_size: usize, lr: f64, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            epochs: 1,
            batch_size,
            micro_batch_size: None,
            lr,
            weight_decay: default_weight_decay(),
            decay_biases_and_norms: false,
            param_groups: Vec::new(),
            warmup_ratio: 0.0,
            schedule: DecayKind::default(),
            max_grad_norm: default_clip(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            seed: default_seed(),
            eval_every: 0,
            save_every: None,
            max_steps: None,
            out_dir: out_dir.into(),
        }
    }

    /// Checks the numbers before anything runs; the message names the field.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            bail!("train.epochs must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("train.batch_size must be at least 1");
        }
        if self.micro_batch_size == Some(0) {
            bail!("train.micro_batch_size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            bail!("train.lr must be a finite number ≥ 0, got {}", self.lr);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "train.weight_decay must be a finite number ≥ 0, got {}",
                self.weight_decay
            );
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            bail!(
                "train.warmup_ratio must lie in [0, 1], got {}",
                self.warmup_ratio
            );
        }
        if self
            .max_grad_norm
            .is_some_and(|c| !(c.is_finite() && c > 0.0))
        {
            bail!("train.max_grad_norm must be a finite number > 0 (or absent for no clipping)");
        }
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                bail!("train.{name} must lie in [0, 1), got {beta}");
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            bail!("train.eps must be a finite number > 0, got {}", self.eps);
        }
        if self.max_steps == Some(0) {
            bail!("train.max_steps must be at least 1 (or absent)");
        }
        if self.out_dir.as_os_str().is_empty() {
            bail!("train.out_dir is empty: name the run folder");
        }
        if self.epochs as u64 > MAX_STEPS {
            bail!("train.epochs = {} is too large", self.epochs);
        }
        for (i, group) in self.param_groups.iter().enumerate() {
            group
                .validate()
                .map_err(|e| anyhow::anyhow!("train.param_groups[{i}] ({:?}): {e}", group.paths))?;
        }
        Ok(())
    }

    /// Examples per forward/backward.
    pub fn micro_batch(&self) -> usize {
        self.micro_batch_size
            .unwrap_or(self.batch_size)
            .min(self.batch_size)
    }

    /// The AdamW hyper-parameters.
    pub fn adamw(&self) -> AdamWSettings {
        AdamWSettings {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
        }
    }

    /// The parameter groups (explicit ones first, then the bias/norm rule).
    pub fn param_group_rules(&self) -> ParamGroups {
        ParamGroups {
            groups: self.param_groups.clone(),
            decay_biases_and_norms: self.decay_biases_and_norms,
        }
    }

    /// Optimizer steps between run checkpoints (0: only at the end).
    pub fn save_interval(&self) -> u64 {
        self.save_every.unwrap_or(self.eval_every)
    }

    /// The whole number of optimizer steps of an epoch run over `n` examples: epochs ×
    /// ⌈n / batch_size⌉ (the last step of an epoch may be smaller), capped by `max_steps`.
    pub fn epoch_steps(&self, n: usize) -> Result<u64> {
        let full = full_epoch_steps(n, self)?;
        Ok(self.max_steps.map_or(full, |m| m.min(full)))
    }
}

/// epochs × ⌈n / batch_size⌉ without the `max_steps` cap (what the schedule spans).
pub(crate) fn full_epoch_steps(n: usize, config: &TrainConfig) -> Result<u64> {
    let per_epoch = n.div_ceil(config.batch_size) as u64;
    match per_epoch.checked_mul(config.epochs as u64) {
        Some(total) if total <= MAX_STEPS => Ok(total),
        _ => bail!(
            "{} epochs of {per_epoch} steps do not fit in a step counter",
            config.epochs
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimizer_settings_out_of_range_are_errors_naming_the_field() {
        let ok = TrainConfig::new(4, 1e-3, "runs/x");
        ok.validate().unwrap();
        let cases: Vec<(TrainConfig, &str)> = vec![
            (
                TrainConfig {
                    eps: 0.0,
                    ..ok.clone()
                },
                "train.eps",
            ),
            (
                TrainConfig {
                    eps: f64::NAN,
                    ..ok.clone()
                },
                "train.eps",
            ),
            (
                TrainConfig {
                    beta1: 1.0,
                    ..ok.clone()
                },
                "train.beta1",
            ),
            (
                TrainConfig {
                    beta2: -0.1,
                    ..ok.clone()
                },
                "train.beta2",
            ),
            (
                TrainConfig {
                    weight_decay: -1e-3,
                    ..ok.clone()
                },
                "train.weight_decay",
            ),
            (
                TrainConfig {
                    lr: f64::INFINITY,
                    ..ok.clone()
                },
                "train.lr",
            ),
            (
                TrainConfig {
                    max_grad_norm: Some(0.0),
                    ..ok.clone()
                },
                "train.max_grad_norm",
            ),
            (
                TrainConfig {
                    max_steps: Some(0),
                    ..ok.clone()
                },
                "train.max_steps",
            ),
            (
                TrainConfig {
                    out_dir: PathBuf::new(),
                    ..ok.clone()
                },
                "train.out_dir",
            ),
            (
                TrainConfig {
                    batch_size: 0,
                    ..ok.clone()
                },
                "train.batch_size",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let huge = TrainConfig {
            epochs: usize::MAX,
            ..ok.clone()
        };
        assert!(huge.validate().is_err());
        let many = TrainConfig {
            epochs: 1 << 50,
            ..ok.clone()
        };
        assert!(full_epoch_steps(1 << 20, &many).is_err());
        assert!(full_epoch_steps(1000, &TrainConfig { epochs: 3, ..ok }).unwrap() == 750);
    }
}
