//! [`UnpairedTask`]: the objectives on unpaired feedback (KTO, APO-zero unpaired, BCO) over
//! encoded examples, for the epoch driver.
//!
//! Each example is one prompt + completion labelled desirable or undesirable. A micro-batch of
//! `B` examples is one right-padded batch through the policy and the frozen reference; for KTO
//! it also holds `B` mismatched rows — example `i`'s prompt with example `(i+1) mod N`'s
//! completion, fixed at encoding, so the KL reference point does not depend on how batches are
//! cut (TRL shifts completions inside each batch instead) — whose log-ratios give the detached
//! reference point `z`. BCO's reward shift `δ` is the running mean of the training batches'
//! rewards `β·Δ` (updated with the batch before its loss, as TRL's `BCOTrainer`), saved with
//! every checkpoint as the task's state so a resumed run continues exactly.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use rm_core::burn::module::Module;
use rm_core::burn::tensor::{Device, Int, Tensor, TensorData};
use rm_core::models::llama::LlamaModel;
use rm_core::models::policy_folder::Policy;
use rm_core::policy::CausalPolicy;
use rm_core::tokenize::{PaddingSide, Sequence, TokenBatch};
use rm_core::train::{EpochTask, Evaluation, LossOutput, Metric, TrainTask};
use rm_core::types::UnpairedExample;
use rm_losses::preference::{
    KtoOutput, RunningMean, UnpairedLogps, apo_zero_unpaired_loss, bco_loss, kto_loss,
};

use super::objective::PreferenceObjective;

/// One unpaired example, tokenized, with its mismatched KL row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedExample {
    pub sequence: Sequence,
    /// This example's prompt followed by the next example's completion (KTO's KL estimate).
    pub mismatched: Sequence,
    pub desirable: bool,
}

/// Encodes `examples` from `source` (named in errors with the example's 1-based number).
///
/// Errors: fewer than 2 examples (no mismatched pairs can be formed).
pub fn encode_unpaired(
    policy: &Policy,
    examples: &[UnpairedExample],
    source: &str,
) -> Result<Vec<EncodedExample>> {
    let n = examples.len();
    if n < 2 {
        bail!("{source}: {n} example(s); unpaired objectives need at least 2");
    }
    examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let row = || format!("{source}: example {} (0-based {i})", i + 1);
            let next = &examples[(i + 1) % n];
            Ok(EncodedExample {
                sequence: policy.encode(&e.prompt, &e.completion).with_context(row)?,
                mismatched: policy
                    .encode(&e.prompt, &next.completion)
                    .with_context(|| format!("{}: with the next example's completion", row()))?,
                desirable: e.desirable,
            })
        })
        .collect()
}

/// Names of the logged values (weighted means): the implicit rewards `β·Δ` of each side, the
/// policy's log-probs of each side, `reward_accuracy` (the fraction of examples whose reward
/// has their label's sign: > 0 desirable, < 0 undesirable), `kl_estimate` (mean `Δ` over the
/// examples), `kl` (KTO's reference point `z`) and `delta` (BCO's reward shift).
const SIDE_METRICS: [&str; 4] = [
    "reward_desirable",
    "reward_undesirable",
    "logps_desirable",
    "logps_undesirable",
];

/// Unpaired preference training of a policy against a frozen reference.
pub struct UnpairedTask {
    train: Vec<EncodedExample>,
    eval: Vec<EncodedExample>,
    objective: PreferenceObjective,
    template: Policy,
    reference: LlamaModel,
    eval_batch: usize,
    /// BCO's running mean of the training rewards (`δ`).
    reward_mean: RunningMean,
}

/// One batch's loss and metrics, on the device unless noted.
struct BatchOutput {
    loss: Tensor<1>,
    /// `(name, value [1], weight)`.
    metrics: Vec<(&'static str, Tensor<1>, f64)>,
    /// BCO's `δ` used (host).
    delta: Option<f64>,
}

fn device_of(model: &LlamaModel) -> Device {
    model.embed_tokens.weight.val().device()
}

/// Rows `indices` of `t` (`[0]` when there are none).
fn rows(t: &Tensor<1>, indices: &[i64], device: &Device) -> Tensor<1> {
    if indices.is_empty() {
        return Tensor::from_data(TensorData::new(Vec::<f32>::new(), [0]), device);
    }
    let index =
        Tensor::<1, Int>::from_data(TensorData::new(indices.to_vec(), [indices.len()]), device);
    t.clone().select(0, index)
}

impl UnpairedTask {
    /// A task over encoded examples; `reference` is the frozen reference module on the
    /// training device.
    pub fn new(
        train: Vec<EncodedExample>,
        mut eval: Vec<EncodedExample>,
        objective: PreferenceObjective,
        template: Policy,
        reference: LlamaModel,
        eval_batch: usize,
    ) -> Result<Self> {
        if !objective.is_unpaired() {
            bail!(
                "objective {} trains on pairs, not unpaired examples",
                objective.describe()
            );
        }
        eval.sort_by_key(|e| std::cmp::Reverse(e.sequence.len()));
        Ok(Self {
            train,
            eval,
            objective,
            template,
            reference,
            eval_batch: eval_batch.max(1),
            reward_mean: RunningMean::default(),
        })
    }

    /// `β` of the objective.
    fn beta(&self) -> f32 {
        match &self.objective {
            PreferenceObjective::Kto(c) | PreferenceObjective::ApoZeroUnpaired(c) => c.beta,
            PreferenceObjective::Bco(c) => c.beta,
            _ => unreachable!("checked in new"),
        }
    }

    /// The objective on `examples` under `model` and `reference`. `update_delta`: fold the
    /// batch's rewards into BCO's running mean first (training batches only).
    fn forward(
        &mut self,
        model: &LlamaModel,
        reference: &LlamaModel,
        examples: &[&EncodedExample],
        update_delta: bool,
    ) -> Result<BatchOutput> {
        let device = device_of(model);
        let kto = matches!(self.objective, PreferenceObjective::Kto(_));
        let b = examples.len();
        let mut seqs: Vec<Sequence> = examples.iter().map(|e| e.sequence.clone()).collect();
        if kto {
            seqs.extend(examples.iter().map(|e| e.mismatched.clone()));
        }
        let batch = TokenBatch::pad(
            &seqs,
            self.template.lm.tokenizer.pad_id(),
            PaddingSide::Right,
        )?;
        let (ids, attention, completion) = (
            batch.ids_tensor(&device),
            batch.attention_tensor(&device),
            batch.completion_tensor(&device),
        );
        let policy = model
            .completion_logprobs(ids.clone(), attention.clone(), completion.clone(), false)?
            .sum;
        let reference = reference
            .completion_logprobs(ids, attention, completion, false)?
            .sum
            .detach();
        let (desirable, undesirable): (Vec<i64>, Vec<i64>) =
            (0..b as i64).partition(|&i| examples[i as usize].desirable);
        let side = |indices: &[i64]| {
            UnpairedLogps::new(
                rows(&policy, indices, &device),
                rows(&reference, indices, &device),
            )
        };
        let beta = self.beta();
        let mut delta = None;
        let (loss, desirable_rewards, undesirable_rewards, kl) = match &self.objective {
            PreferenceObjective::Kto(params) => {
                let mismatched: Vec<i64> = (b as i64..2 * b as i64).collect();
                let KtoOutput {
                    loss,
                    desirable_rewards,
                    undesirable_rewards,
                    kl,
                } = kto_loss(
                    side(&desirable),
                    side(&undesirable),
                    side(&mismatched),
                    *params,
                )?;
                (loss, desirable_rewards, undesirable_rewards, Some(kl))
            }
            PreferenceObjective::ApoZeroUnpaired(params) => {
                let out = apo_zero_unpaired_loss(side(&desirable), side(&undesirable), *params)?;
                (
                    out.loss,
                    out.desirable_rewards,
                    out.undesirable_rewards,
                    None,
                )
            }
            PreferenceObjective::Bco(_) => {
                let shift = if update_delta {
                    let batch_mean = (policy.clone().narrow(0, 0, b).detach()
                        - reference.clone().narrow(0, 0, b))
                    .mean()
                    .mul_scalar(beta)
                    .into_scalar::<f32>() as f64;
                    if !batch_mean.is_finite() {
                        bail!("the batch's mean reward is {batch_mean} (NaN or infinite)");
                    }
                    self.reward_mean.update(batch_mean, b)
                } else {
                    self.reward_mean.mean
                };
                delta = Some(shift);
                let out = bco_loss(side(&desirable), side(&undesirable), beta, shift as f32)?;
                (
                    out.loss,
                    out.desirable_rewards,
                    out.undesirable_rewards,
                    None,
                )
            }
            _ => unreachable!("checked in new"),
        };
        let nd = desirable.len() as f64;
        let nu = undesirable.len() as f64;
        let zero = || Tensor::<1>::zeros([1], &device);
        let mean_or_zero = |t: Option<Tensor<1>>| t.map_or_else(zero, |t| t.mean());
        let ratios = policy.clone().narrow(0, 0, b).detach() - reference.clone().narrow(0, 0, b);
        let signs: Vec<f32> = examples
            .iter()
            .map(|e| if e.desirable { 1.0 } else { -1.0 })
            .collect();
        let signs = Tensor::<1>::from_data(TensorData::new(signs, [b]), &device);
        let correct = (ratios.clone() * signs).greater_elem(0.0).float().mean();
        let side_logps = |indices: &[i64]| match indices.is_empty() {
            true => zero(),
            false => rows(&policy, indices, &device).mean().detach(),
        };
        let mut metrics = vec![
            (SIDE_METRICS[0], mean_or_zero(desirable_rewards), nd),
            (SIDE_METRICS[1], mean_or_zero(undesirable_rewards), nu),
            (SIDE_METRICS[2], side_logps(&desirable), nd),
            (SIDE_METRICS[3], side_logps(&undesirable), nu),
            ("reward_accuracy", correct, b as f64),
            ("kl_estimate", ratios.mean(), b as f64),
        ];
        if let Some(kl) = kl {
            metrics.push(("kl", kl, b as f64));
        }
        Ok(BatchOutput {
            loss,
            metrics,
            delta,
        })
    }
}

impl TrainTask<LlamaModel> for UnpairedTask {
    fn loss(&mut self, model: &LlamaModel, items: &[usize]) -> Result<LossOutput> {
        let examples: Vec<EncodedExample> = items.iter().map(|&i| self.train[i].clone()).collect();
        let refs: Vec<&EncodedExample> = examples.iter().collect();
        let reference = self.reference.clone();
        let out = self.forward(model, &reference, &refs, true)?;
        let n = items.len() as f64;
        let mut tokens: usize = examples.iter().map(|e| e.sequence.len()).sum();
        if matches!(self.objective, PreferenceObjective::Kto(_)) {
            tokens += examples.iter().map(|e| e.mismatched.len()).sum::<usize>();
        }
        let mut output = LossOutput::new(out.loss, n).with_tokens(tokens);
        for (name, value, weight) in out.metrics {
            output = output.with(Metric::device(name, value, weight));
        }
        if let Some(delta) = out.delta {
            output = output.with(Metric::host("delta", delta, n));
        }
        Ok(output)
    }

    /// Loss and metrics over the evaluation examples (BCO's `δ` as it stands, not updated);
    /// the score is `−loss`.
    fn evaluate(&mut self, model: &LlamaModel) -> Result<Evaluation> {
        let reference = self.reference.valid();
        let eval = std::mem::take(&mut self.eval);
        let mut totals: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
        let mut result = Ok(());
        for chunk in eval.chunks(self.eval_batch) {
            let refs: Vec<&EncodedExample> = chunk.iter().collect();
            let out = match self.forward(model, &reference, &refs, false) {
                Ok(out) => out,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let n = chunk.len() as f64;
            let mut parts = vec![out.loss];
            let mut names = vec![("loss", n)];
            for (name, value, weight) in out.metrics {
                parts.push(value);
                names.push((name, weight));
            }
            let values: Vec<f32> = Tensor::cat(parts, 0)
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .map_err(|e| anyhow!("reading the evaluation: {e:?}"))?;
            for ((name, weight), v) in names.into_iter().zip(values) {
                let entry = totals.entry(name.to_string()).or_default();
                entry.0 += v as f64 * weight;
                entry.1 += weight;
            }
            if let Some(delta) = out.delta {
                totals.insert("delta".into(), (delta, 1.0));
            }
        }
        self.eval = eval;
        result?;
        let metrics: std::collections::BTreeMap<String, f64> = totals
            .into_iter()
            .filter(|(_, (_, w))| *w > 0.0)
            .map(|(k, (sum, w))| (k, sum / w))
            .collect();
        let loss = *metrics.get("loss").context("the evaluation set is empty")?;
        Ok(Evaluation {
            metrics,
            score: -loss,
        })
    }

    fn save_model(&self, model: &LlamaModel, dir: &Path) -> Result<()> {
        self.template.save(model, dir)
    }

    /// BCO's running reward mean (`null` for KTO and APO-zero unpaired).
    fn state(&self) -> Result<serde_json::Value> {
        Ok(match self.objective {
            PreferenceObjective::Bco(_) => serde_json::to_value(self.reward_mean)?,
            _ => serde_json::Value::Null,
        })
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<()> {
        match (&self.objective, state.is_null()) {
            (_, true) => Ok(()),
            (PreferenceObjective::Bco(_), false) => {
                self.reward_mean = serde_json::from_value(state)
                    .context("the checkpoint's BCO running reward mean")?;
                Ok(())
            }
            (_, false) => bail!("the checkpoint holds task state, but this objective keeps none"),
        }
    }
}

impl EpochTask<LlamaModel> for UnpairedTask {
    fn num_examples(&self) -> usize {
        self.train.len()
    }
}
