//! Prompt sources of online RL (`[data] train` / `eval`): the prompts rollouts start from, each
//! with the reference answers its reward functions may compare against.
//!
//! - `gsm8k`: the question (plus the recipe's `instruction`), reference = the gold final answer;
//! - `hh-rlhf`: the conversation before the last assistant turn, reference = the chosen response;
//! - `jsonl`: rows `{"prompt": text | conversation, "reference"?: text, "references"?: [text]}`.
//!
//! HH-RLHF repeats prompts across pairs; duplicates are dropped (first kept), so a group of `G`
//! rollouts never meets the same prompt twice in one iteration.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use rm_core::data::{DataError, JsonlReader, Row, gsm8k, hh_rlhf};
use rm_core::types::Prompt;
use rm_pipeline::recipe::HhSplit;
use serde::{Deserialize, Serialize};

/// One prompt and what its rewards may compare against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RlPrompt {
    pub prompt: Prompt,
    /// Gold answers / reference responses (may be empty).
    pub references: Vec<String>,
}

/// The GSM8K splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gsm8kSplit {
    Train,
    Test,
}

/// Where prompts come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PromptSource {
    Gsm8k {
        split: Gsm8kSplit,
        /// Only the first N prompts (0 = all).
        #[serde(default)]
        limit: usize,
    },
    HhRlhf {
        split: HhSplit,
        #[serde(default)]
        limit: usize,
    },
    Jsonl {
        path: PathBuf,
        #[serde(default)]
        limit: usize,
    },
}

impl PromptSource {
    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            PromptSource::Gsm8k { split, .. } => format!("gsm8k:{split:?}").to_lowercase(),
            PromptSource::HhRlhf { split, .. } => format!("hh-rlhf:{split:?}").to_lowercase(),
            PromptSource::Jsonl { path, .. } => path.display().to_string(),
        }
    }

    /// The source a command-line flag names: `gsm8k:train`, `gsm8k:test`, `hh-rlhf:train`,
    /// `hh-rlhf:dev`, or a JSONL path; the first `limit` prompts (0 = all).
    pub fn from_flag(flag: &str, limit: usize) -> Result<PromptSource> {
        Ok(match flag {
            "gsm8k:train" => PromptSource::Gsm8k {
                split: Gsm8kSplit::Train,
                limit,
            },
            "gsm8k:test" => PromptSource::Gsm8k {
                split: Gsm8kSplit::Test,
                limit,
            },
            "hh-rlhf:train" => PromptSource::HhRlhf {
                split: HhSplit::Train,
                limit,
            },
            "hh-rlhf:dev" => PromptSource::HhRlhf {
                split: HhSplit::Dev,
                limit,
            },
            other if other.contains(':') && !Path::new(other).exists() => bail!(
                "{other:?}: expected gsm8k:train, gsm8k:test, hh-rlhf:train, hh-rlhf:dev or a JSONL file"
            ),
            path => PromptSource::Jsonl {
                path: PathBuf::from(path),
                limit,
            },
        })
    }

    /// Reads the prompts; `instruction`, when given, is appended to every GSM8K question (after
    /// a blank line). An empty result is an error.
    pub fn load(&self, data_dir: &Path, instruction: Option<&str>) -> Result<Vec<RlPrompt>> {
        let (mut prompts, limit) = match self {
            PromptSource::Gsm8k { split, limit } => {
                let split = match split {
                    Gsm8kSplit::Train => "train",
                    Gsm8kSplit::Test => "test",
                };
                let problems = gsm8k::load(data_dir, split, Default::default())?;
                let prompts = problems
                    .into_iter()
                    .map(|p| RlPrompt {
                        prompt: Prompt::Text(match instruction {
                            Some(i) => format!("{}\n\n{i}", p.question),
                            None => p.question,
                        }),
                        references: vec![p.answer],
                    })
                    .collect();
                (prompts, *limit)
            }
            PromptSource::HhRlhf { split, limit } => {
                let split = match split {
                    HhSplit::Train => hh_rlhf::Split::Train,
                    HhSplit::Dev => hh_rlhf::Split::Dev,
                };
                let (pairs, _) = hh_rlhf::load(data_dir, split)?;
                let mut prompts: Vec<RlPrompt> = Vec::new();
                for pair in pairs {
                    if !prompts.iter().any(|p| p.prompt == pair.prompt) {
                        prompts.push(RlPrompt {
                            prompt: pair.prompt,
                            references: vec![pair.chosen],
                        });
                    }
                }
                (prompts, *limit)
            }
            PromptSource::Jsonl { path, limit } => (load_jsonl(path)?, *limit),
        };
        if limit > 0 {
            prompts.truncate(limit);
        }
        if prompts.is_empty() {
            bail!("{}: no prompts", self.describe());
        }
        Ok(prompts)
    }
}

/// Rows `{"prompt", "reference"?, "references"?}`; a bad row is an error naming its line.
fn load_jsonl(path: &Path) -> Result<Vec<RlPrompt>, DataError> {
    let mut out = Vec::new();
    for item in JsonlReader::open(path)? {
        let (loc, value) = item?;
        let row = Row::new(&loc, &value);
        let prompt_value = row.require("prompt")?;
        let prompt: Prompt = serde_json::from_value(prompt_value.clone())
            .map_err(|e| loc.field("prompt", format!("expected a text or a conversation ({e})")))?;
        if matches!(&prompt, Prompt::Text(t) if t.trim().is_empty()) {
            return Err(loc.field("prompt", "is empty"));
        }
        let mut references = Vec::new();
        if let Some(r) = row.opt_str("reference")? {
            references.push(r.to_string());
        }
        if row.get("references").is_some() {
            references.extend(row.str_array("references")?);
        }
        out.push(RlPrompt { prompt, references });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_prompts_read_references_and_name_bad_lines() {
        let dir = std::env::temp_dir().join(format!("plumb-rl-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"2+2?\", \"reference\": \"4\"}\n{\"prompt\": \"hi\", \"references\": [\"a\", \"b\"]}\n",
        )
        .unwrap();
        let source = PromptSource::Jsonl {
            path: path.clone(),
            limit: 0,
        };
        let got = source.load(&dir, None).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].references, vec!["4".to_string()]);
        assert_eq!(got[1].references, vec!["a".to_string(), "b".to_string()]);
        std::fs::write(&path, "{\"prompt\": \"ok\"}\n{\"prompt\": 3}\n").unwrap();
        let err = format!("{:#}", source.load(&dir, None).unwrap_err());
        assert!(err.contains("p.jsonl:2") && err.contains("prompt"), "{err}");
        std::fs::write(&path, "").unwrap();
        let err = format!("{:#}", source.load(&dir, None).unwrap_err());
        assert!(err.contains("no prompts"), "{err}");
    }
}
