//! `eval-prm`: step metrics (accuracy, AUROC, ProcessBench-style first error) and best-of-N
//! selection by aggregation, as a JSON report with a Markdown sibling.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rm_core::data::{JsonlReader, Row};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::aggregate::Aggregation;
use crate::bon::{BonCandidate, BonProblem, bon_from_alternatives};
use crate::data::{
    LabelPolicy, NeutralAs, StepExample, StepSource, consecutive_examples, examples_of,
};
use crate::metrics::{
    FirstErrorScores, auroc, first_error_scores, gold_first_error, predicted_first_error,
    select_best, weighted_vote,
};
use crate::model::ProcessRewardModel;

/// Step-level metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepsReport {
    pub solutions: usize,
    pub labelled_steps: usize,
    /// Fraction of labelled steps that are correct (the majority-class baseline is
    /// `max(r, 1 − r)`).
    pub positive_rate: f64,
    pub threshold: f32,
    pub step_accuracy: f64,
    /// `None` when one class is missing.
    pub auroc: Option<f64>,
    pub first_error: FirstErrorScores,
}

/// One selection method's best-of-N accuracy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BonRow {
    pub method: String,
    /// Over all problems (for votes: over the problems with answers).
    pub accuracy: f64,
    /// Over the problems with both correct and wrong candidates.
    pub accuracy_mixed: Option<f64>,
}

/// Best-of-N report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BonReport {
    pub problems: usize,
    pub mixed_problems: usize,
    pub mean_candidates: f64,
    pub problems_with_answers: usize,
    pub rows: Vec<BonRow>,
}

/// What `eval-prm` writes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub input: String,
    pub steps: Option<StepsReport>,
    pub bon: Option<BonReport>,
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

impl EvalReport {
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# PRM evaluation\n\nmodel `{}`, input `{}`\n",
            self.model, self.input
        );
        if let Some(r) = &self.steps {
            let fe = &r.first_error;
            s += &format!(
                "\n## Steps\n\n| solutions | labelled steps | positive rate | step accuracy (p ≥ {}) | AUROC | first-error acc. (erroneous / correct) | first-error F1 |\n|---|---|---|---|---|---|---|\n| {} | {} | {:.4} | {:.4} | {} | {} ({}) / {} ({}) | {} |\n",
                r.threshold,
                r.solutions,
                r.labelled_steps,
                r.positive_rate,
                r.step_accuracy,
                fmt(r.auroc),
                fmt(fe.accuracy_erroneous),
                fe.erroneous,
                fmt(fe.accuracy_correct),
                fe.correct,
                fmt(fe.f1)
            );
        }
        if let Some(b) = &self.bon {
            s += &format!(
                "\n## Best-of-N\n\n{} problems ({} with both correct and wrong candidates, {} with answers), {:.2} candidates on average\n\n| method | accuracy | accuracy (mixed problems) |\n|---|---|---|\n",
                b.problems, b.mixed_problems, b.problems_with_answers, b.mean_candidates
            );
            for r in &b.rows {
                s += &format!(
                    "| {} | {:.4} | {} |\n",
                    r.method,
                    r.accuracy,
                    fmt(r.accuracy_mixed)
                );
            }
        }
        s
    }
}

/// Writes `path` (.json) and its .md sibling.
pub fn write_report(path: &Path, report: &EvalReport) -> Result<(PathBuf, PathBuf)> {
    rm_pipeline::reports::write_report_pair(
        path,
        &serde_json::to_string_pretty(report)?,
        &report.to_markdown(),
    )
}

/// Step metrics of `examples` under `prm`.
pub fn evaluate_steps(
    prm: &ProcessRewardModel,
    examples: &[StepExample],
    threshold: f32,
    batch_size: usize,
) -> Result<StepsReport> {
    if examples.is_empty() {
        bail!("no solutions to evaluate");
    }
    let solutions: Vec<(&str, Vec<&str>)> = examples
        .iter()
        .map(|e| {
            (
                e.prompt.as_str(),
                e.steps.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let probs = prm.score_batch(&solutions, batch_size)?;
    let (mut scores, mut labels, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for (e, p) in examples.iter().zip(&probs) {
        for (t, &q) in e.targets.iter().zip(p) {
            if let Some(t) = t {
                scores.push(q);
                labels.push(*t);
            }
        }
        pairs.push((
            gold_first_error(&e.targets),
            predicted_first_error(p, threshold),
        ));
    }
    let n = labels.len();
    if n == 0 {
        bail!("no labelled steps to evaluate");
    }
    let right = scores
        .iter()
        .zip(&labels)
        .filter(|(s, l)| (**s >= threshold) == **l)
        .count();
    Ok(StepsReport {
        solutions: examples.len(),
        labelled_steps: n,
        positive_rate: labels.iter().filter(|&&l| l).count() as f64 / n as f64,
        threshold,
        step_accuracy: right as f64 / n as f64,
        auroc: auroc(&scores, &labels).ok(),
        first_error: first_error_scores(&pairs),
    })
}

/// Best-of-N selection accuracy of the random pick (expected value), majority vote, the PRM
/// with each aggregation, PRM-weighted voting (weights = min-aggregated step probabilities) and
/// the oracle (any candidate correct).
pub fn evaluate_bon(
    prm: &ProcessRewardModel,
    problems: &[BonProblem],
    batch_size: usize,
) -> Result<BonReport> {
    if problems.is_empty() {
        bail!("no best-of-N problems");
    }
    let solutions: Vec<(&str, Vec<&str>)> = problems
        .iter()
        .flat_map(|p| {
            p.candidates.iter().map(|c| {
                (
                    p.prompt.as_str(),
                    c.steps.iter().map(String::as_str).collect(),
                )
            })
        })
        .collect();
    let probs = prm.score_batch(&solutions, batch_size)?;
    let mut methods: Vec<String> = vec!["random".into(), "majority-vote".into()];
    methods.extend(Aggregation::ALL.iter().map(|a| format!("prm-{}", a.name())));
    methods.extend(["prm-weighted-vote (min)".into(), "oracle".into()]);
    // Per method: (sum all, n all, sum mixed, n mixed).
    let mut acc = vec![(0.0, 0usize, 0.0, 0usize); methods.len()];
    let (mut offset, mut mixed, mut with_answers, mut total_candidates) = (0, 0, 0, 0);
    for p in problems {
        let k = p.candidates.len();
        let ps = &probs[offset..offset + k];
        offset += k;
        total_candidates += k;
        let correct: Vec<bool> = p.candidates.iter().map(|c| c.correct).collect();
        let answers: Vec<Option<String>> = p.candidates.iter().map(|c| c.answer.clone()).collect();
        let is_mixed = correct.contains(&true) && correct.contains(&false);
        mixed += usize::from(is_mixed);
        let mut values: Vec<Option<f64>> = vec![
            Some(correct.iter().filter(|&&c| c).count() as f64 / k as f64),
            weighted_vote(&answers, &vec![1.0; k], &correct)?,
        ];
        for a in Aggregation::ALL {
            let s: Vec<f64> = ps.iter().map(|q| a.apply(q)).collect::<Result<_>>()?;
            values.push(select_best(&s, &correct)?);
        }
        let w: Vec<f64> = ps
            .iter()
            .map(|q| Aggregation::Min.apply(q))
            .collect::<Result<_>>()?;
        values.push(weighted_vote(&answers, &w, &correct)?);
        values.push(Some(f64::from(u8::from(correct.contains(&true)))));
        with_answers += usize::from(values[1].is_some());
        for (slot, v) in acc.iter_mut().zip(values) {
            if let Some(v) = v {
                slot.0 += v;
                slot.1 += 1;
                if is_mixed {
                    slot.2 += v;
                    slot.3 += 1;
                }
            }
        }
    }
    Ok(BonReport {
        problems: problems.len(),
        mixed_problems: mixed,
        mean_candidates: total_candidates as f64 / problems.len() as f64,
        problems_with_answers: with_answers,
        rows: methods
            .into_iter()
            .zip(acc)
            .filter(|(_, a)| a.1 > 0)
            .map(|(method, a)| BonRow {
                method,
                accuracy: a.0 / a.1 as f64,
                accuracy_mixed: (a.3 > 0).then(|| a.2 / a.3 as f64),
            })
            .collect(),
    })
}

/// The non-empty array of non-blank step strings at `field` (`what` names its owner in the
/// message).
fn steps_field(row: &Row, value: Option<&Value>, field: &str, what: &str) -> Result<Vec<String>> {
    let steps = value
        .and_then(Value::as_array)
        .ok_or_else(|| row.loc.field(field, "expected an array of strings"))?;
    if steps.is_empty() {
        return Err(row
            .loc
            .field(field, format!("is empty: {what} needs at least one step"))
            .into());
    }
    Ok(steps
        .iter()
        .enumerate()
        .map(|(j, s)| match s.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
            Some(_) => Err(row.loc.field(&format!("{field}[{j}]"), "is an empty step")),
            None => Err(row.loc.field(&format!("{field}[{j}]"), "expected a string")),
        })
        .collect::<Result<_, _>>()?)
}

/// One solution scored by [`score_file`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredSolution {
    /// The row's line in the input file.
    pub line: usize,
    /// Each step's probability of being correct.
    pub step_probs: Vec<f32>,
}

/// `plumb score-prm`: every `{"prompt", "steps": [..]}` row of `path` (other fields ignored)
/// with each step's probability of being correct, in batches of `batch_size` sequences.
pub fn score_file(
    prm: &ProcessRewardModel,
    path: &Path,
    batch_size: usize,
) -> Result<Vec<ScoredSolution>> {
    let mut rows: Vec<(usize, String, Vec<String>)> = Vec::new();
    for item in JsonlReader::open(path)? {
        let (loc, value) = item?;
        let row = Row::new(&loc, &value);
        let prompt = row.str("prompt")?.to_string();
        let steps = steps_field(&row, value.get("steps"), "steps", "a solution")?;
        rows.push((loc.line, prompt, steps));
    }
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    let solutions: Vec<(&str, Vec<&str>)> = rows
        .iter()
        .map(|(_, p, s)| (p.as_str(), s.iter().map(String::as_str).collect()))
        .collect();
    let probs = prm
        .score_batch(&solutions, batch_size)
        .with_context(|| path.display().to_string())?;
    Ok(rows
        .iter()
        .zip(probs)
        .map(|((line, _, _), step_probs)| ScoredSolution {
            line: *line,
            step_probs,
        })
        .collect())
}

/// Parses one `--format bon` row.
pub fn parse_bon_row(row: &Row) -> Result<BonProblem> {
    let prompt = row.str("prompt")?.to_string();
    let cands = row.array("candidates")?;
    if cands.is_empty() {
        return Err(row.loc.field("candidates", "is empty").into());
    }
    let mut candidates = Vec::with_capacity(cands.len());
    for (i, c) in cands.iter().enumerate() {
        let f = |name: &str| format!("candidates[{i}].{name}");
        let steps = steps_field(row, c.get("steps"), &f("steps"), "a candidate")?;
        let correct = c
            .get("correct")
            .and_then(Value::as_bool)
            .ok_or_else(|| row.loc.field(&f("correct"), "expected true or false"))?;
        let answer = match c.get("answer") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                return Err(row
                    .loc
                    .field(&f("answer"), "expected a string, a number or null")
                    .into());
            }
        };
        candidates.push(BonCandidate {
            steps,
            correct,
            answer,
        });
    }
    Ok(BonProblem { prompt, candidates })
}

/// Reads a `--format bon` file.
pub fn load_bon(path: &Path) -> Result<Vec<BonProblem>> {
    let mut out = Vec::new();
    for item in JsonlReader::open(path)? {
        let (loc, value) = item?;
        out.push(parse_bon_row(&Row::new(&loc, &value))?);
    }
    if out.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(out)
}

/// The input layouts of `eval-prm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalFormat {
    /// `{"prompt", "steps", "labels"}` rows.
    Steps,
    /// `{"prompt", "candidates": [{"steps", "correct", "answer"?}]}` rows.
    Bon,
    /// PRM800K phase-1 rows, along the preferred path.
    Prm800k,
}

/// What `eval-prm` is asked.
#[derive(Clone, Debug)]
pub struct EvalRequest {
    pub input: PathBuf,
    pub format: EvalFormat,
    pub threshold: f32,
    pub batch_size: usize,
    /// PRM800K's rating 0 (format prm800k).
    pub neutral: NeutralAs,
    /// Format prm800k: also a best-of-N set of up to this many candidates per problem from the
    /// rated alternatives ([`crate::bon`]); 0 = none.
    pub bon_from_alternatives: usize,
    pub seed: u64,
    /// Only the first N rows (0 = all).
    pub limit: usize,
    /// Formats steps and prm800k: score HRM's coarse units instead of single steps — each
    /// solution's two consecutive-merged copies ([`crate::data::hierarchical_examples`]), a
    /// merged unit labelled by its later step.
    pub merged_steps: bool,
}

/// Evaluates a PRM on a file.
pub fn evaluate_file(
    prm: &ProcessRewardModel,
    model: &str,
    request: &EvalRequest,
) -> Result<EvalReport> {
    let path = &request.input;
    let mut report = EvalReport {
        model: model.to_string(),
        input: path.display().to_string(),
        steps: None,
        bon: None,
    };
    let cut = |n: usize| {
        if request.limit > 0 {
            n.min(request.limit)
        } else {
            n
        }
    };
    match request.format {
        EvalFormat::Bon => {
            let mut problems = load_bon(path)?;
            problems.truncate(cut(problems.len()));
            report.bon = Some(evaluate_bon(prm, &problems, request.batch_size)?);
        }
        EvalFormat::Steps | EvalFormat::Prm800k => {
            let source = if request.format == EvalFormat::Steps {
                StepSource::Jsonl { path: path.clone() }
            } else {
                StepSource::Prm800k {
                    path: Some(path.clone()),
                }
            };
            let mut solutions = source.load(Path::new("."))?;
            solutions.truncate(cut(solutions.len()));
            let policy = LabelPolicy {
                neutral: request.neutral,
            };
            let mut examples: Vec<StepExample> = solutions
                .iter()
                .flat_map(|s| examples_of(s, policy, false))
                .collect();
            if request.merged_steps {
                examples = examples.iter().flat_map(consecutive_examples).collect();
                if examples.is_empty() {
                    bail!(
                        "{}: no solution has a labelled step after another step to merge with",
                        path.display()
                    );
                }
            }
            report.steps = Some(
                evaluate_steps(prm, &examples, request.threshold, request.batch_size)
                    .with_context(|| path.display().to_string())?,
            );
            if request.format == EvalFormat::Prm800k && request.bon_from_alternatives > 0 {
                let problems: Vec<BonProblem> = solutions
                    .iter()
                    .filter_map(|s| {
                        bon_from_alternatives(s, request.bon_from_alternatives, request.seed)
                    })
                    .collect();
                if !problems.is_empty() {
                    report.bon = Some(evaluate_bon(prm, &problems, request.batch_size)?);
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::data::Loc;
    use std::sync::Arc;

    fn err(row: &str) -> String {
        let loc = Loc {
            path: Arc::from(Path::new("bon.jsonl")),
            line: 3,
        };
        let v: Value = serde_json::from_str(row).unwrap();
        parse_bon_row(&Row::new(&loc, &v)).unwrap_err().to_string()
    }

    #[test]
    fn bad_bon_rows_name_file_line_and_field() {
        assert_eq!(
            err(r#"{"prompt": "p", "candidates": [{"steps": [], "correct": true}]}"#),
            "bon.jsonl:3: field \"candidates[0].steps\": is empty: a candidate needs at least one step"
        );
        assert_eq!(
            err(
                r#"{"prompt": "p", "candidates": [{"steps": ["a"], "correct": true}, {"steps": ["a", " "], "correct": true}]}"#
            ),
            "bon.jsonl:3: field \"candidates[1].steps[1]\": is an empty step"
        );
        assert_eq!(
            err(r#"{"prompt": "p", "candidates": [{"steps": ["a"], "correct": 1}]}"#),
            "bon.jsonl:3: field \"candidates[0].correct\": expected true or false"
        );
    }
}
