//! PPO's clipped value loss (verl's `compute_value_loss`).

use rm_core::burn::tensor::Tensor;

use super::AlgoError;
use super::aggregation::{LossAggregation, aggregate, masked_mean, same_shape};
use super::error::invalid;

/// The value loss of one micro-batch.
#[derive(Clone, Debug)]
pub struct ValueLossOutput {
    /// The aggregate, shape `[1]`.
    pub loss: Tensor<1>,
    /// How many units `loss` is a mean over (see [`aggregate`]).
    pub weight: f64,
    /// Response tokens of the micro-batch (`Σ mask`), the weight that combines `clipfrac`.
    pub tokens: f64,
    /// verl's `critic/vf_clipfrac`: the fraction of tokens where the clipped term is the larger,
    /// shape `[1]`.
    pub clipfrac: Tensor<1>,
}

/// The clipped value loss (Schulman et al. 2017, PPO; as in TRL and verl):
/// `v̂_t = clip(v_t, V_t − c, V_t + c)`, `L_t = ½·max((v_t − R_t)², (v̂_t − R_t)²)`, aggregated
/// with `aggregation`. `vpreds` are the critic's new predictions (differentiable), `values` the
/// rollout's values and `returns` the targets (constants). Errors: `cliprange_value` negative or
/// not finite; inputs of different shapes.
pub fn clipped_value_loss(
    vpreds: Tensor<2>,
    values: Tensor<2>,
    returns: Tensor<2>,
    response_mask: Tensor<2>,
    cliprange_value: f64,
    aggregation: LossAggregation,
    norm_length: Option<usize>,
) -> Result<ValueLossOutput, AlgoError> {
    const WHAT: &str = "value_loss";
    if !(cliprange_value.is_finite() && cliprange_value >= 0.0) {
        return Err(invalid(
            WHAT,
            "cliprange_value",
            cliprange_value,
            "a finite value >= 0",
        ));
    }
    let dims = vpreds.dims();
    same_shape(WHAT, "values", dims, &values)?;
    same_shape(WHAT, "returns", dims, &returns)?;
    same_shape(WHAT, "response_mask", dims, &response_mask)?;
    let values = values.detach();
    let returns = returns.detach();
    let mask = response_mask.detach();
    let clipped = vpreds
        .clone()
        .min_pair(values.clone().add_scalar(cliprange_value))
        .max_pair(values.sub_scalar(cliprange_value));
    let l1 = (vpreds - returns.clone()).square();
    let l2 = (clipped - returns).square();
    let clipfrac = masked_mean(l2.clone().greater(l1.clone()).float(), &mask).detach();
    let tokens = f64::from(mask.clone().sum().into_scalar::<f32>());
    let (loss, weight) = aggregate(l1.max_pair(l2), mask, aggregation, norm_length)?;
    Ok(ValueLossOutput {
        loss: loss.mul_scalar(0.5),
        weight,
        tokens,
        clipfrac,
    })
}
