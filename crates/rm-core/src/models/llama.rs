//! Llama-family decoder (SmolLM2, and HF Llama/Qwen2/Mistral-style folders): RMSNorm, rotary
//! position embeddings (HF "rotate half" layout, θ from the config), grouped-query attention,
//! SiLU-gated MLP, tied or untied LM head, causal + padding masks and a KV cache.
//!
//! Weights are read by HF names (`model.layers.{i}.self_attn.q_proj.weight`, …) from any
//! [`WeightSource`]; GGUF files are adapted to those names in [`super::gguf_weights`].

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::gguf_weights::GgufWeights;
use super::safetensors::SafetensorsWeights;
use super::weights::WeightSource;
use super::{host_tensor, load_embedding, load_linear, param};
use crate::gguf::GgufFile;
use crate::gguf::tokenizer::{special_ids, tokenizer_from_gguf};
use crate::sampling::IncrementalDecoder;
use crate::tokenize::TextTokenizer;

/// A Llama-family config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
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

impl LlamaConfig {
    /// Reads an HF `config.json` (model_type llama, qwen2 or mistral). Options this
    /// implementation does not support are errors, not silently ignored.
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let raw: HfLlamaConfig = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a Llama-family config", path.display()))?;
        let kind = raw.model_type.clone().unwrap_or_else(|| "llama".into());
        let fail = |m: String| anyhow::anyhow!("{}: {m}", path.display());
        if !["llama", "qwen2", "mistral"].contains(&kind.as_str()) {
            return Err(fail(format!(
                "model_type {kind:?} is not a supported Llama-family model (llama, qwen2, mistral)"
            )));
        }
        if raw.hidden_act != "silu" {
            return Err(fail(format!(
                "hidden_act {:?} is not supported (only silu)",
                raw.hidden_act
            )));
        }
        if let Some(s) = raw.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(fail(format!("rope_scaling {s} is not supported")));
        }
        if raw.use_sliding_window == Some(true)
            || (kind == "mistral" && raw.sliding_window.as_ref().is_some_and(|v| !v.is_null()))
        {
            return Err(fail("sliding-window attention is not supported".into()));
        }
        if raw.mlp_bias == Some(true) {
            return Err(fail("mlp_bias is not supported".into()));
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
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            attention_bias: raw.attention_bias.unwrap_or(kind == "qwen2"),
        };
        config.validate().map_err(|e| fail(e.to_string()))?;
        Ok(config)
    }

    /// Builds the config from GGUF `llama.*` metadata.
    pub fn from_gguf(file: &GgufFile, tie_word_embeddings: bool) -> Result<Self> {
        let arch = file.get_str("general.architecture")?;
        if arch != "llama" {
            bail!("GGUF architecture {arch:?} is not supported (only \"llama\")");
        }
        if file.metadata().contains_key("llama.rope.scaling.type") {
            bail!("GGUF rope scaling (llama.rope.scaling.type) is not supported");
        }
        let u = |k: &str| -> Result<usize> { Ok(file.get_u64(k)? as usize) };
        let heads = u("llama.attention.head_count")?;
        let hidden = u("llama.embedding_length")?;
        let vocab = match file.get_u64("llama.vocab_size") {
            Ok(v) => v as usize,
            Err(_) => file.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let config = Self {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: u("llama.feed_forward_length")?,
            num_hidden_layers: u("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: u("llama.attention.head_count_kv").unwrap_or(heads),
            head_dim: u("llama.rope.dimension_count").unwrap_or(hidden / heads.max(1)),
            rms_norm_eps: file.get_f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: file.get_f64("llama.rope.freq_base").unwrap_or(10000.0),
            max_position_embeddings: u("llama.context_length").unwrap_or(2048),
            tie_word_embeddings,
            attention_bias: false,
        };
        config.validate()?;
        Ok(config)
    }

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
        Ok(())
    }
}

/// Root-mean-square LayerNorm: `x / sqrt(mean(x²) + ε) · w`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let d = x.dims()[2];
        let rms = x
            .clone()
            .powf_scalar(2.0)
            .mean_dim(2)
            .add_scalar(self.eps)
            .sqrt();
        (x / rms) * self.weight.val().reshape([1, 1, d])
    }
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// SiLU-gated MLP: `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// One decoder layer (pre-norm).
#[derive(Module, Debug)]
pub struct LlamaLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: LlamaAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: LlamaMlp,
}

/// The decoder.
#[derive(Module, Debug)]
pub struct LlamaModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<LlamaLayer>,
    pub norm: RmsNorm,
    /// `None`: logits use the (tied) embedding matrix.
    pub lm_head: Option<Linear>,
    pub rope_theta: f64,
}

/// Cached keys and values of every layer, `[B, kv_heads, T, head_dim]` each.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub keys: Vec<Tensor<4>>,
    pub values: Vec<Tensor<4>>,
}

impl KvCache {
    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.keys.first().map_or(0, |k| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn rotate_half(x: Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.narrow(3, d / 2, d / 2);
    Tensor::cat(vec![x2.neg(), x1], 3)
}

/// cos and sin tables `[B, 1, T, head_dim]` for positions `[B, T]`.
fn rope_tables(positions: Tensor<2, Int>, head_dim: usize, theta: f64) -> (Tensor<4>, Tensor<4>) {
    let [b, t] = positions.dims();
    let device = positions.device();
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
        .collect();
    let inv_freq = Tensor::<3>::from_data(TensorData::new(inv_freq, [1, 1, half]), &device);
    let angles = positions.float().reshape([b, t, 1]) * inv_freq; // [B, T, half]
    let angles = Tensor::cat(vec![angles.clone(), angles], 2).reshape([b, 1, t, head_dim]);
    (angles.clone().cos(), angles.sin())
}

impl LlamaAttention {
    fn forward(
        &self,
        x: Tensor<3>,
        cos: Tensor<4>,
        sin: Tensor<4>,
        bias: Tensor<4>,
        cache: Option<(&mut Tensor<4>, &mut Tensor<4>)>,
    ) -> (Tensor<3>, Tensor<4>, Tensor<4>) {
        let [b, t, _] = x.dims();
        let (h, kvh, dh) = (self.heads, self.kv_heads, self.head_dim);
        let q = self
            .q_proj
            .forward(x.clone())
            .reshape([b, t, h, dh])
            .swap_dims(1, 2);
        let k = self
            .k_proj
            .forward(x.clone())
            .reshape([b, t, kvh, dh])
            .swap_dims(1, 2);
        let v = self
            .v_proj
            .forward(x)
            .reshape([b, t, kvh, dh])
            .swap_dims(1, 2);
        let q = q.clone() * cos.clone() + rotate_half(q) * sin.clone();
        let k = k.clone() * cos + rotate_half(k) * sin;
        let (k, v) = match cache {
            Some((ck, cv)) => (
                Tensor::cat(vec![ck.clone(), k], 2),
                Tensor::cat(vec![cv.clone(), v], 2),
            ),
            None => (k, v),
        };
        let tk = k.dims()[2];
        let rep = h / kvh;
        let expand = |y: Tensor<4>| {
            if rep == 1 {
                y
            } else {
                y.reshape([b, kvh, 1, tk, dh])
                    .expand([b, kvh, rep, tk, dh])
                    .reshape([b, h, tk, dh])
            }
        };
        let scores = q
            .matmul(expand(k.clone()).swap_dims(2, 3))
            .div_scalar((dh as f64).sqrt())
            + bias;
        let context = softmax(scores, 3)
            .matmul(expand(v.clone()))
            .swap_dims(1, 2)
            .reshape([b, t, h * dh]);
        (self.o_proj.forward(context), k, v)
    }
}

impl LlamaModel {
    /// Last hidden states (after the final norm) `[B, T, D]` of `input_ids` `[B, T]`.
    ///
    /// `attention_mask` `[B, past + T]` covers the cached positions and the new ones (1 real,
    /// 0 pad; left padding works: positions count real tokens only). With `cache`, keys and
    /// values of the new tokens are appended to it.
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [b, t] = input_ids.dims();
        let device = input_ids.device();
        let past = cache.as_ref().map_or(0, |c| c.len());
        let total = attention_mask.dims()[1];
        assert_eq!(
            total,
            past + t,
            "attention mask must cover cached and new positions"
        );
        let head_dim = self.layers.first().map_or(2, |l| l.self_attn.head_dim);

        // Position of each new token = number of real tokens before it.
        let positions = (attention_mask.clone().cumsum(1) - 1)
            .clamp_min(0)
            .narrow(1, past, t);
        let (cos, sin) = rope_tables(positions, head_dim, self.rope_theta);

        // Causal bias [T, total]: key j is visible to query i when j ≤ past + i.
        let q_pos = Tensor::<1, Int>::arange(past as i64..(past + t) as i64, &device)
            .reshape([t, 1])
            .expand([t, total]);
        let k_pos = Tensor::<1, Int>::arange(0..total as i64, &device)
            .reshape([1, total])
            .expand([t, total]);
        let causal = k_pos
            .greater(q_pos)
            .float()
            .mul_scalar(-1e9)
            .reshape([1, 1, t, total]);
        let pad = (attention_mask.float().neg() + 1.0)
            .mul_scalar(-1e9)
            .reshape([b, 1, 1, total]);
        let bias = causal + pad;

        let mut x = self.embed_tokens.forward(input_ids);
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(x.clone());
            let layer_cache = cache
                .as_deref_mut()
                .filter(|c| c.keys.len() > i)
                .map(|c| (&mut c.keys[i], &mut c.values[i]));
            let had_cache = layer_cache.is_some();
            let (attn, k, v) =
                layer
                    .self_attn
                    .forward(h, cos.clone(), sin.clone(), bias.clone(), layer_cache);
            if let Some(c) = cache.as_deref_mut() {
                if had_cache {
                    c.keys[i] = k;
                    c.values[i] = v;
                } else {
                    c.keys.push(k);
                    c.values.push(v);
                }
            }
            x = x + attn;
            let h = layer.post_attention_layernorm.forward(x.clone());
            let m = &layer.mlp;
            x = x + m
                .down_proj
                .forward(silu(m.gate_proj.forward(h.clone())) * m.up_proj.forward(h));
        }
        self.norm.forward(x)
    }

    /// Logits `[B, T, V]` from hidden states `[B, T, D]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [v, d] = self.embed_tokens.weight.dims();
                hidden.matmul(
                    self.embed_tokens
                        .weight
                        .val()
                        .transpose()
                        .reshape([1, d, v]),
                )
            }
        }
    }

    /// Logits `[B, T, V]` of a padded batch (no cache).
    pub fn forward(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2, Int>) -> Tensor<3> {
        self.logits(self.forward_hidden(input_ids, attention_mask, None))
    }

    /// Builds the model from HF-named tensors, checking every shape against `config`.
    pub fn from_source(
        source: &dyn WeightSource,
        config: &LlamaConfig,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let d = config.hidden_size;
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
            let b = format!("{}.bias", name.trim_end_matches(".weight"));
            load_linear(
                source,
                name,
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
                        q_proj: linear(&format!("{p}.self_attn.q_proj.weight"), d, h * dh, ab)?,
                        k_proj: linear(&format!("{p}.self_attn.k_proj.weight"), d, kvh * dh, ab)?,
                        v_proj: linear(&format!("{p}.self_attn.v_proj.weight"), d, kvh * dh, ab)?,
                        o_proj: linear(&format!("{p}.self_attn.o_proj.weight"), h * dh, d, false)?,
                        heads: h,
                        kv_heads: kvh,
                        head_dim: dh,
                    },
                    post_attention_layernorm: norm(&format!(
                        "{p}.post_attention_layernorm.weight"
                    ))?,
                    mlp: LlamaMlp {
                        gate_proj: linear(
                            &format!("{p}.mlp.gate_proj.weight"),
                            d,
                            config.intermediate_size,
                            false,
                        )?,
                        up_proj: linear(
                            &format!("{p}.mlp.up_proj.weight"),
                            d,
                            config.intermediate_size,
                            false,
                        )?,
                        down_proj: linear(
                            &format!("{p}.mlp.down_proj.weight"),
                            config.intermediate_size,
                            d,
                            false,
                        )?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if config.tie_word_embeddings || !source.contains("lm_head.weight") {
            None
        } else {
            Some(load_linear(
                source,
                "lm_head.weight",
                None,
                d,
                config.vocab_size,
                device,
            )?)
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
            rope_theta: config.rope_theta,
        })
    }
}

/// The HF name of a [`LlamaModel`] parameter path (the field names follow HF's, under `model.`
/// except the LM head).
pub fn hf_name(path: &str) -> String {
    if path.starts_with("lm_head.") {
        path.to_string()
    } else {
        format!("model.{path}")
    }
}

/// A decoder with its tokenizer and special ids: what `plumb logprobs` / `plumb generate`, DPO
/// and PPO load.
#[derive(Debug)]
pub struct CausalLm {
    pub model: LlamaModel,
    pub config: LlamaConfig,
    pub tokenizer: TextTokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub device: Device,
}

impl CausalLm {
    /// Loads a `.gguf` file, a folder holding one, or an HF folder (`config.json`,
    /// `*.safetensors`, `tokenizer.json`).
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let gguf = if path.is_file() {
            Some(path.to_path_buf())
        } else if path.is_dir() && !path.join("config.json").is_file() {
            let mut found: Vec<_> = std::fs::read_dir(path)?
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
                let weights = GgufWeights::new(gguf)?;
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
                let config = LlamaConfig::from_hf_file(path.join("config.json"))?;
                let weights = SafetensorsWeights::open(path)?;
                let model = LlamaModel::from_source(&weights, &config, device)
                    .with_context(|| format!("loading {}", path.display()))?;
                let tokenizer = TextTokenizer::from_file(path.join("tokenizer.json"))?;
                let eos_id = tokenizer
                    .token_to_id("<|im_end|>")
                    .or_else(|| tokenizer.token_to_id("</s>"))
                    .or_else(|| tokenizer.token_to_id("<|endoftext|>"));
                Ok(Self {
                    model,
                    config,
                    tokenizer,
                    bos_id: None,
                    eos_id,
                    device: device.clone(),
                })
            }
        }
    }
}

impl IncrementalDecoder for CausalLm {
    type Cache = KvCache;

    fn prefill(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Result<(Tensor<2>, KvCache)> {
        let mut cache = KvCache::default();
        let [b, t] = ids.dims();
        let hidden = self
            .model
            .forward_hidden(ids, attention_mask, Some(&mut cache));
        let last = hidden.narrow(1, t - 1, 1);
        let logits = self.model.logits(last);
        let v = logits.dims()[2];
        Ok((logits.reshape([b, v]), cache))
    }

    fn step(
        &self,
        ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
        cache: &mut KvCache,
    ) -> Result<Tensor<2>> {
        let [b, _] = ids.dims();
        let hidden = self.model.forward_hidden(ids, attention_mask, Some(cache));
        let logits = self.model.logits(hidden);
        let v = logits.dims()[2];
        Ok(logits.reshape([b, v]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::models::test_support::MemoryWeights;

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
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: false,
        }
    }

    pub fn tiny_weights(c: &LlamaConfig, seed: u64) -> MemoryWeights {
        let mut w = MemoryWeights::seeded(seed);
        let d = c.hidden_size;
        let (h, kvh, dh) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        w.random("model.embed_tokens.weight", &[c.vocab_size, d], 1.0);
        w.random("model.norm.weight", &[d], 1.0);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            w.random(&format!("{p}.input_layernorm.weight"), &[d], 1.0);
            w.random(&format!("{p}.post_attention_layernorm.weight"), &[d], 1.0);
            w.random(&format!("{p}.self_attn.q_proj.weight"), &[h * dh, d], 0.5);
            w.random(&format!("{p}.self_attn.k_proj.weight"), &[kvh * dh, d], 0.5);
            w.random(&format!("{p}.self_attn.v_proj.weight"), &[kvh * dh, d], 0.5);
            w.random(&format!("{p}.self_attn.o_proj.weight"), &[d, h * dh], 0.5);
            w.random(
                &format!("{p}.mlp.gate_proj.weight"),
                &[c.intermediate_size, d],
                0.5,
            );
            w.random(
                &format!("{p}.mlp.up_proj.weight"),
                &[c.intermediate_size, d],
                0.5,
            );
            w.random(
                &format!("{p}.mlp.down_proj.weight"),
                &[d, c.intermediate_size],
                0.5,
            );
        }
        w
    }

    pub fn tiny_model(device: &Device) -> LlamaModel {
        let c = tiny_config();
        LlamaModel::from_source(&tiny_weights(&c, 11), &c, device).unwrap()
    }

    fn int2(rows: Vec<Vec<i64>>, device: &Device) -> Tensor<2, Int> {
        let (b, t) = (rows.len(), rows[0].len());
        Tensor::from_data(TensorData::new(rows.concat(), [b, t]), device)
    }

    fn max_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
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
        let mut steps = Vec::new();
        let h = model.forward_hidden(
            int2(vec![ids[..3].to_vec()], &device),
            int2(vec![vec![1; 3]], &device),
            Some(&mut cache),
        );
        steps.push(model.logits(h));
        for (k, &tok) in ids.iter().enumerate().skip(3) {
            let h = model.forward_hidden(
                int2(vec![vec![tok]], &device),
                int2(vec![vec![1; k + 1]], &device),
                Some(&mut cache),
            );
            steps.push(model.logits(h));
        }
        assert_eq!(cache.len(), 6);
        let incremental = Tensor::cat(steps, 1);
        let diff = max_diff(full, incremental);
        assert!(diff < 1e-4, "cache vs full: {diff}");
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
    }

    #[test]
    fn unsupported_hf_options_are_errors() {
        let dir = std::env::temp_dir().join(format!("plumb-llama-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let base = r#""model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2"#;
        std::fs::write(&path, format!("{{{base}}}")).unwrap();
        let c = LlamaConfig::from_hf_file(&path).unwrap();
        assert_eq!(
            (c.head_dim, c.rope_theta, c.attention_bias),
            (4, 10000.0, false)
        );
        std::fs::write(
            &path,
            format!("{{{base}, \"rope_scaling\": {{\"type\": \"yarn\", \"factor\": 4.0}}}}"),
        )
        .unwrap();
        let err = LlamaConfig::from_hf_file(&path).unwrap_err().to_string();
        assert!(err.contains("rope_scaling"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[cfg(test)]
mod generation_tests {
    use super::tests::tiny_model;
    use super::*;
    use crate::device::test_device;
    use crate::sampling::{SamplingConfig, generate, log_softmax};
    use tokenizers::Tokenizer;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;

    /// A 32-word tokenizer matching the tiny model's vocabulary ("t0" … "t31", pad = t0).
    fn tokenizer() -> TextTokenizer {
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

    fn lm() -> CausalLm {
        let device = test_device();
        CausalLm {
            model: tiny_model(&device),
            config: tests::tiny_config(),
            tokenizer: tokenizer(),
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
