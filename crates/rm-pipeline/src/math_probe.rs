//! `plumb probe-math`: the RewardMATH-style one-correct-vs-many probe
//! ([`bench_harness::math_probe`]) of a reward model or an ensemble on GSM8K problems from the
//! data dir: the rows are built, scored, and reported (one-vs-all accuracy, MRR, pairwise
//! accuracy, each beside chance), with the rows themselves written as RewardBench-2 JSONL so
//! any other evaluator can score the same set.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bench_harness::math_probe::{MathProbeScores, math_probe_rows, math_probe_scores};
use bench_harness::{RewardModelScorer, Scorer, evaluate_v2};
use rm_core::burn::tensor::Device;
use rm_core::data::gsm8k::{self, Gsm8kOptions};
use rm_core::models::reward::RewardModelBundle;
use rm_ensembles::{Aggregation, Ensemble, EnsembleScorer, is_ensemble_dir};
use serde::{Deserialize, Serialize};

use crate::reports::write_report_pair;

/// What to probe and how.
#[derive(Clone, Debug)]
pub struct MathProbeRequest {
    /// A reward-model folder or an ensemble folder.
    pub rm: PathBuf,
    pub data_dir: PathBuf,
    /// GSM8K split: `train` or `test`.
    pub split: String,
    /// The first N problems (0 = all).
    pub limit: usize,
    /// Incorrect solutions per problem.
    pub incorrect: usize,
    pub seed: u64,
    pub batch_size: usize,
    pub device: Device,
    /// For an ensemble: the aggregation (default: the ensemble's).
    pub aggregation: Option<Aggregation>,
    /// The report (`.json`, with `.md` beside it); the rows go to `<stem>.rows.jsonl`.
    pub out: PathBuf,
}

/// The probe's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MathProbeReport {
    pub rm: PathBuf,
    pub split: String,
    pub seed: u64,
    pub scores: MathProbeScores,
    pub rows_file: PathBuf,
}

impl MathProbeReport {
    pub fn to_markdown(&self) -> String {
        let s = &self.scores;
        format!(
            "# GSM8K one-correct-vs-many probe: {}\n\n{} {} problems, 1 correct vs {} incorrect solutions each (rule-made calculation errors, seed {}); rows: {}\n\n| score | model | chance |\n|---|---|---|\n| one-vs-all accuracy | {:.4} | {:.4} |\n| mean reciprocal rank | {:.4} | {:.4} |\n| pairwise accuracy | {:.4} | 0.5000 |\n",
            self.rm.display(),
            s.problems,
            self.split,
            s.incorrect_per_problem,
            self.seed,
            self.rows_file.display(),
            s.one_vs_all_accuracy,
            s.chance_one_vs_all,
            s.mean_reciprocal_rank,
            s.chance_mrr,
            s.pairwise_accuracy
        )
    }
}

/// Builds, scores and reports the probe (see the module docs).
pub fn probe_math(request: &MathProbeRequest) -> Result<MathProbeReport> {
    if !matches!(request.split.as_str(), "train" | "test") {
        bail!(
            "--split {}: GSM8K's splits are train and test",
            request.split
        );
    }
    if request.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut problems = gsm8k::load(&request.data_dir, &request.split, Gsm8kOptions::default())?;
    if request.limit > 0 {
        problems.truncate(request.limit);
    }
    let rows = math_probe_rows(&problems, request.incorrect, request.seed)?;
    let rows_file = request.out.with_extension("rows.jsonl");
    let mut text = Vec::new();
    for r in &rows {
        writeln!(text, "{}", serde_json::to_string(r)?)?;
    }
    if let Some(dir) = rows_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    rm_core::checkpoint::write_bytes_atomically(&rows_file, &text)?;

    let mut scorer: Box<dyn Scorer> = if is_ensemble_dir(&request.rm) {
        let ensemble = Ensemble::load(&request.rm, &request.device)?;
        Box::new(EnsembleScorer::new(
            ensemble,
            request.aggregation.clone(),
            request.batch_size,
        ))
    } else {
        if request.aggregation.is_some() {
            bail!(
                "--aggregation: {} is a single reward model; aggregations apply to ensemble folders",
                request.rm.display()
            );
        }
        let bundle = RewardModelBundle::load(&request.rm, &request.device)?;
        Box::new(RewardModelScorer::new(
            bundle,
            request.batch_size,
            request.rm.display().to_string(),
        ))
    };
    eprintln!(
        "scoring {} problems × {} solutions with {}",
        rows.len(),
        request.incorrect + 1,
        request.rm.display()
    );
    let v2 = evaluate_v2(&rows, scorer.as_mut(), request.batch_size, &mut |_| {})
        .context("scoring the probe's solutions")?;
    let scored: Vec<(f32, Vec<f32>)> = v2
        .rows
        .iter()
        .map(|r| (r.chosen[0], r.rejected.clone()))
        .collect();
    let report = MathProbeReport {
        rm: request.rm.clone(),
        split: request.split.clone(),
        seed: request.seed,
        scores: math_probe_scores(&scored)?,
        rows_file,
    };
    write_report_pair(
        &request.out,
        &serde_json::to_string_pretty(&report)?,
        &report.to_markdown(),
    )?;
    Ok(report)
}
