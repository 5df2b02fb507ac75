//! Tiny, deterministic model folders for the tests and examples of downstream crates (a trainer's
//! test needs a real folder to load, not a download): a Llama-family decoder with a word-level
//! tokenizer, in the HF layout [`crate::models::llama::CausalLm::load`] reads.

use std::path::Path;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;

use crate::checkpoint::save_host_tensors;
use crate::models::weights::HostTensor;

/// Vocabulary of [`write_tiny_llama`]: the words `w0` … `w{N−1}` (pad and unknown = `w0`).
pub const TINY_VOCAB: usize = 48;

/// Writes a 2-layer Llama (hidden 16, 4 query and 2 key/value heads, tied embeddings, 64
/// positions) with weights uniform in ±0.5 drawn from `seed`, and a whitespace word-level
/// tokenizer over `w0 … w47`, into `dir` (`config.json`, `model.safetensors`,
/// `tokenizer.json`).
pub fn write_tiny_llama(dir: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (v, d, ff, layers, heads, kv_heads, head_dim) = (TINY_VOCAB, 16, 24, 2, 4, 2, 4);
    let config = serde_json::json!({
        "model_type": "llama",
        "vocab_size": v,
        "hidden_size": d,
        "intermediate_size": ff,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 64,
        "tie_word_embeddings": true,
        "eos_token_id": 1,
    });
    std::fs::write(dir.join("config.json"), config.to_string())
        .with_context(|| format!("writing {}", dir.join("config.json").display()))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensor = |name: String, shape: Vec<usize>, scale: f32| {
        let n = shape.iter().product();
        let values = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        (name, HostTensor { shape, values })
    };
    let mut tensors = vec![
        tensor("model.embed_tokens.weight".into(), vec![v, d], 1.0),
        tensor("model.norm.weight".into(), vec![d], 1.0),
    ];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        tensors.push(tensor(format!("{p}.input_layernorm.weight"), vec![d], 1.0));
        tensors.push(tensor(
            format!("{p}.post_attention_layernorm.weight"),
            vec![d],
            1.0,
        ));
        for (name, rows, cols) in [
            ("self_attn.q_proj", heads * head_dim, d),
            ("self_attn.k_proj", kv_heads * head_dim, d),
            ("self_attn.v_proj", kv_heads * head_dim, d),
            ("self_attn.o_proj", d, heads * head_dim),
            ("mlp.gate_proj", ff, d),
            ("mlp.up_proj", ff, d),
            ("mlp.down_proj", d, ff),
        ] {
            tensors.push(tensor(format!("{p}.{name}.weight"), vec![rows, cols], 0.5));
        }
    }
    save_host_tensors(&dir.join("model.safetensors"), &tensors)?;
    let vocab = (0..v).map(|i| (format!("w{i}"), i as u32)).collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("w0".into())
        .build()
        .map_err(|e| anyhow::anyhow!("building the tiny tokenizer: {e}"))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer.with_pre_tokenizer(Some(WhitespaceSplit));
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("writing the tiny tokenizer: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::models::llama::CausalLm;

    #[test]
    fn the_tiny_llama_loads_and_depends_on_its_seed() {
        let root = crate::checkpoint::tests::temp_dir("fixtures");
        write_tiny_llama(&root.join("a"), 1).unwrap();
        write_tiny_llama(&root.join("b"), 2).unwrap();
        let device = test_device();
        let a = CausalLm::load(root.join("a"), &device).unwrap();
        let b = CausalLm::load(root.join("b"), &device).unwrap();
        assert_eq!(a.tokenizer.vocab_size(), TINY_VOCAB);
        assert_eq!(a.eos_id, Some(1));
        let ids = a.tokenizer.encode("w3 w4 w5", false).unwrap();
        assert_eq!(ids, [3, 4, 5]);
        let text = vec!["w3 w4 w5".to_string()];
        let la = crate::logprobs::text_logprobs(&a, &text, 1).unwrap()[0].sum_logprob;
        let lb = crate::logprobs::text_logprobs(&b, &text, 1).unwrap()[0].sum_logprob;
        assert!(la.is_finite() && lb.is_finite() && la != lb, "{la} {lb}");
    }
}
