//! The one error type of the algorithms: every function checks its inputs and returns an
//! [`AlgoError`] instead of panicking.

/// What went wrong in an advantage estimator, a loss or an aggregation.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AlgoError {
    /// An input's shape differs from what the other inputs imply.
    #[error("{what}: `{array}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The estimator or loss that was called.
        what: &'static str,
        /// The offending input.
        array: &'static str,
        /// The shape the other inputs imply.
        expected: Vec<usize>,
        /// The shape it has.
        actual: Vec<usize>,
    },
    /// A row of a host-side `[B][T]` input is longer or shorter than the first row.
    #[error("{what}: row {row} of `{array}` has {len} entries, expected {expected}")]
    RaggedRows {
        /// The estimator or function that was called.
        what: &'static str,
        /// The offending input.
        array: &'static str,
        /// The index of the row.
        row: usize,
        /// Its length.
        len: usize,
        /// The width of the batch.
        expected: usize,
    },
    /// A hyper-parameter out of its range.
    #[error("{what}: invalid `{parameter}` = {value} (expected {expected})")]
    InvalidParameter {
        /// The estimator, loss or controller.
        what: &'static str,
        /// The parameter's name.
        parameter: &'static str,
        /// The value given.
        value: f64,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// An estimator needs an optional input that was not given (`values` for GAE,
    /// `reward_baselines` for ReMax).
    #[error("{what} needs `{input}`, which was not given")]
    MissingInput {
        /// The estimator.
        what: &'static str,
        /// The missing input.
        input: &'static str,
    },
    /// Whitening (mean 0, variance 1 over the response tokens of the batch) needs at least two
    /// response tokens; verl raises for the same batches.
    #[error("{what}: whitening needs at least 2 response tokens in the batch, got {tokens}")]
    TooFewTokens {
        /// The estimator.
        what: &'static str,
        /// Response tokens in the batch.
        tokens: usize,
    },
}

pub(crate) fn invalid(
    what: &'static str,
    parameter: &'static str,
    value: f64,
    expected: &'static str,
) -> AlgoError {
    AlgoError::InvalidParameter {
        what,
        parameter,
        value,
        expected,
    }
}
