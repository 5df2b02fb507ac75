//! PRIME's implicit process reward model, updated online (Cui et al. 2025, "Process
//! Reinforcement through Implicit Rewards", arXiv 2502.01456): `[algorithm.implicit_prm]`.
//!
//! The implicit PRM `π_φ` is a causal LM, initialised from the policy's starting weights (so
//! from the reference), whose outcome reward is `R_φ(y) = β·Σ_t log π_φ(y_t|y_<t)/π_ref(y_t|y_<t)`
//! and whose token rewards `r_t = β·log π_φ(y_t|y_<t)/π_ref(y_t|y_<t)` are dense process rewards
//! with no step labels. Each collection, as PRIME's Algorithm 1:
//!
//! 1. the rollouts are labelled by an outcome reward component (`label`, e.g. the GSM8K
//!    verifier: correct when its value exceeds `threshold`);
//! 2. `φ` takes `epochs` AdamW steps on them with the cross-entropy of
//!    [`implicit_prm_loss`]: `−mean[y·log σ(R_φ) + (1 − y)·log σ(−R_φ)]`;
//! 3. the updated `φ` gives every completion token the reward `coef·r_t`, added to the token
//!    rewards (the outcome reward on the last token, as every estimator reads them);
//!    `estimator = { name = "process_rloo", credit = { form = "sum" } }` is PRIME's RLOO on
//!    both.
//!
//! `φ` and its optimizer are part of the run state (checkpointed, so a resumed run continues
//! exactly); the final `φ` is written as a policy folder, `implicit_prm/` in the run folder.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rm_core::burn::module::Module;
use rm_core::burn::tensor::{Device, Tensor, TensorData};
use rm_core::models::llama::LlamaModel;
use rm_core::models::policy_folder::Policy;
use rm_core::shared_prompt::shared_prompt_logprobs;
use rm_core::tokenize::Sequence;
use rm_core::train::optimizer::{AdamW, AdamWSettings, GradAccumulator};
use serde::{Deserialize, Serialize};

use super::algos::implicit_prm_loss;
use super::rollout::{Completion, completion_logprobs};

/// `[algorithm.implicit_prm]`: PRIME's online implicit PRM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImplicitPrmConfig {
    /// The `[[reward]]` component whose value labels each rollout for `φ`'s update.
    pub label: String,
    /// A rollout is labelled correct when its `label` value is above this.
    pub threshold: f64,
    /// `β > 0` of `r_t = β·log π_φ/π_ref` (PRIME: 0.05).
    pub beta: f64,
    /// Weight `≥ 0` of the implicit process rewards in the token rewards.
    pub coef: f64,
    /// `φ`'s AdamW learning rate (PRIME: 1e-6); 0 freezes `φ`.
    pub lr: f64,
    /// AdamW steps on each collection's rollouts (one pass over them each).
    pub epochs: usize,
    /// Rows per forward pass of the update (the gradient of a step is accumulated over them).
    pub micro_batch: usize,
}

impl Default for ImplicitPrmConfig {
    fn default() -> Self {
        Self {
            label: String::new(),
            threshold: 0.5,
            beta: 0.05,
            coef: 1.0,
            lr: 1e-6,
            epochs: 1,
            micro_batch: 4,
        }
    }
}

impl ImplicitPrmConfig {
    /// Checks the settings against the recipe's reward component names.
    pub fn validate(&self, components: &[String]) -> Result<()> {
        if !components.iter().any(|c| c == &self.label) {
            bail!(
                "algorithm.implicit_prm.label {:?} names no [[reward]] component (the components are {components:?})",
                self.label
            );
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            bail!(
                "algorithm.implicit_prm.beta must be finite and > 0, got {}",
                self.beta
            );
        }
        for (name, v) in [
            ("coef", self.coef),
            ("lr", self.lr),
            ("threshold", self.threshold.abs()),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("algorithm.implicit_prm.{name} must be finite and ≥ 0, got {v}");
            }
        }
        if self.epochs == 0 || self.micro_batch == 0 {
            bail!("algorithm.implicit_prm.epochs and micro_batch must be at least 1");
        }
        Ok(())
    }
}

/// What one collection's update of `φ` logged.
#[derive(Clone, Debug, PartialEq)]
pub struct PrmUpdate {
    /// The cross-entropy on the labelled rollouts before the update.
    pub loss: f64,
    /// The fraction of labelled rollouts whose `R_φ` had the label's sign before the update.
    pub accuracy: f64,
    /// Rollouts labelled correct, and labelled in all.
    pub positives: usize,
    pub labelled: usize,
}

/// The implicit PRM `φ` (trainable, on the training device), its template (for saving) and
/// its optimizer.
pub struct ImplicitPrm {
    config: ImplicitPrmConfig,
    template: Policy,
    model: LlamaModel,
    optimizer: AdamW,
}

/// The checkpoint files of `φ` and its optimizer (under `implicit_prm/` of a checkpoint).
const STATE_DIR: &str = "implicit_prm";
const WEIGHTS_FILE: &str = "weights.safetensors";

impl ImplicitPrm {
    /// `φ` from `template` (the policy's starting model, built without LoRA so every weight
    /// trains) on its device.
    pub fn new(config: ImplicitPrmConfig, template: Policy) -> Self {
        let model = template.lm.model.clone();
        Self {
            optimizer: AdamW::new(AdamWSettings {
                weight_decay: 0.0,
                ..AdamWSettings::default()
            }),
            config,
            template,
            model,
        }
    }

    pub fn config(&self) -> &ImplicitPrmConfig {
        &self.config
    }

    /// One update of `φ` on the labelled completions (`labels[r]`: `Some(1.0)` correct,
    /// `Some(0.0)` not, `None` left out), with the reference's per-token log-probs of each
    /// completion; returns what it logged, or `None` when no completion is labelled.
    pub fn update(
        &mut self,
        completions: &[Completion],
        reference: &[Vec<f32>],
        labels: &[Option<f32>],
        pad_id: u32,
    ) -> Result<Option<PrmUpdate>> {
        let rows: Vec<usize> = (0..completions.len())
            .filter(|&r| labels[r].is_some() && !completions[r].tokens.is_empty())
            .collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let positives = rows.iter().filter(|&&r| labels[r] == Some(1.0)).count();
        let mut before = None;
        for _ in 0..self.config.epochs {
            let mut grads = GradAccumulator::default();
            let (mut loss_sum, mut right) = (0.0f64, 0usize);
            for chunk in rows.chunks(self.config.micro_batch) {
                let (loss, rewards) =
                    self.chunk_loss(chunk, completions, reference, labels, pad_id)?;
                let weight = chunk.len() as f64 / rows.len() as f64;
                loss_sum += f64::from(loss.clone().into_scalar::<f32>()) * chunk.len() as f64;
                right += chunk
                    .iter()
                    .zip(&rewards)
                    .filter(|&(&r, &reward)| (reward > 0.0) == (labels[r] == Some(1.0)))
                    .count();
                if self.config.lr > 0.0 {
                    let backward = loss.mul_scalar(weight).backward();
                    grads.add(&self.model, backward);
                }
            }
            before.get_or_insert(PrmUpdate {
                loss: loss_sum / rows.len() as f64,
                accuracy: right as f64 / rows.len() as f64,
                positives,
                labelled: rows.len(),
            });
            if self.config.lr > 0.0 {
                let (model, _) = self
                    .optimizer
                    .step(self.model.clone(), self.config.lr, grads)
                    .context("updating the implicit PRM")?;
                self.model = model;
            }
        }
        Ok(before)
    }

    /// The loss of `chunk` (rows of `completions`) and each row's `R_φ` (host values).
    fn chunk_loss(
        &self,
        chunk: &[usize],
        completions: &[Completion],
        reference: &[Vec<f32>],
        labels: &[Option<f32>],
        pad_id: u32,
    ) -> Result<(Tensor<1>, Vec<f32>)> {
        let device = self.device();
        let sequences: Vec<Sequence> = chunk.iter().map(|&r| completions[r].sequence()).collect();
        let out = shared_prompt_logprobs(&self.model, &sequences, pad_id, false)?;
        let [b, width] = out.token_logprobs.dims();
        // The reference's completion log-probs on the same [B, T−1] grid: completion token m
        // of row r is predicted at column prompt_len + m − 1.
        let mut grid = vec![0f32; b * width];
        for (i, &r) in chunk.iter().enumerate() {
            let start = completions[r].prompt_ids.len() - 1;
            let row = &reference[r];
            grid[i * width + start..i * width + start + row.len()].copy_from_slice(row);
        }
        let reference = Tensor::from_data(TensorData::new(grid, [b, width]), &device);
        let y: Vec<f32> = chunk.iter().map(|&r| labels[r].unwrap_or(0.0)).collect();
        let y = Tensor::from_data(TensorData::new(y, [b]), &device);
        let rewards = ((out.token_logprobs.clone() - reference.clone()) * out.mask.clone())
            .sum_dim(1)
            .reshape([b])
            .mul_scalar(self.config.beta);
        let rewards: Vec<f32> = rewards
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| anyhow::anyhow!("reading the implicit rewards: {e:?}"))?;
        let loss = implicit_prm_loss(out.token_logprobs, reference, out.mask, y, self.config.beta)?;
        Ok((loss, rewards))
    }

    /// The process rewards `β·(log π_φ − log π_ref)` of every completion token under the
    /// current `φ` (frozen), row by row.
    pub fn token_rewards(
        &self,
        completions: &[Completion],
        reference: &[Vec<f32>],
        pad_id: u32,
        batch: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let phi = completion_logprobs(&self.model.valid(), completions, pad_id, batch)?;
        let beta = self.config.beta as f32;
        Ok(phi
            .iter()
            .zip(reference)
            .map(|(p, q)| p.iter().zip(q).map(|(a, b)| beta * (a - b)).collect())
            .collect())
    }

    fn device(&self) -> Device {
        self.model.embed_tokens.weight.val().device()
    }

    /// Writes `φ` and its optimizer into `implicit_prm/` of a checkpoint folder.
    pub fn save_state(&self, dir: &Path) -> Result<()> {
        let dir = dir.join(STATE_DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        rm_core::train::save_all_params(&self.model, &dir.join(WEIGHTS_FILE))?;
        self.optimizer.save(&dir)
    }

    /// Reads what [`Self::save_state`] wrote.
    pub fn load_state(&mut self, dir: &Path) -> Result<()> {
        let dir = dir.join(STATE_DIR);
        self.model =
            rm_core::train::load_all_params(self.model.clone(), &dir.join(WEIGHTS_FILE))
                .with_context(|| format!("the implicit PRM of the checkpoint {}", dir.display()))?;
        self.optimizer = AdamW::load(&dir, &self.device())?;
        Ok(())
    }

    /// Writes `φ` as a policy folder (loadable by `plumb generate --model`, `plumb logprobs`).
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        self.template.save(&self.model, dir)
    }
}
