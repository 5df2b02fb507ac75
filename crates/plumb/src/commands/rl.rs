//! `plumb train-rl`: online RL (GRPO, RLOO, REINFORCE++, ReMax, OPO, DAPO, GSPO, CISPO, …) of a
//! policy against reward functions, from a TOML recipe.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
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

#[derive(Args, Debug)]
pub struct LabelStepsArgs {
    /// The policy writing and continuing solutions: a policy folder or a model folder / .gguf.
    #[arg(long, default_value = "models/smollm2")]
    pub policy: PathBuf,
    /// The problems: gsm8k:train, gsm8k:test or a JSONL file ({"prompt", "reference"} rows).
    #[arg(long, default_value = "gsm8k:train")]
    pub input: String,
    /// The first N problems (0 = all).
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Where the step-labelled JSONL goes (what `plumb train-prm` reads as source = "jsonl").
    #[arg(long)]
    pub out: PathBuf,
    /// Completions per step prefix.
    #[arg(long, default_value_t = 4)]
    pub k: usize,
    /// Solutions per problem (their share correct is V(q), where PAV's progress labels start).
    #[arg(long, default_value_t = 1)]
    pub solutions: usize,
    /// The step delimiter (escapes \n and \t are read as such).
    #[arg(long, default_value = "\\n")]
    pub delimiter: String,
    /// Appended to every GSM8K question after a blank line.
    #[arg(
        long,
        default_value = "Solve step by step, one step per line, and end with the line '#### <answer>'."
    )]
    pub instruction: String,
    /// Answers only from markers (#### N, \boxed{N}, "the answer is N"), not the last number.
    #[arg(long)]
    pub strict: bool,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Tokens per prompt + completion for a plain model folder.
    #[arg(long, default_value_t = 512)]
    pub max_len: usize,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Rows per generation batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

/// `plumb label-steps`: Math-Shepherd Monte-Carlo step labels.
pub fn label_steps(global: &GlobalArgs, args: LabelStepsArgs) -> Result<()> {
    use policy_opt::online::prompts::PromptSource;
    use policy_opt::online::rewards::AnswerExtraction;
    use policy_opt::online::step_labels::{McLabelConfig, McLabelRequest, label_steps};
    let outcome = label_steps(&McLabelRequest {
        policy: args.policy,
        max_len: args.max_len,
        problems: PromptSource::from_flag(&args.input, args.limit)?,
        instruction: Some(args.instruction).filter(|s| !s.is_empty()),
        data_dir: rm_core::paths::data_dir(global.data_dir.as_deref()),
        config: McLabelConfig {
            k: args.k,
            delimiter: args.delimiter.replace("\\n", "\n").replace("\\t", "\t"),
            solutions_per_problem: args.solutions,
            extraction: if args.strict {
                AnswerExtraction::Strict
            } else {
                AnswerExtraction::Flexible
            },
        },
        sampling: rm_core::sampling::SamplingConfig {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            seed: global.seed,
            ..Default::default()
        },
        batch_size: args.batch_size,
        out: args.out,
        device: global.device.device()?,
    })?;
    let s = &outcome.stats;
    println!(
        "{} problems, {} solutions labelled ({} empty skipped), {} correct; {} steps, {} with hard label 1 ({:.1}%), mean soft label {:.3}; {} completions sampled in {:.1}s; written to {}",
        outcome.problems,
        s.solutions,
        s.skipped_empty,
        s.correct_solutions,
        s.steps,
        s.positive_steps,
        100.0 * s.positive_steps as f64 / s.steps.max(1) as f64,
        s.mean_soft,
        s.completions,
        outcome.seconds,
        outcome.out.display()
    );
    Ok(())
}
