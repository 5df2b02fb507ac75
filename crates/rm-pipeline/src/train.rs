//! Reward-model training end to end: recipe → data → encoding → [`RewardTask`] →
//! [`Trainer::run_epochs`] → the v1 report of the final model → normalization stored with it →
//! report, summary and curves in the run folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bench_harness::data::rows_from_pairs;
use bench_harness::{RewardModelScorer, V1Report, evaluate_v1};
use rm_core::burn::tensor::{Device, Int, Tensor, TensorData};
use rm_core::models::reward::{RewardModel, RewardModelBundle, SPEC_FILE};
use rm_core::tokenize::{PaddingSide, Sequence, TokenBatch};
use rm_core::train::{
    EpochTask, Evaluation, LossOutput, Metric, RESUMABLE_TRAIN_FIELDS, RunDir, RunMode,
    TrainOutcome, TrainTask, Trainer,
};
use rm_core::types::PreferencePair;
use rm_losses::{PairwiseObjective, PairwiseRewards};
use serde_json::json;

use crate::recipe::RewardRecipe;
use crate::reports::write_report_pair;

/// Where and how a training run happens (what the command line adds to a recipe).
#[derive(Clone, Debug)]
pub struct TrainRequest {
    /// The data folder (HH-RLHF etc.).
    pub data_dir: PathBuf,
    /// The models folder recipes' `models/…` paths are looked up in.
    pub models_dir: PathBuf,
    /// The device (the trainer turns on autodiff).
    pub device: Device,
    /// Fresh, overwrite or resume.
    pub mode: RunMode,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a training run produced.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub out_dir: PathBuf,
    pub final_dir: PathBuf,
    pub best_dir: PathBuf,
    /// The final model's RewardBench-style report on the evaluation pairs.
    pub report: V1Report,
    pub outcome: TrainOutcome,
    pub score_pairs_per_s: f64,
    pub threads: usize,
    /// `curves.png`, when it could be drawn.
    pub plot: Option<PathBuf>,
    /// Why the plot is missing, when it is.
    pub plot_error: Option<String>,
    /// What `[preference_strength]` did to the training pairs, when the recipe has it.
    pub preference_strength: Option<crate::strength::StrengthSummary>,
}

/// A preference pair, tokenized, with what the objective needs of it.
pub(crate) struct EncodedPair {
    pub(crate) chosen: Sequence,
    pub(crate) rejected: Sequence,
    margin: Option<f32>,
    soft_label: Option<f32>,
    /// Which preference set the pair comes from (`[more]`: 0 = `[data] train`).
    pub(crate) source: usize,
}

/// What the objective needs from each pair, checked up front with the pair named.
fn objective_inputs(
    objective: &PairwiseObjective,
    pair: &PreferencePair,
    index: usize,
    source: &str,
) -> Result<(Option<f32>, Option<f32>)> {
    let row = || format!("{source}: pair {} (0-based {index})", index + 1);
    match objective {
        PairwiseObjective::BradleyTerry { margin: true, .. } => match pair.margin {
            Some(m) if m.is_finite() => Ok((Some(m), None)),
            Some(m) => bail!("{}: margin {m} is not finite", row()),
            None => bail!(
                "{}: has no margin, but the objective says margin = true (every pair needs one)",
                row()
            ),
        },
        PairwiseObjective::BradleyTerry { .. } => Ok((None, None)),
        PairwiseObjective::Distillation { .. } => match pair.scores {
            Some([c, r]) if c.is_finite() && r.is_finite() => {
                Ok((None, Some(1.0 / (1.0 + (r - c).exp()))))
            }
            Some(s) => bail!("{}: scores {s:?} are not finite", row()),
            None => bail!(
                "{}: has no scores [chosen, rejected]; distillation takes its soft labels p = σ(s_chosen − s_rejected) from them",
                row()
            ),
        },
    }
}

pub(crate) fn encode_pairs(
    bundle: &RewardModelBundle,
    pairs: &[PreferencePair],
    objective: &PairwiseObjective,
    source: &str,
) -> Result<Vec<EncodedPair>> {
    let options = bundle.encode_options();
    pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (margin, soft_label) = objective_inputs(objective, p, i, source)?;
            let enc = |response: &str| -> Result<Sequence> {
                let text = bundle.text(&p.prompt, response)?;
                bundle.tokenizer.encode_text(&text, &options)
            };
            Ok(EncodedPair {
                chosen: enc(&p.chosen).with_context(|| format!("{source}: pair {i}: chosen"))?,
                rejected: enc(&p.rejected)
                    .with_context(|| format!("{source}: pair {i}: rejected"))?,
                margin,
                soft_label,
                source: 0,
            })
        })
        .collect()
}

/// Pairwise reward-model training: the recipe's objective over (chosen, rejected) rewards,
/// for training and evaluation alike.
pub struct RewardTask {
    train: Vec<EncodedPair>,
    eval: Vec<EncodedPair>,
    objective: PairwiseObjective,
    template: RewardModelBundle,
    eval_batch: usize,
    /// MORE's weighting of several preference sets (`[more]`).
    more: Option<crate::more::MoreState>,
    /// The contrastive term on the hidden states (`[goal_conditioned]`).
    goal_conditioned: Option<crate::goal_conditioned::GoalConditionedConfig>,
}

impl RewardTask {
    fn batch(
        &self,
        model: &RewardModel,
        pairs: &[&EncodedPair],
        device: &Device,
    ) -> Result<PairwiseRewards> {
        pair_rewards(model, &self.template, pairs, device)
    }
}

/// Rewards of the chosen and rejected responses of `pairs` in one forward pass of `model`
/// (padded and pooled as `template` says), with the pairs' margins and soft labels, as the
/// objective's batch.
pub(crate) fn pair_rewards(
    model: &RewardModel,
    template: &RewardModelBundle,
    pairs: &[&EncodedPair],
    device: &Device,
) -> Result<PairwiseRewards> {
    Ok(pair_rewards_and_hidden(model, template, pairs, device)?.0)
}

/// [`pair_rewards`] with the last hidden states `[2B, T, D]` they were pooled from (chosen
/// rows first).
pub(crate) fn pair_rewards_and_hidden(
    model: &RewardModel,
    template: &RewardModelBundle,
    pairs: &[&EncodedPair],
    device: &Device,
) -> Result<(PairwiseRewards, Tensor<3>)> {
    let b = pairs.len();
    let batch = pair_token_batch(template, pairs)?;
    let mask = batch.attention_tensor(device);
    let hidden = model
        .backbone
        .hidden(batch.ids_tensor(device), mask.clone());
    let r = model
        .head
        .forward(template.spec.pooling.pool(hidden.clone(), mask))
        .narrow(1, 0, 1)
        .reshape([2 * b]);
    let rewards = with_pair_inputs(
        PairwiseRewards::new(r.clone().narrow(0, 0, b), r.narrow(0, b, b)),
        pairs,
        device,
    );
    Ok((rewards, hidden))
}

/// The chosen responses of `pairs`, then their rejected ones, padded on the right.
pub(crate) fn pair_token_batch(
    template: &RewardModelBundle,
    pairs: &[&EncodedPair],
) -> Result<TokenBatch> {
    let seqs: Vec<Sequence> = pairs
        .iter()
        .map(|p| p.chosen.clone())
        .chain(pairs.iter().map(|p| p.rejected.clone()))
        .collect();
    TokenBatch::pad(&seqs, template.spec.pad_id, PaddingSide::Right)
}

/// `rewards` with the pairs' margins and soft labels, when every pair has one.
pub(crate) fn with_pair_inputs(
    mut out: PairwiseRewards,
    pairs: &[&EncodedPair],
    device: &Device,
) -> PairwiseRewards {
    let b = pairs.len();
    let column = |values: Vec<f32>| Tensor::<1>::from_data(TensorData::new(values, [b]), device);
    if pairs.iter().all(|p| p.margin.is_some()) {
        out = out.with_margin(column(
            pairs.iter().map(|p| p.margin.unwrap_or(0.0)).collect(),
        ));
    }
    if pairs.iter().all(|p| p.soft_label.is_some()) {
        out = out.with_soft_label(column(
            pairs.iter().map(|p| p.soft_label.unwrap_or(0.5)).collect(),
        ));
    }
    out
}

/// `batch` restricted to the pairs `indices` (margins and soft labels too).
pub(crate) fn select_pairs(
    batch: PairwiseRewards,
    indices: &[usize],
    device: &Device,
) -> PairwiseRewards {
    let idx = Tensor::<1, Int>::from_data(
        TensorData::new(
            indices.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [indices.len()],
        ),
        device,
    );
    let pick = |t: Tensor<1>| t.select(0, idx.clone());
    PairwiseRewards {
        chosen: pick(batch.chosen),
        rejected: pick(batch.rejected),
        margin: batch.margin.map(pick),
        soft_label: batch.soft_label.map(pick),
    }
}

/// Fraction of pairs whose chosen reward is higher, on the device.
pub(crate) fn win_rate(batch: &PairwiseRewards) -> Tensor<1> {
    (batch.chosen.clone() - batch.rejected.clone())
        .greater_elem(0.0)
        .float()
        .mean()
}

impl TrainTask<RewardModel> for RewardTask {
    fn loss(&mut self, model: &RewardModel, examples: &[usize]) -> Result<LossOutput> {
        let device = model.head.weight.val().device();
        let pairs: Vec<&EncodedPair> = examples.iter().map(|&i| &self.train[i]).collect();
        let n = examples.len() as f64;
        let tokens = pairs
            .iter()
            .map(|p| p.chosen.len() + p.rejected.len())
            .sum();
        if let Some(more) = &mut self.more {
            let out = more.loss(model, &self.template, &self.objective, &pairs, &device)?;
            let mut output = LossOutput::new(out.loss, n)
                .with(Metric::device("accuracy", win_rate(&out.rewards), n))
                .with_tokens(tokens);
            for m in out.metrics {
                output = output.with(m);
            }
            return Ok(output);
        }
        let (batch, hidden) = pair_rewards_and_hidden(model, &self.template, &pairs, &device)?;
        let accuracy = win_rate(&batch);
        let mut loss = self.objective.loss(batch)?;
        let mut metrics = vec![Metric::device("accuracy", accuracy, n)];
        if let Some(goal) = &self.goal_conditioned {
            metrics.push(Metric::device("pairwise_loss", loss.clone(), n));
            let sequences: Vec<_> = pairs.iter().map(|p| (&p.chosen, &p.rejected)).collect();
            let triples = crate::goal_conditioned::draw_triples(
                &sequences,
                goal.samples_per_pair,
                goal.seed,
                examples,
            );
            if let Some((term, goal_accuracy)) =
                crate::goal_conditioned::goal_loss(hidden, &triples, goal.temperature)
            {
                let k = triples.len() as f64;
                loss = loss + term.clone().mul_scalar(goal.weight);
                metrics.push(Metric::device("goal_loss", term, k));
                metrics.push(Metric::device("goal_accuracy", goal_accuracy, k));
            }
        }
        let mut output = LossOutput::new(loss, n).with_tokens(tokens);
        for m in metrics {
            output = output.with(m);
        }
        Ok(output)
    }

    fn evaluate(&mut self, model: &RewardModel) -> Result<Evaluation> {
        let device = model.head.weight.val().device();
        let mut sums: Option<Tensor<1>> = None;
        let mut deltas = Vec::new();
        let pairs_per_batch = (self.eval_batch / 2).max(1);
        for chunk in self.eval.chunks(pairs_per_batch) {
            let refs: Vec<&EncodedPair> = chunk.iter().collect();
            let batch = self.batch(model, &refs, &device)?;
            let n = chunk.len() as f64;
            deltas.push(batch.chosen.clone() - batch.rejected.clone());
            let wins = win_rate(&batch).mul_scalar(n);
            let loss = self.objective.loss(batch)?.mul_scalar(n);
            let both = Tensor::cat(vec![wins, loss], 0);
            sums = Some(match sums {
                Some(s) => s + both,
                None => both,
            });
        }
        let n = self.eval.len() as f64;
        let sums = sums.context("the evaluation set is empty")?;
        let values: Vec<f32> = Tensor::cat([vec![sums], deltas].concat(), 0)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| anyhow::anyhow!("reading the evaluation: {e:?}"))?;
        let accuracy = values[0] as f64 / n;
        // Calibration of σ(r_c − r_r) (10-bin ECE; On Diversified Preferences, Zeng et al.).
        let pairs: Vec<(f32, f32)> = values[2..].iter().map(|&d| (d, 0.0)).collect();
        let ece = bench_harness::robustness::calibration(&pairs)
            .context("the evaluation's calibration")?
            .ece;
        Ok(Evaluation {
            metrics: [
                ("accuracy".to_string(), accuracy),
                ("loss".to_string(), values[1] as f64 / n),
                ("ece".to_string(), ece),
            ]
            .into_iter()
            .collect(),
            score: accuracy,
        })
    }

    fn save_model(&self, model: &RewardModel, dir: &Path) -> Result<()> {
        RewardModelBundle {
            model: model.clone(),
            tokenizer: self.template.tokenizer.clone(),
            spec: self.template.spec.clone(),
            device: self.template.device.clone(),
        }
        .save(dir)
    }

    fn state(&self) -> Result<serde_json::Value> {
        Ok(self
            .more
            .as_ref()
            .map_or(serde_json::Value::Null, |m| m.state()))
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<()> {
        match &mut self.more {
            Some(more) => more.restore(&state),
            None if state.is_null() => Ok(()),
            None => bail!("the checkpoint holds MORE state, but the recipe has no [more] section"),
        }
    }
}

impl EpochTask<RewardModel> for RewardTask {
    fn num_examples(&self) -> usize {
        self.train.len()
    }
}

/// Trains, evaluates with the v1 report, stores normalization with the final model, writes
/// `report.{json,md}`, `summary.json`, `recipe.toml` and `curves.png` into `train.out_dir`.
pub fn train_reward_model(mut recipe: RewardRecipe, request: &TrainRequest) -> Result<TrainReport> {
    recipe.model.backbone =
        rm_core::paths::resolve_model_path(&recipe.model.backbone, &request.models_dir);
    recipe.validate()?;
    if recipe.ensemble.is_some() {
        bail!(
            "the recipe has an [ensemble] section: train it with rm_pipeline::ensemble::train_ensemble (plumb train-rm does)"
        );
    }
    if recipe.collaborative.is_some() {
        bail!(
            "the recipe has a [collaborative] section: train it with rm_pipeline::collaborative::train_collaborative (plumb train-rm does)"
        );
    }
    let out = recipe.train.out_dir.clone();
    let run = RunDir::open(
        &out,
        request.mode,
        &recipe.identity()?,
        &[RESUMABLE_TRAIN_FIELDS, &["eval"]].concat(),
    )?;
    let device = request.device.clone().autodiff();
    eprintln!(
        "loading {} and the data ({})",
        recipe.model.backbone.display(),
        request.data_dir.display()
    );
    let bundle = RewardModelBundle::build(&recipe.model, recipe.train.seed, &device)?;
    let PreparedPairs {
        injected,
        eval_pairs,
        mut train,
        eval,
        preference_strength,
    } = prepare_pairs(&recipe, request, &bundle, &out)?;
    if let Some(more) = &recipe.more {
        let mut counts = vec![train.len()];
        for (k, source) in more.sources.iter().enumerate() {
            let pairs = source.load(&request.data_dir)?;
            let mut encoded = encode_pairs(&bundle, &pairs, &recipe.objective, &source.describe())?;
            encoded.iter_mut().for_each(|p| p.source = k + 1);
            counts.push(encoded.len());
            train.extend(encoded);
        }
        eprintln!(
            "MORE: {} preference sets, {counts:?} pairs (momentum {}, {:?} normalization)",
            counts.len(),
            more.momentum,
            more.normalize
        );
    }
    let truncated = train
        .iter()
        .filter(|p| {
            p.chosen.len() >= recipe.model.max_len || p.rejected.len() >= recipe.model.max_len
        })
        .count();
    eprintln!(
        "{} training pairs ({} reach max_len {} and are truncated on the {:?}), {} evaluation pairs; {} step(s) of {} pairs",
        train.len(),
        truncated,
        recipe.model.max_len,
        recipe.model.truncation,
        eval.len(),
        recipe.train.epoch_steps(train.len())?,
        recipe.train.batch_size
    );
    rm_core::checkpoint::write_bytes_atomically(
        &out.join("recipe.toml"),
        toml::to_string_pretty(&recipe)?.as_bytes(),
    )?;

    let model = match recipe.objective.identifies_offset() {
        true => bundle.model.clone(),
        false => bundle.model.clone().with_frozen_head_bias(),
    };
    let mut task = RewardTask {
        train,
        eval,
        objective: recipe.objective.clone(),
        template: bundle,
        eval_batch: recipe.eval.batch_size,
        more: recipe
            .more
            .as_ref()
            .map(|m| crate::more::MoreState::new(m.weighting(), m.sources.len() + 1)),
        goal_conditioned: recipe.goal_conditioned.clone(),
    };
    let trainer = Trainer {
        config: recipe.train.clone(),
        device: device.clone(),
        progress: request.progress,
    };
    let (model, outcome) = trainer.run_epochs(&run, model, &mut task)?;
    eprintln!(
        "trained {} steps in {:.1}s: {:.2} pairs/s (train, evaluation excluded)",
        outcome.steps, outcome.train_seconds, outcome.examples_per_second
    );

    // The v1 report of the final model on the evaluation pairs.
    let final_dir = out.join("final");
    let RewardTask { template, .. } = task;
    let bundle = RewardModelBundle { model, ..template };
    let rows = rows_from_pairs(eval_pairs, &recipe.data.eval.subset());
    let mut scorer = RewardModelScorer::new(
        bundle,
        recipe.eval.batch_size,
        final_dir.display().to_string(),
    );
    let start = Instant::now();
    let report = evaluate_v1(&rows, &mut scorer, usize::MAX, &mut |_| {})?;
    let score_pairs_per_s = rows.len() as f64 / start.elapsed().as_secs_f64();

    // Normalization from the evaluation responses' rewards, stored with the final model.
    let mut bundle = scorer.bundle;
    store_normalization(&mut bundle, &rows, recipe.eval.batch_size, &final_dir)?;

    write_report_pair(
        &out.join("report.json"),
        &serde_json::to_string_pretty(&report)?,
        &report.to_markdown(),
    )?;
    let threads = rayon::current_num_threads();
    let summary = json!({
        "recipe": recipe,
        "steps": outcome.steps,
        "train_seconds": outcome.train_seconds,
        "train_pairs_per_s": outcome.examples_per_second,
        "score_pairs_per_s": score_pairs_per_s,
        "dev_accuracy": report.overall,
        "best_step": outcome.best_step,
        "best_dev_accuracy": outcome.best_score,
        "threads": threads,
        "flipped_by_label_noise": injected.iter().filter(|&&f| f).count(),
        "preference_strength": preference_strength,
    });
    crate::reports::write_summary(&out, &summary)?;
    let (plot, plot_error) = crate::reports::draw_curves(&run.metrics_path(), &out);
    Ok(TrainReport {
        best_dir: out.join("best"),
        out_dir: out,
        final_dir,
        report,
        outcome,
        score_pairs_per_s,
        threads,
        plot,
        plot_error,
        preference_strength,
    })
}

/// The pairs of a pairwise recipe as every pairwise trainer needs them.
pub(crate) struct PreparedPairs {
    /// Which training pairs `[data] label_noise` flipped.
    pub(crate) injected: Vec<bool>,
    pub(crate) eval_pairs: Vec<PreferencePair>,
    pub(crate) train: Vec<EncodedPair>,
    /// Sorted by length (evaluation batches pad less).
    pub(crate) eval: Vec<EncodedPair>,
    pub(crate) preference_strength: Option<crate::strength::StrengthSummary>,
}

/// Loads the recipe's pairs (label noise, bootstrap, `[preference_strength]` applied; dev
/// margins zeroed where adaptive margins are trained) and encodes them with `bundle`'s
/// tokenizer, after checking the model has the one attribute pairwise training needs.
pub(crate) fn prepare_pairs(
    recipe: &RewardRecipe,
    request: &TrainRequest,
    bundle: &RewardModelBundle,
    out: &Path,
) -> Result<PreparedPairs> {
    if bundle.spec.attributes.len() != 1 {
        bail!(
            "pairwise training needs one attribute, the recipe names {:?} (multi-attribute training is rm-multiobj's)",
            bundle.spec.attributes
        );
    }
    let (mut train_pairs, injected) = recipe.data.load_train(&request.data_dir)?;
    let preference_strength = recipe
        .preference_strength
        .as_ref()
        .map(|c| {
            crate::strength::apply_preference_strength(
                c,
                &mut train_pairs,
                &injected,
                &request.device,
                out,
            )
        })
        .transpose()?;
    let mut eval_pairs = recipe.data.eval.load(&request.data_dir)?;
    crate::strength::zero_eval_margins(recipe.preference_strength.as_ref(), &mut eval_pairs);
    let train = encode_pairs(
        bundle,
        &train_pairs,
        &recipe.objective,
        &recipe.data.train.describe(),
    )?;
    let mut eval = encode_pairs(
        bundle,
        &eval_pairs,
        &recipe.objective,
        &recipe.data.eval.describe(),
    )?;
    eval.sort_by_key(|p| std::cmp::Reverse(p.chosen.len().max(p.rejected.len())));
    Ok(PreparedPairs {
        injected,
        eval_pairs,
        train,
        eval,
        preference_strength,
    })
}

/// Fits the reward normalization `(r − μ) / σ` on the rewards of every chosen and rejected
/// response of `rows`, and rewrites the model folder `dir`'s spec with it.
pub(crate) fn store_normalization(
    bundle: &mut RewardModelBundle,
    rows: &[bench_harness::V1Row],
    batch_size: usize,
    dir: &Path,
) -> Result<()> {
    let texts: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            [
                bundle.text(&r.prompt, &r.chosen),
                bundle.text(&r.prompt, &r.rejected),
            ]
        })
        .collect::<Result<_>>()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    bundle.fit_normalization(&refs, batch_size)?;
    rm_core::checkpoint::write_bytes_atomically(
        &dir.join(SPEC_FILE),
        serde_json::to_string_pretty(&bundle.spec)?.as_bytes(),
    )
}
