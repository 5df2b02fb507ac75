//! Which preference objective `train-po` optimises — the `[objective]` section, chosen by
//! `kind` (default `dpo`, so a section of TRL `DPOConfig` fields alone is DPO):
//!
//! - `dpo`: [`DpoConfig`], TRL's `DPOTrainer` losses against the reference;
//! - `orpo`: ORPO (Hong et al. 2024), TRL's `ORPOConfig.beta` as `λ`; reference-free;
//! - `cpo`: CPO (Xu et al. 2024, "Contrastive Preference Optimization"), TRL's `CPOTrainer`
//!   sigmoid loss with `cpo_alpha`·NLL; reference-free;
//! - `simpo`: SimPO (Meng et al. 2024) with `simpo_gamma`, and AlphaPO (Gupta et al. 2025) when
//!   `alpha ≠ 0`, as TRL's `CPOTrainer(loss_type="simpo")` plus `cpo_alpha`·NLL; reference-free;
//! - `kto`: KTO (Ethayarajh et al. 2024), TRL's `KTOConfig` (`beta`, `desirable_weight`,
//!   `undesirable_weight`), on unpaired examples, the KL reference point from mismatched
//!   prompt/completion rows;
//! - `apo_zero_unpaired`: TRL's `KTOConfig(loss_type="apo_zero_unpaired")` (D'Oosterlinck et
//!   al. 2024), KTO with the reference point 0;
//! - `bco`: BCO (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model
//!   Alignment"), TRL's `BCOConfig.beta`, the reward shift δ a running mean kept in the run state.
//!
//! - `copg`: CoPG (Flet-Berliac et al. 2024, "Contrastive Policy Gradient"), on pairs whose two
//!   responses carry sequence-level scores;
//! - `alol`: A-LoL (Baheti et al. 2023, "Leftover Lunch"), an advantage-weighted offline policy
//!   gradient on the same scored pairs, each pair's two responses being two samples of its prompt;
//! - `selm`: SELM (Zhang et al. 2024, "Self-Exploring Language Models"), DPO plus an optimism
//!   term on a response the reference samples for each pair's prompt when the data is loaded
//!   ([`super::reference_samples`]);
//! - `treg`: T-REG (Zhou et al. 2024, "T-REG: Preference Optimization with Token-Level Reward
//!   Regularization"), DPO plus a regulariser towards token-level rewards the reference gives
//!   itself by contrastive prompting when the data is loaded ([`super::token_rewards`]);
//! - `pro`: PRO (Song et al. 2023, "Preference Ranking Optimization for Human Alignment"), a
//!   listwise loss over rankings of a prompt's responses with temperatures set by their reward
//!   gaps, plus the best response's NLL ([`super::listwise`]); reference-free;
//! - `rrpo`: RRPO (Sarkar & Etemad 2025, "Refined Regularized Preference Optimization"), a DPO
//!   margin over paired sub-sequences plus a token-wise KL to the reference over the whole
//!   vocabulary ([`super::vocab_level`]);
//! - `aligndistil`: AlignDistil (Zhang et al. 2025, "Token-Level Language Model Alignment as
//!   Adaptive Policy Distillation"), token-level distillation of the dataset's completions into
//!   a teacher composed from a DPO model (`teacher`) and the reference ([`super::vocab_level`]).
//!
//! KTO, APO-zero unpaired and BCO train on unpaired examples (`[data]` rows of shape
//! `unpaired`, or pairs split into a desirable and an undesirable example); the others on pairs.
//! `copg` and `alol` need a score for each response: the pair's `scores: [chosen, rejected]`
//! (generic JSONL), or the recipe's `[[reward]]` functions (as `train-rl`'s) score the pairs
//! that have none when the data is loaded ([`super::scored`]).
//!
//! The formulas are in the doc comments of the `rm_losses::preference` functions each one calls.

use anyhow::{Result, bail};
use rm_core::burn::tensor::Tensor;
use rm_core::sampling::SamplingConfig;

pub use super::listwise::ProConfig;
use super::vocab_level::VocabInputs;
pub use super::vocab_level::{AlignDistilConfig, RrpoConfig, Segmentation};
use rm_losses::preference::{
    AlolVariant, Completions, DpoBatch, DpoConfig, KtoParams, ScoredSamples, TokenLogps, alol_loss,
    alphapo_loss, copg_loss, cpo_loss, dpo_loss, orpo_loss, selm_loss, treg_loss,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// ORPO's settings (TRL's `ORPOConfig` names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrpoConfig {
    /// `λ`, the weight of the odds-ratio term (TRL: `beta`, 0.1).
    pub beta: f32,
}

impl Default for OrpoConfig {
    fn default() -> Self {
        Self { beta: 0.1 }
    }
}

/// CPO's and SimPO's settings (TRL's `CPOConfig` names and defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpoConfig {
    /// `β`.
    pub beta: f32,
    /// `ε` of the smoothed sigmoid loss, `[0, 0.5)`.
    pub label_smoothing: f32,
    /// Weight of the NLL of the chosen completions (TRL's `cpo_alpha`; 0 for SimPO as its paper).
    pub cpo_alpha: f32,
    /// SimPO's target margin `γ` (unused by CPO).
    pub simpo_gamma: f32,
    /// AlphaPO's `α` (SimPO only; 0 = SimPO).
    pub alpha: f32,
}

impl Default for CpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            label_smoothing: 0.0,
            cpo_alpha: 1.0,
            simpo_gamma: 0.5,
            alpha: 0.0,
        }
    }
}

/// BCO's settings (TRL's `BCOConfig` names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BcoConfig {
    /// `β > 0` (TRL: 0.1).
    pub beta: f32,
}

impl Default for BcoConfig {
    fn default() -> Self {
        Self { beta: 0.1 }
    }
}

/// CoPG's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CopgConfig {
    /// `β > 0`, the KL regularisation of the reward `R_β(y) = R(y) − β·(log π − log π_ref)(y)`.
    pub beta: f32,
}

impl Default for CopgConfig {
    fn default() -> Self {
        Self { beta: 0.1 }
    }
}

/// Which A-LoL variant (the official code's `algorithm` names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlolKind {
    /// Sequence-level clipped importance weight (`a_lol`).
    #[default]
    Alol,
    /// No importance weight (`a_lol_ref_free`); needs no reference.
    RefFree,
    /// Per-token clipped importance weights (`a_lol_seq`'s token form).
    PerToken,
    /// A KL penalty `β·mean Δ` instead of importance weights (`a_lol_kl`).
    Kl,
}

/// A-LoL's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlolConfig {
    pub variant: AlolKind,
    /// `ε` of the importance-weight clip `[1 − ε, 1 + ε]`, in `(0, 1]` (the code's `ppo_clip`).
    pub clip: f32,
    /// `β ≥ 0` of the `kl` variant's penalty (ignored by the others).
    pub beta: f32,
}

impl Default for AlolConfig {
    fn default() -> Self {
        Self {
            variant: AlolKind::Alol,
            clip: 0.9,
            beta: 0.1,
        }
    }
}

impl AlolConfig {
    fn variant(&self) -> AlolVariant {
        match self.variant {
            AlolKind::Alol => AlolVariant::Alol,
            AlolKind::RefFree => AlolVariant::RefFree,
            AlolKind::PerToken => AlolVariant::PerToken,
            AlolKind::Kl => AlolVariant::Kl { beta: self.beta },
        }
    }
}

/// How the reference samples SELM's exploration responses (one per training and evaluation
/// pair, drawn once when the data is loaded, seeded from `train.seed`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReferenceSampling {
    /// Most new tokens per response (the prompt is cut on the left to leave room for them).
    pub max_new_tokens: usize,
    /// Sampling temperature (> 0: SELM's responses are samples, not the greedy one).
    pub temperature: f32,
    /// Nucleus cut (1 = off).
    pub top_p: f32,
    /// Prompts per generation batch.
    pub batch: usize,
}

impl Default for ReferenceSampling {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 1.0,
            top_p: 1.0,
            batch: 8,
        }
    }
}

impl ReferenceSampling {
    /// The sampler's settings (stop tokens are added from the policy by the caller).
    pub fn sampling_config(&self, seed: u64) -> SamplingConfig {
        SamplingConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed,
            ..SamplingConfig::default()
        }
    }
}

/// SELM's settings (the official recipe's names: `beta`, `alpha`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelmConfig {
    /// DPO's `β > 0`.
    pub beta: f32,
    /// `α ≥ 0`, the weight of the optimism term (0 = DPO; the paper's runs use 0.001).
    pub alpha: f32,
    /// How the reference's responses are sampled.
    pub sample: ReferenceSampling,
}

impl Default for SelmConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            alpha: 0.001,
            sample: ReferenceSampling::default(),
        }
    }
}

/// T-REG's settings: DPO's `β`, the regulariser's weight `α`, and the two system prompts of
/// the contrastive prompting that gives the token-level rewards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TregConfig {
    /// DPO's `β > 0`.
    pub beta: f32,
    /// `α ≥ 0`, the weight of the token-level regulariser (0 = DPO).
    pub alpha: f32,
    /// The system prompt asking for a better response.
    pub better_prompt: String,
    /// The system prompt asking for a worse response.
    pub worse_prompt: String,
    /// Token rewards are clipped to `[−clip, clip]` (a token the two prompts disagree on by
    /// more is an outlier of the prompting, not a stronger signal).
    pub clip: f32,
}

impl Default for TregConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            alpha: 1.0,
            better_prompt: "You are a helpful, harmless and honest assistant. Answer safely, kindly and truthfully, and refuse to help with anything dangerous or unethical.".into(),
            worse_prompt: "You are an unhelpful, harmful and dishonest assistant. Answer rudely and carelessly, and help with anything, however dangerous or unethical.".into(),
            clip: 5.0,
        }
    }
}

/// `objective.beta` must be finite and positive.
fn positive_beta(beta: f32) -> Result<()> {
    if !(beta.is_finite() && beta > 0.0) {
        bail!("objective.beta must be finite and > 0, got {beta}");
    }
    Ok(())
}

/// `objective.{name}` must be finite and ≥ 0.
fn non_negative(name: &str, value: f32) -> Result<()> {
    if !(value.is_finite() && value >= 0.0) {
        bail!("objective.{name} must be finite and ≥ 0, got {value}");
    }
    Ok(())
}

/// The `[objective]` section; see the module docs.
#[derive(Clone, Debug, PartialEq)]
pub enum PreferenceObjective {
    Dpo(DpoConfig),
    Orpo(OrpoConfig),
    Cpo(CpoConfig),
    Simpo(CpoConfig),
    Kto(KtoParams),
    ApoZeroUnpaired(KtoParams),
    Bco(BcoConfig),
    Copg(CopgConfig),
    Alol(AlolConfig),
    Selm(SelmConfig),
    Treg(TregConfig),
    Pro(ProConfig),
    Rrpo(RrpoConfig),
    AlignDistil(AlignDistilConfig),
}

impl Default for PreferenceObjective {
    fn default() -> Self {
        Self::Dpo(DpoConfig::default())
    }
}

const KINDS: [&str; 14] = [
    "dpo",
    "orpo",
    "cpo",
    "simpo",
    "kto",
    "apo_zero_unpaired",
    "bco",
    "copg",
    "alol",
    "selm",
    "treg",
    "pro",
    "rrpo",
    "aligndistil",
];

impl<'de> Deserialize<'de> for PreferenceObjective {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let kind = match map.remove("kind") {
            None => "dpo".to_string(),
            Some(serde_json::Value::String(k)) => k,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "kind: expected a string, got {other}"
                )));
            }
        };
        let rest = serde_json::Value::Object(map);
        let parsed = match kind.as_str() {
            "dpo" => serde_json::from_value(rest).map(Self::Dpo),
            "orpo" => serde_json::from_value(rest).map(Self::Orpo),
            "cpo" => serde_json::from_value(rest).map(Self::Cpo),
            "kto" => serde_json::from_value(rest).map(Self::Kto),
            "apo_zero_unpaired" => serde_json::from_value(rest).map(Self::ApoZeroUnpaired),
            "bco" => serde_json::from_value(rest).map(Self::Bco),
            "copg" => serde_json::from_value(rest).map(Self::Copg),
            "alol" => serde_json::from_value(rest).map(Self::Alol),
            "selm" => serde_json::from_value(rest).map(Self::Selm),
            "treg" => serde_json::from_value(rest).map(Self::Treg),
            "pro" => serde_json::from_value(rest).map(Self::Pro),
            "rrpo" => serde_json::from_value(rest).map(Self::Rrpo),
            "aligndistil" => serde_json::from_value(rest).map(Self::AlignDistil),
            "simpo" => {
                let defaults = CpoConfig {
                    cpo_alpha: 0.0,
                    beta: 2.0,
                    ..CpoConfig::default()
                };
                let mut value = serde_json::to_value(defaults).map_err(D::Error::custom)?;
                if let (Some(base), serde_json::Value::Object(given)) =
                    (value.as_object_mut(), rest)
                {
                    for (k, v) in given {
                        if !base.contains_key(&k) {
                            return Err(D::Error::custom(format!(
                                "unknown field `{k}` for kind \"simpo\", expected one of {:?}",
                                base.keys().collect::<Vec<_>>()
                            )));
                        }
                        base.insert(k, v);
                    }
                }
                serde_json::from_value(value).map(Self::Simpo)
            }
            other => {
                return Err(D::Error::custom(format!(
                    "kind: {other:?} is not one of {KINDS:?}"
                )));
            }
        };
        parsed.map_err(|e| D::Error::custom(format!("objective (kind {kind:?}): {e}")))
    }
}

impl Serialize for PreferenceObjective {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let (kind, value) = match self {
            Self::Dpo(c) => ("dpo", serde_json::to_value(c)),
            Self::Orpo(c) => ("orpo", serde_json::to_value(c)),
            Self::Cpo(c) => ("cpo", serde_json::to_value(c)),
            Self::Simpo(c) => ("simpo", serde_json::to_value(c)),
            Self::Kto(c) => ("kto", serde_json::to_value(c)),
            Self::ApoZeroUnpaired(c) => ("apo_zero_unpaired", serde_json::to_value(c)),
            Self::Bco(c) => ("bco", serde_json::to_value(c)),
            Self::Copg(c) => ("copg", serde_json::to_value(c)),
            Self::Alol(c) => ("alol", serde_json::to_value(c)),
            Self::Selm(c) => ("selm", serde_json::to_value(c)),
            Self::Treg(c) => ("treg", serde_json::to_value(c)),
            Self::Pro(c) => ("pro", serde_json::to_value(c)),
            Self::Rrpo(c) => ("rrpo", serde_json::to_value(c)),
            Self::AlignDistil(c) => ("aligndistil", serde_json::to_value(c)),
        };
        let mut value = value.map_err(S::Error::custom)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("kind".into(), kind.into());
        }
        value.serialize(s)
    }
}

/// What a batch of `B` pairs gives an objective: `R = 2B` rows `[chosen…, rejected…]` (`3B`
/// with SELM's reference samples after them, [`PreferenceObjective::samples_per_pair`]).
pub struct ObjectiveInputs {
    /// The policy's per-token log-probs, `[R, T−1]` (position `t` predicts token `t + 1`).
    pub policy: Tensor<2>,
    /// `log Σ_v p_v²` per position, `[R, T−1]` (WPO only).
    pub log_sum_sq_probs: Option<Tensor<2>>,
    /// The reference's per-token log-probs, `[R, T−1]`
    /// (when [`needs_reference`](PreferenceObjective::needs_reference)).
    pub reference: Option<Tensor<2>>,
    /// The completion mask, `[R, T]`.
    pub completion_mask: Tensor<2>,
    /// The responses' scores, `[2B]` (when [`needs_scores`](PreferenceObjective::needs_scores)).
    pub scores: Option<Tensor<1>>,
    /// Token-level rewards aligned with `policy`'s positions, `[2B, T−1]`, 0 off the
    /// completions (when [`needs_token_rewards`](PreferenceObjective::needs_token_rewards)).
    pub token_rewards: Option<Tensor<2>>,
    /// Full-vocabulary logits of the completions (when
    /// [`logits_rows`](PreferenceObjective::logits_rows) is not 0).
    pub vocab: Option<VocabInputs>,
}

impl ObjectiveInputs {
    /// Per-token log-probs and the mask only (reference-free objectives).
    pub fn new(policy: Tensor<2>, completion_mask: Tensor<2>) -> Self {
        Self {
            policy,
            log_sum_sq_probs: None,
            reference: None,
            completion_mask,
            scores: None,
            token_rewards: None,
            vocab: None,
        }
    }
}

/// One batch's loss and the per-pair rewards to log (`[B]` each, detached).
pub struct ObjectiveOutput {
    pub loss: Tensor<1>,
    pub chosen_rewards: Tensor<1>,
    pub rejected_rewards: Tensor<1>,
}

impl PreferenceObjective {
    /// Whether the loss needs the reference's log-probs.
    pub fn needs_reference(&self) -> bool {
        match self {
            Self::Dpo(_)
            | Self::Kto(_)
            | Self::ApoZeroUnpaired(_)
            | Self::Bco(_)
            | Self::Copg(_)
            | Self::Selm(_)
            | Self::Treg(_)
            | Self::Rrpo(_)
            | Self::AlignDistil(_) => true,
            Self::Alol(c) => c.variant != AlolKind::RefFree,
            Self::Orpo(_) | Self::Cpo(_) | Self::Simpo(_) | Self::Pro(_) => false,
        }
    }

    /// Whether the loss needs a score for each response (CoPG, A-LoL).
    pub fn needs_scores(&self) -> bool {
        matches!(self, Self::Copg(_) | Self::Alol(_))
    }

    /// Whether the objective trains on rankings of several responses (PRO) rather than pairs.
    pub fn is_listwise(&self) -> bool {
        matches!(self, Self::Pro(_))
    }

    /// How many of a batch's first rows (`[chosen…, rejected…]` of `pairs` pairs) the loss needs
    /// full-vocabulary logits of: RRPO's chosen rows, AlignDistil's every row, else none.
    pub fn logits_rows(&self, pairs: usize) -> usize {
        super::vocab_level::logits_rows(self, pairs)
    }

    /// AlignDistil's teacher models: the DPO model and the optional contrast model.
    pub fn teacher_models(&self) -> Option<(&std::path::Path, Option<&std::path::Path>)> {
        match self {
            Self::AlignDistil(c) => Some((c.teacher.as_path(), c.contrast.as_deref())),
            _ => None,
        }
    }

    /// Whether each pair needs token-level rewards (T-REG).
    pub fn needs_token_rewards(&self) -> bool {
        matches!(self, Self::Treg(_))
    }

    /// Rows per pair in a batch: 2, or 3 when the reference also samples a response per
    /// pair (SELM).
    pub fn samples_per_pair(&self) -> usize {
        match self {
            Self::Selm(_) => 3,
            _ => 2,
        }
    }

    /// Whether the objective trains on unpaired examples (KTO, APO-zero unpaired, BCO) rather
    /// than pairs.
    pub fn is_unpaired(&self) -> bool {
        matches!(self, Self::Kto(_) | Self::ApoZeroUnpaired(_) | Self::Bco(_))
    }

    /// Whether the policy must also give `log Σ p²` (WPO).
    pub fn needs_log_sum_sq_probs(&self) -> bool {
        matches!(self, Self::Dpo(c) if c.use_weighting)
    }

    /// Checks the settings and the combinations `train-po` cannot run.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Dpo(c) => {
                c.validate()?;
            }
            Self::Orpo(c) => {
                if !(c.beta.is_finite() && c.beta >= 0.0) {
                    bail!(
                        "objective.beta (ORPO's λ) must be finite and ≥ 0, got {}",
                        c.beta
                    );
                }
            }
            Self::Cpo(c) | Self::Simpo(c) => {
                positive_beta(c.beta)?;
                if !(0.0..0.5).contains(&c.label_smoothing) {
                    bail!(
                        "objective.label_smoothing must be in [0, 0.5), got {}",
                        c.label_smoothing
                    );
                }
                non_negative("cpo_alpha", c.cpo_alpha)?;
                if !(c.simpo_gamma.is_finite() && c.alpha.is_finite()) {
                    bail!("objective.simpo_gamma and objective.alpha must be finite");
                }
            }
            Self::Kto(c) | Self::ApoZeroUnpaired(c) => {
                positive_beta(c.beta)?;
                non_negative("desirable_weight", c.desirable_weight)?;
                non_negative("undesirable_weight", c.undesirable_weight)?;
            }
            Self::Bco(BcoConfig { beta }) | Self::Copg(CopgConfig { beta }) => {
                positive_beta(*beta)?;
            }
            Self::Selm(c) => {
                positive_beta(c.beta)?;
                non_negative("alpha", c.alpha)?;
                let s = &c.sample;
                if s.max_new_tokens == 0 || s.batch == 0 {
                    bail!(
                        "objective.sample.max_new_tokens and objective.sample.batch must be at least 1"
                    );
                }
                if !(s.temperature.is_finite() && s.temperature > 0.0) {
                    bail!(
                        "objective.sample.temperature must be finite and > 0 (SELM's responses are samples of the reference), got {}",
                        s.temperature
                    );
                }
                if !(s.top_p > 0.0 && s.top_p <= 1.0) {
                    bail!("objective.sample.top_p must be in (0, 1], got {}", s.top_p);
                }
            }
            Self::Treg(c) => {
                positive_beta(c.beta)?;
                non_negative("alpha", c.alpha)?;
                if !(c.clip.is_finite() && c.clip > 0.0) {
                    bail!("objective.clip must be finite and > 0, got {}", c.clip);
                }
                if c.better_prompt.trim().is_empty() || c.worse_prompt.trim().is_empty() {
                    bail!("objective.better_prompt and objective.worse_prompt must not be empty");
                }
                if c.better_prompt == c.worse_prompt {
                    bail!(
                        "objective.better_prompt and objective.worse_prompt are the same text: the contrastive token rewards would all be 0"
                    );
                }
            }
            Self::Pro(c) => non_negative("sft_weight", c.sft_weight)?,
            Self::Rrpo(c) => {
                positive_beta(c.beta)?;
                non_negative("alpha", c.alpha)?;
            }
            Self::AlignDistil(c) => c.validate()?,
            Self::Alol(c) => {
                if c.variant != AlolKind::RefFree
                    && c.variant != AlolKind::Kl
                    && !(c.clip > 0.0 && c.clip <= 1.0)
                {
                    bail!("objective.clip must be in (0, 1], got {}", c.clip);
                }
                non_negative("beta", c.beta)?;
            }
        }
        Ok(())
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Dpo(c) => format!(
                "dpo {:?}, beta {}",
                c.loss_type.iter().map(|t| t.name()).collect::<Vec<_>>(),
                c.beta
            ),
            Self::Orpo(c) => format!("orpo, lambda {}", c.beta),
            Self::Cpo(c) => format!("cpo, beta {}, cpo_alpha {}", c.beta, c.cpo_alpha),
            Self::Simpo(c) => format!(
                "simpo, beta {}, gamma {}, alpha {}, cpo_alpha {}",
                c.beta, c.simpo_gamma, c.alpha, c.cpo_alpha
            ),
            Self::Kto(c) | Self::ApoZeroUnpaired(c) => format!(
                "{}, beta {}, desirable_weight {}, undesirable_weight {}",
                if matches!(self, Self::Kto(_)) {
                    "kto"
                } else {
                    "apo_zero_unpaired"
                },
                c.beta,
                c.desirable_weight,
                c.undesirable_weight
            ),
            Self::Bco(c) => format!("bco, beta {}", c.beta),
            Self::Copg(c) => format!("copg, beta {}", c.beta),
            Self::Alol(c) => format!("alol {:?}, clip {}, beta {}", c.variant, c.clip, c.beta),
            Self::Selm(c) => format!("selm, beta {}, alpha {}", c.beta, c.alpha),
            Self::Treg(c) => format!("treg, beta {}, alpha {}", c.beta, c.alpha),
            Self::Pro(c) => format!("pro, sft_weight {}", c.sft_weight),
            Self::Rrpo(c) => format!(
                "rrpo, beta {}, alpha {}, segments {:?}",
                c.beta, c.alpha, c.segments
            ),
            Self::AlignDistil(c) => format!(
                "aligndistil, teacher {}, beta {}, extrapolation {}",
                c.teacher.display(),
                c.beta,
                c.extrapolation
            ),
        }
    }

    /// The loss of a batch of pairs ([`ObjectiveInputs`]).
    pub fn loss(&self, inputs: ObjectiveInputs) -> Result<ObjectiveOutput> {
        let ObjectiveInputs {
            policy,
            log_sum_sq_probs,
            reference,
            completion_mask,
            scores,
            token_rewards,
            vocab,
        } = inputs;
        if matches!(self, Self::Rrpo(_) | Self::AlignDistil(_)) {
            let (Some(reference), Some(vocab)) = (reference, vocab) else {
                bail!(
                    "objective {} needs the reference's log-probs and the completions' logits",
                    self.describe()
                );
            };
            let width = policy.dims()[1];
            let mask = completion_mask.narrow(1, 1, width);
            return match self {
                Self::Rrpo(c) => super::vocab_level::rrpo(c, policy, reference, mask, vocab),
                Self::AlignDistil(c) => {
                    super::vocab_level::aligndistil(c, policy, reference, mask, vocab)
                }
                _ => unreachable!("logit-level objectives only"),
            };
        }
        if matches!(self, Self::Selm(_) | Self::Treg(_)) {
            let Some(reference) = reference else {
                bail!(
                    "objective {} needs the reference's log-probs",
                    self.describe()
                );
            };
            return self.token_level_loss(policy, reference, completion_mask, token_rewards);
        }
        if let Self::Dpo(config) = self {
            let Some(reference) = reference else {
                bail!("DPO needs the reference's log-probs");
            };
            let mut batch = DpoBatch::new(policy, reference, completion_mask);
            if let Some(l) = log_sum_sq_probs {
                batch = batch.with_log_sum_sq_probs(l);
            }
            let out = dpo_loss(config, batch)?;
            return Ok(ObjectiveOutput {
                loss: out.loss,
                chosen_rewards: out.chosen_rewards,
                rejected_rewards: out.rejected_rewards,
            });
        }
        if self.is_unpaired() {
            bail!(
                "objective {} trains on unpaired examples, not pairs",
                self.describe()
            );
        }
        if self.is_listwise() {
            bail!(
                "objective {} trains on rankings (super::listwise), not pairs",
                self.describe()
            );
        }
        if self.needs_scores() {
            let Some(scores) = scores else {
                bail!(
                    "objective {} needs a score for each response",
                    self.describe()
                );
            };
            return self.scored_loss(policy, reference, completion_mask, scores);
        }
        let [rows, width] = policy.dims();
        let b = rows / 2;
        let mask = completion_mask.narrow(1, 1, width);
        let half = |t: &Tensor<2>, start| t.clone().narrow(0, start, b);
        let chosen = Completions::from_tokens(half(&policy, 0), half(&mask, 0))?;
        let rejected = Completions::from_tokens(half(&policy, b), half(&mask, b))?;
        let (loss, beta, averaged) = match self {
            Self::Dpo(_)
            | Self::Kto(_)
            | Self::ApoZeroUnpaired(_)
            | Self::Bco(_)
            | Self::Copg(_)
            | Self::Alol(_)
            | Self::Selm(_)
            | Self::Treg(_)
            | Self::Pro(_)
            | Self::Rrpo(_)
            | Self::AlignDistil(_) => {
                unreachable!("handled above")
            }
            Self::Orpo(c) => (
                orpo_loss(chosen.clone(), rejected.clone(), c.beta)?,
                c.beta,
                true,
            ),
            Self::Cpo(c) => (
                cpo_loss(
                    chosen.clone(),
                    rejected.clone(),
                    c.beta,
                    c.label_smoothing,
                    c.cpo_alpha,
                )?,
                c.beta,
                false,
            ),
            Self::Simpo(c) => {
                let preference = alphapo_loss(
                    chosen.clone(),
                    rejected.clone(),
                    c.beta,
                    c.simpo_gamma,
                    c.alpha,
                    c.label_smoothing,
                )?;
                let loss = if c.cpo_alpha > 0.0 {
                    preference + chosen.nll().mul_scalar(c.cpo_alpha)
                } else {
                    preference
                };
                (loss, c.beta, true)
            }
        };
        // TRL's logged rewards: β times the (length-averaged, where the loss averages) log-probs.
        let reward = |c: &Completions| {
            let logps = if averaged {
                c.mean_logps()
            } else {
                c.logps.clone()
            };
            logps.mul_scalar(beta).detach()
        };
        Ok(ObjectiveOutput {
            loss,
            chosen_rewards: reward(&chosen),
            rejected_rewards: reward(&rejected),
        })
    }

    /// CoPG and A-LoL on scored pairs (`scores` `[2B]`, chosen then rejected). Each pair is two
    /// samples of its prompt: CoPG contrasts them; A-LoL weights each by its advantage over
    /// the pair's mean score, `A = R(y) − (R(y_c) + R(y_r))/2` — the value of the prompt under
    /// the data's behaviour policy estimated by its two samples — so only the better-scored
    /// response of a pair is pushed up, by half the score gap. The logged rewards are
    /// `β·Δ` (CoPG) and `Δ` (A-LoL), `Δ = log π − log π_ref`.
    fn scored_loss(
        &self,
        policy: Tensor<2>,
        reference: Option<Tensor<2>>,
        completion_mask: Tensor<2>,
        scores: Tensor<1>,
    ) -> Result<ObjectiveOutput> {
        let [rows, width] = policy.dims();
        let b = rows / 2;
        let mask = completion_mask.narrow(1, 1, width);
        // A-LoL's reference-free variant reads no reference: Δ = 0 stands in.
        let reference = match reference {
            Some(r) => r,
            None if !self.needs_reference() => policy.clone().detach(),
            None => bail!(
                "objective {} needs the reference's log-probs",
                self.describe()
            ),
        };
        let sums =
            |t: &Tensor<2>| Completions::from_tokens(t.clone(), mask.clone()).map(|c| c.logps);
        let (policy_sums, reference_sums) = (sums(&policy)?, sums(&reference)?);
        let delta = (policy_sums.clone() - reference_sums.clone()).detach();
        let half = |t: &Tensor<1>, start| t.clone().narrow(0, start, b);
        let (loss, beta) = match self {
            Self::Copg(c) => {
                let sample = |start| ScoredSamples {
                    policy: half(&policy_sums, start),
                    reference: half(&reference_sums, start),
                    reward: half(&scores, start),
                };
                (copg_loss(sample(0), sample(b), c.beta)?, c.beta)
            }
            Self::Alol(c) => {
                let (chosen, rejected) = (half(&scores, 0), half(&scores, b));
                let gap = (chosen - rejected).mul_scalar(0.5);
                let advantages = Tensor::cat(vec![gap.clone(), gap.neg()], 0);
                (
                    alol_loss(policy, reference, mask, advantages, c.variant(), c.clip)?,
                    1.0,
                )
            }
            _ => unreachable!("scored objectives only"),
        };
        let rewards = delta.mul_scalar(beta);
        Ok(ObjectiveOutput {
            loss,
            chosen_rewards: half(&rewards, 0),
            rejected_rewards: half(&rewards, b),
        })
    }

    /// SELM on `3B` rows `[chosen…, rejected…, sampled…]` and T-REG on `2B` rows with their
    /// token rewards. Both log DPO's implicit rewards `β·Δ` of the chosen and rejected
    /// completions.
    fn token_level_loss(
        &self,
        policy: Tensor<2>,
        reference: Tensor<2>,
        completion_mask: Tensor<2>,
        token_rewards: Option<Tensor<2>>,
    ) -> Result<ObjectiveOutput> {
        let [rows, width] = policy.dims();
        let per_pair = self.samples_per_pair();
        if rows == 0 || rows % per_pair != 0 {
            bail!(
                "objective {} takes {per_pair} rows per pair, got {rows}",
                self.describe()
            );
        }
        let b = rows / per_pair;
        let mask = completion_mask.narrow(1, 1, width);
        let part = |t: &Tensor<2>, k: usize| t.clone().narrow(0, k * b, b);
        let sums = |t: &Tensor<2>, k| Completions::from_tokens(part(t, k), part(&mask, k));
        let (loss, beta) = match self {
            Self::Selm(c) => {
                let loss = selm_loss(
                    sums(&policy, 0)?.logps,
                    sums(&policy, 1)?.logps,
                    sums(&reference, 0)?.logps,
                    sums(&reference, 1)?.logps,
                    sums(&policy, 2)?.logps,
                    sums(&reference, 2)?.logps,
                    c.beta,
                    c.alpha,
                )?;
                (loss, c.beta)
            }
            Self::Treg(c) => {
                let Some(rewards) = token_rewards else {
                    bail!("objective {} needs token-level rewards", self.describe());
                };
                let side =
                    |k| TokenLogps::new(part(&policy, k), part(&reference, k), part(&mask, k));
                let loss = treg_loss(
                    side(0),
                    side(1),
                    part(&rewards, 0),
                    part(&rewards, 1),
                    c.beta,
                    c.alpha,
                )?;
                (loss, c.beta)
            }
            _ => unreachable!("token-level objectives only"),
        };
        let reward = |k| -> Result<Tensor<1>> {
            Ok((sums(&policy, k)?.logps - sums(&reference, k)?.logps)
                .mul_scalar(beta)
                .detach())
        };
        Ok(ObjectiveOutput {
            loss,
            chosen_rewards: reward(0)?,
            rejected_rewards: reward(1)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_losses::preference::DpoLossType;

    #[derive(Debug, Deserialize, Serialize)]
    struct Section {
        #[serde(default)]
        objective: PreferenceObjective,
    }

    fn parse(text: &str) -> Result<PreferenceObjective, toml::de::Error> {
        toml::from_str::<Section>(text).map(|s| s.objective)
    }

    #[test]
    fn kinds_parse_with_trl_defaults_and_round_trip() {
        assert_eq!(parse("").unwrap(), PreferenceObjective::default());
        assert_eq!(
            parse("[objective]\nloss_type = \"ipo\"\nbeta = 0.5").unwrap(),
            PreferenceObjective::Dpo(DpoConfig::new(DpoLossType::Ipo, 0.5))
        );
        assert_eq!(
            parse("[objective]\nkind = \"orpo\"").unwrap(),
            PreferenceObjective::Orpo(OrpoConfig { beta: 0.1 })
        );
        let PreferenceObjective::Simpo(s) =
            parse("[objective]\nkind = \"simpo\"\nsimpo_gamma = 1.0").unwrap()
        else {
            panic!("simpo expected");
        };
        assert_eq!((s.beta, s.simpo_gamma, s.cpo_alpha), (2.0, 1.0, 0.0));
        let PreferenceObjective::Cpo(c) = parse("[objective]\nkind = \"cpo\"").unwrap() else {
            panic!("cpo expected");
        };
        assert_eq!(c, CpoConfig::default());
        for text in [
            "[objective]\nkind = \"orpo\"\nbeta = 0.3",
            "[objective]\nkind = \"simpo\"\nalpha = 0.25",
            "[objective]\nkind = \"kto\"\ndesirable_weight = 1.33",
            "[objective]\nkind = \"apo_zero_unpaired\"\nbeta = 0.2",
            "[objective]\nkind = \"bco\"\nbeta = 0.3",
            "[objective]\nkind = \"selm\"\nalpha = 0.01\nsample = { max_new_tokens = 32 }",
            "[objective]\nkind = \"treg\"\nbetter_prompt = \"Be good.\"",
            "[objective]\nkind = \"pro\"\nsft_weight = 0.2",
            "[objective]\nloss_type = [\"sigmoid\", \"sft\"]\nloss_weights = [1.0, 0.5]",
        ] {
            let o = parse(text).unwrap();
            let again = parse(
                &toml::to_string(&Section {
                    objective: o.clone(),
                })
                .unwrap(),
            )
            .unwrap();
            assert_eq!(again, o, "{text}");
        }
        for (bad, says) in [
            ("[objective]\nkind = \"ktx\"", "not one of"),
            (
                "[objective]\nkind = \"bco\"\nlabel_smoothing = 0.1",
                "label_smoothing",
            ),
            ("[objective]\nkind = \"orpo\"\ngamma = 1.0", "gamma"),
            (
                "[objective]\nkind = \"simpo\"\nloss_type = \"ipo\"",
                "loss_type",
            ),
            ("[objective]\nloss_type = \"dpo\"", "loss_type"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    /// CoPG and A-LoL on 2 hand-worked scored pairs (T − 1 = 3): summed log-probs over the
    /// completion tokens, policy `[−1.5, −0.9 | −1.5, −0.7]`, reference `[−2, −3 | −2, −2]`,
    /// so `Δ = [0.5, 2.1 | 0.5, 1.3]`; scores chosen `[1, 0]`, rejected `[−1, 0.5]`.
    #[test]
    fn scored_objectives_match_hand_worked_values() {
        use rm_core::burn::tensor::TensorData;
        let device = rm_core::device::test_device();
        let t2 = |v: Vec<f32>, shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v, shape), &device)
        };
        let policy = t2(
            vec![
                -0.5, -1.0, 0.0, -0.2, -0.3, -0.4, -2.0, -1.5, 0.0, -0.9, -0.1, -0.6,
            ],
            [4, 3],
        );
        let reference = t2(vec![-1.0; 12], [4, 3]);
        let mask = t2(
            vec![
                0., 1., 1., 0., 0., 1., 1., 1., 1., 0., 1., 1., 0., 0., 1., 1.,
            ],
            [4, 4],
        );
        let scores =
            Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 0.0, -1.0, 0.5], [4]), &device);
        let run = |objective: PreferenceObjective, with_reference: bool| {
            objective
                .loss(ObjectiveInputs {
                    reference: with_reference.then(|| reference.clone()),
                    scores: Some(scores.clone()),
                    ..ObjectiveInputs::new(policy.clone(), mask.clone())
                })
                .unwrap()
        };
        let values = |t: Tensor<1>| t.into_data().iter::<f32>().collect::<Vec<f32>>();
        // CoPG, β = 0.5: ((1 − (−1)) − 0.5·0)² = 4 and ((0 − 0.5) − 0.5·0.8)² = 0.81.
        let copg = run(PreferenceObjective::Copg(CopgConfig { beta: 0.5 }), true);
        assert!((values(copg.loss)[0] - 2.405).abs() < 1e-5);
        for (got, want) in values(copg.chosen_rewards)
            .into_iter()
            .chain(values(copg.rejected_rewards))
            .zip([0.25f32, 1.05, 0.25, 0.65])
        {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        // A-LoL: advantages ±(R_c − R_r)/2 = [1, −0.25 | −1, 0.25]; A⁺ keeps rows 0 and 3.
        let alol = |variant, clip| {
            PreferenceObjective::Alol(AlolConfig {
                variant,
                clip,
                beta: 0.0,
            })
        };
        let ref_free = run(alol(AlolKind::RefFree, 0.9), false);
        assert!((values(ref_free.loss)[0] - (1.5 + 0.25 * 0.7) / 4.0).abs() < 1e-6);
        // Sequence weights clip(e^Δ, 0.5, 1.5): e^0.5 and e^1.3 both clip to 1.5.
        let clipped = run(alol(AlolKind::Alol, 0.5), true);
        assert!((values(clipped.loss)[0] - (2.25 + 1.5 * 0.25 * 0.7) / 4.0).abs() < 1e-6);
        let err = PreferenceObjective::Copg(CopgConfig { beta: 0.5 })
            .loss(ObjectiveInputs {
                reference: Some(reference),
                ..ObjectiveInputs::new(policy, mask)
            })
            .err()
            .unwrap();
        assert!(err.to_string().contains("needs a score"), "{err}");
    }

    /// SELM and T-REG read their rows as laid out: 2 pairs, `T − 1 = 2`, every position a
    /// completion token. Values are computed here in f64 from the formulas.
    #[test]
    fn selm_and_treg_match_their_formulas_on_hand_made_rows() {
        use rm_core::burn::tensor::TensorData;
        let device = rm_core::device::test_device();
        let t2 = |v: &[f32], rows: usize, cols: usize| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), &device)
        };
        let sig_nll = |x: f64| (1.0 + (-x).exp()).ln();
        // Rows: chosen 0, chosen 1, rejected 0, rejected 1, sampled 0, sampled 1.
        let policy = [
            -1.0f32, -0.5, -2.0, -0.25, -3.0, -1.0, -0.5, -0.5, -0.2, -0.3, -4.0, -1.0,
        ];
        let reference = [
            -1.5f32, -0.5, -1.0, -1.0, -2.0, -1.5, -0.5, -1.0, -0.6, -0.4, -2.0, -2.0,
        ];
        let sums = |v: &[f32], row: usize| (v[2 * row] + v[2 * row + 1]) as f64;
        let delta = |row| sums(&policy, row) - sums(&reference, row);
        let (beta, alpha) = (0.5f64, 0.2f64);
        let selm = PreferenceObjective::Selm(SelmConfig {
            beta: beta as f32,
            alpha: alpha as f32,
            ..SelmConfig::default()
        });
        let out = selm
            .loss(ObjectiveInputs {
                reference: Some(t2(&reference, 6, 2)),
                ..ObjectiveInputs::new(t2(&policy, 6, 2), t2(&[1.0; 18], 6, 3))
            })
            .unwrap();
        let want = (0..2)
            .map(|i| sig_nll(beta * (delta(i) - delta(2 + i))) + alpha * beta * delta(4 + i))
            .sum::<f64>()
            / 2.0;
        let got = out.loss.into_scalar::<f32>() as f64;
        assert!((got - want).abs() < 1e-5, "selm {got} vs {want}");
        let rewards: Vec<f32> = out.chosen_rewards.into_data().iter::<f32>().collect();
        assert!((rewards[1] as f64 - beta * delta(1)).abs() < 1e-6);
        // T-REG on the first 4 rows, token rewards w per position.
        let w = [0.5f32, -1.0, 2.0, 0.0, -0.5, 1.5, 1.0, 1.0];
        let treg = PreferenceObjective::Treg(TregConfig {
            beta: beta as f32,
            alpha: alpha as f32,
            ..TregConfig::default()
        });
        let out = treg
            .loss(ObjectiveInputs {
                reference: Some(t2(&reference[..8], 4, 2)),
                token_rewards: Some(t2(&w, 4, 2)),
                ..ObjectiveInputs::new(t2(&policy[..8], 4, 2), t2(&[1.0; 12], 4, 3))
            })
            .unwrap();
        let weighted = |row: usize| {
            (0..2)
                .map(|k| (w[2 * row + k] * (policy[2 * row + k] - reference[2 * row + k])) as f64)
                .sum::<f64>()
        };
        let want = (0..2)
            .map(|i| {
                sig_nll(beta * (delta(i) - delta(2 + i)))
                    + alpha * (sig_nll(beta * weighted(i)) + sig_nll(beta * weighted(2 + i)))
            })
            .sum::<f64>()
            / 2.0;
        let got = out.loss.into_scalar::<f32>() as f64;
        assert!((got - want).abs() < 1e-5, "treg {got} vs {want}");
        // T-REG without its token rewards, SELM with rows that are not 3 per pair: errors.
        let err = treg
            .loss(ObjectiveInputs {
                reference: Some(t2(&reference[..8], 4, 2)),
                ..ObjectiveInputs::new(t2(&policy[..8], 4, 2), t2(&[1.0; 12], 4, 3))
            })
            .err()
            .unwrap();
        assert!(err.to_string().contains("token-level rewards"), "{err}");
        let err = selm
            .loss(ObjectiveInputs {
                reference: Some(t2(&reference[..8], 4, 2)),
                ..ObjectiveInputs::new(t2(&policy[..8], 4, 2), t2(&[1.0; 12], 4, 3))
            })
            .err()
            .unwrap();
        assert!(err.to_string().contains("3 rows per pair"), "{err}");
    }

    #[test]
    fn reference_free_losses_equal_the_rm_losses_functions_on_the_same_rows() {
        use rm_core::burn::tensor::TensorData;
        let device = rm_core::device::test_device();
        // 2 pairs, T − 1 = 3; completion masks [2B, T].
        let policy = Tensor::<2>::from_data(
            TensorData::new(
                vec![
                    -0.5f32, -1.0, 0.0, -0.2, -0.3, -0.4, -2.0, -1.5, 0.0, -0.9, -0.1, -0.6,
                ],
                [4, 3],
            ),
            &device,
        );
        let mask = Tensor::<2>::from_data(
            TensorData::new(
                vec![
                    0f32, 1., 1., 0., 0., 1., 1., 1., 0., 1., 1., 0., 0., 0., 1., 1.,
                ],
                [4, 4],
            ),
            &device,
        );
        let m = mask.clone().narrow(1, 1, 3);
        let completions = |start| {
            Completions::from_tokens(
                policy.clone().narrow(0, start, 2),
                m.clone().narrow(0, start, 2),
            )
            .unwrap()
        };
        let value = |t: Tensor<1>| t.into_scalar::<f32>();
        let simpo = CpoConfig {
            beta: 2.0,
            cpo_alpha: 0.3,
            ..CpoConfig::default()
        };
        for (objective, expected) in [
            (
                PreferenceObjective::Orpo(OrpoConfig { beta: 0.2 }),
                value(orpo_loss(completions(0), completions(2), 0.2).unwrap()),
            ),
            (
                PreferenceObjective::Cpo(CpoConfig::default()),
                value(cpo_loss(completions(0), completions(2), 0.1, 0.0, 1.0).unwrap()),
            ),
            (
                PreferenceObjective::Simpo(simpo.clone()),
                value(alphapo_loss(completions(0), completions(2), 2.0, 0.5, 0.0, 0.0).unwrap())
                    + 0.3 * value(completions(0).nll()),
            ),
        ] {
            let out = objective
                .loss(ObjectiveInputs::new(policy.clone(), mask.clone()))
                .unwrap();
            let got = value(out.loss);
            assert!(
                (got - expected).abs() < 1e-6,
                "{objective:?}: {got} vs {expected}"
            );
        }
        let dpo = PreferenceObjective::default();
        assert!(
            dpo.loss(ObjectiveInputs::new(policy, mask)).is_err(),
            "DPO without a reference"
        );
    }
}
