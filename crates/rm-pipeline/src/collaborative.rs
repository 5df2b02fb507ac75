//! Collaborative reward-model training ([`rm_ensembles::collaborative`]: Zhang et al. 2025,
//! "Two Minds Better Than One"): a recipe with a `[collaborative]` section trains two reward
//! models side by side in one run, each learning only from the pairs its peer keeps for it.
//!
//! One optimizer steps both models ([`PeerModels`]; Adam's moments are per parameter, so this
//! equals two optimizers with the same settings, except that `max_grad_norm` clips the two
//! models' joint gradient norm), and one backward pass carries both losses
//! (the selections are read without gradient and the parameters are disjoint, so neither loss
//! reaches the other model). The run folder is a normal one (checkpoints, `--resume`, metrics,
//! curves); its `final/` and `best/` are two-member ensemble folders (`member-0` = model A,
//! `member-1` = model B, `ensemble.json` with the mean), which `plumb score`, `eval-rm`, RL
//! rewards and decoding read, and each member folder alone is an ordinary reward model.
//!
//! Logged per step: both models' training accuracy, the share dropped `peer/drop`, the overlap
//! of the two reviewers' choices `peer/agreement`, and, when `[data] label_noise` flipped pairs,
//! `peer/noisy_dropped`: the share of the withheld pairs that were the flipped ones (against
//! the noise rate, it says whether the reviewers find the noise).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bench_harness::data::rows_from_pairs;
use burn::module::Module;
use burn::tensor::Tensor;
use rm_core::models::reward::{RewardModel, RewardModelBundle};
use rm_core::train::{
    EpochTask, Evaluation, LossOutput, Metric, RESUMABLE_TRAIN_FIELDS, RunDir, StepValues,
    TrainOutcome, TrainTask, Trainer,
};
use rm_ensembles::{
    Aggregation, CollaborativeConfig, Ensemble, EnsembleConfig, EnsembleSpec, kept_count,
    peer_selection,
};
use rm_losses::{PairwiseObjective, PairwiseRewards};
use serde_json::json;

use crate::ensemble::{EnsembleEvaluation, evaluate_ensemble};
use crate::recipe::RewardRecipe;
use crate::reports::write_report_pair;
use crate::train::{
    EncodedPair, PreparedPairs, TrainRequest, pair_rewards, prepare_pairs, select_pairs,
    store_normalization, win_rate,
};

/// The two reward models of a collaborative run, trained as one module.
#[derive(Module, Debug)]
pub struct PeerModels {
    pub a: RewardModel,
    pub b: RewardModel,
}

/// Pairwise training of two reward models by peer review.
struct CollaborativeTask {
    train: Vec<EncodedPair>,
    /// Whether each training pair's label was flipped by `[data] label_noise`.
    flipped: Vec<bool>,
    noisy: bool,
    eval: Vec<EncodedPair>,
    objective: PairwiseObjective,
    template: RewardModelBundle,
    eval_batch: usize,
    config: CollaborativeConfig,
    /// Optimizer steps taken (the curriculum's clock; saved with every checkpoint).
    step: u64,
    total_steps: u64,
}

/// The two reviews of one batch: which pairs each model keeps for its peer.
struct Review {
    drop: f64,
    kept_by_a: Vec<usize>,
    kept_by_b: Vec<usize>,
}

impl CollaborativeTask {
    fn review(&self, a: &PairwiseRewards, b: &PairwiseRewards, n: usize) -> Result<Review> {
        let margins = Tensor::cat(
            vec![
                (a.chosen.clone() - a.rejected.clone()).detach(),
                (b.chosen.clone() - b.rejected.clone()).detach(),
            ],
            0,
        )
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading the reward margins: {e:?}"))?;
        let drop = self.config.drop_at(self.step, self.total_steps);
        let keep = kept_count(n, drop);
        Ok(Review {
            drop,
            kept_by_a: peer_selection(&margins[..n], keep).context("model A's review")?,
            kept_by_b: peer_selection(&margins[n..], keep).context("model B's review")?,
        })
    }
}

impl TrainTask<PeerModels> for CollaborativeTask {
    fn loss(&mut self, model: &PeerModels, examples: &[usize]) -> Result<LossOutput> {
        let device = model.a.head.weight.val().device();
        let pairs: Vec<&EncodedPair> = examples.iter().map(|&i| &self.train[i]).collect();
        let n = pairs.len();
        let a = pair_rewards(&model.a, &self.template, &pairs, &device)?;
        let b = pair_rewards(&model.b, &self.template, &pairs, &device)?;
        let review = self.review(&a, &b, n)?;
        let (accuracy_a, accuracy_b) = (win_rate(&a), win_rate(&b));
        // A learns from the pairs B kept, B from the pairs A kept.
        let loss = self
            .objective
            .loss(select_pairs(a, &review.kept_by_b, &device))?
            + self
                .objective
                .loss(select_pairs(b, &review.kept_by_a, &device))?;
        let w = n as f64;
        let keep = review.kept_by_a.len();
        let shared = review
            .kept_by_a
            .iter()
            .filter(|i| review.kept_by_b.contains(i))
            .count();
        let mut out = LossOutput::new(loss, w)
            .with(Metric::device("accuracy_a", accuracy_a, w))
            .with(Metric::device("accuracy_b", accuracy_b, w))
            .with(Metric::host("peer/drop", review.drop, w))
            .with(Metric::host(
                "peer/agreement",
                shared as f64 / keep as f64,
                w,
            ))
            .with_tokens(
                pairs
                    .iter()
                    .map(|p| p.chosen.len() + p.rejected.len())
                    .sum(),
            );
        let dropped = 2 * (n - keep);
        if self.noisy && dropped > 0 {
            let noisy_dropped = [&review.kept_by_a, &review.kept_by_b]
                .iter()
                .map(|kept| {
                    (0..n)
                        .filter(|i| !kept.contains(i) && self.flipped[examples[*i]])
                        .count()
                })
                .sum::<usize>();
            out = out.with(Metric::host(
                "peer/noisy_dropped",
                noisy_dropped as f64 / dropped as f64,
                dropped as f64,
            ));
        }
        Ok(out)
    }

    fn evaluate(&mut self, model: &PeerModels) -> Result<Evaluation> {
        let device = model.a.head.weight.val().device();
        let mut sums: Option<Tensor<1>> = None;
        let pairs_per_batch = (self.eval_batch / 2).max(1);
        for chunk in self.eval.chunks(pairs_per_batch) {
            let refs: Vec<&EncodedPair> = chunk.iter().collect();
            let n = chunk.len() as f64;
            let mut parts = Vec::new();
            for m in [&model.a, &model.b] {
                let batch = pair_rewards(m, &self.template, &refs, &device)?;
                parts.push(win_rate(&batch).mul_scalar(n));
                parts.push(self.objective.loss(batch)?.mul_scalar(n));
            }
            let all = Tensor::cat(parts, 0);
            sums = Some(match sums {
                Some(s) => s + all,
                None => all,
            });
        }
        let n = self.eval.len() as f64;
        let v: Vec<f32> = sums
            .context("the evaluation set is empty")?
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| anyhow::anyhow!("reading the evaluation: {e:?}"))?;
        let (acc_a, loss_a, acc_b, loss_b) = (
            v[0] as f64 / n,
            v[1] as f64 / n,
            v[2] as f64 / n,
            v[3] as f64 / n,
        );
        // The best checkpoint is the pair whose members are best on average.
        let accuracy = (acc_a + acc_b) / 2.0;
        Ok(Evaluation {
            metrics: [
                ("accuracy".to_string(), accuracy),
                ("accuracy_a".to_string(), acc_a),
                ("accuracy_b".to_string(), acc_b),
                ("loss".to_string(), (loss_a + loss_b) / 2.0),
                ("loss_a".to_string(), loss_a),
                ("loss_b".to_string(), loss_b),
            ]
            .into_iter()
            .collect(),
            score: accuracy,
        })
    }

    fn save_model(&self, model: &PeerModels, dir: &Path) -> Result<()> {
        for (i, m) in [&model.a, &model.b].into_iter().enumerate() {
            RewardModelBundle {
                model: m.clone(),
                tokenizer: self.template.tokenizer.clone(),
                spec: self.template.spec.clone(),
                device: self.template.device.clone(),
            }
            .save(&dir.join(EnsembleConfig::member_dir_name(i)))?;
        }
        EnsembleSpec::new(
            (0..2)
                .map(|i| PathBuf::from(EnsembleConfig::member_dir_name(i)))
                .collect(),
            Aggregation::Mean,
        )
        .write(dir)?;
        Ok(())
    }

    fn state(&self) -> Result<serde_json::Value> {
        Ok(json!({ "step": self.step }))
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<()> {
        self.step = state["step"]
            .as_u64()
            .context("the checkpoint's collaborative state has no step")?;
        Ok(())
    }

    fn after_step(&mut self, _model: &PeerModels, _values: &StepValues) -> Result<()> {
        self.step += 1;
        Ok(())
    }
}

impl EpochTask<PeerModels> for CollaborativeTask {
    fn num_examples(&self) -> usize {
        self.train.len()
    }
}

/// What a collaborative run produced.
#[derive(Clone, Debug)]
pub struct CollaborativeReport {
    pub out_dir: PathBuf,
    /// The final pair as a two-member ensemble folder.
    pub final_dir: PathBuf,
    pub outcome: TrainOutcome,
    /// Each member's and each aggregation's dev accuracy (normalized rewards).
    pub evaluation: EnsembleEvaluation,
    /// Training pairs whose labels `[data] label_noise` flipped.
    pub flipped_pairs: usize,
    pub plot: Option<PathBuf>,
    pub plot_error: Option<String>,
}

/// Trains the recipe's collaborative pair (see the module docs) into `train.out_dir`: the run
/// folder, `final/` and `best/` as two-member ensembles (normalization fitted for each final
/// member on the evaluation responses), `report.{json,md}` with both members and the
/// aggregations, `summary.json`, `recipe.toml` and `curves.png`.
pub fn train_collaborative(
    mut recipe: RewardRecipe,
    request: &TrainRequest,
) -> Result<CollaborativeReport> {
    recipe.model.backbone =
        rm_core::paths::resolve_model_path(&recipe.model.backbone, &request.models_dir);
    recipe.validate()?;
    let config = recipe
        .collaborative
        .clone()
        .context("the recipe has no [collaborative] section")?;
    let out = recipe.train.out_dir.clone();
    let run = RunDir::open(
        &out,
        request.mode,
        &recipe.identity()?,
        &[RESUMABLE_TRAIN_FIELDS, &["eval"]].concat(),
    )?;
    let device = request.device.clone().autodiff();
    let peer_seed = config.peer_seed(recipe.train.seed);
    if peer_seed == recipe.train.seed {
        bail!(
            "collaborative.peer_seed {peer_seed} equals train.seed: the two models would start identical and review alike"
        );
    }
    eprintln!(
        "loading {} twice (seeds {} and {peer_seed}) and the data ({})",
        recipe.model.backbone.display(),
        recipe.train.seed,
        request.data_dir.display()
    );
    let bundle = RewardModelBundle::build(&recipe.model, recipe.train.seed, &device)?;
    let peer = RewardModelBundle::build(&recipe.model, peer_seed, &device)?;
    let PreparedPairs {
        injected: flipped,
        eval_pairs,
        train,
        eval,
        preference_strength,
    } = prepare_pairs(&recipe, request, &bundle, &out)?;
    // The curriculum spans the whole schedule, as the learning rate's does: `max_steps` stops a
    // run early without changing what each step computes (so a stopped run resumes exactly).
    let total_steps = rm_core::train::TrainConfig {
        max_steps: None,
        ..recipe.train.clone()
    }
    .epoch_steps(train.len())?;
    eprintln!(
        "{} training pairs, {} evaluation pairs; {} step(s) of {} pairs; each model withholds up to {:.0}% of a batch from its peer (reached after {:.0}% of the steps)",
        train.len(),
        eval.len(),
        recipe.train.epoch_steps(train.len())?,
        recipe.train.batch_size,
        config.drop_rate * 100.0,
        config.ramp * 100.0
    );
    rm_core::checkpoint::write_bytes_atomically(
        &out.join("recipe.toml"),
        toml::to_string_pretty(&recipe)?.as_bytes(),
    )?;
    let frozen = |m: RewardModel| match recipe.objective.identifies_offset() {
        true => m,
        false => m.with_frozen_head_bias(),
    };
    let models = PeerModels {
        a: frozen(bundle.model.clone()),
        b: frozen(peer.model),
    };
    let flipped_pairs = flipped.iter().filter(|&&f| f).count();
    let mut task = CollaborativeTask {
        train,
        noisy: flipped_pairs > 0,
        flipped,
        eval,
        objective: recipe.objective.clone(),
        template: bundle,
        eval_batch: recipe.eval.batch_size,
        config,
        step: 0,
        total_steps,
    };
    let trainer = Trainer {
        config: recipe.train.clone(),
        device: device.clone(),
        progress: request.progress,
    };
    let (models, outcome) = trainer.run_epochs(&run, models, &mut task)?;
    eprintln!(
        "trained {} steps in {:.1}s: {:.2} pairs/s for the pair (train, evaluation excluded)",
        outcome.steps, outcome.train_seconds, outcome.examples_per_second
    );

    // Each final member normalized on the evaluation responses, then the ensemble report.
    let final_dir = out.join("final");
    let rows = rows_from_pairs(eval_pairs, &recipe.data.eval.subset());
    let CollaborativeTask { template, .. } = task;
    for (i, m) in [models.a, models.b].into_iter().enumerate() {
        let dir = final_dir.join(EnsembleConfig::member_dir_name(i));
        let mut member = RewardModelBundle {
            model: m,
            tokenizer: template.tokenizer.clone(),
            spec: template.spec.clone(),
            device: template.device.clone(),
        };
        store_normalization(&mut member, &rows, recipe.eval.batch_size, &dir)
            .with_context(|| format!("normalizing member {i}"))?;
    }
    let ensemble = Ensemble::load(&final_dir, &request.device)?;
    let evaluation = evaluate_ensemble(
        &ensemble,
        &rows,
        &Aggregation::report_set(&Aggregation::Mean),
        recipe.eval.batch_size,
        false,
    )?;
    write_report_pair(
        &out.join("report.json"),
        &serde_json::to_string_pretty(&evaluation)?,
        &evaluation.to_markdown(),
    )?;
    let summary = json!({
        "recipe": recipe,
        "steps": outcome.steps,
        "train_seconds": outcome.train_seconds,
        "train_pairs_per_s": outcome.examples_per_second,
        "flipped_training_pairs": flipped_pairs,
        "preference_strength": preference_strength,
        "member_dev_accuracy": evaluation.member_accuracies_json(),
        "aggregation_dev_accuracy": evaluation.aggregation_accuracies_json(),
        "best_step": outcome.best_step,
        "best_mean_member_dev_accuracy": outcome.best_score,
    });
    crate::reports::write_summary(&out, &summary)?;
    let (plot, plot_error) = crate::reports::draw_curves(&run.metrics_path(), &out);
    Ok(CollaborativeReport {
        out_dir: out,
        final_dir,
        outcome,
        evaluation,
        flipped_pairs,
        plot,
        plot_error,
    })
}
