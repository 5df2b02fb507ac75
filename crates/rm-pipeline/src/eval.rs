//! `eval-rm` as a library call: a RewardBench-style report (v1, v2 or plain pairs) of a trained
//! reward model on a file or on HH-RLHF.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bench_harness::{RewardModelScorer, ScoreTransform, evaluate_v1, evaluate_v2};
use rm_core::burn::tensor::Device;
use rm_core::data::hh_rlhf;
use rm_core::models::reward::RewardModelBundle;

use crate::ensemble::{
    Aggregation, ENSEMBLE_FILE, Ensemble, EnsembleScorer, evaluate_ensemble, is_ensemble_dir,
};
use crate::reports::{refuse_output_over_input, report_paths, write_report_pair};

/// Input layouts `eval-rm` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalFormat {
    /// reward-bench v1: {prompt, chosen, rejected, subset}.
    Rewardbench,
    /// reward-bench 2: {prompt, chosen: [..], rejected: [..], subset}.
    Rewardbench2,
    /// Preference pairs {prompt, chosen, rejected}; the subset is the file name.
    Pairs,
}

/// What `eval-rm` reads.
#[derive(Clone, Debug, PartialEq)]
pub enum EvalInput {
    /// HH-RLHF harmless-base from the data dir.
    HhRlhf(hh_rlhf::Split),
    /// A JSONL file (layout given or detected).
    File(PathBuf),
}

impl std::str::FromStr for EvalInput {
    type Err = anyhow::Error;
    /// `hh-rlhf:train`, `hh-rlhf:dev`, or a path.
    fn from_str(s: &str) -> Result<Self> {
        match s.strip_prefix("hh-rlhf:") {
            Some("train") => Ok(EvalInput::HhRlhf(hh_rlhf::Split::Train)),
            Some("dev") => Ok(EvalInput::HhRlhf(hh_rlhf::Split::Dev)),
            Some(other) => bail!("--input hh-rlhf:{other}: the splits are train and dev"),
            None if s.is_empty() => bail!("--input is empty: give a JSONL file or hh-rlhf:dev"),
            None => Ok(EvalInput::File(PathBuf::from(s))),
        }
    }
}

/// An `eval-rm` run.
pub struct EvalRequest {
    /// A reward-model folder.
    pub rm: PathBuf,
    pub input: EvalInput,
    /// The layout of a file input (`None`: detected).
    pub format: Option<EvalFormat>,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Score with the stored normalization.
    pub normalized: bool,
    /// Where the report goes (`x.json` and `x.md`).
    pub out: PathBuf,
    pub data_dir: PathBuf,
    pub device: Device,
    /// For an ensemble folder: the aggregation reported first (default: `ensemble.json`'s);
    /// the other standard rules are reported beside it.
    pub aggregation: Option<Aggregation>,
    /// Add the robustness probes (length bias, calibration, consistency under edits, contrast
    /// instructions) for the model, or each member and aggregation of an ensemble.
    pub probes: bool,
}

/// What `eval-rm` produced.
pub struct EvalOutcome {
    pub markdown: String,
    pub rows: usize,
    pub seconds: f64,
    /// Rows skipped as malformed (each reported to `on_skip`).
    pub skipped: usize,
    pub json_path: PathBuf,
    pub md_path: PathBuf,
}

/// Detects the layout of a JSONL file from its first non-blank row.
pub fn detect_format(path: &Path) -> Result<EvalFormat> {
    let mut reader = rm_core::data::JsonlReader::open(path)?;
    let (_, row) = reader
        .next()
        .with_context(|| format!("{}: no rows", path.display()))??;
    Ok(if row["chosen"].is_array() {
        EvalFormat::Rewardbench2
    } else if row.get("subset").is_some() {
        EvalFormat::Rewardbench
    } else {
        EvalFormat::Pairs
    })
}

/// Scores the input, writes the report pair, returns it. `on_skip` hears of every malformed row;
/// `progress` of the scoring.
pub fn evaluate_reward_model(
    request: &EvalRequest,
    on_skip: &mut dyn FnMut(&rm_core::data::DataError),
    progress: &mut dyn FnMut(bench_harness::Progress),
) -> Result<EvalOutcome> {
    if request.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let target = ReportTarget {
        input: request.input.clone(),
        format: request.format,
        out: request.out.clone(),
        data_dir: request.data_dir.clone(),
    };
    target.check_paths()?;
    let is_ensemble = is_ensemble_dir(&request.rm);
    if request.aggregation.is_some() && !is_ensemble {
        bail!(
            "--aggregation: {} is a single reward model (no {ENSEMBLE_FILE}); aggregations apply to ensemble folders",
            request.rm.display()
        );
    }
    if is_ensemble || request.probes {
        return evaluate_members(request, &target, on_skip, progress);
    }
    let bundle = RewardModelBundle::load(&request.rm, &request.device)?;
    let mut scorer =
        RewardModelScorer::new(bundle, request.batch_size, request.rm.display().to_string());
    if request.normalized {
        scorer.transform = ScoreTransform::Normalized;
    }
    evaluate_scorer(&target, &mut scorer, on_skip, progress)
}

/// `eval-rm` on an ensemble folder (each member and each aggregation), or with `--probes` on
/// one model (as a one-member ensemble, no aggregations). Pairs inputs (HH-RLHF, v1, pairs)
/// get [`evaluate_ensemble`]'s report; a v2 file the aggregate's v2 report (no probes).
fn evaluate_members(
    request: &EvalRequest,
    target: &ReportTarget,
    on_skip: &mut dyn FnMut(&rm_core::data::DataError),
    progress: &mut dyn FnMut(bench_harness::Progress),
) -> Result<EvalOutcome> {
    let (json_path, md_path) = report_paths(&target.out)?;
    let (ensemble, aggregations) = if is_ensemble_dir(&request.rm) {
        let ensemble = Ensemble::load(&request.rm, &request.device)?;
        let first = request
            .aggregation
            .clone()
            .unwrap_or_else(|| ensemble.aggregation.clone());
        let mut all = vec![first.clone()];
        all.extend(
            Aggregation::report_set(&first)
                .into_iter()
                .filter(|a| *a != first),
        );
        (ensemble, all)
    } else {
        let bundle = RewardModelBundle::load(&request.rm, &request.device)?;
        (
            Ensemble::single(&request.rm, bundle, request.normalized)?,
            Vec::new(),
        )
    };
    let start = Instant::now();
    let mut skipped = 0usize;
    let rows = match &target.input {
        EvalInput::HhRlhf(split) => bench_harness::data::load_hh_rlhf(&target.data_dir, *split)?,
        EvalInput::File(path) => {
            let format = match target.format {
                Some(f) => f,
                None => detect_format(path)?,
            };
            let loaded = match format {
                EvalFormat::Pairs => bench_harness::data::read_pairs_lenient(path)?,
                EvalFormat::Rewardbench => bench_harness::data::read_v1_lenient(path)?,
                EvalFormat::Rewardbench2 => {
                    if request.probes {
                        bail!(
                            "--probes: {} is a reward-bench 2 file; the probes need pairs (hh-rlhf, rewardbench v1 or pairs)",
                            path.display()
                        );
                    }
                    let aggregation = aggregations.first().cloned();
                    let mut scorer = EnsembleScorer::new(ensemble, aggregation, request.batch_size);
                    return evaluate_scorer(target, &mut scorer, on_skip, progress);
                }
            };
            for e in &loaded.errors {
                on_skip(e);
            }
            skipped = loaded.errors.len();
            if loaded.rows.is_empty() {
                bail!("{}: no valid rows", path.display());
            }
            loaded.rows
        }
    };
    let evaluation = evaluate_ensemble(
        &ensemble,
        &rows,
        &aggregations,
        request.batch_size,
        request.probes,
    )?;
    let mut markdown = evaluation.to_markdown();
    if request.probes {
        for r in evaluation.members.iter().chain(&evaluation.aggregations) {
            if let Some(c) = &r.calibration {
                markdown += &format!("\n## Reliability: {}\n\n{}", r.name, c.to_markdown());
            }
        }
    }
    let json = serde_json::to_string_pretty(&evaluation)?;
    write_report_pair(&json_path, &json, &markdown)?;
    Ok(EvalOutcome {
        markdown,
        rows: rows.len(),
        seconds: start.elapsed().as_secs_f64(),
        skipped,
        json_path,
        md_path,
    })
}

/// What a RewardBench-style report is made of and where it goes, whatever scores it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportTarget {
    pub input: EvalInput,
    /// The layout of a file input (`None`: detected).
    pub format: Option<EvalFormat>,
    /// Where the report goes (`x.json` and `x.md`).
    pub out: PathBuf,
    pub data_dir: PathBuf,
}

impl ReportTarget {
    /// Refuses report paths that would overwrite the input (call before loading a model).
    pub fn check_paths(&self) -> Result<()> {
        let (json_path, md_path) = report_paths(&self.out)?;
        if let EvalInput::File(path) = &self.input {
            refuse_output_over_input(&json_path, path)?;
            refuse_output_over_input(&md_path, path)?;
        }
        Ok(())
    }
}

/// The RewardBench-style report (v1 for HH-RLHF and pair files, v2 for reward-bench 2 files) of
/// any [`bench_harness::Scorer`] on `target`'s input, written to its report pair.
pub fn evaluate_scorer(
    target: &ReportTarget,
    scorer: &mut dyn bench_harness::Scorer,
    on_skip: &mut dyn FnMut(&rm_core::data::DataError),
    progress: &mut dyn FnMut(bench_harness::Progress),
) -> Result<EvalOutcome> {
    let (json_path, md_path) = report_paths(&target.out)?;
    let request = target;
    let start = Instant::now();
    let mut skipped = 0usize;
    let mut skip = |errors: &[rm_core::data::DataError]| {
        for e in errors {
            on_skip(e);
        }
        skipped += errors.len();
    };
    let (markdown, json, rows) = match &request.input {
        EvalInput::HhRlhf(split) => {
            let rows = bench_harness::data::load_hh_rlhf(&request.data_dir, *split)?;
            let report = evaluate_v1(&rows, scorer, 256, progress)?;
            (
                report.to_markdown(),
                serde_json::to_string_pretty(&report)?,
                rows.len(),
            )
        }
        EvalInput::File(path) => {
            let format = match request.format {
                Some(f) => f,
                None => detect_format(path)?,
            };
            match format {
                EvalFormat::Rewardbench | EvalFormat::Pairs => {
                    let loaded = if format == EvalFormat::Pairs {
                        bench_harness::data::read_pairs_lenient(path)?
                    } else {
                        bench_harness::data::read_v1_lenient(path)?
                    };
                    skip(&loaded.errors);
                    if loaded.rows.is_empty() {
                        bail!("{}: no valid rows", path.display());
                    }
                    let report = evaluate_v1(&loaded.rows, scorer, 256, progress)?;
                    (
                        report.to_markdown(),
                        serde_json::to_string_pretty(&report)?,
                        loaded.rows.len(),
                    )
                }
                EvalFormat::Rewardbench2 => {
                    let loaded = bench_harness::data::read_v2_lenient(path)?;
                    skip(&loaded.errors);
                    if loaded.rows.is_empty() {
                        bail!("{}: no valid rows", path.display());
                    }
                    let report = evaluate_v2(&loaded.rows, scorer, 256, progress)?;
                    (
                        report.to_markdown(),
                        serde_json::to_string_pretty(&report)?,
                        loaded.rows.len(),
                    )
                }
            }
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    write_report_pair(&json_path, &json, &markdown)?;
    Ok(EvalOutcome {
        markdown,
        rows,
        seconds,
        skipped,
        json_path,
        md_path,
    })
}
