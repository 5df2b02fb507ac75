//! DMoERM, the double-layer mixture-of-experts reward model of Quan 2024, "DMoERM: Recipes of
//! Mixture-of-Experts for Effective Reward Modeling" (arXiv:2403.01197).
//!
//! **Outer layer (sparse).** A router classifies the prompt `x` into one of `T` tasks,
//! `p(t | x) = softmax(W·z(φ(x)) + b)_t` with `φ(x)` a frozen backbone's pooled prompt features
//! and `z` their per-dimension standardization; only the top-1 task `t*(x) = argmax_t p(t | x)`
//! scores the response. It is trained by cross-entropy on the tasks the training prompts came
//! from.
//!
//! **Inner layer (dense).** Task `t` has `K_t` capability experts: reward models fine-tuned on
//! one capability point each (in the paper, LoRA experts over a base first fine-tuned on the
//! task's overall preferences; here any `plumb train-rm` folder). Their outputs `o_k(x, y)` are
//! concatenated, standardized and aggregated by an MLP,
//!
//! ```text
//! r(x, y) = w₂ · ReLU(W₁ · z([o_1(x, y); …; o_K(x, y)]) + b₁) + b₂,
//! ```
//!
//! trained with the experts frozen by Bradley–Terry on the task's overall preference pairs,
//! `L = −mean log σ(r(x, y_c) − r(x, y_r))`. `o_k` is the expert's pooled final hidden state
//! ([`ExpertOutput::Features`]) or its scalar reward ([`ExpertOutput::Rewards`]).
//!
//! A trained model is a folder with [`SPEC_FILE`] ([`DmoermSpec`]): the router's embedder and
//! weights, and per task its experts' folders and the aggregator's weights, all on the host.
//! [`DmoermModel::load`] brings the backbones back and scores raw texts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{log_sigmoid, log_softmax, relu};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rm_core::checkpoint::write_bytes_atomically;
use rm_core::types::Prompt;
use serde::{Deserialize, Serialize};

use crate::features::{Embedder, EmbedderConfig};
use crate::{HostLinear, seeded_linear, tensor_2d, tensor_vec};

pub const SPEC_FILE: &str = "dmoerm.json";
pub const FORMAT_VERSION: u32 = 1;

/// What each capability expert hands the aggregator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpertOutput {
    /// The expert's pooled final hidden state (`D` values per expert).
    #[default]
    Features,
    /// The expert's scalar reward (its first attribute; one value per expert).
    Rewards,
}

/// The inner layer's MLP (the `[aggregator]` recipe section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    #[serde(default)]
    pub input: ExpertOutput,
    /// Width of the hidden ReLU layer.
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Full-batch AdamW steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default)]
    pub seed: u64,
}

fn default_hidden() -> usize {
    32
}
fn default_steps() -> usize {
    400
}
fn default_lr() -> f64 {
    1e-3
}
fn default_weight_decay() -> f64 {
    0.01
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

impl AggregatorConfig {
    pub fn validate(&self) -> Result<()> {
        if self.hidden == 0 || self.steps == 0 {
            bail!(
                "aggregator.hidden ({}) and aggregator.steps ({}) must be at least 1",
                self.hidden,
                self.steps
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "aggregator.lr ({}) must be > 0 and aggregator.weight_decay ({}) ≥ 0",
                self.lr,
                self.weight_decay
            );
        }
        Ok(())
    }
}

/// The outer layer's classifier (the `[router]` recipe section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// The frozen backbone whose prompt features the router reads.
    pub embedder: EmbedderConfig,
    #[serde(default = "default_router_steps")]
    pub steps: usize,
    #[serde(default = "default_router_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub seed: u64,
}

fn default_router_steps() -> usize {
    300
}
fn default_router_lr() -> f64 {
    1e-2
}

impl RouterConfig {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || !(self.lr > 0.0 && self.lr.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "router: steps ({}) must be ≥ 1, lr ({}) > 0, weight_decay ({}) ≥ 0",
                self.steps,
                self.lr,
                self.weight_decay
            );
        }
        Ok(())
    }
}

/// Per-dimension standardization `z = (x − μ) / σ`, `μ`, `σ` measured on training rows (`σ`
/// floored at 1e-6, so a constant dimension maps to 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardizer {
    pub fn fit(rows: &[&[f32]]) -> Result<Self> {
        let Some(first) = rows.first() else {
            bail!("standardization needs at least one row");
        };
        let d = first.len();
        if let Some(i) = rows.iter().position(|r| r.len() != d) {
            bail!("row {i} has {} values, row 0 has {d}", rows[i].len());
        }
        let n = rows.len() as f64;
        let mut mean = vec![0f64; d];
        for r in rows {
            for (m, &x) in mean.iter_mut().zip(r.iter()) {
                *m += x as f64 / n;
            }
        }
        let mut var = vec![0f64; d];
        for r in rows {
            for ((v, &m), &x) in var.iter_mut().zip(&mean).zip(r.iter()) {
                *v += (x as f64 - m).powi(2) / n;
            }
        }
        Ok(Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: var.iter().map(|&v| v.sqrt().max(1e-6) as f32).collect(),
        })
    }

    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        x.iter()
            .zip(self.mean.iter().zip(&self.std))
            .map(|(&v, (&m, &s))| (v - m) / s)
            .collect()
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }
}

/// What a full-batch training loop saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitTrace {
    pub first_loss: f64,
    pub last_loss: f64,
    pub steps: usize,
}

/// `steps` full-batch AdamW steps on `loss(net)`; a non-finite loss stops with an error naming
/// `what` and the step.
fn fit_full_batch<M: Module>(
    what: &str,
    mut net: M,
    steps: usize,
    lr: f64,
    weight_decay: f64,
    loss: impl Fn(&M) -> Tensor<1>,
) -> Result<(M, FitTrace)> {
    let mut optim = AdamWConfig::new()
        .with_weight_decay(weight_decay as f32)
        .init();
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for step in 0..steps {
        let l = loss(&net);
        let value = tensor_vec(l.clone())?[0] as f64;
        if !value.is_finite() {
            bail!("{what}: the loss became {value} at step {step}");
        }
        if step == 0 {
            first = value;
        }
        last = value;
        let grads = GradientsParams::from_grads(l.backward(), &net);
        net = optim.step(lr, net, grads);
    }
    Ok((
        net,
        FitTrace {
            first_loss: first,
            last_loss: last,
            steps,
        },
    ))
}

/// The aggregator MLP on the device (training only).
#[derive(Module, Debug)]
pub struct AggregatorNetwork {
    pub hidden: Linear,
    pub out: Linear,
}

impl AggregatorNetwork {
    pub fn new(d_in: usize, hidden: usize, seed: u64, device: &Device) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xd30e);
        Self {
            hidden: seeded_linear(d_in, hidden, &mut rng, device),
            out: seeded_linear(hidden, 1, &mut rng, device),
        }
    }

    /// `r = w₂ · ReLU(W₁ z + b₁) + b₂` per row: `[B, D]` → `[B]`.
    pub fn forward(&self, z: Tensor<2>) -> Tensor<1> {
        let b = z.dims()[0];
        self.out.forward(relu(self.hidden.forward(z))).reshape([b])
    }
}

/// A trained aggregator on the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostAggregator {
    pub standardizer: Standardizer,
    pub hidden: HostLinear,
    pub out: HostLinear,
}

impl HostAggregator {
    /// The reward of one row of concatenated expert outputs (not yet standardized).
    pub fn reward(&self, outputs: &[f32]) -> f64 {
        let z = self.standardizer.apply(outputs);
        let h: Vec<f32> = self
            .hidden
            .forward(&z)
            .iter()
            .map(|&v| v.max(0.0) as f32)
            .collect();
        self.out.forward(&h)[0]
    }
}

/// Trains the aggregator by Bradley–Terry on pairs of concatenated expert outputs
/// (`chosen[n]`, `rejected[n]`), standardized by statistics of all 2N training rows.
pub fn train_aggregator(
    config: &AggregatorConfig,
    chosen: &[&[f32]],
    rejected: &[&[f32]],
    device: &Device,
) -> Result<(HostAggregator, FitTrace)> {
    config.validate()?;
    let n = chosen.len();
    if n == 0 || rejected.len() != n {
        bail!(
            "aggregator: {n} chosen and {} rejected rows (need the same number > 0)",
            rejected.len()
        );
    }
    let all: Vec<&[f32]> = chosen.iter().chain(rejected).copied().collect();
    let standardizer = Standardizer::fit(&all)?;
    let ad = device.clone().autodiff();
    let rows = |r: &[&[f32]]| -> Tensor<2> {
        let z: Vec<Vec<f32>> = r.iter().map(|x| standardizer.apply(x)).collect();
        let refs: Vec<&[f32]> = z.iter().map(Vec::as_slice).collect();
        tensor_2d(&refs, &ad)
    };
    let (zc, zr) = (rows(chosen), rows(rejected));
    let net = AggregatorNetwork::new(standardizer.dim(), config.hidden, config.seed, &ad);
    let (net, trace) = fit_full_batch(
        "aggregator",
        net,
        config.steps,
        config.lr,
        config.weight_decay,
        |net| {
            log_sigmoid(net.forward(zc.clone()) - net.forward(zr.clone()))
                .mean()
                .neg()
        },
    )?;
    Ok((
        HostAggregator {
            standardizer,
            hidden: HostLinear::from_linear(&net.hidden)?,
            out: HostLinear::from_linear(&net.out)?,
        },
        trace,
    ))
}

/// A trained router on the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRouter {
    pub standardizer: Standardizer,
    pub linear: HostLinear,
}

impl HostRouter {
    /// `p(t | x)` for one prompt's features.
    pub fn probabilities(&self, features: &[f32]) -> Vec<f64> {
        let logits = self.linear.forward(&self.standardizer.apply(features));
        let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = logits.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    /// The top-1 task and its probability.
    pub fn route(&self, features: &[f32]) -> (usize, f64) {
        let p = self.probabilities(features);
        let (t, &q) = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("at least one task");
        (t, q)
    }
}

/// Trains the router by cross-entropy, `−mean log p(label | x)`, on prompt features.
pub fn train_router(
    config: &RouterConfig,
    features: &[&[f32]],
    labels: &[usize],
    tasks: usize,
    device: &Device,
) -> Result<(HostRouter, FitTrace)> {
    config.validate()?;
    let n = features.len();
    if n == 0 || labels.len() != n {
        bail!(
            "router: {n} prompts and {} labels (need the same number > 0)",
            labels.len()
        );
    }
    if let Some(i) = labels.iter().position(|&l| l >= tasks) {
        bail!(
            "router: label {} of prompt {i} is not a task (0..{tasks})",
            labels[i]
        );
    }
    let standardizer = Standardizer::fit(features)?;
    let ad = device.clone().autodiff();
    let z: Vec<Vec<f32>> = features.iter().map(|x| standardizer.apply(x)).collect();
    let x = tensor_2d(&z.iter().map(Vec::as_slice).collect::<Vec<_>>(), &ad);
    let mut onehot = vec![0f32; n * tasks];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * tasks + l] = 1.0;
    }
    let y = Tensor::<2>::from_data(TensorData::new(onehot, [n, tasks]), &ad);
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x4017);
    let net = seeded_linear(standardizer.dim(), tasks, &mut rng, &ad);
    let (net, trace) = fit_full_batch(
        "router",
        net,
        config.steps,
        config.lr,
        config.weight_decay,
        |net| {
            let logp = log_softmax(net.forward(x.clone()), 1);
            (logp * y.clone()).sum().div_scalar(n as f64).neg()
        },
    )?;
    Ok((
        HostRouter {
            standardizer,
            linear: HostLinear::from_linear(&net)?,
        },
        trace,
    ))
}

/// One capability expert: a reward-model folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertSpec {
    pub capability: String,
    /// A `plumb train-rm` folder (absolute in a saved spec).
    pub path: PathBuf,
}

/// One task's inner model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskModel {
    pub name: String,
    pub experts: Vec<ExpertSpec>,
    pub input: ExpertOutput,
    pub aggregator: HostAggregator,
}

/// `dmoerm.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DmoermSpec {
    pub format_version: u32,
    /// With an absolute path.
    pub router_embedder: EmbedderConfig,
    pub router: HostRouter,
    pub tasks: Vec<TaskModel>,
}

impl DmoermSpec {
    /// Checks the sizes against each other.
    pub fn validate(&self) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            bail!(
                "format version {} (this build reads {FORMAT_VERSION})",
                self.format_version
            );
        }
        if self.tasks.is_empty() {
            bail!("no tasks");
        }
        if self.router.linear.d_out != self.tasks.len() {
            bail!(
                "the router has {} outputs for {} tasks",
                self.router.linear.d_out,
                self.tasks.len()
            );
        }
        for t in &self.tasks {
            if t.experts.is_empty() {
                bail!("task {:?} has no experts", t.name);
            }
            if t.aggregator.hidden.d_in != t.aggregator.standardizer.dim() {
                bail!("task {:?}: the aggregator's sizes disagree", t.name);
            }
        }
        Ok(())
    }

    /// Writes `dir/dmoerm.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_bytes_atomically(
            &dir.join(SPEC_FILE),
            serde_json::to_string(self)?.as_bytes(),
        )
    }
}

/// A loaded capability expert: its backbone and its reward head.
#[derive(Debug)]
pub struct Expert {
    pub embedder: Embedder,
    pub head: HostLinear,
}

impl Expert {
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let embedder = Embedder::load(
            &EmbedderConfig::RewardModel {
                path: path.to_path_buf(),
            },
            device,
        )
        .with_context(|| format!("expert {}", path.display()))?;
        let head = embedder.head()?;
        Ok(Self { embedder, head })
    }

    /// The expert's reward from its pooled features (its first attribute).
    pub fn reward(&self, features: &[f32]) -> f32 {
        self.head.forward(features)[0] as f32
    }

    /// What the aggregator reads of this expert for each `(prompt, response)` text's features.
    pub fn outputs(&self, features: &[Vec<f32>], input: ExpertOutput) -> Vec<Vec<f32>> {
        match input {
            ExpertOutput::Features => features.to_vec(),
            ExpertOutput::Rewards => features.iter().map(|f| vec![self.reward(f)]).collect(),
        }
    }
}

/// Concatenates per-expert outputs row by row: `parts[k][i]` → row `i`.
pub fn concat_outputs(parts: &[Vec<Vec<f32>>]) -> Vec<Vec<f32>> {
    let n = parts.first().map_or(0, Vec::len);
    (0..n)
        .map(|i| parts.iter().flat_map(|p| p[i].iter().copied()).collect())
        .collect()
}

/// One response's score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DmoermScore {
    /// The routed task.
    pub task: String,
    /// `p(t* | x)`.
    pub task_probability: f64,
    /// Each expert of the routed task: (capability, its own reward).
    pub capabilities: Vec<(String, f64)>,
    /// The aggregator's reward.
    pub reward: f64,
}

/// A loaded DMoERM: the router's backbone and every expert.
#[derive(Debug)]
pub struct DmoermModel {
    pub spec: DmoermSpec,
    pub router_embedder: Embedder,
    pub experts: Vec<Vec<Expert>>,
}

impl DmoermModel {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let file = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "reading {} (a folder written by plumb multiobj dmoerm)",
                file.display()
            )
        })?;
        let spec: DmoermSpec =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        spec.validate()
            .with_context(|| format!("{}", file.display()))?;
        let router_embedder = Embedder::load(&spec.router_embedder, device)?;
        let experts = spec
            .tasks
            .iter()
            .map(|t| {
                t.experts
                    .iter()
                    .map(|e| Expert::load(&e.path, device))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            spec,
            router_embedder,
            experts,
        })
    }

    /// Routes the prompt, then scores each response with the routed task's experts and
    /// aggregator.
    pub fn score(
        &self,
        prompt: &Prompt,
        responses: &[String],
        batch_size: usize,
    ) -> Result<Vec<DmoermScore>> {
        let items: Vec<(&Prompt, &str)> = responses.iter().map(|r| (prompt, r.as_str())).collect();
        self.score_items(&items, batch_size)
    }

    /// Scores (prompt, response) items: each distinct prompt routed once, then each task's
    /// items through that task's experts in batches of `batch_size` texts.
    pub fn score_items(
        &self,
        items: &[(&Prompt, &str)],
        batch_size: usize,
    ) -> Result<Vec<DmoermScore>> {
        let mut prompts: Vec<&Prompt> = Vec::new();
        let mut prompt_of = Vec::with_capacity(items.len());
        for (p, _) in items {
            let i = match prompts.iter().position(|q| q == p) {
                Some(i) => i,
                None => {
                    prompts.push(p);
                    prompts.len() - 1
                }
            };
            prompt_of.push(i);
        }
        let texts = prompts
            .iter()
            .map(|p| self.router_embedder.prompt_text(p))
            .collect::<Result<Vec<_>>>()?;
        let routes: Vec<(usize, f64)> = if texts.is_empty() {
            Vec::new()
        } else {
            self.router_embedder
                .embed(&texts, batch_size)?
                .iter()
                .map(|phi| self.spec.router.route(phi))
                .collect()
        };
        let mut out: Vec<Option<DmoermScore>> = vec![None; items.len()];
        for (t, task) in self.spec.tasks.iter().enumerate() {
            let mine: Vec<usize> = (0..items.len())
                .filter(|&i| routes[prompt_of[i]].0 == t)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut parts = Vec::new();
            let mut own = Vec::new();
            for expert in &self.experts[t] {
                let texts = mine
                    .iter()
                    .map(|&i| expert.embedder.pair_text(items[i].0, items[i].1))
                    .collect::<Result<Vec<_>>>()?;
                let features = expert.embedder.embed(&texts, batch_size)?;
                own.push(
                    features
                        .iter()
                        .map(|f| expert.reward(f) as f64)
                        .collect::<Vec<_>>(),
                );
                parts.push(expert.outputs(&features, task.input));
            }
            for (row_index, (&i, row)) in mine.iter().zip(concat_outputs(&parts)).enumerate() {
                out[i] = Some(DmoermScore {
                    task: task.name.clone(),
                    task_probability: routes[prompt_of[i]].1,
                    capabilities: task
                        .experts
                        .iter()
                        .zip(&own)
                        .map(|(e, r)| (e.capability.clone(), r[row_index]))
                        .collect(),
                    reward: task.aggregator.reward(&row),
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|s| s.expect("every item is routed to one task"))
            .collect())
    }
}

/// Whether `dir` holds a DMoERM model ([`SPEC_FILE`]).
pub fn is_dmoerm_dir(dir: &Path) -> bool {
    dir.join(SPEC_FILE).is_file()
}

/// Hand-built DMoERM folders for the tests of downstream crates (a scorer's test needs a real
/// folder to load, not a training run).
pub mod fixtures {
    use super::*;

    /// Writes to `dir` a one-task DMoERM over two expert folders whose reward is the sum of
    /// the experts' own rewards: `input = "rewards"`, no standardization, hidden layer
    /// `ReLU(r_a + 10), ReLU(r_b + 10)`, output `h_1 + h_2 − 20` (exact while both rewards
    /// are above −10). The router reads `router_backbone` (an HF folder of hidden size `dim`)
    /// and, with one task, always routes to it.
    pub fn write_sum_of_two(
        dir: &Path,
        router_backbone: &Path,
        dim: usize,
        experts: [&Path; 2],
    ) -> Result<()> {
        let linear = |d_in: usize, d_out: usize, weight: Vec<f32>, bias: Vec<f32>| HostLinear {
            d_in,
            d_out,
            weight,
            bias,
        };
        let spec = DmoermSpec {
            format_version: FORMAT_VERSION,
            router_embedder: EmbedderConfig::Backbone {
                path: std::path::absolute(router_backbone)?,
                pooling: None,
                max_len: 32,
            },
            router: HostRouter {
                standardizer: Standardizer {
                    mean: vec![0.0; dim],
                    std: vec![1.0; dim],
                },
                linear: linear(dim, 1, vec![0.0; dim], vec![0.0]),
            },
            tasks: vec![TaskModel {
                name: "only".into(),
                experts: experts
                    .iter()
                    .zip(["a", "b"])
                    .map(|(p, c)| {
                        Ok(ExpertSpec {
                            capability: c.into(),
                            path: std::path::absolute(p)?,
                        })
                    })
                    .collect::<Result<_>>()?,
                input: ExpertOutput::Rewards,
                aggregator: HostAggregator {
                    standardizer: Standardizer {
                        mean: vec![0.0; 2],
                        std: vec![1.0; 2],
                    },
                    hidden: linear(2, 2, vec![1.0, 0.0, 0.0, 1.0], vec![10.0, 10.0]),
                    out: linear(2, 1, vec![1.0, 1.0], vec![-20.0]),
                },
            }],
        };
        spec.save(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rm_core::device::test_device;

    #[test]
    fn standardization_by_hand() {
        let rows: [&[f32]; 3] = [&[1.0, 5.0], &[2.0, 5.0], &[3.0, 5.0]];
        let s = Standardizer::fit(&rows).unwrap();
        assert_eq!(s.mean, vec![2.0, 5.0]);
        let sd = (2.0f32 / 3.0).sqrt();
        assert!((s.std[0] - sd).abs() < 1e-6 && (s.std[1] - 1e-6).abs() < 1e-9);
        let z = s.apply(&[3.0, 5.0]);
        assert!((z[0] - 1.0 / sd).abs() < 1e-5 && z[1] == 0.0);
        assert!(Standardizer::fit(&[]).is_err());
        assert!(Standardizer::fit(&[&[1.0], &[1.0, 2.0]]).is_err());
    }

    #[test]
    fn the_host_aggregator_matches_the_network() {
        let device = test_device();
        let net = AggregatorNetwork::new(3, 4, 7, &device);
        let host = HostAggregator {
            standardizer: Standardizer {
                mean: vec![0.0; 3],
                std: vec![1.0; 3],
            },
            hidden: HostLinear::from_linear(&net.hidden).unwrap(),
            out: HostLinear::from_linear(&net.out).unwrap(),
        };
        let rows = [[0.5f32, -1.0, 2.0], [3.0, 0.0, -0.5]];
        let dev = tensor_vec(net.forward(tensor_2d(&[&rows[0], &rows[1]], &device))).unwrap();
        for (row, &d) in rows.iter().zip(&dev) {
            assert!(
                (host.reward(row) - d as f64).abs() < 1e-5,
                "{} vs {d}",
                host.reward(row)
            );
        }
    }

    /// Two experts whose outputs only agree with the label together: the chosen response
    /// is the one where the two experts' signs agree (an XOR no linear sum of the experts
    /// reproduces), learned by the MLP.
    #[test]
    fn the_aggregator_learns_an_interaction_of_experts() {
        let device = test_device();
        let mut rng = StdRng::seed_from_u64(1);
        let mut draw = |agree: bool| -> Vec<f32> {
            let a: f32 = rng.random_range(0.3..1.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let b: f32 = rng.random_range(0.3..1.0) * a.signum() * if agree { 1.0 } else { -1.0 };
            vec![a, b]
        };
        let (mut c, mut r) = (Vec::new(), Vec::new());
        for _ in 0..300 {
            c.push(draw(true));
            r.push(draw(false));
        }
        let config = AggregatorConfig {
            input: ExpertOutput::Rewards,
            hidden: 16,
            steps: 400,
            lr: 0.02,
            weight_decay: 0.0,
            seed: 0,
        };
        fn refs(v: &[Vec<f32>]) -> Vec<&[f32]> {
            v.iter().map(Vec::as_slice).collect()
        }
        let (agg, trace) = train_aggregator(&config, &refs(&c), &refs(&r), &device).unwrap();
        assert!((trace.first_loss - 0.69).abs() < 0.1, "{trace:?}");
        assert!(trace.last_loss < 0.2, "{trace:?}");
        let (mut rng2, mut right, mut sum_right) = (StdRng::seed_from_u64(2), 0, 0);
        for _ in 0..200 {
            let a: f32 = rng2.random_range(0.3..1.0);
            let b: f32 = rng2.random_range(0.3..1.0);
            let s = if rng2.random_bool(0.5) { 1.0 } else { -1.0 };
            let (chosen, rejected) = ([s * a, s * b], [s * a, -s * b]);
            right += usize::from(agg.reward(&chosen) > agg.reward(&rejected));
            sum_right += usize::from(chosen[0] + chosen[1] > rejected[0] + rejected[1]);
        }
        assert!(right >= 190, "{right}/200");
        // The plain sum of the two experts is at chance on this rule.
        assert!((60..=140).contains(&sum_right), "{sum_right}/200");
        let zero = AggregatorConfig {
            steps: 0,
            ..config.clone()
        };
        assert!(train_aggregator(&zero, &refs(&c), &refs(&r), &device).is_err());
    }

    #[test]
    fn the_router_separates_tasks_and_its_probabilities_sum_to_one() {
        let device = test_device();
        let mut rng = StdRng::seed_from_u64(4);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..90 {
            let t = i % 3;
            let mut x: Vec<f32> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
            x[t] += 4.0;
            features.push(x);
            labels.push(t);
        }
        let refs: Vec<&[f32]> = features.iter().map(Vec::as_slice).collect();
        let config = RouterConfig {
            embedder: EmbedderConfig::RewardModel {
                path: "unused".into(),
            },
            steps: 200,
            lr: 0.05,
            weight_decay: 0.0,
            seed: 0,
        };
        let (router, trace) = train_router(&config, &refs, &labels, 3, &device).unwrap();
        assert!((trace.first_loss - 3f64.ln()).abs() < 0.5, "{trace:?}");
        assert!(trace.last_loss < 0.05, "{trace:?}");
        for (x, &l) in features.iter().zip(&labels) {
            let p = router.probabilities(x);
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            assert_eq!(router.route(x).0, l);
        }
        assert!(train_router(&config, &refs, &[0; 90].map(|_| 3), 3, &device).is_err());
    }
}
