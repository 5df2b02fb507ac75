//! `score` as a library call: rewards of (prompt, response) rows as JSONL records, batched by
//! length; malformed rows are reported with their line and skipped.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use bench_harness::{ScoreItem, ScoreTransform};
use rm_core::burn::tensor::Device;
use rm_core::data::{DataError, JsonlReader, Row, generic};
use rm_core::models::reward::{RewardModelBundle, log_sigmoid_transform};
use rm_core::types::Prompt;
use serde_json::json;

use crate::ensemble::{Aggregation, ENSEMBLE_FILE, Ensemble, is_ensemble_dir};

/// The `--transform` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransformKind {
    Raw,
    Normalized,
    LogSigmoid,
}

/// The transform a `--transform` / `--reference` pair asks for; a reference without the
/// log-sigmoid transform (which would ignore it) and the transform without one are errors.
pub fn score_transform(kind: TransformKind, reference: Option<String>) -> Result<ScoreTransform> {
    match (kind, reference) {
        (TransformKind::LogSigmoid, Some(reference)) if !reference.is_empty() => {
            Ok(ScoreTransform::LogSigmoid { reference })
        }
        (TransformKind::LogSigmoid, _) => {
            bail!("--transform log-sigmoid needs --reference \"a reference response\" (non-empty)")
        }
        (_, Some(_)) => bail!(
            "--reference is only used by --transform log-sigmoid (r' = log σ(r − r_ref)); drop it or add --transform log-sigmoid"
        ),
        (TransformKind::Raw, None) => Ok(ScoreTransform::Raw),
        (TransformKind::Normalized, None) => Ok(ScoreTransform::Normalized),
    }
}

/// A `score` run.
pub struct ScoreRequest {
    pub rm: PathBuf,
    pub input: PathBuf,
    /// Texts per forward pass.
    pub batch_size: usize,
    pub transform: ScoreTransform,
    pub device: Device,
    /// For an ensemble folder: the aggregation (default: `ensemble.json`'s).
    pub aggregation: Option<Aggregation>,
}

/// What `score` did.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreOutcome {
    pub responses: usize,
    pub rows: usize,
    pub skipped: usize,
    pub seconds: f64,
}

/// A `score` row: `{prompt, response}`, `{prompt, responses: [..]}` or `{prompt, chosen, rejected}`.
pub fn parse_score_row(row: &Row) -> Result<(Prompt, Vec<String>), DataError> {
    let prompt = generic::parse_prompt(row)?;
    let responses = if row.get("responses").is_some() {
        let list = row.str_array("responses")?;
        if list.is_empty() {
            return Err(row.loc.field("responses", "empty"));
        }
        list
    } else if row.get("response").is_some() {
        vec![row.str("response")?.to_string()]
    } else if row.get("chosen").is_some() {
        vec![
            row.str("chosen")?.to_string(),
            row.str("rejected")?.to_string(),
        ]
    } else {
        return Err(row.loc.field(
            "response",
            "missing (expected \"response\", \"responses\" or \"chosen\"/\"rejected\")",
        ));
    };
    Ok((prompt, responses))
}

/// The valid rows of `reader` as (line, prompt, responses), and how many were skipped.
#[allow(clippy::type_complexity)]
fn read_score_rows(
    request: &ScoreRequest,
    reader: JsonlReader,
    on_skip: &mut dyn FnMut(&DataError),
) -> Result<(Vec<(usize, Prompt, Vec<String>)>, usize)> {
    let mut rows = Vec::new();
    let mut skipped = 0usize;
    for item in reader {
        let parsed = item.and_then(|(loc, value)| {
            let (prompt, responses) = parse_score_row(&Row::new(&loc, &value))?;
            Ok((loc.line, prompt, responses))
        });
        match parsed {
            Ok(row) => rows.push(row),
            Err(e) => {
                skipped += 1;
                on_skip(&e);
            }
        }
    }
    if rows.is_empty() {
        bail!("{}: no valid rows ({skipped} bad)", request.input.display());
    }
    Ok((rows, skipped))
}

/// [`score_rows`] for an ensemble folder: `{"line", "rewards": [..], "members": [[..], ..]}`,
/// `rewards` aggregated, `members[k]` member k's rewards, all on the members' common scale
/// (each member's stored normalization; see [`rm_ensembles::ensemble`]), first attribute.
fn score_rows_ensemble(
    request: &ScoreRequest,
    reader: JsonlReader,
    sink: &mut dyn Write,
    on_skip: &mut dyn FnMut(&DataError),
) -> Result<ScoreOutcome> {
    if let ScoreTransform::LogSigmoid { .. } = request.transform {
        bail!(
            "--transform log-sigmoid is not available for an ensemble ({}): its rewards are aggregated on the members' normalized scale",
            request.rm.display()
        );
    }
    let ensemble = Ensemble::load(&request.rm, &request.device)?;
    let aggregation = request
        .aggregation
        .clone()
        .unwrap_or_else(|| ensemble.aggregation.clone());
    let (rows, skipped) = read_score_rows(request, reader, on_skip)?;
    let items: Vec<ScoreItem<'_>> = rows
        .iter()
        .flat_map(|(_, prompt, responses)| {
            responses.iter().map(move |r| ScoreItem {
                prompt,
                response: r,
            })
        })
        .collect();
    let start = Instant::now();
    let matrix = ensemble.member_rewards(&items, 0, request.batch_size)?;
    let aggregated = aggregation.apply(&matrix)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut k = 0usize;
    for (line, _, responses) in &rows {
        let range = k..k + responses.len();
        k += responses.len();
        let members: Vec<&[f32]> = (0..matrix.members())
            .map(|m| &matrix.row(m)[range.clone()])
            .collect();
        let record = json!({
            "line": line,
            "rewards": &aggregated[range.clone()],
            "members": members,
            "aggregation": aggregation.label(),
        });
        writeln!(sink, "{record}")?;
    }
    sink.flush()?;
    Ok(ScoreOutcome {
        responses: items.len(),
        rows: rows.len(),
        skipped,
        seconds,
    })
}

/// Scores every valid row of the input and writes one JSON record per row to `sink`
/// (`{"line", "rewards": [..]}` plus `"attributes"` for multi-attribute models).
pub fn score_rows(
    request: &ScoreRequest,
    sink: &mut dyn Write,
    on_skip: &mut dyn FnMut(&DataError),
) -> Result<ScoreOutcome> {
    if request.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let reader = JsonlReader::open(&request.input)?;
    if is_ensemble_dir(&request.rm) {
        return score_rows_ensemble(request, reader, sink, on_skip);
    }
    if request.aggregation.is_some() {
        bail!(
            "--aggregation: {} is a single reward model (no {ENSEMBLE_FILE}); aggregations apply to ensemble folders",
            request.rm.display()
        );
    }
    let bundle = RewardModelBundle::load(&request.rm, &request.device)?;
    if request.transform == ScoreTransform::Normalized {
        // Fails early, naming the folder, when the model stores no normalization.
        bundle.normalize(&vec![0.0; bundle.spec.attributes.len()])?;
    }
    let attributes = bundle.spec.attributes.clone();
    let (rows, skipped) = read_score_rows(request, reader, on_skip)?;
    let mut texts = Vec::new();
    for (_, prompt, responses) in &rows {
        for r in responses {
            texts.push(bundle.text(prompt, r)?);
        }
    }
    let mut references = Vec::new();
    if let ScoreTransform::LogSigmoid { reference } = &request.transform {
        for (_, prompt, _) in &rows {
            references.push(bundle.text(prompt, reference)?);
        }
    }
    let start = Instant::now();
    let all: Vec<&str> = texts
        .iter()
        .chain(&references)
        .map(String::as_str)
        .collect();
    let rewards = bundle.score_texts(&all, request.batch_size)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut k = 0usize;
    for (row_index, (line, _, responses)) in rows.iter().enumerate() {
        let mut out_rewards = Vec::new();
        for _ in responses {
            let raw = &rewards[k];
            k += 1;
            let values: Vec<f32> = match &request.transform {
                ScoreTransform::Normalized => bundle.normalize(raw)?,
                ScoreTransform::LogSigmoid { .. } => {
                    let r_ref = &rewards[texts.len() + row_index];
                    raw.iter()
                        .zip(r_ref)
                        .map(|(&r, &rr)| log_sigmoid_transform(r, rr))
                        .collect()
                }
                ScoreTransform::Raw => raw.clone(),
            };
            out_rewards.push(values);
        }
        let scalar: Vec<f32> = out_rewards.iter().map(|v| v[0]).collect();
        let mut record = json!({"line": line, "rewards": scalar});
        if attributes.len() > 1 {
            record["attributes"] = json!(
                out_rewards
                    .iter()
                    .map(|v| attributes
                        .iter()
                        .cloned()
                        .zip(v.iter().map(|&x| json!(x)))
                        .collect::<serde_json::Map<_, _>>())
                    .collect::<Vec<_>>()
            );
        }
        writeln!(sink, "{record}")?;
    }
    sink.flush()?;
    Ok(ScoreOutcome {
        responses: texts.len(),
        rows: rows.len(),
        skipped,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_needs_the_log_sigmoid_transform_and_vice_versa() {
        assert_eq!(
            score_transform(TransformKind::Raw, None).unwrap(),
            ScoreTransform::Raw
        );
        assert!(score_transform(TransformKind::Raw, Some("x".into())).is_err());
        assert!(score_transform(TransformKind::Normalized, Some("x".into())).is_err());
        assert!(score_transform(TransformKind::LogSigmoid, None).is_err());
        assert!(score_transform(TransformKind::LogSigmoid, Some(String::new())).is_err());
        assert_eq!(
            score_transform(TransformKind::LogSigmoid, Some("ok".into())).unwrap(),
            ScoreTransform::LogSigmoid {
                reference: "ok".into()
            }
        );
    }

    #[test]
    fn score_rows_take_three_shapes_and_bad_rows_name_the_line_and_field() {
        let tmp =
            std::env::temp_dir().join(format!("plumbline-score-rows-{}.jsonl", std::process::id()));
        std::fs::write(
            &tmp,
            "{\"prompt\": \"hi\", \"response\": \"hello\"}\n\
             {\"prompt\": \"hi\", \"responses\": [\"a\", \"b\", \"c\"]}\n\
             \n\
             {\"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}], \"chosen\": \"a\", \"rejected\": \"b\"}\n\
             {\"prompt\": \"hi\", \"responses\": [\"a\", 3]}\n\
             {\"response\": \"x\"}\n\
             {nope\n",
        )
        .unwrap();
        let parsed: Vec<Result<(usize, Vec<String>), String>> = JsonlReader::open(&tmp)
            .unwrap()
            .map(|item| {
                item.and_then(|(loc, value)| {
                    let (_, r) = parse_score_row(&Row::new(&loc, &value))?;
                    Ok((loc.line, r))
                })
                .map_err(|e| e.to_string())
            })
            .collect();
        let name = tmp.display().to_string();
        assert_eq!(parsed[0], Ok((1, vec!["hello".to_string()])));
        assert_eq!(parsed[1].as_ref().unwrap().1.len(), 3);
        assert_eq!(parsed[2], Ok((4, vec!["a".to_string(), "b".to_string()])));
        assert!(
            parsed[3]
                .as_ref()
                .unwrap_err()
                .starts_with(&format!("{name}:5: field \"responses")),
            "{parsed:?}"
        );
        assert!(
            parsed[4]
                .as_ref()
                .unwrap_err()
                .starts_with(&format!("{name}:6: field \"prompt\"")),
            "{parsed:?}"
        );
        assert!(
            parsed[5]
                .as_ref()
                .unwrap_err()
                .starts_with(&format!("{name}:7:")),
            "{parsed:?}"
        );
        std::fs::remove_file(&tmp).unwrap();
    }
}
