//! The one error type of every objective in this crate.

/// Why an objective could not be evaluated. Every objective checks its inputs' shapes and its
/// hyper-parameters before touching a tensor, and reports a problem here instead of panicking.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LossError {
    /// The batch holds no pairs (or rankings): a mean over nothing is undefined.
    #[error("{objective}: empty batch; a mean loss over zero examples is undefined")]
    EmptyBatch { objective: &'static str },

    /// An input's shape disagrees with the shape the other inputs imply.
    #[error("{objective}: `{input}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        objective: &'static str,
        input: &'static str,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    /// Preference embeddings must pair up into 2-d blocks: their width must be even and > 0.
    #[error("{objective}: preference embeddings have width {width}; expected an even width > 0")]
    OddEmbeddingWidth {
        objective: &'static str,
        width: usize,
    },

    /// The objective needs an input the batch does not carry (a margin, a soft label).
    #[error("{objective}: the batch carries no `{input}`, which this objective needs")]
    MissingInput {
        objective: &'static str,
        input: &'static str,
    },

    /// A hyper-parameter lies outside its meaningful range.
    #[error("{objective}: `{parameter}` = {value} is invalid; expected {expected}")]
    InvalidParameter {
        objective: &'static str,
        parameter: &'static str,
        value: f32,
        expected: &'static str,
    },

    /// An input's values break the objective's contract (an unsorted ranking, a NaN score, a
    /// selection asking for more samples than exist).
    #[error("{objective}: `{input}` is invalid: {reason}")]
    InvalidInput {
        objective: &'static str,
        input: &'static str,
        reason: String,
    },
}
