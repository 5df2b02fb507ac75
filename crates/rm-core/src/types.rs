//! Plain data types shared by every plumbline crate: conversations, preference pairs, rankings,
//! unpaired (KTO-style) examples and step-labelled solutions.
//!
//! They carry text only; tokenization lives in [`crate::tokenize`] and chat rendering in
//! [`crate::chat`].

use serde::{Deserialize, Serialize};

/// Who speaks a turn of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The lower-case role name used by ChatML (`system`, `user`, `assistant`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

impl Turn {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// An ordered list of turns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub turns: Vec<Turn>,
}

impl Conversation {
    pub fn new(turns: Vec<Turn>) -> Self {
        Self { turns }
    }

    /// The last turn, if any.
    pub fn last(&self) -> Option<&Turn> {
        self.turns.last()
    }
}

/// What a model is asked: either free text or a conversation to be rendered with a chat template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Conversation(Conversation),
}

/// A prompt with a preferred (`chosen`) and a dispreferred (`rejected`) response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: Prompt,
    pub chosen: String,
    pub rejected: String,
    /// Optional per-pair margin (how much better `chosen` is), used by margin losses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f32>,
    /// Optional subset name (RewardBench-style section bookkeeping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Optional raw scores `[chosen, rejected]` when the source had them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<[f32; 2]>,
}

/// A prompt with several responses ordered by preference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    pub prompt: Prompt,
    pub responses: Vec<String>,
    /// Rank of each response, 0 = best; ties allowed.
    pub ranks: Vec<u32>,
    /// Scores when the source gave scores (higher = better).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<f32>>,
}

/// A single completion labelled desirable or undesirable (KTO-style unpaired feedback).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpairedExample {
    pub prompt: Prompt,
    pub completion: String,
    pub desirable: bool,
}

/// Label of one reasoning step (PRM800K ratings: 1 good, 0 neutral, -1 bad).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepLabel {
    Good,
    Neutral,
    Bad,
}

impl StepLabel {
    /// PRM800K integer rating → label.
    pub fn from_rating(rating: i64) -> Option<Self> {
        match rating {
            1 => Some(StepLabel::Good),
            0 => Some(StepLabel::Neutral),
            -1 => Some(StepLabel::Bad),
            _ => None,
        }
    }

    pub fn rating(self) -> i8 {
        match self {
            StepLabel::Good => 1,
            StepLabel::Neutral => 0,
            StepLabel::Bad => -1,
        }
    }
}

/// One step of a solution with its label (`None` for unrated, e.g. human-written, steps).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelledStep {
    pub text: String,
    pub label: Option<StepLabel>,
    /// A soft label in [0, 1]: the estimated probability that the solution reaches the right
    /// answer from here (Math-Shepherd's soft estimate, `plumb label-steps`' `soft_labels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft: Option<f32>,
}

/// A rated alternative for a step (PRM800K stores several candidate completions per step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepAlternative {
    pub text: String,
    pub label: Option<StepLabel>,
    /// Whether this alternative is the one the solution path continues with.
    pub preferred: bool,
    /// Whether a human wrote this step (rather than the model).
    pub human: bool,
}

/// A problem with a step-by-step solution whose steps carry labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLabelledSolution {
    pub prompt: String,
    /// Reference final answer, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// The solution path (one step per position).
    pub steps: Vec<LabelledStep>,
    /// Every rated alternative at each step position (`alternatives[i]` belongs to `steps[i]`);
    /// empty when the source has no alternatives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<Vec<StepAlternative>>,
}
