//! Backbones and their weight loading: one file per model family ([`bert`], [`llama`]), each
//! mapping its source tensor names onto its burn modules in one place.
//!
//! Sources implement [`weights::WeightSource`]: HF safetensors folders
//! ([`safetensors::SafetensorsWeights`]) and GGUF files ([`gguf_weights`]).

pub mod action_heads;
pub mod bert;
pub mod gguf_weights;
pub mod heads;
pub mod host_attention;
pub mod host_math;
pub mod host_ops;
pub mod llama;
pub mod policy_folder;
pub mod pooling;
pub mod reward;
pub mod safetensors;
pub mod weights;

use anyhow::{Result, bail};
use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Tensor, TensorData};

use weights::{HostTensor, WeightSource};

/// Reads `name` and checks its shape.
pub(crate) fn host_tensor(
    source: &dyn WeightSource,
    name: &str,
    expected: &[usize],
) -> Result<HostTensor> {
    let t = source.tensor(name)?;
    if t.shape != expected {
        bail!(
            "tensor {name} has shape {:?}, the config implies {:?}",
            t.shape,
            expected
        );
    }
    Ok(t)
}

/// A parameter tensor from host data.
pub(crate) fn param<const D: usize>(
    host: HostTensor,
    shape: [usize; D],
    device: &Device,
) -> Param<Tensor<D>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(host.values, shape),
        device,
    ))
}

/// Transposes a row-major `[rows, cols]` matrix.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// A `Linear` from a PyTorch-layout weight `[d_out, d_in]` (transposed to burn's `[d_in, d_out]`)
/// and an optional bias `[d_out]`.
pub(crate) fn load_linear(
    source: &dyn WeightSource,
    weight: &str,
    bias: Option<&str>,
    d_in: usize,
    d_out: usize,
    device: &Device,
) -> Result<Linear> {
    let w = host_tensor(source, weight, &[d_out, d_in])?;
    let w = HostTensor {
        shape: vec![d_in, d_out],
        values: transpose(&w.values, d_out, d_in),
    };
    let bias = match bias {
        Some(name) => Some(param(host_tensor(source, name, &[d_out])?, [d_out], device)),
        None => None,
    };
    Ok(Linear {
        weight: param(w, [d_in, d_out], device),
        bias,
    })
}

/// A `LayerNorm` from weight and (optional) bias vectors.
pub(crate) fn load_layer_norm(
    source: &dyn WeightSource,
    weight: &str,
    bias: Option<&str>,
    d: usize,
    eps: f64,
    device: &Device,
) -> Result<LayerNorm> {
    let mut ln = LayerNormConfig::new(d)
        .with_epsilon(eps)
        .with_bias(bias.is_some())
        .init(device);
    ln.gamma = param(host_tensor(source, weight, &[d])?, [d], device);
    if let Some(b) = bias {
        ln.beta = Some(param(host_tensor(source, b, &[d])?, [d], device));
    }
    Ok(ln)
}

/// An `Embedding` from a `[vocab, d]` table.
pub(crate) fn load_embedding(
    source: &dyn WeightSource,
    name: &str,
    vocab: usize,
    d: usize,
    device: &Device,
) -> Result<Embedding> {
    Ok(Embedding {
        weight: param(host_tensor(source, name, &[vocab, d])?, [vocab, d], device),
    })
}

/// The first name of `candidates` that `source` holds (for checkpoints with old or prefixed
/// names), or the first candidate (so the error names it).
pub(crate) fn first_present<'a>(source: &dyn WeightSource, candidates: &[&'a str]) -> &'a str {
    candidates
        .iter()
        .copied()
        .find(|n| source.contains(n))
        .unwrap_or(candidates[0])
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;

    use anyhow::{Result, anyhow};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::weights::{HostTensor, WeightSource};

    /// An in-memory weight source of random tensors, for tests.
    #[derive(Default)]
    pub struct MemoryWeights {
        pub tensors: BTreeMap<String, HostTensor>,
        rng: Option<StdRng>,
    }

    impl MemoryWeights {
        pub fn seeded(seed: u64) -> Self {
            Self {
                tensors: BTreeMap::new(),
                rng: Some(StdRng::seed_from_u64(seed)),
            }
        }

        /// Adds a tensor of uniform values in [-scale, scale].
        pub fn random(&mut self, name: &str, shape: &[usize], scale: f32) {
            let rng = self.rng.as_mut().expect("seeded");
            let n: usize = shape.iter().product();
            let values = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
            self.tensors.insert(
                name.into(),
                HostTensor {
                    shape: shape.to_vec(),
                    values,
                },
            );
        }
    }

    impl WeightSource for MemoryWeights {
        fn names(&self) -> Vec<String> {
            self.tensors.keys().cloned().collect()
        }
        fn contains(&self, name: &str) -> bool {
            self.tensors.contains_key(name)
        }
        fn tensor(&self, name: &str) -> Result<HostTensor> {
            self.tensors
                .get(name)
                .cloned()
                .ok_or_else(|| anyhow!("no tensor {name} in the test weights"))
        }
    }
}
