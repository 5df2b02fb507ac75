//! Objectives on unpaired feedback: each completion is labelled desirable or undesirable on its
//! own, with no rejected counterpart. KTO, TRL's `apo_zero_unpaired` and BCO.
//!
//! Inputs are [`UnpairedLogps`] of the desirable (`N_D`) and the undesirable (`N_U`)
//! completions of a batch; either side may be empty, not both. `Δ = log π_θ(y|x) − log π_ref(y|x)`
//! per completion. Losses are means over all `N_D + N_U` completions, as TRL's `KTOTrainer` and
//! `BCOTrainer` take them.

use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;
use serde::{Deserialize, Serialize};

use crate::LossError;
use crate::checks::{in_range, positive, same_len};
use crate::pairwise::hard_nll;

/// Summed completion log-probs of `N` unpaired completions under the policy and the
/// reference, `[N]` each (`N` may be 0).
#[derive(Clone, Debug)]
pub struct UnpairedLogps {
    /// `log π_θ(y|x)`.
    pub policy: Tensor<1>,
    /// `log π_ref(y|x)`.
    pub reference: Tensor<1>,
}

impl UnpairedLogps {
    /// The completions' policy and reference log-probs.
    pub fn new(policy: Tensor<1>, reference: Tensor<1>) -> Self {
        Self { policy, reference }
    }

    fn len(&self) -> usize {
        self.policy.dims()[0]
    }

    fn check(&self, objective: &'static str, input: &'static str) -> Result<usize, LossError> {
        let n = self.len();
        same_len(objective, input, n, &self.reference)?;
        Ok(n)
    }

    /// `Δ = policy − reference`; the reference is a constant.
    fn log_ratio(self) -> Tensor<1> {
        self.policy - self.reference.detach()
    }
}

/// The hyper-parameters of KTO and `apo_zero_unpaired`, under TRL's `KTOConfig` names and
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KtoParams {
    /// `β > 0`.
    pub beta: f32,
    /// `λ_D ≥ 0`, the weight of the desirable completions' losses.
    pub desirable_weight: f32,
    /// `λ_U ≥ 0`, the weight of the undesirable completions' losses.
    pub undesirable_weight: f32,
}

impl Default for KtoParams {
    fn default() -> Self {
        Self {
            beta: 0.1,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
        }
    }
}

impl KtoParams {
    fn validate(&self, objective: &'static str) -> Result<(), LossError> {
        positive(objective, "beta", self.beta)?;
        for (parameter, w) in [
            ("desirable_weight", self.desirable_weight),
            ("undesirable_weight", self.undesirable_weight),
        ] {
            in_range(
                objective,
                parameter,
                w,
                0.0,
                f32::INFINITY,
                "a finite weight >= 0",
            )?;
        }
        Ok(())
    }
}

/// An unpaired loss and its implicit rewards.
#[derive(Clone, Debug)]
pub struct KtoOutput {
    /// The mean loss over all completions, `[1]`.
    pub loss: Tensor<1>,
    /// `β·Δ` of the desirable completions (detached); `None` when there are none.
    pub desirable_rewards: Option<Tensor<1>>,
    /// `β·Δ` of the undesirable completions (detached); `None` when there are none.
    pub undesirable_rewards: Option<Tensor<1>>,
    /// The reference point `z` (`[1]`, detached; 0 for `apo_zero_unpaired`).
    pub kl: Tensor<1>,
}

/// Checks both sides and returns `(N_D, N_U)`.
fn sides(
    objective: &'static str,
    desirable: &UnpairedLogps,
    undesirable: &UnpairedLogps,
) -> Result<(usize, usize), LossError> {
    let nd = desirable.check(objective, "desirable.reference")?;
    let nu = undesirable.check(objective, "undesirable.reference")?;
    if nd + nu == 0 {
        return Err(LossError::EmptyBatch { objective });
    }
    Ok((nd, nu))
}

/// `(Σ_D a + Σ_U b) / (N_D + N_U)` of the per-completion losses of the non-empty sides.
fn mean_over_all(parts: [Option<Tensor<1>>; 2], count: usize) -> Tensor<1> {
    let mut parts = parts.into_iter().flatten().map(Tensor::sum);
    let first = parts.next().expect("sides() rejects an empty batch");
    parts.fold(first, |a, b| a + b).div_scalar(count as f32)
}

/// The shared form of KTO and `apo_zero_unpaired` with reference point `z` (`[1]`, constant):
/// desirable `λ_D·(1 − σ(β(Δ − z)))`, undesirable `λ_U·(1 − σ(β(z − Δ)))`.
fn prospect_loss(
    objective: &'static str,
    desirable: UnpairedLogps,
    undesirable: UnpairedLogps,
    z: Tensor<1>,
    params: KtoParams,
) -> Result<KtoOutput, LossError> {
    params.validate(objective)?;
    let (nd, nu) = sides(objective, &desirable, &undesirable)?;
    let beta = params.beta;
    let mut rewards = [None, None];
    let mut losses = [None, None];
    for (i, (side, n, weight, sign)) in [
        (desirable, nd, params.desirable_weight, 1.0),
        (undesirable, nu, params.undesirable_weight, -1.0),
    ]
    .into_iter()
    .enumerate()
    {
        if n == 0 {
            continue;
        }
        let delta = side.log_ratio();
        rewards[i] = Some(delta.clone().detach().mul_scalar(beta));
        // 1 − σ(±β(Δ − z))
        let value = sigmoid((delta - z.clone()).mul_scalar(sign * beta));
        losses[i] = Some(value.neg().add_scalar(1.0).mul_scalar(weight));
    }
    let [desirable_rewards, undesirable_rewards] = rewards;
    Ok(KtoOutput {
        loss: mean_over_all(losses, nd + nu),
        desirable_rewards,
        undesirable_rewards,
        kl: z,
    })
}

/// KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
/// Eq. 7, as TRL's `KTOTrainer` computes it):
///
/// `L = (1/(N_D + N_U)) [ Σ_D λ_D·(1 − σ(β(Δ − z))) + Σ_U λ_U·(1 − σ(β(z − Δ))) ]`
///
/// with the reference point `z = max(0, mean_j (log π_θ(y'_j|x_j) − log π_ref(y'_j|x_j)))`, an
/// estimate of `KL(π_θ ‖ π_ref)` from mismatched pairs (`kl`: each prompt with another example's
/// completion; TRL shifts the batch's completions by one), detached as in the paper.
///
/// Errors: `β ≤ 0`, a negative weight; no completions; an empty `kl` sample; a side whose
/// `reference` is not as long as its `policy`.
pub fn kto_loss(
    desirable: UnpairedLogps,
    undesirable: UnpairedLogps,
    kl: UnpairedLogps,
    params: KtoParams,
) -> Result<KtoOutput, LossError> {
    const OBJECTIVE: &str = "kto";
    if kl.check(OBJECTIVE, "kl.reference")? == 0 {
        return Err(LossError::MissingInput {
            objective: OBJECTIVE,
            input: "kl (mismatched completions for the KL estimate)",
        });
    }
    let z = kl.log_ratio().mean().detach().clamp_min(0.0);
    prospect_loss(OBJECTIVE, desirable, undesirable, z, params)
}

/// TRL's `apo_zero_unpaired` (the unpaired form of APO-zero, D'Oosterlinck et al. 2024,
/// "Anchored Preference Optimization and Contrastive Revisions", Eq. 7): KTO with `z = 0`,
///
/// `L = (1/(N_D + N_U)) [ Σ_D λ_D·(1 − σ(β·Δ)) + Σ_U λ_U·σ(β·Δ) ]`
///
/// raising the likelihood of desirable completions and lowering that of undesirable ones.
///
/// Errors: `β ≤ 0`, a negative weight; no completions; a side whose `reference` is not as long
/// as its `policy`.
pub fn apo_zero_unpaired_loss(
    desirable: UnpairedLogps,
    undesirable: UnpairedLogps,
    params: KtoParams,
) -> Result<KtoOutput, LossError> {
    let side = if desirable.len() > 0 {
        &desirable
    } else {
        &undesirable
    };
    let z = side.policy.clone().sum().zeros_like();
    prospect_loss("apo-zero-unpaired", desirable, undesirable, z, params)
}

/// The BCO loss and what the trainer keeps for the next batch.
#[derive(Clone, Debug)]
pub struct BcoOutput {
    /// The mean loss over all completions, `[1]`.
    pub loss: Tensor<1>,
    /// `β·Δ` of the desirable completions (detached); `None` when there are none.
    pub desirable_rewards: Option<Tensor<1>>,
    /// `β·Δ` of the undesirable completions (detached); `None` when there are none.
    pub undesirable_rewards: Option<Tensor<1>>,
    /// The mean of this batch's rewards `β·Δ` over all completions (`[1]`, detached), to fold
    /// into the running mean `δ` ([`RunningMean::update`]).
    pub reward_mean: Tensor<1>,
    /// How many rewards `reward_mean` averages (`N_D + N_U`).
    pub count: usize,
}

/// BCO (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model
/// Alignment"): a logistic classifier of desirable vs undesirable on the implicit reward
/// `r = β·Δ`, shifted by `δ`,
///
/// `L = (1/(N_D + N_U)) [ Σ_D −log σ(r − δ) + Σ_U −log σ(−(r − δ)) ]`
///
/// where `δ` is the running mean of all rewards seen in training (the trainer's state: pass it
/// in, and fold this batch's `reward_mean` into it with [`RunningMean`]). TRL's `BCOTrainer`
/// folds the current batch in before computing the loss; a trainer that wants exactly that
/// ordering updates the mean from the batch's rewards first. The underlying-distribution
/// matching weights of BCO (a prompt classifier) are not included.
///
/// Errors: `β ≤ 0`; `δ` not finite; no completions; a side whose `reference` is not as long as
/// its `policy`.
pub fn bco_loss(
    desirable: UnpairedLogps,
    undesirable: UnpairedLogps,
    beta: f32,
    delta: f32,
) -> Result<BcoOutput, LossError> {
    const OBJECTIVE: &str = "bco";
    positive(OBJECTIVE, "beta", beta)?;
    crate::checks::finite(OBJECTIVE, "delta", delta)?;
    let (nd, nu) = sides(OBJECTIVE, &desirable, &undesirable)?;
    let mut rewards = [None, None];
    let mut losses = [None, None];
    for (i, (side, n, sign)) in [(desirable, nd, 1.0), (undesirable, nu, -1.0)]
        .into_iter()
        .enumerate()
    {
        if n == 0 {
            continue;
        }
        let r = side.log_ratio().mul_scalar(beta);
        rewards[i] = Some(r.clone().detach());
        losses[i] = Some(hard_nll(r.sub_scalar(delta).mul_scalar(sign)));
    }
    let reward_mean = mean_over_all(rewards.clone(), nd + nu);
    let [desirable_rewards, undesirable_rewards] = rewards;
    Ok(BcoOutput {
        loss: mean_over_all(losses, nd + nu),
        desirable_rewards,
        undesirable_rewards,
        reward_mean,
        count: nd + nu,
    })
}

/// A running mean over every value seen, weighted by count (TRL's `RunningMoments.mean`),
/// kept on the host by a trainer: BCO's reward shift `δ`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningMean {
    /// The mean so far (0 before any update).
    pub mean: f64,
    /// How many values it averages.
    pub count: u64,
}

impl RunningMean {
    /// Folds in a batch of `count` values whose mean is `batch_mean`; returns the new mean.
    pub fn update(&mut self, batch_mean: f64, count: usize) -> f64 {
        if count > 0 {
            let total = self.count + count as u64;
            self.mean += (batch_mean - self.mean) * count as f64 / total as f64;
            self.count = total;
        }
        self.mean
    }
}
