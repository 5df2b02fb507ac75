//! `plumb train-rm`, `plumb eval-rm`, `plumb score` and `plumb quickstart`: each parses its
//! flags, makes one `rm_pipeline` call, and prints what it returned.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use rm_core::train::RunMode;
use rm_pipeline::collaborative::{CollaborativeReport, train_collaborative};
use rm_pipeline::ensemble::{EnsembleTrainReport, train_ensemble};
use rm_pipeline::eval::{EvalFormat, EvalInput, EvalRequest, evaluate_reward_model};
use rm_pipeline::score::{ScoreRequest, TransformKind, score_rows, score_transform};
use rm_pipeline::{RewardRecipe, TrainReport, TrainRequest, train_reward_model};

use crate::GlobalArgs;

/// How `train-rm` and `train-po` treat their run folder.
#[derive(Args, Debug, Clone, Copy)]
pub struct RunFlags {
    /// Continue the run in train.out_dir from its last checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// With --resume: accept a recipe that differs from the run's (recorded in the metrics).
    #[arg(long, requires = "resume")]
    pub allow_changes: bool,
    /// Start over in a folder that holds a run (its previous outputs are removed).
    #[arg(long)]
    pub overwrite: bool,
}

impl RunFlags {
    pub(crate) fn mode(self) -> RunMode {
        if self.resume {
            RunMode::Resume {
                allow_changes: self.allow_changes,
            }
        } else if self.overwrite {
            RunMode::Overwrite
        } else {
            RunMode::Fresh
        }
    }
}

/// The flags of every recipe-driven trainer (`train-rm`, `train-prm`, `train-po`, `train-rl`).
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A TOML recipe (see recipes/README.md).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Override a recipe field: --set train.lr=5e-5 --set 'objective.loss_type=["sigmoid","sft"]'
    /// (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub overrides: Vec<String>,
    #[command(flatten)]
    pub run: RunFlags,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    /// Where and how the run happens: the global flags, the run folder mode, a progress bar
    /// unless `--quiet`.
    pub(crate) fn request(&self, global: &GlobalArgs) -> Result<TrainRequest> {
        train_request(global, self.run.mode(), !self.quiet)
    }
}

pub(crate) fn train_request(
    global: &GlobalArgs,
    mode: RunMode,
    progress: bool,
) -> Result<TrainRequest> {
    Ok(TrainRequest {
        data_dir: rm_core::paths::data_dir(global.data_dir.as_deref()),
        models_dir: rm_core::paths::models_dir(global.models_dir.as_deref()),
        device: global.device.device()?,
        mode,
        progress,
    })
}

fn with_out(mut recipe: RewardRecipe, global: &GlobalArgs) -> RewardRecipe {
    if let Some(out) = &global.out {
        recipe.train.out_dir = out.clone();
    }
    recipe
}

/// `plumb train-rm`.
pub fn train_rm(global: &GlobalArgs, args: TrainArgs) -> Result<()> {
    let recipe = with_out(RewardRecipe::load(&args.recipe, &args.overrides)?, global);
    let request = args.request(global)?;
    if recipe.ensemble.is_some() {
        let report = train_ensemble(recipe, &request)?;
        print_ensemble_report(&report);
        return Ok(());
    }
    if recipe.collaborative.is_some() {
        let report = train_collaborative(recipe, &request)?;
        print_collaborative_report(&report);
        return Ok(());
    }
    let report = train_reward_model(recipe, &request)?;
    print_train_report(&report);
    Ok(())
}

fn print_collaborative_report(r: &CollaborativeReport) {
    println!("\n{}", r.evaluation.to_markdown());
    println!(
        "trained both models {} steps in {:.1}s ({:.2} pairs/s); {} training pairs had their labels flipped by data.label_noise",
        r.outcome.steps, r.outcome.train_seconds, r.outcome.examples_per_second, r.flipped_pairs
    );
    if let (Some(step), Some(score)) = (r.outcome.best_step, r.outcome.best_score) {
        println!("best mean member dev accuracy {score:.4} at step {step}");
    }
    println!(
        "pair: {} (member-0, member-1, ensemble.json)  report: {}  metrics: {}",
        r.final_dir.display(),
        r.out_dir.join("report.json").display(),
        r.out_dir.join("metrics.jsonl").display()
    );
    match (&r.plot, &r.plot_error) {
        (Some(p), _) => println!("plot: {}", p.display()),
        (None, Some(e)) => println!("no plot: {e}"),
        _ => {}
    }
}

fn print_ensemble_report(r: &EnsembleTrainReport) {
    println!("\n{}", r.evaluation.to_markdown());
    for (i, m) in r.members.iter().enumerate() {
        println!(
            "member {i}: {} (seed {}{}){}",
            m.dir.display(),
            m.seed,
            if m.bootstrap { ", bootstrap" } else { "" },
            if m.skipped {
                ", finished earlier: skipped"
            } else {
                ""
            }
        );
    }
    println!(
        "ensemble: {}  report: {}  summary: {}",
        r.out_dir
            .join(rm_pipeline::ensemble::ENSEMBLE_FILE)
            .display(),
        r.out_dir.join("report.json").display(),
        r.out_dir.join("summary.json").display()
    );
}

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Override a field of the built-in recipe (as `train-rm --set`).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub overrides: Vec<String>,
    #[command(flatten)]
    pub run: RunFlags,
}

/// `plumb quickstart`: the main job on the built-in MiniLM × HH-RLHF recipe.
pub fn quickstart(global: &GlobalArgs, args: QuickstartArgs) -> Result<()> {
    let start = Instant::now();
    let recipe = with_out(RewardRecipe::quickstart(&args.overrides)?, global);
    let report = train_reward_model(recipe, &train_request(global, args.run.mode(), true)?)?;
    print_train_report(&report);
    println!(
        "\nquickstart finished in {:.1} min. Next: `plumb score --rm {} --input FILE.jsonl`, `plumb eval-rm --rm {} --input FILE.jsonl`.",
        start.elapsed().as_secs_f64() / 60.0,
        report.final_dir.display(),
        report.final_dir.display()
    );
    Ok(())
}

fn print_train_report(r: &TrainReport) {
    println!("\n{}", r.report.to_markdown());
    println!(
        "train {:.2} pairs/s, score {:.2} pairs/s ({} threads); best dev accuracy {:.4} at step {}",
        r.outcome.examples_per_second,
        r.score_pairs_per_s,
        r.threads,
        r.outcome.best_score.unwrap_or(f64::NAN),
        r.outcome.best_step.unwrap_or(0)
    );
    println!(
        "model: {}  (best: {})",
        r.final_dir.display(),
        r.best_dir.display()
    );
    println!(
        "report: {}  metrics: {}",
        r.out_dir.join("report.json").display(),
        r.out_dir.join("metrics.jsonl").display()
    );
    if let Some(s) = &r.preference_strength {
        println!(
            "preference strength ({}, {} member(s)): {} of {} training pairs voted against, {} flipped{}{}; per pair: {}",
            s.ensemble.display(),
            s.members,
            s.voted_against,
            s.pairs,
            s.flipped,
            s.flipped_injected
                .map_or(String::new(), |n| format!(" ({n} undo injected noise)")),
            s.mean_margin
                .map_or(String::new(), |m| format!(", mean adaptive margin {m:.4}")),
            s.file.display()
        );
    }
    print_plot(r.plot.as_deref(), r.plot_error.as_deref());
}

/// The table of a policy run's evaluations before and after training.
pub(crate) fn print_before_after(
    before_label: &str,
    initial: &rm_core::train::Evaluation,
    last: &rm_core::train::Evaluation,
) {
    println!("\n| evaluation | {before_label} | after |\n|---|---|---|");
    for (name, after) in &last.metrics {
        let before = initial.metrics.get(name).copied().unwrap_or(f64::NAN);
        println!("| {name} | {before:.4} | {after:.4} |");
    }
}

/// Where a policy run put its folders, summary, metrics and curves.
pub(crate) fn print_policy_run(
    out_dir: &std::path::Path,
    final_dir: &std::path::Path,
    best_dir: &std::path::Path,
    plot: Option<&std::path::Path>,
    plot_error: Option<&str>,
) {
    println!(
        "policy: {}  (best: {})",
        final_dir.display(),
        best_dir.display()
    );
    println!(
        "summary: {}  metrics: {}",
        out_dir.join("summary.json").display(),
        out_dir.join("metrics.jsonl").display()
    );
    print_plot(plot, plot_error);
}

/// Where a run's curves went, or why they did not.
pub(crate) fn print_plot(plot: Option<&std::path::Path>, error: Option<&str>) {
    match (plot, error) {
        (Some(p), _) => println!("plot: {}", p.display()),
        (None, Some(e)) => println!("plot: not written ({e})"),
        (None, None) => println!("plot: not written"),
    }
}

/// `--format` of `eval-rm` and `eval-po`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// reward-bench v1: {prompt, chosen, rejected, subset}.
    Rewardbench,
    /// reward-bench 2: {prompt, chosen: [..], rejected: [..], subset}.
    Rewardbench2,
    /// Preference pairs {prompt, chosen, rejected}; the subset is the file name.
    Pairs,
}

impl From<FormatArg> for EvalFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Rewardbench => EvalFormat::Rewardbench,
            FormatArg::Rewardbench2 => EvalFormat::Rewardbench2,
            FormatArg::Pairs => EvalFormat::Pairs,
        }
    }
}

#[derive(Args, Debug)]
pub struct EvalRmArgs {
    /// A reward-model folder written by `plumb train-rm` (e.g. runs/rm-minilm-hh/final), or an
    /// ensemble folder (ensemble.json: each member's and each aggregation's accuracy).
    #[arg(long)]
    pub rm: PathBuf,
    /// A JSONL file, or `hh-rlhf:dev` / `hh-rlhf:train` for the dataset in the data dir.
    #[arg(long)]
    pub input: EvalInput,
    /// Input layout [default: from the first row: lists → rewardbench2, a subset → rewardbench,
    /// else pairs].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Score with the stored normalization (no change to accuracies; the report's rows show it).
    #[arg(long)]
    pub normalized: bool,
    /// For an ensemble folder (one with ensemble.json): the aggregation reported first, e.g.
    /// mean, median, min, mean-minus-std:0.5, brme:0.5 [default: the ensemble's].
    #[arg(long)]
    pub aggregation: Option<rm_pipeline::ensemble::Aggregation>,
    /// Add robustness probes: length bias (correlation of reward with length; accuracy when
    /// chosen is shorter/longer), calibration (ECE of σ(r_c − r_r), reliability table),
    /// consistency under whitespace/punctuation/sentence-order edits, and contrast
    /// instructions (pairs of lexically similar prompts with their chosen responses: does the
    /// own response win for each prompt, the own prompt for each response?).
    #[arg(long)]
    pub probes: bool,
}

/// `plumb eval-rm`: a RewardBench-style report of a reward model (--out FILE.json, and FILE.md
/// beside it; default report.json).
pub fn eval_rm(global: &GlobalArgs, args: EvalRmArgs) -> Result<()> {
    let request = EvalRequest {
        rm: args.rm,
        input: args.input,
        format: args.format.map(Into::into),
        batch_size: args.batch_size,
        normalized: args.normalized,
        out: global
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("report.json")),
        data_dir: rm_core::paths::data_dir(global.data_dir.as_deref()),
        device: global.device.device()?,
        aggregation: args.aggregation,
        probes: args.probes,
    };
    let outcome = with_progress(|progress| {
        evaluate_reward_model(&request, &mut |e| eprintln!("skipped: {e}"), progress)
    })?;
    print_eval_outcome(&outcome);
    Ok(())
}

/// Runs `evaluate` with a progress bar of the scored items.
pub(crate) fn with_progress<T>(
    evaluate: impl FnOnce(&mut dyn FnMut(bench_harness::Progress)) -> Result<T>,
) -> Result<T> {
    let bar = indicatif::ProgressBar::new(0);
    let mut progress = |p: bench_harness::Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
    };
    let out = evaluate(&mut progress);
    bar.finish_and_clear();
    out
}

/// The report and where it went.
pub(crate) fn print_eval_outcome(outcome: &rm_pipeline::eval::EvalOutcome) {
    println!("{}", outcome.markdown);
    println!(
        "{} rows scored in {:.1}s ({:.2} rows/s, {} skipped); report: {} and {}",
        outcome.rows,
        outcome.seconds,
        outcome.rows as f64 / outcome.seconds,
        outcome.skipped,
        outcome.json_path.display(),
        outcome.md_path.display()
    );
}

/// `--transform` of `score`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransformArg {
    /// The head's output.
    Raw,
    /// (r − μ) / σ with the statistics stored in the model.
    Normalized,
    /// log σ(r − r_ref) against --reference.
    LogSigmoid,
}

#[derive(Args, Debug)]
pub struct ProbeMathArgs {
    /// A reward-model folder or an ensemble folder.
    #[arg(long)]
    pub rm: PathBuf,
    /// GSM8K split from the data dir.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// The first N problems (0 = all).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Incorrect solutions per problem (RewardMATH uses 9).
    #[arg(long, default_value_t = 9)]
    pub incorrect: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// For an ensemble folder: the aggregation [default: the ensemble's].
    #[arg(long)]
    pub aggregation: Option<rm_pipeline::ensemble::Aggregation>,
}

/// `plumb probe-math`: writes the report (--out FILE.json, FILE.md beside it, the rows as
/// FILE.rows.jsonl; default probe-math.json) and prints the table.
pub fn probe_math(global: &GlobalArgs, args: ProbeMathArgs) -> Result<()> {
    let report = rm_pipeline::math_probe::probe_math(&rm_pipeline::math_probe::MathProbeRequest {
        rm: args.rm,
        data_dir: rm_core::paths::data_dir(global.data_dir.as_deref()),
        split: args.split,
        limit: args.limit,
        incorrect: args.incorrect,
        seed: args.seed,
        batch_size: args.batch_size,
        device: global.device.device()?,
        aggregation: args.aggregation,
        out: global
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("probe-math.json")),
    })?;
    println!("{}", report.to_markdown());
    Ok(())
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// A reward-model folder written by `plumb train-rm`, or an ensemble folder (ensemble.json).
    #[arg(long)]
    pub rm: PathBuf,
    /// JSONL rows: {prompt, response} or {prompt, responses: [..]} or {prompt, chosen, rejected};
    /// the prompt is a string or a list of {role, content} turns.
    #[arg(long)]
    pub input: PathBuf,
    /// Texts per forward pass (texts are batched by length).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// How rewards are reported.
    #[arg(long, value_enum, default_value_t = TransformArg::Raw)]
    pub transform: TransformArg,
    /// The reference response for `--transform log-sigmoid`: r' = log σ(r(x,y) − r(x,reference)).
    #[arg(long)]
    pub reference: Option<String>,
    /// For an ensemble folder: the aggregation, e.g. mean, min, mean-minus-std:0.5, brme:0.5
    /// [default: the ensemble's]. Ensemble rows also list every member's reward.
    #[arg(long)]
    pub aggregation: Option<rm_pipeline::ensemble::Aggregation>,
}

/// `plumb score`: rewards JSONL (to --out or stdout); bad rows reported by line, the rest scored.
pub fn score(global: &GlobalArgs, args: ScoreArgs) -> Result<()> {
    let kind = match args.transform {
        TransformArg::Raw => TransformKind::Raw,
        TransformArg::Normalized => TransformKind::Normalized,
        TransformArg::LogSigmoid => TransformKind::LogSigmoid,
    };
    let request = ScoreRequest {
        rm: args.rm,
        input: args.input,
        batch_size: args.batch_size,
        transform: score_transform(kind, args.reference)?,
        device: global.device.device()?,
        aggregation: args.aggregation,
    };
    if let Some(out) = &global.out {
        rm_pipeline::reports::refuse_output_over_input(out, &request.input)?;
    }
    let mut sink: Box<dyn Write> = match &global.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let outcome = score_rows(&request, &mut sink, &mut |e| eprintln!("skipped: {e}"))?;
    eprintln!(
        "scored {} responses of {} rows in {:.2}s: {:.2} responses/s, {:.2} pairs/s; {} bad row(s) skipped",
        outcome.responses,
        outcome.rows,
        outcome.seconds,
        outcome.responses as f64 / outcome.seconds,
        outcome.responses as f64 / 2.0 / outcome.seconds,
        outcome.skipped
    );
    Ok(())
}
