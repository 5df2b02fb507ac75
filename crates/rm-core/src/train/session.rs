//! The machinery both drivers share: opening or resuming a run, one optimizer step over
//! micro-batches, evaluation with best-model keeping, checkpoints and the final model.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::metrics::{LossOutput, MetricsLog, StepMetrics, StepValues, truncate_metrics};
use super::optimizer::{AdamW, GradAccumulator};
use super::progress::Progress;
use super::run_dir::{RunDir, replace_dir_atomically};
use super::schedule::LrSchedule;
use super::task::{Evaluation, TrainTask};
use super::trainable::{load_trainable, save_trainable};
use super::{TrainConfig, TrainOutcome, Trainer};
use crate::checkpoint::write_bytes_atomically;

/// Position of a run, saved in `last/train_state.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps done.
    pub step: u64,
    /// Rollout iterations done (rollout driver).
    #[serde(default)]
    pub iteration: u64,
    pub best_score: Option<f64>,
    pub best_step: Option<u64>,
    /// The recipe's seed (a resumed run must use the same one).
    pub seed: u64,
    pub total_steps: u64,
    /// The task's own state ([`TrainTask::state`]).
    #[serde(default)]
    pub task_state: serde_json::Value,
}

const STATE_FILE: &str = "train_state.json";
const TRAINABLE_FILE: &str = "trainable.safetensors";

/// A dropout seed for micro-batch `micro` of step `step`.
pub(crate) fn micro_seed(seed: u64, step: u64, micro: usize) -> u64 {
    let mut x = seed
        ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (micro as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 31;
    x.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// SplitMix64's finalizer: decorrelates nearby inputs.
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Runs a step's micro-batches: each one's `loss · weight` is back-propagated and the gradients
/// summed, then divided by the step's total weight — the gradient of the step's weighted mean,
/// whatever the unit (examples, sequences, tokens). Dropout is seeded per micro-batch.
pub fn accumulate<M: Module>(
    model: &M,
    task: &mut dyn TrainTask<M>,
    items: &[usize],
    micro_batch: usize,
    device: &Device,
    seeds: impl Fn(usize) -> u64,
) -> Result<(GradAccumulator, StepMetrics)> {
    let (grads, metrics) = accumulate_any(model, task, items, micro_batch, device, seeds)?;
    if metrics.weight() <= 0.0 {
        bail!("{NO_WEIGHT}");
    }
    Ok((grads, metrics))
}

const NO_WEIGHT: &str =
    "the step's micro-batches carry no weight (nothing to train on: empty completions?)";

/// [`accumulate`] that returns a step of zero weight (no gradient) instead of an error.
fn accumulate_any<M: Module>(
    model: &M,
    task: &mut dyn TrainTask<M>,
    items: &[usize],
    micro_batch: usize,
    device: &Device,
    seeds: impl Fn(usize) -> u64,
) -> Result<(GradAccumulator, StepMetrics)> {
    let mut grads = GradAccumulator::default();
    let mut metrics = StepMetrics::default();
    for (i, chunk) in items.chunks(micro_batch.max(1)).enumerate() {
        device.seed(seeds(i));
        let LossOutput {
            loss,
            weight,
            metrics: named,
            tokens,
        } = task.loss(model, chunk)?;
        if loss.dims() != [1] {
            bail!("a task's loss must be a [1] tensor, got {:?}", loss.dims());
        }
        metrics.add(&loss, weight, named)?;
        metrics.add_tokens(tokens);
        if weight > 0.0 {
            grads.add(model, loss.mul_scalar(weight).backward());
        }
    }
    if metrics.weight() > 0.0 {
        grads.scale(1.0 / metrics.weight());
    }
    Ok((grads, metrics))
}

/// An open training session.
pub(crate) struct Session<'a> {
    pub config: &'a TrainConfig,
    pub device: &'a Device,
    pub run: &'a RunDir,
    pub state: RunState,
    optim: AdamW,
    schedule: LrSchedule,
    metrics: MetricsLog,
    pub bar: Progress,
    started: Instant,
    trained_items: usize,
    train_seconds: f64,
    final_eval: Option<Evaluation>,
}

impl<'a> Session<'a> {
    /// Opens the session: fresh, or restored from the run's checkpoint (model weights,
    /// optimizer, position, task state).
    pub fn start<M: Module>(
        trainer: &'a Trainer,
        run: &'a RunDir,
        mut model: M,
        task: &mut dyn TrainTask<M>,
        total_steps: u64,
        schedule_steps: u64,
    ) -> Result<(Self, M)> {
        let (config, device, progress) = (&trainer.config, &trainer.device, trainer.progress);
        let schedule = LrSchedule::with_warmup_ratio(
            config.lr,
            config.warmup_ratio,
            schedule_steps,
            config.schedule,
        );
        let metrics_path = run.metrics_path();
        let (optim, state) = if run.resuming() {
            let last = run.checkpoint()?;
            let state_path = last.join(STATE_FILE);
            let mut state: RunState = serde_json::from_str(
                &std::fs::read_to_string(&state_path)
                    .with_context(|| format!("reading {}", state_path.display()))?,
            )
            .with_context(|| format!("{}: not a run state", state_path.display()))?;
            if state.seed != config.seed {
                bail!(
                    "the run was started with seed {}, the recipe now says {}",
                    state.seed,
                    config.seed
                );
            }
            model = load_trainable(model, &last.join(TRAINABLE_FILE))?;
            let optim = AdamW::load(&last, device)?.with_groups(config.param_group_rules());
            task.restore_state(std::mem::take(&mut state.task_state))
                .context("restoring the task's state from the checkpoint")?;
            task.load_state_files(&last)
                .with_context(|| format!("restoring the task's state from {}", last.display()))?;
            truncate_metrics(&metrics_path, state.step, state.iteration)?;
            state.total_steps = total_steps;
            (optim, state)
        } else {
            (
                AdamW::new(config.adamw()).with_groups(config.param_group_rules()),
                RunState {
                    seed: config.seed,
                    total_steps,
                    ..RunState::default()
                },
            )
        };
        let mut metrics = MetricsLog::open(&metrics_path)?;
        if !run.changes().is_empty() {
            metrics.write(&serde_json::json!({
                "kind": "note", "step": state.step,
                "resumed_with_changes": run.changes(),
            }))?;
        }
        let bar = Progress::new(total_steps, state.step, progress);
        Ok((
            Self {
                config,
                device,
                run,
                state,
                optim,
                schedule,
                metrics,
                bar,
                started: Instant::now(),
                trained_items: 0,
                train_seconds: 0.0,
                final_eval: None,
            },
            model,
        ))
    }

    /// Appends a record to the metrics log.
    pub fn log(&mut self, record: &serde_json::Value) -> Result<()> {
        self.metrics.write(record)
    }

    /// One optimizer step over `items`; `extra` fields go into the step's metrics record.
    pub fn step<M: Module>(
        &mut self,
        model: M,
        task: &mut dyn TrainTask<M>,
        items: &[usize],
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<M> {
        let start = Instant::now();
        let step = self.state.step;
        let seed = self.config.seed;
        let (grads, metrics) = accumulate_any(
            &model,
            task,
            items,
            self.config.micro_batch(),
            self.device,
            |i| micro_seed(seed, step, i),
        )
        .with_context(|| format!("step {}", step + 1))?;
        if metrics.weight() <= 0.0 {
            if !task.allows_empty_steps() {
                bail!("step {}: {NO_WEIGHT}", step + 1);
            }
            // Nothing to learn from (every item masked): the step passes without an update, so
            // the schedule and the iteration structure stay as planned.
            self.state.step += 1;
            let mut record = serde_json::json!({
                "kind": "train", "step": self.state.step, "skipped": true,
                "examples": items.len(), "weight": 0.0,
            });
            for (k, v) in extra {
                record[k] = v;
            }
            self.metrics.write(&record)?;
            return Ok(model);
        }
        let values: StepValues = metrics.read(grads.squared_norm())?;
        if !values.loss.is_finite() {
            bail!(
                "step {}: the loss is {} (NaN or infinite); stopping before the update",
                step + 1,
                values.loss
            );
        }
        let lr = self.schedule.lr_at(step);
        let grad_norm = values.grad_norm.unwrap_or(0.0);
        let (model, _) = self
            .optim
            .apply(model, lr, grads, grad_norm)
            .with_context(|| format!("step {}", step + 1))?;
        self.state.step += 1;
        task.after_step(&model, &values)?;
        self.trained_items += items.len();
        let step_seconds = start.elapsed().as_secs_f64();
        self.train_seconds += step_seconds;
        let mut record = serde_json::json!({
            "kind": "train", "step": self.state.step, "loss": values.loss, "lr": lr,
            "grad_norm": grad_norm, "examples": items.len(), "weight": values.weight,
            "step_s": step_seconds,
            "examples_per_s": items.len() as f64 / step_seconds.max(1e-9),
            "elapsed_s": self.started.elapsed().as_secs_f64(),
        });
        if values.tokens > 0 {
            record["tokens"] = serde_json::json!(values.tokens);
            record["tokens_per_s"] =
                serde_json::json!(values.tokens as f64 / step_seconds.max(1e-9));
        }
        for (k, v) in &values.metrics {
            record[k] = serde_json::json!(v);
        }
        for (k, v) in extra {
            record[k] = v;
        }
        self.metrics.write(&record)?;
        self.bar.step(
            self.state.step,
            values.loss,
            values.metrics.get("accuracy").copied(),
        );
        Ok(model)
    }

    /// Evaluates a frozen copy, logs it, and keeps `best/` by the score.
    pub fn evaluate<M: Module>(&mut self, model: &M, task: &mut dyn TrainTask<M>) -> Result<()> {
        self.bar
            .message(&format!("evaluating at step {}", self.state.step));
        let evaluation = task.evaluate(&model.valid())?;
        let mut record =
            serde_json::json!({"kind": "eval", "step": self.state.step, "score": evaluation.score});
        for (k, v) in &evaluation.metrics {
            record[k] = serde_json::json!(v);
        }
        self.metrics.write(&record)?;
        self.bar.println(&format!(
            "step {}/{}: eval {}",
            self.state.step,
            self.state.total_steps,
            evaluation
                .metrics
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        if evaluation.score.is_finite()
            && self.state.best_score.is_none_or(|b| evaluation.score > b)
        {
            self.state.best_score = Some(evaluation.score);
            self.state.best_step = Some(self.state.step);
            save_model_dir(task, model, &self.run.path().join("best"))?;
        }
        self.final_eval = Some(evaluation);
        Ok(())
    }

    /// The cadence both drivers share: after unit `done` (a step or an iteration) evaluate every
    /// `eval_every` units and checkpoint every `save_every`, and both at the end.
    pub fn after_unit<M: Module>(
        &mut self,
        done: u64,
        at_end: bool,
        model: &M,
        task: &mut dyn TrainTask<M>,
    ) -> Result<()> {
        let every = |n: u64| at_end || (n > 0 && done.is_multiple_of(n));
        if every(self.config.eval_every) {
            self.evaluate(model, task)?;
        }
        if every(self.config.save_interval()) {
            self.checkpoint(model, task)?;
        }
        Ok(())
    }

    /// Writes the run checkpoint (all or nothing).
    pub fn checkpoint<M: Module>(&mut self, model: &M, task: &dyn TrainTask<M>) -> Result<()> {
        let mut state = self.state.clone();
        state.task_state = task.state()?;
        self.run.write_checkpoint(|dir| {
            save_trainable(model, &dir.join(TRAINABLE_FILE))?;
            self.optim.save(dir)?;
            task.save_state_files(dir)?;
            write_bytes_atomically(
                &dir.join(STATE_FILE),
                serde_json::to_string_pretty(&state)?.as_bytes(),
            )
        })
    }

    /// Saves `final/` and returns the outcome.
    pub fn finish<M: Module>(self, model: &M, task: &dyn TrainTask<M>) -> Result<TrainOutcome> {
        self.bar.finish();
        save_model_dir(task, model, &self.run.path().join("final"))?;
        Ok(TrainOutcome {
            steps: self.state.step,
            final_eval: self.final_eval,
            best_score: self.state.best_score,
            best_step: self.state.best_step,
            examples_per_second: self.trained_items as f64 / self.train_seconds.max(1e-9),
            train_seconds: self.train_seconds,
        })
    }
}

/// The task's model folder, swapped in atomically.
fn save_model_dir<M: Module>(task: &dyn TrainTask<M>, model: &M, dir: &Path) -> Result<()> {
    replace_dir_atomically(dir, |staging| task.save_model(model, staging))
}
