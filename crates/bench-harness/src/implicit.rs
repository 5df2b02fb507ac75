//! Implicit rewards of DPO policies, as reward-bench's `DPOInference` computes them
//! (`rewardbench/dpo.py`, `get_batch_logps` and `inference_step`). Only response tokens count
//! (prompt tokens are masked out); the model side that computes the log-probs lives elsewhere.
//!
//! - [`ImplicitRewardMode::Reference`]: `Σ log π(y|x) − Σ log π_ref(y|x)` (reward-bench uses the
//!   log-ratio without β, which does not change any ranking);
//! - reference-free [`ImplicitRewardMode::Sum`]: `Σ log π`;
//! - [`ImplicitRewardMode::Avg`]: `Σ log π / n` (n = response tokens);
//! - [`ImplicitRewardMode::Norm`]: `−‖(log π_t)_t‖₂ = −sqrt(Σ_t (log π_t)²)`
//!   (`-torch.norm(per_token_logps * loss_mask, p=2, dim=-1)`, reward-bench's default
//!   `ref_free_norm`). It needs the sum of squared token log-probs, hence
//!   [`SequenceLogProbs::sum_squares`].

use serde::{Deserialize, Serialize};

/// How a DPO policy's log-probs become a reward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImplicitRewardMode {
    /// `Σ log π − Σ log π_ref`.
    Reference,
    /// `Σ log π`.
    Sum,
    /// `Σ log π / n`.
    Avg,
    /// `−sqrt(Σ (log π_t)²)`.
    Norm,
}

/// Log-probs of one response under one model, summed over its tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SequenceLogProbs {
    /// Σ_t log p_t.
    pub sum: f64,
    /// Σ_t (log p_t)²; needed by [`ImplicitRewardMode::Norm`] only.
    pub sum_squares: f64,
    /// Number of response tokens.
    pub tokens: usize,
}

impl SequenceLogProbs {
    /// From the per-token log-probs of the response.
    pub fn from_token_logps(logps: &[f32]) -> Self {
        let (sum, sum_squares) = logps.iter().fold((0.0, 0.0), |(s, q), &x| {
            let x = f64::from(x);
            (s + x, q + x * x)
        });
        Self {
            sum,
            sum_squares,
            tokens: logps.len(),
        }
    }
}

/// Why an implicit reward could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImplicitRewardError {
    #[error("the reference mode needs the reference model's log-probs")]
    MissingReference,
    #[error("the {0:?} mode is reference-free but reference log-probs were given")]
    UnexpectedReference(ImplicitRewardMode),
    #[error("the avg mode needs at least one response token")]
    NoTokens,
}

/// The implicit reward of one response.
pub fn implicit_reward(
    mode: ImplicitRewardMode,
    policy: &SequenceLogProbs,
    reference: Option<&SequenceLogProbs>,
) -> Result<f32, ImplicitRewardError> {
    if mode != ImplicitRewardMode::Reference && reference.is_some() {
        return Err(ImplicitRewardError::UnexpectedReference(mode));
    }
    let r = match mode {
        ImplicitRewardMode::Reference => {
            policy.sum - reference.ok_or(ImplicitRewardError::MissingReference)?.sum
        }
        ImplicitRewardMode::Sum => policy.sum,
        ImplicitRewardMode::Avg => {
            if policy.tokens == 0 {
                return Err(ImplicitRewardError::NoTokens);
            }
            policy.sum / policy.tokens as f64
        }
        ImplicitRewardMode::Norm => -policy.sum_squares.max(0.0).sqrt(),
    };
    Ok(r as f32)
}

/// [`implicit_reward`] over a batch (`reference` empty for the reference-free modes).
pub fn implicit_rewards(
    mode: ImplicitRewardMode,
    policy: &[SequenceLogProbs],
    reference: &[SequenceLogProbs],
) -> Result<Vec<f32>, ImplicitRewardError> {
    if mode == ImplicitRewardMode::Reference && reference.len() != policy.len() {
        return Err(ImplicitRewardError::MissingReference);
    }
    if mode != ImplicitRewardMode::Reference && !reference.is_empty() {
        return Err(ImplicitRewardError::UnexpectedReference(mode));
    }
    policy
        .iter()
        .enumerate()
        .map(|(i, p)| implicit_reward(mode, p, reference.get(i)))
        .collect()
}
