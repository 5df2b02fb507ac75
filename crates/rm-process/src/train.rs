//! PRM training: recipe → solutions → dev split by problem → step examples → units →
//! [`PrmTask`] → [`Trainer::run_epochs`] → the final model's evaluation (steps and best-of-N on
//! the dev problems) → report, summary and curves in the run folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rm_core::burn::tensor::activation::{log_sigmoid, sigmoid};
use rm_core::burn::tensor::{Device, Tensor, TensorData};
use rm_core::models::reward::{RewardModel, RewardModelConfig};
use rm_core::train::{
    EpochTask, Evaluation, LossOutput, Metric, RESUMABLE_TRAIN_FIELDS, RunDir, TrainConfig,
    TrainOutcome, TrainTask, Trainer,
};
use rm_pipeline::TrainRequest;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::bon::{BonProblem, bon_from_alternatives};
use crate::data::{
    HierarchicalConfig, LabelPolicy, NeutralAs, StepExample, StepSource, StepTargets, examples_of,
    hierarchical_examples, split_by_problem,
};
use crate::eval::{EvalReport, evaluate_bon, evaluate_steps};
use crate::model::{PrmShape, ProcessRewardModel, Unit, unit_logits};
use crate::step_pairs::{StepPair, StepPreferenceTask, encode_pairs, step_pairs_of};
use rm_core::types::StepLabelledSolution;

/// The `[data]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrmDataConfig {
    pub train: StepSource,
    /// A separate dev file; without it `dev_fraction` of the training problems are held out.
    #[serde(default)]
    pub dev: Option<StepSource>,
    #[serde(default = "default_dev_fraction")]
    pub dev_fraction: f64,
    #[serde(default = "default_split_seed")]
    pub split_seed: u64,
    /// What PRM800K's rating 0 trains as.
    #[serde(default)]
    pub neutral: NeutralAs,
    /// The hard labels (default) or the soft labels (PAV's verifier; see [`StepTargets`]).
    #[serde(default)]
    pub targets: StepTargets,
    /// Also train on every rated non-preferred alternative (one example each).
    #[serde(default)]
    pub alternatives: bool,
    /// HRM's coarse-grained training examples (consecutive steps merged into one unit) and HNC;
    /// see [`HierarchicalConfig`]. Dev stays fine-grained, so its metrics compare with a plain
    /// PRM's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hierarchical: Option<HierarchicalConfig>,
    /// Only the first N training solutions after the split (0 = all).
    #[serde(default)]
    pub train_limit: usize,
    /// Only the first N dev solutions (0 = all).
    #[serde(default)]
    pub dev_limit: usize,
}

fn default_dev_fraction() -> f64 {
    0.1
}
fn default_split_seed() -> u64 {
    7
}

/// The `[prm]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrmConfig {
    pub shape: PrmShape,
    /// What the PRM is trained on (default: step classification).
    #[serde(default)]
    pub objective: PrmObjective,
    /// Step preference: pairs per step position at most.
    #[serde(default = "default_pairs_per_step")]
    pub max_pairs_per_step: usize,
}

fn default_pairs_per_step() -> usize {
    4
}

/// The training objective (`[prm] objective`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrmObjective {
    /// Binary cross-entropy of each labelled step (hard or soft targets, `data.targets`).
    #[default]
    Classification,
    /// Bradley–Terry on sibling steps after the same prefix ([`crate::step_pairs`]): a
    /// step-level reward model.
    StepPreference,
}

/// The `[eval]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrmEvalConfig {
    /// Sequences per scoring forward pass.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// A step is judged correct when p ≥ threshold.
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// Candidates per dev problem in the best-of-N set built from PRM800K's alternatives.
    #[serde(default = "default_bon_n")]
    pub bon_n: usize,
}

fn default_eval_batch() -> usize {
    8
}
fn default_threshold() -> f32 {
    0.5
}
fn default_bon_n() -> usize {
    8
}

impl Default for PrmEvalConfig {
    fn default() -> Self {
        Self {
            batch_size: default_eval_batch(),
            threshold: default_threshold(),
            bon_n: default_bon_n(),
        }
    }
}

/// A PRM training recipe (`recipes/prm-*.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrmRecipe {
    pub model: RewardModelConfig,
    pub prm: PrmConfig,
    pub data: PrmDataConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: PrmEvalConfig,
}

impl PrmRecipe {
    /// Reads a recipe with `--set` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        rm_core::recipe::load(path, overrides)
    }

    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        if self.eval.batch_size == 0 {
            bail!("eval.batch_size must be at least 1");
        }
        if !(self.eval.threshold > 0.0 && self.eval.threshold < 1.0) {
            bail!("eval.threshold {} must be in (0, 1)", self.eval.threshold);
        }
        if let Some(hierarchical) = &self.data.hierarchical {
            hierarchical.validate()?;
            if self.prm.objective != PrmObjective::Classification {
                bail!(
                    "data.hierarchical builds step-classification examples; prm.objective = \"step-preference\" trains on sibling pairs instead"
                );
            }
        }
        Ok(())
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct PrmTrainReport {
    pub out_dir: PathBuf,
    pub final_dir: PathBuf,
    pub outcome: TrainOutcome,
    pub report: EvalReport,
    pub train_solutions: usize,
    pub dev_solutions: usize,
    /// HRM's coarse-grained training examples (`data.hierarchical`; 0 without it).
    pub coarse_examples: usize,
    pub plot: Option<PathBuf>,
    pub plot_error: Option<String>,
}

/// A unit with its per-column targets.
pub struct TrainUnit {
    pub unit: Unit,
    /// Per column: 1 correct, 0 wrong (or a soft label in [0, 1]); `mask` 0 where the step has
    /// no target.
    pub targets: Vec<f32>,
    pub mask: Vec<f32>,
}

/// The training units of examples on their hard targets (steps past `max_len` dropped;
/// examples left with no target counted in the second value).
pub fn encode_examples(
    prm: &ProcessRewardModel,
    examples: &[StepExample],
    max_len: usize,
) -> Result<(Vec<TrainUnit>, usize)> {
    encode_examples_with(prm, examples, max_len, StepTargets::Hard)
}

/// [`encode_examples`] with the targets `targets` names: the hard labels as 0/1, or the soft
/// labels (a step without one has no target).
pub fn encode_examples_with(
    prm: &ProcessRewardModel,
    examples: &[StepExample],
    max_len: usize,
    targets: StepTargets,
) -> Result<(Vec<TrainUnit>, usize)> {
    let mut out = Vec::new();
    let mut skipped = 0;
    for (i, e) in examples.iter().enumerate() {
        let steps: Vec<&str> = e.steps.iter().map(String::as_str).collect();
        let units = prm
            .encode(&e.prompt, &steps, Some(max_len))
            .with_context(|| format!("example {i}"))?;
        let before = out.len();
        for unit in units {
            let t: Vec<Option<f32>> = unit
                .steps
                .iter()
                .map(|&s| match targets {
                    StepTargets::Hard => e.targets[s].map(f32::from),
                    StepTargets::Soft => e.soft.get(s).copied().flatten(),
                })
                .collect();
            if t.iter().all(Option::is_none) {
                continue;
            }
            out.push(TrainUnit {
                targets: t.iter().map(|t| t.unwrap_or(0.0)).collect(),
                mask: t.iter().map(|t| f32::from(t.is_some())).collect(),
                unit,
            });
        }
        skipped += usize::from(out.len() == before);
    }
    Ok((out, skipped))
}

/// Masked binary cross-entropy over step logits (hard or soft targets `y`):
/// `L = −Σ m·(y·ln σ(z) + (1−y)·ln σ(−z)) / Σ m`, the step accuracy
/// `Σ m·[(z > 0) = (y > ½)] / Σ m`, the Brier score `Σ m·(σ(z) − y)² / Σ m`, and the weight
/// (labelled steps).
pub fn step_bce(
    model: &RewardModel,
    prm: &ProcessRewardModel,
    units: &[&TrainUnit],
    device: &Device,
) -> Result<StepLoss> {
    let refs: Vec<&Unit> = units.iter().map(|u| &u.unit).collect();
    let z = unit_logits(
        model,
        prm.bundle.spec.pooling,
        prm.bundle.spec.pad_id,
        &refs,
        device,
    )?;
    let [b, n] = z.dims();
    let column = |f: &dyn Fn(&TrainUnit) -> &Vec<f32>| {
        let mut v = vec![0f32; b * n];
        for (r, u) in units.iter().enumerate() {
            v[r * n..r * n + f(u).len()].copy_from_slice(f(u));
        }
        Tensor::<2>::from_data(TensorData::new(v, [b, n]), device)
    };
    let y = column(&|u| &u.targets);
    let m = column(&|u| &u.mask);
    let count: f64 = units
        .iter()
        .map(|u| u.mask.iter().sum::<f32>() as f64)
        .sum();
    if count == 0.0 {
        bail!("a batch without labelled steps");
    }
    let ll =
        y.clone() * log_sigmoid(z.clone()) + (y.clone().neg() + 1.0) * log_sigmoid(z.clone().neg());
    let loss = (ll * m.clone()).sum().neg().div_scalar(count);
    let brier = ((sigmoid(z.clone()) - y.clone()).powi_scalar(2) * m.clone())
        .sum()
        .div_scalar(count);
    let right = z
        .greater_elem(0.0)
        .float()
        .equal(y.greater_elem(0.5).float())
        .float()
        * m;
    let accuracy = right.sum().div_scalar(count);
    Ok(StepLoss {
        loss,
        accuracy,
        brier,
        count,
    })
}

/// What [`step_bce`] returns.
pub struct StepLoss {
    pub loss: Tensor<1>,
    pub accuracy: Tensor<1>,
    pub brier: Tensor<1>,
    /// Labelled steps.
    pub count: f64,
}

/// The PRM training task.
pub struct PrmTask {
    pub train: Vec<TrainUnit>,
    pub dev: Vec<TrainUnit>,
    pub template: ProcessRewardModel,
    pub batch_size: usize,
}

impl TrainTask<RewardModel> for PrmTask {
    fn loss(&mut self, model: &RewardModel, items: &[usize]) -> Result<LossOutput> {
        let device = model.head.weight.val().device();
        let units: Vec<&TrainUnit> = items.iter().map(|&i| &self.train[i]).collect();
        let l = step_bce(model, &self.template, &units, &device)?;
        let tokens = units.iter().map(|u| u.unit.seq.len()).sum();
        Ok(LossOutput::new(l.loss, l.count)
            .with(Metric::device("step_accuracy", l.accuracy, l.count))
            .with_tokens(tokens))
    }

    fn evaluate(&mut self, model: &RewardModel) -> Result<Evaluation> {
        let device = model.head.weight.val().device();
        let (mut loss, mut acc, mut brier, mut total) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for chunk in self.dev.chunks(self.batch_size) {
            let refs: Vec<&TrainUnit> = chunk.iter().collect();
            let StepLoss {
                loss: l,
                accuracy: a,
                brier: b,
                count: n,
            } = step_bce(model, &self.template, &refs, &device)?;
            loss += scalar(l)? * n;
            acc += scalar(a)? * n;
            brier += scalar(b)? * n;
            total += n;
        }
        if total == 0.0 {
            bail!("the dev set has no labelled steps");
        }
        Ok(Evaluation {
            metrics: [
                ("step_accuracy".to_string(), acc / total),
                ("loss".to_string(), loss / total),
                ("brier".to_string(), brier / total),
            ]
            .into_iter()
            .collect(),
            score: acc / total,
        })
    }

    fn save_model(&self, model: &RewardModel, dir: &Path) -> Result<()> {
        save_prm(model, &self.template, dir)
    }
}

/// The first value of an evaluation tensor, on the host.
pub(crate) fn scalar(t: Tensor<1>) -> Result<f64> {
    Ok(t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading the evaluation: {e:?}"))?[0] as f64)
}

/// Saves `model`'s weights as a PRM folder shaped like `template`.
pub fn save_prm(model: &RewardModel, template: &ProcessRewardModel, dir: &Path) -> Result<()> {
    ProcessRewardModel {
        bundle: rm_core::models::reward::RewardModelBundle {
            model: model.clone(),
            tokenizer: template.bundle.tokenizer.clone(),
            spec: template.bundle.spec.clone(),
            device: template.bundle.device.clone(),
        },
        spec: template.spec.clone(),
    }
    .save(dir)
}

impl EpochTask<RewardModel> for PrmTask {
    fn num_examples(&self) -> usize {
        self.train.len()
    }
}

/// Trains a PRM, then evaluates the final model on the dev solutions (step accuracy, AUROC,
/// first-error F1) and on a best-of-N set built from the dev problems' rated alternatives;
/// writes `dev.steps.jsonl`, `dev.bon.jsonl`, `report.{json,md}`, `summary.json`,
/// `recipe.toml` and `curves.png` into `train.out_dir`.
pub fn train_prm(mut recipe: PrmRecipe, request: &TrainRequest) -> Result<PrmTrainReport> {
    recipe.model.backbone =
        rm_core::paths::resolve_model_path(&recipe.model.backbone, &request.models_dir);
    recipe.validate()?;
    let out = recipe.train.out_dir.clone();
    let identity = serde_json::to_value(&recipe)?;
    let run = RunDir::open(
        &out,
        request.mode,
        &identity,
        &[RESUMABLE_TRAIN_FIELDS, &["eval"]].concat(),
    )?;
    let device = request.device.clone().autodiff();
    let prm = ProcessRewardModel::build(
        &recipe.model,
        recipe.prm.shape.clone(),
        recipe.train.seed,
        &device,
    )?;
    let all = recipe.data.train.load(&request.data_dir)?;
    let (mut train_solutions, mut dev_solutions) = match &recipe.data.dev {
        Some(dev) => (all, dev.load(&request.data_dir)?),
        None => split_by_problem(all, recipe.data.dev_fraction, recipe.data.split_seed)?,
    };
    if recipe.data.train_limit > 0 {
        train_solutions.truncate(recipe.data.train_limit);
    }
    if recipe.data.dev_limit > 0 {
        dev_solutions.truncate(recipe.data.dev_limit);
    }
    if dev_solutions.is_empty() {
        bail!("no dev solutions (set data.dev_fraction > 0 or data.dev)");
    }
    let policy = LabelPolicy {
        neutral: recipe.data.neutral,
    };
    let mut train_examples: Vec<StepExample> = train_solutions
        .iter()
        .flat_map(|s| examples_of(s, policy, recipe.data.alternatives))
        .collect();
    let mut coarse_examples = 0;
    if let Some(hierarchical) = &recipe.data.hierarchical {
        let mut rng = rand::rngs::StdRng::seed_from_u64(recipe.data.split_seed);
        let coarse: Vec<StepExample> = train_examples
            .iter()
            .flat_map(|e| hierarchical_examples(e, hierarchical, &mut rng))
            .collect();
        eprintln!(
            "data.hierarchical: {} coarse-grained examples beside {} fine-grained ones",
            coarse.len(),
            train_examples.len()
        );
        coarse_examples = coarse.len();
        train_examples.extend(coarse);
    }
    let dev_examples: Vec<StepExample> = dev_solutions
        .iter()
        // With alternatives, dev is built as train is, so its steps include the rated −1
        // alternatives (PRM800K's preferred paths alone carry hardly any negative step).
        .flat_map(|s| examples_of(s, policy, recipe.data.alternatives))
        .collect();
    std::fs::create_dir_all(&out)?;
    rm_core::checkpoint::write_bytes_atomically(
        &out.join("recipe.toml"),
        toml::to_string_pretty(&recipe)?.as_bytes(),
    )?;
    let dev_steps_path = out.join("dev.steps.jsonl");
    write_jsonl(
        &dev_steps_path,
        dev_examples
            .iter()
            .map(|e| json!({"prompt": e.prompt, "steps": e.steps, "labels": e.targets})),
    )?;
    let bon: Vec<BonProblem> = dev_solutions
        .iter()
        .filter_map(|s| bon_from_alternatives(s, recipe.eval.bon_n, recipe.data.split_seed))
        .collect();
    let bon_path = out.join("dev.bon.jsonl");
    write_jsonl(
        &bon_path,
        bon.iter()
            .map(|b| serde_json::to_value(b).unwrap_or_default()),
    )?;

    let model = prm.bundle.model.clone();
    let trainer = Trainer {
        config: recipe.train.clone(),
        device: device.clone(),
        progress: request.progress,
    };
    let (model, outcome, template) = match recipe.prm.objective {
        PrmObjective::Classification => {
            let mut task = classification_task(
                prm,
                &recipe,
                (&train_examples, &dev_examples),
                (train_solutions.len(), dev_solutions.len()),
            )?;
            let (model, outcome) = trainer.run_epochs(&run, model, &mut task)?;
            (model, outcome, task.template)
        }
        PrmObjective::StepPreference => {
            let mut task = preference_task(prm, &recipe, policy, &train_solutions, &dev_solutions)?;
            let (model, outcome) = trainer.run_epochs(&run, model, &mut task)?;
            (model, outcome, task.template)
        }
    };
    eprintln!(
        "trained {} steps in {:.1}s: {:.2} sequences/s",
        outcome.steps, outcome.train_seconds, outcome.examples_per_second
    );
    let mut prm = template;
    prm.bundle.model = model;
    let steps_report = evaluate_steps(
        &prm,
        &dev_examples,
        recipe.eval.threshold,
        recipe.eval.batch_size,
    )?;
    let bon_report = if bon.is_empty() {
        None
    } else {
        Some(evaluate_bon(&prm, &bon, recipe.eval.batch_size)?)
    };
    let report = EvalReport {
        model: out.join("final").display().to_string(),
        input: dev_steps_path.display().to_string(),
        steps: Some(steps_report),
        bon: bon_report,
    };
    crate::eval::write_report(&out.join("report.json"), &report)?;
    let summary = json!({
        "recipe": recipe,
        "steps": outcome.steps,
        "train_seconds": outcome.train_seconds,
        "train_sequences_per_s": outcome.examples_per_second,
        "train_solutions": train_solutions.len(),
        "dev_solutions": dev_solutions.len(),
        "coarse_examples": coarse_examples,
        "report": report,
    });
    rm_pipeline::reports::write_summary(&out, &summary)?;
    let (plot, plot_error) = rm_pipeline::reports::draw_curves(&run.metrics_path(), &out);
    Ok(PrmTrainReport {
        final_dir: out.join("final"),
        out_dir: out,
        outcome,
        report,
        train_solutions: train_solutions.len(),
        dev_solutions: dev_solutions.len(),
        coarse_examples,
        plot,
        plot_error,
    })
}

/// The classification task: the examples' units on the recipe's targets (hard or soft).
fn classification_task(
    prm: ProcessRewardModel,
    recipe: &PrmRecipe,
    (train_examples, dev_examples): (&[StepExample], &[StepExample]),
    solutions: (usize, usize),
) -> Result<PrmTask> {
    let targets = recipe.data.targets;
    if targets == StepTargets::Soft {
        for (split, examples) in [("training", train_examples), ("dev", dev_examples)] {
            if !examples.iter().any(|e| e.soft.iter().any(Option::is_some)) {
                bail!(
                    "data.targets = \"soft\": the {split} solutions have no soft labels (a `soft_labels` array per row of the generic step-labelled JSONL, as `plumb label-steps` writes)"
                );
            }
        }
    }
    let (train, skipped) =
        encode_examples_with(&prm, train_examples, recipe.model.max_len, targets)?;
    let (dev, dev_skipped) =
        encode_examples_with(&prm, dev_examples, recipe.model.max_len, targets)?;
    let steps_kept: usize = train
        .iter()
        .map(|u| u.mask.iter().sum::<f32>() as usize)
        .sum();
    let steps_all: usize = train_examples.iter().map(StepExample::num_targets).sum();
    eprintln!(
        "{} train solutions → {} examples → {} sequences ({} labelled steps of {} fit max_len {}; {} examples skipped), {} dev solutions ({} sequences, {} skipped); {} step(s) of {}",
        solutions.0,
        train_examples.len(),
        train.len(),
        steps_kept,
        steps_all,
        recipe.model.max_len,
        skipped,
        solutions.1,
        dev.len(),
        dev_skipped,
        recipe.train.epoch_steps(train.len())?,
        recipe.train.batch_size
    );
    Ok(PrmTask {
        train,
        dev,
        template: prm,
        batch_size: recipe.eval.batch_size,
    })
}

/// The step-preference task: sibling pairs from the solutions' rated alternatives.
fn preference_task(
    prm: ProcessRewardModel,
    recipe: &PrmRecipe,
    policy: LabelPolicy,
    train_solutions: &[StepLabelledSolution],
    dev_solutions: &[StepLabelledSolution],
) -> Result<StepPreferenceTask> {
    let pairs = |solutions: &[StepLabelledSolution]| -> Vec<StepPair> {
        solutions
            .iter()
            .flat_map(|s| step_pairs_of(s, policy, recipe.prm.max_pairs_per_step))
            .collect()
    };
    let (train_pairs, dev_pairs) = (pairs(train_solutions), pairs(dev_solutions));
    for (split, p) in [("training", &train_pairs), ("dev", &dev_pairs)] {
        if p.is_empty() {
            bail!(
                "prm.objective = \"step-preference\": the {split} solutions give no step pair (a right and a wrong rated sibling after the same prefix: PRM800K's alternatives, or source = \"step-pairs\")"
            );
        }
    }
    let (train, skipped) = encode_pairs(&prm, &train_pairs, recipe.model.max_len)?;
    let (dev, dev_skipped) = encode_pairs(&prm, &dev_pairs, recipe.model.max_len)?;
    if train.is_empty() || dev.is_empty() {
        bail!(
            "no step pair fits model.max_len {} ({} training, {} dev pairs left out)",
            recipe.model.max_len,
            skipped,
            dev_skipped
        );
    }
    eprintln!(
        "{} train solutions → {} step pairs ({} fit max_len {}), {} dev solutions → {} pairs ({} fit); {} step(s) of {}",
        train_solutions.len(),
        train_pairs.len(),
        train.len(),
        recipe.model.max_len,
        dev_solutions.len(),
        dev_pairs.len(),
        dev.len(),
        recipe.train.epoch_steps(train.len())?,
        recipe.train.batch_size
    );
    Ok(StepPreferenceTask {
        train,
        dev,
        template: prm,
        batch_size: recipe.eval.batch_size,
    })
}

/// Writes JSON values one per line, atomically.
pub fn write_jsonl(path: &Path, rows: impl Iterator<Item = serde_json::Value>) -> Result<()> {
    let mut text = String::new();
    for r in rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    rm_core::checkpoint::write_bytes_atomically(path, text.as_bytes())
}
