//! Loss aggregation (verl's `agg_loss`) that composes exactly across micro-batches.
//!
//! A trainer splits one optimizer step into micro-batches of uneven sizes and widths and
//! combines their losses as `Σ wᵢ·Lᵢ / Σ wᵢ`. [`aggregate`] returns each micro-batch's mean `Lᵢ`
//! with its weight `wᵢ` so that this combination equals the aggregate of the whole batch, for
//! every mode (the bug class of TRL #3021 / #5619 and verl #2776, where per-micro-batch means
//! were averaged with equal weights):
//!
//! | mode | `Lᵢ` | `wᵢ` |
//! |---|---|---|
//! | token-mean | `Σ m·x / Σ m` | `Σ m` (tokens) |
//! | seq-mean-token-sum | `Σ_s Σ_t m·x / n` | `n` (sequences) |
//! | seq-mean-token-mean | `Σ_s (Σ_t m·x / Σ_t m) / n` | `n` |
//! | seq-mean-token-sum-norm | `Σ_s (Σ_t m·x / L) / n` | `n` |
//!
//! `n` counts the sequences whose mask is not empty: an empty row contributes nothing and is
//! not counted, as verl's `agg_loss` excludes fully masked sequences. `L` is `norm_length`
//! (Dr. GRPO's constant normaliser, e.g. the recipe's maximum response length); when it is `None`
//! the mask's width `T` is used, as verl does — then micro-batches trimmed to different widths
//! do not compose exactly, so a trainer that splits should pass `norm_length`. A micro-batch with
//! nothing on its mask returns `(0, 0.0)`, the 0 still attached to the graph (zero gradient).
//!
//! seq-mean-token-sum-norm is a mean over sequences, as in the golden snapshot of verl
//! (2026-08-22) and Dr. GRPO; verl releases before it summed the sequences' normalised sums
//! without dividing by their count.

use rm_core::burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::AlgoError;
use super::error::invalid;

/// How a `[B, T]` per-token loss becomes one number (verl's `loss_agg_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossAggregation {
    /// Mean over every response token of the batch (DAPO's token-level loss).
    TokenMean,
    /// Mean over sequences of each sequence's token sum.
    SeqMeanTokenSum,
    /// Mean over sequences of each sequence's token mean (the original GRPO).
    SeqMeanTokenMean,
    /// Mean over sequences of each sequence's token sum divided by a constant length
    /// (Dr. GRPO, Liu et al. 2025).
    SeqMeanTokenSumNorm,
}

impl LossAggregation {
    /// verl's name of the mode (`token-mean`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::TokenMean => "token-mean",
            Self::SeqMeanTokenSum => "seq-mean-token-sum",
            Self::SeqMeanTokenMean => "seq-mean-token-mean",
            Self::SeqMeanTokenSumNorm => "seq-mean-token-sum-norm",
        }
    }
}

/// `values` with every entry off `mask` set to 0, then times the mask (verl's `masked_sum`
/// integrand: entries off the mask are ignored even when not finite).
pub(crate) fn masked(values: Tensor<2>, mask: &Tensor<2>) -> Tensor<2> {
    values.mask_fill(mask.clone().equal_elem(0.0), 0.0) * mask.clone()
}

/// verl's `masked_mean` over the whole tensor: `Σ m·x / (Σ m + 1e-8)`, shape `[1]`.
pub(crate) fn masked_mean(values: Tensor<2>, mask: &Tensor<2>) -> Tensor<1> {
    masked(values, mask).sum() / mask.clone().sum().add_scalar(1e-8)
}

/// Checks that `tensor` has shape `dims`.
pub(crate) fn same_shape(
    what: &'static str,
    array: &'static str,
    dims: [usize; 2],
    tensor: &Tensor<2>,
) -> Result<(), AlgoError> {
    let actual = tensor.dims();
    if actual == dims {
        Ok(())
    } else {
        Err(AlgoError::ShapeMismatch {
            what,
            array,
            expected: dims.to_vec(),
            actual: actual.to_vec(),
        })
    }
}

/// Aggregates a `[B, T]` per-token `values` over `mask` with `mode`; returns the micro-batch's
/// mean, shape `[1]`, and the weight it carries (see the module's table). Differentiable in
/// `values`. Errors: `mask` of another shape; `norm_length = Some(0)`.
pub fn aggregate(
    values: Tensor<2>,
    mask: Tensor<2>,
    mode: LossAggregation,
    norm_length: Option<usize>,
) -> Result<(Tensor<1>, f64), AlgoError> {
    let dims = values.dims();
    same_shape("aggregate", "mask", dims, &mask)?;
    if norm_length == Some(0) {
        return Err(invalid(
            "aggregate",
            "norm_length",
            0.0,
            "a positive length",
        ));
    }
    let lengths: Vec<f32> = mask.clone().sum_dim(1).into_data().iter::<f32>().collect();
    let tokens: f64 = lengths.iter().map(|&l| f64::from(l)).sum();
    let sequences = lengths.iter().filter(|&&l| l != 0.0).count();
    let weight = match mode {
        LossAggregation::TokenMean => tokens,
        _ => sequences as f64,
    };
    let per_token = masked(values, &mask);
    if weight == 0.0 {
        // 0, still attached to `values`' graph (a zero gradient, not a detached constant).
        return Ok((per_token.sum().mul_scalar(0.0), 0.0));
    }
    let loss = match mode {
        LossAggregation::TokenMean => per_token.sum().div_scalar(tokens),
        LossAggregation::SeqMeanTokenSum => per_token.sum().div_scalar(sequences as f64),
        LossAggregation::SeqMeanTokenMean => {
            let per_seq = per_token.sum_dim(1) / mask.sum_dim(1).clamp_min(1.0);
            per_seq.sum().div_scalar(sequences as f64)
        }
        LossAggregation::SeqMeanTokenSumNorm => {
            let length = norm_length.unwrap_or(dims[1]) as f64;
            per_token.sum().div_scalar(length * sequences as f64)
        }
    };
    Ok((loss, weight))
}
