//! The online-RL recipe (`recipes/grpo-*.toml`, `plumb train-rl`): `[model]` (the policy, its
//! length limit, LoRA), `[data]` (prompt sources), `[rollout]` (how many prompts, completions
//! per prompt, sampling), `[algorithm]` (the advantage estimator, the policy loss and its
//! aggregation, the KL term — each chosen by name from [`super::algos`]), `[[reward]]` (the
//! reward functions of [`super::rewards`], weighted), `[train]`, `[eval]`.
//!
//! The algorithms are configurations of these parts, e.g. GRPO = `estimator = { name = "grpo" }`
//! with the `vanilla` clip loss and a k3 KL in the loss; Dr. GRPO = `scale = "none"` with
//! `seq-mean-token-sum-norm`; DAPO = clip-higher + `drop_uniform_groups` + the overlong length
//! reward; RLOO / REINFORCE++ / ReMax / OPO = their estimator; GSPO / CISPO = their loss.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rm_core::models::policy_folder::PolicyModelConfig;
use rm_core::sampling::SamplingConfig;
use rm_core::train::{RolloutConfig, TrainConfig};
use serde::{Deserialize, Serialize};

use super::algos::{
    AdvantageEstimator, CalibrationTransform, ComponentAggregation, KlControllerConfig,
    KlEstimator, LossAggregation, P3oClip, PolicyLoss,
};
use super::prompts::PromptSource;
use super::rewards::RewardComponentConfig;

/// The `[data]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlDataConfig {
    pub train: PromptSource,
    pub eval: PromptSource,
    /// Appended to every GSM8K question (after a blank line), e.g. how to state the answer.
    #[serde(default)]
    pub instruction: Option<String>,
}

/// The `[rollout]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlRolloutConfig {
    /// Collections (each followed by `ppo_epochs` passes over its buffer).
    pub iterations: u64,
    /// Passes over each buffer.
    #[serde(default = "one")]
    pub ppo_epochs: usize,
    /// Prompts per collection (taken in a seeded order that visits every prompt once per pass
    /// over the training prompts).
    pub prompts_per_iteration: usize,
    /// Completions per prompt (`G`): the group the estimators compare within.
    pub group_size: usize,
    /// Rows per generation batch.
    #[serde(default = "generation_batch")]
    pub generation_batch: usize,
    /// How completions are sampled (stop tokens are added from the tokenizer unless
    /// `stop_at_eos = false`).
    pub sampling: SamplingConfig,
    /// End completions at the tokenizer's end-of-sequence / end-of-turn tokens (default). Off,
    /// every completion runs to `max_new_tokens` (benchmarks use it for equal work on both
    /// sides).
    #[serde(default = "yes")]
    pub stop_at_eos: bool,
    /// Completions that hit `max_new_tokens` without stopping get no loss (DAPO, TRL's
    /// `mask_truncated_completions`).
    #[serde(default)]
    pub mask_truncated_completions: bool,
    /// Groups whose rewards are all equal (no learning signal under group-relative estimators)
    /// get no loss: DAPO's dynamic sampling, by masking instead of re-sampling so every
    /// iteration's buffer has the same size.
    #[serde(default)]
    pub drop_uniform_groups: bool,
    /// PF-PPO's policy filtration: only the best and the worst (or a random other) completion
    /// of each group keep their loss (see [`super::filtration::policy_filtration`]).
    #[serde(default)]
    pub policy_filtration: PolicyFiltration,
    /// The correction for a sampler whose distribution differs from the policy's.
    #[serde(default)]
    pub importance_correction: super::importance::ImportanceCorrection,
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

fn generation_batch() -> usize {
    16
}

/// `rollout.policy_filtration`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyFiltration {
    /// Every completion trains.
    #[default]
    None,
    /// The best- and the worst-rewarded completion of each group.
    BestWorst,
    /// The best-rewarded one and a random other one.
    BestRandom,
}

/// Where the KL to the reference enters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlPlacement {
    /// Added to the loss, `coef · agg(kl)` (GRPO, verl's `use_kl_loss`).
    #[default]
    Loss,
    /// Subtracted from the token rewards before the advantages, `r_t − coef·kl_t` (PPO as in
    /// Ouyang et al. 2022, verl's `use_kl_in_reward`).
    Reward,
}

/// The KL term of `[algorithm]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KlConfig {
    #[serde(default = "k3")]
    pub estimator: KlEstimator,
    #[serde(default)]
    pub placement: KlPlacement,
    /// A fixed coefficient (shorthand for `controller = { kind = "fixed", coef = … }`).
    #[serde(default)]
    pub coef: Option<f64>,
    #[serde(default)]
    pub controller: Option<KlControllerConfig>,
}

fn k3() -> KlEstimator {
    KlEstimator::K3
}

impl Default for KlConfig {
    fn default() -> Self {
        Self {
            estimator: k3(),
            placement: KlPlacement::Loss,
            coef: Some(0.0),
            controller: None,
        }
    }
}

impl KlConfig {
    /// The controller the coefficient comes from.
    pub fn controller(&self) -> Result<KlControllerConfig> {
        match (&self.coef, &self.controller) {
            (Some(_), Some(_)) => {
                bail!("algorithm.kl: give either coef or controller, not both")
            }
            (Some(coef), None) => {
                if !(coef.is_finite() && *coef >= 0.0) {
                    bail!("algorithm.kl.coef must be a finite number ≥ 0, got {coef}");
                }
                Ok(KlControllerConfig::Fixed { coef: *coef })
            }
            (None, Some(c)) => Ok(c.clone()),
            (None, None) => Ok(KlControllerConfig::Fixed { coef: 0.0 }),
        }
    }

    /// Whether a reference policy is needed (a coefficient that can be non-zero).
    pub fn active(&self) -> bool {
        !matches!(self.controller(), Ok(KlControllerConfig::Fixed { coef }) if coef == 0.0)
    }
}

/// The `[algorithm]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmConfig {
    /// Default GRPO (group std scaling).
    #[serde(default = "grpo")]
    pub estimator: AdvantageEstimator,
    /// Default the PPO clip loss with ε 0.2 on both sides.
    #[serde(default = "ppo_clip")]
    pub policy_loss: PolicyLoss,
    #[serde(default = "token_mean")]
    pub loss_aggregation: LossAggregation,
    #[serde(default)]
    pub kl: KlConfig,
    /// Entropy bonus: the loss gets `− coef · agg(entropy)`.
    #[serde(default)]
    pub entropy_coef: f64,
    /// How several `[[reward]]` components become one sequence reward: their weighted sum
    /// (default), or each normalised within its group first and then weighted and summed
    /// (`normalize_then_sum`: GDPO's multi-objective GRPO).
    #[serde(default)]
    pub reward_aggregation: ComponentAggregation,
    /// Constrained RLHF: reward components held to a threshold by a Lagrange multiplier each
    /// (see [`ConstraintConfig`]).
    #[serde(default)]
    pub constraints: Vec<ConstraintConfig>,
    /// PPO's critic: a value head on the policy's hidden states (shared backbone) or on a
    /// separate value model's (`model`), trained with the clipped value loss; needed by (and only
    /// used by) `estimator = { name = "gae" }`.
    #[serde(default)]
    pub critic: Option<CriticConfig>,
    /// Online (iterative) DPO instead of a policy gradient: see [`OnlineDpoConfig`].
    #[serde(default)]
    pub online_dpo: Option<OnlineDpoConfig>,
    /// InfAlign's calibrate-and-transform of one reward component: see [`CalibrationConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationConfig>,
    /// P3O instead of a per-row policy gradient: see [`P3oConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p3o: Option<P3oConfig>,
    /// A Preference Orchestrator folder (`plumb orchestrate`, [`super::orchestrate`]): the
    /// components are weighed per prompt, a completion's reward becoming
    /// `Σ_i w_i · v_i(x) · z_i(r_i)` (the orchestrator's weights `v(x)` and standardization `z`
    /// times the components' own weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<PathBuf>,
    /// PRIME's implicit process reward model, updated online on the rollouts' outcome labels
    /// ([`super::implicit_prm`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit_prm: Option<super::implicit_prm::ImplicitPrmConfig>,
}

/// How online DPO picks each prompt's pair among its completions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairLabel {
    /// By the `[[reward]]` total: the best as chosen, the worst as rejected (online DPO with a
    /// reward model as the labeller: Guo et al. 2024, "Direct Language Model Alignment from
    /// Online AI Feedback"; iterative DPO: Xiong et al. 2024).
    #[default]
    Reward,
    /// By the policy's own implicit reward `β·Σ_t (log π_old − log π_ref)` (self-rewarding,
    /// Yuan et al. 2024, with the implicit reward as the judge as in CREAM, Wang et al. 2025;
    /// `cream = true` adds CREAM's cross-iteration consistency regulariser). The policy must
    /// differ from its reference at the start, or every reward is 0: start from a trained
    /// policy folder (its LoRA adapters continue, the reference is its base).
    Implicit,
    /// DNO-Prct's pair (Rosset et al. 2024, "Direct Nash Optimization", Algorithm 2): the
    /// `[[reward]]` totals act as a Bradley–Terry preference oracle, `P(y_i ≻ y_j) =
    /// σ(r_i − r_j)`; each completion's win-rate against the others of its group is
    /// `r(y_i) = mean_{j≠i} P(y_i ≻ y_j)`, and the best and worst by win-rate form the pair when
    /// their win-rates differ by at least `min_gap`.
    WinRate,
}

/// Which log-probs anchor online DPO's log-ratios `Δ = log π − log π_anchor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnlineDpoReference {
    /// The reference policy (the policy before training).
    #[default]
    Initial,
    /// The previous iterate `π_t`, the policy that sampled the collection (its log-probs are
    /// the collection's old log-probs): DNO's mirror-descent step, so each iteration stays
    /// close to the last one rather than to the start. Needs no reference model.
    PreviousIterate,
}

/// `[algorithm.online_dpo]`: each collection samples `group_size` completions per prompt,
/// labels one (chosen, rejected) pair per prompt, and trains the DPO objective of
/// [`rm_losses::preference::DpoConfig`] (any of TRL's loss types, `beta`, …) on those pairs
/// against the reference; `estimator`, `policy_loss` and `loss_aggregation` are unused. A
/// prompt whose completions all tie gives no pair (no loss). Batches count pairs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineDpoConfig {
    #[serde(default)]
    pub label: PairLabel,
    #[serde(default)]
    pub dpo: rm_losses::preference::DpoConfig,
    /// What the log-ratios are taken against (DNO: `previous_iterate`).
    #[serde(default)]
    pub reference: OnlineDpoReference,
    /// `label = "win_rate"`: the least win-rate gap a pair needs (0 keeps every group whose
    /// completions do not all tie).
    #[serde(default)]
    pub min_gap: f32,
    /// CREAM (Wang et al. 2025, "CREAM: Consistency Regularized Self-Rewarding Language
    /// Models"), with `label = "implicit"`: each collection's completions are also ranked by
    /// the previous collection's policy; the consistency rate `C` (mean `(τ_b + 1)/2` of
    /// Kendall's τ-b between the two rankings per prompt,
    /// [`crate::online::algos::consistency`]) makes the loss `C·L(y_w, y_l) + (1 − C)·L(y_l,
    /// y_w)`. The first collection has no previous iterate and trains with `C = 1`. The
    /// previous iterate is part of every checkpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cream: bool,
    /// SCIR (Zhou et al. 2025, "Self-Consistency of the Internal Reward Models Improves
    /// Self-Rewarding Language Models"), with `label = "implicit"`: the policy also judges each
    /// pair as an LLM judge; the consistency loss `λ·L_con` pulls its implicit and generative
    /// judgments together and DPO trains only the pairs where they agree, labelled by that
    /// agreement ([`crate::online::scir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scir: Option<super::scir::ScirConfig>,
}

impl OnlineDpoConfig {
    /// Whether collections need the reference model's log-probs.
    pub fn needs_reference(&self) -> bool {
        self.reference == OnlineDpoReference::Initial || self.label == PairLabel::Implicit
    }
}

/// `[algorithm.calibration]`: InfAlign (Balashankar et al. 2024, "InfAlign: Inference-aware
/// language model alignment", [`crate::online::algos::calibration`]). The first time a training
/// prompt is drawn, `reference_samples` completions are sampled from the reference policy (with
/// the rollout's sampling settings, seeded by the prompt) and scored by `component`; from then
/// on that component's value of every completion of the prompt is replaced by
/// `Φ(C)`, `C` its quantile among those reference rewards, and the total is re-weighted with
/// it. Evaluations report the raw rewards. The reference rewards are part of every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationConfig {
    /// The `[[reward]]` name of the calibrated component.
    pub component: String,
    /// Reference samples per prompt (`M ≥ 1`; default 8).
    #[serde(default = "reference_samples")]
    pub reference_samples: usize,
    /// `Φ` (default `{ kind = "exp", t = 2.0 }`: best-of-N inference).
    #[serde(default = "exp_transform")]
    pub transform: CalibrationTransform,
}

fn reference_samples() -> usize {
    8
}

fn exp_transform() -> CalibrationTransform {
    CalibrationTransform::Exp { t: 2.0 }
}

/// `[algorithm.p3o]`: Pairwise Proximal Policy Optimization (Wu et al. 2023, "Pairwise
/// Proximal Policy Optimization: Harnessing Relative Feedback for LLM Alignment"). Each
/// collection samples `group_size` completions per prompt; every pair `(y_i, y_j)` of a
/// prompt's included completions trains on the difference of their sequence rewards
/// `Δ = R_i − R_j` (the `[[reward]]` total, minus the KL penalty when `algorithm.kl` puts it in
/// the reward; process rewards included), with sequence-level importance ratios clipped
/// jointly or separately ([`crate::online::algos::pairwise`]). Only reward differences within a
/// prompt enter, so no baseline or value model is needed. `estimator`, `policy_loss` and
/// `loss_aggregation` are unused; batches count prompts, the loss is the mean over their pairs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P3oConfig {
    #[serde(default)]
    pub clip: P3oClip,
    /// ε of the clip range `[1 − ε, 1 + ε]` (default 0.2).
    #[serde(default = "p3o_clip_ratio")]
    pub clip_ratio: f64,
}

fn p3o_clip_ratio() -> f64 {
    0.2
}

/// Which side of its threshold a constrained component must stay on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintBound {
    /// `E[c] ≥ threshold`.
    AtLeast,
    /// `E[c] ≤ threshold` (e.g. a component reward past the point where it stops tracking
    /// quality: Moskovitz et al. 2024's proxy points).
    AtMost,
}

/// `[[algorithm.constraints]]`: constrained RLHF by the Lagrangian (Moskovitz et al. 2024,
/// "Confronting Reward Model Overoptimization with Constrained RLHF"; the primal-dual form of
/// Dai et al. 2024, "Safe RLHF"). The policy maximises `r + s·λ·c` with `s = +1` for
/// `at_least`, `−1` for `at_most`, where `r` is the weighted reward and `c` the constrained
/// component; after each collection the multiplier takes a projected dual step on the
/// violation, `λ ← max(0, λ + η·s·(threshold − mean c))`, so it grows while the constraint is
/// broken and decays to 0 once it holds. The multipliers are part of the checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstraintConfig {
    /// A `[[reward]]` component's name.
    pub component: String,
    pub bound: ConstraintBound,
    pub threshold: f64,
    /// The dual step size `η`.
    #[serde(default = "multiplier_lr")]
    pub multiplier_lr: f64,
    /// `λ` before the first collection.
    #[serde(default)]
    pub initial_multiplier: f64,
}

fn multiplier_lr() -> f64 {
    0.1
}

/// `[algorithm.critic]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticConfig {
    /// The value loss's weight in the total loss.
    #[serde(default = "vf_coef")]
    pub vf_coef: f64,
    /// How far a new value may move from the collection's before the clipped term takes over.
    #[serde(default = "cliprange_value")]
    pub cliprange_value: f64,
    /// A separate value model: a causal-LM folder with the policy's tokenizer (e.g. the
    /// policy's own base, or a smaller model of its family), every weight trained, its value head
    /// on its own hidden states. Absent: the head sits on the policy's hidden states (shared
    /// backbone). Saved beside the policy as `critic.safetensors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
}

fn vf_coef() -> f64 {
    0.1
}

fn cliprange_value() -> f64 {
    0.2
}

fn grpo() -> AdvantageEstimator {
    AdvantageEstimator::Grpo {
        scale: Default::default(),
        epsilon: 1e-6,
    }
}

fn ppo_clip() -> PolicyLoss {
    PolicyLoss::Vanilla {
        clip_ratio_low: 0.2,
        clip_ratio_high: 0.2,
        clip_ratio_c: None,
    }
}

fn token_mean() -> LossAggregation {
    LossAggregation::TokenMean
}

/// The `[eval]` section: held-out prompts sampled (greedy by default) and scored by the same
/// reward functions, every `train.eval_every` iterations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlEvalConfig {
    /// How evaluation samples; default greedy with the rollout's `max_new_tokens`.
    #[serde(default)]
    pub sampling: Option<SamplingConfig>,
    /// Rows per generation / scoring batch.
    #[serde(default = "generation_batch")]
    pub batch_size: usize,
}

impl Default for RlEvalConfig {
    fn default() -> Self {
        Self {
            sampling: None,
            batch_size: generation_batch(),
        }
    }
}

/// An online-RL training recipe.
///
/// ```toml
/// [model]
/// policy = "models/smollm2"
/// max_len = 384
/// lora = { rank = 16, alpha = 32.0, target_modules = ["q_proj", "v_proj"] }
///
/// [data]
/// train = { source = "gsm8k", split = "train", limit = 512 }
/// eval = { source = "gsm8k", split = "test", limit = 200 }
/// instruction = "End your answer with '#### <number>'."
///
/// [rollout]
/// iterations = 30
/// prompts_per_iteration = 8
/// group_size = 4
/// sampling = { max_new_tokens = 128, temperature = 1.0 }
///
/// [algorithm]
/// estimator = { name = "grpo" }
/// policy_loss = { name = "vanilla", clip_ratio_low = 0.2, clip_ratio_high = 0.28 }
/// kl = { estimator = "k3", coef = 0.001 }
///
/// [[reward]]
/// kind = "gsm8k"
///
/// [train]
/// batch_size = 32
/// micro_batch_size = 4
/// lr = 1e-5
/// out_dir = "runs/grpo-smollm2-gsm8k"
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlRecipe {
    pub model: PolicyModelConfig,
    pub data: RlDataConfig,
    pub rollout: RlRolloutConfig,
    pub algorithm: AlgorithmConfig,
    #[serde(rename = "reward")]
    pub rewards: Vec<RewardComponentConfig>,
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: RlEvalConfig,
}

impl RlRecipe {
    /// Whether collections compute the reference model's log-probs (a KL term, or online DPO
    /// anchored at the initial policy or labelling by the implicit reward).
    pub fn needs_reference(&self) -> bool {
        self.algorithm.kl.active()
            || self.algorithm.implicit_prm.is_some()
            || self
                .algorithm
                .online_dpo
                .as_ref()
                .is_some_and(OnlineDpoConfig::needs_reference)
    }

    /// The `[[reward]]` components' names (their `name`, else their kind), in order.
    pub fn component_names(&self) -> Vec<String> {
        self.rewards
            .iter()
            .map(|r| {
                r.name
                    .clone()
                    .unwrap_or_else(|| r.spec.kind_name().to_string())
            })
            .collect()
    }

    /// Reads a recipe file with `--set` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        rm_core::recipe::load(path, overrides)
    }

    /// The rollout driver's view of `[rollout]`.
    pub fn rollout_config(&self) -> RolloutConfig {
        RolloutConfig {
            iterations: self.rollout.iterations,
            ppo_epochs: self.rollout.ppo_epochs,
        }
    }

    /// Items in every buffer: prompts × group size rows, or one pair per prompt for online DPO.
    pub fn buffer_size(&self) -> usize {
        match (&self.algorithm.online_dpo, &self.algorithm.p3o) {
            (None, None) => self.rollout.prompts_per_iteration * self.rollout.group_size,
            _ => self.rollout.prompts_per_iteration,
        }
    }

    /// Checks every section and the combinations `train-rl` cannot run.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        self.rollout_config().validate()?;
        self.rollout
            .sampling
            .validate()
            .context("rollout.sampling")?;
        if let Some(s) = &self.eval.sampling {
            s.validate().context("eval.sampling")?;
        }
        let r = &self.rollout;
        if r.prompts_per_iteration == 0 || r.group_size == 0 || r.generation_batch == 0 {
            bail!(
                "rollout.prompts_per_iteration, rollout.group_size and rollout.generation_batch must be at least 1"
            );
        }
        if r.sampling.max_new_tokens == 0 {
            bail!("rollout.sampling.max_new_tokens must be at least 1");
        }
        if r.sampling.max_new_tokens + 1 >= self.model.max_len {
            bail!(
                "rollout.sampling.max_new_tokens {} leaves no room for the prompt in model.max_len {}",
                r.sampling.max_new_tokens,
                self.model.max_len
            );
        }
        if self.eval.batch_size == 0 {
            bail!("eval.batch_size must be at least 1");
        }
        if self.rewards.is_empty() {
            bail!("the recipe has no [[reward]] tables: online RL needs at least one reward");
        }
        if let AdvantageEstimator::ProcessRloo {
            credit: super::algos::CreditAssignment::Min,
        } = self.algorithm.estimator
            && self.algorithm.kl.active()
            && self.algorithm.kl.placement == KlPlacement::Reward
        {
            bail!(
                "algorithm.kl: placement = \"reward\" puts the KL on every token, but the min-form credit of estimator \"process_rloo\" reads only the step-end tokens; use placement = \"loss\""
            );
        }
        let gae = matches!(self.algorithm.estimator, AdvantageEstimator::Gae { .. });
        match (&self.algorithm.critic, gae) {
            (None, true) => bail!(
                "algorithm.estimator \"gae\" needs a value model: add [algorithm.critic] (vf_coef, cliprange_value), or use a critic-free estimator (grpo, rloo, reinforce_plus_plus, reinforce_plus_plus_baseline, remax, opo)"
            ),
            (Some(_), false) => bail!(
                "[algorithm.critic] is only used by estimator \"gae\"; {} needs no value model — remove the critic",
                self.algorithm.estimator.name()
            ),
            (Some(c), true) => {
                if !(c.vf_coef.is_finite() && c.vf_coef > 0.0) {
                    bail!(
                        "algorithm.critic.vf_coef must be a finite number > 0, got {}",
                        c.vf_coef
                    );
                }
                if !(c.cliprange_value.is_finite() && c.cliprange_value > 0.0) {
                    bail!(
                        "algorithm.critic.cliprange_value must be a finite number > 0, got {}",
                        c.cliprange_value
                    );
                }
            }
            (None, false) => {}
        }
        if self.buffer_size() < self.train.batch_size {
            bail!(
                "train.batch_size {} exceeds the rollout buffer of {} {}",
                self.train.batch_size,
                self.buffer_size(),
                match self.algorithm.online_dpo {
                    Some(_) => "pairs (one per prompt: prompts_per_iteration)",
                    None => "rows (prompts_per_iteration × group_size)",
                }
            );
        }
        if let Some(o) = &self.algorithm.online_dpo {
            o.dpo.validate().context("algorithm.online_dpo.dpo")?;
            if self.rollout.group_size < 2 {
                bail!("algorithm.online_dpo needs rollout.group_size ≥ 2 to form pairs");
            }
            if self.algorithm.critic.is_some() || self.algorithm.entropy_coef > 0.0 {
                bail!(
                    "algorithm.online_dpo trains the DPO objective: remove [algorithm.critic] and entropy_coef"
                );
            }
            if o.dpo.sync_ref_model {
                bail!("algorithm.online_dpo: sync_ref_model (TR-DPO) is not supported online");
            }
            if !(o.min_gap.is_finite() && o.min_gap >= 0.0) {
                bail!(
                    "algorithm.online_dpo.min_gap must be finite and ≥ 0, got {}",
                    o.min_gap
                );
            }
            if o.min_gap > 0.0 && o.label != PairLabel::WinRate {
                bail!(
                    "algorithm.online_dpo.min_gap is a win-rate gap: it applies to label = \"win_rate\" only"
                );
            }
            if let Some(scir) = &o.scir {
                scir.validate().context("algorithm.online_dpo.scir")?;
                if o.label != PairLabel::Implicit {
                    bail!(
                        "algorithm.online_dpo.scir makes the policy's own reward models agree: set label = \"implicit\""
                    );
                }
                if o.cream {
                    bail!(
                        "algorithm.online_dpo: scir and cream both regularise the self-rewarding labels; use one"
                    );
                }
            }
            if o.cream && o.label != PairLabel::Implicit {
                bail!(
                    "algorithm.online_dpo.cream regularises the policy's own (implicit) labels: set label = \"implicit\""
                );
            }
            if o.label == PairLabel::Implicit && o.reference == OnlineDpoReference::PreviousIterate
            {
                bail!(
                    "algorithm.online_dpo: label = \"implicit\" with reference = \"previous_iterate\" would rank every completion at 0 (the previous iterate is the sampler); use reference = \"initial\""
                );
            }
            if o.label == PairLabel::Implicit
                && !self
                    .model
                    .policy
                    .join(rm_core::models::policy_folder::POLICY_SPEC_FILE)
                    .is_file()
            {
                bail!(
                    "algorithm.online_dpo: label = \"implicit\" ranks by β·Σ(log π − log π_ref), which is 0 for every completion while the policy is still its reference; set model.policy to a trained policy folder (a train-po or train-rl output: its LoRA adapters continue, the reference is its base), not {}",
                    self.model.policy.display()
                );
            }
        }
        if let Some(c) = &self.algorithm.calibration {
            if !self.component_names().contains(&c.component) {
                bail!(
                    "algorithm.calibration.component {:?}: no [[reward]] component of that name (components: {})",
                    c.component,
                    self.component_names().join(", ")
                );
            }
            if c.reference_samples == 0 {
                bail!("algorithm.calibration.reference_samples must be at least 1");
            }
            c.transform
                .validate()
                .map_err(|e| anyhow::anyhow!("algorithm.calibration: {e}"))?;
        }
        if self.algorithm.orchestrator.is_some() {
            if self.algorithm.reward_aggregation != ComponentAggregation::SumThenNormalize {
                bail!(
                    "algorithm.orchestrator weighs the components per prompt before they are summed; it does not combine with reward_aggregation = \"normalize_then_sum\""
                );
            }
            if self.algorithm.calibration.is_some() {
                bail!(
                    "algorithm.orchestrator and algorithm.calibration both re-weigh the components; use one"
                );
            }
            if self.rewards.len() < 2 {
                bail!("algorithm.orchestrator needs two or more [[reward]] components to weigh");
            }
        }
        if let Some(p) = &self.algorithm.p3o {
            if !(p.clip_ratio.is_finite() && p.clip_ratio > 0.0 && p.clip_ratio < 1.0) {
                bail!(
                    "algorithm.p3o.clip_ratio must be in (0, 1), got {}",
                    p.clip_ratio
                );
            }
            if self.rollout.group_size < 2 {
                bail!("algorithm.p3o needs rollout.group_size ≥ 2 to form pairs");
            }
            if self.algorithm.online_dpo.is_some() {
                bail!("algorithm.p3o and algorithm.online_dpo are two algorithms: keep one");
            }
            if self.algorithm.critic.is_some() || self.algorithm.entropy_coef > 0.0 {
                bail!(
                    "algorithm.p3o needs no value model and has no entropy term: remove [algorithm.critic] and entropy_coef"
                );
            }
            if self.algorithm.kl.active() && self.algorithm.kl.placement == KlPlacement::Loss {
                bail!(
                    "algorithm.p3o takes the KL penalty in the reward (as the paper): set algorithm.kl.placement = \"reward\""
                );
            }
        }
        if let Some(prm) = &self.algorithm.implicit_prm {
            prm.validate(&self.component_names())?;
            if self.algorithm.online_dpo.is_some() {
                bail!(
                    "algorithm.implicit_prm adds process rewards to the policy gradient's token rewards; online DPO reads no token rewards — remove one of them"
                );
            }
        }
        self.algorithm.kl.controller()?;
        for (i, c) in self.algorithm.constraints.iter().enumerate() {
            let what = format!("algorithm.constraints[{i}] ({})", c.component);
            let component_names = self.component_names();
            if !component_names.contains(&c.component) {
                bail!(
                    "{what}: no [[reward]] component of that name (components: {})",
                    component_names.join(", ")
                );
            }
            for (field, v, ok) in [
                ("threshold", c.threshold, c.threshold.is_finite()),
                (
                    "multiplier_lr",
                    c.multiplier_lr,
                    c.multiplier_lr.is_finite() && c.multiplier_lr > 0.0,
                ),
                (
                    "initial_multiplier",
                    c.initial_multiplier,
                    c.initial_multiplier.is_finite() && c.initial_multiplier >= 0.0,
                ),
            ] {
                if !ok {
                    bail!("{what}: {field} {v} is out of range");
                }
            }
        }
        self.algorithm.estimator.validate()?;
        self.algorithm.policy_loss.validate()?;
        if !(self.algorithm.entropy_coef.is_finite() && self.algorithm.entropy_coef >= 0.0) {
            bail!(
                "algorithm.entropy_coef must be a finite number ≥ 0, got {}",
                self.algorithm.entropy_coef
            );
        }
        Ok(())
    }

    /// What defines the run (compared on `--resume`).
    pub fn identity(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).context("serializing the recipe")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped online-RL recipe (those with a `[rollout]` section) parses and validates,
    /// and its algorithm is the one its file name says.
    #[test]
    fn every_shipped_rl_recipe_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            if !text.contains("[rollout]") {
                continue;
            }
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let mut recipe: RlRecipe = rm_core::recipe::parse(&text, &name, &[]).unwrap();
            let algorithm = name.split("-smollm2").next().unwrap().to_string();
            if algorithm == "scir" {
                // Self-rewarding continues a trained policy folder, the output of a run that
                // does not exist here: validate with a stand-in folder at its place.
                assert_eq!(recipe.model.policy, Path::new("runs/dpo-smollm2-hh/final"));
                let stand_in =
                    std::env::temp_dir().join(format!("plumb-scir-recipe-{}", std::process::id()));
                std::fs::create_dir_all(&stand_in).unwrap();
                std::fs::write(
                    stand_in.join(rm_core::models::policy_folder::POLICY_SPEC_FILE),
                    "{}",
                )
                .unwrap();
                recipe.model.policy = stand_in;
            }
            recipe
                .validate()
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            if algorithm == "scir" {
                let o = recipe.algorithm.online_dpo.as_ref().unwrap();
                assert_eq!(o.label, PairLabel::Implicit);
                assert_eq!(o.scir.as_ref().unwrap().lambda, 1.0);
                seen.push(algorithm);
                continue;
            }
            if algorithm == "online-dpo" || algorithm == "dno" {
                let o = recipe.algorithm.online_dpo.as_ref().unwrap();
                assert_eq!(algorithm == "dno", o.label == PairLabel::WinRate);
                assert_eq!(
                    algorithm == "dno",
                    o.reference == OnlineDpoReference::PreviousIterate && !recipe.needs_reference()
                );
                seen.push(algorithm);
                continue;
            }
            if algorithm == "p3o" {
                let p = recipe.algorithm.p3o.as_ref().unwrap();
                assert_eq!((p.clip, p.clip_ratio), (P3oClip::Joint, 0.2));
                assert_eq!(recipe.buffer_size(), recipe.rollout.prompts_per_iteration);
                seen.push(algorithm);
                continue;
            }
            let estimator = recipe.algorithm.estimator.name();
            let loss = recipe.algorithm.policy_loss.name();
            match algorithm.as_str() {
                "grpo" | "dapo" | "gspo" | "cispo" | "dr-grpo" => assert_eq!(estimator, "grpo"),
                "overopt-grpo" => {
                    // The proxy is trained on; the gold is only logged.
                    assert_eq!(estimator, "grpo");
                    assert_eq!(recipe.component_names(), ["proxy", "gold"]);
                    let weights: Vec<f64> = recipe.rewards.iter().map(|r| r.weight).collect();
                    assert_eq!(weights, [1.0, 0.0]);
                }
                "orchestrated-grpo" => {
                    assert_eq!(estimator, "grpo");
                    assert!(recipe.algorithm.orchestrator.is_some());
                    assert_eq!(recipe.component_names(), ["harmless", "longer"]);
                }
                "rloo" => assert_eq!(estimator, "rloo"),
                "reinforce-pp" => assert_eq!(estimator, "reinforce_plus_plus"),
                "remax" => assert_eq!(estimator, "remax"),
                "opo" => assert_eq!(estimator, "opo"),
                "raft" => assert_eq!(estimator, "raft"),
                "superhf" => {
                    assert_eq!(estimator, "raft");
                    assert!(recipe.algorithm.kl.active());
                    assert_eq!(recipe.algorithm.kl.placement, KlPlacement::Loss);
                }
                "pure" => assert_eq!(estimator, "process_rloo"),
                "mrt" => {
                    assert_eq!(estimator, "process_rloo");
                    assert_eq!(recipe.component_names(), ["gsm8k", "progress_bonus"]);
                    assert_eq!(recipe.rewards[1].weight, 0.0);
                }
                "prime" => {
                    assert_eq!(estimator, "process_rloo");
                    let prm = recipe.algorithm.implicit_prm.as_ref().unwrap();
                    assert_eq!((prm.label.as_str(), prm.beta), ("gsm8k", 0.05));
                    assert!(recipe.needs_reference() && !recipe.algorithm.kl.active());
                }
                "ppo" | "pf-ppo" => {
                    assert_eq!(estimator, "gae");
                    assert!(recipe.algorithm.critic.is_some());
                    assert_eq!(
                        recipe.rollout.policy_filtration == PolicyFiltration::BestWorst,
                        algorithm == "pf-ppo"
                    );
                }
                other => panic!("{name}: no expectation for algorithm {other}"),
            }
            match algorithm.as_str() {
                "gspo" => assert_eq!(loss, "gspo"),
                "cispo" => assert_eq!(loss, "cispo"),
                _ => assert_eq!(loss, "vanilla"),
            }
            if algorithm == "dapo" {
                assert!(recipe.rollout.drop_uniform_groups);
            }
            if algorithm == "dr-grpo" {
                assert_eq!(
                    recipe.algorithm.loss_aggregation,
                    LossAggregation::SeqMeanTokenSumNorm
                );
            }
            seen.push(algorithm);
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "cispo",
                "dapo",
                "dno",
                "dr-grpo",
                "grpo",
                "grpo",
                "gspo",
                "mrt",
                "online-dpo",
                "opo",
                "orchestrated-grpo",
                "overopt-grpo",
                "p3o",
                "pf-ppo",
                "ppo",
                "prime",
                "pure",
                "raft",
                "reinforce-pp",
                "remax",
                "rloo",
                "scir",
                "superhf"
            ]
        );
    }

    /// Combinations train-rl refuses, each with a message naming the field.
    #[test]
    fn bad_rl_recipes_are_refused_naming_the_field() {
        let text = include_str!("../../../../recipes/grpo-smollm2-gsm8k.toml");
        for (bad, says) in [
            ("rollout.group_size=0", "group_size"),
            ("rollout.sampling.max_new_tokens=400", "max_new_tokens"),
            ("train.batch_size=64", "exceeds the rollout buffer"),
            (
                "algorithm.estimator={ name = \"gae\", gamma = 1.0, lam = 0.95 }",
                "needs a value model",
            ),
            (
                "algorithm.critic={ vf_coef = 0.1 }",
                "only used by estimator",
            ),
            (
                "algorithm.kl={ coef = 0.1, controller = { kind = \"fixed\", coef = 0.1 } }",
                "either coef or controller",
            ),
            ("algorithm.kl.coef=-1.0", "coef"),
            ("algorithm.entropy_coef=-0.1", "entropy_coef"),
            (
                "algorithm.policy_loss={ name = \"vanilla\", clip_ratio_low = 1.5, clip_ratio_high = 0.2 }",
                "clip_ratio_low",
            ),
            ("reward=[]", "no [[reward]]"),
            (
                "algorithm.calibration={ component = \"judge\" }",
                "calibration.component \"judge\": no [[reward]] component",
            ),
            (
                "algorithm.calibration={ component = \"gsm8k\", reference_samples = 0 }",
                "reference_samples must be at least 1",
            ),
            (
                "algorithm.calibration={ component = \"gsm8k\", transform = { kind = \"exp\", t = 0.0 } }",
                "t must be a finite number > 0",
            ),
            (
                "algorithm.implicit_prm={ label = \"correct\" }",
                "names no [[reward]] component",
            ),
            (
                "algorithm.implicit_prm={ label = \"gsm8k\", beta = 0.0 }",
                "implicit_prm.beta",
            ),
            (
                "algorithm.implicit_prm={ label = \"gsm8k\", micro_batch = 0 }",
                "micro_batch",
            ),
        ] {
            let r: Result<RlRecipe> = rm_core::recipe::parse(text, "grpo", &[bad.into()]);
            let err = match r {
                Ok(r) => format!("{:#}", r.validate().unwrap_err()),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains(says), "{bad}: {err}");
        }
        let scir: RlRecipe = rm_core::recipe::parse(
            include_str!("../../../../recipes/scir-smollm2-hh.toml"),
            "scir",
            &[],
        )
        .unwrap();
        let online_dpo = scir.algorithm.online_dpo.as_ref().unwrap();
        assert_eq!(online_dpo.label, PairLabel::Implicit);
        let scir_config = online_dpo.scir.as_ref().unwrap();
        assert_eq!(scir_config.answers, ["A".to_string(), "B".to_string()]);
        scir_config.validate().unwrap();
        let online = include_str!("../../../../recipes/online-dpo-smollm2-hh.toml");
        for (bad, says) in [
            ("algorithm.online_dpo.min_gap=0.1", "win_rate\" only"),
            (
                "algorithm.online_dpo.cream=true",
                "set label = \"implicit\"",
            ),
            (
                "algorithm.online_dpo={ label = \"win_rate\", min_gap = -1.0 }",
                "min_gap must be finite",
            ),
            (
                "algorithm.online_dpo={ label = \"implicit\", reference = \"previous_iterate\" }",
                "rank every completion at 0",
            ),
        ] {
            let r: RlRecipe = rm_core::recipe::parse(online, "online-dpo", &[bad.into()]).unwrap();
            let err = format!("{:#}", r.validate().unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
        let orchestrated = include_str!("../../../../recipes/orchestrated-grpo-smollm2-hh.toml");
        for (bad, says) in [
            (
                "algorithm.reward_aggregation=\"normalize_then_sum\"",
                "does not combine with reward_aggregation",
            ),
            (
                "algorithm.calibration={ component = \"harmless\" }",
                "use one",
            ),
            (
                "reward=[{ kind = \"length\", target = 10 }]",
                "two or more [[reward]] components",
            ),
        ] {
            let r: RlRecipe =
                rm_core::recipe::parse(orchestrated, "orchestrated", &[bad.into()]).unwrap();
            let err = format!("{:#}", r.validate().unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
        let p3o = include_str!("../../../../recipes/p3o-smollm2-hh.toml");
        for (bad, says) in [
            (
                "algorithm.p3o.clip_ratio=0.0",
                "p3o.clip_ratio must be in (0, 1)",
            ),
            ("rollout.group_size=1", "p3o needs rollout.group_size ≥ 2"),
            (
                "algorithm.kl.placement=\"loss\"",
                "KL penalty in the reward",
            ),
            ("algorithm.entropy_coef=0.01", "no entropy term"),
            ("algorithm.online_dpo={}", "keep one"),
        ] {
            let r: RlRecipe = rm_core::recipe::parse(p3o, "p3o", &[bad.into()]).unwrap();
            let err = format!("{:#}", r.validate().unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
        // PURE's min form reads only step-end tokens: a KL in the reward would be lost.
        let r: RlRecipe = rm_core::recipe::parse(
            text,
            "pure",
            &[
                "algorithm.estimator={ name = \"process_rloo\" }".into(),
                "algorithm.kl.placement=\"reward\"".into(),
            ],
        )
        .unwrap();
        let err = format!("{:#}", r.validate().unwrap_err());
        assert!(err.contains("min-form credit"), "{err}");
    }
}
