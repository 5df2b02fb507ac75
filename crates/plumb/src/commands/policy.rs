//! `plumb train-po`: parses its flags, makes one `policy_opt` call, prints what it returned.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use policy_opt::{PreferenceRecipe, PreferenceReport, train_preference_policy};

use super::reward::{RunFlags, train_request};
use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct TrainPoArgs {
    /// A TOML recipe (see recipes/dpo-*.toml).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Override a recipe field: --set objective.beta=0.2 --set 'objective.loss_type=["sigmoid","sft"]'
    /// (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub overrides: Vec<String>,
    #[command(flatten)]
    pub run: RunFlags,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `plumb train-po`.
pub fn train_po(global: &GlobalArgs, args: TrainPoArgs) -> Result<()> {
    let mut recipe = PreferenceRecipe::load(&args.recipe, &args.overrides)?;
    if let Some(out) = &global.out {
        recipe.train.out_dir = out.clone();
    }
    let report = train_preference_policy(
        recipe,
        &train_request(global, args.run.mode(), !args.quiet)?,
    )?;
    print_report(&report);
    Ok(())
}

fn print_report(r: &PreferenceReport) {
    println!("\n| evaluation | before (reference) | after |\n|---|---|---|");
    for (name, after) in &r.final_eval.metrics {
        let before = r
            .initial_eval
            .metrics
            .get(name)
            .copied()
            .unwrap_or(f64::NAN);
        println!("| {name} | {before:.4} | {after:.4} |");
    }
    println!(
        "\ntrained {} steps, {:.2} pairs/s ({} threads); best eval loss {:.4} at step {}",
        r.outcome.steps,
        r.outcome.examples_per_second,
        r.threads,
        r.outcome.best_score.map_or(f64::NAN, |s| -s),
        r.outcome.best_step.unwrap_or(0)
    );
    println!(
        "policy: {}  (best: {})",
        r.final_dir.display(),
        r.best_dir.display()
    );
    println!(
        "summary: {}  metrics: {}",
        r.out_dir.join("summary.json").display(),
        r.out_dir.join("metrics.jsonl").display()
    );
    match (&r.plot, &r.plot_error) {
        (Some(p), _) => println!("plot: {}", p.display()),
        (None, Some(e)) => println!("plot: not written ({e})"),
        (None, None) => println!("plot: not written"),
    }
}
