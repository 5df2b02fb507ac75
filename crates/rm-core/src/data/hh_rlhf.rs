//! Anthropic HH-RLHF (`{"chosen": transcript, "rejected": transcript}`) → conversations and
//! preference pairs.
//!
//! A transcript is `\n\nHuman: …\n\nAssistant: …` turns ([`crate::chat::parse_hh`]). The shared
//! prompt of a pair is every turn before the final assistant turn; chosen and rejected are the
//! two final assistant responses.
//!
//! Some red-team responses themselves contain `\n\nHuman:`/`\n\nAssistant:` text (the model
//! went on to invent turns). Split naively, their "final turn" is the invented one and the two
//! prompts seem to differ. When the turn-wise prompts differ, the loader falls back to the text
//! the two transcripts share: the prompt ends at the last `\n\nAssistant:` of their common
//! prefix, and each response is everything after it. Such rows are kept and listed in
//! [`HhReport::responses_with_turn_markers`]. Rows that do not share a prompt even then are left
//! out and listed in [`HhReport::prompt_mismatches`] (or kept with the chosen transcript's
//! prompt when [`HhOptions::keep_prompt_mismatches`] is set) — never silently.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{DataError, JsonlReader, Loc, Row, locate};
use crate::chat::{HH_ASSISTANT, parse_hh};
use crate::types::{Conversation, PreferencePair, Prompt, Role};

/// Splits of harmless-base shipped beside plumbline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Dev,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
        }
    }
}

/// Loader options.
#[derive(Clone, Copy, Debug, Default)]
pub struct HhOptions {
    /// Keep rows whose chosen and rejected prompts differ, using the chosen transcript's prompt.
    pub keep_prompt_mismatches: bool,
}

/// What a load saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HhReport {
    pub path: PathBuf,
    /// Non-empty rows read.
    pub rows: usize,
    /// Pairs returned.
    pub pairs: usize,
    /// Line numbers of rows whose two prompts differ.
    pub prompt_mismatches: Vec<usize>,
    /// Line numbers of rows whose responses contain invented turn markers (kept; see the module
    /// docs).
    pub responses_with_turn_markers: Vec<usize>,
    /// Rows whose chosen and rejected responses are the same text (kept: they carry no
    /// preference signal, and a user may want to drop them).
    pub identical_responses: usize,
}

/// Parses one transcript field into a conversation that must end with an assistant turn.
pub fn parse_transcript(text: &str, loc: &Loc, field: &str) -> Result<Conversation, DataError> {
    let conversation = parse_hh(text).map_err(|e| loc.field(field, e.to_string()))?;
    match conversation.last() {
        Some(turn) if turn.role == Role::Assistant => Ok(conversation),
        Some(_) => Err(loc.field(
            field,
            "the transcript does not end with an \"Assistant:\" turn (no response to compare)",
        )),
        None => Err(loc.field(
            field,
            "the transcript has no \"Human:\"/\"Assistant:\" turns",
        )),
    }
}

/// Both transcripts of a row.
pub fn parse_row(row: &Row) -> Result<(Conversation, Conversation), DataError> {
    let chosen = parse_transcript(row.str("chosen")?, row.loc, "chosen")?;
    let rejected = parse_transcript(row.str("rejected")?, row.loc, "rejected")?;
    Ok((chosen, rejected))
}

/// Loads a split from the data dir, verifying its sha256.
pub fn load(data_dir: &Path, split: Split) -> Result<(Vec<PreferencePair>, HhReport), DataError> {
    let path = locate(data_dir, "hh-rlhf", split.name())?;
    load_file(&path, HhOptions::default())
}

/// Loads any file in the HH transcript format (no checksum).
pub fn load_file(
    path: &Path,
    options: HhOptions,
) -> Result<(Vec<PreferencePair>, HhReport), DataError> {
    let mut report = HhReport {
        path: path.to_path_buf(),
        ..Default::default()
    };
    let mut pairs = Vec::new();
    for item in JsonlReader::open(path)? {
        let (loc, value) = item?;
        report.rows += 1;
        let row = Row::new(&loc, &value);
        let (chosen, rejected) = parse_row(&row)?;
        let n_c = chosen.turns.len();
        let n_r = rejected.turns.len();
        let (prompt, chosen_text, rejected_text) = if chosen.turns[..n_c - 1]
            == rejected.turns[..n_r - 1]
        {
            (
                Conversation::new(chosen.turns[..n_c - 1].to_vec()),
                chosen.turns[n_c - 1].content.clone(),
                rejected.turns[n_r - 1].content.clone(),
            )
        } else if let Some(split) = split_on_shared_prompt(row.str("chosen")?, row.str("rejected")?)
        {
            report.responses_with_turn_markers.push(loc.line);
            split
        } else {
            report.prompt_mismatches.push(loc.line);
            if !options.keep_prompt_mismatches {
                continue;
            }
            (
                Conversation::new(chosen.turns[..n_c - 1].to_vec()),
                chosen.turns[n_c - 1].content.clone(),
                rejected.turns[n_r - 1].content.clone(),
            )
        };
        if chosen_text == rejected_text {
            report.identical_responses += 1;
        }
        pairs.push(PreferencePair {
            prompt: Prompt::Conversation(prompt),
            chosen: chosen_text,
            rejected: rejected_text,
            margin: None,
            subset: None,
            scores: None,
        });
    }
    report.pairs = pairs.len();
    Ok((pairs, report))
}

/// Splits two transcripts at the last `\n\nAssistant:` of their common prefix: the shared prompt
/// and the two responses (a leading space dropped). `None` when the prefix holds no such marker
/// or the prompt does not end with a human turn.
fn split_on_shared_prompt(chosen: &str, rejected: &str) -> Option<(Conversation, String, String)> {
    let common = chosen
        .char_indices()
        .zip(rejected.chars())
        .find(|((_, a), b)| a != b)
        .map_or(chosen.len().min(rejected.len()), |((i, _), _)| i);
    let cut = chosen[..common].rfind(HH_ASSISTANT)?;
    let prompt = parse_hh(&chosen[..cut]).ok()?;
    if prompt.last()?.role != Role::User {
        return None;
    }
    let response = |t: &str| {
        let r = &t[cut + HH_ASSISTANT.len()..];
        r.strip_prefix(' ').unwrap_or(r).to_string()
    };
    Some((prompt, response(chosen), response(rejected)))
}

/// Every conversation of a file: the chosen and the rejected transcript of each row.
pub fn load_conversations(path: &Path) -> Result<Vec<(Conversation, Conversation)>, DataError> {
    JsonlReader::open(path)?
        .map(|item| {
            let (loc, value) = item?;
            parse_row(&Row::new(&loc, &value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::fixture;
    use super::*;
    use crate::types::Turn;

    #[test]
    fn multi_turn_transcripts_become_prompt_and_responses() {
        let (pairs, report) =
            load_file(&fixture("hh-multiturn.jsonl"), HhOptions::default()).unwrap();
        assert_eq!(report.rows, 2);
        assert_eq!(report.pairs, 2);
        assert!(report.prompt_mismatches.is_empty());
        let Prompt::Conversation(prompt) = &pairs[0].prompt else {
            panic!("conversation prompt expected")
        };
        assert_eq!(
            prompt.turns,
            [
                Turn::new(Role::User, "Hi there"),
                Turn::new(Role::Assistant, "Hello!"),
                Turn::new(Role::User, "What is 2+2?"),
            ]
        );
        assert_eq!(pairs[0].chosen, "4.");
        assert_eq!(pairs[0].rejected, "5.");
    }

    #[test]
    fn extra_blank_lines_are_kept_inside_turns_and_ignored_before_the_first() {
        let (pairs, _) = load_file(&fixture("hh-multiturn.jsonl"), HhOptions::default()).unwrap();
        let Prompt::Conversation(prompt) = &pairs[1].prompt else {
            panic!("conversation prompt expected")
        };
        assert_eq!(
            prompt.turns,
            [Turn::new(Role::User, "Line one\n\nline two")]
        );
        assert_eq!(pairs[1].chosen, "Answer\n\nwith a blank line");
        assert_eq!(pairs[1].rejected, "Other");
    }

    #[test]
    fn a_missing_final_assistant_turn_is_an_error_naming_file_line_and_field() {
        let err = load_file(&fixture("hh-missing-assistant.jsonl"), HhOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hh-missing-assistant.jsonl:2: field \"chosen\": the transcript does not end with an \"Assistant:\" turn"),
            "{err}"
        );
    }

    #[test]
    fn responses_with_invented_turns_keep_the_shared_prompt() {
        let chosen = "\n\nHuman: Q\n\nAssistant: A\n\nHuman: fake\n\nAssistant: more";
        let rejected = "\n\nHuman: Q\n\nAssistant: B";
        let (prompt, c, r) = split_on_shared_prompt(chosen, rejected).unwrap();
        assert_eq!(prompt.turns, [Turn::new(Role::User, "Q")]);
        assert_eq!(c, "A\n\nHuman: fake\n\nAssistant: more");
        assert_eq!(r, "B");
        assert!(
            split_on_shared_prompt(
                "\n\nHuman: X\n\nAssistant: A",
                "\n\nHuman: Y\n\nAssistant: A"
            )
            .is_none()
        );
    }

    #[test]
    fn prompt_mismatches_are_reported_not_silently_kept() {
        let path = fixture("hh-prompt-mismatch.jsonl");
        let (pairs, report) = load_file(&path, HhOptions::default()).unwrap();
        assert_eq!((report.rows, report.pairs), (2, 1));
        assert_eq!(report.prompt_mismatches, [1]);
        assert_eq!(pairs[0].rejected, "C");
        let (pairs, report) = load_file(
            &path,
            HhOptions {
                keep_prompt_mismatches: true,
            },
        )
        .unwrap();
        assert_eq!((report.pairs, pairs.len()), (2, 2));
        assert_eq!(report.prompt_mismatches, [1]);
    }

    #[test]
    fn the_round_trip_through_the_hh_template_is_exact() {
        use crate::chat::ChatTemplate;
        let convs = load_conversations(&fixture("hh-multiturn.jsonl")).unwrap();
        let text = ChatTemplate::HhTranscript
            .render(&convs[0].0, false)
            .unwrap();
        assert_eq!(
            text,
            "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: 4."
        );
        assert_eq!(ChatTemplate::HhTranscript.parse(&text).unwrap(), convs[0].0);
    }
}
