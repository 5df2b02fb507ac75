//! Rated (prompt, response) rows: one number per named attribute.
//!
//! Two layouts are read, row by row:
//! - HelpSteer2's: the attributes as top-level fields,
//!   `{"prompt": "...", "response": "...", "helpfulness": 3, "verbosity": 1, ...}`;
//! - nested: `{"prompt": "...", "response": "...", "scores": {"helpfulness": 3, ...}}`.
//!
//! A row with a `scores` object is read from it (top-level numbers are then ignored). `prompt`
//! is a string or a list of `{role, content}` turns. Every error names the file, the line and
//! the field (`scores.helpfulness` or `helpfulness`).

use std::path::Path;

use rm_core::data::generic::parse_prompt;
use rm_core::data::{DataError, JsonlReader, Row};
use rm_core::types::Prompt;
use serde_json::Value;

/// One rated response.
#[derive(Clone, Debug, PartialEq)]
pub struct RatedExample {
    pub prompt: Prompt,
    pub response: String,
    /// One rating per requested attribute, in the requested order.
    pub scores: Vec<f32>,
}

/// Parses one row for `attributes` (module docs).
pub fn parse_rated(row: &Row, attributes: &[String]) -> Result<RatedExample, DataError> {
    let prompt = parse_prompt(row)?;
    let response = row.str("response")?.to_string();
    let nested = match row.get("scores") {
        None => None,
        Some(Value::Object(map)) => Some(map),
        Some(_) => {
            return Err(row
                .loc
                .field("scores", "expected an object {attribute: number}"));
        }
    };
    let scores = attributes
        .iter()
        .map(|a| {
            let (field, value) = match nested {
                Some(map) => (format!("scores.{a}"), map.get(a).filter(|v| !v.is_null())),
                None => (a.clone(), row.get(a)),
            };
            let Some(value) = value else {
                return Err(row.loc.field(
                    &field,
                    format!(
                        "missing (every row needs a rating for each of the attributes {attributes:?})"
                    ),
                ));
            };
            let x = value
                .as_f64()
                .ok_or_else(|| row.loc.field(&field, format!("expected a number, got {value}")))?;
            if !x.is_finite() {
                return Err(row.loc.field(&field, "not a finite number"));
            }
            Ok(x as f32)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RatedExample {
        prompt,
        response,
        scores,
    })
}

/// Loads a rated JSONL file (module docs); an empty file is an error.
pub fn load_rated(path: &Path, attributes: &[String]) -> Result<Vec<RatedExample>, DataError> {
    if attributes.is_empty() {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: "no attributes requested".into(),
        });
    }
    let rows: Vec<RatedExample> = JsonlReader::open(path)?
        .map(|item| {
            let (loc, value) = item?;
            parse_rated(&Row::new(&loc, &value), attributes)
        })
        .collect::<Result<_, _>>()?;
    if rows.is_empty() {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: "no rows".into(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rm-multiobj-rated-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn attrs() -> Vec<String> {
        vec!["helpfulness".into(), "verbosity".into()]
    }

    #[test]
    fn both_layouts_are_read() {
        let path = write(
            "ok.jsonl",
            concat!(
                r#"{"prompt": "hi", "response": "hello", "helpfulness": 3, "verbosity": 1}"#,
                "\n\n",
                r#"{"prompt": [{"role": "user", "content": "hi"}], "response": "yo", "scores": {"verbosity": 0.5, "helpfulness": 4}}"#,
                "\n"
            ),
        );
        let rows = load_rated(&path, &attrs()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].scores, vec![3.0, 1.0]);
        assert_eq!(rows[1].scores, vec![4.0, 0.5]);
        assert_eq!(rows[1].response, "yo");
    }

    #[test]
    fn bad_rows_name_file_line_and_field() {
        let path = write(
            "missing.jsonl",
            concat!(
                r#"{"prompt": "a", "response": "b", "helpfulness": 3, "verbosity": 1}"#,
                "\n",
                r#"{"prompt": "a", "response": "b", "helpfulness": 3}"#,
                "\n"
            ),
        );
        let err = load_rated(&path, &attrs()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}:2: field \"verbosity\": missing",
                path.display()
            )),
            "{err}"
        );
        let path = write(
            "nonnumeric.jsonl",
            r#"{"prompt": "a", "response": "b", "scores": {"helpfulness": "high", "verbosity": 1}}"#,
        );
        let err = load_rated(&path, &attrs()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}:1: field \"scores.helpfulness\": expected a number, got \"high\"",
                path.display()
            )
        );
        let path = write(
            "noresp.jsonl",
            r#"{"prompt": "a", "helpfulness": 1, "verbosity": 1}"#,
        );
        let err = load_rated(&path, &attrs()).unwrap_err().to_string();
        assert!(err.contains(":1: field \"response\": missing"), "{err}");
        let path = write("empty.jsonl", "\n");
        assert!(
            load_rated(&path, &attrs())
                .unwrap_err()
                .to_string()
                .contains("no rows")
        );
    }
}
