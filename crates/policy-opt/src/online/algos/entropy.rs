//! Per-token entropy of the policy's next-token distribution.

use rm_core::burn::tensor::Tensor;
use rm_core::burn::tensor::activation::log_softmax;

/// `H_t = −Σ_v p_v log p_v` with `p = softmax(logits_t)`, for logits `[B, T, V]`; returns
/// `[B, T]`. Computed from the log-softmax (shifted by the row maximum inside burn), so large
/// logits neither overflow nor lose precision; differentiable in the logits. Logits must be
/// finite (a `−∞` logit would give `0·(−∞)`).
pub fn token_entropy(logits: Tensor<3>) -> Tensor<2> {
    let log_p = log_softmax(logits, 2);
    (log_p.clone().exp() * log_p)
        .sum_dim(2)
        .neg()
        .squeeze_dim(2)
}
