//! [`DpoTask`]: a preference objective (DPO family, ORPO, CPO, SimPO) over encoded pairs, for
//! the epoch driver.
//!
//! Each micro-batch of `B` pairs is one right-padded `[2B, T]` batch (chosen rows first, then
//! the rejected ones, TRL's concatenated layout). The policy's per-token log-probs come with a
//! graph; the reference's from the frozen reference module on the same device, without one.
//! Both run each pair's prompt once for its two completions
//! ([`rm_core::shared_prompt::shared_prompt_logprobs`]), with the same `[2B, T−1]` results.
//! Evaluation pairs always form the same batches, so their reference log-probs are computed at
//! the first evaluation and kept.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use rm_core::burn::module::Module;
use rm_core::burn::tensor::{Device, Tensor, TensorData};
use rm_core::completion_logits::CompletionLogits;
use rm_core::models::llama::LlamaModel;
use rm_core::models::policy_folder::Policy;
use rm_core::shared_prompt::shared_prompt_forward;
use rm_core::tokenize::{PaddingSide, Sequence, TokenBatch};
use rm_core::train::{EpochTask, Evaluation, LossOutput, Metric, TrainTask};

use super::data::EncodedPair;
use super::objective::{ObjectiveInputs, ObjectiveOutput, PreferenceObjective};
use super::reference_cache::{self, PairReference};
use super::token_rewards;
use super::vocab_level::{VocabInputs, segment_grid};

/// DPO-family training of a policy against a frozen reference.
pub struct DpoTask {
    train: Vec<EncodedPair>,
    eval: Vec<EncodedPair>,
    objective: PreferenceObjective,
    /// The policy as built (spec and tokenizer for saving; its module is not trained).
    template: Policy,
    /// The frozen reference on the training device (`None`: a reference-free objective).
    reference: Option<LlamaModel>,
    eval_batch: usize,
    /// Reference per-token log-probs of each evaluation batch, once computed.
    eval_reference: Vec<TensorData>,
    /// Reference per-token log-probs of every training pair, when precomputed.
    train_reference: Option<Vec<PairReference>>,
    /// Optimizer steps taken (TR-DPO's refresh schedule; part of the task state).
    steps: u64,
    /// AlignDistil's frozen teacher models, on the training device.
    teachers: Option<Teachers>,
}

/// The frozen models of AlignDistil's teacher distribution.
#[derive(Clone)]
pub struct Teachers {
    /// The DPO model.
    pub dpo: LlamaModel,
    /// The model the teacher extrapolates away from (`None`: the reference).
    pub contrast: Option<LlamaModel>,
}

impl Teachers {
    fn valid(&self) -> Self {
        Self {
            dpo: self.dpo.valid(),
            contrast: self.contrast.as_ref().map(|c| c.valid()),
        }
    }
}

/// The checkpoint file holding TR-DPO's refreshed reference.
const REFERENCE_FILE: &str = "reference.safetensors";

/// Names of the logged values: TRL's `rewards/*` and `logps/*`, and `kl_estimate`, the mean
/// over the batch's completions of `Σ_t log π(y_t|·) − log π_ref(y_t|·)` (a Monte-Carlo estimate
/// of KL(π‖π_ref) on the dataset's completions rather than on samples of π).
const METRICS: [&str; 7] = [
    "reward_accuracy",
    "reward_margin",
    "reward_chosen",
    "reward_rejected",
    "logps_chosen",
    "logps_rejected",
    "kl_estimate",
];

/// The per-batch values of [`METRICS`], on the device, each `[1]`, from the objective's
/// output, the policy's summed completion log-probs `[R]` and the reference's per-token ones
/// `[R, T−1]`, of which the first `2B` rows (the pairs', not SELM's samples) are read.
/// (`kl_estimate` is 0 for reference-free objectives.)
fn batch_metrics(
    out: &ObjectiveOutput,
    policy_sums: Tensor<1>,
    ref_logps: Option<Tensor<2>>,
    pairs: usize,
) -> Vec<Tensor<1>> {
    let rows = 2 * pairs;
    let policy_sums = policy_sums.narrow(0, 0, rows);
    let ref_sums = match ref_logps {
        Some(r) => r.narrow(0, 0, rows).sum_dim(1).reshape([rows]),
        None => policy_sums.clone().detach(),
    };
    let margin = out.chosen_rewards.clone() - out.rejected_rewards.clone();
    vec![
        margin.clone().greater_elem(0.0).float().mean(),
        margin.mean(),
        out.chosen_rewards.clone().mean(),
        out.rejected_rewards.clone().mean(),
        policy_sums.clone().narrow(0, 0, pairs).mean().detach(),
        policy_sums.clone().narrow(0, pairs, pairs).mean().detach(),
        (policy_sums - ref_sums).mean().detach(),
    ]
}

fn device_of(model: &LlamaModel) -> Device {
    model.embed_tokens.weight.val().device()
}

impl DpoTask {
    /// A task over encoded pairs. `reference` is the frozen reference module on the training
    /// device ([`rm_core::policy::reference_policy`] for LoRA policies, a `no_grad` snapshot
    /// otherwise), given exactly when the objective needs one.
    pub fn new(
        train: Vec<EncodedPair>,
        mut eval: Vec<EncodedPair>,
        objective: PreferenceObjective,
        template: Policy,
        reference: Option<LlamaModel>,
        eval_batch: usize,
    ) -> Result<Self> {
        if objective.needs_reference() != reference.is_some() {
            anyhow::bail!(
                "objective {} {} a reference model",
                objective.describe(),
                if objective.needs_reference() {
                    "needs"
                } else {
                    "takes no"
                }
            );
        }
        // Length-sorted evaluation batches pad less.
        eval.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Ok(Self {
            train,
            eval,
            objective,
            template,
            reference,
            eval_batch: eval_batch.max(1),
            eval_reference: Vec::new(),
            train_reference: None,
            steps: 0,
            teachers: None,
        })
    }

    /// Gives AlignDistil its teacher models (frozen, on the training device).
    ///
    /// Errors: the objective has no teacher.
    pub fn with_teachers(mut self, teachers: Teachers) -> Result<Self> {
        if self.objective.teacher_models().is_none() {
            anyhow::bail!(
                "objective {} takes no teacher models",
                self.objective.describe()
            );
        }
        self.teachers = Some(teachers);
        Ok(self)
    }

    /// The TR-DPO settings when the objective refreshes its reference.
    fn refreshing(&self) -> Option<&rm_losses::preference::DpoConfig> {
        match &self.objective {
            PreferenceObjective::Dpo(c) if c.sync_ref_model => Some(c),
            _ => None,
        }
    }

    /// Uses precomputed reference log-probs of the training pairs (in the order they were
    /// given to [`DpoTask::new`]) instead of a reference forward pass per step.
    ///
    /// Errors: not one per training pair, or a row of another length than its sequence.
    pub fn with_train_reference(mut self, refs: Vec<PairReference>) -> Result<Self> {
        if !self.objective.needs_reference() {
            anyhow::bail!(
                "objective {} takes no reference log-probs",
                self.objective.describe()
            );
        }
        if refs.len() != self.train.len() {
            anyhow::bail!(
                "{} precomputed reference rows for {} training pairs",
                refs.len(),
                self.train.len()
            );
        }
        for (i, (r, p)) in refs.iter().zip(&self.train).enumerate() {
            if r.chosen.len() + 1 != p.chosen.len() || r.rejected.len() + 1 != p.rejected.len() {
                anyhow::bail!("precomputed reference row {i} does not match its pair's lengths");
            }
        }
        self.train_reference = Some(refs);
        Ok(self)
    }

    /// The policy as built (what [`TrainTask::save_model`] writes with the trained module).
    pub fn template(&self) -> &Policy {
        &self.template
    }

    /// The `[2B]` rows of a micro-batch: every chosen sequence, then every rejected one (and
    /// every reference sample after them for SELM, `[3B]`).
    fn sequences(&self, pairs: &[&EncodedPair]) -> Result<Vec<Sequence>> {
        let mut rows: Vec<Sequence> = pairs
            .iter()
            .map(|p| p.chosen.clone())
            .chain(pairs.iter().map(|p| p.rejected.clone()))
            .collect();
        if self.objective.samples_per_pair() == 3 {
            for p in pairs {
                rows.push(
                    p.sampled
                        .clone()
                        .context("a pair without the reference's sample reached SELM")?,
                );
            }
        }
        Ok(rows)
    }

    /// The objective on `pairs` under `model`, the reference's per-token log-probs (DPO) given
    /// or computed with `reference`; returns the output, the policy's summed log-probs `[2B]`
    /// and the reference log-probs used.
    fn forward(
        &self,
        model: &LlamaModel,
        reference: RefLogps<'_>,
        teachers: Option<&Teachers>,
        pairs: &[&EncodedPair],
    ) -> Result<(ObjectiveOutput, Tensor<1>, Option<Tensor<2>>)> {
        let device = device_of(model);
        let sequences = self.sequences(pairs)?;
        let pad_id = self.template.lm.tokenizer.pad_id();
        let batch = TokenBatch::pad(&sequences, pad_id, PaddingSide::Right)?;
        let completion = batch.completion_tensor(&device);
        let weighting = self.objective.needs_log_sum_sq_probs();
        let logits_rows = self.objective.logits_rows(pairs.len());
        let contrast = teachers.and_then(|t| t.contrast.as_ref());
        // A pair's chosen and rejected rows share its prompt: each prompt runs once.
        let (policy, policy_logits) =
            shared_prompt_forward(model, &sequences, pad_id, weighting, logits_rows)?;
        let mut reference_logits = None;
        let ref_logps = match reference {
            RefLogps::None => None,
            RefLogps::Model(r) => {
                let rows = if contrast.is_some() { 0 } else { logits_rows };
                let (out, logits) = shared_prompt_forward(r, &sequences, pad_id, false, rows)?;
                reference_logits = logits.map(CompletionLogits::detach);
                Some(out.token_logprobs.detach())
            }
            RefLogps::Known(data) => Some(Tensor::from_data(data.clone(), &device)),
            RefLogps::Precomputed(rows) => Some(reference_cache::batch_tensor(
                &rows,
                batch.seq_len - 1,
                &device,
            )),
        };
        let lssp = match weighting {
            true => Some(
                policy
                    .log_sum_sq_probs
                    .context("the policy gave no log Σp² for WPO")?,
            ),
            false => None,
        };
        let scores = match self.objective.needs_scores() {
            true => Some(scores_tensor(pairs, &device)?),
            false => None,
        };
        let token_rewards = match self.objective.needs_token_rewards() {
            true => {
                let rows = token_rewards::batch_rows(pairs)?;
                let rows: Vec<&PairReference> = rows.iter().collect();
                Some(reference_cache::batch_tensor(
                    &rows,
                    batch.seq_len - 1,
                    &device,
                ))
            }
            false => None,
        };
        let vocab = match policy_logits {
            None => None,
            Some(policy_logits) => {
                let logits_of = |m: &LlamaModel| -> Result<Tensor<3>> {
                    let (_, l) = shared_prompt_forward(m, &sequences, pad_id, false, logits_rows)?;
                    Ok(l.context("no logits came back")?.logits().detach())
                };
                let reference = match (contrast, reference_logits) {
                    (Some(c), _) => logits_of(c)?,
                    (None, Some(l)) => l.logits(),
                    (None, None) => anyhow::bail!(
                        "objective {} needs the reference model's logits (precomputed or cached reference log-probs do not hold them)",
                        self.objective.describe()
                    ),
                };
                let teacher = match (self.objective.teacher_models(), teachers) {
                    (None, _) => None,
                    (Some(_), Some(t)) => Some(logits_of(&t.dpo)?),
                    (Some(_), None) => anyhow::bail!(
                        "objective {} needs its teacher models",
                        self.objective.describe()
                    ),
                };
                let segments = match &self.objective {
                    super::objective::PreferenceObjective::Rrpo(c) => Some(segment_grid(
                        &sequences,
                        c.segments,
                        batch.seq_len - 1,
                        &device,
                    )?),
                    _ => None,
                };
                Some(VocabInputs {
                    policy: policy_logits,
                    reference,
                    teacher,
                    segments,
                })
            }
        };
        let out = self.objective.loss(ObjectiveInputs {
            policy: policy.token_logprobs,
            log_sum_sq_probs: lssp,
            reference: ref_logps.clone(),
            completion_mask: completion.float(),
            scores,
            token_rewards,
            vocab,
        })?;
        Ok((out, policy.sum, ref_logps))
    }
}

/// The pairs' scores `[2B]`: every chosen response's, then every rejected one's.
fn scores_tensor(pairs: &[&EncodedPair], device: &Device) -> Result<Tensor<1>> {
    let mut values = vec![0f32; 2 * pairs.len()];
    for (i, p) in pairs.iter().enumerate() {
        let [chosen, rejected] = p
            .scores
            .context("a pair without scores reached a scored objective")?;
        values[i] = chosen;
        values[pairs.len() + i] = rejected;
    }
    let n = values.len();
    Ok(Tensor::from_data(TensorData::new(values, [n]), device))
}

/// An evaluation from `sums`, the example-weighted sums over `n` examples of `[loss,
/// metrics…]` (the metrics named by `names`); the score is `−loss` (lower loss is better).
pub(crate) fn evaluation_from_sums(
    sums: Option<Tensor<1>>,
    names: &[&str],
    n: usize,
) -> Result<Evaluation> {
    let values: Vec<f32> = sums
        .context("the evaluation set is empty")?
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .map_err(|e| anyhow!("reading the evaluation: {e:?}"))?;
    let n = n as f64;
    let loss = values[0] as f64 / n;
    let mut metrics: std::collections::BTreeMap<String, f64> = names
        .iter()
        .zip(&values[1..])
        .map(|(name, v)| (name.to_string(), *v as f64 / n))
        .collect();
    metrics.insert("loss".into(), loss);
    Ok(Evaluation {
        metrics,
        score: -loss,
    })
}

/// Where a batch's reference log-probs come from.
enum RefLogps<'a> {
    None,
    Model(&'a LlamaModel),
    Known(&'a TensorData),
    Precomputed(Vec<&'a PairReference>),
}

impl TrainTask<LlamaModel> for DpoTask {
    fn loss(&mut self, model: &LlamaModel, items: &[usize]) -> Result<LossOutput> {
        let pairs: Vec<&EncodedPair> = items.iter().map(|&i| &self.train[i]).collect();
        let reference = match (&self.train_reference, &self.reference) {
            (Some(rows), _) => RefLogps::Precomputed(items.iter().map(|&i| &rows[i]).collect()),
            (None, Some(r)) => RefLogps::Model(r),
            (None, None) => RefLogps::None,
        };
        let (out, sums, ref_logps) =
            self.forward(model, reference, self.teachers.as_ref(), &pairs)?;
        let n = pairs.len() as f64;
        let metrics = batch_metrics(&out, sums, ref_logps, pairs.len());
        let tokens = pairs
            .iter()
            .map(|p| p.chosen.len() + p.rejected.len() + p.sampled.as_ref().map_or(0, |s| s.len()))
            .sum();
        let mut output = LossOutput::new(out.loss, n).with_tokens(tokens);
        for (name, value) in METRICS.iter().zip(metrics) {
            output = output.with(Metric::device(*name, value, n));
        }
        Ok(output)
    }

    /// Loss and [`METRICS`] over the evaluation pairs; the score is `−loss` (the best model is
    /// the one with the lowest evaluation loss).
    fn evaluate(&mut self, model: &LlamaModel) -> Result<Evaluation> {
        // The logit-level objectives need the reference's logits, which are not cached.
        let uncached = self.objective.logits_rows(1) > 0;
        let frozen_reference = match &self.reference {
            Some(r) if uncached || self.eval_reference.is_empty() => Some(r.valid()),
            _ => None,
        };
        let teachers = self.teachers.as_ref().map(Teachers::valid);
        let cached = !self.eval_reference.is_empty();
        let mut sums: Option<Tensor<1>> = None;
        let chunks: Vec<Vec<&EncodedPair>> = self
            .eval
            .chunks(self.eval_batch)
            .map(|c| c.iter().collect())
            .collect();
        let mut computed = Vec::new();
        for (k, pairs) in chunks.iter().enumerate() {
            let reference = match &frozen_reference {
                Some(r) => RefLogps::Model(r),
                None if cached => RefLogps::Known(&self.eval_reference[k]),
                None => RefLogps::None,
            };
            let (out, policy_sums, ref_logps) =
                self.forward(model, reference, teachers.as_ref(), pairs)?;
            if let (Some(_), Some(r), false) = (&frozen_reference, &ref_logps, uncached) {
                computed.push(r.clone().into_data());
            }
            let n = pairs.len() as f32;
            let mut parts = vec![out.loss.clone()];
            parts.extend(batch_metrics(&out, policy_sums, ref_logps, pairs.len()));
            let weighted = Tensor::cat(parts, 0).mul_scalar(n);
            sums = Some(match sums {
                Some(s) => s + weighted,
                None => weighted,
            });
        }
        if frozen_reference.is_some() && !uncached {
            self.eval_reference = computed;
        }
        evaluation_from_sums(sums, &METRICS, self.eval.len())
    }

    fn save_model(&self, model: &LlamaModel, dir: &Path) -> Result<()> {
        self.template.save(model, dir)
    }

    /// TR-DPO (Gorbatovski et al. 2024): after step `k` with `k` a multiple of
    /// `ref_model_sync_steps`, `θ_ref ← α·θ + (1 − α)·θ_ref` for every parameter
    /// (`α = ref_model_mixup_alpha`; 1 = a hard copy), as TRL's `SyncRefModelCallback`. The
    /// evaluation reference log-probs are recomputed at the next evaluation.
    fn after_step(&mut self, model: &LlamaModel, _: &rm_core::train::StepValues) -> Result<()> {
        self.steps += 1;
        let Some(alpha) = self
            .refreshing()
            .and_then(|c| c.reference_refresh(self.steps as usize))
        else {
            return Ok(());
        };
        let reference = self
            .reference
            .take()
            .context("TR-DPO needs a reference model")?;
        self.reference = Some(rm_core::train::combine_params(
            reference,
            model,
            |reference, policy| {
                Ok(rm_losses::preference::refresh_reference(
                    reference, policy, alpha,
                )?)
            },
        )?);
        self.eval_reference.clear();
        Ok(())
    }

    /// The step count, when the reference is refreshed (TR-DPO); else nothing.
    fn state(&self) -> Result<serde_json::Value> {
        Ok(match self.refreshing() {
            Some(_) => serde_json::json!({ "steps": self.steps }),
            None => serde_json::Value::Null,
        })
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<()> {
        if state.is_null() {
            return Ok(());
        }
        self.steps = state["steps"]
            .as_u64()
            .with_context(|| format!("expected {{\"steps\": n}}, got {state}"))?;
        Ok(())
    }

    /// TR-DPO's reference, which the run has changed, in full.
    fn save_state_files(&self, dir: &Path) -> Result<()> {
        if let (Some(_), Some(reference)) = (self.refreshing(), &self.reference) {
            rm_core::train::save_all_params(reference, &dir.join(REFERENCE_FILE))?;
        }
        Ok(())
    }

    fn load_state_files(&mut self, dir: &Path) -> Result<()> {
        if self.refreshing().is_some() {
            let reference = self
                .reference
                .take()
                .context("TR-DPO needs a reference model")?;
            self.reference = Some(rm_core::train::load_all_params(
                reference,
                &dir.join(REFERENCE_FILE),
            )?);
            self.eval_reference.clear();
        }
        Ok(())
    }
}

impl EpochTask<LlamaModel> for DpoTask {
    fn num_examples(&self) -> usize {
        self.train.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::preference::data::encode_pairs;
    use rm_core::chat::ChatTemplate;
    use rm_core::device::test_device;
    use rm_core::lora::LoraConfig;
    use rm_core::models::policy_folder::PolicyModelConfig;
    use rm_core::types::{PreferencePair, Prompt};
    use rm_losses::preference::{DpoConfig, DpoLossType};

    pub(crate) fn pair(prompt: &str, chosen: &str, rejected: &str) -> PreferencePair {
        PreferencePair {
            prompt: Prompt::Text(prompt.into()),
            chosen: chosen.into(),
            rejected: rejected.into(),
            margin: None,
            subset: None,
            scores: None,
        }
    }

    pub(crate) fn tiny_policy(dir: &Path, lora: bool, device: &Device) -> Policy {
        rm_core::fixtures::write_tiny_llama(dir, 5).unwrap();
        Policy::build(
            &PolicyModelConfig {
                policy: dir.to_path_buf(),
                max_len: 32,
                template: Some(ChatTemplate::Plain),
                lora: lora
                    .then(|| LoraConfig::new(4, 8.0, &["q_proj", "v_proj", "o_proj", "up_proj"])),
            },
            device,
        )
        .unwrap()
    }

    fn temp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("plumb-po-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        d
    }

    /// At the start the policy is its reference: every implicit reward is 0, the sigmoid loss
    /// is ln 2 and the accuracy (strict wins) 0 — with LoRA (adapters switched off) and without
    /// (a snapshot).
    #[test]
    fn before_training_the_policy_equals_its_reference() {
        let device = test_device().autodiff();
        for lora in [true, false] {
            let policy = tiny_policy(&temp(&format!("start-{lora}")), lora, &device);
            let mut pairs = vec![
                pair("w3 w4", "w5 w6", "w7"),
                pair("w8", "w9 w10 w11", "w12 w13"),
            ];
            for i in 0..6 {
                pairs.push(pair(
                    &format!("w{} w{}", 2 + i, 3 + i),
                    "w20 w21 w22",
                    &format!("w30 w{} w31", 32 + i % 4),
                ));
            }
            let encoded = encode_pairs(&policy, &pairs, "test").unwrap();
            let model = policy.lm.model.clone();
            let reference = if lora {
                rm_core::policy::reference_policy(&model).unwrap()
            } else {
                model.clone().no_grad()
            };
            let mut task = DpoTask::new(
                encoded.clone(),
                encoded,
                PreferenceObjective::Dpo(DpoConfig::new(DpoLossType::Sigmoid, 0.1)),
                policy,
                Some(reference),
                8,
            )
            .unwrap();
            let eval = task.evaluate(&model.valid()).unwrap();
            assert!(
                (eval.metrics["loss"] - std::f64::consts::LN_2).abs() < 1e-6,
                "lora {lora}: {eval:?}"
            );
            assert_eq!(eval.metrics["reward_margin"], 0.0);
            assert_eq!(eval.metrics["reward_accuracy"], 0.0);
            assert_eq!(eval.metrics["kl_estimate"], 0.0);
            assert!(eval.metrics["logps_chosen"] < 0.0);
            let out = task.loss(&model, &[0, 1]).unwrap();
            let loss = out.loss.into_scalar::<f32>();
            assert!((loss - std::f32::consts::LN_2).abs() < 1e-6, "{loss}");
            assert_eq!(out.weight, 2.0);
        }
    }
}
