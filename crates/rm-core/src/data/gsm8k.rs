//! GSM8K (`{"question", "answer"}`) → question, full solution, gold final answer.
//!
//! The gold answer is the text after the last `####`, with thousands separators removed.
//! Calculator annotations `<<48/2=24>>` are stripped from the solution by default and kept on
//! request ([`Gsm8kOptions::keep_calculator_annotations`]).

use std::path::Path;

use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::{DataError, JsonlReader, Row, locate};
use crate::types::{PreferencePair, Prompt};

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

/// A correctness pair: the gold solution ending "The answer is N." (chosen) vs the same solution
/// ending in a wrong N + d (rejected), `d` a non-zero integer in [−10, 10] drawn from `rng`.
pub fn answer_pair(problem: &Gsm8kProblem, rng: &mut StdRng) -> PreferencePair {
    let mut d: i64 = 0;
    while d == 0 {
        d = rng.random_range(-10..=10);
    }
    let wrong = problem.answer_value + d as f64;
    let wrong = if wrong.fract() == 0.0 {
        format!("{}", wrong as i64)
    } else {
        format!("{wrong}")
    };
    PreferencePair {
        prompt: Prompt::Text(problem.question.clone()),
        chosen: format!("{}\nThe answer is {}.", problem.solution, problem.answer),
        rejected: format!("{}\nThe answer is {wrong}.", problem.solution),
        margin: None,
        subset: None,
        scores: None,
    }
}

/// A reasoning pair: the gold solution ending "The answer is N." (chosen) vs the bare line "The
/// answer is N." with the same, correct N and no worked steps (rejected).
pub fn reasoning_pair(problem: &Gsm8kProblem) -> PreferencePair {
    let last = format!("The answer is {}.", problem.answer);
    PreferencePair {
        prompt: Prompt::Text(problem.question.clone()),
        chosen: format!("{}\n{last}", problem.solution),
        rejected: last,
        margin: None,
        subset: None,
        scores: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn problem() -> Gsm8kProblem {
        Gsm8kProblem {
            question: "How many?".into(),
            solution: "2 + 3 = 5".into(),
            answer: "5".into(),
            answer_value: 5.0,
        }
    }

    #[test]
    fn answer_pairs_change_only_the_final_number() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let pair = answer_pair(&problem(), &mut rng);
            assert_eq!(pair.chosen, "2 + 3 = 5\nThe answer is 5.");
            let wrong: i64 = pair
                .rejected
                .strip_prefix("2 + 3 = 5\nThe answer is ")
                .and_then(|r| r.strip_suffix('.'))
                .unwrap()
                .parse()
                .unwrap();
            assert!(wrong != 5 && (wrong - 5).abs() <= 10, "{wrong}");
        }
        let half = Gsm8kProblem {
            answer: "0.5".into(),
            answer_value: 0.5,
            ..problem()
        };
        let pair = answer_pair(&half, &mut StdRng::seed_from_u64(0));
        assert!(pair.rejected.ends_with(".5."), "{}", pair.rejected);
    }

    #[test]
    fn reasoning_pairs_drop_the_worked_steps() {
        let pair = reasoning_pair(&problem());
        assert_eq!(pair.chosen, "2 + 3 = 5\nThe answer is 5.");
        assert_eq!(pair.rejected, "The answer is 5.");
        assert_eq!(pair.prompt, Prompt::Text("How many?".into()));
    }

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
