//! `plumb train-prm` and `plumb eval-prm`: each parses its flags, makes one `rm_process` call,
//! and prints what it returned.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use rm_process::data::NeutralAs;
use rm_process::eval::{EvalFormat, EvalRequest, evaluate_file, score_file, write_report};
use rm_process::{PrmRecipe, ProcessRewardModel, train_prm};

use crate::GlobalArgs;
use crate::commands::reward::TrainArgs;

/// `plumb train-prm`.
pub fn train_prm_cmd(global: &GlobalArgs, args: TrainArgs) -> Result<()> {
    let mut recipe = PrmRecipe::load(&args.recipe, &args.overrides)?;
    if let Some(out) = &global.out {
        recipe.train.out_dir = out.clone();
    }
    let report = train_prm(recipe, &args.request(global)?)?;
    println!("\n{}", report.report.to_markdown());
    println!(
        "{} train / {} dev solutions; {} steps in {:.1}s ({:.2} sequences/s); final model {}",
        report.train_solutions,
        report.dev_solutions,
        report.outcome.steps,
        report.outcome.train_seconds,
        report.outcome.examples_per_second,
        report.final_dir.display()
    );
    if report.coarse_examples > 0 {
        println!(
            "hierarchical (HRM): {} coarse-grained training examples",
            report.coarse_examples
        );
    }
    match (&report.plot, &report.plot_error) {
        (Some(p), _) => println!("curves: {}", p.display()),
        (None, Some(e)) => println!("curves not drawn: {e}"),
        _ => {}
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Steps,
    Bon,
    Prm800k,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NeutralArg {
    Positive,
    Negative,
    Drop,
}

#[derive(Args, Debug)]
pub struct EvalPrmArgs {
    /// A PRM folder (train-prm's final/ or best/).
    #[arg(long)]
    pub prm: PathBuf,
    /// A JSONL file in --format's layout.
    #[arg(long)]
    pub input: PathBuf,
    /// steps: {"prompt","steps","labels"}; bon: {"prompt","candidates":[{"steps","correct","answer"?}]};
    /// prm800k: PRM800K phase-1 rows (preferred path).
    #[arg(long, value_enum)]
    pub format: FormatArg,
    /// A step is judged correct when p ≥ threshold.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// --format prm800k: what rating 0 counts as.
    #[arg(long, value_enum, default_value = "positive")]
    pub neutral: NeutralArg,
    /// --format prm800k: also best-of-N on candidate sets of up to N solutions per problem built
    /// from the rated alternatives (one swapped step each; correct iff no step is rated −1).
    #[arg(long, default_value_t = 0)]
    pub bon_from_alternatives: usize,
    /// Only the first N rows (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// --format steps / prm800k: score hierarchical (HRM) units instead of single steps: two
    /// consecutive steps merged into one, labelled by the later step.
    #[arg(long)]
    pub merged_steps: bool,
}

/// `plumb eval-prm`: the report as Markdown on stdout, JSON + Markdown at --out.
pub fn eval_prm(global: &GlobalArgs, args: EvalPrmArgs) -> Result<()> {
    let prm = ProcessRewardModel::load(&args.prm, &global.device.device()?)?;
    let request = EvalRequest {
        input: args.input.clone(),
        format: match args.format {
            FormatArg::Steps => EvalFormat::Steps,
            FormatArg::Bon => EvalFormat::Bon,
            FormatArg::Prm800k => EvalFormat::Prm800k,
        },
        threshold: args.threshold,
        batch_size: args.batch_size,
        neutral: match args.neutral {
            NeutralArg::Positive => NeutralAs::Positive,
            NeutralArg::Negative => NeutralAs::Negative,
            NeutralArg::Drop => NeutralAs::Drop,
        },
        bon_from_alternatives: args.bon_from_alternatives,
        seed: global.seed,
        limit: args.limit,
        merged_steps: args.merged_steps,
    };
    let report = evaluate_file(&prm, &args.prm.display().to_string(), &request)?;
    println!("{}", report.to_markdown());
    if let Some(out) = &global.out {
        rm_pipeline::reports::refuse_output_over_input(out, &args.input)?;
        let (j, m) = write_report(out, &report)?;
        println!("wrote {} and {}", j.display(), m.display());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ScorePrmArgs {
    /// A PRM folder (train-prm's final/ or best/, or a `plumb export` of one).
    #[arg(long)]
    pub prm: PathBuf,
    /// A JSONL file of {"prompt", "steps": [..]} rows (other fields ignored).
    #[arg(long)]
    pub input: PathBuf,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

/// `plumb score-prm`: one JSON line per input row, `{"line", "step_probs"}`.
pub fn score_prm(global: &GlobalArgs, args: ScorePrmArgs) -> Result<()> {
    let prm = ProcessRewardModel::load(&args.prm, &global.device.device()?)?;
    for row in score_file(&prm, &args.input, args.batch_size)? {
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}
