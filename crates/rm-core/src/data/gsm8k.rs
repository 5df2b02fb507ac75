//! GSM8K (`{"question", "answer"}`) → question, full solution, gold final answer.
//!
//! The gold answer is the text after the last `####`, with thousands separators removed.
//! Calculator annotations `<<48/2=24>>` are stripped from the solution by default and kept on
//! request ([`Gsm8kOptions::keep_calculator_annotations`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DataError, JsonlReader, Row, locate};

/// One GSM8K problem.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gsm8kProblem {
    pub question: String,
    /// The worked solution, without the final `#### N` line.
    pub solution: String,
    /// The gold answer as written after `####`, commas removed (e.g. "1200", "-3", "0.5").
    pub answer: String,
    /// The gold answer as a number.
    pub answer_value: f64,
}

/// Loader options.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gsm8kOptions {
    pub keep_calculator_annotations: bool,
}

/// Removes `<<…>>` calculator annotations.
pub fn strip_calculator_annotations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<<") {
        match rest[start..].find(">>") {
            Some(end) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + end + 2..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// Parses a GSM8K answer field into (solution, answer string, value).
pub fn parse_answer(answer: &str) -> Result<(String, String, f64), String> {
    let Some(idx) = answer.rfind("####") else {
        return Err("no \"#### N\" final-answer line".into());
    };
    let gold: String = answer[idx + 4..]
        .trim()
        .chars()
        .filter(|&c| c != ',')
        .collect();
    let value: f64 = gold
        .parse()
        .map_err(|_| format!("the final answer {gold:?} is not a number"))?;
    Ok((answer[..idx].trim_end().to_string(), gold, value))
}

/// Loads `train` or `test` from the data dir, verifying its sha256.
pub fn load(
    data_dir: &Path,
    split: &str,
    options: Gsm8kOptions,
) -> Result<Vec<Gsm8kProblem>, DataError> {
    let path = locate(data_dir, "gsm8k", split)?;
    load_file(&path, options)
}

/// Loads any file in the GSM8K format (no checksum).
pub fn load_file(path: &Path, options: Gsm8kOptions) -> Result<Vec<Gsm8kProblem>, DataError> {
    JsonlReader::open(path)?
        .map(|item| {
            let (loc, value) = item?;
            let row = Row::new(&loc, &value);
            let question = row.str("question")?.to_string();
            let (solution, answer, answer_value) =
                parse_answer(row.str("answer")?).map_err(|m| loc.field("answer", m))?;
            let solution = if options.keep_calculator_annotations {
                solution
            } else {
                strip_calculator_annotations(&solution)
            };
            Ok(Gsm8kProblem {
                question,
                solution,
                answer,
                answer_value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_annotations() {
        let (sol, gold, v) = parse_answer(
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nSo 48+24 = <<48+24=72>>72.\n#### 1,072",
        )
        .unwrap();
        assert_eq!(gold, "1072");
        assert_eq!(v, 1072.0);
        assert_eq!(
            strip_calculator_annotations(&sol),
            "Natalia sold 48/2 = 24 clips in May.\nSo 48+24 = 72."
        );
        assert!(sol.contains("<<48/2=24>>"));
        assert!(parse_answer("no answer").is_err());
        assert!(parse_answer("#### twelve").is_err());
        assert_eq!(parse_answer("#### -3.5").unwrap().2, -3.5);
    }
}
