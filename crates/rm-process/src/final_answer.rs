//! Final answers of math completions, checked against a gold answer: the GSM8K verifiable
//! reward (policy-opt), answer-checked MCTS values and Monte-Carlo step labels (decoding,
//! policy-opt) share this one checker.
//!
//! Extraction ([`extract_answer`], as verl's `gsm8k` reward score,
//! `verl/utils/reward_score/gsm8k.py`):
//! - strict: only an explicit final-answer marker counts — `#### N`, `\boxed{N}`, or
//!   "the (final) answer is N" (case-insensitive); when several occur, the last one in the text;
//! - flexible (default): as strict, else the last number anywhere in the completion (verl's
//!   flexible mode).
//!
//! Numbers ([`parse_number`]): thousands separators (`1,234`), a leading `$`, a trailing period,
//! `%`, unit words after the number, Unicode minus `−`, decimals (`5.00` = 5), and fractions
//! `a/b` or `\frac{a}{b}`. Two numbers are equal when `|a − b| ≤ 1e-6·max(1, |b|)`
//! ([`numbers_equal`]).

use std::sync::LazyLock;

use regex::Regex;
use rm_core::data::gsm8k::parse_answer;
use serde::{Deserialize, Serialize};

/// How the final answer is found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerExtraction {
    /// Only `#### N`, `\boxed{N}` or "the answer is N".
    Strict,
    /// The markers, else the last number in the text.
    #[default]
    Flexible,
}

/// `|a − b| ≤ 1e-6·max(1, |b|)`.
pub fn numbers_equal(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

/// A number: `-?$?` digits with optional thousands separators, decimals, or a fraction.
const NUMBER: &str =
    r"[-−]?\s?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?:\.\d+)?)?|[-−]?\.\d+";

static NUMBER_RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(NUMBER).expect("number regex"));
static HASHES_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"####\s*(?:\\\$|\$)?\s*({NUMBER})")).expect("#### regex")
});
static ANSWER_IS_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)the\s+(?:final\s+)?answer\s+is\s*[:=]?\s*(?:\\\(|\\\[|\$)?\s*(?:\\boxed\{{)?\s*(?:\\\$|\$)?\s*({NUMBER})"
    ))
    .expect("answer-is regex")
});
static FRAC_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"([-−]?)\s*\\[dt]?frac\s*\{\s*([-−]?[\d.,]+)\s*\}\s*\{\s*([-−]?[\d.,]+)\s*\}")
        .expect("frac regex")
});

/// The contents of every `\boxed{…}` (balanced braces), with the byte offset of each.
fn boxed_contents(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("\\boxed{") {
        let start = from + i;
        let body = start + "\\boxed{".len();
        let mut depth = 1usize;
        let mut end = None;
        for (j, c) in text[body..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(body + j);
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(e) => {
                out.push((start, &text[body..e]));
                from = e + 1;
            }
            None => break,
        }
    }
    out
}

/// The number inside a `\boxed{…}`: `\frac{a}{b}` first, else the first number.
fn boxed_number(content: &str) -> Option<f64> {
    if let Some(c) = FRAC_RE.captures(content) {
        let sign = if c[1].is_empty() { 1.0 } else { -1.0 };
        let (num, den) = (parse_number(&c[2])?, parse_number(&c[3])?);
        return (den != 0.0).then(|| sign * num / den);
    }
    NUMBER_RE
        .find(content)
        .and_then(|m| parse_number(m.as_str()))
}

/// The final answer of a completion (see the module docs), or `None`.
pub fn extract_answer(completion: &str, extraction: AnswerExtraction) -> Option<f64> {
    // (byte offset, value) of every explicit marker; the last one wins.
    let mut marked: Vec<(usize, Option<f64>)> = Vec::new();
    for c in HASHES_RE.captures_iter(completion) {
        marked.push((c.get(0)?.start(), parse_number(&c[1])));
    }
    for (start, content) in boxed_contents(completion) {
        marked.push((start, boxed_number(content)));
    }
    for c in ANSWER_IS_RE.captures_iter(completion) {
        marked.push((c.get(0)?.start(), parse_number(&c[1])));
    }
    marked.sort_by_key(|&(start, _)| start);
    if let Some(value) = marked.iter().rev().find_map(|&(_, v)| v) {
        return Some(value);
    }
    match extraction {
        AnswerExtraction::Strict => None,
        AnswerExtraction::Flexible => NUMBER_RE
            .find_iter(completion)
            .filter_map(|m| parse_number(m.as_str()))
            .last(),
    }
}

/// Parses a written number: `"1,234"`, `"$5"`, `"5.00"`, `"-3"`, `"−3"`, `"12."`, `"50%"`,
/// `"3/4"`, `"18 dollars"` (the first number, words after it ignored). `None` when there is no
/// number or a fraction divides by zero.
pub fn parse_number(text: &str) -> Option<f64> {
    let m = NUMBER_RE.find(text.trim())?;
    let s: String = m
        .as_str()
        .chars()
        .filter(|c| !matches!(c, ',' | '$' | ' ' | '\t' | '\n'))
        .map(|c| if c == '−' { '-' } else { c })
        .collect();
    let value = match s.split_once('/') {
        Some((num, den)) => {
            let (num, den): (f64, f64) = (num.parse().ok()?, den.parse().ok()?);
            if den == 0.0 {
                return None;
            }
            num / den
        }
        None => s.parse().ok()?,
    };
    value.is_finite().then_some(value)
}

/// A gold answer as a number: a number (`"1,234"`, `"-3"`) or a whole GSM8K answer field with
/// its `#### N` line. The error says why it is not one.
pub fn parse_gold(gold: &str) -> Result<f64, String> {
    if gold.contains("####") {
        return parse_answer(gold).map(|(_, _, value)| value);
    }
    parse_number(gold).ok_or_else(|| format!("gold answer {gold:?} is not a number"))
}

/// Whether `completion`'s final answer ([`extract_answer`]) equals `gold`.
pub fn answer_is_correct(completion: &str, gold: f64, extraction: AnswerExtraction) -> bool {
    extract_answer(completion, extraction).is_some_and(|a| numbers_equal(a, gold))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flex(text: &str) -> Option<f64> {
        extract_answer(text, AnswerExtraction::Flexible)
    }
    fn strict(text: &str) -> Option<f64> {
        extract_answer(text, AnswerExtraction::Strict)
    }

    #[test]
    fn numbers_parse_with_separators_currency_signs_decimals_and_fractions() {
        assert_eq!(parse_number("1,234"), Some(1234.0));
        assert_eq!(parse_number("1,234,567.5"), Some(1_234_567.5));
        assert_eq!(parse_number("$5"), Some(5.0));
        assert_eq!(parse_number("-$5"), Some(-5.0));
        assert_eq!(parse_number("5.00"), Some(5.0));
        assert_eq!(parse_number("-3"), Some(-3.0));
        assert_eq!(parse_number("−3"), Some(-3.0));
        assert_eq!(parse_number("12."), Some(12.0));
        assert_eq!(parse_number("50%"), Some(50.0));
        assert_eq!(parse_number("3/4"), Some(0.75));
        assert_eq!(parse_number("18 dollars"), Some(18.0));
        assert_eq!(parse_number(".5"), Some(0.5));
        assert_eq!(parse_number("1/0"), None);
        assert_eq!(parse_number("none"), None);
        assert_eq!(parse_number(""), None);
    }

    #[test]
    fn smollm2_style_final_answers_are_extracted() {
        // GSM8K format with a thousands separator.
        let a = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 1,234";
        assert_eq!(flex(a), Some(1234.0));
        assert_eq!(strict(a), Some(1234.0));
        // \boxed{} in LaTeX, trailing period after it.
        let b = "First, 3 + 4 = 7. Then 7 + 5 = 12.\n\nSo the total is $\\boxed{12}$.";
        assert_eq!(strict(b), Some(12.0));
        // "The answer is N." with a trailing period and a dollar sign.
        let c = "He pays 2 * 10 = 20 dollars, then gets 5 back. The answer is $15.";
        assert_eq!(strict(c), Some(15.0));
        // Negative numbers.
        let d = "The temperature drops from 4 to -3 degrees.\n#### -3";
        assert_eq!(strict(d), Some(-3.0));
        // Flexible: last number, trailing period.
        let e = "She has 5 apples and buys 3 more, so she has 8.";
        assert_eq!(flex(e), Some(8.0));
        assert_eq!(strict(e), None);
        // The last marker wins; a later plain number does not override a marker.
        let f = "#### 7 is wrong, let me redo. The answer is 9. Check: 9 - 2 = 7";
        assert_eq!(flex(f), Some(9.0));
        // \boxed{\frac{3}{4}} and \boxed{-\frac{1}{2}}.
        assert_eq!(strict("so $\\boxed{\\frac{3}{4}}$"), Some(0.75));
        assert_eq!(strict("so \\boxed{-\\dfrac{1}{2}}"), Some(-0.5));
        // \boxed{\$1,200} and "The final answer is: 42".
        assert_eq!(strict("\\boxed{\\$1,200}"), Some(1200.0));
        assert_eq!(strict("The final answer is: 42"), Some(42.0));
        // No number at all.
        assert_eq!(flex("I don't know."), None);
    }

    #[test]
    fn gold_answers_parse_from_numbers_and_gsm8k_fields_and_are_checked() {
        assert_eq!(parse_gold("1,234"), Ok(1234.0));
        assert_eq!(parse_gold("3 + 4 = <<3+4=7>>7\n#### 7"), Ok(7.0));
        assert!(parse_gold("seven").unwrap_err().contains("not a number"));
        assert!(answer_is_correct(
            "so #### 1,234",
            1234.0,
            AnswerExtraction::Strict
        ));
        assert!(!answer_is_correct(
            "so #### 1,233",
            1234.0,
            AnswerExtraction::Strict
        ));
        assert!(!answer_is_correct("it is 7", 7.0, AnswerExtraction::Strict));
        assert!(answer_is_correct(
            "it is 7",
            7.0,
            AnswerExtraction::Flexible
        ));
    }
}
