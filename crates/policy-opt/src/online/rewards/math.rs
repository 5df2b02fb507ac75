//! GSM8K verifiable reward: the completion's final answer against the gold answer.
//!
//! As verl's `gsm8k` reward (`verl/utils/reward_score/gsm8k.py`, after the GSM8K paper, Cobbe et
//! al. 2021 "Training Verifiers to Solve Math Word Problems"):
//!
//! `r = correct_score` if the extracted answer equals the gold answer,
//! `r = format_score` if an answer was extracted but is wrong,
//! `r = 0` if no answer could be extracted.
//!
//! A completion without any answer gets 0, not an error: the policy produced something, and it
//! is wrong — masking it would take away exactly the signal RL needs. A *sample* without a usable
//! gold answer (no reference, or a reference that is not a number) is an error (masked).
//!
//! Extraction ([`extract_answer`]):
//! - strict: only an explicit final-answer marker counts — `#### N`, `\boxed{N}`, or
//!   "the (final) answer is N" (case-insensitive); when several occur, the last one in the text;
//! - flexible (default): as strict, else the last number anywhere in the completion (verl's
//!   flexible mode).
//!
//! Numbers ([`parse_number`]): thousands separators (`1,234`), a leading `$`, a trailing period,
//! `%`, unit words after the number, Unicode minus `−`, decimals (`5.00` = 5), and fractions
//! `a/b` or `\frac{a}{b}`. Two numbers are equal when `|a − b| ≤ 1e-6·max(1, |b|)`.

use std::sync::LazyLock;

use regex::Regex;
use rm_core::data::gsm8k::parse_answer;
use serde::{Deserialize, Serialize};

use super::{RewardError, RewardFunction, RewardSample, per_sample};

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

/// `kind = "gsm8k"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gsm8kSpec {
    #[serde(default)]
    pub extraction: AnswerExtraction,
    /// The reward of a correct answer (default 1).
    #[serde(default = "super::one")]
    pub correct_score: f64,
    /// The reward of an extracted but wrong answer (default 0; verl's `format_score`).
    #[serde(default)]
    pub format_score: f64,
}

impl Default for Gsm8kSpec {
    fn default() -> Self {
        Self {
            extraction: AnswerExtraction::Flexible,
            correct_score: 1.0,
            format_score: 0.0,
        }
    }
}

/// The GSM8K reward. The gold answer is `references[0]`: a number ("1,234", "-3") or a whole
/// GSM8K answer field with its `#### N` line.
pub struct Gsm8kReward {
    name: String,
    spec: Gsm8kSpec,
}

impl Gsm8kReward {
    pub fn new(name: &str, spec: Gsm8kSpec) -> anyhow::Result<Self> {
        if !(spec.correct_score.is_finite() && spec.format_score.is_finite()) {
            anyhow::bail!("gsm8k: correct_score and format_score must be finite");
        }
        Ok(Self {
            name: name.to_string(),
            spec,
        })
    }

    /// The reward of one completion against a gold answer.
    pub fn score_one(&self, completion: &str, gold: f64) -> f32 {
        match extract_answer(completion, self.spec.extraction) {
            Some(answer) if numbers_equal(answer, gold) => self.spec.correct_score as f32,
            Some(_) => self.spec.format_score as f32,
            None => 0.0,
        }
    }
}

/// The gold answer of a sample.
fn gold_answer(references: &[String]) -> Result<f64, RewardError> {
    let gold = references
        .first()
        .ok_or(RewardError::MissingReference("gsm8k needs the gold answer"))?;
    if gold.contains("####") {
        return parse_answer(gold)
            .map(|(_, _, value)| value)
            .map_err(RewardError::BadReference);
    }
    parse_number(gold)
        .ok_or_else(|| RewardError::BadReference(format!("gold answer {gold:?} is not a number")))
}

impl RewardFunction for Gsm8kReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
        per_sample(samples, |s| {
            let gold = gold_answer(s.references)?;
            Ok(self.score_one(s.completion, gold))
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::types::Prompt;

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
    fn gsm8k_reward_is_one_zero_and_format_score_and_a_missing_gold_is_an_error() {
        let reward = Gsm8kReward::new(
            "gsm8k",
            Gsm8kSpec {
                format_score: 0.1,
                ..Gsm8kSpec::default()
            },
        )
        .unwrap();
        let prompt = Prompt::Text("q".into());
        let gold = vec!["1,234".to_string()];
        let gold_field = vec!["3 + 4 = <<3+4=7>>7\n#### 7".to_string()];
        let none: Vec<String> = vec![];
        let bad = vec!["seven".to_string()];
        let sample = |completion, references| RewardSample {
            prompt: &prompt,
            completion,
            references,
            truncated: false,
        };
        let samples = [
            sample("... so #### 1234", &gold),
            sample("The answer is 1,234.", &gold),
            sample("#### 1,233", &gold),
            sample("no idea", &gold),
            sample("3 + 4 = 7", &gold_field),
            sample("#### 7", &none),
            sample("#### 7", &bad),
        ];
        let r = reward.score_batch(&samples);
        assert_eq!(r[0], Ok(1.0));
        assert_eq!(r[1], Ok(1.0));
        assert_eq!(r[2], Ok(0.1));
        assert_eq!(r[3], Ok(0.0));
        assert_eq!(r[4], Ok(1.0));
        assert!(matches!(r[5], Err(RewardError::MissingReference(_))));
        assert!(matches!(r[6], Err(RewardError::BadReference(_))));

        let strict = Gsm8kReward::new(
            "g",
            Gsm8kSpec {
                extraction: AnswerExtraction::Strict,
                ..Gsm8kSpec::default()
            },
        )
        .unwrap();
        assert_eq!(strict.score_one("3 + 4 = 7", 7.0), 0.0);
        assert_eq!(strict.score_one("\\boxed{7.0}", 7.0), 1.0);
    }
}
