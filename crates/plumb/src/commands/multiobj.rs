//! `plumb multiobj train | population-test | dmoerm | score | orchestrate | weights`: multi-objective and personalized rewards on
//! frozen backbone features (rm_multiobj). Each parses its flags, makes one library call, prints.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use policy_opt::online::orchestrate::{
    OrchestrateRecipe, OrchestrateRequest, markdown, orchestrate,
};
use rm_core::types::Prompt;
use rm_multiobj::dmoerm;
use rm_multiobj::dmoerm_run::DmoermRecipe;
use rm_multiobj::model::MultiObjectiveModel;
use rm_multiobj::orchestrator::Orchestrator;
use rm_multiobj::pipeline::{MultiObjRecipe, PopulationRecipe, RunRequest, population_test, train};
use serde_json::json;

use crate::GlobalArgs;

#[derive(Subcommand, Debug)]
pub enum MultiobjCommand {
    /// Attribute heads (harmless, verbosity, correctness) on cached features, verbosity
    /// debiasing, ArmoRM gating; report and model folder in run.out_dir.
    Train(RecipeArgs),
    /// Synthetic two-population preferences from HH: one shared Bradley–Terry model vs PAL vs VPL.
    PopulationTest(RecipeArgs),
    /// DMoERM: a task router over each task's capability experts (reward-model folders from
    /// `plumb train-rm`), aggregated by an MLP; report and model folder in run.out_dir.
    Dmoerm(RecipeArgs),
    /// Rewards of responses to one prompt under a saved multi-objective or DMoERM model
    /// (JSON lines).
    Score(ScoreArgs),
    /// The Preference Orchestrator: an adapter giving each prompt its weights over
    /// `[[reward]]` objectives, trained on the preferred responses' rewards (for
    /// train-rl's `algorithm.orchestrator`).
    Orchestrate(RecipeArgs),
    /// A trained orchestrator's weights for prompts (JSON lines).
    Weights(WeightsArgs),
}

#[derive(Args, Debug)]
pub struct WeightsArgs {
    /// A folder written by `plumb multiobj orchestrate`.
    #[arg(long)]
    pub orchestrator: PathBuf,
    /// A prompt (repeat for several).
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RecipeArgs {
    /// A TOML recipe (recipes/multiobj-*.toml for train, recipes/pal-*.toml for population-test).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Override a recipe field: --set gating.steps=500 (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub overrides: Vec<String>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// A model folder written by `plumb multiobj train` or `plumb multiobj dmoerm`
    /// (run.out_dir/model).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// A response to score (repeat for several).
    #[arg(long = "response", required = true)]
    pub responses: Vec<String>,
}

fn request(global: &GlobalArgs, quiet: bool) -> Result<RunRequest> {
    Ok(RunRequest {
        data_dir: rm_core::paths::data_dir(global.data_dir.as_deref()),
        models_dir: rm_core::paths::models_dir(global.models_dir.as_deref()),
        device: global.device.device()?,
        verbose: !quiet,
    })
}

fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:+.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(global: &GlobalArgs, cmd: MultiobjCommand) -> Result<()> {
    match cmd {
        MultiobjCommand::Train(args) => {
            let mut recipe: MultiObjRecipe = rm_core::recipe::load(&args.recipe, &args.overrides)?;
            if let Some(out) = &global.out {
                recipe.run.out_dir = out.clone();
            }
            let r = train(&recipe, &request(global, args.quiet)?)?;
            println!(
                "attribute     fit            λ        dev metric                 alone on HH dev"
            );
            for a in &r.attributes {
                let metric = match (a.dev_accuracy, a.dev_r2, a.dev_pearson) {
                    (Some(acc), _, _) => format!("accuracy {acc:.3} (n={})", a.dev_count),
                    (_, Some(r2), Some(p)) => format!("R² {r2:.3}, r {p:.3} (n={})", a.dev_count),
                    _ => "-".into(),
                };
                println!(
                    "{:<13} {:<14} {:<8} {:<26} {:.3}",
                    a.name, a.fit, a.lambda, metric, a.hh_dev_accuracy
                );
            }
            println!("verbosity penalties λ:            {}", fmt(&r.penalties));
            println!(
                "Spearman with verbosity (ref set): before {} | after {}",
                fmt(&r.spearman_before),
                fmt(&r.spearman_after)
            );
            println!(
                "Spearman with verbosity (HH dev):  before {} | after {}",
                fmt(&r.dev_spearman_before),
                fmt(&r.dev_spearman_after)
            );
            println!(
                "gating: loss {:.4} → {:.4} in {} steps; mean weights on HH dev {}",
                r.gating.first_loss,
                r.gating.last_loss,
                r.gating.steps,
                fmt(&r.mean_gating_weights)
            );
            println!("HH dev pair accuracy ({} pairs):", r.hh_dev_pairs);
            println!("  gated (ArmoRM)                {:.3}", r.hh_dev_gated);
            println!("  equal-weight sum              {:.3}", r.hh_dev_equal_sum);
            println!(
                "  equal-weight sum, debiased    {:.3}",
                r.hh_dev_equal_sum_debiased
            );
            println!(
                "  log-sigmoid conjunction       {:.3}  (reference {})",
                r.hh_dev_conjunction,
                fmt(&r.conjunction_reference)
            );
            println!(
                "model: {}   report: {}   ({:.1}s)",
                r.model_dir.display(),
                recipe.run.out_dir.join("report.json").display(),
                r.seconds
            );
        }
        MultiobjCommand::PopulationTest(args) => {
            let mut recipe: PopulationRecipe =
                rm_core::recipe::load(&args.recipe, &args.overrides)?;
            if let Some(out) = &global.out {
                recipe.run.out_dir = out.clone();
            }
            let r = population_test(&recipe, &request(global, args.quiet)?)?;
            println!(
                "populations {:?}; rules agree on {:.1}% of HH train pairs, {:.1}% of dev pairs; {} train users, {} new test users",
                r.rules,
                100.0 * r.agreement_train,
                100.0 * r.agreement_dev,
                r.train_users,
                r.test_users
            );
            println!(
                "test-user query accuracy   {:<22} {:<22}",
                "all pairs (per pop.)", "conflicting pairs"
            );
            for (name, acc) in [
                ("shared Bradley–Terry", &r.bt),
                ("PAL-A", &r.pal.accuracy),
                ("VPL", &r.vpl.accuracy),
            ] {
                println!(
                    "  {:<24} {:<22} {:<22}",
                    name,
                    fmt(&acc.all),
                    fmt(&acc.conflicting)
                );
            }
            println!(
                "report: {}   ({:.1}s)",
                recipe.run.out_dir.join("report.json").display(),
                r.seconds
            );
        }
        MultiobjCommand::Orchestrate(args) => {
            let mut recipe = OrchestrateRecipe::load(&args.recipe, &args.overrides)?;
            if let Some(out) = &global.out {
                recipe.out_dir = out.clone();
            }
            let request = OrchestrateRequest {
                data_dir: rm_core::paths::data_dir(global.data_dir.as_deref()),
                models_dir: rm_core::paths::models_dir(global.models_dir.as_deref()),
                device: global.device.device()?,
                progress: !args.quiet,
            };
            let r = orchestrate(recipe, &request)?;
            println!("{}", markdown(&r));
            for s in &r.skipped {
                println!("left out: {s}");
            }
            println!(
                "orchestrator: {}   report: {}   ({:.1}s)",
                r.out_dir.display(),
                r.out_dir.join("report.json").display(),
                r.seconds
            );
        }
        MultiobjCommand::Weights(args) => {
            let o = Orchestrator::load(&args.orchestrator, &global.device.device()?)?;
            let prompts: Vec<Prompt> = args.prompts.iter().cloned().map(Prompt::Text).collect();
            let refs: Vec<&Prompt> = prompts.iter().collect();
            for (p, w) in args.prompts.iter().zip(o.weights(&refs, 16)?) {
                let weights: std::collections::BTreeMap<&String, f64> =
                    o.spec.objectives.iter().zip(w).collect();
                println!("{}", json!({"prompt": p, "weights": weights}));
            }
        }
        MultiobjCommand::Dmoerm(args) => {
            let mut recipe: DmoermRecipe = rm_core::recipe::load(&args.recipe, &args.overrides)?;
            if let Some(out) = &global.out {
                recipe.run.out_dir = out.clone();
            }
            let r = rm_multiobj::dmoerm_run::train(&recipe, &request(global, args.quiet)?)?;
            println!("{}", rm_multiobj::dmoerm_run::markdown(&r));
            println!(
                "model: {}   report: {}   ({:.1}s)",
                r.model_dir.display(),
                recipe.run.out_dir.join("report.json").display(),
                r.seconds
            );
        }
        MultiobjCommand::Score(args) if args.model.join(dmoerm::SPEC_FILE).is_file() => {
            let model = dmoerm::DmoermModel::load(&args.model, &global.device.device()?)?;
            let scored = model.score(&Prompt::Text(args.prompt.clone()), &args.responses, 16)?;
            for (resp, s) in args.responses.iter().zip(scored) {
                println!(
                    "{}",
                    json!({"response": resp, "reward": s.reward, "task": s.task, "task_probability": s.task_probability, "capabilities": s.capabilities.into_iter().collect::<std::collections::BTreeMap<String, f64>>()})
                );
            }
        }
        MultiobjCommand::Score(args) => {
            let model = MultiObjectiveModel::load(&args.model, &global.device.device()?)?;
            let scored = model.score(&Prompt::Text(args.prompt.clone()), &args.responses, 16)?;
            for (resp, s) in args.responses.iter().zip(scored) {
                println!(
                    "{}",
                    json!({"response": resp, "reward": s.reward, "attributes": model.spec.attributes.iter().cloned().zip(s.attributes.iter().copied()).collect::<std::collections::BTreeMap<String, f64>>(), "debiased": s.debiased, "weights": s.weights})
                );
            }
        }
    }
    Ok(())
}
