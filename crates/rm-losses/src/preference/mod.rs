//! Preference optimisation of a policy directly from preference data: the DPO family.
//!
//! Inputs are log-probabilities of completions `y` given their prompt `x`: the policy's
//! `log π_θ(y|x) = Σ_t log π_θ(y_t | x, y_<t)`, summed over the completion's tokens, and the
//! frozen reference policy's `log π_ref(y|x)`. Notation shared by every objective here:
//!
//! - `pc`, `pr`: the policy's log-probs of the chosen and the rejected completion of a pair;
//! - `qc`, `qr`: the reference's; `Δc = pc − qc`, `Δr = pr − qr` (the implicit rewards `β·Δ`);
//! - `|y|`: a completion's number of tokens; `ε`: label smoothing; `σ`: the logistic sigmoid,
//!   `log σ` evaluated stably (burn's `log_sigmoid`).
//!
//! Modules:
//! - [`dpo`]: TRL's `DPOTrainer` losses (15 loss types, combinable with weights, f-divergence
//!   scores, LD-DPO, WPO weighting) from per-token log-probs, behind one serde config
//!   ([`DpoConfig`]), plus the TR-DPO reference refresh;
//! - [`unpaired`]: objectives on unpaired desirable/undesirable completions (KTO, APO-zero
//!   unpaired, BCO);
//! - [`reference_free`]: objectives without a reference model (ORPO, CPO, SimPO, AlphaPO) and
//!   RPO (DPO plus a likelihood term);
//! - [`pro`]: PRO, listwise ranking of a policy's responses with reward-gap temperatures and an
//!   SFT term;
//! - [`dno`]: Direct Nash Optimization (the regression objective, DNO-Prct, win-rates and the
//!   best/worst pair selection from an oracle's preferences);
//! - [`selm`]: SELM, DPO plus an optimism term on the reference's own samples;
//! - [`scir`]: SCIR, the implicit reward and a generative judgment of the same policy trained
//!   to agree, DPO on the pairs where they do;
//! - [`token_level`]: token-level credit assignment (T-REG, RRPO, AlignDistil);
//! - [`offline_pg`]: offline policy gradients on scored samples (CoPG, A-LoL and its variants);
//! - [`filtering`]: reward-ranked selection and SFT (RAFT, SuperHF) and reward-augmented DPO's
//!   relabelling of scored pairs.
//!
//! Sequence-level inputs are [`Completions`]: summed log-probs with completion lengths, built
//! from per-token log-probs by [`Completions::from_tokens`].

pub mod dno;
pub mod dpo;
pub mod filtering;
pub mod offline_pg;
pub mod pro;
pub mod reference_free;
pub mod scir;
pub mod selm;
pub mod token_level;
pub mod unpaired;

use burn::tensor::Tensor;

pub use dno::{dno_loss, dno_prct_loss, dno_select_pairs, dno_win_rates};
pub use dpo::{
    DpoBatch, DpoConfig, DpoLossType, DpoOutput, FDivergence, dpo_loss, refresh_reference,
};
pub use filtering::{
    PreferencePair, RaftKeep, ScoredPair, condition_on_score, raft_select, reward_augment,
    score_instruction, superhf_loss,
};
pub use offline_pg::{AlolVariant, ScoredSamples, alol_loss, copg_loss};
pub use pro::pro_loss;
pub use reference_free::{alphapo_loss, cpo_loss, orpo_loss, rpo_loss, simpo_loss};
pub use scir::{debiased_judgment, scir_agreement, scir_consistency_loss};
pub use selm::selm_loss;
pub use token_level::{
    AlignDistilParams, RrpoBatch, RrpoOutput, TokenLogps, aligndistil_loss, rrpo_loss, treg_loss,
};
pub use unpaired::{
    BcoOutput, KtoOutput, KtoParams, RunningMean, UnpairedLogps, apo_zero_unpaired_loss, bco_loss,
    kto_loss,
};

use crate::LossError;
use crate::checks::{same_len, same_shape};

/// `N` completions at sequence level: summed log-probs `log π(y|x)` (`[N]`) and lengths `|y|`
/// (`[N]`, completion token counts).
#[derive(Clone, Debug)]
pub struct Completions {
    /// `log π(y|x)`, summed over each completion's tokens.
    pub logps: Tensor<1>,
    /// `|y|`, the number of completion tokens of each sequence.
    pub lengths: Tensor<1>,
}

impl Completions {
    /// Completions from their summed log-probs and lengths.
    ///
    /// Errors: no completions; `lengths` not as long as `logps`.
    pub fn new(logps: Tensor<1>, lengths: Tensor<1>) -> Result<Self, LossError> {
        let [n] = logps.dims();
        if n == 0 {
            return Err(LossError::EmptyBatch {
                objective: "completions",
            });
        }
        same_len("completions", "lengths", n, &lengths)?;
        Ok(Self { logps, lengths })
    }

    /// Completions from per-token log-probs `[N, L]` and a mask `[N, L]` aligned with them
    /// (non-zero on completion tokens): `logps = Σ_t m_t·log π_t`, `lengths = Σ_t m_t`. Tokens off
    /// the mask are ignored even when they hold `−∞` or NaN.
    ///
    /// Errors: `N = 0`; a mask of another shape.
    pub fn from_tokens(per_token: Tensor<2>, mask: Tensor<2>) -> Result<Self, LossError> {
        let dims = per_token.dims();
        if dims[0] == 0 {
            return Err(LossError::EmptyBatch {
                objective: "completions",
            });
        }
        same_shape("completions", "mask", dims, &mask)?;
        let logps = row_sum(masked(per_token, &mask));
        let lengths = row_sum(mask.not_equal_elem(0.0).float());
        Ok(Self { logps, lengths })
    }

    /// The number of completions `N`.
    pub fn len(&self) -> usize {
        self.logps.dims()[0]
    }

    /// Always false: [`Completions`] are never empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length-averaged log-probs `log π(y|x) / |y|` (`|y|` clamped at 1).
    pub fn mean_logps(&self) -> Tensor<1> {
        self.logps.clone() / self.lengths.clone().clamp_min(1.0)
    }

    /// The token-level negative log-likelihood `−Σ_i log π(y_i|x) / Σ_i |y_i|` (the mean
    /// cross-entropy over every completion token of the batch, as `F.cross_entropy` over the
    /// masked tokens computes it; the token count is clamped at 1), a `[1]` tensor.
    pub fn nll(&self) -> Tensor<1> {
        self.logps.clone().sum().neg() / self.lengths.clone().sum().clamp_min(1.0)
    }
}

/// `per_token` with every entry off `mask` (where the mask is 0) set to 0.
pub(crate) fn masked(per_token: Tensor<2>, mask: &Tensor<2>) -> Tensor<2> {
    per_token.mask_fill(mask.clone().equal_elem(0.0), 0.0)
}

/// The sums of the rows of `[N, L]`, as `[N]`.
pub(crate) fn row_sum(t: Tensor<2>) -> Tensor<1> {
    t.sum_dim(1).squeeze_dim(1)
}

/// Checks a pair of `[B]` chosen/rejected completions: non-empty and equally long. Returns `B`.
pub(crate) fn pair_completions(
    objective: &'static str,
    chosen: &Completions,
    rejected: &Completions,
) -> Result<usize, LossError> {
    let n = chosen.len();
    if n == 0 {
        return Err(LossError::EmptyBatch { objective });
    }
    same_len(objective, "chosen.lengths", n, &chosen.lengths)?;
    same_len(objective, "rejected.logps", n, &rejected.logps)?;
    same_len(objective, "rejected.lengths", n, &rejected.lengths)?;
    Ok(n)
}
