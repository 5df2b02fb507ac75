//! Multi-Action-Head DPO (MAH-DPO; Shen, Xia, Chang & Ammanabrolu 2025, "Simultaneous
//! Multi-objective Alignment Across Verifiable and Non-verifiable Rewards", MAHALO, arXiv
//! 2510.01167): one backbone, one LM head per objective, each head trained by DPO on its own
//! objective's pairs, so objectives that pull apart do not fight over one output layer; at
//! inference the heads' logits are mixed with weights the user picks.
//!
//! For objectives `k = 1…K` with pair sets `D_k` and heads `W_k` over the shared hidden states
//! `h_θ`, the policy of head `k` is `π_k(y_t | ·) = softmax(h_θ(·) W_kᵀ)[y_t]`, and
//!
//! `L(θ, W_1…W_K) = Σ_k Σ_{(x,y_w,y_l) ∈ D_k} ℓ_DPO(π_k; x, y_w, y_l) / Σ_k |D_k|`
//!
//! with `ℓ_DPO = −log σ(β[(log π_k(y_w|x) − log π_ref(y_w|x)) − (log π_k(y_l|x) − log
//! π_ref(y_l|x))])` (or any of TRL's loss types in `[objective]`). Every head starts as a copy
//! of the base model's head (the paper's unperturbed initialisation), so the reference — the
//! base model, LoRA adapters off — is each head's own starting point. The backbone gets every
//! objective's gradient, head `k` only its own objective's.
//!
//! The paper averages the per-objective mean losses within a micro-batch; here each pair counts
//! once (a pair-weighted mean, exact under gradient accumulation). The two agree when the
//! objectives have as many pairs, which a recipe gets by equal `limit`s.
//!
//! With `low_rank_heads = { rank = r, alpha = α }` each head is a LoRA update of the base head,
//! `W_k = W_0 + (α/r)·A_k B_k` (A Gaussian, B zero, so every head still starts at `W_0`), and
//! only the factors train and are saved: `r·(V + D)` floats a head instead of `V·D` (the
//! "heads as low-rank deltas" variant; the paper trains full heads).
//!
//! Inference ([`rm_core::models::action_heads`]): `logits = Σ_k w_k · h W_kᵀ` with `Σ w_k = 1`
//! — the paper's head-weighted ensemble — installed as one mixed head, so
//! `plumb generate --model DIR --head-weights harmless=0.7,concise=0.3` steers between
//! objectives without retraining.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::{Lora, Module, Param};
use burn::nn::Linear;
use burn::tensor::Tensor;
use rm_core::models::action_heads::{self, ActionHeadsSpec, LowRankHeads};
use rm_core::models::llama::LlamaModel;
use rm_core::models::policy_folder::{Policy, PolicyModelConfig};
use rm_core::train::{
    EpochTask, Evaluation, LossOutput, Metric, RESUMABLE_TRAIN_FIELDS, RunDir, TrainConfig,
    TrainTask, Trainer,
};
use rm_pipeline::recipe::PairSource;
use rm_pipeline::train::TrainRequest;
use serde::{Deserialize, Serialize};

use super::data::encode_pairs;
use super::objective::PreferenceObjective;
use super::recipe::PreferenceEvalConfig;
use super::task::DpoTask;
use super::train::{PreferenceReport, finish_run, run_task};

/// A backbone with one LM head per objective (burn's `[D, V]` `Linear` each, no bias). The
/// backbone's own head (or its tied embedding) stays as it was: it is the reference's.
#[derive(Module, Debug)]
pub struct MultiHeadPolicy {
    pub backbone: LlamaModel,
    pub heads: Vec<Linear>,
}

impl MultiHeadPolicy {
    /// `heads` copies of `backbone`'s head, each a trainable parameter of its own; with
    /// `low_rank`, each head is one frozen copy of it (shared by all) plus trainable LoRA
    /// factors of that rank (B = 0: the head starts as the copy).
    pub fn new(backbone: LlamaModel, heads: usize, low_rank: Option<&LowRankHeads>) -> Self {
        let base = action_heads::base_head(&backbone);
        let device = base.device();
        let data = base.into_data();
        // Low-rank heads share one frozen copy of the base head.
        let shared = low_rank.map(|_| Tensor::<2>::from_data(data.clone(), &device));
        let heads = (0..heads)
            .map(|_| match (low_rank, &shared) {
                (Some(l), Some(shared)) => Linear {
                    weight: Param::from_tensor(shared.clone()),
                    bias: None,
                }
                .apply_lora(Lora::new(l.rank, l.alpha)),
                _ => Linear {
                    // A fresh leaf per head (the base head is a view of the tied embedding).
                    weight: Param::from_tensor(Tensor::from_data(data.clone(), &device)),
                    bias: None,
                },
            })
            .collect();
        Self { backbone, heads }
    }

    /// The backbone with head `k` as its LM head: the policy `π_k`, sharing every parameter
    /// (and, on an autodiff device, the graph) with `self`.
    pub fn view(&self, k: usize) -> LlamaModel {
        let mut model = self.backbone.clone();
        model.lm_head = Some(self.heads[k].clone());
        model
    }
}

/// One objective of a MAH-DPO recipe (`[[heads]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadObjective {
    /// The head's name (what `--head-weights NAME=W` selects).
    pub name: String,
    /// Its training pairs.
    pub train: PairSource,
    /// Its evaluation pairs.
    pub eval: PairSource,
    /// Its default mixing weight at inference (normalised over the heads).
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// A MAH-DPO recipe: `plumb train-po` runs it when the file has `[[heads]]`.
///
/// ```toml
/// [model]
/// policy = "models/smollm2"
/// max_len = 256
/// lora = { rank = 16, alpha = 32.0, target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"] }
///
/// [[heads]]
/// name = "harmless"
/// train = { source = "hh-rlhf", split = "train", limit = 160 }
/// eval = { source = "hh-rlhf", split = "dev", limit = 48 }
///
/// [[heads]]
/// name = "concise"
/// train = { source = "hh-concise", split = "train", limit = 160 }
/// eval = { source = "hh-concise", split = "dev", limit = 48 }
///
/// [objective]          # TRL's DPOConfig names (kind = "dpo")
/// beta = 0.1
///
/// [train]
/// batch_size = 8
/// lr = 1e-4
/// out_dir = "runs/mah-dpo-smollm2-hh"
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MahDpoRecipe {
    pub model: PolicyModelConfig,
    pub heads: Vec<HeadObjective>,
    /// The baseline MAH-DPO is measured against: every objective trains one shared head (DPO
    /// on the union of the objectives' pairs), each objective still evaluated on its own pairs.
    /// The folder holds that one head, named `shared`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_head: bool,
    /// Heads as LoRA updates of the base model's head (`{ rank, alpha }`); absent: full heads.
    /// Needs LoRA on the backbone (`[model] lora`): the base head must stay the base model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_rank_heads: Option<LowRankHeads>,
    #[serde(default)]
    pub objective: PreferenceObjective,
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: PreferenceEvalConfig,
}

impl MahDpoRecipe {
    /// Checks every section and what MAH-DPO cannot run.
    pub fn validate(&self) -> Result<()> {
        self.objective.validate()?;
        self.train.validate()?;
        if self.eval.batch_size == 0 {
            bail!("eval.batch_size must be at least 1");
        }
        if self.heads.len() < 2 {
            bail!(
                "[[heads]] lists {} objective(s): MAH-DPO needs at least two (one objective is plain DPO: use a [data] recipe)",
                self.heads.len()
            );
        }
        self.spec().context("[[heads]]")?;
        if let Some(low_rank) = &self.low_rank_heads {
            low_rank.validate()?;
            if self.model.lora.is_none() {
                bail!(
                    "low_rank_heads are updates of the base model's head, which full fine-tuning changes (a tied embedding trains with the backbone): give [model] lora, or drop low_rank_heads for full heads"
                );
            }
        }
        match &self.objective {
            PreferenceObjective::Dpo(c) if c.sync_ref_model => bail!(
                "objective.sync_ref_model (TR-DPO) refreshes one reference; MAH-DPO's reference is the base model's own head, which every action head starts from"
            ),
            PreferenceObjective::Dpo(_) => Ok(()),
            other => bail!(
                "MAH-DPO trains DPO objectives (kind = \"dpo\", any loss_type); objective {} is not one",
                other.describe()
            ),
        }
    }

    /// The heads' names and default weights.
    pub fn spec(&self) -> Result<ActionHeadsSpec> {
        let spec = ActionHeadsSpec {
            names: self.heads.iter().map(|h| h.name.clone()).collect(),
            default_weights: self.heads.iter().map(|h| h.weight).collect(),
            low_rank: self.low_rank_heads.clone(),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// MAH-DPO over `K` objectives: one [`DpoTask`] per objective (its pairs, the shared
/// reference), each run on its head's view of the policy.
pub struct MahDpoTask {
    objectives: Vec<DpoTask>,
    spec: ActionHeadsSpec,
    /// The head each objective trains (`k`, or 0 for every objective with a shared head).
    head_of: Vec<usize>,
    /// `starts[k]`: the first global training index of objective `k` (items are the objectives'
    /// pairs laid end to end).
    starts: Vec<usize>,
    total: usize,
}

impl MahDpoTask {
    /// `objectives[k]` trains head `k` — or, with `shared_head`, every objective trains head 0
    /// (the folder then holds that head alone, named `shared`); `spec` names the objectives.
    /// Errors: counts differ, an objective without training pairs.
    pub fn new(objectives: Vec<DpoTask>, spec: ActionHeadsSpec, shared_head: bool) -> Result<Self> {
        if objectives.len() != spec.names.len() {
            bail!(
                "{} objectives for {} heads",
                objectives.len(),
                spec.names.len()
            );
        }
        let mut starts = Vec::with_capacity(objectives.len());
        let mut total = 0;
        for (task, name) in objectives.iter().zip(&spec.names) {
            let n = task.num_examples();
            if n == 0 {
                bail!("head {name:?} has no training pairs");
            }
            starts.push(total);
            total += n;
        }
        let head_of = (0..objectives.len())
            .map(|k| if shared_head { 0 } else { k })
            .collect();
        Ok(Self {
            objectives,
            spec,
            head_of,
            starts,
            total,
        })
    }

    /// `(head, local index)` of a global training index.
    fn locate(&self, item: usize) -> Result<(usize, usize)> {
        if item >= self.total {
            bail!("training index {item} is past the {} pairs", self.total);
        }
        let k = self.starts.partition_point(|&s| s <= item) - 1;
        Ok((k, item - self.starts[k]))
    }
}

impl TrainTask<MultiHeadPolicy> for MahDpoTask {
    /// Each head's DPO loss on its own pairs of `items`, combined as the pair-weighted mean;
    /// every head's metrics logged under `<name>/`.
    fn loss(&mut self, model: &MultiHeadPolicy, items: &[usize]) -> Result<LossOutput> {
        let mut by_head: Vec<Vec<usize>> = vec![Vec::new(); self.objectives.len()];
        for &item in items {
            let (k, local) = self.locate(item)?;
            by_head[k].push(local);
        }
        let mut total: Option<Tensor<1>> = None;
        let mut weight = 0.0;
        let mut tokens = 0;
        let mut metrics = Vec::new();
        for (k, local) in by_head.iter().enumerate() {
            if local.is_empty() {
                continue;
            }
            let out = self.objectives[k].loss(&model.view(self.head_of[k]), local)?;
            let part = out.loss.mul_scalar(out.weight);
            total = Some(match total {
                Some(t) => t + part,
                None => part,
            });
            weight += out.weight;
            tokens += out.tokens;
            let name = &self.spec.names[k];
            for m in out.metrics {
                metrics.push(Metric {
                    name: format!("{name}/{}", m.name),
                    ..m
                });
            }
        }
        let total = total.context("an empty micro-batch")?;
        let mut output = LossOutput::new(total.div_scalar(weight), weight).with_tokens(tokens);
        for m in metrics {
            output = output.with(m);
        }
        Ok(output)
    }

    /// Each head on its own evaluation pairs (`<name>/loss`, `<name>/reward_accuracy`, …);
    /// `loss` and `reward_accuracy` are the means over the heads (the paper's combined loss).
    fn evaluate(&mut self, model: &MultiHeadPolicy) -> Result<Evaluation> {
        let mut metrics = BTreeMap::new();
        let mut means: BTreeMap<String, f64> = BTreeMap::new();
        let heads = self.objectives.len() as f64;
        for (k, task) in self.objectives.iter_mut().enumerate() {
            let e = task.evaluate(&model.view(self.head_of[k]))?;
            for (key, value) in e.metrics {
                if key == "loss" || key == "reward_accuracy" || key == "reward_margin" {
                    *means.entry(key.clone()).or_default() += value / heads;
                }
                metrics.insert(format!("{}/{key}", self.spec.names[k]), value);
            }
        }
        let loss = *means.get("loss").context("no head reported a loss")?;
        metrics.extend(means);
        Ok(Evaluation {
            metrics,
            score: -loss,
        })
    }

    /// The policy folder of the backbone (adapters or full weights) plus the action heads.
    fn save_model(&self, model: &MultiHeadPolicy, dir: &Path) -> Result<()> {
        self.objectives[0].template().save(&model.backbone, dir)?;
        match model.heads.len() == self.spec.names.len() {
            true => action_heads::save(dir, &self.spec, &model.heads),
            false => action_heads::save(
                dir,
                &ActionHeadsSpec {
                    low_rank: self.spec.low_rank.clone(),
                    ..shared_spec()
                },
                &model.heads,
            ),
        }
    }

    /// The objectives' states (TR-DPO is refused, so each is `null`; kept for the layout).
    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Array(
            self.objectives
                .iter()
                .map(|t| t.state())
                .collect::<Result<_>>()?,
        ))
    }

    fn restore_state(&mut self, state: serde_json::Value) -> Result<()> {
        if state.is_null() {
            return Ok(());
        }
        let parts = state
            .as_array()
            .with_context(|| format!("expected one state per head, got {state}"))?;
        if parts.len() != self.objectives.len() {
            bail!(
                "{} head states for {} heads",
                parts.len(),
                self.objectives.len()
            );
        }
        for (task, part) in self.objectives.iter_mut().zip(parts) {
            task.restore_state(part.clone())?;
        }
        Ok(())
    }
}

/// The spec of a shared-head baseline's folder.
fn shared_spec() -> ActionHeadsSpec {
    ActionHeadsSpec {
        names: vec!["shared".into()],
        default_weights: vec![1.0],
        low_rank: None,
    }
}

impl EpochTask<MultiHeadPolicy> for MahDpoTask {
    fn num_examples(&self) -> usize {
        self.total
    }
}

/// Trains a MAH-DPO recipe; the report as [`super::train_preference_policy`]'s, its
/// evaluations per head (`<name>/…`) and combined.
pub fn train_mah_dpo(mut recipe: MahDpoRecipe, request: &TrainRequest) -> Result<PreferenceReport> {
    recipe.model.policy =
        rm_core::paths::resolve_model_path(&recipe.model.policy, &request.models_dir);
    recipe.validate()?;
    let spec = recipe.spec()?;
    let out: PathBuf = recipe.train.out_dir.clone();
    let identity = serde_json::to_value(&recipe)?;
    let run = RunDir::open(
        &out,
        request.mode,
        &identity,
        &[RESUMABLE_TRAIN_FIELDS, &["eval"]].concat(),
    )?;
    let device = request.device.clone().autodiff();
    device.seed(recipe.train.seed);
    eprintln!(
        "loading {} and the data ({})",
        recipe.model.policy.display(),
        request.data_dir.display()
    );
    let policy = Policy::build(&recipe.model, &device)?;
    let backbone = policy.lm.model.clone();
    let reference = match &policy.spec.lora {
        Some(_) => rm_core::policy::reference_policy(&backbone)?,
        None => backbone.clone().no_grad(),
    };
    let mut objectives = Vec::with_capacity(recipe.heads.len());
    for head in &recipe.heads {
        let train_pairs = head.train.load(&request.data_dir)?;
        let eval_pairs = head.eval.load(&request.data_dir)?;
        let train = encode_pairs(&policy, &train_pairs, &head.train.describe())?;
        let eval = encode_pairs(&policy, &eval_pairs, &head.eval.describe())?;
        eprintln!(
            "head {}: {} training pairs, {} evaluation pairs",
            head.name,
            train.len(),
            eval.len()
        );
        objectives.push(DpoTask::new(
            train,
            eval,
            recipe.objective.clone(),
            policy.clone(),
            Some(reference.clone()),
            recipe.eval.batch_size,
        )?);
    }
    let mut task = MahDpoTask::new(objectives, spec, recipe.shared_head)?;
    let heads = match recipe.shared_head {
        true => 1,
        false => recipe.heads.len(),
    };
    eprintln!(
        "{} objectives on {heads} head(s), {} training pairs: {} step(s) of {} pairs; objective {}",
        recipe.heads.len(),
        task.num_examples(),
        recipe.train.epoch_steps(task.num_examples())?,
        recipe.train.batch_size,
        recipe.objective.describe(),
    );
    rm_core::checkpoint::write_bytes_atomically(
        &out.join("recipe.toml"),
        toml::to_string_pretty(&recipe)?.as_bytes(),
    )?;
    let trainer = Trainer {
        config: recipe.train.clone(),
        device: device.clone(),
        progress: request.progress,
    };
    let model = MultiHeadPolicy::new(backbone, heads, recipe.low_rank_heads.as_ref());
    let evaluations = run_task(&trainer, &run, model, &mut task)?;
    finish_run(&recipe, out, &run, evaluations, None, "pairs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::task::tests::{pair, tiny_policy};
    use rm_core::device::test_device;
    use rm_core::shared_prompt::shared_prompt_logprobs;
    use rm_core::train::RunMode;
    use rm_core::types::{PreferencePair, Prompt};
    use serde_json::json;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("plumb-mah-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const GOOD: &str = "w20 w21 w22";
    const BAD: &str = "w30 w31 w32";

    /// Two objectives that disagree on every pair: head "a" prefers [`GOOD`], head "b" the
    /// reverse, on the same prompts. One head cannot fit both (every pair appears once each
    /// way); two can.
    fn conflicting() -> (Vec<PreferencePair>, Vec<PreferencePair>) {
        let prompts: Vec<String> = (0..6).map(|i| format!("w{} w{}", 2 + i, 3 + i)).collect();
        let a = prompts.iter().map(|p| pair(p, GOOD, BAD)).collect();
        let b = prompts.iter().map(|p| pair(p, BAD, GOOD)).collect();
        (a, b)
    }

    fn spec() -> ActionHeadsSpec {
        ActionHeadsSpec {
            names: vec!["a".into(), "b".into()],
            default_weights: vec![1.0, 1.0],
            low_rank: None,
        }
    }

    fn task(policy: &Policy, reference: &LlamaModel) -> MahDpoTask {
        let (a, b) = conflicting();
        let objective: PreferenceObjective =
            rm_core::recipe::parse("beta = 0.5", "test", &[]).unwrap();
        let objectives = [a, b]
            .iter()
            .map(|pairs| {
                let encoded = encode_pairs(policy, pairs, "test").unwrap();
                DpoTask::new(
                    encoded.clone(),
                    encoded,
                    objective.clone(),
                    policy.clone(),
                    Some(reference.clone()),
                    4,
                )
                .unwrap()
            })
            .collect();
        MahDpoTask::new(objectives, spec(), false).unwrap()
    }

    /// At the start every view is the backbone itself (each head a copy of its head); a view
    /// follows its own head only.
    #[test]
    fn every_head_starts_as_the_backbones_own_and_a_view_follows_its_head() {
        let device = test_device();
        let policy = tiny_policy(&temp("view"), false, &device);
        let model = MultiHeadPolicy::new(policy.lm.model.clone(), 3, None);
        let seq = policy.encode(&Prompt::Text("w3 w4".into()), GOOD).unwrap();
        let logps = |m: &LlamaModel| -> Vec<f32> {
            shared_prompt_logprobs(m, std::slice::from_ref(&seq), 0, false)
                .unwrap()
                .token_logprobs
                .into_data()
                .try_to_vec()
                .unwrap()
        };
        let base = logps(&policy.lm.model);
        // Equal up to float rounding: the tied head multiplies by the embedding's transpose,
        // an action head by its own copy.
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        for k in 0..3 {
            assert!(close(&logps(&model.view(k)), &base), "head {k}");
        }
        let mut moved = model;
        let w = moved.heads[1].weight.val();
        // (A shift common to every vocabulary column would leave the softmax unchanged.)
        let noise = w.random_like(burn::tensor::Distribution::Uniform(-0.3, 0.3));
        let shifted = (w + noise).into_data();
        moved.heads[1].weight = Param::from_tensor(Tensor::from_data(shifted, &device));
        assert!(close(&logps(&moved.view(0)), &base));
        assert!(!close(&logps(&moved.view(1)), &base));
    }

    /// The combined loss is the pair-weighted mean of each head's DPO loss on its own pairs
    /// (computed here by each objective's task alone), and a head gets a gradient only from its
    /// own objective's pairs.
    #[test]
    fn the_loss_weighs_every_pair_once_and_each_head_learns_only_its_objective() {
        let device = test_device().autodiff();
        let policy = tiny_policy(&temp("loss"), true, &device);
        let reference = rm_core::policy::reference_policy(&policy.lm.model).unwrap();
        let mut task = task(&policy, &reference);
        assert_eq!(task.num_examples(), 12);
        assert_eq!(task.locate(5).unwrap(), (0, 5));
        assert_eq!(task.locate(6).unwrap(), (1, 0));
        assert!(task.locate(12).is_err());
        // Heads away from the reference, so the losses differ from ln 2 and from each other.
        let mut model = MultiHeadPolicy::new(policy.lm.model.clone(), 2, None);
        for (k, head) in model.heads.iter_mut().enumerate() {
            let w = head.weight.val().detach();
            let noise = w.random_like(burn::tensor::Distribution::Uniform(-0.5, 0.5));
            let moved = (w + noise.mul_scalar(1.0 + k as f32)).into_data();
            head.weight = Param::from_tensor(Tensor::from_data(moved, &device));
        }
        let value = |t: Tensor<1>| f64::from(t.into_scalar::<f32>());
        // Three pairs of head a, one of head b.
        let out = task.loss(&model, &[0, 7, 2, 4]).unwrap();
        assert_eq!(out.weight, 4.0);
        let a = task.objectives[0].loss(&model.view(0), &[0, 2, 4]).unwrap();
        let b = task.objectives[1].loss(&model.view(1), &[1]).unwrap();
        let (la, lb) = (value(a.loss), value(b.loss));
        assert!((la - lb).abs() > 1e-3, "{la} {lb}");
        let want = (3.0 * la + lb) / 4.0;
        let got = value(out.loss.clone());
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        let names: Vec<&str> = out.metrics.iter().map(|m| m.name.as_str()).collect();
        assert!(names.contains(&"a/reward_accuracy") && names.contains(&"b/kl_estimate"));

        // Head b's pairs alone: head a gets no gradient, head b and the adapters do.
        let out = task.loss(&model, &[6, 8]).unwrap();
        let grads = out.loss.backward();
        assert!(model.heads[0].weight.val().grad(&grads).is_none());
        let gb = model.heads[1].weight.val().grad(&grads).unwrap();
        assert!(gb.abs().sum().into_scalar::<f32>() > 0.0);
    }

    fn recipe(root: &Path) -> MahDpoRecipe {
        let (a, b) = conflicting();
        for (name, pairs) in [("a", &a), ("b", &b)] {
            let rows: Vec<String> = pairs
                .iter()
                .map(|p| {
                    json!({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected})
                        .to_string()
                })
                .collect();
            std::fs::write(root.join(format!("{name}.jsonl")), rows.join("\n")).unwrap();
        }
        let text = format!(
            r#"
[model]
policy = "{model}"
max_len = 16
template = "plain"
lora = {{ rank = 4, alpha = 8.0, target_modules = ["q_proj", "v_proj", "o_proj", "up_proj"] }}

[[heads]]
name = "a"
train = {{ source = "jsonl", path = "{dir}/a.jsonl" }}
eval = {{ source = "jsonl", path = "{dir}/a.jsonl" }}
weight = 3.0

[[heads]]
name = "b"
train = {{ source = "jsonl", path = "{dir}/b.jsonl" }}
eval = {{ source = "jsonl", path = "{dir}/b.jsonl" }}

[objective]
beta = 0.5

[train]
epochs = 10
batch_size = 4
micro_batch_size = 2
lr = 0.02
weight_decay = 0.0
warmup_ratio = 0.0
schedule = "constant"
seed = 3
eval_every = 15
save_every = 15
out_dir = "{out}"
"#,
            model = root.join("model").display(),
            dir = root.display(),
            out = root.join("run").display(),
        );
        let path = root.join("mah.toml");
        std::fs::write(&path, text).unwrap();
        match super::super::recipe::PoRecipe::load(&path, &[]).unwrap() {
            super::super::recipe::PoRecipe::MultiHead(r) => r,
            other => panic!("[[heads]] did not make a MAH-DPO recipe: {other:?}"),
        }
    }

    /// A run root holding the tiny Llama as `model`, and the request that trains from it.
    fn tiny_run(tag: &str) -> (PathBuf, TrainRequest) {
        let root = temp(tag);
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        let request = TrainRequest {
            data_dir: root.clone(),
            models_dir: root.clone(),
            device: test_device(),
            mode: RunMode::Fresh,
            progress: false,
        };
        (root, request)
    }

    /// log π(GOOD) − log π(BAD) on a training prompt, the policy folder `dir` loaded with the
    /// head mixture `weights` (its defaults when `None`).
    fn preference(dir: &Path, weights: Option<&str>) -> f64 {
        let w = weights.map(|w| w.parse::<action_heads::HeadWeights>().unwrap());
        let policy = Policy::load_steered(dir, &test_device(), w.as_ref()).unwrap();
        let rows = policy
            .encode_shared(&Prompt::Text("w2 w3".into()), &[GOOD, BAD])
            .unwrap();
        let sums: Vec<f32> = shared_prompt_logprobs(&policy.lm.model, &rows, 0, false)
            .unwrap()
            .sum
            .into_data()
            .try_to_vec()
            .unwrap();
        (sums[0] - sums[1]) as f64
    }

    /// Objectives that contradict each other on every pair: MAH-DPO fits both (each head wins
    /// every one of its pairs), where one head could win at most half of the union; the saved
    /// folder steers — head a's weight gives a's preference, head b's the reverse.
    #[test]
    fn two_heads_learn_contradicting_objectives_and_the_folder_steers_between_them() {
        let _seeded = rm_core::device::seeded_test_lock();
        let (root, request) = tiny_run("learn");
        let report = train_mah_dpo(recipe(&root), &request).unwrap();
        let (before, after) = (&report.initial_eval.metrics, &report.final_eval.metrics);
        assert!((before["loss"] - std::f64::consts::LN_2).abs() < 1e-6);
        for head in ["a", "b"] {
            assert_eq!(before[&format!("{head}/reward_margin")], 0.0);
            assert_eq!(after[&format!("{head}/reward_accuracy")], 1.0, "{after:?}");
            assert!(after[&format!("{head}/loss")] < 0.3, "{after:?}");
        }
        assert_eq!(report.outcome.steps, 30);

        let dir = &report.final_dir;
        let spec = action_heads::read_spec(dir).unwrap().unwrap();
        assert_eq!(spec.default_weights, vec![3.0, 1.0]);
        let preference = |weights| preference(dir, weights);
        let (a, b, mixed) = (
            preference(Some("a=1")),
            preference(Some("b=1")),
            preference(None),
        );
        assert!(a > 1.0 && b < -1.0, "a {a}, b {b}");
        // The default mixture (3:1) leans to a, less than a alone.
        assert!(mixed > 0.0 && mixed < a, "{mixed}");
        let halfway = preference(Some("a=1,b=1"));
        assert!(halfway > b && halfway < a, "{halfway}");
        // Training cannot continue a multi-head folder, and a wrong head name is named.
        let err = Policy::build(
            &PolicyModelConfig {
                policy: dir.clone(),
                max_len: 16,
                template: None,
                lora: None,
            },
            &test_device(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("action heads"), "{err}");
        let err = Policy::load_steered(dir, &test_device(), Some(&"c=1".parse().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no action head \"c\""), "{err}");

        // The baseline: both objectives through one head. Each pair of b is a pair of a
        // reversed, so whatever it learns, the two accuracies sum to at most 1.
        let mut shared = recipe(&root);
        shared.shared_head = true;
        shared.train.out_dir = root.join("shared");
        let baseline = train_mah_dpo(shared, &request).unwrap();
        let m = &baseline.final_eval.metrics;
        assert!(
            m["a/reward_accuracy"] + m["b/reward_accuracy"] <= 1.0 + 1e-9,
            "{m:?}"
        );
        assert!(m["loss"] > after["loss"] + 0.2, "{m:?} vs {after:?}");
        let spec = action_heads::read_spec(&baseline.final_dir)
            .unwrap()
            .unwrap();
        assert_eq!(spec.names, vec!["shared".to_string()]);
    }

    /// Low-rank heads (rank 2 over a 48-token vocabulary) fit the same contradicting
    /// objectives; the folder holds only their factors, loads as the base head plus the mixed
    /// updates, and steers as full heads do.
    #[test]
    fn low_rank_heads_learn_contradicting_objectives_from_their_factors_alone() {
        let _seeded = rm_core::device::seeded_test_lock();
        let (root, request) = tiny_run("low-rank");
        let mut r = recipe(&root);
        r.low_rank_heads = Some(LowRankHeads {
            rank: 2,
            alpha: 4.0,
        });
        let report = train_mah_dpo(r.clone(), &request).unwrap();
        let (before, after) = (&report.initial_eval.metrics, &report.final_eval.metrics);
        assert!(
            (before["loss"] - std::f64::consts::LN_2).abs() < 1e-6,
            "{before:?}"
        );
        for head in ["a", "b"] {
            assert_eq!(after[&format!("{head}/reward_accuracy")], 1.0, "{after:?}");
            assert!(after[&format!("{head}/loss")] < 0.4, "{after:?}");
        }
        let dir = &report.final_dir;
        let spec = action_heads::read_spec(dir).unwrap().unwrap();
        assert_eq!(spec.low_rank, r.low_rank_heads);
        let file = rm_core::models::safetensors::SafetensorsWeights::open(
            dir.join(action_heads::ACTION_HEADS_FILE),
        )
        .unwrap();
        use rm_core::models::weights::WeightSource;
        let b = file.tensor("action_heads.0.lora_B.weight").unwrap();
        assert_eq!(b.shape[1], 2);
        assert!(b.values.iter().any(|&x| x != 0.0), "B trained");
        assert!(file.tensor("action_heads.0.weight").is_err());
        let (a, b) = (preference(dir, Some("a=1")), preference(dir, Some("b=1")));
        assert!(a > 1.0 && b < -1.0, "a {a}, b {b}");
        // Without LoRA on the backbone the base head would train too: refused.
        r.model.lora = None;
        let err = format!("{:#}", r.validate().unwrap_err());
        assert!(
            err.contains("low_rank_heads") && err.contains("[model] lora"),
            "{err}"
        );
    }

    /// `[[heads]]` makes a recipe MAH-DPO's; the shipped one validates, with its heads in
    /// order and equal default weights; a `[data]` recipe stays a plain one.
    #[test]
    fn the_shipped_recipe_is_dispatched_to_mah_dpo() {
        let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        let load =
            |name: &str| super::super::recipe::PoRecipe::load(&recipes.join(name), &[]).unwrap();
        match load("mah-dpo-smollm2-hh.toml") {
            super::super::recipe::PoRecipe::MultiHead(r) => {
                r.validate().unwrap();
                let spec = r.spec().unwrap();
                assert_eq!(spec.names, ["harmless", "concise"]);
                assert_eq!(spec.mixing_weights(None).unwrap(), [0.5, 0.5]);
                assert!(!r.shared_head);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            load("dpo-smollm2-hh.toml"),
            super::super::recipe::PoRecipe::Single(_)
        ));
    }

    #[test]
    fn recipes_that_mah_dpo_cannot_run_are_refused() {
        let root = temp("refuse");
        let base = recipe(&root);
        let mut one = base.clone();
        one.heads.truncate(1);
        let mut same = base.clone();
        same.heads[1].name = "a".into();
        let mut simpo = base.clone();
        simpo.objective = rm_core::recipe::parse("kind = \"simpo\"", "test", &[]).unwrap();
        let mut trdpo = base.clone();
        trdpo.objective = rm_core::recipe::parse("sync_ref_model = true", "test", &[]).unwrap();
        for (r, needle) in [
            (one, "at least two"),
            (same, "two action heads are named \"a\""),
            (simpo, "is not one"),
            (trdpo, "TR-DPO"),
        ] {
            let err = format!("{:#}", r.validate().unwrap_err());
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
