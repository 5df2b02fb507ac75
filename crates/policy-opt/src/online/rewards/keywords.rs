//! Keyword constraints: required keywords present, forbidden keywords absent, as in the
//! keyword checks of IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large
//! Language Models": "include keywords", "forbidden words") used as RLVR rewards (e.g. Tülu 3,
//! Lambert et al. 2024).
//!
//! With `R` required and `F` forbidden keywords:
//! `r = (#{k ∈ R : k occurs} + #{k ∈ F : k does not occur}) / (|R| + |F|)`.
//! Matching is case-insensitive unless `case_sensitive = true`; a keyword occurs as a substring,
//! or as a whole word (bounded by non-alphanumeric characters or the ends) with
//! `whole_word = true`.

use serde::{Deserialize, Serialize};

use super::{RewardError, RewardFunction, RewardSample, per_sample};

/// `kind = "keywords"`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordsSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forbidden: Vec<String>,
    #[serde(default)]
    pub case_sensitive: bool,
    #[serde(default)]
    pub whole_word: bool,
}

/// The keyword reward.
pub struct KeywordsReward {
    name: String,
    required: Vec<String>,
    forbidden: Vec<String>,
    case_sensitive: bool,
    whole_word: bool,
}

impl KeywordsReward {
    pub fn new(name: &str, spec: &KeywordsSpec) -> anyhow::Result<Self> {
        if spec.required.is_empty() && spec.forbidden.is_empty() {
            anyhow::bail!("keywords: set `required` and/or `forbidden`");
        }
        if spec
            .required
            .iter()
            .chain(&spec.forbidden)
            .any(|k| k.trim().is_empty())
        {
            anyhow::bail!("keywords: empty keyword");
        }
        let fold = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|k| {
                    if spec.case_sensitive {
                        k.clone()
                    } else {
                        k.to_lowercase()
                    }
                })
                .collect()
        };
        Ok(Self {
            name: name.to_string(),
            required: fold(&spec.required),
            forbidden: fold(&spec.forbidden),
            case_sensitive: spec.case_sensitive,
            whole_word: spec.whole_word,
        })
    }

    fn occurs(&self, text: &str, keyword: &str) -> bool {
        if !self.whole_word {
            return text.contains(keyword);
        }
        let is_word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
        text.match_indices(keyword).any(|(i, k)| {
            !is_word(text[..i].chars().next_back()) && !is_word(text[i + k.len()..].chars().next())
        })
    }

    pub fn score_one(&self, completion: &str) -> f32 {
        let text = if self.case_sensitive {
            completion.to_string()
        } else {
            completion.to_lowercase()
        };
        let satisfied = self
            .required
            .iter()
            .filter(|k| self.occurs(&text, k))
            .count()
            + self
                .forbidden
                .iter()
                .filter(|k| !self.occurs(&text, k))
                .count();
        satisfied as f32 / (self.required.len() + self.forbidden.len()) as f32
    }
}

impl RewardFunction for KeywordsReward {
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

    #[test]
    fn keywords_score_the_fraction_of_constraints_satisfied() {
        let spec = KeywordsSpec {
            required: vec!["Paris".into(), "capital".into()],
            forbidden: vec!["London".into(), "sorry".into()],
            ..Default::default()
        };
        let r = KeywordsReward::new("kw", &spec).unwrap();
        assert_eq!(r.score_one("PARIS is the Capital of France."), 1.0);
        // Paris present, capital missing, London present, sorry absent: 2/4.
        assert_eq!(r.score_one("Paris, not London."), 0.5);
        assert_eq!(r.score_one("Sorry, London."), 0.0);
        let cs = KeywordsReward::new(
            "kw",
            &KeywordsSpec {
                case_sensitive: true,
                ..spec.clone()
            },
        )
        .unwrap();
        // "PARIS" and "Capital" do not match case-sensitively: 2/4.
        assert_eq!(cs.score_one("PARIS is the Capital of France."), 0.5);
        let ww = KeywordsReward::new(
            "kw",
            &KeywordsSpec {
                required: vec!["cat".into()],
                whole_word: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(ww.score_one("concatenate"), 0.0);
        assert_eq!(ww.score_one("the cat, sat"), 1.0);
        assert!(KeywordsReward::new("kw", &KeywordsSpec::default()).is_err());
    }
}
