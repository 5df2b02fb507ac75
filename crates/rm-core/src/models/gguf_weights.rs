//! GGUF files as a [`WeightSource`] under HF Llama names: llama.cpp's tensor names mapped in one
//! place ([`gguf_name`]), with the q/k row permutation of llama.cpp's converter undone.
//!
//! llama.cpp's converter reorders the rows of each head of `q_proj`/`k_proj` from HF's "rotate
//! half" RoPE layout (first half, second half) to interleaved pairs (llama.cpp's "normal" RoPE
//! rotates adjacent pairs). Row `h·d + 2i + j` of the GGUF tensor is row `h·d + j·d/2 + i` of the
//! HF one (`d` the head dim); [`unpermute_rows`] restores HF's order at load time, so one RoPE
//! implementation (HF's rotate-half) serves GGUF and safetensors checkpoints alike. The SmolLM2
//! parity test (`tests/parity_smollm2.rs`) confirms the layout against transformers.

use anyhow::{Result, bail};

use super::llama::LlamaConfig;
use super::weights::{HostTensor, WeightSource};
use crate::gguf::GgufFile;

/// A GGUF Llama checkpoint read under HF names.
pub struct GgufWeights {
    /// The parsed file.
    pub file: GgufFile,
    /// The config its metadata describes.
    pub config: LlamaConfig,
}

impl std::fmt::Debug for GgufWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWeights")
            .field("file", &self.file)
            .finish()
    }
}

/// HF name → llama.cpp name (and, for q/k, the head count whose permutation to undo): the one
/// place the two namings meet. `None` for names llama.cpp has no counterpart for.
pub fn gguf_name(hf: &str, config: &LlamaConfig) -> Option<(String, Option<usize>)> {
    match hf {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
        "lm_head.weight" => return Some(("output.weight".into(), None)),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (gguf, heads) = match name {
        "input_layernorm.weight" => ("attn_norm.weight", None),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
        "self_attn.q_proj.weight" => ("attn_q.weight", Some(config.num_attention_heads)),
        "self_attn.k_proj.weight" => ("attn_k.weight", Some(config.num_key_value_heads)),
        "self_attn.v_proj.weight" => ("attn_v.weight", None),
        "self_attn.o_proj.weight" => ("attn_output.weight", None),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
        "mlp.up_proj.weight" => ("ffn_up.weight", None),
        "mlp.down_proj.weight" => ("ffn_down.weight", None),
        _ => return None,
    };
    Some((format!("blk.{layer}.{gguf}"), heads))
}

/// Undoes llama.cpp's q/k row permutation of a row-major `[heads·head_dim, cols]` matrix
/// (`rows` must be a multiple of `2·heads`).
pub fn unpermute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    reorder_rows(values, rows, cols, heads, false)
}

/// Moves the rows of each head between HF's layout (halves) and llama.cpp's (interleaved
/// pairs): `to_gguf` applies the converter's permutation, otherwise its inverse.
pub(crate) fn reorder_rows(
    values: &[f32],
    rows: usize,
    cols: usize,
    heads: usize,
    to_gguf: bool,
) -> Vec<f32> {
    assert!(
        heads > 0 && rows.is_multiple_of(2 * heads) && values.len() == rows * cols,
        "reorder_rows: {rows}x{cols} is not {heads} heads of even size"
    );
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let interleaved = h * head_dim + 2 * i + j;
                let halves = h * head_dim + j * half + i;
                let (src, dst) = if to_gguf {
                    (halves, interleaved)
                } else {
                    (interleaved, halves)
                };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

impl GgufWeights {
    /// Wraps a parsed file; the config comes from its `llama.*` metadata (the LM head is tied
    /// when the file has no `output.weight`).
    pub fn new(file: GgufFile) -> Result<Self> {
        let tied = file.tensor_info("output.weight").is_none();
        let config = LlamaConfig::from_gguf(&file, tied)?;
        Ok(Self { file, config })
    }
}

impl WeightSource for GgufWeights {
    fn names(&self) -> Vec<String> {
        let mut names = vec![
            "model.embed_tokens.weight".to_string(),
            "model.norm.weight".to_string(),
        ];
        if self.file.tensor_info("output.weight").is_some() {
            names.push("lm_head.weight".into());
        }
        for i in 0..self.config.num_hidden_layers {
            for n in [
                "input_layernorm.weight",
                "post_attention_layernorm.weight",
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
                "self_attn.o_proj.weight",
                "mlp.gate_proj.weight",
                "mlp.up_proj.weight",
                "mlp.down_proj.weight",
            ] {
                names.push(format!("model.layers.{i}.{n}"));
            }
        }
        names
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name, &self.config).is_some_and(|(g, _)| self.file.tensor_info(&g).is_some())
    }

    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let Some((gguf, heads)) = gguf_name(name, &self.config) else {
            bail!("{name} has no llama.cpp counterpart");
        };
        let (shape, values) = self
            .file
            .tensor_f32(&gguf)
            .map_err(|e| anyhow::anyhow!("{e} (wanted as {name})"))?;
        super::weights::check_finite("GGUF file", &format!("{gguf} (wanted as {name})"), &values)?;
        let values = match heads {
            Some(heads) => {
                if shape.len() != 2 || !shape[0].is_multiple_of(2 * heads) {
                    bail!(
                        "tensor {gguf} (wanted as {name}) has shape {shape:?}, not {heads} heads of even size"
                    );
                }
                unpermute_rows(&values, shape[0], shape[1], heads)
            }
            None => values,
        };
        Ok(HostTensor { shape, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::gguf::test_support::Builder;
    use crate::models::llama::LlamaModel;
    use crate::models::llama::tests::{int2, tiny_config, tiny_weights};

    /// llama.cpp's converter permutation (the inverse of [`unpermute_rows`]).
    fn permute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
        super::reorder_rows(values, rows, cols, heads, true)
    }

    #[test]
    fn unpermute_inverts_the_converter_permutation() {
        // One head, head_dim 4, 1 column: HF rows [a0, a1, b0, b1] (halves a, b) are stored by
        // llama.cpp interleaved as [a0, b0, a1, b1].
        let gguf = [10.0, 20.0, 11.0, 21.0];
        assert_eq!(unpermute_rows(&gguf, 4, 1, 1), [10.0, 11.0, 20.0, 21.0]);
        // Two heads, two columns.
        let gguf: Vec<f32> = (0..16).map(|x| x as f32).collect();
        let hf = unpermute_rows(&gguf, 8, 2, 2);
        // head 0 rows in GGUF order 0,1,2,3 → HF order 0,2,1,3.
        assert_eq!(&hf[..8], &[0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);
        let x: Vec<f32> = (0..48).map(|x| x as f32).collect();
        assert_eq!(unpermute_rows(&permute_rows(&x, 16, 3, 2), 16, 3, 2), x);
    }

    /// The tiny HF model written as a llama.cpp-converted GGUF file (q/k rows permuted).
    fn tiny_gguf(drop: Option<&str>) -> Vec<u8> {
        let c = tiny_config();
        let w = tiny_weights(&c, 8);
        let tokens: Vec<String> = (0..c.vocab_size).map(|i| format!("t{i}")).collect();
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut b = Builder::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.embedding_length", 16)
            .kv_u32("llama.block_count", 2)
            .kv_u32("llama.attention.head_count", 4)
            .kv_u32("llama.attention.head_count_kv", 2)
            .kv_u32("llama.feed_forward_length", 24)
            .kv_u32("llama.context_length", 64)
            .kv_u32("llama.rope.dimension_count", 4)
            .kv_str_array("tokenizer.ggml.tokens", &tokens);
        for (k, v) in [
            ("llama.attention.layer_norm_rms_epsilon", 1e-5f32),
            ("llama.rope.freq_base", 10000.0),
        ] {
            b.kv.push((k.into(), 6, v.to_le_bytes().to_vec()));
        }
        for (name, t) in &w.tensors {
            let (gguf, heads) = gguf_name(name, &c).unwrap();
            if Some(gguf.as_str()) == drop {
                continue;
            }
            let values = match heads {
                Some(h) => permute_rows(&t.values, t.shape[0], t.shape[1], h),
                None => t.values.clone(),
            };
            let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
            b = b.tensor_f32(&gguf, &dims, &values);
        }
        b.build()
    }

    #[test]
    fn a_converted_gguf_file_is_the_hf_model() {
        let device = test_device();
        let weights = GgufWeights::new(GgufFile::from_bytes(tiny_gguf(None)).unwrap()).unwrap();
        let mut expected = tiny_config();
        expected.rms_norm_eps = 1e-5f32 as f64;
        assert_eq!(weights.config, expected);
        assert!(!weights.contains("lm_head.weight"));
        assert_eq!(weights.names().len(), 2 + 2 * 9);
        let from_gguf = LlamaModel::from_source(&weights, &weights.config, &device).unwrap();
        let from_hf =
            LlamaModel::from_source(&tiny_weights(&tiny_config(), 8), &expected, &device).unwrap();
        let ids = int2(vec![vec![1, 2, 3, 4, 5]], &device);
        let mask = int2(vec![vec![1; 5]], &device);
        let diff = (from_gguf.forward(ids.clone(), mask.clone()) - from_hf.forward(ids, mask))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn a_missing_gguf_tensor_names_both_names() {
        let device = test_device();
        let file = GgufFile::from_bytes(tiny_gguf(Some("blk.1.ffn_up.weight"))).unwrap();
        let weights = GgufWeights::new(file).unwrap();
        let err = format!(
            "{:#}",
            LlamaModel::from_source(&weights, &weights.config, &device).unwrap_err()
        );
        assert!(
            err.contains("blk.1.ffn_up.weight")
                && err.contains("model.layers.1.mlp.up_proj.weight"),
            "{err}"
        );
    }
}
