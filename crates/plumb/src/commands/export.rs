//! `plumb export`: a reward-model or policy folder out to the Hugging Face ecosystem.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use rm_core::export::{ExportOptions, RewardScale};
use rm_process::export::export;

use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A reward-model folder (`plumb train-rm`), a policy folder (`plumb train-po`) or a process
    /// reward model (`plumb train-prm`: TRL's PRM layout, LlamaForTokenClassification).
    #[arg(long)]
    pub model: PathBuf,
    /// Policies with LoRA adapters: one LlamaForCausalLM with the adapters merged (default: a
    /// PEFT adapter folder with its base in base/).
    #[arg(long)]
    pub merge_lora: bool,
    /// Reward models: fold the stored normalization into the head, so that the export gives
    /// `plumb score --transform normalized` (default: raw rewards, as `plumb score`).
    #[arg(long)]
    pub normalized: bool,
    /// Replace a non-empty --out folder.
    #[arg(long)]
    pub force: bool,
}

/// `plumb export --model DIR --out HF_DIR`: writes the folder, prints what it holds and how to
/// load it.
pub fn run(global: &GlobalArgs, args: ExportArgs) -> Result<()> {
    let Some(out) = &global.out else {
        bail!("plumb export needs --out HF_DIR (the folder to write)");
    };
    let options = ExportOptions {
        merge_lora: args.merge_lora,
        force: args.force,
        rewards: match args.normalized {
            true => RewardScale::Normalized,
            false => RewardScale::Raw,
        },
    };
    let report = export(&args.model, out, &options, &global.device.device()?)?;
    println!(
        "exported {} as {} into {}",
        args.model.display(),
        report.architecture,
        report.out.display()
    );
    for f in &report.files {
        println!("  {}", f.display());
    }
    for hint in &report.load_hints {
        println!(
            "load with {}",
            hint.replace("OUT", &report.out.display().to_string())
        );
    }
    Ok(())
}
