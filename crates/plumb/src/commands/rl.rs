//! `plumb train-rl`: online RL (GRPO, RLOO, REINFORCE++, ReMax, OPO, DAPO, GSPO, CISPO, …) of a
//! policy against reward functions, from a TOML recipe.

use anyhow::Result;
use policy_opt::online::{RlRecipe, RlReport, train_rl_policy};

use super::reward::{TrainArgs, print_before_after, print_policy_run};
use crate::GlobalArgs;

/// `plumb train-rl`.
pub fn train_rl(global: &GlobalArgs, args: TrainArgs) -> Result<()> {
    let mut recipe = RlRecipe::load(&args.recipe, &args.overrides)?;
    if let Some(out) = &global.out {
        recipe.train.out_dir = out.clone();
    }
    let report = train_rl_policy(recipe, &args.request(global)?)?;
    print_report(&report);
    Ok(())
}

fn print_report(r: &RlReport) {
    print_before_after("before", &r.initial_eval, &r.final_eval);
    println!(
        "\ntrained {} steps in {:.1}s ({} threads); best eval reward {:.4} at step {}",
        r.outcome.steps,
        r.outcome.train_seconds,
        r.threads,
        r.outcome.best_score.unwrap_or(f64::NAN),
        r.outcome.best_step.unwrap_or(0)
    );
    print_policy_run(
        &r.out_dir,
        &r.final_dir,
        &r.best_dir,
        r.plot.as_deref(),
        r.plot_error.as_deref(),
    );
}
