//! `plumb overopt`: the best-of-n overoptimization study, and `plumb overopt-rl`: the same
//! curves from online-RL runs — each parses the flags, makes one `decoding` call, prints the
//! table.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use decoding::{OveroptRequest, StudySamples, run_overopt};
use rm_core::sampling::SamplingConfig;
use rm_pipeline::ensemble::Aggregation;

use crate::GlobalArgs;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["policy", "samples_file"])))]
pub struct OveroptArgs {
    /// The policy to sample: a policy folder, a model folder or a .gguf (ChatML).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Instead of --policy: a `plumb generate --input … --out FILE` file of samples.
    #[arg(long, conflicts_with_all = ["input", "prompts", "samples", "temperature", "top_p", "max_new_tokens"])]
    pub samples_file: Option<PathBuf>,
    /// Proxy reward models: reward-model, ensemble or DMoERM folders (repeat, or
    /// comma-separated).
    #[arg(long, required = true, value_delimiter = ',')]
    pub proxy: Vec<PathBuf>,
    /// The aggregations each ensemble proxy is scored with, e.g. mean,min,mean-minus-std:0.5
    /// [default: the one its ensemble.json names].
    #[arg(long, value_delimiter = ',')]
    pub aggregations: Vec<Aggregation>,
    /// The gold reward model (or ensemble or DMoERM folder) that judges the proxies' choices.
    #[arg(long)]
    pub gold: PathBuf,
    /// With an ensemble --gold: its aggregation [default: its ensemble.json's].
    #[arg(long)]
    pub gold_aggregation: Option<Aggregation>,
    /// Prompts: a JSONL file of {"prompt": …} rows, or hh-rlhf:dev / hh-rlhf:train.
    #[arg(long)]
    pub input: Option<String>,
    /// How many distinct prompts of --input (the first ones).
    #[arg(long)]
    pub prompts: Option<usize>,
    /// Samples per prompt (the largest n of the curve at most this) [default: 16].
    #[arg(long)]
    pub samples: Option<usize>,
    /// The n of the curve (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub n: Vec<usize>,
    /// Sampling temperature [default: 1].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus threshold [default: 1 = off].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Most new tokens per sample [default: 48].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Rows per generation batch.
    #[arg(long, default_value_t = 16)]
    pub gen_batch: usize,
    /// Texts per reward-model forward pass.
    #[arg(long, default_value_t = 16)]
    pub score_batch: usize,
}

/// `plumb overopt ... --out DIR` (default overopt/): overopt.{json,md,png}, scores.jsonl and,
/// when sampling, samples.jsonl; the table on stdout.
pub fn run(global: &GlobalArgs, args: OveroptArgs) -> Result<()> {
    let samples = match (&args.policy, &args.samples_file) {
        (Some(policy), None) => StudySamples::Policy {
            policy: policy.clone(),
            input: args.input.as_deref().unwrap_or("hh-rlhf:dev").parse()?,
            prompts: args.prompts.unwrap_or(100),
            samples: args.samples.unwrap_or(16),
            sampling: SamplingConfig {
                max_new_tokens: args.max_new_tokens.unwrap_or(48),
                temperature: args.temperature.unwrap_or(1.0),
                top_p: args.top_p.unwrap_or(1.0),
                seed: global.seed,
                ..SamplingConfig::default()
            },
            batch_size: args.gen_batch,
        },
        (None, Some(file)) => StudySamples::File(file.clone()),
        _ => bail!("give --policy or --samples-file"),
    };
    let request = OveroptRequest {
        samples,
        proxies: args.proxy.clone(),
        aggregations: args.aggregations.clone(),
        gold: args.gold.clone(),
        gold_aggregation: args.gold_aggregation.clone(),
        ns: args.n.clone(),
        data_dir: rm_core::paths::data_dir(global.data_dir.as_deref()),
        out_dir: global
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("overopt")),
        batch_size: args.score_batch,
        device: global.device.device()?,
    };
    let report = run_overopt(&request, &mut |line| eprintln!("{line}"))?;
    print!("{}", decoding::markdown(&report));
    println!(
        "\nscoring: {:.0} s; report {} / {}, chart {}, per-sample rewards {}",
        report.scoring_seconds,
        report.json.display(),
        report.markdown.display(),
        report.png.display(),
        report.scores.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct OveroptRlArgs {
    /// `plumb train-rl` run folders (repeat, or comma-separated), e.g. one per proxy.
    #[arg(long, required = true, value_delimiter = ',')]
    pub runs: Vec<PathBuf>,
    /// The `[[reward]]` name of the proxy each run optimized.
    #[arg(long, default_value = "proxy")]
    pub proxy: String,
    /// The `[[reward]]` name of the gold reward (in the runs with weight = 0.0).
    #[arg(long, default_value = "gold")]
    pub gold: String,
}

/// `plumb overopt-rl --runs A,B --out DIR` (default overopt-rl/): overopt_rl.{json,md,png};
/// the table on stdout.
pub fn run_rl(global: &GlobalArgs, args: OveroptRlArgs) -> Result<()> {
    let report = decoding::run_overopt_rl(&decoding::RlOveroptRequest {
        runs: args.runs,
        proxy: args.proxy,
        gold: args.gold,
        out_dir: global
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("overopt-rl")),
    })?;
    print!("{}", decoding::markdown_rl(&report));
    println!(
        "
report {} / {}, chart {}",
        report.json.display(),
        report.markdown.display(),
        report.png.display()
    );
    Ok(())
}
