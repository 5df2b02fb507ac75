//! [`RlTask`]: online RL for the rollout driver — collect a buffer of completions from the
//! current policy, score them, turn rewards into advantages; then the policy loss on
//! micro-batches of that buffer.
//!
//! One collection (iteration `i`):
//! 1. `prompts_per_iteration` prompts, in a seeded order that visits every training prompt once
//!    per pass; `group_size` completions each (the group), sampled from the frozen policy;
//! 2. the rewards of [`super::rewards`] (a sample a reward function fails on is masked: no
//!    loss, no part in its group's statistics); truncated completions and all-equal groups
//!    masked when the recipe says so;
//! 3. the old policy's per-token log-probs (a full forward pass), the reference's when the KL
//!    term is on (the LoRA-disabled policy, or the frozen snapshot under full fine-tuning);
//! 4. token rewards (the sequence reward on the last token, each process reward of a
//!    `process_model` component on the last token of its step, minus `coef·kl_t` when the KL is
//!    in the reward), then the recipe's advantage estimator with groups by prompt (and the step
//!    mask, for PURE's min-form credit);
//! 5. the truncated importance-sampling correction when the sampler's distribution differs from
//!    the policy's (temperature, top-k/top-p): each token's advantage times
//!    `min(π_old/q, cap)` (or the token masked when the ratio exceeds the cap), per token or
//!    per sequence.
//!
//! The loss of a micro-batch: the recipe's policy loss (clip, GSPO, CISPO) aggregated by its
//! mode with the weight that keeps accumulation exact, plus `coef·agg(kl)` when the KL is in
//! the loss, minus `entropy_coef·agg(entropy)`. Its forward pass runs each distinct prompt of
//! the micro-batch once ([`rm_core::shared_prompt`]: a group's completions share their
//! prompt's pass, in the loss as in the collection), except with a critic, whose value head
//! reads the hidden states of every position.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use rm_core::burn::module::Module;
use rm_core::burn::tensor::{Device, Tensor, TensorData};
use rm_core::completion_logits::CompletionLogits;
use rm_core::logprobs::HeadPositions;
use rm_core::models::heads::ValueHead;
use rm_core::models::llama::LlamaModel;
use rm_core::models::policy_folder::Policy;
use rm_core::policy::{CausalPolicy, PolicyWithCritic, PolicyWithValue, reference_policy};
use rm_core::sampling::SamplingConfig;
use rm_core::shared_prompt::shared_prompt_forward;
use rm_core::tokenize::{PaddingSide, Sequence, TokenBatch};
use rm_core::train::{
    Collected, Evaluation, LossOutput, Metric, RolloutTask, StepValues, TrainTask, epoch_order,
};
use serde::{Deserialize, Serialize};

use super::algos::{
    AdvantageEstimator, AdvantageInput, ComponentAggregation, KlController, aggregate,
    aggregate_reward_components, calibrated_reward, clipped_value_loss, compute_advantages,
    consistency_rate, kl_penalty, p3o_loss, policy_loss, token_entropy,
};
use super::filtration::policy_filtration;
use super::implicit_prm::ImplicitPrm;
use super::importance::{ImportanceCorrection, importance_weights};
use super::prompts::RlPrompt;
use super::recipe::{
    ConstraintBound, KlPlacement, OnlineDpoConfig, OnlineDpoReference, P3oConfig, PairLabel,
    RlRecipe,
};
use super::rewards::process::step_end_tokens;
use super::rewards::{RewardSample, RewardSet, ScoredSample};
use super::rollout::{
    Completion, CompletionScores, Sampled, ValueSource, completion_logprobs, device_of, sample,
    score_completions, with_stop_tokens,
};
use super::scir::{self, Judge};

/// What online RL trains: a causal LM, with or without PPO's value head (on the policy's
/// hidden states or on a separate value model's).
pub trait RlModel: Module + Sized {
    /// The causal LM.
    fn policy(&self) -> &LlamaModel;
    /// The critic's head, when the model has one.
    fn value_head(&self) -> Option<&ValueHead> {
        None
    }
    /// The separate value model under the head (`None`: the head reads the policy's hidden
    /// states).
    fn critic(&self) -> Option<&LlamaModel> {
        None
    }
    /// Where values come from.
    fn value_source(&self) -> ValueSource<'_> {
        match (self.value_head(), self.critic()) {
            (None, _) => ValueSource::None,
            (Some(head), None) => ValueSource::Shared(head),
            (Some(head), Some(critic)) => ValueSource::Separate(critic, head),
        }
    }
}

impl RlModel for LlamaModel {
    fn policy(&self) -> &LlamaModel {
        self
    }
}

impl RlModel for PolicyWithValue<LlamaModel> {
    fn policy(&self) -> &LlamaModel {
        &self.policy
    }

    fn value_head(&self) -> Option<&ValueHead> {
        Some(&self.value_head)
    }
}

impl RlModel for PolicyWithCritic<LlamaModel> {
    fn policy(&self) -> &LlamaModel {
        &self.policy
    }

    fn value_head(&self) -> Option<&ValueHead> {
        Some(&self.value_head)
    }

    fn critic(&self) -> Option<&LlamaModel> {
        Some(&self.critic)
    }
}

/// The file a PPO policy folder with a separate value model keeps that model's weights in
/// (beside its value head, [`VALUE_HEAD_FILE`]).
pub const CRITIC_FILE: &str = "critic.safetensors";

/// The file a PPO policy folder keeps its value head in.
pub const VALUE_HEAD_FILE: &str = "value_head.safetensors";

/// One row of the rollout buffer.
#[derive(Clone, Debug)]
struct BufferRow {
    sequence: Sequence,
    prompt_len: usize,
    old_logprobs: Vec<f32>,
    ref_logprobs: Vec<f32>,
    advantages: Vec<f32>,
    /// Per completion token: 1 trained, 0 masked.
    mask: Vec<f32>,
    /// The collection's values and GAE's returns per completion token (empty without a
    /// critic).
    values: Vec<f32>,
    returns: Vec<f32>,
}

/// The task's resumable state.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RlState {
    kl: KlController,
    /// Constrained RLHF's Lagrange multipliers, one per constraint.
    #[serde(default)]
    multipliers: Vec<f64>,
    /// InfAlign: each drawn training prompt's reference rewards of the calibrated component.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    calibration_reference: BTreeMap<usize, Vec<f32>>,
}

/// Online RL of a policy (LoRA or full fine-tuning) against reward functions.
pub struct RlTask {
    recipe: RlRecipe,
    policy: Policy,
    rewards: RewardSet,
    train_prompts: Vec<RlPrompt>,
    eval_prompts: Vec<RlPrompt>,
    /// The frozen snapshot of a fully fine-tuned policy (LoRA policies use their adapters
    /// switched off instead).
    snapshot: Option<LlamaModel>,
    kl: KlController,
    multipliers: Vec<f64>,
    sampling: SamplingConfig,
    eval_sampling: SamplingConfig,
    correction: ImportanceCorrection,
    buffer: Vec<BufferRow>,
    /// PRIME's implicit PRM, when the recipe has one.
    implicit_prm: Option<ImplicitPrm>,
    /// Online DPO: each prompt's (chosen, rejected) rows of the buffer, when it has a pair.
    pairs: Vec<Option<(usize, usize)>>,
    /// P3O: each prompt's pairs of buffer rows `(i, j)` with `Δ = R_i − R_j`.
    p3o_pairs: Vec<Vec<(usize, usize, f32)>>,
    /// CREAM: the policy that sampled the previous collection (frozen), and the consistency
    /// rate of the current collection's labels (1 without a previous iterate).
    previous_iterate: Option<LlamaModel>,
    cream_rate: f64,
    /// SCIR: the policy's generative judge, and each prompt's two judge prompts for its pair
    /// (the pair's first response shown as A, then as B).
    scir_judge: Option<Judge>,
    scir_prompts: Vec<Option<[Vec<u32>; 2]>>,
    /// InfAlign: the reference rewards of the calibrated component, by training prompt.
    calibration_reference: BTreeMap<usize, Vec<f32>>,
}

/// Where a checkpoint keeps CREAM's previous iterate (a policy folder).
const CREAM_PREVIOUS_DIR: &str = "cream_previous_iterate";

/// Means and standard deviations of the scored samples, per component and total.
fn reward_metrics(
    prefix: &str,
    names: &[String],
    scored: &[ScoredSample],
    metrics: &mut BTreeMap<String, f64>,
) {
    let totals: Vec<f64> = scored
        .iter()
        .filter_map(|s| s.total)
        .map(f64::from)
        .collect();
    let (mean, std) = mean_std(&totals);
    metrics.insert(format!("{prefix}reward"), mean);
    metrics.insert(format!("{prefix}reward_std"), std);
    metrics.insert(
        format!("{prefix}reward_failures"),
        (scored.len() - totals.len()) as f64,
    );
    for (k, name) in names.iter().enumerate() {
        let values: Vec<f64> = scored
            .iter()
            .filter_map(|s| s.components[k])
            .map(f64::from)
            .collect();
        let (mean, std) = mean_std(&values);
        metrics.insert(format!("{prefix}reward/{name}"), mean);
        metrics.insert(format!("{prefix}reward_std/{name}"), std);
    }
}

/// The LM head's logits of a loss micro-batch: on the scored positions of the shared-prompt
/// pass, or at [`HeadPositions`] of the plain one.
/// (One lives per micro-batch, on the stack: the variants' sizes do not matter.)
#[allow(clippy::large_enum_variant)]
enum HeadOutput {
    Scored(CompletionLogits),
    Positions(HeadPositions, Tensor<3>),
}

impl HeadOutput {
    /// The per-token entropy on the `[B, T−1]` grid (0 off the scored positions), through the
    /// logits' graph or off it.
    fn entropy(&self, with_graph: bool) -> Tensor<2> {
        let graph = |t: Tensor<3>| if with_graph { t } else { t.detach() };
        match self {
            Self::Scored(logits) => {
                let [rows, vocab] = logits.scored.dims();
                let per_row = token_entropy(graph(logits.scored.clone().reshape([1, rows, vocab])));
                logits.spread(per_row.reshape([rows]))
            }
            Self::Positions(positions, logits) => {
                positions.spread(token_entropy(graph(logits.clone())))
            }
        }
    }
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// `[B, W]` from rows of unequal length, zero-filled.
fn padded(rows: &[Vec<f32>], width: usize) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|r| {
            let mut v = r.clone();
            v.resize(width, 0.0);
            v
        })
        .collect()
}

/// `[rows, width]` values, row `i` holding `values(rows[i])` at its completion's positions of a
/// right-padded batch (from `prompt_len − 1`), 0 elsewhere.
fn completion_layout(
    rows: &[&BufferRow],
    width: usize,
    values: impl Fn(&BufferRow) -> &[f32],
) -> Vec<f32> {
    let mut out = vec![0.0f32; rows.len() * width];
    for (i, row) in rows.iter().enumerate() {
        let v = values(row);
        let start = i * width + row.prompt_len - 1;
        out[start..start + v.len()].copy_from_slice(v);
    }
    out
}

fn tensor2(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

impl RlTask {
    /// A task over loaded prompts; `policy` is the built policy (its module the one trained),
    /// `snapshot` the frozen copy of a fully fine-tuned policy when the KL term is on.
    pub fn new(
        recipe: RlRecipe,
        policy: Policy,
        rewards: RewardSet,
        train_prompts: Vec<RlPrompt>,
        eval_prompts: Vec<RlPrompt>,
        snapshot: Option<LlamaModel>,
    ) -> Result<Self> {
        if train_prompts.len() < recipe.rollout.prompts_per_iteration {
            bail!(
                "{} training prompts, fewer than rollout.prompts_per_iteration {}",
                train_prompts.len(),
                recipe.rollout.prompts_per_iteration
            );
        }
        let kl = KlController::new(recipe.algorithm.kl.controller()?)?;
        let multipliers = recipe
            .algorithm
            .constraints
            .iter()
            .map(|c| c.initial_multiplier)
            .collect();
        let sampling = match recipe.rollout.stop_at_eos {
            true => with_stop_tokens(recipe.rollout.sampling.clone(), &policy),
            false => recipe.rollout.sampling.clone(),
        };
        let eval_sampling =
            with_stop_tokens(
                recipe.eval.sampling.clone().unwrap_or_else(|| {
                    SamplingConfig::greedy(recipe.rollout.sampling.max_new_tokens)
                }),
                &policy,
            );
        if eval_sampling.max_new_tokens + 1 >= policy.spec.max_len {
            bail!(
                "eval.sampling.max_new_tokens {} leaves no room for the prompt in model.max_len {}",
                eval_sampling.max_new_tokens,
                policy.spec.max_len
            );
        }
        let correction = recipe.rollout.importance_correction.clone();
        if !(correction.cap.is_finite() && correction.cap >= 1.0) {
            bail!(
                "rollout.importance_correction.cap must be a finite number ≥ 1, got {}",
                correction.cap
            );
        }
        let scir_judge = match recipe
            .algorithm
            .online_dpo
            .as_ref()
            .and_then(|o| o.scir.as_ref())
        {
            Some(config) => Some(Judge::new(config, &policy).context("algorithm.online_dpo.scir")?),
            None => None,
        };
        Ok(Self {
            recipe,
            policy,
            rewards,
            train_prompts,
            eval_prompts,
            snapshot,
            kl,
            multipliers,
            sampling,
            eval_sampling,
            correction,
            buffer: Vec::new(),
            implicit_prm: None,
            pairs: Vec::new(),
            p3o_pairs: Vec::new(),
            previous_iterate: None,
            cream_rate: 1.0,
            scir_judge,
            scir_prompts: Vec::new(),
            calibration_reference: BTreeMap::new(),
        })
    }

    /// Gives the task PRIME's implicit PRM (`[algorithm.implicit_prm]`).
    pub fn with_implicit_prm(mut self, prm: ImplicitPrm) -> Result<Self> {
        if self.recipe.algorithm.implicit_prm.is_none() {
            bail!("the recipe has no [algorithm.implicit_prm]");
        }
        self.implicit_prm = Some(prm);
        Ok(self)
    }

    /// The implicit PRM, when the task has one.
    pub fn implicit_prm(&self) -> Option<&ImplicitPrm> {
        self.implicit_prm.as_ref()
    }

    /// PRIME: updates the implicit PRM on the collection's outcome labels (the `label`
    /// component above its threshold, on the rows that train), then adds its token rewards
    /// `coef·β·(log π_φ − log π_ref)` to those rows' token rewards. Logs `prm/*`.
    #[allow(clippy::too_many_arguments)]
    fn add_implicit_process_rewards(
        prm: &mut ImplicitPrm,
        names: &[String],
        (pad, batch): (u32, usize),
        completions: &[Completion],
        scored: &[ScoredSample],
        included: &[bool],
        reference: &[Vec<f32>],
        token_rewards: &mut [Vec<f32>],
        metrics: &mut BTreeMap<String, f64>,
    ) -> Result<()> {
        let config = prm.config().clone();
        let c = names
            .iter()
            .position(|n| n == &config.label)
            .with_context(|| format!("no reward component {:?}", config.label))?;
        let labels: Vec<Option<f32>> = (0..completions.len())
            .map(|r| {
                let value = scored[r].components[c].filter(|_| included[r])?;
                Some(if f64::from(value) > config.threshold {
                    1.0
                } else {
                    0.0
                })
            })
            .collect();
        if let Some(update) = prm.update(completions, reference, &labels, pad)? {
            metrics.insert("prm/loss".into(), update.loss);
            metrics.insert("prm/accuracy".into(), update.accuracy);
            metrics.insert(
                "prm/positive_rate".into(),
                update.positives as f64 / update.labelled.max(1) as f64,
            );
        }
        let rewards = prm.token_rewards(completions, reference, pad, batch)?;
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (r, row) in rewards.iter().enumerate() {
            if !included[r] {
                continue;
            }
            for (t, &x) in row.iter().enumerate() {
                token_rewards[r][t] += (config.coef * f64::from(x)) as f32;
                sum += f64::from(x);
            }
            count += row.len();
        }
        metrics.insert("prm/token_reward_mean".into(), sum / count.max(1) as f64);
        Ok(())
    }

    /// The reference of the frozen `policy` (same device).
    fn reference(&self, policy: &LlamaModel) -> Result<LlamaModel> {
        match &self.snapshot {
            Some(s) => Ok(s.valid()),
            None => reference_policy(policy),
        }
    }

    fn kl_active(&self) -> bool {
        self.recipe.algorithm.kl.active()
    }

    /// Whether collections compute the reference's log-probs.
    fn needs_reference(&self) -> bool {
        self.recipe.needs_reference()
    }

    /// Online DPO's pair of each prompt: among its included rows, the best and the worst by
    /// `score` (a strict gap, else no pair).
    fn label_pairs(&self, included: &[bool], score: &[f64]) -> Vec<Option<(usize, usize)>> {
        let g = self.recipe.rollout.group_size;
        (0..included.len() / g)
            .map(|p| {
                let rows: Vec<usize> = (p * g..(p + 1) * g).filter(|&r| included[r]).collect();
                let best = rows
                    .iter()
                    .copied()
                    .reduce(|a, b| if score[b] > score[a] { b } else { a })?;
                let worst = rows
                    .iter()
                    .copied()
                    .reduce(|a, b| if score[b] < score[a] { b } else { a })?;
                (score[best] > score[worst]).then_some((best, worst))
            })
            .collect()
    }

    /// The buffer rows of `pairs` — every first row, then every second (DPO's `[chosen…,
    /// rejected…]` layout) — and their right-padded batch.
    fn pair_batch(&self, pairs: &[(usize, usize)]) -> Result<(Vec<&BufferRow>, TokenBatch)> {
        let rows: Vec<&BufferRow> = pairs
            .iter()
            .map(|p| &self.buffer[p.0])
            .chain(pairs.iter().map(|p| &self.buffer[p.1]))
            .collect();
        let seqs: Vec<Sequence> = rows.iter().map(|r| r.sequence.clone()).collect();
        let batch = TokenBatch::pad(&seqs, self.policy.lm.tokenizer.pad_id(), PaddingSide::Right)?;
        Ok((rows, batch))
    }

    /// The DPO objective of `[algorithm.online_dpo]` on the pairs of prompts `items`, weighted
    /// by the number of pairs.
    fn online_dpo_loss(&self, model: &LlamaModel, items: &[usize]) -> Result<LossOutput> {
        let config = self
            .recipe
            .algorithm
            .online_dpo
            .as_ref()
            .context("online DPO is not configured")?;
        if let Some(judge) = &self.scir_judge {
            return self.scir_loss(model, judge, config, items);
        }
        let device = device_of(model);
        let pairs: Vec<(usize, usize)> = items
            .iter()
            .map(|&i| {
                self.pairs
                    .get(i)
                    .copied()
                    .ok_or_else(|| anyhow!("pair item {i} out of range"))
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        if pairs.is_empty() {
            return Ok(LossOutput::new(Tensor::zeros([1], &device), 0.0));
        }
        let (rows, batch) = self.pair_batch(&pairs)?;
        let (b2, width) = (batch.batch_size, batch.seq_len - 1);
        let previous_iterate = config.reference == OnlineDpoReference::PreviousIterate;
        let reference = completion_layout(&rows, width, |row| match previous_iterate {
            true => &row.old_logprobs,
            false => &row.ref_logprobs,
        });
        let completion = batch.completion_tensor(&device);
        let policy = model
            .completion_logprobs(
                batch.ids_tensor(&device),
                batch.attention_tensor(&device),
                completion.clone(),
                false,
            )?
            .token_logprobs;
        let reference = tensor2(reference, [b2, width], &device);
        let mask = completion.float();
        let out = config
            .dpo
            .loss(rm_losses::preference::DpoBatch::new(
                policy.clone(),
                reference.clone(),
                mask.clone(),
            ))
            .map_err(|e| anyhow!("online DPO: {e}"))?;
        let mut loss = out.loss.clone();
        if config.cream && self.cream_rate < 1.0 {
            // CREAM: C·L(y_w, y_l) + (1 − C)·L(y_l, y_w), the reversed pairs from the same
            // pass (rows [chosen…, rejected…] swapped halves).
            let p = pairs.len();
            let swap =
                |t: Tensor<2>| Tensor::cat(vec![t.clone().narrow(0, p, p), t.narrow(0, 0, p)], 0);
            let reversed = config
                .dpo
                .loss(rm_losses::preference::DpoBatch::new(
                    swap(policy),
                    swap(reference),
                    swap(mask),
                ))
                .map_err(|e| anyhow!("online DPO (CREAM's reversed pairs): {e}"))?;
            let c = self.cream_rate;
            loss = loss.mul_scalar(c) + reversed.loss.mul_scalar(1.0 - c);
        }
        let n = pairs.len() as f64;
        let margin = out.chosen_rewards.clone() - out.rejected_rewards.clone();
        let accuracy = margin.clone().greater_elem(0.0).float().mean();
        Ok(LossOutput::new(loss, n)
            .with_tokens(batch.lengths.iter().sum())
            .with(Metric::device(
                "reward_chosen",
                out.chosen_rewards.mean(),
                n,
            ))
            .with(Metric::device(
                "reward_rejected",
                out.rejected_rewards.mean(),
                n,
            ))
            .with(Metric::device("reward_margin", margin.mean(), n))
            .with(Metric::device("reward_accuracy", accuracy, n)))
    }

    /// SCIR's objective ([`crate::online::scir`]) on the pairs of prompts `items`: DPO on the
    /// pairs where the policy's implicit reward and its generative judge agree (labelled by
    /// that agreement) plus `λ` times the consistency loss of every pair, over the number of
    /// pairs.
    fn scir_loss(
        &self,
        model: &LlamaModel,
        judge: &Judge,
        config: &OnlineDpoConfig,
        items: &[usize],
    ) -> Result<LossOutput> {
        let device = device_of(model);
        let mut pairs = Vec::new();
        let (mut first_as_a, mut second_as_a) = (Vec::new(), Vec::new());
        for &i in items {
            let pair = self
                .pairs
                .get(i)
                .copied()
                .ok_or_else(|| anyhow!("pair item {i} out of range"))?;
            let Some(pair) = pair else { continue };
            let [ab, ba] = self
                .scir_prompts
                .get(i)
                .and_then(Option::as_ref)
                .with_context(|| {
                    format!("SCIR: the pair of prompt item {i} has no judge prompts")
                })?;
            pairs.push(pair);
            first_as_a.push(ab.clone());
            second_as_a.push(ba.clone());
        }
        if pairs.is_empty() {
            return Ok(LossOutput::new(Tensor::zeros([1], &device), 0.0));
        }
        let p = pairs.len();
        let (rows, batch) = self.pair_batch(&pairs)?;
        let (b2, width) = (batch.batch_size, batch.seq_len - 1);
        let reference = tensor2(
            completion_layout(&rows, width, |row| &row.ref_logprobs),
            [b2, width],
            &device,
        );
        let completion = batch.completion_tensor(&device);
        let logprobs = model.completion_logprobs(
            batch.ids_tensor(&device),
            batch.attention_tensor(&device),
            completion.clone(),
            false,
        )?;
        let policy = logprobs.token_logprobs;
        let mask = completion.float();
        // m = β[(Σ log π − log π_ref)(first) − (…)(second)], with a graph (the log-probs'
        // own mask is aligned with them, one column shorter than the completion mask).
        let delta = (policy.clone() - reference.clone())
            .mul(logprobs.mask)
            .sum_dim(1)
            .reshape([b2]);
        let margin =
            (delta.clone().narrow(0, 0, p) - delta.narrow(0, p, p)).mul_scalar(config.dpo.beta);
        let pad = self.policy.lm.tokenizer.pad_id();
        let judged = rm_losses::preference::debiased_judgment(
            judge.logit_gaps(model, &first_as_a, pad)?,
            judge.logit_gaps(model, &second_as_a, pad)?,
        )
        .map_err(|e| anyhow!("SCIR: {e}"))?;
        let consistency =
            rm_losses::preference::scir_consistency_loss(margin.clone(), judged.clone())
                .map_err(|e| anyhow!("SCIR: {e}"))?;
        let agreement = rm_losses::preference::scir_agreement(
            &scir::host(margin.clone())?,
            &scir::host(judged.clone())?,
        );
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for (i, agreed) in agreement.iter().enumerate() {
            match agreed {
                Some(true) => {
                    chosen.push(i as i64);
                    rejected.push((p + i) as i64);
                }
                Some(false) => {
                    chosen.push((p + i) as i64);
                    rejected.push(i as i64);
                }
                None => {}
            }
        }
        let agreeing = chosen.len();
        let mut total = consistency.clone().sum().mul_scalar(judge.lambda());
        if agreeing > 0 {
            chosen.extend(rejected);
            let order = Tensor::<1, rm_core::burn::tensor::Int>::from_data(
                TensorData::new(chosen, [2 * agreeing]),
                &device,
            );
            let out = config
                .dpo
                .loss(rm_losses::preference::DpoBatch::new(
                    policy.select(0, order.clone()),
                    reference.select(0, order.clone()),
                    mask.select(0, order),
                ))
                .map_err(|e| anyhow!("SCIR's DPO on the agreeing pairs: {e}"))?;
            total = total + out.loss.mul_scalar(agreeing as f32);
        }
        let n = p as f64;
        let tokens = batch.lengths.iter().sum::<usize>()
            + first_as_a
                .iter()
                .chain(&second_as_a)
                .map(Vec::len)
                .sum::<usize>();
        Ok(LossOutput::new(total.div_scalar(n), n)
            .with_tokens(tokens)
            .with(Metric::host("scir_agreement", agreeing as f64 / n, n))
            .with(Metric::device("scir_judge_first", judged.mean(), n))
            .with(Metric::device(
                "scir_consistency_loss",
                consistency.mean(),
                n,
            ))
            .with(Metric::device("reward_margin", margin.clone().mean(), n))
            .with(Metric::device(
                "reward_accuracy",
                margin.greater_elem(0.0).float().mean(),
                n,
            )))
    }

    /// P3O's loss ([`p3o_loss`]) on every pair of the prompts `items`, weighted by the number
    /// of pairs.
    fn p3o_loss(
        &self,
        model: &LlamaModel,
        items: &[usize],
        config: &P3oConfig,
    ) -> Result<LossOutput> {
        let device = device_of(model);
        let mut pairs = Vec::new();
        for &i in items {
            let prompt_pairs = self
                .p3o_pairs
                .get(i)
                .ok_or_else(|| anyhow!("pair item {i} out of range"))?;
            pairs.extend_from_slice(prompt_pairs);
        }
        if pairs.is_empty() {
            return Ok(LossOutput::new(Tensor::zeros([1], &device), 0.0));
        }
        let row_pairs: Vec<(usize, usize)> = pairs.iter().map(|p| (p.0, p.1)).collect();
        let (rows, batch) = self.pair_batch(&row_pairs)?;
        let (b2, width) = (batch.batch_size, batch.seq_len - 1);
        let old = completion_layout(&rows, width, |row| &row.old_logprobs);
        let mask = completion_layout(&rows, width, |row| &row.mask);
        let logprobs = model
            .completion_logprobs(
                batch.ids_tensor(&device),
                batch.attention_tensor(&device),
                batch.completion_tensor(&device),
                false,
            )?
            .token_logprobs;
        let delta: Vec<f32> = pairs.iter().map(|p| p.2).collect();
        let n = pairs.len();
        let out = p3o_loss(
            config.clip,
            config.clip_ratio,
            tensor2(old, [b2, width], &device),
            logprobs,
            tensor2(mask, [b2, width], &device),
            Tensor::from_data(TensorData::new(delta, [n]), &device),
        )?;
        Ok(LossOutput::new(out.loss.clone(), out.pairs)
            .with_tokens(batch.lengths.iter().sum())
            .with(Metric::device("pg_loss", out.loss, out.pairs))
            .with(Metric::device("pg_clipfrac", out.clipfrac, out.pairs))
            .with(Metric::device(
                "p3o_log_ratio_abs",
                out.log_ratio_abs,
                out.pairs,
            )))
    }

    /// The prompts of iteration `iteration` (indices into the training prompts): positions
    /// `[i·P, (i+1)·P)` of the concatenated seeded passes over the training prompts. Public for
    /// the `grpo-step-lora` bench, which hands the same prompts to its peer.
    pub fn iteration_prompts(&self, iteration: u64) -> Vec<usize> {
        let n = self.train_prompts.len();
        let p = self.recipe.rollout.prompts_per_iteration;
        let seed = self.recipe.train.seed;
        let start = iteration as usize * p;
        let mut out = Vec::with_capacity(p);
        let mut pass = start / n;
        let mut order = epoch_order(n, seed ^ 0x005E_ED0F_9A55, pass as u64);
        for pos in start..start + p {
            if pos / n != pass {
                pass = pos / n;
                order = epoch_order(n, seed ^ 0x005E_ED0F_9A55, pass as u64);
            }
            out.push(order[pos % n]);
        }
        out
    }

    /// Scores completions of `prompts` with every reward function.
    fn score(&self, prompts: &[&RlPrompt], completions: &[Completion]) -> Vec<ScoredSample> {
        let samples: Vec<RewardSample<'_>> = completions
            .iter()
            .map(|c| {
                let p = prompts[c.prompt_index];
                RewardSample {
                    prompt: &p.prompt,
                    completion: &c.text,
                    references: &p.references,
                    truncated: c.truncated,
                }
            })
            .collect();
        self.rewards.score(&samples)
    }

    /// InfAlign ([`CalibrationConfig`]): draws reference samples for the prompts `indices` not
    /// seen before (one batched pass of the reference policy) and replaces the calibrated
    /// component of every sample by `Φ(C)`, re-weighting its total. Returns the number of
    /// prompts' new reference rewards (for the cache) and the mean quantile `C` of the samples.
    fn calibrate(
        &self,
        policy: &LlamaModel,
        indices: &[usize],
        completions: &[Completion],
        scored: &mut [ScoredSample],
        seed: u64,
    ) -> Result<(BTreeMap<usize, Vec<f32>>, f64)> {
        let mut by_prompt: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        let Some(config) = self.recipe.algorithm.calibration.clone() else {
            return Ok((by_prompt, 0.0));
        };
        let names = self.rewards.component_names();
        let c = names
            .iter()
            .position(|n| *n == config.component)
            .with_context(|| format!("calibration: no reward component {:?}", config.component))?;
        let weight = self.rewards.weights()[c];
        let mut missing: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|p| !self.calibration_reference.contains_key(p))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let reference = self.reference(policy)?;
            let prompts: Vec<&RlPrompt> = missing.iter().map(|&p| &self.train_prompts[p]).collect();
            let sampled = sample(
                &reference,
                &self.policy,
                &prompts,
                config.reference_samples,
                &self.sampling,
                seed ^ 0x1_4f_a1_19,
                self.recipe.rollout.generation_batch,
            )
            .context("sampling the reference completions of InfAlign's calibration")?;
            let rewards = self.score(&prompts, &sampled.completions);
            by_prompt = missing.iter().map(|&p| (p, Vec::new())).collect();
            for (done, r) in sampled.completions.iter().zip(&rewards) {
                if let Some(v) = r.components[c] {
                    by_prompt
                        .get_mut(&missing[done.prompt_index])
                        .expect("every sampled prompt has an entry")
                        .push(v);
                }
            }
        }
        let mut quantiles = Vec::new();
        for (completion, s) in completions.iter().zip(scored.iter_mut()) {
            let prompt = indices[completion.prompt_index];
            let reference = by_prompt
                .get(&prompt)
                .or_else(|| self.calibration_reference.get(&prompt))
                .context("calibration: a prompt without reference rewards")?;
            let (Some(value), Some(quantile)) = (
                s.components[c],
                s.components[c].and_then(|v| calibrated_reward(v, reference)),
            ) else {
                continue;
            };
            quantiles.push(quantile);
            let new = config.transform.apply(quantile);
            s.components[c] = Some(new as f32);
            s.total = s
                .total
                .map(|t| (f64::from(t) + weight * (new - f64::from(value))) as f32);
        }
        let mean = quantiles.iter().sum::<f64>() / quantiles.len().max(1) as f64;
        Ok((by_prompt, mean))
    }

    /// Adds every included row's step rewards ([`ScoredSample::steps`]) to its token rewards on
    /// the tokens the steps end on ([`super::rewards::process::step_end_tokens`]: the first
    /// token whose decoded prefix covers the step's text; the last step on the last token) and
    /// returns the step mask: 1 on those tokens and on every included row's last token (where
    /// the sequence reward sits, so min-form credit sees the outcome too). Logs the mean number
    /// of steps per rewarded row and the mean step reward when any row has steps.
    fn place_step_rewards(
        &self,
        completions: &[Completion],
        scored: &[ScoredSample],
        included: &[bool],
        width: usize,
        token_rewards: &mut [Vec<f32>],
        metrics: &mut BTreeMap<String, f64>,
    ) -> Result<Vec<Vec<f32>>> {
        let tokenizer = &self.policy.lm.tokenizer;
        let mut mask = vec![vec![0.0f32; width]; completions.len()];
        let (mut rows, mut steps, mut total) = (0usize, 0usize, 0f64);
        for (r, c) in completions.iter().enumerate() {
            if !included[r] || c.tokens.is_empty() {
                continue;
            }
            mask[r][c.tokens.len() - 1] = 1.0;
            let rewards = &scored[r].steps;
            if rewards.is_empty() {
                continue;
            }
            let mut failed = None;
            let ends: Vec<usize> = rewards.iter().map(|x| x.end).collect();
            let at = step_end_tokens(&ends, c.tokens.len(), |k| {
                match tokenizer.decode(&c.tokens[..=k], true) {
                    Ok(text) => text.trim_start().len(),
                    Err(e) => {
                        failed = Some(e);
                        usize::MAX
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e.context(format!("placing the step rewards of rollout {}", r + 1)));
            }
            for (&k, x) in at.iter().zip(rewards) {
                token_rewards[r][k] += x.reward;
                mask[r][k] = 1.0;
                total += f64::from(x.reward);
            }
            rows += 1;
            steps += rewards.len();
        }
        if rows > 0 {
            metrics.insert("process/steps_per_row".into(), steps as f64 / rows as f64);
            metrics.insert("process/step_reward_mean".into(), total / steps as f64);
        }
        Ok(mask)
    }

    /// Constrained RLHF (see [`super::recipe::ConstraintConfig`]): adds `s·λ·c` to each
    /// included row's reward with the current multipliers, then takes the dual step on this
    /// collection's mean of each constrained component (returns the new multipliers); logs
    /// `lambda/<component>` (the value used) and `constraint/<component>` (the mean).
    fn apply_constraints(
        &self,
        scored: &[ScoredSample],
        included: &[bool],
        rewards: &mut [f32],
        metrics: &mut BTreeMap<String, f64>,
    ) -> Vec<f64> {
        let mut multipliers = self.multipliers.clone();
        let names = self.rewards.component_names();
        for (i, c) in self.recipe.algorithm.constraints.iter().enumerate() {
            let Some(k) = names.iter().position(|n| *n == c.component) else {
                continue; // checked by the recipe's validation
            };
            let sign = match c.bound {
                ConstraintBound::AtLeast => 1.0,
                ConstraintBound::AtMost => -1.0,
            };
            let lambda = multipliers[i];
            let mut values = Vec::new();
            for (r, s) in scored.iter().enumerate() {
                if let (true, Some(v)) = (included[r], s.components[k]) {
                    rewards[r] += (sign * lambda * f64::from(v)) as f32;
                    values.push(f64::from(v));
                }
            }
            metrics.insert(format!("lambda/{}", c.component), lambda);
            if values.is_empty() {
                continue;
            }
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            metrics.insert(format!("constraint/{}", c.component), mean);
            multipliers[i] = (lambda + c.multiplier_lr * sign * (c.threshold - mean)).max(0.0);
        }
        multipliers
    }

    fn forward_batch(&self) -> usize {
        self.recipe
            .train
            .micro_batch_size
            .unwrap_or(self.recipe.train.batch_size)
            .max(1)
    }
}

impl<M: RlModel> TrainTask<M> for RlTask {
    fn loss(&mut self, model: &M, items: &[usize]) -> Result<LossOutput> {
        let head = model.value_head();
        let separate_critic = model.critic();
        let model = model.policy();
        if self.recipe.algorithm.online_dpo.is_some() {
            return self.online_dpo_loss(model, items);
        }
        if let Some(config) = &self.recipe.algorithm.p3o {
            return self.p3o_loss(model, items, config);
        }
        let device = device_of(model);
        let rows: Vec<&BufferRow> = items
            .iter()
            .map(|&i| {
                self.buffer
                    .get(i)
                    .ok_or_else(|| anyhow!("buffer item {i} out of range"))
            })
            .collect::<Result<_>>()?;
        let seqs: Vec<Sequence> = rows.iter().map(|r| r.sequence.clone()).collect();
        let batch = TokenBatch::pad(&seqs, self.policy.lm.tokenizer.pad_id(), PaddingSide::Right)?;
        let tokens: usize = batch.lengths.iter().sum();
        let (b, width) = (batch.batch_size, batch.seq_len - 1);
        let mut old = vec![0.0f32; b * width];
        let mut adv = vec![0.0f32; b * width];
        let mut reference = vec![0.0f32; b * width];
        let mut mask = vec![0.0f32; b * width];
        let critic = head.is_some();
        let mut old_values = vec![0.0f32; if critic { b * width } else { 0 }];
        let mut returns = old_values.clone();
        for (i, row) in rows.iter().enumerate() {
            let start = i * width + row.prompt_len - 1;
            let n = row.old_logprobs.len();
            old[start..start + n].copy_from_slice(&row.old_logprobs);
            adv[start..start + n].copy_from_slice(&row.advantages);
            mask[start..start + n].copy_from_slice(&row.mask);
            if !row.ref_logprobs.is_empty() {
                reference[start..start + n].copy_from_slice(&row.ref_logprobs);
            }
            if critic {
                old_values[start..start + n].copy_from_slice(&row.values);
                returns[start..start + n].copy_from_slice(&row.returns);
            }
        }
        let trained: f32 = mask.iter().sum();
        let algorithm = &self.recipe.algorithm;
        let norm = Some(self.recipe.rollout.sampling.max_new_tokens);
        let agg = algorithm.loss_aggregation;
        let mask_t = tensor2(mask, [b, width], &device);
        // The LM head runs on the completion-predicting positions only. Without a critic on
        // the policy, the rows of one prompt (a group's completions) share its pass; a critic
        // reads the hidden states of every position, so it takes the plain right-padded pass
        // (of the policy when shared, of its own model when separate).
        let (logprobs, head_output, hidden) = match (critic, separate_critic) {
            (false, _) | (true, Some(_)) => {
                let pad = self.policy.lm.tokenizer.pad_id();
                let (out, logits) = shared_prompt_forward(model, &seqs, pad, false, b)?;
                let logits = logits.context("the policy's pass gave no logits")?;
                let hidden = match separate_critic {
                    Some(c) => Some(c.hidden_states(
                        batch.ids_tensor(&device),
                        batch.attention_tensor(&device),
                    )?),
                    None => None,
                };
                (out.token_logprobs, HeadOutput::Scored(logits), hidden)
            }
            (true, None) => {
                let ids = batch.ids_tensor(&device);
                let hidden = model.hidden_states(ids.clone(), batch.attention_tensor(&device))?;
                let completion = batch.completion_tensor(&device);
                let positions = HeadPositions::of(&completion)?;
                let logits = positions.logits(model, hidden.clone());
                let logprobs = positions
                    .logprobs(logits.clone(), ids, completion, false)
                    .token_logprobs;
                (
                    logprobs,
                    HeadOutput::Positions(positions, logits),
                    Some(hidden),
                )
            }
        };
        let pg = policy_loss(
            &algorithm.policy_loss,
            agg,
            tensor2(old, [b, width], &device),
            logprobs.clone(),
            tensor2(adv, [b, width], &device),
            mask_t.clone(),
            norm,
        )?;
        let mut loss = pg.loss.clone();
        let token_weight = f64::from(trained);
        let mut metrics = vec![
            Metric::device("pg_loss", pg.loss, pg.weight),
            Metric::device("pg_clipfrac", pg.clipfrac, token_weight),
            Metric::device("pg_clipfrac_lower", pg.clipfrac_lower, token_weight),
            Metric::device("ppo_kl", pg.ppo_kl, token_weight),
        ];
        if let (Some(head), Some(c), Some(hidden)) = (head, &algorithm.critic, hidden) {
            let vpreds = head.forward(hidden.narrow(1, 0, width))?;
            let value = clipped_value_loss(
                vpreds,
                tensor2(old_values, [b, width], &device),
                tensor2(returns, [b, width], &device),
                mask_t.clone(),
                c.cliprange_value,
                agg,
                norm,
            )?;
            loss = loss + value.loss.clone().mul_scalar(c.vf_coef);
            metrics.push(Metric::device("vf_loss", value.loss, value.weight));
            metrics.push(Metric::device("vf_clipfrac", value.clipfrac, token_weight));
        }
        if self.kl_active() {
            let kl = kl_penalty(
                algorithm.kl.estimator,
                logprobs.clone(),
                tensor2(reference, [b, width], &device),
            );
            let (kl_mean, _) = aggregate(kl, mask_t.clone(), agg, norm)?;
            metrics.push(Metric::device("kl", kl_mean.clone(), pg.weight));
            if algorithm.kl.placement == KlPlacement::Loss {
                loss = loss + kl_mean.mul_scalar(self.kl.value());
            }
        }
        // The entropy bonus differentiates through the logits; logged alone, it is computed
        // off the graph.
        let entropy = if algorithm.entropy_coef > 0.0 {
            let entropy = head_output.entropy(true);
            let (entropy_mean, _) = aggregate(entropy.clone(), mask_t.clone(), agg, norm)?;
            loss = loss - entropy_mean.mul_scalar(algorithm.entropy_coef);
            entropy.detach()
        } else {
            head_output.entropy(false)
        };
        let entropy_tokens = (entropy * mask_t).sum().div_scalar(trained.max(1.0));
        metrics.push(Metric::device("entropy", entropy_tokens, token_weight));
        metrics.push(Metric::host("kl_coef", self.kl.value(), 1.0));
        let mut out =
            LossOutput::new(loss, if trained > 0.0 { pg.weight } else { 0.0 }).with_tokens(tokens);
        for m in metrics {
            out = out.with(m);
        }
        Ok(out)
    }

    fn evaluate(&mut self, model: &M) -> Result<Evaluation> {
        let model = model.policy();
        let prompts: Vec<&RlPrompt> = self.eval_prompts.iter().collect();
        let Sampled {
            completions,
            tokens,
            seconds,
        } = sample(
            model,
            &self.policy,
            &prompts,
            1,
            &self.eval_sampling,
            self.eval_sampling.seed,
            self.recipe.eval.batch_size,
        )
        .context("sampling the evaluation prompts")?;
        let scored = self.score(&prompts, &completions);
        let mut metrics = BTreeMap::new();
        reward_metrics("", &self.rewards.component_names(), &scored, &mut metrics);
        let lengths: Vec<f64> = completions.iter().map(|c| c.tokens.len() as f64).collect();
        metrics.insert("response_length".into(), mean_std(&lengths).0);
        metrics.insert(
            "truncated_fraction".into(),
            completions.iter().filter(|c| c.truncated).count() as f64 / completions.len() as f64,
        );
        metrics.insert("tokens_per_s".into(), tokens as f64 / seconds.max(1e-9));
        if self.snapshot.is_some() || self.policy.spec.lora.is_some() {
            // KL(π ‖ π_ref) per sequence: the mean of Σ_t (log π − log π_ref) over the samples
            // (unbiased when the evaluation samples at temperature 1).
            let pad = self.policy.lm.tokenizer.pad_id();
            // Full-vocabulary logits: the training micro-batch bounds the memory.
            let batch = self.forward_batch();
            let own = completion_logprobs(model, &completions, pad, batch)?;
            let reference = completion_logprobs(&self.reference(model)?, &completions, pad, batch)?;
            let kls: Vec<f64> = own
                .iter()
                .zip(&reference)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| f64::from(x - y)).sum())
                .collect();
            metrics.insert("kl_ref".into(), mean_std(&kls).0);
        }
        let score = metrics["reward"];
        if !score.is_finite() {
            bail!(
                "no evaluation sample could be scored ({} failures); first error: {}",
                scored.len(),
                scored
                    .iter()
                    .find_map(|s| s.errors.first().cloned())
                    .unwrap_or_default()
            );
        }
        Ok(Evaluation { metrics, score })
    }

    fn save_model(&self, model: &M, dir: &Path) -> Result<()> {
        self.policy.save(model.policy(), dir)?;
        if let Some(head) = model.value_head() {
            rm_core::train::save_all_params(head, &dir.join(VALUE_HEAD_FILE))?;
        }
        if let Some(critic) = model.critic() {
            rm_core::train::save_all_params(critic, &dir.join(CRITIC_FILE))?;
        }
        Ok(())
    }

    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(RlState {
            kl: self.kl.clone(),
            multipliers: self.multipliers.clone(),
            calibration_reference: self.calibration_reference.clone(),
        })?)
    }

    /// PRIME's implicit PRM and its optimizer, and CREAM's previous iterate, when the task has
    /// them.
    fn save_state_files(&self, dir: &Path) -> Result<()> {
        if let Some(prm) = &self.implicit_prm {
            prm.save_state(dir)?;
        }
        if let Some(previous) = &self.previous_iterate {
            self.policy
                .save(previous, &dir.join(CREAM_PREVIOUS_DIR))
                .context("saving CREAM's previous iterate")?;
        }
        Ok(())
    }

    fn load_state_files(&mut self, dir: &Path) -> Result<()> {
        if let Some(prm) = &mut self.implicit_prm {
            prm.load_state(dir)?;
        }
        let previous = dir.join(CREAM_PREVIOUS_DIR);
        self.previous_iterate = match previous.is_dir() {
            true => {
                let device = device_of(&self.policy.lm.model);
                let loaded = Policy::load(&previous, &device)
                    .with_context(|| format!("CREAM's previous iterate {}", previous.display()))?;
                Some(loaded.lm.model.valid())
            }
            false => None,
        };
        Ok(())
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<()> {
        let state: RlState =
            serde_json::from_value(state).context("the checkpoint's online-RL state")?;
        self.kl = state.kl;
        if state.multipliers.len() != self.multipliers.len() {
            bail!(
                "the checkpoint holds {} constraint multiplier(s), the recipe has {} constraint(s)",
                state.multipliers.len(),
                self.multipliers.len()
            );
        }
        self.multipliers = state.multipliers;
        self.calibration_reference = state.calibration_reference;
        Ok(())
    }

    /// Masks (failed rewards, truncation, tied groups, filtration) can empty a whole step.
    fn allows_empty_steps(&self) -> bool {
        true
    }

    fn after_step(&mut self, _model: &M, values: &StepValues) -> Result<()> {
        if self.recipe.algorithm.kl.placement == KlPlacement::Loss
            && let Some(&kl) = values.metrics.get("kl")
        {
            self.kl.update(kl, self.recipe.train.batch_size);
        }
        Ok(())
    }
}

impl<M: RlModel> RolloutTask<M> for RlTask {
    fn buffer_size(&self) -> usize {
        self.recipe.buffer_size()
    }

    fn collect(&mut self, model: &M, iteration: u64, seed: u64) -> Result<Collected> {
        let policy = model.policy();
        let g = self.recipe.rollout.group_size;
        let indices = self.iteration_prompts(iteration);
        let prompts: Vec<&RlPrompt> = indices.iter().map(|&i| &self.train_prompts[i]).collect();
        let Sampled {
            completions,
            tokens,
            seconds,
        } = sample(
            policy,
            &self.policy,
            &prompts,
            g,
            &self.sampling,
            seed,
            self.recipe.rollout.generation_batch,
        )
        .with_context(|| format!("sampling rollouts of iteration {}", iteration + 1))?;
        let mut scored = self.score(&prompts, &completions);
        let (new_reference, calibration_quantile) =
            self.calibrate(policy, &indices, &completions, &mut scored, seed)?;
        let calibration_prompts = new_reference.len();
        self.calibration_reference.extend(new_reference);
        let pad = self.policy.lm.tokenizer.pad_id();
        let CompletionScores {
            logprobs: old,
            values,
        } = score_completions(
            policy,
            model.value_source(),
            &completions,
            pad,
            self.forward_batch(),
        )?;
        let reference = if self.needs_reference() {
            completion_logprobs(
                &self.reference(policy)?,
                &completions,
                pad,
                self.forward_batch(),
            )?
        } else {
            Vec::new()
        };
        // Which rows train.
        let rollout = &self.recipe.rollout;
        let n = completions.len();
        let mut included: Vec<bool> = (0..n)
            .map(|r| {
                scored[r].total.is_some()
                    && !(rollout.mask_truncated_completions && completions[r].truncated)
            })
            .collect();
        let mut uniform_groups = 0;
        if rollout.drop_uniform_groups {
            for p in 0..prompts.len() {
                let rewards: Vec<f32> = (p * g..(p + 1) * g)
                    .filter(|&r| included[r])
                    .filter_map(|r| scored[r].total)
                    .collect();
                if rewards.len() > 1 && rewards.iter().all(|&x| x == rewards[0]) {
                    uniform_groups += 1;
                    for flag in &mut included[p * g..(p + 1) * g] {
                        *flag = false;
                    }
                }
            }
        }
        let filtered =
            policy_filtration(rollout.policy_filtration, &scored, &mut included, g, seed);
        let width = completions
            .iter()
            .map(|c| c.tokens.len())
            .max()
            .unwrap_or(0);
        let lengths: Vec<usize> = completions.iter().map(|c| c.tokens.len()).collect();
        let response_mask: Vec<Vec<f32>> = (0..n)
            .map(|r| {
                let on = if included[r] { 1.0 } else { 0.0 };
                let mut m = vec![on; lengths[r]];
                m.resize(width, 0.0);
                m
            })
            .collect();
        // Masked rows form groups of their own, so they take no part in their prompt's
        // statistics.
        let group: Vec<usize> = (0..n)
            .map(|r| {
                if included[r] {
                    r / g
                } else {
                    prompts.len() + r
                }
            })
            .collect();
        // The sequence rewards: the set's weighted total, or GDPO's sum of group-normalised
        // components.
        let sequence_rewards: Vec<f32> = match self.recipe.algorithm.reward_aggregation {
            ComponentAggregation::SumThenNormalize => {
                scored.iter().map(|s| s.total.unwrap_or(0.0)).collect()
            }
            mode => {
                let k = self.rewards.component_names().len();
                let components: Vec<Vec<f32>> = (0..k)
                    .map(|c| {
                        (0..n)
                            .map(|r| match included[r] {
                                true => scored[r].components[c].unwrap_or(0.0),
                                false => 0.0,
                            })
                            .collect()
                    })
                    .collect();
                aggregate_reward_components(&components, &self.rewards.weights(), &group, mode)?
            }
        };
        let mut sequence_rewards = sequence_rewards;
        let mut metrics = BTreeMap::new();
        if self.recipe.algorithm.calibration.is_some() {
            metrics.insert("calibration/new_prompts".into(), calibration_prompts as f64);
            metrics.insert("calibration/mean_quantile".into(), calibration_quantile);
        }
        let multipliers =
            self.apply_constraints(&scored, &included, &mut sequence_rewards, &mut metrics);
        let mut token_rewards: Vec<Vec<f32>> = (0..n)
            .map(|r| {
                let mut v = vec![0.0; width];
                if included[r] && lengths[r] > 0 {
                    v[lengths[r] - 1] = sequence_rewards[r];
                }
                v
            })
            .collect();
        // Process rewards: each step's reward on the token its step ends on (the step mask
        // marks those tokens for min-form credit assignment).
        let step_mask = self.place_step_rewards(
            &completions,
            &scored,
            &included,
            width,
            &mut token_rewards,
            &mut metrics,
        )?;
        let names = self.rewards.component_names();
        let shapes = (pad, self.forward_batch());
        if let Some(prm) = self.implicit_prm.as_mut() {
            Self::add_implicit_process_rewards(
                prm,
                &names,
                shapes,
                &completions,
                &scored,
                &included,
                &reference,
                &mut token_rewards,
                &mut metrics,
            )?;
        }
        if self.kl_active() {
            let device = device_of(policy);
            let flat = |rows: &[Vec<f32>]| padded(rows, width).concat();
            let kl = kl_penalty(
                self.recipe.algorithm.kl.estimator,
                tensor2(flat(&old), [n, width], &device),
                tensor2(flat(&reference), [n, width], &device),
            );
            let kl: Vec<f32> = kl
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .map_err(|e| anyhow!("reading the KL: {e:?}"))?;
            let mut per_seq = Vec::new();
            for r in 0..n {
                let row = &kl[r * width..r * width + lengths[r]];
                per_seq.push(row.iter().map(|&x| f64::from(x)).sum::<f64>());
                if self.recipe.algorithm.kl.placement == KlPlacement::Reward && included[r] {
                    let coef = self.kl.value() as f32;
                    for (t, x) in row.iter().enumerate() {
                        token_rewards[r][t] -= coef * x;
                    }
                }
            }
            let rollout_kl = mean_std(&per_seq).0;
            metrics.insert("rollout_kl".into(), rollout_kl);
            if self.recipe.algorithm.kl.placement == KlPlacement::Reward {
                let token_mean =
                    per_seq.iter().sum::<f64>() / lengths.iter().sum::<usize>().max(1) as f64;
                self.kl.update(token_mean, n);
            }
        }
        // P3O: every pair of a prompt's included rows, on the final (KL-shaped) returns.
        let p3o_pairs: Vec<Vec<(usize, usize, f32)>> = match &self.recipe.algorithm.p3o {
            None => Vec::new(),
            Some(_) => {
                let returns: Vec<f32> = (0..n)
                    .map(|r| token_rewards[r][..lengths[r]].iter().sum())
                    .collect();
                let pairs: Vec<Vec<(usize, usize, f32)>> = (0..prompts.len())
                    .map(|p| {
                        let rows: Vec<usize> =
                            (p * g..(p + 1) * g).filter(|&r| included[r]).collect();
                        rows.iter()
                            .enumerate()
                            .flat_map(|(k, &i)| {
                                rows[k + 1..]
                                    .iter()
                                    .map(move |&j| (i, j))
                                    .collect::<Vec<_>>()
                            })
                            .map(|(i, j)| (i, j, returns[i] - returns[j]))
                            .collect()
                    })
                    .collect();
                let gaps: Vec<f64> = pairs
                    .iter()
                    .flatten()
                    .map(|p| f64::from(p.2.abs()))
                    .collect();
                metrics.insert("pairs".into(), gaps.len() as f64);
                metrics.insert("pair_reward_gap".into(), mean_std(&gaps).0);
                pairs
            }
        };
        let baselines = if matches!(self.recipe.algorithm.estimator, AdvantageEstimator::Remax) {
            let greedy = SamplingConfig {
                temperature: 0.0,
                ..self.sampling.clone()
            };
            let base = sample(
                policy,
                &self.policy,
                &prompts,
                1,
                &greedy,
                seed,
                self.recipe.rollout.generation_batch,
            )
            .context("sampling ReMax's greedy baselines")?;
            let scores = self.score(&prompts, &base.completions);
            let per_prompt: Vec<f32> = scores.iter().map(|s| s.total.unwrap_or(0.0)).collect();
            metrics.insert(
                "baseline_reward".into(),
                mean_std(&per_prompt.iter().map(|&x| f64::from(x)).collect::<Vec<_>>()).0,
            );
            Some((0..n).map(|r| per_prompt[r / g]).collect::<Vec<f32>>())
        } else {
            None
        };
        let values_padded = values.as_ref().map(|v| padded(v, width));
        let advantages = compute_advantages(
            &self.recipe.algorithm.estimator,
            &AdvantageInput {
                token_level_rewards: &token_rewards,
                response_mask: &response_mask,
                group: &group,
                values: values_padded.as_deref(),
                reward_baselines: baselines.as_deref(),
                step_mask: Some(&step_mask),
            },
        )?;
        let (advantages, returns) = (advantages.advantages, advantages.returns);
        // The importance correction and the buffer.
        let mut capped = 0usize;
        let mut log_ratio_max = f64::NEG_INFINITY;
        let mut mismatch = 0.0f64;
        let mut buffer = Vec::with_capacity(n);
        for (r, c) in completions.iter().enumerate() {
            let len = lengths[r];
            let (weights, k) = importance_weights(&self.correction, &old[r], &c.sampling_logprobs);
            capped += k;
            for ((&o, &q), &m) in old[r]
                .iter()
                .zip(&c.sampling_logprobs)
                .zip(&c.model_logprobs)
            {
                log_ratio_max = log_ratio_max.max(f64::from(o - q));
                mismatch += f64::from((o - m).abs());
            }
            let mut mask = response_mask[r][..len].to_vec();
            let mut adv = advantages[r][..len].to_vec();
            for ((m, a), &w) in mask.iter_mut().zip(&mut adv).zip(&weights) {
                if w == 0.0 {
                    *m = 0.0;
                }
                *a *= w;
            }
            buffer.push(BufferRow {
                sequence: c.sequence(),
                prompt_len: c.prompt_ids.len(),
                old_logprobs: old[r].clone(),
                ref_logprobs: reference.get(r).cloned().unwrap_or_default(),
                advantages: adv,
                mask,
                values: values.as_ref().map_or(Vec::new(), |v| v[r].clone()),
                returns: match &values {
                    Some(_) => returns[r][..len].to_vec(),
                    None => Vec::new(),
                },
            });
        }
        if let Some(config) = &self.recipe.algorithm.online_dpo {
            let score: Vec<f64> = match config.label {
                PairLabel::Reward => scored
                    .iter()
                    .map(|s| f64::from(s.total.unwrap_or(0.0)))
                    .collect(),
                PairLabel::WinRate => scored
                    .iter()
                    .map(|s| f64::from(s.total.unwrap_or(0.0)))
                    .collect(),
                PairLabel::Implicit => old
                    .iter()
                    .zip(&reference)
                    .map(|(o, r)| {
                        let sum: f64 = o.iter().zip(r).map(|(a, b)| f64::from(a - b)).sum();
                        f64::from(config.dpo.beta) * sum
                    })
                    .collect(),
            };
            self.pairs = match config.label {
                PairLabel::WinRate => win_rate_pairs(
                    &included,
                    &score,
                    self.recipe.rollout.group_size,
                    config.min_gap,
                )?,
                PairLabel::Reward | PairLabel::Implicit => self.label_pairs(&included, &score),
            };
            if let Some(judge) = &self.scir_judge {
                let judge_prompts = self
                    .pairs
                    .iter()
                    .enumerate()
                    .map(|(p, pair)| {
                        let Some((a, b)) = *pair else {
                            return Ok(None);
                        };
                        let prompt = &prompts[p].prompt;
                        let (ta, tb) = (&completions[a].text, &completions[b].text);
                        Ok(Some([
                            judge.prompt_ids(&self.policy, prompt, ta, tb)?,
                            judge.prompt_ids(&self.policy, prompt, tb, ta)?,
                        ]))
                    })
                    .collect::<Result<Vec<_>>>()
                    .with_context(|| {
                        format!("SCIR's judge prompts of iteration {}", iteration + 1)
                    })?;
                self.scir_prompts = judge_prompts;
            }
            let gaps: Vec<f64> = self
                .pairs
                .iter()
                .flatten()
                .map(|&(c, r)| {
                    f64::from(scored[c].total.unwrap_or(0.0) - scored[r].total.unwrap_or(0.0))
                })
                .collect();
            metrics.insert("pairs".into(), gaps.len() as f64);
            metrics.insert("pair_reward_gap".into(), mean_std(&gaps).0);
            if config.cream {
                self.cream_rate = match &self.previous_iterate {
                    None => 1.0,
                    Some(previous) => {
                        let before =
                            completion_logprobs(previous, &completions, pad, self.forward_batch())?;
                        let beta = f64::from(config.dpo.beta);
                        let previous_score: Vec<f64> = before
                            .iter()
                            .zip(&reference)
                            .map(|(o, r)| {
                                beta * o.iter().zip(r).map(|(a, b)| f64::from(a - b)).sum::<f64>()
                            })
                            .collect();
                        let groups: Vec<(Vec<f64>, Vec<f64>)> = (0..prompts.len())
                            .map(|p| {
                                let rows = (p * g..(p + 1) * g).filter(|&r| included[r]);
                                (
                                    rows.clone().map(|r| score[r]).collect(),
                                    rows.map(|r| previous_score[r]).collect(),
                                )
                            })
                            .collect();
                        consistency_rate(&groups).unwrap_or(1.0)
                    }
                };
                metrics.insert("cream_consistency".into(), self.cream_rate);
                self.previous_iterate = Some(policy.clone());
            }
        }
        self.buffer = buffer;
        self.p3o_pairs = p3o_pairs;
        self.multipliers = multipliers;
        let total_tokens = lengths.iter().sum::<usize>().max(1) as f64;
        reward_metrics("", &self.rewards.component_names(), &scored, &mut metrics);
        let l: Vec<f64> = lengths.iter().map(|&x| x as f64).collect();
        let (mean_len, _) = mean_std(&l);
        metrics.insert("response_length".into(), mean_len);
        metrics.insert("response_length_max".into(), width as f64);
        metrics.insert(
            "truncated_fraction".into(),
            completions.iter().filter(|c| c.truncated).count() as f64 / n as f64,
        );
        metrics.insert(
            "masked_rows".into(),
            included.iter().filter(|&&x| !x).count() as f64,
        );
        metrics.insert("uniform_groups".into(), uniform_groups as f64);
        metrics.insert("filtered_rows".into(), filtered as f64);
        metrics.insert("rollout_tokens".into(), tokens as f64);
        metrics.insert(
            "rollout_tokens_per_s".into(),
            tokens as f64 / seconds.max(1e-9),
        );
        metrics.insert("sampler_logprob_mismatch".into(), mismatch / total_tokens);
        metrics.insert(
            "is_log_ratio_max".into(),
            if log_ratio_max.is_finite() {
                log_ratio_max
            } else {
                0.0
            },
        );
        metrics.insert("is_capped_fraction".into(), capped as f64 / total_tokens);
        let adv_tokens: Vec<f64> = (0..n)
            .flat_map(|r| {
                let row = &advantages[r];
                let mask = &response_mask[r];
                (0..lengths[r])
                    .filter(move |&t| mask[t] > 0.0)
                    .map(move |t| f64::from(row[t]))
            })
            .collect();
        let (adv_mean, adv_std) = mean_std(&adv_tokens);
        metrics.insert("advantage_mean".into(), adv_mean);
        metrics.insert("advantage_std".into(), adv_std);
        if let Some(e) = scored.iter().find_map(|s| s.errors.first()) {
            eprintln!(
                "iteration {}: a reward failed (sample masked): {e}",
                iteration + 1
            );
        }
        Ok(Collected {
            items: self.recipe.buffer_size(),
            metrics,
        })
    }
}

/// DNO-Prct's pair of each group of `g` rows ([`PairLabel::WinRate`]): among the group's
/// included rows, the win-rates under the Bradley–Terry oracle `P(y_i ≻ y_j) = σ(s_i − s_j)`
/// ([`rm_losses::preference::dno_win_rates`]), then the best and worst by win-rate when their
/// gap reaches `min_gap` ([`rm_losses::preference::dno_select_pairs`]); rows of the buffer.
pub(crate) fn win_rate_pairs(
    included: &[bool],
    score: &[f64],
    g: usize,
    min_gap: f32,
) -> Result<Vec<Option<(usize, usize)>>> {
    use rm_losses::preference::{dno_select_pairs, dno_win_rates};
    (0..included.len() / g)
        .map(|p| {
            let rows: Vec<usize> = (p * g..(p + 1) * g).filter(|&r| included[r]).collect();
            let k = rows.len();
            if k < 2 {
                return Ok(None);
            }
            let mut preferences = vec![0.5f32; k * k];
            for (a, &i) in rows.iter().enumerate() {
                for (b, &j) in rows.iter().enumerate() {
                    let gap = score[i] - score[j];
                    preferences[a * k + b] = (1.0 / (1.0 + (-gap).exp())) as f32;
                }
            }
            let rates = dno_win_rates(&preferences, k).map_err(|e| anyhow!("DNO: {e}"))?;
            let pair = dno_select_pairs(&rates, k, min_gap).map_err(|e| anyhow!("DNO: {e}"))?[0];
            Ok(pair.map(|(w, l)| (rows[w], rows[l])))
        })
        .collect()
}

#[cfg(test)]
mod win_rate_tests {
    use super::win_rate_pairs;

    /// Groups of 4: win-rates under σ(s_i − s_j) order rows as their scores do, so the pair is
    /// the best and the worst; an excluded row takes no part; a group
    /// with fewer than 2 included rows, all-equal scores, or a gap under `min_gap` gives none.
    #[test]
    fn dno_pairs_are_the_best_and_worst_by_win_rate() {
        let score = [1.0, 3.0, 2.0, 2.5, 0.0, 0.0, 0.0, 0.0, 5.0, -5.0, 1.0, 0.0];
        let all = [true; 12];
        let pairs = win_rate_pairs(&all, &score, 4, 0.0).unwrap();
        assert_eq!(pairs, vec![Some((1, 0)), None, Some((8, 9))]);
        let mut some = all;
        some[9] = false;
        some[1] = false;
        let pairs = win_rate_pairs(&some, &score, 4, 0.0).unwrap();
        assert_eq!(pairs, vec![Some((3, 0)), None, Some((8, 11))]);
        // Group 1's win-rates: (σ(−2) + σ(−1) + σ(−1.5))/3 = 0.1902 for the worst and
        // (σ(2) + σ(1) + σ(0.5))/3 = 0.7448 for the best: a gap of 0.5546.
        let loose = win_rate_pairs(&all, &score, 4, 0.55).unwrap();
        let strict = win_rate_pairs(&all, &score, 4, 0.56).unwrap();
        assert_eq!((loose[0], strict[0]), (Some((1, 0)), None));
        let lone = [true, false, false, false];
        assert_eq!(
            win_rate_pairs(&lone, &score[..4], 4, 0.0).unwrap(),
            vec![None]
        );
    }
}
