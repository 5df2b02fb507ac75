//! Answer accuracy of a decoding run whose prompts carry gold answers (`--input gsm8k:test`, or
//! an `"answer"` field in the prompt rows): each chosen response's final answer checked against
//! the gold one, and the run's accuracy with its standard error.
//!
//! Answers are found as `rm_process::final_answer` finds them (verl's GSM8K rule): the last
//! `#### N`, `\boxed{N}` or "the answer is N"; the flexible check falls back to the last number
//! of the response, the strict one does not.

use rm_process::final_answer::{AnswerExtraction, extract_answer, numbers_equal};
use serde::Serialize;

use crate::strategy::{Decoded, Strategy};

/// One response checked against its prompt's gold answer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AnswerCheck {
    pub gold: f64,
    /// The response's final answer by the flexible rule, if it has a number at all.
    pub answer: Option<f64>,
    /// `answer` equals `gold`.
    pub correct: bool,
    /// The answer marked explicitly (`#### N`, `\boxed{}`, "the answer is") equals `gold`.
    pub correct_strict: bool,
}

impl AnswerCheck {
    /// Checks `text` against `gold`.
    pub fn of(text: &str, gold: f64) -> Self {
        let answer = extract_answer(text, AnswerExtraction::Flexible);
        let strict = extract_answer(text, AnswerExtraction::Strict);
        Self {
            gold,
            answer,
            correct: answer.is_some_and(|a| numbers_equal(a, gold)),
            correct_strict: strict.is_some_and(|a| numbers_equal(a, gold)),
        }
    }
}

/// The answer accuracy of a run, over the prompts that have a gold answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnswerAccuracy {
    /// Prompts with a gold answer.
    pub prompts: usize,
    /// Chosen responses whose final answer (flexible rule) equals the gold one.
    pub correct: usize,
    /// `correct / prompts`.
    pub accuracy: f64,
    /// `sqrt(p(1 − p)/n)`.
    pub standard_error: f64,
    /// The same with the strict rule (an explicitly marked answer only).
    pub correct_strict: usize,
    pub accuracy_strict: f64,
    /// The strategy's choice read the gold answers (MCTS valued by answer-checked rollouts):
    /// the accuracy is an oracle's, not the method's.
    pub oracle: bool,
}

/// The accuracy of `rows` (their [`Decoded::answer_check`]s) under `strategy`; `None` when no
/// row has a gold answer.
pub fn answer_accuracy(rows: &[Decoded], strategy: &Strategy) -> Option<AnswerAccuracy> {
    let checks: Vec<&AnswerCheck> = rows
        .iter()
        .filter_map(|r| r.answer_check.as_ref())
        .collect();
    if checks.is_empty() {
        return None;
    }
    let n = checks.len();
    let correct = checks.iter().filter(|c| c.correct).count();
    let correct_strict = checks.iter().filter(|c| c.correct_strict).count();
    let p = correct as f64 / n as f64;
    Some(AnswerAccuracy {
        prompts: n,
        correct,
        accuracy: p,
        standard_error: (p * (1.0 - p) / n as f64).sqrt(),
        correct_strict,
        accuracy_strict: correct_strict as f64 / n as f64,
        oracle: strategy.reads_gold(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_flexible_and_strict_answers() {
        let marked = AnswerCheck::of("She earns 9 * 2 = 18 dollars.\n#### 18", 18.0);
        assert_eq!(marked.answer, Some(18.0));
        assert!(marked.correct && marked.correct_strict);
        // Only the last number: right by the flexible rule, not by the strict one.
        let bare = AnswerCheck::of("16 - 3 - 4 = 9 eggs, 9 * 2 = 18", 18.0);
        assert_eq!(bare.answer, Some(18.0));
        assert!(bare.correct && !bare.correct_strict);
        // A marked answer wins over a later bare number.
        let wrong = AnswerCheck::of("The answer is 1,234. (Checked in 2 steps.)", 18.0);
        assert_eq!(wrong.answer, Some(1234.0));
        assert!(!wrong.correct && !wrong.correct_strict);
        let none = AnswerCheck::of("I cannot say.", 18.0);
        assert_eq!(none.answer, None);
        assert!(!none.correct);
    }
}
