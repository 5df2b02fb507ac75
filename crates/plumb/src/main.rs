//! `plumb`: the plumbline command line.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// plumbline: reward models and reward-based alignment of language models, on burn.
///
/// A typical session:
///
///   cargo xtask fetch-models             # models/minilm and models/smollm2
///   plumb info                           # backends, devices, models and datasets found
///   plumb data inspect hh-rlhf           # counts, token lengths and a sample of a dataset
///   plumb embed --text "a sentence"      # MiniLM ids and mean-pooled vector (JSON)
///   plumb logprobs --text "Hello there"  # SmolLM2 per-token log-probs (JSON)
///   plumb generate --prompt "What is the capital of France?"
///   plumb quickstart                     # train a MiniLM reward model on HH-RLHF, print its report
///   plumb train-rm --recipe recipes/rm-minilm-hh.toml --set train.lr=5e-5
///   plumb eval-rm --rm runs/rm-minilm-hh/final --input hh-rlhf:dev
///   plumb score --rm runs/rm-minilm-hh/final --input rows.jsonl
///   plumb export --model runs/rm-minilm-hh/final --out hf/rm-minilm-hh
///
/// Datasets are read from --data-dir (else $PLUMB_DATA_DIR, else ../shared/datasets); models
/// from --models-dir (else $PLUMB_MODELS_DIR, else ./models).
#[derive(Parser, Debug)]
#[command(name = "plumb", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command understands.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Compute device: auto, flex (CPU), wgpu, wgpu:N, wgpu:cpu, cuda, cuda:N, tch (LibTorch
    /// CPU, feature `tch`), tch:cuda:N.
    #[arg(long, global = true, default_value = "auto", env = "PLUMB_DEVICE")]
    pub device: rm_core::device::DeviceSpec,
    /// Dataset folder [default: $PLUMB_DATA_DIR, else ../shared/datasets].
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Models folder [default: $PLUMB_MODELS_DIR, else ./models].
    #[arg(long, global = true)]
    pub models_dir: Option<PathBuf>,
    /// Random seed for sampling (`plumb generate`); train-rm and quickstart take the
    /// recipe's train.seed instead (--set train.seed=N).
    #[arg(long, global = true, default_value_t = 42)]
    pub seed: u64,
    /// Where to write outputs (reports, checkpoints); commands say what they put there.
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compiled backends, usable devices, and the models and datasets found (with paths).
    Info,
    /// Look at datasets.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Token ids and pooled vectors of texts under a BERT encoder (JSON lines).
    Embed(commands::models::EmbedArgs),
    /// Per-token log-probs, their sum and the argmax next token under a decoder (JSON lines).
    Logprobs(commands::models::LogprobsArgs),
    /// Chat with a decoder: ChatML prompt, batched sampling with a KV cache.
    Generate(commands::models::GenerateArgs),
    /// Train a reward model from a TOML recipe, evaluate it, write a report and curves.
    TrainRm(commands::reward::TrainArgs),
    /// Train a process reward model (per-step correctness) from a TOML recipe.
    TrainPrm(commands::reward::TrainArgs),
    /// Step accuracy, AUROC, first-error F1 and best-of-N selection of a process reward model.
    EvalPrm(commands::process::EvalPrmArgs),
    /// Each step's probability of being correct under a process reward model (JSONL).
    ScorePrm(commands::process::ScorePrmArgs),
    /// Align a policy on preference pairs (DPO family) from a TOML recipe.
    TrainPo(commands::reward::TrainArgs),
    /// Train a policy online (GRPO, RLOO, REINFORCE++, DAPO, GSPO, …) against reward functions.
    TrainRl(commands::reward::TrainArgs),
    /// Math-Shepherd step labels: k policy completions from each step prefix, hard and soft
    /// labels by reaching the gold answer, as step-labelled JSONL for train-prm.
    LabelSteps(commands::rl::LabelStepsArgs),
    /// RewardBench-style report of a policy's implicit DPO rewards on a JSONL file or HH-RLHF.
    EvalPo(commands::policy::EvalPoArgs),
    /// Reward-guided decoding (best-of-n, soft best-of-n, rejection, ARGS, GenARM, controlled) of a
    /// policy with a reward model: one JSON line per prompt, a summary.
    Decode(Box<commands::decode::DecodeArgs>),
    /// Best-of-n overoptimization study: gold and proxy reward of each proxy's best-of-n choice
    /// against √KL (single reward models and ensembles as proxies); JSON, Markdown, PNG.
    Overopt(Box<commands::overopt::OveroptArgs>),
    /// Online-RL overoptimization: gold and proxy reward of train-rl runs (a proxy [[reward]]
    /// trained on, a gold one logged with weight 0) against √KL at every evaluation.
    OveroptRl(commands::overopt::OveroptRlArgs),
    /// RewardBench-style report (v1, v2 or pairs) of a trained reward model on a JSONL file.
    EvalRm(commands::reward::EvalRmArgs),
    /// RewardMATH-style probe: GSM8K's correct solution against N rule-made incorrect ones
    /// (one-vs-all accuracy, MRR, pairwise accuracy, each beside chance).
    ProbeMath(commands::reward::ProbeMathArgs),
    /// Rewards of (prompt, response) rows as JSONL, batched by length.
    Score(commands::reward::ScoreArgs),
    /// A reward-model or policy folder out to Hugging Face (transformers, sentence-transformers,
    /// PEFT), written into --out.
    Export(commands::export::ExportArgs),
    /// Multi-objective and personalized rewards on frozen features: attribute heads, ArmoRM
    /// gating, PAL / VPL population test, scoring with a saved model.
    #[command(subcommand)]
    Multiobj(commands::multiobj::MultiobjCommand),
    /// The main job: a MiniLM Bradley–Terry reward model on HH-RLHF, trained and evaluated.
    Quickstart(commands::reward::QuickstartArgs),
}

fn main() -> ExitCode {
    #[cfg(feature = "mimalloc")]
    rm_core::allocator::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => commands::info::run(&cli.global),
        Command::Data(cmd) => commands::data::run(&cli.global, cmd),
        Command::Embed(args) => commands::models::embed(&cli.global, args),
        Command::Logprobs(args) => commands::models::logprobs(&cli.global, args),
        Command::Generate(args) => commands::models::generate_cmd(&cli.global, args),
        Command::TrainRm(args) => commands::reward::train_rm(&cli.global, args),
        Command::TrainPrm(args) => commands::process::train_prm_cmd(&cli.global, args),
        Command::EvalPrm(args) => commands::process::eval_prm(&cli.global, args),
        Command::ScorePrm(args) => commands::process::score_prm(&cli.global, args),
        Command::TrainPo(args) => commands::policy::train_po(&cli.global, args),
        Command::TrainRl(args) => commands::rl::train_rl(&cli.global, args),
        Command::LabelSteps(args) => commands::rl::label_steps(&cli.global, args),
        Command::EvalPo(args) => commands::policy::eval_po(&cli.global, args),
        Command::Decode(args) => commands::decode::run(&cli.global, *args),
        Command::Overopt(args) => commands::overopt::run(&cli.global, *args),
        Command::OveroptRl(args) => commands::overopt::run_rl(&cli.global, args),
        Command::EvalRm(args) => commands::reward::eval_rm(&cli.global, args),
        Command::ProbeMath(args) => commands::reward::probe_math(&cli.global, args),
        Command::Score(args) => commands::reward::score(&cli.global, args),
        Command::Export(args) => commands::export::run(&cli.global, args),
        Command::Multiobj(cmd) => commands::multiobj::run(&cli.global, cmd),
        Command::Quickstart(args) => commands::reward::quickstart(&cli.global, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
