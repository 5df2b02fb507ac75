//! The Preference Orchestrator (PRO; Liu, Xu, Yang & Geng 2025, "Preference Orchestrator:
//! Prompt-Aware Multi-Objective Alignment for Large Language Models", arXiv 2511.10656): a small
//! adapter that reads a prompt and gives the weights of K objectives for that prompt, so
//! multi-objective alignment needs no hand-set preference weights.
//!
//! - Targets: for a prompt `x` with a preferred response `y⁺` and K reward functions,
//!   `zₖ = (rₖ(x, y⁺) − μₖ) / σₖ` (each objective standardized over the training set) and
//!   `w*(x) = softmax(z / τ)`: the objectives on which the preferred response stands out get the
//!   weight. The paper trains on "normalized reward scores … for preferred responses" with
//!   softmax targets; the standardization and `τ` are this implementation's reading of that.
//! - Adapter: an MLP `g` on the prompt's frozen backbone features, `w(x) = softmax(g(x))`.
//! - Loss: `KL(w* ‖ w) = Σₖ w*ₖ (log w*ₖ − log wₖ)`, averaged over prompts (minimized as the
//!   soft-target cross-entropy, which differs from it by the targets' entropy).
//! - Baseline: the best *fixed* weights under that loss are the mean target `w̄ = mean_x w*(x)`;
//!   the report gives the dev KL of both, so a user sees whether the prompt carries the
//!   preference balance at all.
//!
//! In RL (`policy-opt`, `[algorithm] orchestrator = "DIR"`) a completion's reward becomes
//! `Σₖ cₖ · wₖ(x) · zₖ(x, y)` with the recipe's component weights `cₖ` (1 by default) and the
//! same standardization — MORLHF with the prompt-specific weights the paper plugs in.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use rm_core::checkpoint::write_bytes_atomically;
use rm_core::types::Prompt;
use serde::{Deserialize, Serialize};

use crate::features::{Embedder, EmbedderConfig};
use crate::gating::{GatingConfig, GatingNetwork, HostGating};
use crate::{tensor_2d, tensor_vec};

pub const SPEC_FILE: &str = "orchestrator.json";
pub const FORMAT_VERSION: u32 = 1;

/// The adapter and its training (the `[orchestrator]` recipe section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestratorConfig {
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Hidden ReLU layers (0 = a linear map to the K logits).
    #[serde(default = "one_layer")]
    pub layers: usize,
    /// `τ` of the targets `softmax(z / τ)`: small → one objective per prompt, large → uniform.
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Full-batch AdamW steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// The dev KL is measured every this many steps; the adapter with the lowest is kept.
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    #[serde(default)]
    pub seed: u64,
}

fn default_hidden() -> usize {
    128
}
fn one_layer() -> usize {
    1
}
fn one() -> f64 {
    1.0
}
fn default_lr() -> f64 {
    1e-3
}
fn default_steps() -> usize {
    300
}
fn default_eval_every() -> usize {
    10
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl OrchestratorConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            bail!(
                "orchestrator.temperature {} must be a finite number > 0",
                self.temperature
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("orchestrator.lr {} must be > 0", self.lr);
        }
        if self.steps == 0 || self.eval_every == 0 {
            bail!("orchestrator.steps and orchestrator.eval_every must be ≥ 1");
        }
        if self.layers > 0 && self.hidden == 0 {
            bail!("orchestrator.hidden must be ≥ 1 with hidden layers");
        }
        Ok(())
    }
}

/// One objective's standardization `z = (r − mean) / std` (training-set statistics).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveNorm {
    pub mean: f64,
    pub std: f64,
}

impl ObjectiveNorm {
    pub fn apply(&self, r: f64) -> f64 {
        (r - self.mean) / self.std
    }
}

/// Each objective's mean and (population) standard deviation over `rewards[n][k]`. Errors: no
/// rows, ragged rows, a non-finite reward, an objective constant over the set (its `z` would
/// be undefined) — each naming the objective.
pub fn objective_norms(rewards: &[Vec<f64>], names: &[String]) -> Result<Vec<ObjectiveNorm>> {
    let k = names.len();
    if rewards.is_empty() {
        bail!("no rewards to standardize");
    }
    if let Some(i) = rewards.iter().position(|r| r.len() != k) {
        bail!(
            "row {i} has {} rewards for {k} objectives",
            rewards[i].len()
        );
    }
    let n = rewards.len() as f64;
    (0..k)
        .map(|j| {
            if let Some(i) = rewards.iter().position(|r| !r[j].is_finite()) {
                bail!("objective {:?}: reward {} in row {i}", names[j], rewards[i][j]);
            }
            let mean = rewards.iter().map(|r| r[j]).sum::<f64>() / n;
            let var = rewards.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / n;
            let std = var.sqrt();
            if std.partial_cmp(&1e-12) != Some(std::cmp::Ordering::Greater) {
                bail!(
                    "objective {:?} has the same value ({mean}) on every preferred response: it cannot be standardized or weighed",
                    names[j]
                );
            }
            Ok(ObjectiveNorm { mean, std })
        })
        .collect()
}

/// `softmax(v)`, stable.
pub fn softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// PRO's target `w* = softmax(z / τ)` from a preferred response's raw rewards.
pub fn target_weights(norms: &[ObjectiveNorm], rewards: &[f64], temperature: f64) -> Vec<f64> {
    let z: Vec<f64> = norms
        .iter()
        .zip(rewards)
        .map(|(n, &r)| n.apply(r) / temperature)
        .collect();
    softmax(&z)
}

/// `KL(p ‖ q) = Σ pₖ (log pₖ − log qₖ)` (terms with `pₖ = 0` are 0).
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| a * (a.ln() - b.ln()))
        .sum()
}

/// The fixed weights with the least mean KL to `targets`: their mean.
pub fn best_fixed_weights(targets: &[Vec<f64>]) -> Vec<f64> {
    let k = targets.first().map_or(0, Vec::len);
    let n = targets.len().max(1) as f64;
    (0..k)
        .map(|j| targets.iter().map(|t| t[j]).sum::<f64>() / n)
        .collect()
}

/// Mean `KL(targets[i] ‖ weights[i])`.
pub fn mean_kl(targets: &[Vec<f64>], weights: &[Vec<f64>]) -> f64 {
    let n = targets.len().max(1) as f64;
    targets
        .iter()
        .zip(weights)
        .map(|(t, w)| kl_divergence(t, w))
        .sum::<f64>()
        / n
}

/// One point of the training curve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KlPoint {
    pub step: usize,
    pub train_kl: f64,
    pub dev_kl: f64,
}

/// What training saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrchestratorTrace {
    pub curve: Vec<KlPoint>,
    /// The step whose adapter was kept (lowest dev KL).
    pub best_step: usize,
    pub train_kl: f64,
    pub dev_kl: f64,
    /// The best fixed weights (the training targets' mean) and their KL on each split.
    pub fixed_weights: Vec<f64>,
    pub fixed_train_kl: f64,
    pub fixed_dev_kl: f64,
}

/// The adapter's weights `softmax(g(x))` for feature rows, on the host.
fn host_weights(net: &HostGating, x: &[&[f32]]) -> Vec<Vec<f64>> {
    x.iter().map(|r| net.weights(r)).collect()
}

fn host_network(net: &GatingNetwork) -> Result<HostGating> {
    let mut host = HostGating::from_network(net, 1.0)?;
    host.logit_scale = 1.0;
    Ok(host)
}

/// Trains the adapter (module docs) on prompt features and their targets; the dev split picks
/// the step kept. Errors: empty or mismatched inputs, a target row that is not a distribution,
/// a non-finite loss (naming the step).
pub fn train_orchestrator(
    config: &OrchestratorConfig,
    train_x: &[&[f32]],
    train_targets: &[Vec<f64>],
    dev_x: &[&[f32]],
    dev_targets: &[Vec<f64>],
    device: &Device,
) -> Result<(HostGating, OrchestratorTrace)> {
    config.validate()?;
    let n = train_x.len();
    if n == 0 || train_targets.len() != n {
        bail!(
            "orchestrator: {n} training prompts and {} target rows (need the same number > 0)",
            train_targets.len()
        );
    }
    if dev_x.is_empty() || dev_targets.len() != dev_x.len() {
        bail!(
            "orchestrator: {} dev prompts and {} target rows (need the same number > 0)",
            dev_x.len(),
            dev_targets.len()
        );
    }
    let k = train_targets[0].len();
    for (split, targets) in [("training", train_targets), ("dev", dev_targets)] {
        if let Some(i) = targets.iter().position(|t| {
            t.len() != k
                || t.iter().any(|v| !(v.is_finite() && *v >= 0.0))
                || (t.iter().sum::<f64>() - 1.0).abs() > 1e-6
        }) {
            bail!("orchestrator: {split} target {i} is not a distribution over {k} objectives");
        }
    }
    let d = train_x[0].len();
    if let Some(i) = train_x
        .iter()
        .chain(dev_x)
        .position(|r| r.len() != d || r.iter().any(|v| !v.is_finite()))
    {
        bail!("orchestrator: feature row {i} is not {d} finite numbers");
    }
    let gating = GatingConfig {
        hidden: config.hidden,
        layers: config.layers,
        temperature: 1.0,
        logit_scale: 1.0,
        lr: config.lr,
        weight_decay: config.weight_decay,
        steps: config.steps,
        seed: config.seed,
    };
    let ad = device.clone().autodiff();
    let x = tensor_2d(train_x, &ad);
    let flat: Vec<f32> = train_targets.iter().flatten().map(|&v| v as f32).collect();
    let targets = Tensor::<2>::from_data(TensorData::new(flat, [n, k]), &ad);
    let mut net = GatingNetwork::new(&gating, d, k, &ad);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init();
    let fixed = best_fixed_weights(train_targets);
    let fixed_train_kl = mean_kl(train_targets, &vec![fixed.clone(); n]);
    let fixed_dev_kl = mean_kl(dev_targets, &vec![fixed.clone(); dev_x.len()]);
    let mut curve = Vec::new();
    let mut best: Option<(f64, usize, HostGating, f64)> = None;
    for step in 0..=config.steps {
        if step % config.eval_every == 0 || step == config.steps {
            let host = host_network(&net)?;
            let train_kl = mean_kl(train_targets, &host_weights(&host, train_x));
            let dev_kl = mean_kl(dev_targets, &host_weights(&host, dev_x));
            if !(train_kl.is_finite() && dev_kl.is_finite()) {
                bail!("orchestrator: the KL became {train_kl} / {dev_kl} at step {step}");
            }
            curve.push(KlPoint {
                step,
                train_kl,
                dev_kl,
            });
            if best.as_ref().is_none_or(|b| dev_kl < b.0) {
                best = Some((dev_kl, step, host, train_kl));
            }
        }
        if step == config.steps {
            break;
        }
        let log_w = log_softmax(net.logits(x.clone()), 1);
        let loss = (targets.clone() * log_w).sum_dim(1).mean().neg();
        let value = tensor_vec(loss.clone())?[0];
        if !value.is_finite() {
            bail!("orchestrator: the loss became {value} at step {step}");
        }
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(config.lr, net, grads);
    }
    let (dev_kl, best_step, host, train_kl) = best.expect("step 0 is always evaluated");
    Ok((
        host,
        OrchestratorTrace {
            curve,
            best_step,
            train_kl,
            dev_kl,
            fixed_weights: fixed,
            fixed_train_kl,
            fixed_dev_kl,
        },
    ))
}

/// `orchestrator.json`: the embedder, the objectives with their standardization, `τ`, the
/// adapter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrchestratorSpec {
    pub format_version: u32,
    /// With absolute paths.
    pub embedder: EmbedderConfig,
    pub objectives: Vec<String>,
    pub normalization: Vec<ObjectiveNorm>,
    pub temperature: f64,
    pub network: HostGating,
}

impl OrchestratorSpec {
    pub fn validate(&self) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            bail!(
                "format version {} (this build reads {FORMAT_VERSION})",
                self.format_version
            );
        }
        let k = self.objectives.len();
        if k == 0 || self.normalization.len() != k {
            bail!(
                "{k} objectives and {} standardizations (must match, > 0)",
                self.normalization.len()
            );
        }
        if let Some(n) = self
            .normalization
            .iter()
            .find(|n| !(n.mean.is_finite() && n.std.is_finite() && n.std > 0.0))
        {
            bail!("a standardization ({}, {}) is not usable", n.mean, n.std);
        }
        match self.network.layers.last() {
            Some(l) if l.d_out == k => Ok(()),
            Some(l) => bail!("the adapter gives {} weights for {k} objectives", l.d_out),
            None => bail!("the adapter has no layers"),
        }
    }

    /// `w(x)` from a prompt's features.
    pub fn weights(&self, features: &[f32]) -> Vec<f64> {
        self.network.weights(features)
    }

    /// `z` of raw rewards, in objective order.
    pub fn standardize(&self, rewards: &[f64]) -> Vec<f64> {
        self.normalization
            .iter()
            .zip(rewards)
            .map(|(n, &r)| n.apply(r))
            .collect()
    }

    /// Writes `dir/orchestrator.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_bytes_atomically(
            &dir.join(SPEC_FILE),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }

    /// Reads `dir/orchestrator.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (a folder written by `plumb orchestrate`?)",
                path.display()
            )
        })?;
        let spec: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an orchestrator spec", path.display()))?;
        spec.validate()
            .with_context(|| path.display().to_string())?;
        Ok(spec)
    }
}

/// A loaded orchestrator: spec + its backbone, so it reads raw prompts.
#[derive(Debug)]
pub struct Orchestrator {
    pub spec: OrchestratorSpec,
    pub embedder: Embedder,
}

impl Orchestrator {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let spec = OrchestratorSpec::read(dir)?;
        let embedder = Embedder::load(&spec.embedder, device).with_context(|| {
            format!(
                "loading the backbone named by {}",
                dir.join(SPEC_FILE).display()
            )
        })?;
        Ok(Self { spec, embedder })
    }

    /// `w(x)` of each prompt (objective order).
    pub fn weights(&self, prompts: &[&Prompt], batch_size: usize) -> Result<Vec<Vec<f64>>> {
        let texts: Vec<String> = prompts
            .iter()
            .map(|p| self.embedder.prompt_text(p))
            .collect::<Result<_>>()?;
        let features = self.embedder.embed(&texts, batch_size)?;
        if let Some(f) = features.first()
            && self.spec.network.layers[0].d_in != f.len()
        {
            bail!(
                "the adapter reads {} features, its backbone gives {}",
                self.spec.network.layers[0].d_in,
                f.len()
            );
        }
        Ok(features.iter().map(|f| self.spec.weights(f)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::device::test_device;

    #[test]
    fn targets_and_kl_by_hand() {
        let names = vec!["a".to_string(), "b".to_string()];
        // a: 1, 3 → mean 2, std 1; b: 10, 14 → mean 12, std 2.
        let norms = objective_norms(&[vec![1.0, 10.0], vec![3.0, 14.0]], &names).unwrap();
        assert_eq!(
            norms[0],
            ObjectiveNorm {
                mean: 2.0,
                std: 1.0
            }
        );
        assert_eq!(
            norms[1],
            ObjectiveNorm {
                mean: 12.0,
                std: 2.0
            }
        );
        // Row (3, 10): z = (1, −1); τ = 2 → softmax(0.5, −0.5) = (e/(e+1), 1/(e+1)) with e = e¹.
        let w = target_weights(&norms, &[3.0, 10.0], 2.0);
        let e = 1f64.exp();
        assert!((w[0] - e / (e + 1.0)).abs() < 1e-12);
        assert!((w[1] - 1.0 / (e + 1.0)).abs() < 1e-12);
        // KL((½, ½) ‖ (¼, ¾)) = ½ ln 2 + ½ ln(2/3).
        let kl = kl_divergence(&[0.5, 0.5], &[0.25, 0.75]);
        assert!((kl - (0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln())).abs() < 1e-12);
        assert_eq!(kl_divergence(&[1.0, 0.0], &[1.0, 0.0]), 0.0);
        // The mean target is the KL-optimal constant: any other constant does worse.
        let targets = vec![vec![0.9, 0.1], vec![0.3, 0.7], vec![0.6, 0.4]];
        let fixed = best_fixed_weights(&targets);
        assert!((fixed[0] - 0.6).abs() < 1e-12);
        let at = |w0: f64| mean_kl(&targets, &vec![vec![w0, 1.0 - w0]; 3]);
        assert!(at(0.6) < at(0.55) && at(0.6) < at(0.65));
        // A constant objective is refused by name.
        let err = objective_norms(&[vec![1.0, 5.0], vec![2.0, 5.0]], &names).unwrap_err();
        assert!(err.to_string().contains("\"b\""), "{err}");
        let err = objective_norms(&[vec![1.0, f64::NAN], vec![2.0, 3.0]], &names).unwrap_err();
        assert!(err.to_string().contains("row 0"), "{err}");
    }

    /// Prompts of two kinds (feature 0 = ±1) want opposite objectives: the adapter learns to
    /// tell them apart, far below the best fixed weights' KL.
    #[test]
    fn the_adapter_learns_prompt_specific_weights() {
        let device = test_device();
        let rows: Vec<[f32; 3]> = (0..40)
            .map(|i| {
                let s = if i % 2 == 0 { 1.0 } else { -1.0 };
                [s, (i as f32 * 0.37).sin(), 0.5]
            })
            .collect();
        let target = |r: &[f32; 3]| {
            if r[0] > 0.0 {
                vec![0.9, 0.1]
            } else {
                vec![0.2, 0.8]
            }
        };
        let (train, dev) = rows.split_at(30);
        let tx: Vec<&[f32]> = train.iter().map(|r| &r[..]).collect();
        let dx: Vec<&[f32]> = dev.iter().map(|r| &r[..]).collect();
        let tt: Vec<Vec<f64>> = train.iter().map(target).collect();
        let dt: Vec<Vec<f64>> = dev.iter().map(target).collect();
        let config = OrchestratorConfig {
            hidden: 8,
            layers: 1,
            lr: 0.05,
            steps: 150,
            eval_every: 10,
            ..OrchestratorConfig::default()
        };
        let (net, trace) = train_orchestrator(&config, &tx, &tt, &dx, &dt, &device).unwrap();
        // The fixed weights are the mean target, (0.55, 0.45); their KL is large.
        assert!((trace.fixed_weights[0] - 0.55).abs() < 1e-9);
        assert!(trace.fixed_dev_kl > 0.2, "{trace:?}");
        assert!(trace.dev_kl < 0.02, "{trace:?}");
        let w = net.weights(&[1.0, 0.0, 0.5]);
        assert!((w[0] - 0.9).abs() < 0.05, "{w:?}");
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        // The kept step is the curve's best dev point.
        let best = trace
            .curve
            .iter()
            .min_by(|a, b| a.dev_kl.total_cmp(&b.dev_kl))
            .unwrap();
        assert_eq!(best.step, trace.best_step);
        // Targets that are not distributions are refused.
        let bad = vec![vec![0.5, 0.6]; 30];
        let err = train_orchestrator(&config, &tx, &bad, &dx, &dt, &device).unwrap_err();
        assert!(err.to_string().contains("training target 0"), "{err}");
    }

    #[test]
    fn the_loss_gradient_matches_finite_differences() {
        // One linear layer, one prompt: ∂CE/∂bₖ = wₖ − w*ₖ.
        let device = test_device().autodiff();
        let config = GatingConfig {
            hidden: 1,
            layers: 0,
            ..GatingConfig::default()
        };
        let net = GatingNetwork::new(&config, 2, 3, &device);
        let x = tensor_2d(&[&[0.3f32, -0.7]], &device);
        let t = Tensor::<2>::from_data(TensorData::new(vec![0.2f32, 0.5, 0.3], [1, 3]), &device);
        let logits = net.logits(x.clone());
        let w = softmax(
            &tensor_vec(logits.clone())
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect::<Vec<_>>(),
        );
        let loss = (t * log_softmax(logits, 1)).sum_dim(1).mean().neg();
        let grads = loss.backward();
        let bias = net.layers[0].bias.as_ref().unwrap();
        let g = tensor_vec(bias.val().grad(&grads).unwrap()).unwrap();
        for (k, target) in [0.2, 0.5, 0.3].iter().enumerate() {
            assert!(
                (g[k] as f64 - (w[k] - target)).abs() < 1e-5,
                "bias {k}: autodiff {} vs closed form {}",
                g[k],
                w[k] - target
            );
        }
    }

    #[test]
    fn spec_round_trips_and_is_checked() {
        let dir = std::env::temp_dir().join(format!("plumb-orchestrator-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = OrchestratorSpec {
            format_version: FORMAT_VERSION,
            embedder: EmbedderConfig::Backbone {
                path: "/nowhere".into(),
                pooling: None,
                max_len: 16,
            },
            objectives: vec!["a".into(), "b".into()],
            normalization: vec![
                ObjectiveNorm {
                    mean: 1.0,
                    std: 2.0,
                },
                ObjectiveNorm {
                    mean: 0.0,
                    std: 1.0,
                },
            ],
            temperature: 1.0,
            network: HostGating {
                layers: vec![crate::HostLinear {
                    d_in: 1,
                    d_out: 2,
                    weight: vec![0.0, 0.0],
                    bias: vec![1.0, 0.0],
                }],
                logit_scale: 1.0,
                temperature: 1.0,
            },
        };
        spec.save(&dir).unwrap();
        let back = OrchestratorSpec::read(&dir).unwrap();
        assert_eq!(back, spec);
        assert_eq!(back.standardize(&[3.0, -1.0]), vec![1.0, -1.0]);
        let w = back.weights(&[7.0]);
        let e = 1f64.exp();
        assert!((w[0] - e / (e + 1.0)).abs() < 1e-12);
        let mut bad = spec.clone();
        bad.objectives.push("c".into());
        assert!(bad.save(&dir).is_err());
        std::fs::write(dir.join(SPEC_FILE), "{").unwrap();
        let err = OrchestratorSpec::read(&dir).unwrap_err();
        assert!(
            format!("{err:#}").contains("not an orchestrator spec"),
            "{err:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
