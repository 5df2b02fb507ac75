//! Reward models: any backbone (BERT encoder or Llama-family decoder, full or LoRA) plus a linear
//! head giving a scalar or one reward per named attribute.
//!
//! A sequence's reward is `head(pool(backbone(prompt ⊕ response)))`: the backbone's last hidden
//! states pooled into one vector (decoders: the last real token; encoders: mean over the mask or
//! `[CLS]`), then `W·h + b` with `W` `[K, D]`, `K` = the number of attributes.
//!
//! # Folders
//!
//! A trained reward model is a folder: `reward_model.json` ([`RewardModelSpec`]: backbone kind,
//! base model path, pooling, attributes, max length, truncation, chat template, normalization),
//! `tokenizer.json`, and either `model.safetensors` (every weight, HF names: the backbone's own
//! names plus `score.weight` `[K, D]` / `score.bias` `[K]`) or, for LoRA models,
//! `adapter_model.safetensors` + `adapter_config.json` (PEFT layout) + `score.safetensors`, read
//! over the base model the spec names.
//!
//! Folders written by `plumb export` ([`crate::export`]) hold their own backbone: their spec's
//! base is [`BASE_IS_THIS_FOLDER`], the weights are the HF layout's (`model.safetensors` without
//! `score.bias` for `LlamaForSequenceClassification`, whose head bias is 0; the head in
//! [`ST_DENSE_WEIGHTS`] for sentence-transformers folders).
//!
//! # Scoring-time transforms
//!
//! - normalization: `(r − μ) / σ` per attribute, with `μ`, `σ` measured on a reference set and
//!   stored in the spec ([`RewardModelBundle::fit_normalization`]);
//! - the log-sigmoid transform of Wang et al. 2024, "Transforming and Combining Rewards for
//!   Aligning Large Language Models": `r' = log σ(r(x, y) − r_ref(x))`, where `r_ref(x)` is the
//!   reward of a reference response to the same prompt ([`log_sigmoid_transform`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::bert::{self, BertConfig, BertModel};
use super::llama::{self, CausalLm, LlamaModel};
use super::pooling::Pooling;
use super::safetensors::SafetensorsWeights;
use super::weights::WeightSource;
use crate::chat::ChatTemplate;
use crate::checkpoint::{self, ParamSlot, TensorName, write_bytes_atomically};
use crate::lora::{self, LoraConfig, PEFT_PREFIX};
use crate::tokenize::{EncodeOptions, PaddingSide, TextTokenizer, TokenBatch, TruncationSide};
use crate::types::Prompt;

/// The spec file of a reward-model folder.
pub const SPEC_FILE: &str = "reward_model.json";
/// Version of [`RewardModelSpec`] written by this build.
pub const SPEC_VERSION: u32 = 1;
/// The head's weights in a LoRA reward-model folder.
const HEAD_FILE: &str = "score.safetensors";
/// The `base` of a folder that holds its own backbone (written by `plumb export`): the folder
/// itself, wherever it is moved.
pub const BASE_IS_THIS_FOLDER: &str = ".";
/// The head of a sentence-transformers reward-model folder (`plumb export` of an encoder reward
/// model): a `Dense` module's `linear.weight` `[K, D]` and `linear.bias` `[K]`.
pub const ST_DENSE_WEIGHTS: &str = "2_Dense/model.safetensors";

/// Which backbone family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackboneKind {
    /// BERT-style encoder (HF folder).
    Bert,
    /// Llama-family decoder (GGUF file or HF folder).
    Llama,
}

/// The `[model]` section of a reward-model recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardModelConfig {
    /// An HF folder (config.json, *.safetensors, tokenizer.json), a `.gguf` file, or a folder
    /// holding one.
    pub backbone: PathBuf,
    /// Encoders: `mean` (default) or `cls`; decoders always pool the last real token.
    #[serde(default)]
    pub pooling: Option<Pooling>,
    /// Tokens per prompt + response, special tokens included.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Which end loses tokens when a text is longer (left keeps the response).
    #[serde(default)]
    pub truncation: TruncationSide,
    /// Named outputs; one attribute = a scalar reward.
    #[serde(default = "default_attributes")]
    pub attributes: Vec<String>,
    /// How a conversation and a response become text: `hh-transcript` for encoders (default),
    /// `chat-ml` for decoders (default).
    #[serde(default)]
    pub template: Option<ChatTemplate>,
    /// LoRA adapters on the backbone (the head is always fully trained).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Standard deviation of the head's initial weights (bias starts at 0).
    #[serde(default = "default_head_std")]
    pub head_init_std: f64,
}

impl RewardModelConfig {
    /// Checks the values that need no backbone: at least one attribute, `max_len` ≥ 4, a finite
    /// non-negative `head_init_std`. [`RewardModelBundle::build`] checks the rest against the
    /// backbone ([`Backbone::check_inputs`]).
    pub fn validate(&self) -> Result<()> {
        if self.attributes.is_empty() {
            bail!("model.attributes is empty: a reward model needs at least one output");
        }
        if self.max_len < 4 {
            bail!("model.max_len {} is too small (at least 4)", self.max_len);
        }
        if !(self.head_init_std.is_finite() && self.head_init_std >= 0.0) {
            bail!(
                "model.head_init_std {} must be a finite number ≥ 0",
                self.head_init_std
            );
        }
        Ok(())
    }
}

fn default_max_len() -> usize {
    256
}
fn default_attributes() -> Vec<String> {
    vec!["reward".into()]
}
fn default_head_std() -> f64 {
    0.02
}

/// Per-attribute normalization measured on a reference set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardNormalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// How many texts they were measured on.
    pub count: usize,
}

/// `reward_model.json`: everything needed to rebuild and use a trained reward model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardModelSpec {
    pub format_version: u32,
    pub kind: BackboneKind,
    /// Where the backbone was loaded from before training (read again for LoRA folders).
    pub base: PathBuf,
    pub pooling: Pooling,
    pub attributes: Vec<String>,
    pub max_len: usize,
    pub truncation: TruncationSide,
    pub template: ChatTemplate,
    /// The pad token id of the backbone's tokenizer.
    pub pad_id: u32,
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    #[serde(default)]
    pub normalization: Option<RewardNormalization>,
}

impl RewardNormalization {
    /// Checks the vectors against the head's width (one entry per attribute) and their values:
    /// means finite, standard deviations finite and > 0 (a σ of 0 would turn every normalized
    /// reward into ±inf or NaN).
    pub fn validate(&self, attributes: &[String]) -> Result<()> {
        let k = attributes.len();
        for (field, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != k {
                bail!(
                    "normalization.{field} has {} entries, the head has {k} attributes",
                    v.len()
                );
            }
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                bail!(
                    "normalization.{field}[{j}] (attribute {:?}) is {}, not a finite number",
                    attributes[j],
                    v[j]
                );
            }
        }
        if let Some(j) = self.std.iter().position(|&s| s <= 0.0) {
            bail!(
                "normalization.std[{j}] (attribute {:?}) is {}: a standard deviation must be > 0",
                attributes[j],
                self.std[j]
            );
        }
        Ok(())
    }
}

impl RewardModelSpec {
    /// Parses and validates the text of a `reward_model.json` ([`RewardModelSpec::validate`]).
    pub fn from_json(text: &str) -> Result<Self> {
        let spec: Self = serde_json::from_str(text).context("not a reward-model spec")?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks what can be checked without the backbone: the format version, at least one
    /// attribute (each named, no duplicates), `max_len` ≥ 4, the pooling the backbone kind
    /// allows, and the normalization against the head's width. The bounds that need the backbone
    /// (pad id, vocabulary, position table) are checked by [`RewardModelBundle::load`]
    /// ([`Backbone::check_inputs`]).
    pub fn validate(&self) -> Result<()> {
        if self.format_version != SPEC_VERSION {
            bail!(
                "format version {} (this build reads {SPEC_VERSION})",
                self.format_version
            );
        }
        if self.attributes.is_empty() {
            bail!("attributes is empty: a reward model has at least one output");
        }
        for (i, a) in self.attributes.iter().enumerate() {
            if a.trim().is_empty() {
                bail!("attributes[{i}] is empty");
            }
            if self.attributes[..i].contains(a) {
                bail!("attributes[{i}] {a:?} appears twice");
            }
        }
        if self.max_len < 4 {
            bail!("max_len {} is too small (at least 4)", self.max_len);
        }
        if self.kind == BackboneKind::Llama && self.pooling != Pooling::LastToken {
            bail!(
                "pooling {:?}: decoder reward models pool the last token",
                self.pooling
            );
        }
        if let Some(norm) = &self.normalization {
            norm.validate(&self.attributes)?;
        }
        Ok(())
    }
}

/// `path` made absolute against the current directory (without resolving links, so a folder
/// names the backbone the way the user did, e.g. through `models/` → the shared models).
fn absolute_base(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path)
        .with_context(|| format!("resolving the backbone path {}", path.display()))
}

/// The backbone of a reward model. (A model holds one backbone, so the variants' size
/// difference costs nothing.)
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone {
    Bert(BertModel),
    Llama(LlamaModel),
}

impl Backbone {
    /// Sets the LoRA adapter input dropout of the backbone's layer projections.
    pub fn set_adapter_dropout(&mut self, prob: f64) {
        match self {
            Backbone::Bert(m) => m.set_adapter_dropout(prob),
            Backbone::Llama(m) => m.set_adapter_dropout(prob),
        }
    }

    /// Rows of the token-embedding table: every token id fed to the backbone must be below.
    pub fn vocab_rows(&self) -> usize {
        match self {
            Backbone::Bert(m) => m.embeddings.word.weight.dims()[0],
            Backbone::Llama(m) => m.embed_tokens.weight.dims()[0],
        }
    }

    /// The longest sequence the backbone takes: BERT's absolute position table
    /// (`max_position_embeddings` rows); `None` for Llama-family decoders, whose RoPE angles are
    /// computed for any position (past the precomputed table, on the fly).
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            Backbone::Bert(m) => Some(m.embeddings.position.weight.dims()[0]),
            Backbone::Llama(_) => None,
        }
    }

    /// Checks the values read from a recipe or a spec against the backbone's tables: every id
    /// the tokenizer produces and its pad id below [`Backbone::vocab_rows`], `max_len` within
    /// [`Backbone::max_positions`]. Past either, the embedding lookup would read out of bounds.
    pub fn check_inputs(&self, tokenizer: &TextTokenizer, max_len: usize) -> Result<()> {
        tokenizer.check_fits(self.vocab_rows(), "the backbone's token embedding")?;
        if let Some(positions) = self.max_positions()
            && max_len > positions
        {
            bail!(
                "max_len {max_len} is longer than the backbone's position table (max_position_embeddings = {positions}); use at most {positions}"
            );
        }
        Ok(())
    }

    /// Last hidden states `[B, T, D]`.
    pub fn hidden(&self, ids: Tensor<2, Int>, mask: Tensor<2, Int>) -> Tensor<3> {
        match self {
            Backbone::Bert(m) => m.forward(ids, mask, None),
            Backbone::Llama(m) => m.forward_hidden(ids, mask),
        }
    }
}

/// Backbone + linear head.
#[derive(Module, Debug)]
pub struct RewardModel {
    pub backbone: Backbone,
    /// `[D] → [K]`.
    pub head: Linear,
}

impl RewardModel {
    /// Rewards `[B, K]` of a padded batch `ids`, `mask` `[B, T]` (1 real, 0 pad).
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        mask: Tensor<2, Int>,
        pooling: Pooling,
    ) -> Tensor<2> {
        self.head.forward(self.pooled(ids, mask, pooling))
    }

    /// The pooled features `[B, D]` the head reads (`forward` = `head(pooled)`).
    pub fn pooled(&self, ids: Tensor<2, Int>, mask: Tensor<2, Int>, pooling: Pooling) -> Tensor<2> {
        let hidden = self.backbone.hidden(ids, mask.clone());
        pooling.pool(hidden, mask)
    }

    /// The same model with the head's bias frozen where it is (no gradient, so no optimizer
    /// step moves it): for objectives that see only reward differences, where the bias is not
    /// identified ([`rm_losses`]' `PairwiseObjective::identifies_offset`).
    pub fn with_frozen_head_bias(mut self) -> Self {
        self.head.bias = self.head.bias.map(|b| b.set_require_grad(false));
        self
    }
}

/// The checkpoint names of a reward model: the backbone's HF names, the head as `score.*`.
pub fn hf_names(slot: &ParamSlot<'_>) -> Option<TensorName> {
    let transpose = slot.is_linear_weight();
    let name = if let Some(rest) = slot.path.strip_prefix("head.") {
        format!("score.{rest}")
    } else if let Some(rest) = slot.path.strip_prefix("backbone.Bert.") {
        bert::hf_name(rest)?
    } else if let Some(rest) = slot.path.strip_prefix("backbone.Llama.") {
        llama::hf_name(rest)
    } else {
        return None;
    };
    Some(TensorName { name, transpose })
}

/// A reward model with its tokenizer, spec and device: texts in, rewards out.
#[derive(Debug)]
pub struct RewardModelBundle {
    pub model: RewardModel,
    pub tokenizer: TextTokenizer,
    pub spec: RewardModelSpec,
    pub device: Device,
}

/// Which family a path holds: a `.gguf` (or a folder with one and no config.json) or an HF folder
/// whose config.json says `model_type: bert` → BERT, other HF folders → Llama family.
pub fn detect_backbone(path: &Path) -> Result<BackboneKind> {
    if path.is_file() {
        return if path.extension().is_some_and(|e| e == "gguf") {
            Ok(BackboneKind::Llama)
        } else {
            bail!(
                "{}: a backbone is an HF folder or a .gguf file",
                path.display()
            )
        };
    }
    if !path.is_dir() {
        bail!(
            "backbone {} does not exist (run `cargo xtask fetch-models` for models/minilm and models/smollm2)",
            path.display()
        );
    }
    let config = path.join("config.json");
    if !config.is_file() {
        return Ok(BackboneKind::Llama);
    }
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config)
            .with_context(|| format!("reading {}", config.display()))?,
    )
    .with_context(|| format!("{}: invalid JSON", config.display()))?;
    Ok(match raw.get("model_type").and_then(|v| v.as_str()) {
        Some("bert") => BackboneKind::Bert,
        _ => BackboneKind::Llama,
    })
}

fn load_backbone(
    kind: BackboneKind,
    path: &Path,
    device: &Device,
) -> Result<(Backbone, TextTokenizer, usize)> {
    Ok(match kind {
        BackboneKind::Bert => {
            let (model, config): (BertModel, BertConfig) = BertModel::load(path, device)?;
            let tokenizer = TextTokenizer::from_file(path.join("tokenizer.json"))?
                .try_with_pad_id(
                    config.pad_token_id,
                    &format!("{} pad_token_id", path.join("config.json").display()),
                )?;
            (Backbone::Bert(model), tokenizer, config.hidden_size)
        }
        BackboneKind::Llama => {
            let lm = CausalLm::load(path, device)?;
            let d = lm.config.hidden_size;
            (Backbone::Llama(lm.model), lm.tokenizer, d)
        }
    })
}

/// A `[d_in] → [k]` linear layer with weights drawn from N(0, std²) by a seeded host RNG (the
/// same on every device) and a zero bias.
pub(crate) fn seeded_head(d_in: usize, k: usize, std: f64, seed: u64, device: &Device) -> Linear {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_4ead);
    let weight: Vec<f32> = (0..d_in * k)
        .map(|_| {
            // Box–Muller.
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
        })
        .collect();
    Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(weight, [d_in, k]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::zeros([k], device))),
    }
}

impl RewardModelBundle {
    /// A fresh reward model: the backbone from `config.backbone`, a seeded head, LoRA adapters
    /// when configured.
    pub fn build(config: &RewardModelConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let kind = detect_backbone(&config.backbone)?;
        // The folder's spec names the base by its absolute path, so that loading it does not
        // depend on the working directory at training time.
        let base = absolute_base(&config.backbone)?;
        let (backbone, tokenizer, d) = load_backbone(kind, &base, device)?;
        backbone
            .check_inputs(&tokenizer, config.max_len)
            .with_context(|| format!("model.backbone {}", config.backbone.display()))?;
        let pooling = match (kind, config.pooling) {
            (BackboneKind::Llama, Some(p)) if p != Pooling::LastToken => {
                bail!("model.pooling = {p:?}: decoder reward models pool the last token")
            }
            (BackboneKind::Llama, _) => Pooling::LastToken,
            (BackboneKind::Bert, p) => p.unwrap_or(Pooling::Mean),
        };
        let template = config.template.unwrap_or(match kind {
            BackboneKind::Bert => ChatTemplate::HhTranscript,
            BackboneKind::Llama => ChatTemplate::ChatMl,
        });
        let head = seeded_head(
            d,
            config.attributes.len(),
            config.head_init_std,
            seed,
            device,
        );
        let pad_id = tokenizer.pad_id();
        let mut model = RewardModel { backbone, head };
        if let Some(lora_config) = &config.lora {
            model = lora::apply_routed(model, lora_config)?;
            model.backbone.set_adapter_dropout(lora_config.dropout);
            // The adapters freeze every base parameter, the freshly initialized head included;
            // the head trains in full (weight and bias), as PEFT's sequence-classification task
            // trains its `score` layer (`modules_to_save`).
            model.head = Linear {
                weight: model.head.weight.set_require_grad(true),
                bias: model.head.bias.map(|b| b.set_require_grad(true)),
            };
        }
        Ok(Self {
            model,
            tokenizer,
            spec: RewardModelSpec {
                format_version: SPEC_VERSION,
                kind,
                base,
                pooling,
                attributes: config.attributes.clone(),
                max_len: config.max_len,
                truncation: config.truncation,
                template,
                pad_id,
                lora: config.lora.clone(),
                normalization: None,
            },
            device: device.clone(),
        })
    }

    /// The text a (prompt, response) pair is scored as.
    pub fn text(&self, prompt: &Prompt, response: &str) -> Result<String> {
        let t = self.spec.template;
        Ok(format!(
            "{}{}",
            t.render_prompt(prompt)?,
            t.render_response(response)
        ))
    }

    /// Encoding options: the spec's max length and truncation side, right padding.
    pub fn encode_options(&self) -> EncodeOptions {
        EncodeOptions {
            max_len: Some(self.spec.max_len),
            truncation: self.spec.truncation,
            padding: PaddingSide::Right,
            add_special_tokens: true,
        }
    }

    /// Tokenizes and pads `texts`.
    pub fn encode(&self, texts: &[&str]) -> Result<TokenBatch> {
        self.tokenizer.encode_batch(texts, &self.encode_options())
    }

    /// Raw rewards `[B, K]` of an encoded batch (gradients flow on autodiff devices).
    pub fn forward(&self, batch: &TokenBatch) -> Tensor<2> {
        self.model.forward(
            batch.ids_tensor(&self.device),
            batch.attention_tensor(&self.device),
            self.spec.pooling,
        )
    }

    /// Raw rewards (one `Vec` of K values per text), in batches of `batch_size` texts of similar
    /// length (sorted by length, results in input order). Runs without gradients.
    pub fn score_texts(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let batch_size = batch_size.max(1);
        let options = self.encode_options();
        let lengths: Vec<usize> = texts
            .iter()
            .map(|t| Ok(self.tokenizer.encode_text(t, &options)?.len()))
            .collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let k = self.spec.attributes.len();
        let mut out = vec![Vec::new(); texts.len()];
        let frozen = self.model.valid();
        for chunk in order.chunks(batch_size) {
            let chunk_texts: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            let batch = self.encode(&chunk_texts)?;
            let device = frozen.head.weight.val().device();
            let rewards = frozen.forward(
                batch.ids_tensor(&device),
                batch.attention_tensor(&device),
                self.spec.pooling,
            );
            let values: Vec<f32> = rewards
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading rewards: {e:?}"))?;
            for (row, &i) in chunk.iter().enumerate() {
                out[i] = values[row * k..(row + 1) * k].to_vec();
            }
        }
        if out.iter().flatten().any(|v| !v.is_finite()) {
            bail!("the reward model produced non-finite rewards");
        }
        Ok(out)
    }

    /// Measures per-attribute mean and standard deviation of raw rewards on `texts` and stores
    /// them in the spec (saved with the model).
    pub fn fit_normalization(&mut self, texts: &[&str], batch_size: usize) -> Result<()> {
        if texts.len() < 2 {
            bail!("normalization needs at least two reference texts");
        }
        let rewards = self.score_texts(texts, batch_size)?;
        let k = self.spec.attributes.len();
        let n = rewards.len() as f64;
        let mut mean = vec![0f64; k];
        for r in &rewards {
            for j in 0..k {
                mean[j] += r[j] as f64 / n;
            }
        }
        let mut var = vec![0f64; k];
        for r in &rewards {
            for j in 0..k {
                var[j] += (r[j] as f64 - mean[j]).powi(2) / n;
            }
        }
        let std: Vec<f32> = var.iter().map(|&v| v.sqrt() as f32).collect();
        if let Some(j) = std.iter().position(|&s| !s.is_finite() || s <= 0.0) {
            bail!(
                "normalization: every one of the {} reference rewards of attribute {:?} is {}: a standard deviation of 0 cannot normalize (use more varied reference texts)",
                rewards.len(),
                self.spec.attributes[j],
                mean[j]
            );
        }
        let norm = RewardNormalization {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
            count: rewards.len(),
        };
        norm.validate(&self.spec.attributes)?;
        self.spec.normalization = Some(norm);
        Ok(())
    }

    /// Applies the stored normalization to raw rewards (an error when none is stored).
    pub fn normalize(&self, rewards: &[f32]) -> Result<Vec<f32>> {
        let Some(norm) = &self.spec.normalization else {
            bail!("this reward model has no stored normalization (fit one on a reference set)");
        };
        if rewards.len() != norm.mean.len() {
            bail!(
                "normalize: {} rewards given, the model has {} attributes",
                rewards.len(),
                norm.mean.len()
            );
        }
        Ok(rewards
            .iter()
            .zip(norm.mean.iter().zip(&norm.std))
            .map(|(&r, (&m, &s))| (r - m) / s)
            .collect())
    }

    /// Writes the reward model into folder `dir` (see the module docs), atomically file by file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        match &self.spec.lora {
            None => {
                checkpoint::save_safetensors(
                    &self.model,
                    &dir.join("model.safetensors"),
                    &hf_names,
                )?;
            }
            Some(config) => {
                lora::save_adapters(&self.model, config, dir, &hf_names, PEFT_PREFIX)?;
                checkpoint::save_safetensors(
                    &self.model.head,
                    &dir.join(HEAD_FILE),
                    &|s: &ParamSlot<'_>| {
                        Some(TensorName {
                            name: format!("score.{}", s.path),
                            transpose: s.is_linear_weight(),
                        })
                    },
                )?;
            }
        }
        let tokenizer_json = self
            .tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| anyhow::anyhow!("serializing the tokenizer: {e}"))?;
        write_bytes_atomically(&dir.join("tokenizer.json"), tokenizer_json.as_bytes())?;
        let mut spec = self.spec.clone();
        spec.base = absolute_base(&spec.base)?;
        spec.validate()
            .with_context(|| format!("saving {}", dir.display()))?;
        write_bytes_atomically(
            &dir.join(SPEC_FILE),
            serde_json::to_string_pretty(&spec)?.as_bytes(),
        )?;
        Ok(())
    }

    /// Reads `dir/reward_model.json`.
    pub fn read_spec(dir: &Path) -> Result<RewardModelSpec> {
        crate::paths::require_folder(dir, "a reward-model folder written by `plumb train-rm`")?;
        let path = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (is {} a reward-model folder written by `plumb train-rm`?)",
                path.display(),
                dir.display()
            )
        })?;
        RewardModelSpec::from_json(&text).with_context(|| format!("{}", path.display()))
    }

    /// Loads a folder written by [`RewardModelBundle::save`] (or exported by `plumb export`, see
    /// the module docs). The base backbone the spec names gives the architecture (and, for LoRA
    /// folders, the frozen weights); the loaded spec names it by its absolute path.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let mut spec = Self::read_spec(dir)?;
        // A folder exported by `plumb export` carries its own backbone: base "." is the folder.
        if spec.base == Path::new(BASE_IS_THIS_FOLDER) {
            spec.base = absolute_base(dir)?;
        }
        if spec.base.is_relative() && !spec.base.exists() {
            bail!(
                "{} names the base model by the relative path {}, which does not exist from the current directory; folders written by this build name it by its absolute path (edit \"base\" to the absolute path of the backbone)",
                dir.join(SPEC_FILE).display(),
                spec.base.display()
            );
        }
        let (backbone, _, d) = load_backbone(spec.kind, &spec.base, device).with_context(|| {
            format!(
                "loading the base model {} named by {}",
                spec.base.display(),
                dir.join(SPEC_FILE).display()
            )
        })?;
        let head = seeded_head(d, spec.attributes.len(), 0.0, 0, device);
        let model = RewardModel { backbone, head };
        let dense = dir.join(ST_DENSE_WEIGHTS);
        let model = match &spec.lora {
            // A sentence-transformers folder (`plumb export` of an encoder reward model): the
            // backbone was read from the folder itself, the head is its Dense module.
            None if dense.is_file() => {
                let source = SafetensorsWeights::open(&dense)?;
                let dense_names = |slot: &ParamSlot<'_>| {
                    let rest = slot.path.strip_prefix("head.")?;
                    Some(TensorName {
                        name: format!("linear.{rest}"),
                        transpose: slot.is_linear_weight(),
                    })
                };
                checkpoint::apply_weights(
                    model,
                    &source,
                    &dense_names,
                    &dense.display().to_string(),
                )?
            }
            None => {
                // An HF `*ForSequenceClassification` layout has no `score.bias` (a head exported
                // by `plumb export` has a zero bias): the head's bias then stays 0.
                let path = dir.join("model.safetensors");
                let source = SafetensorsWeights::open(&path)?;
                let has_bias = source.contains("score.bias");
                let names = |slot: &ParamSlot<'_>| {
                    if !has_bias && slot.path == "head.bias" {
                        None
                    } else {
                        hf_names(slot)
                    }
                };
                checkpoint::apply_weights(model, &source, &names, &path.display().to_string())?
            }
            Some(_) => {
                let (model, _) = lora::load_adapters(model, dir, &hf_names, PEFT_PREFIX)?;
                let head_file = dir.join(HEAD_FILE);
                let source = SafetensorsWeights::open(&head_file)?;
                let head_only = |slot: &ParamSlot<'_>| {
                    if slot.path.starts_with("head.") {
                        hf_names(slot)
                    } else {
                        None
                    }
                };
                checkpoint::apply_weights(
                    model,
                    &source,
                    &head_only,
                    &head_file.display().to_string(),
                )?
            }
        };
        let tokenizer_file = dir.join("tokenizer.json");
        let tokenizer = TextTokenizer::from_file(&tokenizer_file)?.try_with_pad_id(
            spec.pad_id,
            &format!("{} pad_id", dir.join(SPEC_FILE).display()),
        )?;
        model
            .backbone
            .check_inputs(&tokenizer, spec.max_len)
            .with_context(|| {
                format!(
                    "{} with {}",
                    dir.join(SPEC_FILE).display(),
                    tokenizer_file.display()
                )
            })?;
        Ok(Self {
            model,
            tokenizer,
            spec,
            device: device.clone(),
        })
    }
}

/// `log σ(r − r_ref)` elementwise: the log-sigmoid transform of Wang et al. 2024 ("Transforming
/// and Combining Rewards for Aligning Large Language Models"), with `r_ref` the reward of a
/// reference response to the same prompt. Computed stably: `−softplus(−(r − r_ref))`.
pub fn log_sigmoid_transform(reward: f32, reference: f32) -> f32 {
    let z = (reward - reference) as f64;
    let value = if z >= 0.0 {
        -(-z).exp().ln_1p()
    } else {
        z - z.exp().ln_1p()
    };
    value as f32
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checkpoint::tests::temp_dir;
    use crate::device::test_device;
    use crate::models::bert::tests::{tiny_config, tiny_weights};
    use crate::models::weights::HostTensor;

    /// A tiny BERT HF folder `root/name` (config.json, model.safetensors, tokenizer.json: the
    /// 10-word tokenizer of the tokenize tests) with `edit` applied to the config first.
    pub(crate) fn tiny_bert_folder(
        root: &Path,
        name: &str,
        edit: impl Fn(&mut BertConfig),
    ) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = tiny_config();
        edit(&mut c);
        let mut json = serde_json::to_value(&c).unwrap();
        json["model_type"] = "bert".into();
        std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
        let tensors: Vec<(String, HostTensor)> = tiny_weights(&c).tensors.into_iter().collect();
        checkpoint::save_host_tensors(&dir.join("model.safetensors"), &tensors).unwrap();
        crate::tokenize::tests::word_tokenizer()
            .inner()
            .save(dir.join("tokenizer.json"), false)
            .unwrap();
        dir
    }

    fn config(backbone: &Path, extra: serde_json::Value) -> RewardModelConfig {
        let mut v = serde_json::json!({"backbone": backbone, "max_len": 16});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    const TEXTS: [&str; 3] = ["a b c", "d e", "f g h a"];

    /// With LoRA the backbone's base weights are frozen but the new head trains in full: a
    /// loss reaches its weight and its bias (a BCE-trained PRM needs the bias), and no base
    /// weight of the backbone.
    #[test]
    fn a_lora_reward_model_trains_its_whole_head() {
        let device = test_device().autodiff();
        let root = temp_dir("rm-lora-head");
        let backbone = tiny_bert_folder(&root, "bert", |_| {});
        let bundle = RewardModelBundle::build(
            &config(
                &backbone,
                serde_json::json!({"lora": {"rank": 2, "alpha": 4.0, "target_modules": ["query", "value"]}}),
            ),
            7,
            &device,
        )
        .unwrap();
        let head = &bundle.model.head;
        assert!(head.weight.val().is_require_grad());
        assert!(head.bias.as_ref().unwrap().val().is_require_grad());
        let rewards = bundle.forward(&bundle.encode(&TEXTS).unwrap());
        let grads = rewards.sum().backward();
        let bias_grad = head.bias.as_ref().unwrap().val().grad(&grads).unwrap();
        // d(Σ r)/db = the number of texts.
        assert_eq!(
            bias_grad.into_data().iter::<f32>().collect::<Vec<_>>(),
            vec![3.0]
        );
        assert!(head.weight.val().grad(&grads).is_some());
    }

    /// Changes the working directory: safe under nextest, which runs each test in its own
    /// process.
    #[test]
    fn a_saved_folder_loads_from_any_working_directory() {
        let device = test_device();
        let root = temp_dir("rm-cwd");
        let elsewhere = temp_dir("rm-cwd-elsewhere");
        tiny_bert_folder(&root, "tiny-bert", |_| {});
        std::env::set_current_dir(&root).unwrap();
        // A relative backbone path, as recipes give it.
        let bundle = RewardModelBundle::build(
            &config(Path::new("tiny-bert"), serde_json::json!({})),
            7,
            &device,
        )
        .unwrap();
        assert_eq!(bundle.spec.base, root.join("tiny-bert"));
        bundle.save(Path::new("rm")).unwrap();
        let before = bundle.score_texts(&TEXTS, 2).unwrap();

        std::env::set_current_dir(&elsewhere).unwrap();
        assert!(!Path::new("tiny-bert").exists());
        let loaded = RewardModelBundle::load(&root.join("rm"), &device).unwrap();
        assert_eq!(loaded.spec.base, root.join("tiny-bert"));
        assert_eq!(loaded.score_texts(&TEXTS, 2).unwrap(), before);

        // A folder written before bases were made absolute names what is missing.
        let spec_path = root.join("rm").join(SPEC_FILE);
        let mut spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
        spec["base"] = "tiny-bert".into();
        std::fs::write(&spec_path, spec.to_string()).unwrap();
        let err = RewardModelBundle::load(&root.join("rm"), &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("names the base model by the relative path tiny-bert, which does not exist from the current directory"),
            "{err}"
        );
    }

    #[test]
    fn max_len_and_vocabulary_are_bounded_by_the_backbone() {
        let device = test_device();
        let root = temp_dir("rm-bounds");
        let bert = tiny_bert_folder(&root, "tiny-bert", |_| {});
        // 16 positions: max_len 16 builds, 17 would index past the position table.
        let err = RewardModelBundle::build(
            &config(&bert, serde_json::json!({"max_len": 17})),
            0,
            &device,
        )
        .unwrap_err();
        assert_eq!(
            format!("{:#}", err),
            format!(
                "model.backbone {}: max_len 17 is longer than the backbone's position table (max_position_embeddings = 16); use at most 16",
                bert.display()
            )
        );
        // A tokenizer with ids past the embedding table (10 words, 8 rows).
        let small = tiny_bert_folder(&root, "small-vocab", |c| c.vocab_size = 8);
        let err = RewardModelBundle::build(&config(&small, serde_json::json!({})), 0, &device)
            .unwrap_err();
        assert!(
            format!("{err:#}").ends_with(
                "the tokenizer produces ids up to 9, but the backbone's token embedding has 8 rows: the tokenizer does not belong to this model"
            ),
            "{err:#}"
        );
        // A pad id past the vocabulary in config.json.
        let pad = tiny_bert_folder(&root, "bad-pad", |c| c.pad_token_id = 30);
        let err =
            RewardModelBundle::build(&config(&pad, serde_json::json!({})), 0, &device).unwrap_err();
        assert!(
            format!("{err:#}")
                .contains("pad_token_id 30 is outside the vocabulary (vocab_size 20)"),
            "{err:#}"
        );

        // Values in a saved spec are checked on load.
        let bundle =
            RewardModelBundle::build(&config(&bert, serde_json::json!({})), 0, &device).unwrap();
        let dir = root.join("rm");
        bundle.save(&dir).unwrap();
        let spec_path = dir.join(SPEC_FILE);
        let good = std::fs::read_to_string(&spec_path).unwrap();
        let load_with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
            edit(&mut v);
            std::fs::write(&spec_path, v.to_string()).unwrap();
            format!("{:#}", RewardModelBundle::load(&dir, &device).unwrap_err())
        };
        let err = load_with(&|v| v["pad_id"] = 10.into());
        assert!(
            err.contains("reward_model.json pad_id 10 is not a token of the tokenizer"),
            "{err}"
        );
        let err = load_with(&|v| v["max_len"] = 600.into());
        assert!(
            err.contains("max_len 600 is longer than the backbone's position table"),
            "{err}"
        );
        std::fs::write(&spec_path, &good).unwrap();
        assert!(RewardModelBundle::load(&dir, &device).is_ok());
    }

    fn spec_error(edit: impl Fn(&mut serde_json::Value)) -> String {
        let mut v = serde_json::json!({
            "format_version": 1, "kind": "bert", "base": "/m", "pooling": "mean",
            "attributes": ["helpful", "safe"], "max_len": 16, "truncation": "left",
            "template": "hh-transcript", "pad_id": 0,
            "normalization": {"mean": [0.5, -1.0], "std": [1.0, 2.0], "count": 10},
        });
        RewardModelSpec::from_json(&v.to_string()).unwrap();
        edit(&mut v);
        format!(
            "{:#}",
            RewardModelSpec::from_json(&v.to_string()).unwrap_err()
        )
    }

    #[test]
    fn spec_vectors_and_floats_are_checked_against_the_head() {
        assert_eq!(
            spec_error(|v| v["normalization"]["mean"] = serde_json::json!([0.5])),
            "normalization.mean has 1 entries, the head has 2 attributes"
        );
        assert_eq!(
            spec_error(|v| v["normalization"]["std"] = serde_json::json!([1.0, 0.0])),
            "normalization.std[1] (attribute \"safe\") is 0: a standard deviation must be > 0"
        );
        // Past f32's range: refused by the exact float parser (serde_json's float_roundtrip)
        // before validation could see an inf.
        let too_big = spec_error(|v| v["normalization"]["std"] = serde_json::json!([1.0, 1e39]));
        assert!(
            too_big.starts_with("not a reward-model spec: number out of range at line 1"),
            "{too_big}"
        );
        assert_eq!(
            spec_error(|v| v["attributes"] = serde_json::json!([])),
            "attributes is empty: a reward model has at least one output"
        );
        assert_eq!(
            spec_error(|v| v["attributes"] = serde_json::json!(["a", "a"])),
            "attributes[1] \"a\" appears twice"
        );
        assert_eq!(
            spec_error(|v| {
                v["kind"] = "llama".into();
            }),
            "pooling Mean: decoder reward models pool the last token"
        );
        assert_eq!(
            spec_error(|v| v["format_version"] = 2.into()),
            "format version 2 (this build reads 1)"
        );
        assert!(spec_error(|v| v["pad_id"] = (-1).into()).starts_with("not a reward-model spec"));
    }

    #[test]
    fn a_zero_spread_normalization_is_an_error_and_widths_must_match() {
        let device = test_device();
        let root = temp_dir("rm-norm");
        let bert = tiny_bert_folder(&root, "tiny-bert", |_| {});
        // A zero head: every reward is exactly 0, so σ = 0.
        let mut flat = RewardModelBundle::build(
            &config(&bert, serde_json::json!({"head_init_std": 0.0})),
            0,
            &device,
        )
        .unwrap();
        let err = flat.fit_normalization(&TEXTS, 2).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "normalization: every one of the 3 reference rewards of attribute \"reward\" is 0"
            ),
            "{err}"
        );
        assert!(flat.spec.normalization.is_none());

        let mut bundle =
            RewardModelBundle::build(&config(&bert, serde_json::json!({})), 0, &device).unwrap();
        bundle.fit_normalization(&TEXTS, 2).unwrap();
        let raw = bundle.score_texts(&TEXTS, 2).unwrap();
        let norm = bundle.spec.normalization.clone().unwrap();
        // (r − μ)/σ over the reference set: mean 0, population variance 1.
        let z: Vec<f32> = raw
            .iter()
            .map(|r| bundle.normalize(r).unwrap()[0])
            .collect();
        let mean = z.iter().sum::<f32>() / 3.0;
        let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 3.0;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
            "{z:?} {norm:?}"
        );
        let err = bundle.normalize(&[1.0, 2.0]).unwrap_err().to_string();
        assert_eq!(
            err,
            "normalize: 2 rewards given, the model has 1 attributes"
        );
    }
}
