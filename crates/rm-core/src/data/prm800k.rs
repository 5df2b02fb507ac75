//! PRM800K phase 1 (`{"problem", "answer", "steps": [{"completions": [...]}]}`) → step-labelled
//! solutions along the preferred path, with every rated alternative at each step.
//!
//! At each step the path continues with the completion marked `preferred` (the regrouped file
//! sometimes repeats a completion, so the first preferred one is taken). A final step without any
//! preferred completion ends the path before it; such steps are counted in the report.
//! Alternatives are the step's distinct completions (exact repeats — same text, rating and
//! flags — are kept once).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::{DataError, JsonlReader, Loc, Row, locate};
use crate::types::{LabelledStep, StepAlternative, StepLabel, StepLabelledSolution};

/// What a load saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PrmReport {
    pub problems: usize,
    /// Completions in the file (every `completions[]` entry, repeats included).
    pub completions: usize,
    /// Completions by rating: keys "1", "0", "-1", "null".
    pub ratings: BTreeMap<String, usize>,
    /// Steps with more than one preferred completion (the first was taken).
    pub steps_with_several_preferred: usize,
    /// Final steps with no preferred completion (the path ends before them).
    pub final_steps_without_preferred: usize,
}

fn parse_completion(c: &Value, loc: &Loc, field: &str) -> Result<StepAlternative, DataError> {
    let text = c
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| loc.field(&format!("{field}.text"), "expected a string"))?;
    let label =
        match c.get("rating") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().and_then(StepLabel::from_rating).ok_or_else(|| {
                loc.field(&format!("{field}.rating"), "expected 1, 0, -1 or null")
            })?),
        };
    let flag = |name: &str| -> Result<bool, DataError> {
        match c.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| loc.field(&format!("{field}.{name}"), "expected true or false")),
        }
    };
    Ok(StepAlternative {
        text: text.to_string(),
        label,
        preferred: flag("preferred")?,
        human: flag("human")?,
    })
}

fn rating_key(label: Option<StepLabel>) -> String {
    label.map_or("null".into(), |l| l.rating().to_string())
}

/// Parses one row, updating `report`.
pub fn parse_row(row: &Row, report: &mut PrmReport) -> Result<StepLabelledSolution, DataError> {
    let problem = row.str("problem")?.to_string();
    let answer = match row.get("answer") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(row
                .loc
                .field("answer", "expected a string, a number or null"));
        }
    };
    let steps_json = row.array("steps")?;
    let mut steps = Vec::with_capacity(steps_json.len());
    let mut alternatives = Vec::with_capacity(steps_json.len());
    for (i, step) in steps_json.iter().enumerate() {
        let field = format!("steps[{i}].completions");
        let completions = step
            .get("completions")
            .and_then(Value::as_array)
            .ok_or_else(|| row.loc.field(&field, "expected an array"))?;
        let mut distinct: Vec<StepAlternative> = Vec::new();
        for (j, c) in completions.iter().enumerate() {
            let alt = parse_completion(c, row.loc, &format!("{field}[{j}]"))?;
            report.completions += 1;
            *report.ratings.entry(rating_key(alt.label)).or_default() += 1;
            if !distinct.contains(&alt) {
                distinct.push(alt);
            }
        }
        let preferred: Vec<&StepAlternative> = distinct.iter().filter(|a| a.preferred).collect();
        let n_preferred = completions
            .iter()
            .filter(|c| c.get("preferred").and_then(Value::as_bool) == Some(true))
            .count();
        if n_preferred > 1 {
            report.steps_with_several_preferred += 1;
        }
        match preferred.first() {
            Some(p) => {
                steps.push(LabelledStep {
                    text: p.text.clone(),
                    label: p.label,
                    soft: None,
                });
                alternatives.push(distinct);
            }
            None if i + 1 == steps_json.len() => report.final_steps_without_preferred += 1,
            None => {
                return Err(row.loc.field(
                    &field,
                    "no completion is marked preferred, and later steps follow",
                ));
            }
        }
    }
    report.problems += 1;
    Ok(StepLabelledSolution {
        prompt: problem,
        answer,
        steps,
        alternatives,
    })
}

/// Loads phase-1 train from the data dir, verifying its sha256.
pub fn load(data_dir: &Path) -> Result<(Vec<StepLabelledSolution>, PrmReport), DataError> {
    let path = locate(data_dir, "prm800k", "train")?;
    load_file(&path)
}

/// Loads any file in the compact PRM800K format (no checksum).
pub fn load_file(path: &Path) -> Result<(Vec<StepLabelledSolution>, PrmReport), DataError> {
    let mut report = PrmReport::default();
    let mut out = Vec::new();
    for item in JsonlReader::open(path)? {
        let (loc, value) = item?;
        out.push(parse_row(&Row::new(&loc, &value), &mut report)?);
    }
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_preferred_path_alternatives_and_repeats() {
        let value: Value = serde_json::from_str(
            r#"{"problem": "1+1?", "answer": "2", "steps": [
                {"completions": [{"text": "1+1=2", "rating": 1, "preferred": true, "human": false, "solution": false}]},
                {"completions": [
                    {"text": "So 3", "rating": -1, "preferred": false, "human": false, "solution": false},
                    {"text": "So 2", "rating": 1, "preferred": true, "human": false, "solution": true},
                    {"text": "So 3", "rating": -1, "preferred": false, "human": false, "solution": false},
                    {"text": "So 2", "rating": 1, "preferred": true, "human": false, "solution": true},
                    {"text": "Done", "rating": null, "preferred": false, "human": true, "solution": false}]},
                {"completions": [{"text": "x", "rating": 0, "preferred": false, "human": false, "solution": false}]}
            ]}"#,
        )
        .unwrap();
        let loc = Loc {
            path: Arc::from(Path::new("t.jsonl")),
            line: 1,
        };
        let mut report = PrmReport::default();
        let s = parse_row(&Row::new(&loc, &value), &mut report).unwrap();
        assert_eq!(s.answer.as_deref(), Some("2"));
        assert_eq!(s.steps.len(), 2);
        assert_eq!(s.steps[1].text, "So 2");
        assert_eq!(s.steps[1].label, Some(StepLabel::Good));
        assert_eq!(s.alternatives[1].len(), 3);
        assert_eq!(report.completions, 7);
        assert_eq!(report.ratings["-1"], 2);
        assert_eq!(report.ratings["1"], 3);
        assert_eq!(report.ratings["null"], 1);
        assert_eq!(report.ratings["0"], 1);
        assert_eq!(report.steps_with_several_preferred, 1);
        assert_eq!(report.final_steps_without_preferred, 1);

        let bad: Value = serde_json::from_str(
            r#"{"problem": "p", "answer": null, "steps": [{"completions": [{"text": "a", "rating": 2}]}]}"#,
        )
        .unwrap();
        let err = parse_row(&Row::new(&loc, &bad), &mut PrmReport::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "t.jsonl:1: field \"steps[0].completions[0].rating\": expected 1, 0, -1 or null"
        );
    }
}
