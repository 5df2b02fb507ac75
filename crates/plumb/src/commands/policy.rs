//! `plumb train-po` and `plumb eval-po`: each parses its flags, makes one `policy_opt` call,
//! prints what it returned.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use policy_opt::preference::{PolicyEvalRequest, evaluate_policy};
use policy_opt::{PoRecipe, PreferenceReport};
use rm_pipeline::eval::{EvalInput, ReportTarget};

use super::reward::{
    FormatArg, TrainArgs, print_before_after, print_eval_outcome, print_policy_run, with_progress,
};
use crate::GlobalArgs;

/// `plumb train-po`.
pub fn train_po(global: &GlobalArgs, args: TrainArgs) -> Result<()> {
    let mut recipe = PoRecipe::load(&args.recipe, &args.overrides)?;
    if let Some(out) = &global.out {
        recipe.set_out_dir(out.clone());
    }
    let report = policy_opt::train_po(recipe, &args.request(global)?)?;
    print_report(&report);
    Ok(())
}

fn print_report(r: &PreferenceReport) {
    print_before_after("before (reference)", &r.initial_eval, &r.final_eval);
    println!(
        "\ntrained {} steps, {:.2} {}/s ({} threads); best eval loss {:.4} at step {}",
        r.outcome.steps,
        r.outcome.examples_per_second,
        r.example_unit,
        r.threads,
        r.outcome.best_score.map_or(f64::NAN, |s| -s),
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

/// `--mode` of `eval-po` (reward-bench's DPO modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Σ log π − Σ log π_ref over the response tokens.
    Reference,
    /// Σ log π (reference-free).
    Sum,
    /// Σ log π / tokens (reference-free).
    Avg,
    /// −‖log π_t‖₂ (reference-free, reward-bench's `ref_free_norm`).
    Norm,
}

impl From<ModeArg> for bench_harness::ImplicitRewardMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Reference => Self::Reference,
            ModeArg::Sum => Self::Sum,
            ModeArg::Avg => Self::Avg,
            ModeArg::Norm => Self::Norm,
        }
    }
}

#[derive(Args, Debug)]
pub struct EvalPoArgs {
    /// A policy folder written by `plumb train-po` (e.g. runs/dpo-smollm2-hh/final), or any
    /// model folder / .gguf (then ChatML, up to 512 tokens).
    #[arg(long)]
    pub policy: PathBuf,
    /// The reference model of `--mode reference` [default: the base the policy folder names].
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// A JSONL file, or `hh-rlhf:dev` / `hh-rlhf:train` for the dataset in the data dir.
    #[arg(long)]
    pub input: EvalInput,
    /// Input layout [default: from the first row: lists → rewardbench2, a subset → rewardbench,
    /// else pairs].
    #[arg(long, value_enum, conflicts_with = "judge")]
    pub format: Option<FormatArg>,
    /// How log-probs become a reward.
    #[arg(long, value_enum, default_value_t = ModeArg::Reference, conflicts_with = "judge")]
    pub mode: ModeArg,
    /// Sequences per forward pass (with --judge: prompts per generation batch).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Instead of the implicit-reward report: the win rate of the policy's sampled responses
    /// against the reference's, judged by this reward-model folder (`plumb train-rm`).
    #[arg(long)]
    pub judge: Option<PathBuf>,
    /// With --judge: how many distinct prompts of --input.
    #[arg(long, default_value_t = 100, requires = "judge")]
    pub prompts: usize,
    /// With --judge: most new tokens per response.
    #[arg(long, default_value_t = 64, requires = "judge")]
    pub max_new_tokens: usize,
    /// With --judge: sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7, requires = "judge")]
    pub temperature: f32,
    /// With --judge: nucleus sampling threshold.
    #[arg(long, default_value_t = 0.9, requires = "judge")]
    pub top_p: f32,
}

/// `plumb eval-po`: a RewardBench-style report of a policy's implicit rewards (--out FILE.json,
/// and FILE.md beside it; default report.json).
pub fn eval_po(global: &GlobalArgs, args: EvalPoArgs) -> Result<()> {
    if let Some(judge) = args.judge.clone() {
        return judge_po(global, args, judge);
    }
    if args.mode != ModeArg::Reference && args.reference.is_some() {
        anyhow::bail!("--reference is only used by --mode reference");
    }
    let request = PolicyEvalRequest {
        policy: args.policy,
        reference: args.reference,
        mode: args.mode.into(),
        batch_size: args.batch_size,
        target: ReportTarget {
            input: args.input,
            format: args.format.map(Into::into),
            out: global
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("report.json")),
            data_dir: rm_core::paths::data_dir(global.data_dir.as_deref()),
        },
        device: global.device.device()?,
    };
    let outcome = with_progress(|progress| {
        evaluate_policy(&request, &mut |e| eprintln!("skipped: {e}"), progress)
    })?;
    print_eval_outcome(&outcome);
    Ok(())
}

/// `eval-po --judge`: the RM-judged win rate of sampled responses.
fn judge_po(global: &GlobalArgs, args: EvalPoArgs, judge: PathBuf) -> Result<()> {
    let request = policy_opt::preference::JudgeRequest {
        policy: args.policy,
        reference: args.reference,
        judge,
        input: args.input,
        prompts: args.prompts,
        data_dir: rm_core::paths::data_dir(global.data_dir.as_deref()),
        sampling: rm_core::sampling::SamplingConfig {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            seed: global.seed,
            ..Default::default()
        },
        batch_size: args.batch_size,
        out: global
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("win_rate.json")),
        device: global.device.device()?,
    };
    let o = policy_opt::preference::judged_win_rate(&request)?;
    println!(
        "win rate of the policy against the reference: {:.3} ({} wins, {} ties, {} prompts); mean reward policy {:.4}, reference {:.4}",
        o.win_rate, o.policy_wins, o.ties, o.prompts, o.mean_policy_reward, o.mean_reference_reward
    );
    println!(
        "{:.1}s; samples and rewards: {}",
        o.seconds,
        o.json_path.display()
    );
    Ok(())
}
