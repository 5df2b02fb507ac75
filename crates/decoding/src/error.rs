//! The crate's typed error.

use std::path::PathBuf;

/// What can go wrong while decoding.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A strategy parameter out of range: names the field.
    #[error("{field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// Nothing to decode.
    #[error("no prompts to decode: {0}")]
    EmptyInput(String),
    /// A prompt file row that cannot be read: names the file and line.
    #[error("{}:{line}: {reason}", path.display())]
    BadRow {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A file or folder that is missing or unreadable.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// The scorer failed or returned something unusable.
    #[error("scorer: {0}")]
    Scorer(String),
    /// The language model (loading, a forward pass, the tokenizer) failed.
    #[error("model: {0}")]
    Model(String),
}

impl DecodeError {
    /// Wraps an `anyhow` error of the model or tokenizer, its whole context chain kept.
    pub fn model(e: anyhow::Error) -> Self {
        Self::Model(format!("{e:#}"))
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, DecodeError>;
