//! The shared training loop: reward models now, DPO and PPO/GRPO later, all through one
//! [`Trainer`].
//!
//! A task ([`TrainTask`]) says how to compute the mean loss of a micro-batch of example indices,
//! how to evaluate, and how to save the model; the trainer owns everything else:
//! - the epoch order (a seeded shuffle per epoch, `StdRng(seed + epoch)`), optimizer steps of
//!   `batch_size` examples split into micro-batches of `micro_batch_size`, each micro-batch's loss
//!   scaled by its share of the step's examples so that accumulation is exact;
//! - [`optimizer::AdamW`] with global-norm clipping, the [`schedule::LrSchedule`];
//! - dropout seeded per micro-batch from `(seed, step, micro-batch)`, so runs are reproducible;
//! - periodic evaluation, keeping the best model (`out_dir/best`) by the task's score, and the
//!   final model (`out_dir/final`);
//! - run checkpoints (`out_dir/last`: trainable weights by path, optimizer moments, position)
//!   written atomically, from which `resume` continues exactly (same losses as an uninterrupted
//!   run);
//! - metrics as JSONL (`out_dir/metrics.jsonl`, one object per step and per evaluation), a
//!   progress bar with ETA and live loss/accuracy, and a PNG plot of the curves.
//!
//! A NaN or infinite loss stops the run with an error naming the step; nothing already saved is
//! touched.

pub mod optimizer;
pub mod schedule;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{PathStack, save_host_tensors, write_bytes_atomically};
use crate::models::safetensors::SafetensorsWeights;
use crate::models::weights::{HostTensor, WeightSource};
use crate::plot;
use optimizer::{AdamW, AdamWSettings, GradAccumulator};
use schedule::{DecayKind, LrSchedule};

/// The `[train]` section of a recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "one")]
    pub epochs: usize,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Examples per forward/backward (default: `batch_size`); must divide nothing — the last
    /// micro-batch of a step may be smaller.
    #[serde(default)]
    pub micro_batch_size: Option<usize>,
    pub lr: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
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
    /// Optimizer steps between evaluations (0: only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Optimizer steps between run checkpoints for `--resume` (default: `eval_every`, else
    /// only at the end).
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

impl TrainConfig {
    /// Checks the numbers before anything runs.
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
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            bail!(
                "train.warmup_ratio must lie in [0, 1], got {}",
                self.warmup_ratio
            );
        }
        if self.max_grad_norm.is_some_and(|c| c.is_nan() || c <= 0.0) {
            bail!("train.max_grad_norm must be > 0");
        }
        Ok(())
    }

    pub fn micro_batch(&self) -> usize {
        self.micro_batch_size
            .unwrap_or(self.batch_size)
            .min(self.batch_size)
    }

    pub fn adamw(&self) -> AdamWSettings {
        AdamWSettings {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
        }
    }
}

/// What a micro-batch's loss came with, summed over its examples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchStats {
    pub examples: usize,
    /// Examples the model got right (e.g. chosen reward > rejected), when meaningful.
    pub correct: Option<usize>,
}

/// An evaluation: named metrics and the score by which the best model is kept (higher is
/// better).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub metrics: BTreeMap<String, f64>,
    pub score: f64,
}

/// What the trainer needs from a task.
pub trait TrainTask<M: Module> {
    /// Number of training examples.
    fn num_examples(&self) -> usize;
    /// The mean loss over `examples` (indices into the training set) and its stats.
    fn loss(&mut self, model: &M, examples: &[usize]) -> Result<(Tensor<1>, BatchStats)>;
    /// Evaluates (the trainer passes a frozen copy).
    fn evaluate(&mut self, model: &M) -> Result<Evaluation>;
    /// Saves a usable model into `dir` (e.g. a reward-model folder).
    fn save_model(&self, model: &M, dir: &Path) -> Result<()>;
}

/// Position of a run, saved in `last/train_state.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps done.
    pub step: u64,
    pub best_score: Option<f64>,
    pub best_step: Option<u64>,
    /// The recipe's seed (a resumed run must use the same one).
    pub seed: u64,
    pub total_steps: u64,
}

/// The result of [`Trainer::run`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    pub steps: u64,
    pub final_eval: Option<Evaluation>,
    pub best_score: Option<f64>,
    pub best_step: Option<u64>,
    /// Examples per second over the training steps of this invocation (evaluation excluded).
    pub examples_per_second: f64,
    pub train_seconds: f64,
    pub plot: Option<PathBuf>,
}

/// The order of the examples of epoch `epoch`: a seeded shuffle.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch)));
    order
}

/// The examples of optimizer step `step` (0-based) under `config`, and the total number of
/// steps: epochs × ⌈n / batch_size⌉ (the last step of an epoch may be smaller).
pub fn step_examples(n: usize, config: &TrainConfig, step: u64) -> Vec<usize> {
    let per_epoch = n.div_ceil(config.batch_size) as u64;
    let epoch = step / per_epoch;
    let within = (step % per_epoch) as usize;
    let order = epoch_order(n, config.seed, epoch);
    let start = within * config.batch_size;
    order[start..(start + config.batch_size).min(n)].to_vec()
}

/// The whole number of optimizer steps of a run.
pub fn total_steps(n: usize, config: &TrainConfig) -> u64 {
    let full = n.div_ceil(config.batch_size) as u64 * config.epochs as u64;
    config.max_steps.map_or(full, |m| m.min(full))
}

/// A dropout seed for micro-batch `micro` of step `step`.
fn micro_seed(seed: u64, step: u64, micro: usize) -> u64 {
    let mut x = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 31;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// Runs training loops.
pub struct Trainer {
    pub config: TrainConfig,
    /// The autodiff device the model lives on.
    pub device: Device,
    /// Show a progress bar (else a line every few steps on stderr when it is not a terminal).
    pub progress: bool,
}

impl Trainer {
    /// Trains `model` on `task`. With `resume`, continues from `out_dir/last` (the model passed
    /// must be built as at the start: its trainable weights are replaced by the saved ones).
    pub fn run<M: Module>(
        &self,
        mut model: M,
        task: &mut dyn TrainTask<M>,
        resume: bool,
    ) -> Result<(M, TrainOutcome)> {
        let config = &self.config;
        config.validate()?;
        let n = task.num_examples();
        if n == 0 {
            bail!("the training set is empty");
        }
        let total = total_steps(n, config);
        let full_total = n.div_ceil(config.batch_size) as u64 * config.epochs as u64;
        let schedule = LrSchedule::with_warmup_ratio(
            config.lr,
            config.warmup_ratio,
            full_total,
            config.schedule,
        );
        let out = &config.out_dir;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let last = out.join("last");
        let metrics_path = out.join("metrics.jsonl");

        let (mut optim, mut state) = if resume {
            let state: RunState = serde_json::from_str(
                &std::fs::read_to_string(last.join("train_state.json")).with_context(|| {
                    format!(
                        "reading {} (nothing to resume?)",
                        last.join("train_state.json").display()
                    )
                })?,
            )
            .context("reading the run state")?;
            if state.seed != config.seed {
                bail!(
                    "the run was started with seed {}, the recipe now says {}",
                    state.seed,
                    config.seed
                );
            }
            model = load_trainable(model, &last.join("trainable.safetensors"))?;
            let optim = AdamW::load(&last, &self.device)?;
            truncate_metrics(&metrics_path, state.step)?;
            (optim, state)
        } else {
            if metrics_path.exists() {
                std::fs::remove_file(&metrics_path)
                    .with_context(|| format!("removing {}", metrics_path.display()))?;
            }
            (
                AdamW::new(config.adamw()),
                RunState {
                    seed: config.seed,
                    total_steps: total,
                    ..RunState::default()
                },
            )
        };
        let mut metrics = MetricsLog::open(&metrics_path)?;
        let save_every = config.save_every.unwrap_or(config.eval_every);
        let micro = config.micro_batch();
        let mut bar = Progress::new(total, state.step, self.progress);
        let started = Instant::now();
        let mut trained_examples = 0usize;
        let mut train_seconds = 0.0;
        let mut final_eval = None;

        while state.step < total {
            let step_start = Instant::now();
            let examples = step_examples(n, config, state.step);
            let mut grads = GradAccumulator::default();
            let mut loss_sum = 0.0f64;
            let mut correct = 0usize;
            let mut counted = 0usize;
            for (i, chunk) in examples.chunks(micro).enumerate() {
                self.device.seed(micro_seed(config.seed, state.step, i));
                let (loss, stats) = task.loss(&model, chunk)?;
                let share = chunk.len() as f64 / examples.len() as f64;
                let scaled = loss.mul_scalar(share);
                let value = scaled.clone().into_scalar::<f32>() as f64;
                if !value.is_finite() {
                    bail!(
                        "step {}: the loss is {value} (NaN or infinite); stopping before the update",
                        state.step + 1
                    );
                }
                loss_sum += value;
                grads.add(&model, scaled.backward());
                if let Some(c) = stats.correct {
                    correct += c;
                    counted += stats.examples;
                }
            }
            let lr = schedule.lr_at(state.step);
            let (updated, update) = optim.step(model, lr, grads)?;
            model = updated;
            state.step += 1;
            trained_examples += examples.len();
            train_seconds += step_start.elapsed().as_secs_f64();
            let accuracy = (counted > 0).then(|| correct as f64 / counted as f64);
            metrics.write(&serde_json::json!({
                "kind": "train", "step": state.step, "epoch": (state.step - 1) as f64 * config.batch_size as f64 / n as f64,
                "loss": loss_sum, "accuracy": accuracy, "lr": lr, "grad_norm": update.grad_norm,
                "examples": examples.len(), "elapsed_s": started.elapsed().as_secs_f64(),
            }))?;
            bar.step(state.step, loss_sum, accuracy);

            let at_end = state.step == total;
            let eval_now =
                at_end || (config.eval_every > 0 && state.step.is_multiple_of(config.eval_every));
            if eval_now {
                bar.message(&format!("evaluating at step {}", state.step));
                let evaluation = task.evaluate(&model.valid())?;
                let mut record = serde_json::json!({"kind": "eval", "step": state.step, "score": evaluation.score});
                for (k, v) in &evaluation.metrics {
                    record[k] = serde_json::json!(v);
                }
                metrics.write(&record)?;
                bar.println(&format!(
                    "step {}/{}: eval {}",
                    state.step,
                    total,
                    evaluation
                        .metrics
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                if state.best_score.is_none_or(|b| evaluation.score > b) {
                    state.best_score = Some(evaluation.score);
                    state.best_step = Some(state.step);
                    task.save_model(&model, &out.join("best"))?;
                }
                final_eval = Some(evaluation);
            }
            if at_end || (save_every > 0 && state.step.is_multiple_of(save_every)) {
                save_run(&last, &model, &optim, &state)?;
            }
        }
        bar.finish();
        task.save_model(&model, &out.join("final"))?;
        let plot = plot_metrics(&metrics_path, &out.join("curves.png")).ok();
        Ok((
            model,
            TrainOutcome {
                steps: state.step,
                final_eval,
                best_score: state.best_score,
                best_step: state.best_step,
                examples_per_second: trained_examples as f64 / train_seconds.max(1e-9),
                train_seconds,
                plot,
            },
        ))
    }
}

/// Writes a run checkpoint: trainable weights, optimizer, then the state file last (a reader
/// only trusts a folder whose state file matches).
fn save_run<M: Module>(dir: &Path, model: &M, optim: &AdamW, state: &RunState) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    save_trainable(model, &dir.join("trainable.safetensors"))?;
    optim.save(dir)?;
    write_bytes_atomically(
        &dir.join("train_state.json"),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )
}

struct TrainableCollector {
    stack: PathStack,
    out: Vec<(String, HostTensor)>,
    error: Option<anyhow::Error>,
}

impl ModuleVisitor for TrainableCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if !value.is_require_grad() || self.error.is_some() {
            return;
        }
        let shape = value.dims().to_vec();
        match value.into_data().convert::<f32>().try_to_vec::<f32>() {
            Ok(values) => self
                .out
                .push((self.stack.path(), HostTensor { shape, values })),
            Err(e) => self.error = Some(anyhow::anyhow!("reading {}: {e:?}", self.stack.path())),
        }
    }
}

/// Saves every trainable parameter under its burn path (bit-exact f32).
pub fn save_trainable<M: Module>(model: &M, path: &Path) -> Result<()> {
    let mut c = TrainableCollector {
        stack: PathStack::default(),
        out: Vec::new(),
        error: None,
    };
    model.visit(&mut c);
    if let Some(e) = c.error {
        return Err(e);
    }
    if c.out.is_empty() {
        bail!("the model has no trainable parameters to save");
    }
    save_host_tensors(path, &c.out)
}

struct TrainableLoader<'a> {
    stack: PathStack,
    source: &'a SafetensorsWeights,
    origin: String,
    loaded: usize,
    error: Option<anyhow::Error>,
}

impl ModuleMapper for TrainableLoader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.stack.path();
        if self.error.is_some() || !param.val().is_require_grad() {
            return param;
        }
        let host = match self.source.tensor(&path) {
            Ok(h) => h,
            Err(e) => {
                self.error =
                    Some(e.context(format!("{}: trainable parameter {path}", self.origin)));
                return param;
            }
        };
        let (id, tensor, mapper) = param.consume();
        if host.shape != tensor.dims().to_vec() {
            self.error = Some(anyhow::anyhow!(
                "{}: {path} has shape {:?}, the model's is {:?}",
                self.origin,
                host.shape,
                tensor.dims()
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let device = tensor.device();
        let was_autodiff = tensor.is_autodiff();
        let mut value = Tensor::<D>::from_data(
            TensorData::new(host.values, tensor.shape()),
            &device.clone(),
        )
        .inner();
        if was_autodiff {
            value = Tensor::from_inner(value).require_grad();
        }
        self.loaded += 1;
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Loads what [`save_trainable`] wrote onto the trainable parameters of `model`.
pub fn load_trainable<M: Module>(model: M, path: &Path) -> Result<M> {
    let source = SafetensorsWeights::open(path)?;
    let mut loader = TrainableLoader {
        stack: PathStack::default(),
        source: &source,
        origin: path.display().to_string(),
        loaded: 0,
        error: None,
    };
    let model = model.map(&mut loader);
    if let Some(e) = loader.error {
        return Err(e);
    }
    if loader.loaded != source.names().len() {
        bail!(
            "{}: holds {} tensors, the model has {} matching trainable parameters",
            path.display(),
            source.names().len(),
            loader.loaded
        );
    }
    Ok(model)
}

/// Append-only JSONL metrics.
struct MetricsLog {
    file: std::fs::File,
}

impl MetricsLog {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { file })
    }
    fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}").context("writing metrics")?;
        self.file.flush().context("writing metrics")
    }
}

/// Drops metric lines after `step` (a resumed run rewrites them).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    write_bytes_atomically(path, body.as_bytes())
}

/// Reads `metrics.jsonl` and draws loss and accuracy curves (train per step, eval points).
pub fn plot_metrics(metrics: &Path, png: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let mut series: BTreeMap<(&str, String), Vec<(f64, f64)>> = BTreeMap::new();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for row in &rows {
        let (Some(kind), Some(step)) = (row["kind"].as_str(), row["step"].as_f64()) else {
            continue;
        };
        for (panel, key) in [("loss", "loss"), ("accuracy", "accuracy")] {
            if let Some(v) = row[key].as_f64() {
                series
                    .entry((panel, kind.to_string()))
                    .or_default()
                    .push((step, v));
            }
        }
    }
    let panel = |name: &str| plot::Panel {
        title: name.to_string(),
        series: series
            .iter()
            .filter(|((p, _), _)| *p == name)
            .map(|((_, kind), points)| plot::Series {
                name: kind.clone(),
                points: if kind == "train" {
                    smooth(points, 10)
                } else {
                    points.clone()
                },
            })
            .collect(),
    };
    let chart = plot::Chart {
        title: "training curves".into(),
        x_label: "optimizer step".into(),
        panels: vec![panel("loss"), panel("accuracy")],
    };
    plot::write_png(&chart, png, 900, 600)?;
    Ok(png.to_path_buf())
}

/// Trailing moving average over `window` points (train curves are noisy per step).
fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, _))| {
            let from = i.saturating_sub(window - 1);
            let slice = &points[from..=i];
            (
                x,
                slice.iter().map(|p| p.1).sum::<f64>() / slice.len() as f64,
            )
        })
        .collect()
}

/// A progress bar with ETA and live loss/accuracy; plain lines when stderr is not a terminal.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    total: u64,
    started: Instant,
    first_step: u64,
    loss_ema: Option<f64>,
    acc_ema: Option<f64>,
}

impl Progress {
    fn new(total: u64, done: u64, enabled: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (enabled && terminal).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(done);
            bar
        });
        Self {
            bar,
            plain: enabled && !terminal,
            total,
            started: Instant::now(),
            first_step: done,
            loss_ema: None,
            acc_ema: None,
        }
    }

    fn step(&mut self, step: u64, loss: f64, accuracy: Option<f64>) {
        let ema = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| 0.9 * o + 0.1 * new));
        self.loss_ema = ema(self.loss_ema, loss);
        if let Some(a) = accuracy {
            self.acc_ema = ema(self.acc_ema, a);
        }
        let msg = format!(
            "loss {:.4}{}",
            self.loss_ema.unwrap_or(f64::NAN),
            self.acc_ema
                .map_or(String::new(), |a| format!(" acc {:.3}", a))
        );
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(msg);
        } else if self.plain && (step.is_multiple_of(10) || step == self.total) {
            let done = (step - self.first_step) as f64;
            let elapsed = self.started.elapsed().as_secs_f64();
            let eta = elapsed / done.max(1.0) * (self.total - step) as f64;
            eprintln!(
                "step {step}/{} {msg} [{elapsed:.0}s elapsed, eta {eta:.0}s]",
                self.total
            );
        }
    }

    fn message(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.to_string());
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => {
                if self.plain {
                    eprintln!("{line}");
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::models::bert::BertModel;
    use crate::models::bert::tests::{tiny_config, tiny_weights};
    use crate::models::pooling::Pooling;
    use crate::models::reward::{Backbone, RewardModel, seeded_head};
    use burn::tensor::Int;
    use burn::tensor::activation::log_sigmoid;

    /// A tiny BERT reward model (dropout as given) on an autodiff device.
    fn tiny_rm(dropout: f64, device: &Device) -> RewardModel {
        let mut c = tiny_config();
        c.hidden_dropout_prob = dropout;
        c.attention_probs_dropout_prob = dropout;
        let bert = BertModel::from_source(&tiny_weights(&c), &c, device).unwrap();
        RewardModel {
            backbone: Backbone::Bert(bert),
            head: seeded_head(c.hidden_size, 1, 0.5, 7, device),
        }
    }

    /// A constant-rate config with no clipping, to be adjusted by struct update.
    fn plain_config(seed: u64, batch_size: usize, out_dir: PathBuf) -> TrainConfig {
        TrainConfig {
            epochs: 1,
            batch_size,
            micro_batch_size: None,
            lr: 0.1,
            weight_decay: 0.0,
            warmup_ratio: 0.0,
            schedule: DecayKind::Constant,
            max_grad_norm: None,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            seed,
            eval_every: 0,
            save_every: None,
            max_steps: None,
            out_dir,
        }
    }

    /// Sixteen synthetic preference pairs of token ids (lengths 3..6, ids 1..19).
    fn pairs() -> Vec<(Vec<i64>, Vec<i64>)> {
        (0..16)
            .map(|i: i64| {
                let len = 3 + (i % 4) as usize;
                let chosen = (0..len as i64).map(|j| 1 + (i * 7 + j * 3) % 19).collect();
                let rejected = (0..len as i64)
                    .map(|j| 1 + (i * 5 + j * 11 + 2) % 19)
                    .collect();
                (chosen, rejected)
            })
            .collect()
    }

    fn padded(rows: &[&Vec<i64>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let t = rows.iter().map(|r| r.len()).max().unwrap();
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for r in rows {
            for j in 0..t {
                ids.push(r.get(j).copied().unwrap_or(0));
                mask.push(i64::from(j < r.len()));
            }
        }
        (
            Tensor::from_data(TensorData::new(ids, [rows.len(), t]), device),
            Tensor::from_data(TensorData::new(mask, [rows.len(), t]), device),
        )
    }

    /// Mean Bradley–Terry loss of `examples` (chosen and rejected in one forward).
    fn bt_loss(
        model: &RewardModel,
        data: &[(Vec<i64>, Vec<i64>)],
        examples: &[usize],
        device: &Device,
    ) -> (Tensor<1>, usize) {
        let rows: Vec<&Vec<i64>> = examples
            .iter()
            .map(|&i| &data[i].0)
            .chain(examples.iter().map(|&i| &data[i].1))
            .collect();
        let (ids, mask) = padded(&rows, device);
        let b = examples.len();
        let r = model.forward(ids, mask, Pooling::Mean).reshape([2 * b]);
        let margin = r.clone().narrow(0, 0, b) - r.narrow(0, b, b);
        let correct = margin
            .clone()
            .greater_elem(0.0)
            .int()
            .sum()
            .into_scalar::<i64>() as usize;
        (log_sigmoid(margin).mean().neg(), correct)
    }

    #[test]
    fn accumulating_two_times_four_micro_batches_equals_one_batch_of_eight() {
        let device = test_device().autodiff();
        let data = pairs();
        let examples: Vec<usize> = (0..8).collect();
        let model = tiny_rm(0.0, &device);

        let mut whole = GradAccumulator::default();
        let (loss, _) = bt_loss(&model, &data, &examples, &device);
        whole.add(&model, loss.backward());

        let mut accumulated = GradAccumulator::default();
        for chunk in examples.chunks(2) {
            let (loss, _) = bt_loss(&model, &data, chunk, &device);
            accumulated.add(&model, loss.mul_scalar(chunk.len() as f64 / 8.0).backward());
        }
        assert!(
            whole.len() > 10,
            "{} parameters with gradients",
            whole.len()
        );
        assert_eq!(whole.len(), accumulated.len());
        let mut worst = 0f32;
        for (path, g) in whole.iter() {
            let a: Vec<f32> = accumulated
                .get(path)
                .unwrap()
                .clone()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let w: Vec<f32> = g.clone().into_data().try_to_vec().unwrap();
            for (x, y) in a.iter().zip(&w) {
                worst = worst.max((x - y).abs());
            }
        }
        assert!(worst < 1e-5, "max gradient difference {worst}");
        assert!((whole.global_norm() - accumulated.global_norm()).abs() < 1e-5);
    }

    #[test]
    fn adamw_first_step_matches_the_closed_form_and_clipping_scales_gradients() {
        let device = test_device().autodiff();
        // θ = [1, 1]; loss = 3θ₀ + 4θ₁ → g = (3, 4), ‖g‖ = 5.
        let make = || {
            let mut head = seeded_head(2, 1, 0.0, 0, &device);
            head.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![1.0f32, 1.0], [2, 1]),
                &device,
            ));
            head.bias = None;
            head
        };
        let x = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &device);
        let run = |clip: Option<f64>, eps: f64| {
            let head = make();
            let mut grads = GradAccumulator::default();
            grads.add(&head, head.forward(x.clone()).sum().backward());
            assert!((grads.global_norm() - 5.0).abs() < 1e-6);
            let mut adamw = AdamW::new(AdamWSettings {
                beta1: 0.9,
                beta2: 0.999,
                eps,
                weight_decay: 0.01,
                max_grad_norm: clip,
            });
            let (head, stats) = adamw.step(head, 0.1, grads).unwrap();
            assert!((stats.grad_norm - 5.0).abs() < 1e-6);
            let w: Vec<f32> = head.weight.val().into_data().try_to_vec::<f32>().unwrap();
            w
        };
        // Step 1: m̂ = g, v̂ = g², θ ← θ(1 − lr·λ) − lr·g/(|g| + ε).
        let w = run(None, 1e-8);
        for v in &w {
            assert!((v - (0.999 - 0.1)).abs() < 1e-6, "{w:?}");
        }
        // With ε = 1 the step depends on the gradient's size: clipped to norm 1, g = (0.6, 0.8).
        let unclipped = run(None, 1.0);
        let clipped = run(Some(1.0), 1.0);
        let expect = |g: f32| 0.999 - 0.1 * g / (g + 1.0);
        assert!((unclipped[0] - expect(3.0)).abs() < 1e-6, "{unclipped:?}");
        assert!((unclipped[1] - expect(4.0)).abs() < 1e-6);
        assert!((clipped[0] - expect(0.6)).abs() < 1e-6, "{clipped:?}");
        assert!((clipped[1] - expect(0.8)).abs() < 1e-6);
    }

    /// A reward-model task over the synthetic pairs, evaluated on the first eight.
    struct PairsTask {
        data: Vec<(Vec<i64>, Vec<i64>)>,
        device: Device,
    }

    impl TrainTask<RewardModel> for PairsTask {
        fn num_examples(&self) -> usize {
            self.data.len()
        }
        fn loss(
            &mut self,
            model: &RewardModel,
            examples: &[usize],
        ) -> Result<(Tensor<1>, BatchStats)> {
            let (loss, correct) = bt_loss(model, &self.data, examples, &self.device);
            Ok((
                loss,
                BatchStats {
                    examples: examples.len(),
                    correct: Some(correct),
                },
            ))
        }
        fn evaluate(&mut self, model: &RewardModel) -> Result<Evaluation> {
            let device = self.device.clone().inner();
            let examples: Vec<usize> = (0..8).collect();
            let (loss, correct) = bt_loss(model, &self.data, &examples, &device);
            let accuracy = correct as f64 / 8.0;
            Ok(Evaluation {
                metrics: BTreeMap::from([
                    ("loss".into(), loss.into_scalar::<f32>() as f64),
                    ("accuracy".into(), accuracy),
                ]),
                score: accuracy,
            })
        }
        fn save_model(&self, model: &RewardModel, dir: &Path) -> Result<()> {
            std::fs::create_dir_all(dir)?;
            save_trainable(model, &dir.join("weights.safetensors"))
        }
    }

    fn train_losses(out: &Path) -> Vec<(u64, f64)> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "train")
            .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
            .collect()
    }

    #[test]
    fn a_run_stopped_at_step_k_and_resumed_gives_the_uninterrupted_loss_curve() {
        let device = test_device().autodiff();
        let tmp = std::env::temp_dir().join(format!("plumbline-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let config = |out: &str, max_steps: Option<u64>| TrainConfig {
            epochs: 2,
            micro_batch_size: Some(2),
            lr: 0.05,
            weight_decay: 0.01,
            warmup_ratio: 0.25,
            schedule: DecayKind::Cosine,
            max_grad_norm: Some(1.0),
            eval_every: 3,
            max_steps,
            ..plain_config(3, 4, tmp.join(out))
        };
        let trainer = |config: TrainConfig| Trainer {
            config,
            device: device.clone(),
            progress: false,
        };
        let task = || PairsTask {
            data: pairs(),
            device: device.clone(),
        };

        // Dropout on: resuming must also restore the dropout streams.
        let (_, whole) = trainer(config("whole", None))
            .run(tiny_rm(0.1, &device), &mut task(), false)
            .unwrap();
        assert_eq!(whole.steps, 8);
        let (_, first) = trainer(config("split", Some(5)))
            .run(tiny_rm(0.1, &device), &mut task(), false)
            .unwrap();
        assert_eq!(first.steps, 5);
        let (_, second) = trainer(config("split", None))
            .run(tiny_rm(0.1, &device), &mut task(), true)
            .unwrap();
        assert_eq!(second.steps, 8);

        let a = train_losses(&tmp.join("whole"));
        let b = train_losses(&tmp.join("split"));
        assert_eq!(a.len(), 8);
        assert_eq!(b.len(), 8, "{b:?}");
        for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
            assert_eq!(sa, sb);
            assert!((la - lb).abs() < 1e-6, "step {sa}: {la} vs {lb}");
        }
        // The best and final models were written.
        assert!(tmp.join("whole/best/weights.safetensors").is_file());
        assert!(tmp.join("whole/final/weights.safetensors").is_file());
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn a_nan_loss_stops_the_run_with_the_step_named() {
        struct NanTask;
        impl TrainTask<RewardModel> for NanTask {
            fn num_examples(&self) -> usize {
                4
            }
            fn loss(
                &mut self,
                model: &RewardModel,
                _: &[usize],
            ) -> Result<(Tensor<1>, BatchStats)> {
                let w = model.head.weight.val().sum();
                Ok((w.mul_scalar(f32::NAN), BatchStats::default()))
            }
            fn evaluate(&mut self, _: &RewardModel) -> Result<Evaluation> {
                Ok(Evaluation::default())
            }
            fn save_model(&self, _: &RewardModel, _: &Path) -> Result<()> {
                Ok(())
            }
        }
        let device = test_device().autodiff();
        let tmp = std::env::temp_dir().join(format!("plumbline-nan-{}", std::process::id()));
        let config = plain_config(1, 2, tmp.clone());
        let err = Trainer {
            config,
            device: device.clone(),
            progress: false,
        }
        .run(tiny_rm(0.0, &device), &mut NanTask, false)
        .unwrap_err()
        .to_string();
        assert!(err.contains("step 1: the loss is NaN"), "{err}");
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn epoch_orders_are_seeded_permutations_and_steps_cover_each_epoch() {
        let config = TrainConfig {
            epochs: 2,
            ..plain_config(9, 3, PathBuf::from("unused"))
        };
        assert_eq!(total_steps(7, &config), 6);
        let mut seen: Vec<usize> = (0..3).flat_map(|s| step_examples(7, &config, s)).collect();
        assert_eq!(step_examples(7, &config, 2).len(), 1);
        seen.sort();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        assert_eq!(epoch_order(7, 9, 0), epoch_order(7, 9, 0));
        assert_ne!(epoch_order(7, 9, 0), epoch_order(7, 9, 1));
    }
}
