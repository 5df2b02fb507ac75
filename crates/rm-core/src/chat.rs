//! Chat templates: a [`Conversation`] rendered to the text a model was trained on, and parsed
//! back.
//!
//! - [`ChatTemplate::ChatMl`] — SmolLM2/Qwen style:
//!   `<|im_start|>{role}\n{content}<|im_end|>\n` per turn; the generation prompt is
//!   `<|im_start|>assistant\n`, and an assistant response is completed by `<|im_end|>`.
//! - [`ChatTemplate::HhTranscript`] — Anthropic HH-RLHF transcripts: `\n\nHuman: {content}` and
//!   `\n\nAssistant: {content}` (system turns are not representable).
//! - [`ChatTemplate::Plain`] — turn contents joined by blank lines (for encoders fed raw text).

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::types::{Conversation, Prompt, Role, Turn};

/// ChatML turn opener.
pub const IM_START: &str = "<|im_start|>";
/// ChatML turn closer.
pub const IM_END: &str = "<|im_end|>";
/// HH-RLHF human turn marker.
pub const HH_HUMAN: &str = "\n\nHuman:";
/// HH-RLHF assistant turn marker.
pub const HH_ASSISTANT: &str = "\n\nAssistant:";

/// A chat template.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n` (SmolLM2, Qwen2).
    #[default]
    ChatMl,
    /// `\n\nHuman: …\n\nAssistant: …` (Anthropic HH-RLHF).
    HhTranscript,
    /// Contents joined by blank lines, roles dropped.
    Plain,
}

impl ChatTemplate {
    /// Renders every turn. With `add_generation_prompt`, appends the opener of an assistant turn
    /// so that a model continues with the assistant's answer.
    pub fn render(
        &self,
        conversation: &Conversation,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let mut out = String::new();
        match self {
            ChatTemplate::ChatMl => {
                for turn in &conversation.turns {
                    out.push_str(IM_START);
                    out.push_str(turn.role.as_str());
                    out.push('\n');
                    out.push_str(&turn.content);
                    out.push_str(IM_END);
                    out.push('\n');
                }
                if add_generation_prompt {
                    out.push_str(IM_START);
                    out.push_str("assistant\n");
                }
            }
            ChatTemplate::HhTranscript => {
                for turn in &conversation.turns {
                    out.push_str(hh_marker(turn.role)?);
                    out.push(' ');
                    out.push_str(&turn.content);
                }
                if add_generation_prompt {
                    out.push_str(HH_ASSISTANT);
                }
            }
            ChatTemplate::Plain => {
                let parts: Vec<&str> = conversation
                    .turns
                    .iter()
                    .map(|t| t.content.as_str())
                    .collect();
                out = parts.join("\n\n");
                if add_generation_prompt && !out.is_empty() {
                    out.push_str("\n\n");
                }
            }
        }
        Ok(out)
    }

    /// Renders a prompt for generation: a conversation with the assistant opener appended, or a
    /// plain text prompt as a single user turn.
    pub fn render_prompt(&self, prompt: &Prompt) -> Result<String> {
        match prompt {
            Prompt::Conversation(c) => self.render(c, true),
            Prompt::Text(t) => self.render(
                &Conversation::new(vec![Turn::new(Role::User, t.clone())]),
                true,
            ),
        }
    }

    /// The text that follows the generation prompt for an assistant `response`: ChatML closes the
    /// turn with `<|im_end|>`; HH transcripts put one space after `Assistant:`.
    pub fn render_response(&self, response: &str) -> String {
        match self {
            ChatTemplate::ChatMl => format!("{response}{IM_END}"),
            ChatTemplate::HhTranscript => format!(" {response}"),
            ChatTemplate::Plain => response.to_string(),
        }
    }

    /// Parses rendered text back into a conversation (the inverse of [`ChatTemplate::render`]
    /// without a generation prompt). `Plain` cannot be parsed: roles are lost.
    pub fn parse(&self, text: &str) -> Result<Conversation> {
        match self {
            ChatTemplate::ChatMl => parse_chatml(text),
            ChatTemplate::HhTranscript => parse_hh(text),
            ChatTemplate::Plain => {
                bail!("the plain template drops roles and cannot be parsed back")
            }
        }
    }
}

fn hh_marker(role: Role) -> Result<&'static str> {
    match role {
        Role::User => Ok(HH_HUMAN),
        Role::Assistant => Ok(HH_ASSISTANT),
        Role::System => bail!("HH transcripts have no system turns"),
    }
}

fn parse_role(name: &str) -> Result<Role> {
    match name {
        "system" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => bail!("unknown ChatML role {other:?}"),
    }
}

fn parse_chatml(text: &str) -> Result<Conversation> {
    let mut turns = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches('\n');
        if rest.is_empty() {
            break;
        }
        let Some(body) = rest.strip_prefix(IM_START) else {
            bail!(
                "expected {IM_START} at {:?}",
                rest.chars().take(30).collect::<String>()
            );
        };
        let Some(newline) = body.find('\n') else {
            bail!("a ChatML turn header has no newline after the role");
        };
        let role = parse_role(&body[..newline])?;
        let content_and_rest = &body[newline + 1..];
        let Some(end) = content_and_rest.find(IM_END) else {
            bail!("a ChatML {} turn is not closed by {IM_END}", role.as_str());
        };
        turns.push(Turn::new(role, &content_and_rest[..end]));
        rest = &content_and_rest[end + IM_END.len()..];
    }
    Ok(Conversation::new(turns))
}

/// Parses an HH-RLHF transcript (`\n\nHuman: …\n\nAssistant: …`). Turn contents keep inner
/// newlines; the single space after a marker is dropped; leading blank lines before the first
/// marker are tolerated. Text before the first marker is an error.
pub fn parse_hh(text: &str) -> Result<Conversation> {
    let mut turns: Vec<Turn> = Vec::new();
    let mut rest = text;
    // Tolerate a transcript that does not start with the two newlines.
    let trimmed = rest.trim_start_matches(['\n', ' ']);
    if let Some(after) = trimmed.strip_prefix("Human:") {
        rest = after;
        turns.push(Turn::new(Role::User, String::new()));
    } else if let Some(after) = trimmed.strip_prefix("Assistant:") {
        rest = after;
        turns.push(Turn::new(Role::Assistant, String::new()));
    } else if !trimmed.is_empty() {
        bail!("an HH transcript must start with \"Human:\" or \"Assistant:\"");
    }
    while !rest.is_empty() {
        let next = [(HH_HUMAN, Role::User), (HH_ASSISTANT, Role::Assistant)]
            .iter()
            .filter_map(|(m, r)| rest.find(m).map(|i| (i, *m, *r)))
            .min_by_key(|(i, _, _)| *i);
        match next {
            Some((i, marker, role)) => {
                if let Some(last) = turns.last_mut() {
                    last.content.push_str(&rest[..i]);
                }
                turns.push(Turn::new(role, String::new()));
                rest = &rest[i + marker.len()..];
            }
            None => {
                if let Some(last) = turns.last_mut() {
                    last.content.push_str(rest);
                }
                rest = "";
            }
        }
    }
    for turn in &mut turns {
        if let Some(stripped) = turn.content.strip_prefix(' ') {
            turn.content = stripped.to_string();
        }
    }
    Ok(Conversation::new(turns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> Conversation {
        Conversation::new(vec![
            Turn::new(Role::User, "What is 2+2?"),
            Turn::new(Role::Assistant, "4.\nIt is four."),
            Turn::new(Role::User, "And 3+3?"),
            Turn::new(Role::Assistant, "6."),
        ])
    }

    #[test]
    fn chatml_renders_like_the_golden_text() {
        let c = Conversation::new(vec![
            Turn::new(Role::User, "What is the capital of France?"),
            Turn::new(Role::Assistant, "The capital of France is Paris."),
        ]);
        let text = ChatTemplate::ChatMl.render(&c, false).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n"
        );
        let prompt = ChatTemplate::ChatMl
            .render(&Conversation::new(c.turns[..1].to_vec()), true)
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            format!(
                "{prompt}{}",
                ChatTemplate::ChatMl.render_response("The capital of France is Paris.")
            ),
            text.trim_end_matches('\n')
        );
    }

    #[test]
    fn round_trips() {
        for template in [ChatTemplate::ChatMl, ChatTemplate::HhTranscript] {
            let text = template.render(&conv(), false).unwrap();
            assert_eq!(
                template.parse(&text).unwrap(),
                conv(),
                "{template:?}: {text:?}"
            );
        }
        let mut with_system = conv();
        with_system
            .turns
            .insert(0, Turn::new(Role::System, "Be brief."));
        let text = ChatTemplate::ChatMl.render(&with_system, false).unwrap();
        assert_eq!(ChatTemplate::ChatMl.parse(&text).unwrap(), with_system);
        assert!(
            ChatTemplate::HhTranscript
                .render(&with_system, false)
                .is_err()
        );
    }

    #[test]
    fn hh_rendering_matches_the_dataset_format() {
        let text = ChatTemplate::HhTranscript.render(&conv(), false).unwrap();
        assert_eq!(
            text,
            "\n\nHuman: What is 2+2?\n\nAssistant: 4.\nIt is four.\n\nHuman: And 3+3?\n\nAssistant: 6."
        );
        let prompt = ChatTemplate::HhTranscript
            .render(&Conversation::new(conv().turns[..3].to_vec()), true)
            .unwrap();
        assert_eq!(
            format!(
                "{prompt}{}",
                ChatTemplate::HhTranscript.render_response("6.")
            ),
            text
        );
    }

    #[test]
    fn malformed_chatml_is_an_error() {
        assert!(parse_chatml("<|im_start|>user\nhi").is_err());
        assert!(parse_chatml("<|im_start|>robot\nhi<|im_end|>").is_err());
        assert!(parse_chatml("hello").is_err());
    }
}
