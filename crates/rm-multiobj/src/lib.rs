//! # rm-multiobj
//!
//! Multi-objective and personalized reward models on frozen backbone features.
//!
//! - [`features`]: a backbone's pooled features of (prompt, response) and prompt texts, cached
//!   on disk by content hash (the ArmoRM recipe: embed once, then fit everything on the cache);
//! - [`rated`]: rated-attribute JSONL (HelpSteer2's layout or a nested `scores` object);
//! - [`heads`]: attribute heads — ridge regression in closed form, Bradley–Terry by Newton;
//! - [`gating`]: ArmoRM's prompt-conditioned gating network and its verbosity debiasing;
//! - [`combine`]: weighted sum, log-sigmoid conjunction, constrained, Tchebycheff; Pareto
//!   fronts, hypervolume, rank / best-of-N;
//! - [`population`]: a synthetic two-population preference set built from HH-RLHF;
//! - [`personal`]: one shared Bradley–Terry model vs PAL (ideal points) vs VPL (a latent user
//!   variable);
//! - [`orchestrator`]: the Preference Orchestrator — prompt-specific objective weights;
//! - [`dmoerm`]: DMoERM — a task router over per-task capability experts aggregated by an MLP;
//!   [`dmoerm_run`]: its recipe and run (`plumb multiobj dmoerm`);
//! - [`model`]: the saved multi-objective model folder that scores raw texts;
//! - [`pipeline`]: the recipes and runs behind `plumb multiobj train` / `population-test`.

pub mod combine;
pub mod dmoerm;
pub mod dmoerm_run;
pub mod features;
pub mod gating;
pub mod heads;
pub mod linalg;
pub mod model;
pub mod orchestrator;
pub mod personal;
pub mod pipeline;
pub mod population;
pub mod rated;

use anyhow::Result;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand::rngs::StdRng;

/// A tensor's values on the host, row-major.
pub(crate) fn tensor_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a tensor: {e:?}"))
}

/// A `[rows, cols]` tensor from host rows.
pub(crate) fn tensor_2d(rows: &[&[f32]], device: &Device) -> Tensor<2> {
    let cols = rows.first().map_or(0, |r| r.len());
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), cols]), device)
}

/// A `[d_in] → [d_out]` linear layer drawn from U(−1/√d_in, 1/√d_in) (PyTorch's default range)
/// by a host RNG, so runs are the same on every device; the bias starts at 0.
pub(crate) fn seeded_linear(
    d_in: usize,
    d_out: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Linear {
    let bound = 1.0 / (d_in as f64).sqrt();
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, d_out]), device)),
        bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

/// A host copy of a linear layer (`weight` `[d_in, d_out]` row-major, `bias` `[d_out]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostLinear {
    pub d_in: usize,
    pub d_out: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl HostLinear {
    pub(crate) fn from_linear(l: &Linear) -> Result<Self> {
        let [d_in, d_out] = l.weight.val().dims();
        let bias = match &l.bias {
            Some(b) => tensor_vec(b.val())?,
            None => vec![0.0; d_out],
        };
        Ok(Self {
            d_in,
            d_out,
            weight: tensor_vec(l.weight.val())?,
            bias,
        })
    }

    /// `y = xW + b`.
    pub fn forward(&self, x: &[f32]) -> Vec<f64> {
        let mut y: Vec<f64> = self.bias.iter().map(|&b| b as f64).collect();
        for (i, &xi) in x.iter().enumerate().take(self.d_in) {
            let row = &self.weight[i * self.d_out..(i + 1) * self.d_out];
            for (yj, &w) in y.iter_mut().zip(row) {
                *yj += xi as f64 * w as f64;
            }
        }
        y
    }
}
