//! Shape and hyper-parameter checks shared by the objectives.

use burn::tensor::Tensor;

use crate::LossError;

/// Checks a batch of `[N]` chosen/rejected scores: non-empty and equally long. Returns `N`.
pub(crate) fn pair_len(
    objective: &'static str,
    chosen: &Tensor<1>,
    rejected: &Tensor<1>,
) -> Result<usize, LossError> {
    let [n] = chosen.dims();
    if n == 0 {
        return Err(LossError::EmptyBatch { objective });
    }
    same_len(objective, "rejected", n, rejected)?;
    Ok(n)
}

/// Checks that a per-pair input has length `n`.
pub(crate) fn same_len(
    objective: &'static str,
    input: &'static str,
    n: usize,
    tensor: &Tensor<1>,
) -> Result<(), LossError> {
    let [m] = tensor.dims();
    if m != n {
        return Err(LossError::ShapeMismatch {
            objective,
            input,
            expected: vec![n],
            actual: vec![m],
        });
    }
    Ok(())
}

/// Checks `lo <= value < hi`, rejecting NaN and infinities.
pub(crate) fn in_range(
    objective: &'static str,
    parameter: &'static str,
    value: f32,
    lo: f32,
    hi: f32,
    expected: &'static str,
) -> Result<(), LossError> {
    if value.is_finite() && value >= lo && value < hi {
        Ok(())
    } else {
        Err(LossError::InvalidParameter {
            objective,
            parameter,
            value,
            expected,
        })
    }
}

/// Checks that a matrix input has shape `expected`.
pub(crate) fn same_shape(
    objective: &'static str,
    input: &'static str,
    expected: [usize; 2],
    tensor: &Tensor<2>,
) -> Result<(), LossError> {
    let actual = tensor.dims();
    if actual != expected {
        return Err(LossError::ShapeMismatch {
            objective,
            input,
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

/// Checks that a hyper-parameter is finite and `> 0`.
pub(crate) fn positive(
    objective: &'static str,
    parameter: &'static str,
    value: f32,
) -> Result<(), LossError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(LossError::InvalidParameter {
            objective,
            parameter,
            value,
            expected: "a finite value > 0",
        })
    }
}

/// Checks that a hyper-parameter is finite.
pub(crate) fn finite(
    objective: &'static str,
    parameter: &'static str,
    value: f32,
) -> Result<(), LossError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(LossError::InvalidParameter {
            objective,
            parameter,
            value,
            expected: "a finite value",
        })
    }
}

/// Reads a (constant, data-valued) input to the host as `f32`s, for checks and for
/// index computations that need its values.
pub(crate) fn host_values<const D: usize>(
    objective: &'static str,
    input: &'static str,
    tensor: &Tensor<D>,
) -> Result<Vec<f32>, LossError> {
    tensor
        .try_to_vec_as::<f32>()
        .map_err(|e| LossError::InvalidInput {
            objective,
            input,
            reason: format!("could not be read back: {e}"),
        })
}
