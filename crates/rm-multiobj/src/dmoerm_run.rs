//! The run behind `plumb multiobj dmoerm --recipe recipes/dmoerm-minilm.toml`: the recipe's
//! tasks (each with its overall preference pairs and its capability experts, trained before by
//! `plumb train-rm`) → the router on prompt features → per task, the experts' outputs (cached)
//! and the aggregator → dev figures and the model folder ([`crate::dmoerm`]).
//!
//! Dev figures: the router's accuracy and confusion on the dev prompts; per task, each expert
//! alone, the mean of the experts' standardized rewards, and the aggregator on the task's dev
//! pairs; end to end, every dev pair routed by its prompt and scored by the routed task's
//! model.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rm_core::types::PreferencePair;
use rm_pipeline::recipe::PairSource;
use serde::{Deserialize, Serialize};

use crate::dmoerm::{
    AggregatorConfig, DmoermSpec, Expert, ExpertOutput, ExpertSpec, FORMAT_VERSION, FitTrace,
    HostAggregator, RouterConfig, TaskModel, concat_outputs, train_aggregator, train_router,
};
use crate::features::{CacheStatus, Embedder, FeatureCache};
use crate::linalg::pair_accuracy;
use crate::pipeline::{RunConfig, RunRequest, cached_features, write_report};

/// One task of the recipe (`[[task]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub name: String,
    /// The task's overall preference pairs (the aggregator's training data; their prompts are
    /// the router's examples of this task).
    pub train: PairSource,
    pub eval: PairSource,
    /// The capability experts: reward-model folders.
    pub experts: Vec<ExpertSpec>,
}

/// `recipes/dmoerm-*.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmoermRecipe {
    pub router: RouterConfig,
    #[serde(rename = "task")]
    pub tasks: Vec<TaskConfig>,
    #[serde(default)]
    pub aggregator: AggregatorConfig,
    pub run: RunConfig,
}

impl DmoermRecipe {
    pub fn validate(&self) -> Result<()> {
        self.router.validate()?;
        self.aggregator.validate()?;
        if self.tasks.is_empty() {
            bail!("the recipe has no [[task]]");
        }
        if self.run.batch_size == 0 {
            bail!("run.batch_size must be at least 1");
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if self.tasks[..i].iter().any(|u| u.name == t.name) {
                bail!("task name {:?} appears twice", t.name);
            }
            if t.experts.is_empty() {
                bail!("task {:?} has no experts", t.name);
            }
            for (j, e) in t.experts.iter().enumerate() {
                if t.experts[..j].iter().any(|f| f.capability == e.capability) {
                    bail!(
                        "task {:?}: capability {:?} appears twice",
                        t.name,
                        e.capability
                    );
                }
            }
        }
        Ok(())
    }
}

/// One expert's dev figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpertReport {
    pub capability: String,
    pub path: PathBuf,
    /// The expert's own reward as the task's reward, on the task's dev pairs.
    pub dev_accuracy: f64,
}

/// One task's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    pub name: String,
    pub train_pairs: usize,
    pub dev_pairs: usize,
    pub experts: Vec<ExpertReport>,
    /// The mean of the experts' rewards, each standardized on the training responses.
    pub mean_of_experts_dev_accuracy: f64,
    pub aggregator: FitTrace,
    pub aggregator_train_accuracy: f64,
    pub aggregator_dev_accuracy: f64,
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DmoermReport {
    pub tasks: Vec<TaskReport>,
    pub router: FitTrace,
    pub router_train_accuracy: f64,
    pub router_dev_accuracy: f64,
    /// `confusion[t][u]`: dev prompts of task `t` routed to task `u`.
    pub router_confusion: Vec<Vec<usize>>,
    /// Every dev pair routed by its prompt and scored by the routed task's model.
    pub routed_dev_accuracy: f64,
    pub input: ExpertOutput,
    pub cache: Vec<(String, CacheStatus)>,
    pub seconds: f64,
    pub model_dir: PathBuf,
}

/// Feature lookups through the cache, logged.
struct Cached<'a> {
    cache: FeatureCache,
    batch_size: usize,
    statuses: Vec<(String, CacheStatus)>,
    request: &'a RunRequest,
}

impl Cached<'_> {
    fn features(
        &mut self,
        embedder: &Embedder,
        name: &str,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>> {
        let (f, status) = cached_features(
            &self.cache,
            embedder,
            self.batch_size,
            name,
            &texts,
            self.request,
        )?;
        self.statuses.push((name.to_string(), status));
        Ok(f)
    }

    /// `[2N]` features of a pair list under one expert: chosen and rejected interleaved.
    fn pair_features(
        &mut self,
        expert: &Expert,
        name: &str,
        pairs: &[PreferencePair],
    ) -> Result<Vec<Vec<f32>>> {
        let mut texts = Vec::with_capacity(2 * pairs.len());
        for p in pairs {
            texts.push(expert.embedder.pair_text(&p.prompt, &p.chosen)?);
            texts.push(expert.embedder.pair_text(&p.prompt, &p.rejected)?);
        }
        self.features(&expert.embedder, name, texts)
    }
}

/// Accuracy of interleaved (chosen, rejected) scores.
fn interleaved_accuracy(scores: &[f64]) -> f64 {
    let c: Vec<f64> = scores.iter().step_by(2).copied().collect();
    let r: Vec<f64> = scores.iter().skip(1).step_by(2).copied().collect();
    pair_accuracy(&c, &r)
}

fn split_rows(rows: &[Vec<f32>]) -> (Vec<&[f32]>, Vec<&[f32]>) {
    (
        rows.iter().step_by(2).map(Vec::as_slice).collect(),
        rows.iter().skip(1).step_by(2).map(Vec::as_slice).collect(),
    )
}

/// A task's loaded experts and data.
struct LoadedTask {
    experts: Vec<Expert>,
    train: Vec<PreferencePair>,
    dev: Vec<PreferencePair>,
}

/// `plumb multiobj dmoerm`: router, aggregators, report and model folder in `run.out_dir`.
pub fn train(recipe: &DmoermRecipe, request: &RunRequest) -> Result<DmoermReport> {
    recipe.validate()?;
    let start = Instant::now();
    let input = recipe.aggregator.input;
    let mut cached = Cached {
        cache: FeatureCache::new(&recipe.run.cache_dir),
        batch_size: recipe.run.batch_size,
        statuses: Vec::new(),
        request,
    };
    let mut loaded = Vec::new();
    for t in &recipe.tasks {
        let train = t
            .train
            .load(&request.data_dir)
            .with_context(|| format!("task {:?} train", t.name))?;
        let dev = t
            .eval
            .load(&request.data_dir)
            .with_context(|| format!("task {:?} eval", t.name))?;
        let experts = t
            .experts
            .iter()
            .map(|e| {
                let path = rm_core::paths::resolve_model_path(&e.path, &request.models_dir);
                Expert::load(&path, &request.device)
                    .with_context(|| format!("task {:?}, capability {:?}", t.name, e.capability))
            })
            .collect::<Result<Vec<_>>>()?;
        request.log(format!(
            "task {}: {} train / {} dev pairs, {} experts",
            t.name,
            train.len(),
            dev.len(),
            experts.len()
        ));
        loaded.push(LoadedTask {
            experts,
            train,
            dev,
        });
    }

    // Outer layer: the router on prompt features.
    let router_config = recipe.router.embedder.resolved(&request.models_dir);
    let router_embedder = Embedder::load(&router_config, &request.device)?;
    let prompt_features = |cached: &mut Cached,
                           split: &str,
                           pick: &dyn Fn(&LoadedTask) -> &Vec<PreferencePair>|
     -> Result<(Vec<Vec<f32>>, Vec<usize>)> {
        let mut texts = Vec::new();
        let mut labels = Vec::new();
        for (t, task) in loaded.iter().enumerate() {
            for p in pick(task) {
                texts.push(router_embedder.prompt_text(&p.prompt)?);
                labels.push(t);
            }
        }
        Ok((
            cached.features(&router_embedder, &format!("router {split} prompts"), texts)?,
            labels,
        ))
    };
    let (train_phi, train_labels) = prompt_features(&mut cached, "train", &|t| &t.train)?;
    let (dev_phi, dev_labels) = prompt_features(&mut cached, "dev", &|t| &t.dev)?;
    let (router, router_trace) = train_router(
        &recipe.router,
        &train_phi.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        &train_labels,
        recipe.tasks.len(),
        &request.device,
    )?;
    let routing_accuracy = |phi: &[Vec<f32>], labels: &[usize]| {
        let right = phi
            .iter()
            .zip(labels)
            .filter(|(x, l)| router.route(x).0 == **l)
            .count();
        right as f64 / labels.len() as f64
    };
    let mut confusion = vec![vec![0usize; recipe.tasks.len()]; recipe.tasks.len()];
    let dev_routes: Vec<usize> = dev_phi.iter().map(|x| router.route(x).0).collect();
    for (&l, &u) in dev_labels.iter().zip(&dev_routes) {
        confusion[l][u] += 1;
    }
    request.log(format!(
        "router: loss {:.4} → {:.4}, dev accuracy {:.3}",
        router_trace.first_loss,
        router_trace.last_loss,
        routing_accuracy(&dev_phi, &dev_labels)
    ));

    // Inner layers: per task, the experts' outputs and the aggregator.
    let mut task_reports = Vec::new();
    let mut task_models = Vec::new();
    let mut task_dev_scores: Vec<Vec<f64>> = Vec::new();
    for (config, task) in recipe.tasks.iter().zip(&loaded) {
        let mut train_parts = Vec::new();
        let mut dev_parts = Vec::new();
        let mut expert_reports = Vec::new();
        let mut standardized_dev = vec![0f64; 2 * task.dev.len()];
        for (spec, expert) in config.experts.iter().zip(&task.experts) {
            let name = format!("{}/{}", config.name, spec.capability);
            let train_f = cached.pair_features(expert, &format!("{name} train"), &task.train)?;
            let dev_f = cached.pair_features(expert, &format!("{name} dev"), &task.dev)?;
            let train_r: Vec<f64> = train_f.iter().map(|f| expert.reward(f) as f64).collect();
            let dev_r: Vec<f64> = dev_f.iter().map(|f| expert.reward(f) as f64).collect();
            let (mean, std) = mean_std(&train_r);
            for (acc, &r) in standardized_dev.iter_mut().zip(&dev_r) {
                *acc += (r - mean) / std;
            }
            let dev_accuracy = interleaved_accuracy(&dev_r);
            request.log(format!("  {name}: dev accuracy {dev_accuracy:.3}"));
            expert_reports.push(ExpertReport {
                capability: spec.capability.clone(),
                path: expert_path(spec, request)?,
                dev_accuracy,
            });
            train_parts.push(expert.outputs(&train_f, input));
            dev_parts.push(expert.outputs(&dev_f, input));
        }
        let train_rows = concat_outputs(&train_parts);
        let dev_rows = concat_outputs(&dev_parts);
        let (tc, tr) = split_rows(&train_rows);
        let (aggregator, trace) = train_aggregator(&recipe.aggregator, &tc, &tr, &request.device)
            .with_context(|| format!("task {:?}", config.name))?;
        let score = |rows: &[Vec<f32>], agg: &HostAggregator| -> Vec<f64> {
            rows.iter().map(|r| agg.reward(r)).collect()
        };
        let dev_scores = score(&dev_rows, &aggregator);
        let report = TaskReport {
            name: config.name.clone(),
            train_pairs: task.train.len(),
            dev_pairs: task.dev.len(),
            experts: expert_reports,
            mean_of_experts_dev_accuracy: interleaved_accuracy(&standardized_dev),
            aggregator_train_accuracy: interleaved_accuracy(&score(&train_rows, &aggregator)),
            aggregator_dev_accuracy: interleaved_accuracy(&dev_scores),
            aggregator: trace,
        };
        request.log(format!(
            "  {}: aggregator loss {:.4} → {:.4}, dev accuracy {:.3} (mean of experts {:.3})",
            config.name,
            report.aggregator.first_loss,
            report.aggregator.last_loss,
            report.aggregator_dev_accuracy,
            report.mean_of_experts_dev_accuracy
        ));
        task_reports.push(report);
        task_dev_scores.push(dev_scores);
        task_models.push(TaskModel {
            name: config.name.clone(),
            experts: config
                .experts
                .iter()
                .map(|e| {
                    Ok(ExpertSpec {
                        capability: e.capability.clone(),
                        path: expert_path(e, request)?,
                    })
                })
                .collect::<Result<_>>()?,
            input,
            aggregator,
        });
    }

    // End to end: route each dev pair by its prompt, score it with the routed task's model
    // (pairs routed to their own task keep the scores above).
    let mut routed_scores = Vec::new();
    let mut k = 0;
    for (t, task) in loaded.iter().enumerate() {
        for (i, p) in task.dev.iter().enumerate() {
            let u = dev_routes[k];
            k += 1;
            if u == t {
                routed_scores.extend_from_slice(&task_dev_scores[t][2 * i..2 * i + 2]);
                continue;
            }
            let model = &task_models[u];
            let mut parts = Vec::new();
            for expert in &loaded[u].experts {
                let texts = [
                    expert.embedder.pair_text(&p.prompt, &p.chosen)?,
                    expert.embedder.pair_text(&p.prompt, &p.rejected)?,
                ];
                let f = expert.embedder.embed(&texts, 2)?;
                parts.push(expert.outputs(&f, input));
            }
            for row in concat_outputs(&parts) {
                routed_scores.push(model.aggregator.reward(&row));
            }
        }
    }

    let spec = DmoermSpec {
        format_version: FORMAT_VERSION,
        router_embedder: router_config.absolute()?,
        router: router.clone(),
        tasks: task_models,
    };
    let model_dir = recipe.run.out_dir.join("model");
    spec.save(&model_dir)?;
    let report = DmoermReport {
        tasks: task_reports,
        router_train_accuracy: routing_accuracy(&train_phi, &train_labels),
        router_dev_accuracy: routing_accuracy(&dev_phi, &dev_labels),
        router: router_trace,
        router_confusion: confusion,
        routed_dev_accuracy: interleaved_accuracy(&routed_scores),
        input,
        cache: cached.statuses,
        seconds: start.elapsed().as_secs_f64(),
        model_dir,
    };
    write_report(&recipe.run.out_dir, &report)?;
    rm_core::checkpoint::write_bytes_atomically(
        &recipe.run.out_dir.join("report.md"),
        markdown(&report).as_bytes(),
    )?;
    Ok(report)
}

/// The report as Markdown tables.
pub fn markdown(r: &DmoermReport) -> String {
    let mut out = String::from(
        "| task | capability expert | dev pairs | dev accuracy |\n|---|---|---|---|\n",
    );
    for t in &r.tasks {
        for e in &t.experts {
            out += &format!(
                "| {} | {} alone | {} | {:.3} |\n",
                t.name, e.capability, t.dev_pairs, e.dev_accuracy
            );
        }
        out += &format!(
            "| {} | mean of the experts (standardized) | {} | {:.3} |\n",
            t.name, t.dev_pairs, t.mean_of_experts_dev_accuracy
        );
        out += &format!(
            "| {} | **MLP aggregator** (loss {:.4} → {:.4}, train accuracy {:.3}) | {} | **{:.3}** |\n",
            t.name,
            t.aggregator.first_loss,
            t.aggregator.last_loss,
            t.aggregator_train_accuracy,
            t.dev_pairs,
            t.aggregator_dev_accuracy
        );
    }
    let names: Vec<&str> = r.tasks.iter().map(|t| t.name.as_str()).collect();
    out += &format!(
        "\nRouter: loss {:.4} → {:.4}; accuracy train {:.3}, dev {:.3}; dev confusion (rows = true task, columns = routed; {}): {:?}\n",
        r.router.first_loss,
        r.router.last_loss,
        r.router_train_accuracy,
        r.router_dev_accuracy,
        names.join(", "),
        r.router_confusion
    );
    let total: usize = r.tasks.iter().map(|t| t.dev_pairs).sum();
    out += &format!(
        "\nEnd to end (each dev pair routed by its prompt, scored by the routed task's experts and MLP; expert outputs = {:?}): accuracy **{:.3}** on {total} pairs.\n",
        r.input, r.routed_dev_accuracy
    );
    out
}

/// Mean and standard deviation (floored at 1e-12) of a sample.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt().max(1e-12))
}

fn expert_path(spec: &ExpertSpec, request: &RunRequest) -> Result<PathBuf> {
    let path = rm_core::paths::resolve_model_path(&spec.path, &request.models_dir);
    std::path::absolute(&path).with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_recipe_validates_and_overrides_reach_it() {
        let recipe: DmoermRecipe = rm_core::recipe::parse(
            include_str!("../../../recipes/dmoerm-minilm.toml"),
            "recipes/dmoerm-minilm.toml",
            &["aggregator.input=rewards".into()],
        )
        .unwrap();
        recipe.validate().unwrap();
        assert_eq!(recipe.tasks.len(), 2);
        assert_eq!(recipe.tasks[1].experts[1].capability, "reasoning");
        assert_eq!(recipe.aggregator.input, ExpertOutput::Rewards);
        let bad: Result<DmoermRecipe> = rm_core::recipe::parse(
            include_str!("../../../recipes/dmoerm-minilm.toml"),
            "recipes/dmoerm-minilm.toml",
            &["aggregator.input=logits".into()],
        );
        assert!(bad.is_err());
    }

    #[test]
    fn accuracy_of_interleaved_scores_and_mean_std_by_hand() {
        assert_eq!(
            interleaved_accuracy(&[1.0, 0.0, 0.0, 2.0, 3.0, 1.0]),
            2.0 / 3.0
        );
        let (m, s) = mean_std(&[1.0, 3.0]);
        assert_eq!((m, s), (2.0, 1.0));
    }
}
