//! Format reward: the completion follows a required shape.
//!
//! The rule-based format reward of DeepSeek-R1 (DeepSeek-AI 2025, "DeepSeek-R1: Incentivizing
//! Reasoning Capability in LLMs via Reinforcement Learning": reasoning in `<think>…</think>`,
//! the answer in `<answer>…</answer>`), generalised to a list of checks:
//! - `pattern`: a regex (Rust `regex` syntax, `.` matches newlines) that must match somewhere in
//!   the completion, or the whole completion when `full_match = true`;
//! - `sections`: tag names; each must appear as `<tag>…</tag>` with non-blank content, in the
//!   listed order (section k is searched for after the end of the last section found).
//!
//! With `n` checks of which `k` pass: `r = 1` if `k = n` else `0`; with `partial = true`,
//! `r = k / n`.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{RewardError, RewardFunction, RewardSample, per_sample};

/// `kind = "format"`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// The pattern must match the whole completion (surrounding whitespace ignored).
    #[serde(default)]
    pub full_match: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<String>,
    /// Fraction of checks passed instead of all-or-nothing.
    #[serde(default)]
    pub partial: bool,
}

/// The format reward.
pub struct FormatReward {
    name: String,
    pattern: Option<Regex>,
    /// `(open, close)` tags.
    sections: Vec<(String, String)>,
    partial: bool,
}

impl FormatReward {
    pub fn new(name: &str, spec: &FormatSpec) -> anyhow::Result<Self> {
        if spec.pattern.is_none() && spec.sections.is_empty() {
            anyhow::bail!("format: set `pattern` and/or `sections`");
        }
        let pattern = spec
            .pattern
            .as_deref()
            .map(|p| {
                let full = if spec.full_match {
                    format!(r"(?s)\A\s*(?:{p})\s*\z")
                } else {
                    format!("(?s){p}")
                };
                Regex::new(&full).map_err(|e| anyhow::anyhow!("format: pattern {p:?}: {e}"))
            })
            .transpose()?;
        let mut sections = Vec::new();
        for tag in &spec.sections {
            if tag.is_empty() || tag.contains(['<', '>', '/']) || tag.contains(char::is_whitespace)
            {
                anyhow::bail!("format: section {tag:?} must be a bare tag name like \"think\"");
            }
            sections.push((format!("<{tag}>"), format!("</{tag}>")));
        }
        Ok(Self {
            name: name.to_string(),
            pattern,
            sections,
            partial: spec.partial,
        })
    }

    /// `(passed, total)` checks.
    pub fn checks(&self, completion: &str) -> (usize, usize) {
        let mut passed = 0;
        let mut total = 0;
        if let Some(re) = &self.pattern {
            total += 1;
            passed += usize::from(re.is_match(completion));
        }
        let mut from = 0;
        for (open, close) in &self.sections {
            total += 1;
            let rest = &completion[from..];
            let Some(o) = rest.find(open.as_str()) else {
                continue;
            };
            let body = o + open.len();
            let Some(c) = rest[body..].find(close.as_str()) else {
                continue;
            };
            if rest[body..body + c].trim().is_empty() {
                continue;
            }
            passed += 1;
            from += body + c + close.len();
        }
        (passed, total)
    }

    pub fn score_one(&self, completion: &str) -> f32 {
        let (passed, total) = self.checks(completion);
        if self.partial {
            passed as f32 / total as f32
        } else if passed == total {
            1.0
        } else {
            0.0
        }
    }
}

impl RewardFunction for FormatReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
        per_sample(samples, |s| Ok(self.score_one(s.completion)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reward(spec: FormatSpec) -> FormatReward {
        FormatReward::new("format", &spec).unwrap()
    }

    #[test]
    fn a_pattern_scores_one_when_it_matches_and_full_match_anchors_it() {
        let r = reward(FormatSpec {
            pattern: Some("####".into()),
            ..Default::default()
        });
        assert_eq!(r.score_one("2 + 2 = 4\n#### 4"), 1.0);
        assert_eq!(r.score_one("2 + 2 = 4"), 0.0);
        let full = reward(FormatSpec {
            pattern: Some(r"<think>.+</think>\s*<answer>.+</answer>".into()),
            full_match: true,
            ..Default::default()
        });
        assert_eq!(
            full.score_one("<think>a\nb</think>\n<answer>4</answer>\n"),
            1.0
        );
        assert_eq!(
            full.score_one("preamble <think>a</think><answer>4</answer>"),
            0.0
        );
    }

    #[test]
    fn sections_must_be_non_empty_and_in_order_and_partial_counts_the_fraction() {
        let spec = FormatSpec {
            pattern: Some("####".into()),
            sections: vec!["think".into(), "answer".into()],
            partial: true,
            ..Default::default()
        };
        let r = reward(spec.clone());
        assert_eq!(
            r.checks("<think>x</think><answer>4</answer> #### 4"),
            (3, 3)
        );
        // Answer before think: only the first listed section found in order.
        assert_eq!(r.checks("<answer>4</answer><think>x</think>"), (1, 3));
        assert_eq!(r.checks("<think> </think><answer>4</answer>"), (1, 3));
        assert!((r.score_one("<think>x</think> #### 4") - 2.0 / 3.0).abs() < 1e-6);
        let all_or_nothing = reward(FormatSpec {
            partial: false,
            ..spec
        });
        assert_eq!(all_or_nothing.score_one("<think>x</think> #### 4"), 0.0);
        assert_eq!(
            all_or_nothing.score_one("<think>x</think><answer>4</answer>####"),
            1.0
        );
    }

    #[test]
    fn bad_specs_are_build_errors() {
        assert!(FormatReward::new("f", &FormatSpec::default()).is_err());
        let bad_regex = FormatSpec {
            pattern: Some("(unclosed".into()),
            ..Default::default()
        };
        assert!(FormatReward::new("f", &bad_regex).is_err());
        let bad_tag = FormatSpec {
            sections: vec!["<think>".into()],
            ..Default::default()
        };
        assert!(FormatReward::new("f", &bad_tag).is_err());
    }
}
