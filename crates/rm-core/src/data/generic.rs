//! Users' own JSONL data in four shapes:
//! - pairs: `prompt`, `chosen`, `rejected`, optional `margin`, `subset`, `scores` (`[chosen,
//!   rejected]`);
//! - rankings: `prompt`, `responses[]`, and `scores[]` (higher is better) or `ranks[]` (0 best);
//! - unpaired: `prompt`, `completion`, `label` (true desirable / false undesirable);
//! - step-labelled: `prompt`, `steps[]`, `labels[]` (1/0/-1, true/false, or null).
//!
//! `prompt` is a string or a list of `{role, content}` turns.

use std::path::Path;

use serde_json::Value;

use super::{DataError, JsonlReader, Loc, Row};
use crate::types::{
    Conversation, LabelledStep, PreferencePair, Prompt, Ranking, Role, StepLabel,
    StepLabelledSolution, Turn, UnpairedExample,
};

/// The `prompt` field of a row: a string, or a list of `{role, content}` turns.
pub fn parse_prompt(row: &Row) -> Result<Prompt, DataError> {
    match row.require("prompt")? {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(turns) => {
            let turns = turns
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let field = format!("prompt[{i}]");
                    let role = match t.get("role").and_then(Value::as_str) {
                        Some("system") => Role::System,
                        Some("user" | "human") => Role::User,
                        Some("assistant") => Role::Assistant,
                        _ => {
                            return Err(row.loc.field(
                                &format!("{field}.role"),
                                "expected \"system\", \"user\" or \"assistant\"",
                            ));
                        }
                    };
                    let content = t.get("content").and_then(Value::as_str).ok_or_else(|| {
                        row.loc
                            .field(&format!("{field}.content"), "expected a string")
                    })?;
                    Ok(Turn::new(role, content))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Prompt::Conversation(Conversation::new(turns)))
        }
        _ => Err(row.loc.field(
            "prompt",
            "expected a string or a list of {role, content} turns",
        )),
    }
}

fn rows<T>(
    path: &Path,
    mut parse: impl FnMut(&Row) -> Result<T, DataError>,
) -> Result<Vec<T>, DataError> {
    JsonlReader::open(path)?
        .map(|item| {
            let (loc, value) = item?;
            parse(&Row::new(&loc, &value))
        })
        .collect()
}

/// Parses one pair row.
pub fn parse_pair(row: &Row) -> Result<PreferencePair, DataError> {
    let scores = match row.get("scores") {
        None => None,
        Some(_) => {
            let s = row.f32_array("scores")?;
            let [c, r] = s[..] else {
                return Err(row.loc.field(
                    "scores",
                    format!("expected [chosen, rejected], got {} numbers", s.len()),
                ));
            };
            Some([c, r])
        }
    };
    Ok(PreferencePair {
        prompt: parse_prompt(row)?,
        chosen: row.str("chosen")?.to_string(),
        rejected: row.str("rejected")?.to_string(),
        margin: row.opt_f32("margin")?,
        subset: row.opt_str("subset")?.map(str::to_string),
        scores,
    })
}

/// Parses one ranking row; `ranks` are derived from `scores` when only scores are given (ties
/// share a rank).
pub fn parse_ranking(row: &Row) -> Result<Ranking, DataError> {
    let responses = row.str_array("responses")?;
    if responses.len() < 2 {
        return Err(row
            .loc
            .field("responses", "a ranking needs at least two responses"));
    }
    let check_len = |field: &str, n: usize| {
        if n == responses.len() {
            Ok(())
        } else {
            Err(row.loc.field(
                field,
                format!("has {n} entries but responses has {}", responses.len()),
            ))
        }
    };
    let scores = match row.get("scores") {
        Some(_) => {
            let s = row.f32_array("scores")?;
            check_len("scores", s.len())?;
            Some(s)
        }
        None => None,
    };
    let ranks = match (row.get("ranks"), &scores) {
        (Some(_), _) => {
            let r = row.f32_array("ranks")?;
            check_len("ranks", r.len())?;
            r.iter()
                .map(|&x| {
                    if x >= 0.0 && x.fract() == 0.0 {
                        Ok(x as u32)
                    } else {
                        Err(row.loc.field("ranks", "expected non-negative integers"))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        (None, Some(s)) => s
            .iter()
            .map(|&x| s.iter().filter(|&&y| y > x).count() as u32)
            .collect(),
        (None, None) => {
            return Err(row
                .loc
                .field("scores", "a ranking needs scores[] or ranks[]"));
        }
    };
    Ok(Ranking {
        prompt: parse_prompt(row)?,
        responses,
        ranks,
        scores,
    })
}

/// Parses one unpaired row.
pub fn parse_unpaired(row: &Row) -> Result<UnpairedExample, DataError> {
    let desirable = row
        .require("label")?
        .as_bool()
        .ok_or_else(|| row.loc.field("label", "expected true or false"))?;
    Ok(UnpairedExample {
        prompt: parse_prompt(row)?,
        completion: row.str("completion")?.to_string(),
        desirable,
    })
}

fn step_label(v: &Value, loc: &Loc, field: &str) -> Result<Option<StepLabel>, DataError> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(true) => Ok(Some(StepLabel::Good)),
        Value::Bool(false) => Ok(Some(StepLabel::Bad)),
        Value::Number(n) => n
            .as_i64()
            .and_then(StepLabel::from_rating)
            .map(Some)
            .ok_or_else(|| loc.field(field, "expected 1, 0, -1, true, false or null")),
        _ => Err(loc.field(field, "expected 1, 0, -1, true, false or null")),
    }
}

/// The optional `soft_labels` of a step-labelled row: one number in [0, 1] (or null) per step.
fn soft_labels(row: &Row, n: usize) -> Result<Option<Vec<Option<f32>>>, DataError> {
    if row.get("soft_labels").is_none_or(Value::is_null) {
        return Ok(None);
    }
    let values = row.array("soft_labels")?;
    if values.len() != n {
        return Err(row.loc.field(
            "soft_labels",
            format!("has {} entries but steps has {n}", values.len()),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Null => Ok(None),
            Value::Number(x) => match x.as_f64() {
                Some(x) if (0.0..=1.0).contains(&x) => Ok(Some(x as f32)),
                _ => Err(row.loc.field(
                    &format!("soft_labels[{i}]"),
                    "expected a number in [0, 1] or null",
                )),
            },
            _ => Err(row.loc.field(
                &format!("soft_labels[{i}]"),
                "expected a number in [0, 1] or null",
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Parses one step-labelled row (`soft_labels`, when present, gives each step's soft label).
pub fn parse_steps(row: &Row) -> Result<StepLabelledSolution, DataError> {
    let steps = row.str_array("steps")?;
    if steps.is_empty() {
        return Err(row
            .loc
            .field("steps", "is empty: a solution needs at least one step"));
    }
    if let Some(i) = steps.iter().position(|s| s.trim().is_empty()) {
        return Err(row.loc.field(&format!("steps[{i}]"), "is an empty step"));
    }
    let labels = row.array("labels")?;
    if labels.len() != steps.len() {
        return Err(row.loc.field(
            "labels",
            format!("has {} entries but steps has {}", labels.len(), steps.len()),
        ));
    }
    let prompt = match parse_prompt(row)? {
        Prompt::Text(t) => t,
        Prompt::Conversation(_) => {
            return Err(row
                .loc
                .field("prompt", "step-labelled rows take a string prompt"));
        }
    };
    let soft = soft_labels(row, steps.len())?;
    let steps = steps
        .into_iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (text, l))| {
            Ok(LabelledStep {
                text,
                label: step_label(l, row.loc, &format!("labels[{i}]"))?,
                soft: soft.as_ref().and_then(|s| s[i]),
            })
        })
        .collect::<Result<Vec<_>, DataError>>()?;
    Ok(StepLabelledSolution {
        prompt,
        answer: None,
        steps,
        alternatives: Vec::new(),
    })
}

/// Loads a pairs file.
pub fn load_pairs(path: &Path) -> Result<Vec<PreferencePair>, DataError> {
    rows(path, parse_pair)
}

/// Loads a rankings file.
pub fn load_rankings(path: &Path) -> Result<Vec<Ranking>, DataError> {
    rows(path, parse_ranking)
}

/// Loads an unpaired file.
pub fn load_unpaired(path: &Path) -> Result<Vec<UnpairedExample>, DataError> {
    rows(path, parse_unpaired)
}

/// Loads a step-labelled file.
pub fn load_step_labelled(path: &Path) -> Result<Vec<StepLabelledSolution>, DataError> {
    rows(path, parse_steps)
}

/// The shape of a generic JSONL file, told from its first row's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Pairs,
    Rankings,
    Unpaired,
    StepLabelled,
}

/// Guesses the shape of `path` from its first row.
pub fn detect_shape(path: &Path) -> Result<Shape, DataError> {
    let Some(first) = JsonlReader::open(path)?.next() else {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: "the file has no rows".into(),
        });
    };
    let (loc, value) = first?;
    let has = |k: &str| value.get(k).is_some();
    if has("chosen") && has("rejected") {
        Ok(Shape::Pairs)
    } else if has("responses") {
        Ok(Shape::Rankings)
    } else if has("completion") && has("label") {
        Ok(Shape::Unpaired)
    } else if has("steps") && has("labels") {
        Ok(Shape::StepLabelled)
    } else {
        Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "line {}: cannot tell the shape: expected chosen/rejected (pairs), responses (rankings), completion/label (unpaired) or steps/labels (step-labelled)",
                loc.line
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::fixture;
    use super::*;

    #[test]
    fn pairs() {
        let pairs = load_pairs(&fixture("pairs.jsonl")).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].prompt, Prompt::Text("Say hi".into()));
        assert_eq!(pairs[0].margin, Some(1.5));
        assert_eq!(pairs[0].subset.as_deref(), Some("chat"));
        assert_eq!(
            pairs[1].prompt,
            Prompt::Conversation(Conversation::new(vec![Turn::new(Role::User, "2+2?")]))
        );
        assert_eq!(pairs[1].scores, Some([9.0, 1.0]));
        assert_eq!(detect_shape(&fixture("pairs.jsonl")).unwrap(), Shape::Pairs);
    }

    #[test]
    fn rankings() {
        let r = load_rankings(&fixture("rankings.jsonl")).unwrap();
        assert_eq!(r[0].ranks, [2, 0, 1]);
        assert_eq!(r[1].ranks, [1, 0]);
        assert_eq!(r[1].scores, None);
        let err = load_rankings(&fixture("rankings-bad-length.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with(
                "rankings-bad-length.jsonl:1: field \"scores\": has 2 entries but responses has 3"
            ),
            "{err}"
        );
    }

    #[test]
    fn unpaired() {
        let u = load_unpaired(&fixture("unpaired.jsonl")).unwrap();
        assert_eq!((u[0].desirable, u[1].desirable), (true, false));
        let err = load_unpaired(&fixture("unpaired-bad-label.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("unpaired-bad-label.jsonl:1: field \"label\": expected true or false"),
            "{err}"
        );
    }

    #[test]
    fn step_labelled() {
        let s = load_step_labelled(&fixture("steps.jsonl")).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].steps[0].label, Some(StepLabel::Bad));
        assert_eq!(s[1].steps[1].label, None);
        assert_eq!(s[2].steps[0].label, Some(StepLabel::Good));
        assert!(s.iter().flat_map(|s| &s.steps).all(|st| st.soft.is_none()));
        assert_eq!(
            detect_shape(&fixture("steps.jsonl")).unwrap(),
            Shape::StepLabelled
        );
    }

    #[test]
    fn soft_labels_are_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("rm-core-soft-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("soft.jsonl");
        let row = |soft: &str| {
            format!(
                r#"{{"prompt": "q", "steps": ["a", "b"], "labels": [true, false], "soft_labels": {soft}}}"#
            )
        };
        std::fs::write(&path, [row("[0.75, null]"), row("null")].join("\n")).unwrap();
        let s = load_step_labelled(&path).unwrap();
        assert_eq!(s[0].steps[0].soft, Some(0.75));
        assert_eq!(s[0].steps[1].soft, None);
        assert_eq!(s[1].steps[0].soft, None);
        for (bad, says) in [
            ("[0.5]", "has 1 entries but steps has 2"),
            ("[0.5, 1.5]", "soft_labels[1]"),
            ("[\"x\", 0.5]", "soft_labels[0]"),
        ] {
            std::fs::write(&path, row(bad)).unwrap();
            let err = load_step_labelled(&path).unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains("soft.jsonl:1"),
                "{bad}: {err}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
