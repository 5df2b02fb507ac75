//! Llama-family decoder (SmolLM2, and HF Llama/Qwen2/Mistral-style folders): RMSNorm, rotary
//! position embeddings (HF "rotate half" layout, θ and optional linear/llama3 scaling from the
//! config, cos/sin tables precomputed once), grouped-query attention, SiLU-gated MLP, tied or
//! untied LM head, causal + padding masks (left or right padding) and a KV cache.
//!
//! Weights are read by HF names (`model.layers.{i}.self_attn.q_proj.weight`, …) from any
//! [`WeightSource`]; GGUF files are adapted to those names (and to HF's q/k row layout) in
//! [`super::gguf_weights`], so one RoPE implementation serves both.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, Linear};
use burn::tensor::activation::silu;
use burn::tensor::module::{attention, attention_fallback};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::gguf_weights::GgufWeights;
use super::safetensors::SafetensorsWeights;
use super::weights::WeightSource;
use super::{host_tensor, load_embedding, load_linear, param};
use crate::gguf::GgufFile;
use crate::gguf::tokenizer::{special_ids, tokenizer_from_gguf};
use crate::lora;
use crate::policy::CausalPolicy;
use crate::sampling::IncrementalDecoder;
use crate::tokenize::TextTokenizer;

/// RoPE frequency scaling (HF `rope_scaling`) this implementation supports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's piecewise scaling: low frequencies divided by `factor`, high ones kept,
    /// a smooth blend in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// A Llama-family config. Fields are public so callers can override them after reading a file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Rows of the embedding matrix (and of the LM head).
    pub vocab_size: usize,
    /// Model width `D`.
    pub hidden_size: usize,
    /// Width of the SiLU-gated MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// Width of one head (`hidden_size / num_attention_heads` unless the config says otherwise).
    pub head_dim: usize,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// Optional RoPE frequency scaling.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Context length. RoPE tables are precomputed for
    /// `min(max_position_embeddings, MAX_ROPE_TABLE_ROWS)` positions; longer inputs still work
    /// (their angles are computed on the fly).
    pub max_position_embeddings: usize,
    /// The LM head is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
}

/// The raw HF `config.json` fields, before validation.
#[derive(Deserialize)]
struct HfLlamaConfig {
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    sliding_window: Option<serde_json::Value>,
    #[serde(default)]
    mlp_bias: Option<bool>,
}

/// Finite and strictly positive.
fn positive(x: f64) -> bool {
    x > 0.0 && x.is_finite()
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_positions() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

/// Parses HF's `rope_scaling` object: `null`/`"default"` → none, `linear`, `llama3`; anything
/// else is an error.
fn parse_rope_scaling(v: &serde_json::Value) -> Result<Option<RopeScaling>> {
    if v.is_null() {
        return Ok(None);
    }
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|k| k.as_str())
        .with_context(|| format!("rope_scaling {v} has no rope_type"))?;
    let num = |k: &str| -> Result<f64> {
        v.get(k)
            .and_then(|x| x.as_f64())
            .with_context(|| format!("rope_scaling {v}: {kind} scaling needs a number {k:?}"))
    };
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        }),
        other => bail!(
            "rope_scaling type {other:?} is not supported (only default, linear and llama3): {v}"
        ),
    })
}

impl LlamaConfig {
    /// Reads an HF `config.json` (model_type llama, qwen2 or mistral). Options this
    /// implementation does not support (other activations, unknown RoPE scaling, a sliding
    /// window shorter than the context, MLP biases) are errors, not
    /// silently ignored.
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_hf_json(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parses the text of an HF `config.json`; see [`LlamaConfig::from_hf_file`].
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: HfLlamaConfig =
            serde_json::from_str(text).context("not a Llama-family config.json")?;
        let kind = raw.model_type.clone().unwrap_or_else(|| "llama".into());
        if !["llama", "qwen2", "mistral"].contains(&kind.as_str()) {
            bail!(
                "model_type {kind:?} is not a supported Llama-family model (llama, qwen2, mistral)"
            );
        }
        if raw.hidden_act != "silu" {
            bail!(
                "hidden_act {:?} is not supported (only silu)",
                raw.hidden_act
            );
        }
        let rope_scaling = match &raw.rope_scaling {
            Some(v) => parse_rope_scaling(v)?,
            None => None,
        };
        let window = raw.sliding_window.as_ref().and_then(|v| v.as_u64());
        let window_on = match kind.as_str() {
            "qwen2" => raw.use_sliding_window == Some(true),
            _ => raw.use_sliding_window != Some(false),
        };
        if let Some(w) = window.filter(|_| window_on)
            && (w as usize) < raw.max_position_embeddings
        {
            bail!(
                "sliding-window attention (window {w} < max_position_embeddings {}) is not supported",
                raw.max_position_embeddings
            );
        }
        if raw.mlp_bias == Some(true) {
            bail!("mlp_bias is not supported");
        }
        let config = Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            attention_bias: raw.attention_bias.unwrap_or(kind == "qwen2"),
        };
        config.validate()?;
        Ok(config)
    }

    /// Builds the config from GGUF `llama.*` metadata (`embedding_length`, `block_count`,
    /// `attention.head_count[_kv]`, `feed_forward_length`, `rope.freq_base`,
    /// `attention.layer_norm_rms_epsilon`, `context_length`; the vocabulary size from
    /// `tokenizer.ggml.tokens`). `tie_word_embeddings`: the file has no `output.weight`.
    pub fn from_gguf(file: &GgufFile, tie_word_embeddings: bool) -> Result<Self> {
        let arch = file.get_str("general.architecture")?;
        if arch != "llama" {
            bail!("GGUF architecture {arch:?} is not supported (only \"llama\")");
        }
        if let Ok(kind) = file.get_str("llama.rope.scaling.type")
            && kind != "none"
        {
            bail!("GGUF rope scaling {kind:?} (llama.rope.scaling.type) is not supported");
        }
        let u = |k: &str| -> Result<usize> { Ok(file.get_u64(k)? as usize) };
        let opt = |k: &str| -> Result<Option<usize>> {
            match file.metadata().contains_key(k) {
                true => u(k).map(Some),
                false => Ok(None),
            }
        };
        let heads = u("llama.attention.head_count")?;
        let hidden = u("llama.embedding_length")?;
        let vocab = match file.get_array("tokenizer.ggml.tokens") {
            Ok(tokens) => tokens.len(),
            Err(_) => u("llama.vocab_size")?,
        };
        let head_dim = opt("llama.attention.key_length")?.unwrap_or(hidden / heads.max(1));
        if let Some(v) = opt("llama.attention.value_length")?
            && v != head_dim
        {
            bail!("GGUF value_length {v} differs from key_length {head_dim}: not supported");
        }
        if let Some(r) = opt("llama.rope.dimension_count")?
            && r != head_dim
        {
            bail!(
                "GGUF partial rotary embeddings (rope.dimension_count {r} of head dim {head_dim}) are not supported"
            );
        }
        let config = Self {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: u("llama.feed_forward_length")?,
            num_hidden_layers: u("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: opt("llama.attention.head_count_kv")?.unwrap_or(heads),
            head_dim,
            rms_norm_eps: file.get_f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: match file.metadata().contains_key("llama.rope.freq_base") {
                true => file.get_f64("llama.rope.freq_base")?,
                false => 10000.0,
            },
            rope_scaling: None,
            max_position_embeddings: opt("llama.context_length")?.unwrap_or(2048),
            tie_word_embeddings,
            attention_bias: false,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the head arithmetic and the RoPE parameters.
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "num_attention_heads {} must be a positive multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            bail!("head_dim {} must be even and positive", self.head_dim);
        }
        if self.hidden_size == 0 || self.vocab_size == 0 || self.intermediate_size == 0 {
            bail!("hidden_size, vocab_size and intermediate_size must be positive");
        }
        if !positive(self.rope_theta) {
            bail!("rope_theta {} must be positive", self.rope_theta);
        }
        if !(positive(self.rms_norm_eps) || self.rms_norm_eps == 0.0) {
            bail!("rms_norm_eps {} must be non-negative", self.rms_norm_eps);
        }
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) if !positive(*factor) => {
                bail!("linear rope_scaling factor {factor} must be positive")
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) if !(positive(*factor)
                && positive(*low_freq_factor)
                && positive(high_freq_factor - low_freq_factor)
                && *original_max_position_embeddings > 0) =>
            {
                bail!("llama3 rope_scaling parameters are inconsistent: {self:?}")
            }
            _ => {}
        }
        Ok(())
    }

    /// The RoPE inverse frequencies `θ^(−2i/head_dim)`, `i < head_dim/2`, after scaling (in f64).
    pub fn inv_frequencies(&self) -> Vec<f64> {
        let d = self.head_dim as f64;
        let base = (0..self.head_dim / 2).map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d));
        match &self.rope_scaling {
            None => base.collect(),
            Some(RopeScaling::Linear { factor }) => base.map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
            }
        }
    }
}

/// RoPE tables are precomputed for at most this many positions; longer inputs compute their
/// angles on the fly (same values, in f32).
pub const MAX_ROPE_TABLE_ROWS: usize = 16384;

/// Root-mean-square LayerNorm: `x / sqrt(mean(x²) + ε) · w`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Per-channel gain `[D]`.
    pub weight: Param<Tensor<1>>,
    /// ε added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// Normalizes the last dimension of `x` `[B, T, D]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let d = x.dims()[2];
        let inv_rms = x
            .clone()
            .square()
            .mean_dim(2)
            .add_scalar(self.eps)
            .sqrt()
            .recip();
        x * inv_rms * self.weight.val().reshape([1, 1, d])
    }
}

/// Precomputed rotary-embedding tables (constants, not parameters: optimizers and checkpoints
/// never see them).
#[derive(Module, Debug)]
pub struct RotaryTables {
    /// `cos(p·f_i)` for positions `p < rows`, the frequencies repeated over both halves of the
    /// head: `[rows, head_dim]`.
    pub cos: Tensor<2>,
    /// `sin(p·f_i)` with the first half negated (rotate-half's sign folded in):
    /// `[rows, head_dim]`.
    pub sin: Tensor<2>,
    /// Inverse frequencies `[head_dim / 2]`, for positions beyond the tables.
    pub inv_freq: Tensor<1>,
}

impl RotaryTables {
    /// Tables for `min(max_position_embeddings, MAX_ROPE_TABLE_ROWS)` positions (computed in
    /// f64, stored as f32).
    pub fn new(config: &LlamaConfig, device: &Device) -> Self {
        let inv = config.inv_frequencies();
        let half = inv.len();
        let dh = 2 * half;
        let rows = config.max_position_embeddings.clamp(1, MAX_ROPE_TABLE_ROWS);
        let mut cos = Vec::with_capacity(rows * dh);
        let mut sin = Vec::with_capacity(rows * dh);
        for p in 0..rows {
            for sign in [-1.0, 1.0] {
                for f in &inv {
                    let a = p as f64 * f;
                    cos.push(a.cos() as f32);
                    sin.push((sign * a.sin()) as f32);
                }
            }
        }
        let inv: Vec<f32> = inv.iter().map(|&f| f as f32).collect();
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [rows, dh]), device),
            sin: Tensor::from_data(TensorData::new(sin, [rows, dh]), device),
            inv_freq: Tensor::from_data(TensorData::new(inv, [half]), device),
        }
    }

    /// cos and signed sin `[B, 1, T, head_dim]` of `positions` `[B, T]`, all of which are
    /// below `bound` (known without reading the tensor).
    fn lookup(&self, positions: Tensor<2, Int>, bound: usize) -> (Tensor<4>, Tensor<4>) {
        let [b, t] = positions.dims();
        let [rows, dh] = self.cos.dims();
        if bound <= rows {
            let idx = positions.reshape([b * t]);
            let cos = self.cos.clone().select(0, idx.clone());
            let sin = self.sin.clone().select(0, idx);
            (cos.reshape([b, 1, t, dh]), sin.reshape([b, 1, t, dh]))
        } else {
            let half = dh / 2;
            let angles =
                positions.float().reshape([b, t, 1]) * self.inv_freq.clone().reshape([1, 1, half]);
            let (cos, sin) = (angles.clone().cos(), angles.sin());
            (
                Tensor::cat(vec![cos.clone(), cos], 2).reshape([b, 1, t, dh]),
                Tensor::cat(vec![sin.clone().neg(), sin], 2).reshape([b, 1, t, dh]),
            )
        }
    }
}

/// HF's `x·cos + rotate_half(x)·sin` with the sign of `rotate_half` folded into `sin`.
fn apply_rope(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let half = x.dims()[3] / 2;
    let swapped = Tensor::cat(
        vec![
            x.clone().narrow(3, half, half),
            x.clone().narrow(3, 0, half),
        ],
        3,
    );
    x * cos + swapped * sin
}

/// Grouped-query self-attention: `heads` query heads share `kv_heads` key/value heads
/// (query head `i` reads key/value head `i / (heads / kv_heads)`, as HF's `repeat_kv`).
#[derive(Module, Debug)]
pub struct LlamaAttention {
    /// `D → heads·head_dim`.
    pub q_proj: Linear,
    /// `D → kv_heads·head_dim`.
    pub k_proj: Linear,
    /// `D → kv_heads·head_dim`.
    pub v_proj: Linear,
    /// `heads·head_dim → D`.
    pub o_proj: Linear,
    /// LoRA adapter input dropout for the projections (p = 0 unless set; see [`crate::lora`]).
    pub adapter_dropout: Dropout,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// SiLU-gated MLP: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    /// `D → intermediate`.
    pub gate_proj: Linear,
    /// `D → intermediate`.
    pub up_proj: Linear,
    /// `intermediate → D`.
    pub down_proj: Linear,
    /// LoRA adapter input dropout for the projections (p = 0 unless set; see [`crate::lora`]).
    pub adapter_dropout: Dropout,
}

impl LlamaMlp {
    /// `[B, T, D] → [B, T, D]`, the projections applied to the `B·T` rows as one GEMM each.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let rows = x.reshape([b * t, d]);
        let drop = &self.adapter_dropout;
        let gated = silu(lora::linear(&self.gate_proj, rows.clone(), drop))
            * lora::linear(&self.up_proj, rows, drop);
        lora::linear(&self.down_proj, gated, drop).reshape([b, t, d])
    }
}

/// One pre-norm decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct LlamaLayer {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Self-attention.
    pub self_attn: LlamaAttention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// Feed-forward.
    pub mlp: LlamaMlp,
}

/// The Llama-family decoder.
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embeddings `[V, D]`.
    pub embed_tokens: Embedding,
    /// Decoder layers.
    pub layers: Vec<LlamaLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
    /// `None`: logits use the (tied) embedding matrix.
    pub lm_head: Option<Linear>,
    /// Precomputed RoPE cos/sin tables.
    pub rope: RotaryTables,
}

/// Cached keys and values of every layer, `[B, kv_heads, T_past, head_dim]` each (keys after
/// RoPE). Start from `KvCache::default()` and pass it to [`LlamaModel::forward_with_cache`].
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// Keys, one tensor per layer.
    pub keys: Vec<Tensor<4>>,
    /// Values, one tensor per layer.
    pub values: Vec<Tensor<4>>,
}

impl KvCache {
    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.keys.first().map_or(0, |k| k.dims()[2])
    }

    /// Nothing cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LlamaAttention {
    /// `x` `[B, T, D]`; `rope` cos/sin `[B, 1, T, head_dim]`; `mask` `[B, 1, rep·T, T_total]`
    /// (true = hidden, rows repeated for the `rep = heads / kv_heads` query heads of a group);
    /// `past` the cached keys and values. Returns the output and the full keys and values.
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &(Tensor<4>, Tensor<4>),
        mask: Tensor<4, Bool>,
        past: Option<(Tensor<4>, Tensor<4>)>,
    ) -> (Tensor<3>, Tensor<4>, Tensor<4>) {
        let [b, t, d] = x.dims();
        let (h, kvh, dh) = (self.heads, self.kv_heads, self.head_dim);
        let split = |y: Tensor<2>, n: usize| y.reshape([b, t, n, dh]).swap_dims(1, 2);
        let (cos, sin) = rope.clone();
        // Projections on the [B·T, D] rows: one GEMM each instead of B batched ones.
        let rows = x.reshape([b * t, d]);
        let drop = &self.adapter_dropout;
        let q = apply_rope(
            split(lora::linear(&self.q_proj, rows.clone(), drop), h),
            cos.clone(),
            sin.clone(),
        );
        let k = apply_rope(
            split(lora::linear(&self.k_proj, rows.clone(), drop), kvh),
            cos,
            sin,
        );
        let v = split(lora::linear(&self.v_proj, rows, drop), kvh);
        let (k, v) = match past {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        // The query heads of one group become extra query rows of its key/value head: no copy
        // of the keys and values.
        let q = q.reshape([b, kvh, (h / kvh) * t, dh]);
        // burn-tch 0.22.1 hands the bool mask to torch's `scaled_dot_product_attention`, where
        // `true` means "attend": the opposite of burn's contract (`true` = hidden), so on LibTorch
        // every visible key would be hidden and every hidden one seen. There, take burn's
        // reference implementation (same contract; a fully hidden row gives 0, as on flex).
        let attend = if crate::device::is_libtorch(&q.device()) {
            attention_fallback
        } else {
            attention
        };
        let context = attend(
            q,
            k.clone(),
            v.clone(),
            Some(mask),
            None,
            AttentionModuleOptions::default(),
        )
        .reshape([b, h, t, dh])
        .swap_dims(1, 2)
        .reshape([b * t, h * dh]);
        let out = lora::linear(&self.o_proj, context, &self.adapter_dropout);
        let d_out = out.dims()[1];
        (out.reshape([b, t, d_out]), k, v)
    }
}

impl LlamaModel {
    /// Sets the LoRA adapter input dropout of every layer projection (see [`crate::lora`]).
    pub fn set_adapter_dropout(&mut self, prob: f64) {
        for layer in &mut self.layers {
            layer.self_attn.adapter_dropout = DropoutConfig::new(prob).init();
            layer.mlp.adapter_dropout = DropoutConfig::new(prob).init();
        }
    }

    /// Last hidden states (after the final norm) `[B, T, D]` of a padded batch `input_ids`
    /// `[B, T]` with `attention_mask` `[B, T]` (1 real, 0 pad), no cache: the input of reward
    /// and value heads. Left and right padding both work: a token's position is the number of
    /// real tokens before it, and pad keys are hidden.
    ///
    /// # Panics
    /// Like burn's tensor ops, when the two shapes differ; [`CausalPolicy::hidden_states`]
    /// (`crate::policy`) checks them and returns an error instead.
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Tensor<3> {
        self.decode(input_ids, attention_mask, None)
    }

    /// [`LlamaModel::forward_hidden`] of the new tokens `input_ids` `[B, T]` (T ≥ 1) after the
    /// positions in `cache`, whose keys and values are extended with the new ones.
    /// `attention_mask` `[B, cached + T]` covers every position so far. A mask of another shape,
    /// or a cache of another model or batch size, is an error (the cache is left unchanged).
    pub fn forward_hidden_with_cache(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>> {
        self.check_inputs(&input_ids, &attention_mask, cache)?;
        Ok(self.decode(input_ids, attention_mask, Some(cache)))
    }

    /// Checks what [`LlamaModel::decode`] relies on: at least one new token, a mask
    /// `[B, cached + T]`, and a cache that is empty or holds `[B, kv_heads, cached, head_dim]`
    /// keys and values for every layer.
    pub(crate) fn check_inputs(
        &self,
        input_ids: &Tensor<2, Int>,
        attention_mask: &Tensor<2, Int>,
        cache: &KvCache,
    ) -> Result<()> {
        let [b, t] = input_ids.dims();
        if t == 0 {
            bail!("the Llama decoder needs at least one new token per row, got input ids [{b}, 0]");
        }
        let past = cache.len();
        let [mask_b, total] = attention_mask.dims();
        if (mask_b, total) != (b, past + t) {
            bail!(
                "attention mask is [{mask_b}, {total}], expected [{b}, {}] (batch, {past} cached + {t} new positions)",
                past + t
            );
        }
        if cache.keys.is_empty() && cache.values.is_empty() {
            return Ok(());
        }
        let layers = self.layers.len();
        if cache.keys.len() != layers || cache.values.len() != layers {
            bail!(
                "the KV cache holds {} key and {} value tensors, this model has {layers} layers (a cache of another model)",
                cache.keys.len(),
                cache.values.len()
            );
        }
        for (i, (layer, (k, v))) in self
            .layers
            .iter()
            .zip(cache.keys.iter().zip(&cache.values))
            .enumerate()
        {
            let a = &layer.self_attn;
            let expected = [b, a.kv_heads, past, a.head_dim];
            if k.dims() != expected || v.dims() != expected {
                bail!(
                    "KV cache of layer {i}: keys {:?}, values {:?}, expected {expected:?} (batch {b}, {} kv heads, {past} positions, head dim {}): a cache of another model or batch size",
                    k.dims(),
                    v.dims(),
                    a.kv_heads,
                    a.head_dim
                );
            }
        }
        Ok(())
    }

    /// The decoder stack; the shapes are checked by the callers (see
    /// [`LlamaModel::check_inputs`]).
    fn decode(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, t] = input_ids.dims();
        let device = input_ids.device();
        let past = cache.as_ref().map_or(0, |c| c.len());
        let total = attention_mask.dims()[1];

        // Position of each new token = number of real tokens before it.
        let positions = (attention_mask.clone().cumsum(1) - 1)
            .clamp_min(0)
            .narrow(1, past, t);
        let rope = self.rope.lookup(positions, total);

        // Hidden keys: the future (key j > past + i) and padding.
        let causal = Tensor::<2, Bool>::tril_mask([t, total], past as i64, &device)
            .reshape([1, 1, t, total])
            .expand([b, 1, t, total]);
        let pad = attention_mask
            .equal_elem(0)
            .reshape([b, 1, 1, total])
            .expand([b, 1, t, total]);
        let mask = causal.bool_or(pad);
        let rep = self
            .layers
            .first()
            .map_or(1, |l| l.self_attn.heads / l.self_attn.kv_heads);
        let mask = if rep == 1 {
            mask
        } else {
            mask.reshape([b, 1, 1, t, total])
                .expand([b, 1, rep, t, total])
                .reshape([b, 1, rep * t, total])
        };

        let mut x = self.embed_tokens.forward(input_ids);
        for (i, layer) in self.layers.iter().enumerate() {
            let cached = cache
                .as_deref()
                .filter(|c| c.keys.len() > i)
                .map(|c| (c.keys[i].clone(), c.values[i].clone()));
            let (attn, k, v) = layer.self_attn.forward(
                layer.input_layernorm.forward(x.clone()),
                &rope,
                mask.clone(),
                cached,
            );
            if let Some(c) = cache.as_deref_mut() {
                if c.keys.len() > i {
                    c.keys[i] = k;
                    c.values[i] = v;
                } else {
                    c.keys.push(k);
                    c.values.push(v);
                }
            }
            x = x + attn;
            x = x.clone() + layer.mlp.forward(layer.post_attention_layernorm.forward(x));
        }
        self.norm.forward(x)
    }

    /// Logits `[B, T, V]` from hidden states `[B, T, D]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            // Through lora::linear so an adapted head runs the factored forward (no dropout:
            // the adapter dropout is held per layer).
            Some(head) => {
                let [b, t, d] = hidden.dims();
                let v = head.weight.dims()[1];
                let rows = hidden.reshape([b * t, d]);
                lora::linear(head, rows, &DropoutConfig::new(0.0).init()).reshape([b, t, v])
            }
            None => {
                let [b, t, d] = hidden.dims();
                let v = self.embed_tokens.weight.dims()[0];
                hidden
                    .reshape([b * t, d])
                    .matmul(self.embed_tokens.weight.val().transpose())
                    .reshape([b, t, v])
            }
        }
    }

    /// Logits `[B, T, V]` of a padded batch `[B, T]` (no cache).
    pub fn forward(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2, Int>) -> Tensor<3> {
        self.logits(self.forward_hidden(input_ids, attention_mask))
    }

    /// Logits `[B, T, V]` of the new tokens `input_ids` `[B, T]`, reading and extending
    /// `cache`; `attention_mask` `[B, cached + T]` covers every position so far. Feeding a
    /// sequence in pieces gives the logits of one full [`LlamaModel::forward`]. Shape errors as
    /// [`LlamaModel::forward_hidden_with_cache`].
    pub fn forward_with_cache(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>> {
        Ok(self.logits(self.forward_hidden_with_cache(input_ids, attention_mask, cache)?))
    }

    /// Loads a `.gguf` file (or a folder holding exactly one) or an HF folder (`config.json`,
    /// `*.safetensors`, `tokenizer.json`), with its tokenizer. [`CausalLm::load`] also keeps
    /// the config and special ids.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<(Self, TextTokenizer)> {
        let lm = CausalLm::load(path, device)?;
        Ok((lm.model, lm.tokenizer))
    }

    /// Builds the model from HF-named tensors, checking every shape against `config` (a wrong
    /// shape is an error naming the tensor).
    pub fn from_source(
        source: &dyn WeightSource,
        config: &LlamaConfig,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let d = config.hidden_size;
        let ff = config.intermediate_size;
        let (h, kvh, dh) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        );
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: param(host_tensor(source, name, &[d])?, [d], device),
                eps: config.rms_norm_eps,
            })
        };
        let linear = |name: &str, d_in: usize, d_out: usize, bias: bool| -> Result<Linear> {
            let weight = format!("{name}.weight");
            let b = format!("{name}.bias");
            load_linear(
                source,
                &weight,
                bias.then_some(b.as_str()),
                d_in,
                d_out,
                device,
            )
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let ab = config.attention_bias;
                Ok(LlamaLayer {
                    input_layernorm: norm(&format!("{p}.input_layernorm.weight"))?,
                    self_attn: LlamaAttention {
                        q_proj: linear(&format!("{p}.self_attn.q_proj"), d, h * dh, ab)?,
                        k_proj: linear(&format!("{p}.self_attn.k_proj"), d, kvh * dh, ab)?,
                        v_proj: linear(&format!("{p}.self_attn.v_proj"), d, kvh * dh, ab)?,
                        o_proj: linear(&format!("{p}.self_attn.o_proj"), h * dh, d, false)?,
                        adapter_dropout: DropoutConfig::new(0.0).init(),
                        heads: h,
                        kv_heads: kvh,
                        head_dim: dh,
                    },
                    post_attention_layernorm: norm(&format!(
                        "{p}.post_attention_layernorm.weight"
                    ))?,
                    mlp: LlamaMlp {
                        gate_proj: linear(&format!("{p}.mlp.gate_proj"), d, ff, false)?,
                        up_proj: linear(&format!("{p}.mlp.up_proj"), d, ff, false)?,
                        down_proj: linear(&format!("{p}.mlp.down_proj"), ff, d, false)?,
                        adapter_dropout: DropoutConfig::new(0.0).init(),
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = match config.tie_word_embeddings {
            true => None,
            false => Some(linear("lm_head", d, config.vocab_size, false)?),
        };
        Ok(Self {
            embed_tokens: load_embedding(
                source,
                "model.embed_tokens.weight",
                config.vocab_size,
                d,
                device,
            )?,
            layers,
            norm: norm("model.norm.weight")?,
            lm_head,
            rope: RotaryTables::new(config, device),
        })
    }
}

/// The HF name of a [`LlamaModel`] parameter path (the field names follow HF's, under `model.`
/// except the LM head). The inverse of the names [`LlamaModel::from_source`] reads.
pub fn hf_name(path: &str) -> String {
    if path.starts_with("lm_head.") {
        path.to_string()
    } else {
        format!("model.{path}")
    }
}

/// A decoder with its tokenizer and special ids: what `plumb logprobs` / `plumb generate`, DPO
/// and PPO load.
#[derive(Clone, Debug)]
pub struct CausalLm {
    /// The decoder.
    pub model: LlamaModel,
    /// Its config.
    pub config: LlamaConfig,
    /// Its tokenizer (pad id set to the file's pad or EOS token when it declares one).
    pub tokenizer: TextTokenizer,
    /// Beginning-of-sequence id, when declared.
    pub bos_id: Option<u32>,
    /// End-of-sequence id, when declared (or found among the usual names).
    pub eos_id: Option<u32>,
    /// Where the model lives.
    pub device: Device,
}

/// An id field of HF `config.json`: a number or a list (its first element).
fn hf_token_id(config: &serde_json::Value, key: &str) -> Option<u32> {
    let v = config.get(key)?;
    let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

impl CausalLm {
    /// The tokens that end a chat response: the end-of-sequence id (when declared) and ChatML's
    /// `<|im_end|>` (when the vocabulary has it), sorted, without duplicates.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut stop: Vec<u32> = self.eos_id.into_iter().collect();
        stop.extend(self.tokenizer.token_to_id("<|im_end|>"));
        stop.sort_unstable();
        stop.dedup();
        stop
    }

    /// Loads a `.gguf` file, a folder holding exactly one, or an HF folder (`config.json`,
    /// `*.safetensors`, `tokenizer.json`).
    ///
    /// A policy folder written by `plumb train-po` (`policy.json`) loads as its trained policy,
    /// LoRA adapters merged into the weights (inference needs no separate adapter path).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_steered(path, device, None)
    }

    /// [`CausalLm::load`], a policy folder's action heads (MAH-DPO) mixed by `weights` rather
    /// than their defaults; weights for anything but a policy folder with action heads are an
    /// error.
    pub fn load_steered(
        path: impl AsRef<Path>,
        device: &Device,
        weights: Option<&crate::models::action_heads::HeadWeights>,
    ) -> Result<Self> {
        let path = path.as_ref();
        if path
            .join(crate::models::policy_folder::POLICY_SPEC_FILE)
            .is_file()
        {
            let mut lm =
                crate::models::policy_folder::Policy::load_steered(path, device, weights)?.lm;
            if !lora::adapter_paths(&lm.model).is_empty() {
                lm.model = lora::merge(&lm.model);
            }
            return Ok(lm);
        }
        if weights.is_some() {
            bail!(
                "{} is not a policy folder with action heads: head weights apply to policies trained with [multi_head] (MAH-DPO)",
                path.display()
            );
        }
        let gguf = if path.is_file() {
            Some(path.to_path_buf())
        } else if path.is_dir() && !path.join("config.json").is_file() {
            let mut found: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("listing {}", path.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
                .collect();
            found.sort();
            match found.len() {
                0 => bail!(
                    "{} holds neither config.json nor a .gguf file (run `cargo xtask fetch-models` for models/smollm2)",
                    path.display()
                ),
                1 => found.pop(),
                n => bail!("{} holds {n} .gguf files: name one", path.display()),
            }
        } else if path.is_dir() {
            None
        } else {
            bail!(
                "{} does not exist (run `cargo xtask fetch-models` for models/smollm2)",
                path.display()
            );
        };
        match gguf {
            Some(file) => {
                let gguf =
                    GgufFile::open(&file).with_context(|| format!("reading {}", file.display()))?;
                let ids = special_ids(&gguf);
                let tokenizer = TextTokenizer::new(tokenizer_from_gguf(&gguf)?)?;
                let tokenizer = match ids.pad.or(ids.eos) {
                    Some(pad) => tokenizer.with_pad_id(pad),
                    None => tokenizer,
                };
                let weights = GgufWeights::new(gguf)
                    .with_context(|| format!("reading {}", file.display()))?;
                let config = weights.config.clone();
                let model = LlamaModel::from_source(&weights, &config, device)
                    .with_context(|| format!("loading {}", file.display()))?;
                Ok(Self {
                    model,
                    config,
                    tokenizer,
                    bos_id: ids.bos,
                    eos_id: ids.eos,
                    device: device.clone(),
                })
            }
            None => {
                let config_path = path.join("config.json");
                let config = LlamaConfig::from_hf_file(&config_path)?;
                let raw: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&config_path)?)?;
                let weights = SafetensorsWeights::open(path)?;
                let model = LlamaModel::from_source(&weights, &config, device)
                    .with_context(|| format!("loading {}", path.display()))?;
                let tokenizer = TextTokenizer::from_file(path.join("tokenizer.json"))?;
                let eos_id = hf_token_id(&raw, "eos_token_id").or_else(|| {
                    ["<|im_end|>", "</s>", "<|endoftext|>"]
                        .iter()
                        .find_map(|t| tokenizer.token_to_id(t))
                });
                Ok(Self {
                    model,
                    config,
                    tokenizer,
                    bos_id: hf_token_id(&raw, "bos_token_id"),
                    eos_id,
                    device: device.clone(),
                })
            }
        }
    }
}

/// Prefill and one-token steps on the module itself (the policy being trained, LoRA or not), so
/// [`crate::sampling::generate`] samples from it directly.
impl IncrementalDecoder for LlamaModel {
    type Cache = KvCache;

    /// Errors on an empty prompt (`T = 0`) or a mask that is not `[B, T]`.
    fn prefill(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Result<(Tensor<2>, KvCache)> {
        let mut cache = KvCache::default();
        let [b, t] = ids.dims();
        let hidden = self.forward_hidden_with_cache(ids, attention_mask, &mut cache)?;
        let logits = self.logits(hidden.narrow(1, t - 1, 1));
        let v = logits.dims()[2];
        Ok((logits.reshape([b, v]), cache))
    }

    /// Errors unless `ids` is `[B, 1]`, `attention_mask` `[B, cached + 1]` and `cache` this
    /// model's cache of batch `B`.
    fn step(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>> {
        let [b, t] = ids.dims();
        if t != 1 {
            bail!("a decoding step feeds one token per row, got ids [{b}, {t}]");
        }
        let logits = self.forward_with_cache(ids, attention_mask, cache)?;
        let v = logits.dims()[2];
        Ok(logits.reshape([b, v]))
    }
}

/// The loaded bundle decodes with its model.
impl IncrementalDecoder for CausalLm {
    type Cache = KvCache;

    fn prefill(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Result<(Tensor<2>, KvCache)> {
        self.model.prefill(ids, attention_mask)
    }

    fn step(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>> {
        self.model.step(ids, attention_mask, cache)
    }
}

/// The trained module is the policy: hidden states, logits and (through the trait's default)
/// completion log-probs run on it, LoRA adapters and all.
impl CausalPolicy for LlamaModel {
    fn hidden_states(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Result<Tensor<3>> {
        self.check_inputs(&input_ids, &attention_mask, &KvCache::default())?;
        Ok(self.forward_hidden(input_ids, attention_mask))
    }

    fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        LlamaModel::logits(self, hidden)
    }
}

/// The loaded bundle is a policy through its model.
impl CausalPolicy for CausalLm {
    fn hidden_states(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Result<Tensor<3>> {
        self.model.hidden_states(input_ids, attention_mask)
    }

    fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.model.logits(hidden)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::models::test_support::MemoryWeights;
    use tokenizers::Tokenizer;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;

    /// Hidden 16, 4 query heads, 2 key/value heads, 2 layers, vocabulary 32.
    pub fn tiny_config() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 32,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: false,
        }
    }

    /// Random HF-named weights for `c` (biases and `lm_head` as the config asks).
    pub fn tiny_weights(c: &LlamaConfig, seed: u64) -> MemoryWeights {
        let mut w = MemoryWeights::seeded(seed);
        let d = c.hidden_size;
        let (h, kvh, dh) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        w.random("model.embed_tokens.weight", &[c.vocab_size, d], 1.0);
        w.random("model.norm.weight", &[d], 1.0);
        if !c.tie_word_embeddings {
            w.random("lm_head.weight", &[c.vocab_size, d], 1.0);
        }
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            w.random(&format!("{p}.input_layernorm.weight"), &[d], 1.0);
            w.random(&format!("{p}.post_attention_layernorm.weight"), &[d], 1.0);
            for (name, rows, cols) in [
                ("self_attn.q_proj", h * dh, d),
                ("self_attn.k_proj", kvh * dh, d),
                ("self_attn.v_proj", kvh * dh, d),
                ("self_attn.o_proj", d, h * dh),
                ("mlp.gate_proj", c.intermediate_size, d),
                ("mlp.up_proj", c.intermediate_size, d),
                ("mlp.down_proj", d, c.intermediate_size),
            ] {
                w.random(&format!("{p}.{name}.weight"), &[rows, cols], 0.5);
                if c.attention_bias
                    && ["q_proj", "k_proj", "v_proj"]
                        .iter()
                        .any(|s| name.ends_with(s))
                {
                    w.random(&format!("{p}.{name}.bias"), &[rows], 0.5);
                }
            }
        }
        w
    }

    /// The tiny model with seed-11 weights.
    pub fn tiny_model(device: &Device) -> LlamaModel {
        let c = tiny_config();
        LlamaModel::from_source(&tiny_weights(&c, 11), &c, device).unwrap()
    }

    /// The tiny model of `seed` as an HF folder `dir` (config.json, model.safetensors,
    /// tokenizer.json), which [`CausalLm::load`] reads.
    pub fn write_tiny_hf_folder(dir: &Path, seed: u64) {
        std::fs::create_dir_all(dir).unwrap();
        let c = tiny_config();
        let mut json = serde_json::to_value(&c).unwrap();
        json["model_type"] = "llama".into();
        std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
        let tensors: Vec<_> = tiny_weights(&c, seed).tensors.into_iter().collect();
        crate::checkpoint::save_host_tensors(&dir.join("model.safetensors"), &tensors).unwrap();
        tiny_tokenizer()
            .inner()
            .save(dir.join("tokenizer.json"), false)
            .unwrap();
    }

    /// A 32-word tokenizer matching the tiny model's vocabulary ("t0" … "t31", pad = t0).
    pub fn tiny_tokenizer() -> TextTokenizer {
        let vocab = (0..32).map(|i| (format!("t{i}"), i as u32)).collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("t1".into())
            .build()
            .unwrap();
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(WhitespaceSplit));
        TextTokenizer::new(tok).unwrap().with_pad_id(0)
    }

    /// A `[rows, cols]` id or mask tensor.
    pub fn int2(rows: Vec<Vec<i64>>, device: &Device) -> Tensor<2, Int> {
        let (b, t) = (rows.len(), rows[0].len());
        Tensor::from_data(TensorData::new(rows.concat(), [b, t]), device)
    }

    fn max_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("plumb-llama-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn kv_cache_decoding_equals_the_full_forward() {
        let device = test_device();
        let model = tiny_model(&device);
        let ids = vec![3i64, 7, 1, 9, 4, 12];
        let full = model.forward(
            int2(vec![ids.clone()], &device),
            int2(vec![vec![1; 6]], &device),
        );
        let mut cache = KvCache::default();
        let mut steps = vec![
            model
                .forward_with_cache(
                    int2(vec![ids[..3].to_vec()], &device),
                    int2(vec![vec![1; 3]], &device),
                    &mut cache,
                )
                .unwrap(),
        ];
        for (k, &tok) in ids.iter().enumerate().skip(3) {
            steps.push(
                model
                    .forward_with_cache(
                        int2(vec![vec![tok]], &device),
                        int2(vec![vec![1; k + 1]], &device),
                        &mut cache,
                    )
                    .unwrap(),
            );
        }
        assert_eq!(cache.len(), 6);
        let diff = max_diff(full, Tensor::cat(steps, 1));
        assert!(diff < 1e-4, "cache vs full: {diff}");
    }

    #[test]
    fn kv_cache_decoding_of_a_left_padded_batch_equals_the_full_forward() {
        let device = test_device();
        let model = tiny_model(&device);
        let rows = vec![vec![0i64, 0, 5, 6, 7, 8, 9], vec![1, 2, 3, 4, 5, 6, 7]];
        let mask = vec![vec![0i64, 0, 1, 1, 1, 1, 1], vec![1; 7]];
        let full = model.forward(int2(rows.clone(), &device), int2(mask.clone(), &device));
        let mut cache = KvCache::default();
        let prefix = |m: &Vec<Vec<i64>>, a: usize, b: usize| -> Vec<Vec<i64>> {
            m.iter().map(|r| r[a..b].to_vec()).collect()
        };
        let mut steps = vec![
            model
                .forward_with_cache(
                    int2(prefix(&rows, 0, 4), &device),
                    int2(prefix(&mask, 0, 4), &device),
                    &mut cache,
                )
                .unwrap(),
        ];
        for k in 4..7 {
            steps.push(
                model
                    .forward_with_cache(
                        int2(prefix(&rows, k, k + 1), &device),
                        int2(prefix(&mask, 0, k + 1), &device),
                        &mut cache,
                    )
                    .unwrap(),
            );
        }
        let incremental = Tensor::cat(steps, 1);
        // Only real positions are compared (pad rows are never read).
        let diff = max_diff(
            full.clone().narrow(1, 2, 5),
            incremental.clone().narrow(1, 2, 5),
        );
        assert!(diff < 1e-4, "cache vs full, left-padded batch: {diff}");
    }

    #[test]
    fn left_padding_does_not_change_a_sequence_s_logits() {
        let device = test_device();
        let model = tiny_model(&device);
        let alone = model.forward(
            int2(vec![vec![5, 6, 7]], &device),
            int2(vec![vec![1, 1, 1]], &device),
        );
        let batch = model.forward(
            int2(vec![vec![0, 0, 5, 6, 7], vec![1, 2, 3, 4, 5]], &device),
            int2(vec![vec![0, 0, 1, 1, 1], vec![1, 1, 1, 1, 1]], &device),
        );
        let padded = batch.narrow(0, 0, 1).narrow(1, 2, 3);
        let diff = max_diff(alone.clone(), padded);
        assert!(diff < 1e-4, "left padding changed logits by {diff}");
        // Right padding too.
        let batch = model.forward(
            int2(vec![vec![5, 6, 7, 0, 0], vec![1, 2, 3, 4, 5]], &device),
            int2(vec![vec![1, 1, 1, 0, 0], vec![1, 1, 1, 1, 1]], &device),
        );
        let diff = max_diff(alone, batch.narrow(0, 0, 1).narrow(1, 0, 3));
        assert!(diff < 1e-4, "right padding changed logits by {diff}");
    }

    /// Multi-head weights equivalent to grouped ones: each query head gets a copy of its
    /// group's key/value rows (HF `repeat_kv`: query head `i` reads kv head `i / rep`).
    fn repeat_kv_weights(c: &LlamaConfig, w: &MemoryWeights) -> MemoryWeights {
        let mut out = MemoryWeights::default();
        out.tensors = w.tensors.clone();
        let (h, kvh, dh, d) = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.hidden_size,
        );
        for i in 0..c.num_hidden_layers {
            for name in ["k_proj", "v_proj"] {
                let key = format!("model.layers.{i}.self_attn.{name}.weight");
                let src = &w.tensors[&key];
                let mut values = Vec::new();
                for head in 0..h {
                    let g = head / (h / kvh);
                    values.extend_from_slice(&src.values[g * dh * d..(g + 1) * dh * d]);
                }
                out.tensors.insert(
                    key,
                    crate::models::weights::HostTensor {
                        shape: vec![h * dh, d],
                        values,
                    },
                );
            }
        }
        out
    }

    #[test]
    fn grouped_query_attention_shapes_and_grouping() {
        let device = test_device();
        for kv_heads in [1, 2] {
            let c = LlamaConfig {
                num_key_value_heads: kv_heads,
                ..tiny_config()
            };
            let w = tiny_weights(&c, 5);
            let gqa = LlamaModel::from_source(&w, &c, &device).unwrap();
            let layer = &gqa.layers[0].self_attn;
            assert_eq!(layer.k_proj.weight.dims(), [16, kv_heads * 4]);
            assert_eq!(layer.q_proj.weight.dims(), [16, 16]);
            let ids = int2(vec![vec![0, 3, 4, 5, 6], vec![7, 8, 9, 10, 11]], &device);
            let mask = int2(vec![vec![0, 1, 1, 1, 1], vec![1; 5]], &device);
            let mut cache = KvCache::default();
            let hidden = gqa
                .forward_hidden_with_cache(ids.clone(), mask.clone(), &mut cache)
                .unwrap();
            assert_eq!(hidden.dims(), [2, 5, 16]);
            assert_eq!(cache.keys.len(), 2);
            assert_eq!(cache.keys[1].dims(), [2, kv_heads, 5, 4]);
            assert_eq!(cache.values[1].dims(), [2, kv_heads, 5, 4]);
            let logits = gqa.forward(ids.clone(), mask.clone());
            assert_eq!(logits.dims(), [2, 5, 32]);

            let mha_config = LlamaConfig {
                num_key_value_heads: 4,
                ..c.clone()
            };
            let mha =
                LlamaModel::from_source(&repeat_kv_weights(&c, &w), &mha_config, &device).unwrap();
            let diff = max_diff(logits, mha.forward(ids, mask));
            assert!(diff < 1e-5, "{kv_heads} kv heads vs repeated: {diff}");
        }
    }

    #[test]
    fn positions_beyond_the_rope_tables_match_the_tables() {
        let device = test_device();
        let c = tiny_config();
        let short = LlamaConfig {
            max_position_embeddings: 3,
            ..c.clone()
        };
        let w = tiny_weights(&c, 3);
        let a = LlamaModel::from_source(&w, &c, &device).unwrap();
        let b = LlamaModel::from_source(&w, &short, &device).unwrap();
        assert_eq!(b.rope.cos.dims(), [3, 4]);
        let ids = int2(vec![vec![0, 3, 4, 5, 6, 7, 8]], &device);
        let mask = int2(vec![vec![0, 1, 1, 1, 1, 1, 1]], &device);
        let diff = max_diff(a.forward(ids.clone(), mask.clone()), b.forward(ids, mask));
        assert!(diff < 1e-5, "tables vs on-the-fly angles: {diff}");
    }

    #[test]
    fn loading_errors_name_the_tensor() {
        let device = test_device();
        let c = tiny_config();
        let mut w = tiny_weights(&c, 1);
        w.random("model.layers.1.self_attn.k_proj.weight", &[16, 16], 0.5);
        let err = LlamaModel::from_source(&w, &c, &device)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "tensor model.layers.1.self_attn.k_proj.weight has shape [16, 16], the config implies [8, 16]"
        );
        let mut bad = c.clone();
        bad.num_key_value_heads = 3;
        assert!(LlamaModel::from_source(&tiny_weights(&c, 1), &bad, &device).is_err());
        // An untied head must be there.
        let untied = LlamaConfig {
            tie_word_embeddings: false,
            ..c.clone()
        };
        let err = LlamaModel::from_source(&tiny_weights(&c, 1), &untied, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lm_head.weight"), "{err}");
        // So must Qwen2-style biases.
        let biased = LlamaConfig {
            attention_bias: true,
            ..c
        };
        let err = LlamaModel::from_source(&tiny_weights(&tiny_config(), 1), &biased, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers.0.self_attn.q_proj.bias"),
            "{err}"
        );
    }

    #[test]
    fn hf_config_options() {
        let base = r#""model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2"#;
        let parse = |extra: &str| LlamaConfig::from_hf_json(&format!("{{{base}{extra}}}"));
        let c = parse("").unwrap();
        assert_eq!(
            (
                c.head_dim,
                c.rope_theta,
                c.attention_bias,
                c.rope_scaling.clone()
            ),
            (4, 10000.0, false, None)
        );
        let err = |extra: &str| format!("{:#}", parse(extra).unwrap_err());
        let e = err(r#", "rope_scaling": {"type": "yarn", "factor": 4.0}"#);
        assert!(e.contains("rope_scaling type \"yarn\""), "{e}");
        let e = err(r#", "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}"#);
        assert!(e.contains("not supported"), "{e}");
        assert!(err(r#", "hidden_act": "gelu""#).contains("hidden_act"));
        let gpt2 = LlamaConfig::from_hf_json(&format!("{{{}}}", base.replace("llama", "gpt2")));
        assert!(format!("{:#}", gpt2.unwrap_err()).contains("model_type \"gpt2\""));
        assert!(err(r#", "sliding_window": 16"#).contains("sliding-window"));
        assert!(err(r#", "mlp_bias": true"#).contains("mlp_bias"));
        assert!(err(r#", "num_key_value_heads": 3"#).contains("num_key_value_heads"));
        // A window at least as long as the context changes nothing; Qwen2's is off by default.
        assert!(parse(r#", "sliding_window": 4096, "max_position_embeddings": 4096"#).is_ok());
        let q = LlamaConfig::from_hf_json(&format!(
            "{{{}, \"sliding_window\": 16, \"use_sliding_window\": false}}",
            base.replace("llama", "qwen2")
        ))
        .unwrap();
        assert!(q.attention_bias);
        assert_eq!(
            parse(r#", "rope_scaling": null"#).unwrap().rope_scaling,
            None
        );

        // Linear scaling divides every frequency.
        let lin = parse(r#", "rope_scaling": {"type": "linear", "factor": 2.0}"#).unwrap();
        let (f0, f1) = (c.inv_frequencies(), lin.inv_frequencies());
        assert!(f0.iter().zip(&f1).all(|(a, b)| (a / 2.0 - b).abs() < 1e-15));
        // Llama 3.1: high frequencies kept, low ones divided by the factor.
        let l3 = LlamaConfig {
            head_dim: 64,
            rope_theta: 500000.0,
            rope_scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
            ..c.clone()
        };
        let plain = LlamaConfig {
            rope_scaling: None,
            ..l3.clone()
        };
        let (s, p) = (l3.inv_frequencies(), plain.inv_frequencies());
        assert_eq!(s[0], p[0]);
        assert!((s[31] - p[31] / 8.0).abs() < 1e-18);
        assert!(s.iter().zip(&p).all(|(a, b)| a <= b && *a >= b / 8.0));
        let json = r#", "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}"#;
        assert_eq!(parse(json).unwrap().rope_scaling, l3.rope_scaling);
    }

    /// Writes `w` as `model.safetensors` (f32) into `dir`.
    fn write_safetensors(w: &MemoryWeights, dir: &Path) {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = w
            .tensors
            .iter()
            .map(|(n, t)| {
                let b = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (n.clone(), t.shape.clone(), b)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b)| {
                let view =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap();
                (n.clone(), view)
            })
            .collect();
        std::fs::write(
            dir.join("model.safetensors"),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn hf_folder_with_qwen2_biases_and_an_untied_head_loads() {
        let device = test_device();
        let dir = temp_dir("hf");
        let c = LlamaConfig {
            attention_bias: true,
            tie_word_embeddings: false,
            ..tiny_config()
        };
        let w = tiny_weights(&c, 21);
        write_safetensors(&w, &dir);
        std::fs::write(
            dir.join("config.json"),
            r#"{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 32,
                "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": false,
                "sliding_window": 64, "use_sliding_window": false, "eos_token_id": [5, 6],
                "bos_token_id": 4}"#,
        )
        .unwrap();
        tiny_tokenizer()
            .inner()
            .save(dir.join("tokenizer.json"), false)
            .unwrap();
        let lm = CausalLm::load(&dir, &device).unwrap();
        assert_eq!(lm.config, c);
        assert_eq!((lm.bos_id, lm.eos_id), (Some(4), Some(5)));
        assert!(lm.model.lm_head.is_some());
        assert!(lm.model.layers[1].self_attn.v_proj.bias.is_some());
        assert_eq!(lm.tokenizer.encode("t3 t4", false).unwrap(), [3, 4]);
        let direct = LlamaModel::from_source(&w, &c, &device).unwrap();
        let ids = int2(vec![vec![3, 4, 5]], &device);
        let mask = int2(vec![vec![1, 1, 1]], &device);
        let diff = max_diff(
            lm.model.forward(ids.clone(), mask.clone()),
            direct.forward(ids.clone(), mask.clone()),
        );
        assert_eq!(diff, 0.0);
        // The untied head is used: a tied model with the same weights differs.
        let tied = LlamaModel::from_source(
            &w,
            &LlamaConfig {
                tie_word_embeddings: true,
                ..c
            },
            &device,
        )
        .unwrap();
        assert!(
            max_diff(
                tied.forward(ids.clone(), mask.clone()),
                direct.forward(ids, mask)
            ) > 1e-3
        );

        let (model, tokenizer) = LlamaModel::load(&dir, &device).unwrap();
        assert_eq!(model.layers.len(), 2);
        assert_eq!(tokenizer.pad_id(), 0);
        std::fs::remove_dir_all(&dir).ok();
        let err = CausalLm::load(dir.join("missing"), &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo xtask fetch-models"), "{err}");
    }
}

#[cfg(test)]
mod generation_tests {
    use super::tests::{tiny_model, tiny_tokenizer};
    use super::*;
    use crate::device::test_device;
    use crate::sampling::{SamplingConfig, generate, log_softmax};

    fn lm() -> CausalLm {
        let device = test_device();
        CausalLm {
            model: tiny_model(&device),
            config: tests::tiny_config(),
            tokenizer: tiny_tokenizer(),
            bos_id: None,
            eos_id: None,
            device,
        }
    }

    /// Logits of the last position of `ids` by a full forward pass (no cache).
    fn last_logits(lm: &CausalLm, ids: &[u32]) -> Vec<f32> {
        let n = ids.len();
        let t = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, n]),
            &lm.device,
        );
        let logits = lm.model.forward(t, Tensor::ones([1, n], &lm.device));
        let all = logits.into_data().try_to_vec::<f32>().unwrap();
        let v = all.len() / n;
        all[(n - 1) * v..].to_vec()
    }

    #[test]
    fn batched_cached_greedy_equals_uncached_one_at_a_time() {
        let lm = lm();
        let prompts = vec![vec![3u32, 4, 5], vec![6, 7], vec![9, 10, 11, 12]];
        let rows = generate(
            &lm,
            &lm.tokenizer,
            &prompts,
            &SamplingConfig::greedy(6),
            &lm.device,
        )
        .unwrap();
        for (prompt, row) in prompts.iter().zip(&rows) {
            let mut ids = prompt.clone();
            for (k, &tok) in row.tokens.iter().enumerate() {
                let logits = last_logits(&lm, &ids);
                assert_eq!(
                    tok as usize,
                    crate::sampling::argmax(&logits),
                    "step {k} of {prompt:?}"
                );
                let lp = log_softmax(&logits)[tok as usize];
                assert!((lp - row.model_logprobs[k]).abs() < 1e-4);
                ids.push(tok);
            }
            assert_eq!(row.tokens.len(), 6);
        }
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_stops() {
        let lm = lm();
        let prompts = vec![vec![3u32, 4, 5], vec![6, 7]];
        let config = SamplingConfig {
            max_new_tokens: 8,
            temperature: 0.8,
            top_k: 10,
            top_p: 0.9,
            seed: 5,
            ..Default::default()
        };
        let a = generate(&lm, &lm.tokenizer, &prompts, &config, &lm.device).unwrap();
        let b = generate(&lm, &lm.tokenizer, &prompts, &config, &lm.device).unwrap();
        assert_eq!(a, b);
        // The model log-prob is the unmodified model's, not the sampler's.
        let mut ids = prompts[0].clone();
        for (k, &tok) in a[0].tokens.iter().enumerate() {
            let lp = log_softmax(&last_logits(&lm, &ids))[tok as usize];
            assert!((lp - a[0].model_logprobs[k]).abs() < 1e-4);
            assert!(
                a[0].sampling_logprobs[k] >= lp - 1e-4,
                "filtered sampling renormalises upwards"
            );
            ids.push(tok);
        }
        // A stop token ends a row early and is kept.
        let stop = a[0].tokens[2];
        let first = a[0].tokens.iter().position(|&t| t == stop).unwrap();
        let config = SamplingConfig {
            stop_tokens: vec![stop],
            ..config
        };
        let c = generate(&lm, &lm.tokenizer, &prompts, &config, &lm.device).unwrap();
        assert_eq!(c[0].tokens, a[0].tokens[..=first]);
        assert_eq!(c[0].finish_reason, crate::sampling::FinishReason::StopToken);
    }
}
