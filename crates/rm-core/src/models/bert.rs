//! BERT encoder (all-MiniLM-L6-v2 and any HF BERT folder): embeddings (word + position + token
//! type, LayerNorm), post-LN encoder layers with erf-GELU, and the HF tensor names in one place
//! ([`BertModel::from_source`]).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::host_attention;
use super::host_ops::{dropout, gelu};
use super::pooling::Pooling;
use super::safetensors::SafetensorsWeights;
use super::weights::{HostTensor, WeightSource};
use super::{first_present, load_embedding, load_layer_norm, load_linear};
use crate::lora;
use crate::tokenize::{EncodeOptions, PaddingSide, TextTokenizer, TruncationSide};

/// A BERT config (the fields of HF `config.json` plumbline uses). Fields are public so callers
/// can override any of them after reading a file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Width `D` of every hidden state.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (`hidden_size` must be a multiple).
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Feed-forward activation; only the exact erf `"gelu"` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Rows of the position-embedding table: the longest sequence the model takes.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) embedding table.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Token id used for padding (masked out, so its value never matters to real tokens).
    #[serde(default)]
    pub pad_token_id: u32,
    /// Dropout on embeddings and sublayer outputs (training on an autodiff device only).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training on an autodiff device only).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Only `"absolute"` is supported.
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_positions() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_position_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Reads an HF `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading BERT config {}", path.display()))?;
        let config: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a BERT config", path.display()))?;
        config
            .validate()
            .with_context(|| format!("{}", path.display()))?;
        Ok(config)
    }

    /// Rejects what this implementation does not support, instead of ignoring it.
    pub fn validate(&self) -> Result<()> {
        if self.hidden_act != "gelu" {
            bail!(
                "hidden_act {:?} is not supported (only the exact erf \"gelu\")",
                self.hidden_act
            );
        }
        if self.position_embedding_type != "absolute" {
            bail!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            );
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        for (name, n) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if n == 0 {
                bail!("{name} must be positive");
            }
        }
        if self.pad_token_id as usize >= self.vocab_size {
            bail!(
                "pad_token_id {} is outside the vocabulary (vocab_size {})",
                self.pad_token_id,
                self.vocab_size
            );
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            bail!(
                "layer_norm_eps must be a positive number, got {}",
                self.layer_norm_eps
            );
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{name} must be in [0, 1), got {p}");
            }
        }
        Ok(())
    }
}

/// Word + position + token-type embeddings, LayerNorm, dropout.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// Word embeddings `[vocab, D]` (HF `word_embeddings`).
    pub word: Embedding,
    /// Absolute position embeddings `[max_positions, D]`.
    pub position: Embedding,
    /// Token-type (segment) embeddings `[type_vocab, D]`.
    pub token_type: Embedding,
    /// LayerNorm over the sum.
    pub norm: LayerNorm,
    /// Dropout after the LayerNorm.
    pub dropout: Dropout,
}

/// Multi-head self-attention with its output projection and post-LN residual.
#[derive(Module, Debug)]
pub struct BertAttention {
    /// Query projection `D → D` (HF `attention.self.query`).
    pub query: Linear,
    /// Key projection `D → D`.
    pub key: Linear,
    /// Value projection `D → D`.
    pub value: Linear,
    /// Output projection `D → D` (HF `attention.output.dense`).
    pub output: Linear,
    /// Post-residual LayerNorm (HF `attention.output.LayerNorm`).
    pub norm: LayerNorm,
    /// Dropout on the attention probabilities.
    pub attention_dropout: Dropout,
    /// Dropout on the output projection, before the residual.
    pub dropout: Dropout,
    /// LoRA adapter input dropout for the projections (p = 0 unless set; see [`crate::lora`]).
    pub adapter_dropout: Dropout,
    /// Number of heads.
    pub heads: usize,
}

/// One encoder layer: attention, then the GELU feed-forward with its post-LN residual.
#[derive(Module, Debug)]
pub struct BertLayer {
    /// Self-attention block (with its own residual and LayerNorm).
    pub attention: BertAttention,
    /// Feed-forward up projection `D → FF` (HF `intermediate.dense`), followed by GELU.
    pub intermediate: Linear,
    /// Feed-forward down projection `FF → D` (HF `output.dense`).
    pub output: Linear,
    /// Post-residual LayerNorm (HF `output.LayerNorm`).
    pub norm: LayerNorm,
    /// Dropout on the down projection, before the residual.
    pub dropout: Dropout,
    /// LoRA adapter input dropout for the feed-forward projections (see [`crate::lora`]).
    pub adapter_dropout: Dropout,
}

/// The BERT encoder.
#[derive(Module, Debug)]
pub struct BertModel {
    /// Input embeddings.
    pub embeddings: BertEmbeddings,
    /// Encoder layers, in order.
    pub layers: Vec<BertLayer>,
    /// Width `D` of the hidden states.
    pub hidden_size: usize,
}

/// Additive attention bias `[B, 1, 1, T]`: 0 for real tokens, a large negative number for pads.
pub(crate) fn padding_bias(mask: Tensor<2, Int>) -> Tensor<4> {
    let [b, t] = mask.dims();
    (mask.float().neg() + 1.0)
        .mul_scalar(-1e9)
        .reshape([b, 1, 1, t])
}

/// The padding bias in the form each attention path reads.
pub(crate) struct AttentionBias {
    /// `[B, 1, 1, T]` for the training path; `[B, 1, T, T]` for burn's fused attention (it
    /// broadcasts only the leading dims), materialized once for all layers.
    tensor: Tensor<4>,
    /// Per-key bias `[B·T]` for the host kernel ([`host_attention`]), when it applies.
    host: Option<Vec<f32>>,
}

impl AttentionBias {
    fn new(attention_mask: Tensor<2, Int>, inference: bool) -> Self {
        let [b, t] = attention_mask.dims();
        let tensor = padding_bias(attention_mask);
        if !inference {
            return Self { tensor, host: None };
        }
        if host_attention::applies(&tensor) {
            let host = tensor.clone().into_data().try_into_vec::<f32>().ok();
            if host.is_some() {
                return Self { tensor, host };
            }
        }
        let tensor = Tensor::zeros([b, 1, t, t], &tensor.device()) + tensor;
        Self { tensor, host: None }
    }
}

impl BertAttention {
    fn forward(&self, x: Tensor<3>, bias: &AttentionBias) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let dh = d / self.heads;
        let split = |y: Tensor<2>| y.reshape([b, t, self.heads, dh]).swap_dims(1, 2);
        let scale = 1.0 / (dh as f64).sqrt();
        // Projections on [B·T, D] rows: one GEMM each instead of B batched ones.
        let rows = x.clone().reshape([b * t, d]);
        let drop = &self.adapter_dropout;
        let q = lora::linear(&self.query, rows.clone(), drop);
        let k = lora::linear(&self.key, rows.clone(), drop);
        let v = lora::linear(&self.value, rows, drop);
        if let Some(key_bias) = &bias.host {
            // Inference on flex: the host kernel reads and writes [B·T, D] rows directly.
            let context =
                host_attention::attention(q, k, v, key_bias, (b, t, self.heads), scale as f32);
            return self.output_block(context, x);
        }
        let (q, k, v) = (split(q), split(k), split(v));
        let bias = bias.tensor.clone();
        let context = if x.device().is_autodiff() {
            // Training: explicit ops, so the probabilities can take dropout and burn derives the
            // backward pass. The scale goes on Q ([B, H, T, dh]) rather than on the scores.
            let scores = q.mul_scalar(scale).matmul(k.swap_dims(2, 3)) + bias;
            let probs = dropout(&self.attention_dropout, softmax(scores, 3));
            probs.matmul(v)
        } else {
            // Inference: the backend's fused attention (on flex, one pass per batch and head
            // with no [B, H, T, T] tensors allocated), with the padding bias broadcast over heads.
            attention(
                q,
                k,
                v,
                None,
                Some(bias),
                AttentionModuleOptions {
                    scale: Some(scale),
                    ..Default::default()
                },
            )
        };
        self.output_block(context.swap_dims(1, 2).reshape([b * t, d]), x)
    }

    /// The output projection of the context rows `[B·T, D]`, dropout, residual and LayerNorm.
    fn output_block(&self, context: Tensor<2>, x: Tensor<3>) -> Tensor<3> {
        let projected = lora::linear(&self.output, context, &self.adapter_dropout);
        let out = dropout(&self.dropout, projected).reshape(x.dims());
        self.norm.forward(out + x)
    }
}

impl BertLayer {
    fn forward(&self, x: Tensor<3>, bias: &AttentionBias) -> Tensor<3> {
        let x = self.attention.forward(x, bias);
        let [b, t, d] = x.dims();
        let drop = &self.adapter_dropout;
        let h = gelu(lora::linear(
            &self.intermediate,
            x.clone().reshape([b * t, d]),
            drop,
        ));
        let out = dropout(&self.dropout, lora::linear(&self.output, h, drop)).reshape([b, t, d]);
        self.norm.forward(out + x)
    }
}

impl BertModel {
    /// Sets the LoRA adapter input dropout of every layer projection (see [`crate::lora`]).
    pub fn set_adapter_dropout(&mut self, prob: f64) {
        for layer in &mut self.layers {
            layer.attention.adapter_dropout = DropoutConfig::new(prob).init();
            layer.adapter_dropout = DropoutConfig::new(prob).init();
        }
    }

    /// Last hidden states `[B, T, D]` of `input_ids` `[B, T]` under `attention_mask` `[B, T]`
    /// (1 real, 0 pad; left or right padding). Token types default to 0.
    ///
    /// Positions are `0..T` whatever the padding, as in HF, so `T` must not exceed
    /// `max_position_embeddings` and ids must be below `vocab_size` ([`BertEmbedder`] truncates
    /// accordingly). Padded positions get a large negative attention bias, so real tokens' states
    /// do not depend on them.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        token_type_ids: Option<Tensor<2, Int>>,
    ) -> Tensor<3> {
        let [b, t] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<1, Int>::arange(0..t as i64, &device)
            .reshape([1, t])
            .expand([b, t]);
        let types = token_type_ids.unwrap_or_else(|| Tensor::zeros([b, t], &device));
        let e = &self.embeddings;
        let x =
            e.word.forward(input_ids) + e.position.forward(positions) + e.token_type.forward(types);
        let mut x = dropout(&e.dropout, e.norm.forward(x));
        let bias = AttentionBias::new(attention_mask, !device.is_autodiff());
        for layer in &self.layers {
            x = layer.forward(x, &bias);
        }
        x
    }

    /// Loads a folder holding `config.json` and `*.safetensors`.
    pub fn load(folder: impl AsRef<Path>, device: &Device) -> Result<(Self, BertConfig)> {
        let folder = folder.as_ref();
        crate::paths::require_folder(folder, "a BERT model folder (config.json, *.safetensors)")?;
        let config = BertConfig::from_file(folder.join("config.json"))?;
        let weights = SafetensorsWeights::open(folder)?;
        let model = Self::from_source(&weights, &config, device)
            .with_context(|| format!("loading BERT weights from {}", folder.display()))?;
        Ok((model, config))
    }

    /// Builds the model from HF-named tensors (`embeddings.*`, `encoder.layer.{i}.*`, with or
    /// without a `bert.` prefix; LayerNorm `weight/bias` or the old `gamma/beta`), checking every
    /// shape against `config`.
    ///
    /// A missing tensor or a wrong shape is an error naming the tensor. So is a tensor under
    /// `embeddings.`/`encoder.` that the config does not use (a checkpoint with more layers, or
    /// another architecture), except the `position_ids` buffer of older checkpoints. Tensors
    /// outside the encoder (`pooler.*`, task heads such as `cls.*` or `classifier.*`) are
    /// ignored; [`BertModel::ignored_tensors`] lists them.
    pub fn from_source(
        source: &dyn WeightSource,
        config: &BertConfig,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let recorder = Recorder::new(source);
        let model = Self::build(&recorder, config, device)?;
        let prefix = hf_prefix(source);
        let unused: Vec<String> = source
            .names()
            .into_iter()
            .filter(|n| !recorder.used(n) && is_encoder_tensor(n, prefix))
            .collect();
        if !unused.is_empty() {
            const SHOWN: usize = 8;
            bail!(
                "the checkpoint holds {} encoder tensor(s) this BERT config does not use: {}{} \
                 (does config.json match the weights?)",
                unused.len(),
                unused[..unused.len().min(SHOWN)].join(", "),
                if unused.len() > SHOWN { ", …" } else { "" }
            );
        }
        Ok(model)
    }

    /// The tensors of `source` that [`BertModel::from_source`] does not read and does not
    /// reject: the pooler, task heads and `position_ids` buffers.
    pub fn ignored_tensors(source: &dyn WeightSource) -> Vec<String> {
        let prefix = hf_prefix(source);
        source
            .names()
            .into_iter()
            .filter(|n| !is_encoder_tensor(n, prefix) || n.ends_with("position_ids"))
            .collect()
    }

    /// The name table: HF tensor names → modules, with shape checks.
    fn build(source: &dyn WeightSource, config: &BertConfig, device: &Device) -> Result<Self> {
        let prefix = hf_prefix(source);
        let d = config.hidden_size;
        let ff = config.intermediate_size;
        let eps = config.layer_norm_eps;
        let name = |s: &str| format!("{prefix}{s}");
        let norm = |p: &str| -> Result<LayerNorm> {
            let w = name(&format!("{p}.weight"));
            let g = name(&format!("{p}.gamma"));
            let b = name(&format!("{p}.bias"));
            let beta = name(&format!("{p}.beta"));
            let weight = first_present(source, &[&w, &g]);
            let bias = first_present(source, &[&b, &beta]);
            load_layer_norm(source, weight, Some(bias), d, eps, device)
        };
        let linear = |p: &str, d_in: usize, d_out: usize| -> Result<Linear> {
            load_linear(
                source,
                &name(&format!("{p}.weight")),
                Some(&name(&format!("{p}.bias"))),
                d_in,
                d_out,
                device,
            )
        };
        let dropout = |p: f64| DropoutConfig::new(p).init();

        let embeddings = BertEmbeddings {
            word: load_embedding(
                source,
                &name("embeddings.word_embeddings.weight"),
                config.vocab_size,
                d,
                device,
            )?,
            position: load_embedding(
                source,
                &name("embeddings.position_embeddings.weight"),
                config.max_position_embeddings,
                d,
                device,
            )?,
            token_type: load_embedding(
                source,
                &name("embeddings.token_type_embeddings.weight"),
                config.type_vocab_size,
                d,
                device,
            )?,
            norm: norm("embeddings.LayerNorm")?,
            dropout: dropout(config.hidden_dropout_prob),
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = format!("encoder.layer.{i}");
                Ok(BertLayer {
                    attention: BertAttention {
                        query: linear(&format!("{l}.attention.self.query"), d, d)?,
                        key: linear(&format!("{l}.attention.self.key"), d, d)?,
                        value: linear(&format!("{l}.attention.self.value"), d, d)?,
                        output: linear(&format!("{l}.attention.output.dense"), d, d)?,
                        norm: norm(&format!("{l}.attention.output.LayerNorm"))?,
                        attention_dropout: dropout(config.attention_probs_dropout_prob),
                        dropout: dropout(config.hidden_dropout_prob),
                        adapter_dropout: dropout(0.0),
                        heads: config.num_attention_heads,
                    },
                    intermediate: linear(&format!("{l}.intermediate.dense"), d, ff)?,
                    output: linear(&format!("{l}.output.dense"), ff, d)?,
                    norm: norm(&format!("{l}.output.LayerNorm"))?,
                    dropout: dropout(config.hidden_dropout_prob),
                    adapter_dropout: dropout(0.0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if source.contains(&name(&format!(
            "encoder.layer.{}.output.dense.weight",
            config.num_hidden_layers
        ))) {
            bail!(
                "the checkpoint has more than num_hidden_layers = {} layers",
                config.num_hidden_layers
            );
        }
        Ok(Self {
            embeddings,
            layers,
            hidden_size: d,
        })
    }
}

/// `"bert."` for checkpoints saved from a task model (`BertForSequenceClassification`, …), else
/// `""`.
fn hf_prefix(source: &dyn WeightSource) -> &'static str {
    if source.contains("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    }
}

/// Whether `name` belongs to the encoder proper (and so must be used), `position_ids` buffers
/// excepted.
fn is_encoder_tensor(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|rest| {
        (rest.starts_with("embeddings.") || rest.starts_with("encoder."))
            && !rest.ends_with("position_ids")
    })
}

/// A [`WeightSource`] that remembers which tensors were read.
struct Recorder<'a> {
    inner: &'a dyn WeightSource,
    read: RefCell<BTreeSet<String>>,
}

impl<'a> Recorder<'a> {
    fn new(inner: &'a dyn WeightSource) -> Self {
        Self {
            inner,
            read: RefCell::new(BTreeSet::new()),
        }
    }

    fn used(&self, name: &str) -> bool {
        self.read.borrow().contains(name)
    }
}

impl WeightSource for Recorder<'_> {
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        self.read.borrow_mut().insert(name.to_string());
        self.inner.tensor(name)
    }
}

/// The HF name of a [`BertModel`] parameter path (`None` for paths that are not parameters of
/// the HF layout). The inverse of the names [`BertModel::from_source`] reads.
pub fn hf_name(path: &str) -> Option<String> {
    let norm = |p: &str, leaf: &str| {
        let leaf = match leaf {
            "gamma" => "weight",
            "beta" => "bias",
            _ => return None,
        };
        Some(format!("{p}.LayerNorm.{leaf}"))
    };
    if let Some(rest) = path.strip_prefix("embeddings.") {
        let (module, leaf) = rest.split_once('.')?;
        return match module {
            "word" => Some(format!("embeddings.word_embeddings.{leaf}")),
            "position" => Some(format!("embeddings.position_embeddings.{leaf}")),
            "token_type" => Some(format!("embeddings.token_type_embeddings.{leaf}")),
            "norm" => norm("embeddings", leaf),
            _ => None,
        };
    }
    let rest = path.strip_prefix("layers.")?;
    let (i, rest) = rest.split_once('.')?;
    let l = format!("encoder.layer.{i}");
    let (module, leaf) = rest.rsplit_once('.')?;
    match module {
        "attention.query" => Some(format!("{l}.attention.self.query.{leaf}")),
        "attention.key" => Some(format!("{l}.attention.self.key.{leaf}")),
        "attention.value" => Some(format!("{l}.attention.self.value.{leaf}")),
        "attention.output" => Some(format!("{l}.attention.output.dense.{leaf}")),
        "attention.norm" => norm(&format!("{l}.attention.output"), leaf),
        "intermediate" => Some(format!("{l}.intermediate.dense.{leaf}")),
        "output" => Some(format!("{l}.output.dense.{leaf}")),
        "norm" => norm(&format!("{l}.output"), leaf),
        _ => None,
    }
}

/// Token ids and pooled vectors of a batch of texts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Embeddings {
    /// Each text's token ids (special tokens included, no padding).
    pub ids: Vec<Vec<u32>>,
    /// Each text's pooled vector (`hidden_size` values).
    pub vectors: Vec<Vec<f32>>,
}

/// A BERT model with its tokenizer: texts in, pooled vectors out.
#[derive(Debug)]
pub struct BertEmbedder {
    /// The encoder.
    pub model: BertModel,
    /// Its config.
    pub config: BertConfig,
    /// The folder's tokenizer, with its own padding and truncation switched off.
    pub tokenizer: TextTokenizer,
    /// The device the model lives on.
    pub device: Device,
}

impl BertEmbedder {
    /// Loads `config.json`, `*.safetensors` and `tokenizer.json` from a folder. The tokenizer's
    /// own padding and truncation (all-MiniLM-L6-v2 ships both at 128) are switched off.
    pub fn load(folder: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let folder = folder.as_ref();
        crate::paths::require_folder(
            folder,
            "a BERT model folder (config.json, *.safetensors, tokenizer.json)",
        )?;
        let (model, config) = BertModel::load(folder, device)?;
        let tokenizer = TextTokenizer::from_file(folder.join("tokenizer.json"))?
            .try_with_pad_id(config.pad_token_id, "config.json pad_token_id")?;
        tokenizer
            .check_fits(
                config.vocab_size,
                "the word embedding (config.json vocab_size)",
            )
            .with_context(|| format!("{}", folder.display()))?;
        Ok(Self {
            model,
            config,
            tokenizer,
            device: device.clone(),
        })
    }

    /// Encoding options: right padding, right truncation at the model's position limit.
    pub fn encode_options(&self, max_len: Option<usize>) -> EncodeOptions {
        EncodeOptions {
            max_len: Some(
                max_len
                    .unwrap_or(self.config.max_position_embeddings)
                    .min(self.config.max_position_embeddings),
            ),
            truncation: TruncationSide::Right,
            padding: PaddingSide::Right,
            add_special_tokens: true,
        }
    }

    /// Tokenizes `texts`, runs them as one right-padded batch and pools.
    pub fn embed(
        &self,
        texts: &[&str],
        pooling: Pooling,
        max_len: Option<usize>,
    ) -> Result<Embeddings> {
        let batch = self
            .tokenizer
            .encode_batch(texts, &self.encode_options(max_len))?;
        let mask = batch.attention_tensor(&self.device);
        let hidden = self
            .model
            .forward(batch.ids_tensor(&self.device), mask.clone(), None);
        let pooled = pooling.pool(hidden, mask);
        let d = self.config.hidden_size;
        let flat: Vec<f32> = pooled
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading pooled vectors: {e:?}"))?;
        Ok(Embeddings {
            ids: (0..batch.batch_size)
                .map(|i| batch.row_ids(i).to_vec())
                .collect(),
            vectors: flat.chunks(d).map(<[f32]>::to_vec).collect(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::models::test_support::MemoryWeights;
    use burn::tensor::TensorData;

    pub fn tiny_model(device: &Device) -> (BertModel, BertConfig) {
        let c = tiny_config();
        (
            BertModel::from_source(&tiny_weights(&c), &c, device).unwrap(),
            c,
        )
    }

    pub fn tiny_config() -> BertConfig {
        BertConfig {
            vocab_size: 20,
            hidden_size: 8,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 16,
            hidden_act: "gelu".into(),
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            position_embedding_type: "absolute".into(),
        }
    }

    pub fn tiny_weights(c: &BertConfig) -> MemoryWeights {
        let mut w = MemoryWeights::seeded(3);
        let d = c.hidden_size;
        w.random("embeddings.word_embeddings.weight", &[c.vocab_size, d], 1.0);
        w.random(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, d],
            1.0,
        );
        w.random(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, d],
            1.0,
        );
        let ln = |w: &mut MemoryWeights, p: &str| {
            w.random(&format!("{p}.weight"), &[d], 1.0);
            w.random(&format!("{p}.bias"), &[d], 0.1);
        };
        ln(&mut w, "embeddings.LayerNorm");
        for i in 0..c.num_hidden_layers {
            let l = format!("encoder.layer.{i}");
            for (p, o, inp) in [
                ("attention.self.query", d, d),
                ("attention.self.key", d, d),
                ("attention.self.value", d, d),
                ("attention.output.dense", d, d),
                ("intermediate.dense", c.intermediate_size, d),
                ("output.dense", d, c.intermediate_size),
            ] {
                w.random(&format!("{l}.{p}.weight"), &[o, inp], 0.5);
                w.random(&format!("{l}.{p}.bias"), &[o], 0.1);
            }
            ln(&mut w, &format!("{l}.attention.output.LayerNorm"));
            ln(&mut w, &format!("{l}.output.LayerNorm"));
        }
        w
    }

    fn ids(rows: &[&[i64]], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let t = rows.iter().map(|r| r.len()).max().unwrap();
        let mut flat = Vec::new();
        let mut mask = Vec::new();
        for r in rows {
            flat.extend_from_slice(r);
            flat.extend(std::iter::repeat_n(0, t - r.len()));
            mask.extend(std::iter::repeat_n(1i64, r.len()));
            mask.extend(std::iter::repeat_n(0i64, t - r.len()));
        }
        (
            Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device),
            Tensor::from_data(TensorData::new(mask, [rows.len(), t]), device),
        )
    }

    fn pooled(model: &BertModel, rows: &[&[i64]], device: &Device) -> Vec<f32> {
        let (i, m) = ids(rows, device);
        let h = model.forward(i, m.clone(), None);
        Pooling::Mean
            .pool(h, m)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn padding_does_not_change_a_text_s_embedding() {
        let device = test_device();
        let c = tiny_config();
        let model = BertModel::from_source(&tiny_weights(&c), &c, &device).unwrap();
        let alone = pooled(&model, &[&[1, 5, 6, 2]], &device);
        let batched = pooled(&model, &[&[1, 5, 6, 2], &[1, 7, 8, 9, 10, 11, 2]], &device);
        for (a, b) in alone.iter().zip(&batched[..8]) {
            assert!((a - b).abs() < 1e-5, "{alone:?} vs {batched:?}");
        }
        // A different pad id under the mask changes nothing.
        let (mut i, m) = ids(&[&[1, 5, 6, 2], &[1, 7, 8, 9, 10, 11, 2]], &device);
        let base = model
            .forward(i.clone(), m.clone(), None)
            .narrow(0, 0, 1)
            .narrow(1, 0, 4);
        i = i.slice_assign(
            [0..1, 4..7],
            Tensor::from_data(TensorData::new(vec![13i64, 14, 15], [1, 3]), &device),
        );
        let changed = model.forward(i, m, None).narrow(0, 0, 1).narrow(1, 0, 4);
        let diff: f32 = (base - changed).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "masked tokens leaked into real ones: {diff}");
    }

    #[test]
    fn config_ids_and_sizes_are_bounded() {
        assert!(tiny_config().validate().is_ok());
        let err = |f: &dyn Fn(&mut BertConfig)| {
            let mut c = tiny_config();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert_eq!(
            err(&|c| c.pad_token_id = 20),
            "pad_token_id 20 is outside the vocabulary (vocab_size 20)"
        );
        assert_eq!(
            err(&|c| c.max_position_embeddings = 0),
            "max_position_embeddings must be positive"
        );
        assert_eq!(
            err(&|c| c.type_vocab_size = 0),
            "type_vocab_size must be positive"
        );
        assert_eq!(
            err(&|c| c.layer_norm_eps = f64::NAN),
            "layer_norm_eps must be a positive number, got NaN"
        );
    }

    #[test]
    fn dropout_acts_only_on_an_autodiff_device() {
        let c = tiny_config();
        let run = |device: &Device| {
            let model = BertModel::from_source(&tiny_weights(&c), &c, device).unwrap();
            let (i, m) = ids(&[&[1, 5, 6, 2]], device);
            let a = model.forward(i.clone(), m.clone(), None);
            let b = model.forward(i, m, None);
            (a - b).abs().max().into_scalar::<f32>()
        };
        assert_eq!(run(&test_device()), 0.0, "dropout at inference");
        assert!(
            run(&test_device().autodiff()) > 0.0,
            "no dropout in training"
        );
    }

    #[test]
    fn prefixed_and_old_layer_norm_names_load_and_extras_are_reported() {
        let device = test_device();
        let c = tiny_config();
        let (i, m) = ids(&[&[1, 5, 6, 2], &[1, 7, 2]], &device);
        let reference = BertModel::from_source(&tiny_weights(&c), &c, &device)
            .unwrap()
            .forward(i.clone(), m.clone(), None);

        // `bert.` prefix (task-model checkpoints), gamma/beta LayerNorms, a pooler, a head and
        // a position_ids buffer: the same model.
        let mut w = MemoryWeights::seeded(5);
        for (name, t) in tiny_weights(&c).tensors {
            let name = name.replace("LayerNorm.weight", "LayerNorm.gamma");
            let name = name.replace("LayerNorm.bias", "LayerNorm.beta");
            w.tensors.insert(format!("bert.{name}"), t);
        }
        w.random("bert.pooler.dense.weight", &[8, 8], 0.5);
        w.random("bert.embeddings.position_ids", &[1, 16], 1.0);
        w.random("classifier.weight", &[2, 8], 0.5);
        let model = BertModel::from_source(&w, &c, &device).unwrap();
        let diff: f32 = (model.forward(i, m, None) - reference)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");
        assert_eq!(
            BertModel::ignored_tensors(&w),
            [
                "bert.embeddings.position_ids",
                "bert.pooler.dense.weight",
                "classifier.weight"
            ]
        );

        // An encoder tensor the config does not use is an error naming it.
        let mut w = tiny_weights(&c);
        w.random("encoder.layer.0.attention.self.rel_bias", &[8], 0.5);
        let err = BertModel::from_source(&w, &c, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1 encoder tensor(s) this BERT config does not use")
                && err.contains("encoder.layer.0.attention.self.rel_bias"),
            "{err}"
        );
        // So is a checkpoint deeper than the config.
        let mut shallow = c.clone();
        shallow.num_hidden_layers = 1;
        let err = BertModel::from_source(&tiny_weights(&c), &shallow, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than num_hidden_layers = 1"), "{err}");
    }

    #[test]
    fn wrong_shapes_and_missing_tensors_name_the_tensor() {
        let device = test_device();
        let c = tiny_config();
        let mut w = tiny_weights(&c);
        w.random("encoder.layer.1.attention.self.key.weight", &[8, 7], 0.5);
        let err = BertModel::from_source(&w, &c, &device)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "tensor encoder.layer.1.attention.self.key.weight has shape [8, 7], the config implies [8, 8]"
        );
        let mut w = tiny_weights(&c);
        w.tensors.remove("encoder.layer.0.output.LayerNorm.bias");
        let err = BertModel::from_source(&w, &c, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("encoder.layer.0.output.LayerNorm.bias"),
            "{err}"
        );
        let mut bad = c.clone();
        bad.hidden_act = "relu".into();
        assert!(BertModel::from_source(&tiny_weights(&c), &bad, &device).is_err());
    }
}
