//! ArmoRM's mixture-of-experts stage (Wang et al. 2024, "Interpretable Preferences via
//! Multi-Objective Reward Modeling and Mixture-of-Experts"; RLHFlow's `armo-rm/stage-2_train.py`).
//!
//! - Gating: a ReLU MLP on the prompt's features `g(x)` → `w = β · softmax(g(x) / τ)` over the K
//!   attributes, with a fixed temperature `τ` (ArmoRM: 10) and a learned scale `β` (init 1).
//!   The reward of a response is `R(x, y) = Σₖ wₖ(x) r'ₖ(x, y)`.
//! - Training: the attribute heads are frozen; the gating network minimizes the Bradley–Terry
//!   loss `−mean log σ(R(x, y_c) − R(x, y_r))` over preference pairs.
//! - Verbosity debiasing: `r'ᵢ = rᵢ − λᵢ r_verbosity`; λᵢ is the first value of an ascending grid
//!   (ArmoRM's: 0, 0.01, 0.025, 0.05, …, 0.95) at which the Spearman correlation of `r'ᵢ` with
//!   `r_verbosity` on a reference set is ≤ a threshold (ArmoRM: 0.03); an attribute that never
//!   gets there keeps λᵢ = 1, and the verbosity attribute itself gets λ = 1 (so `r'_verbosity = 0`),
//!   both as in ArmoRM's code.

use anyhow::{Result, bail};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::{log_sigmoid, relu, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::linalg::spearman;
use crate::{HostLinear, seeded_linear, tensor_2d, tensor_vec};

/// ArmoRM's penalty grid.
pub const ARMORM_PENALTIES: [f64; 24] = [
    0.0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55,
    0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
];

/// The verbosity penalties found on a reference set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerbosityDebias {
    /// Index of the verbosity attribute.
    pub verbosity: usize,
    /// λᵢ per attribute (1 for the verbosity attribute itself).
    pub penalties: Vec<f64>,
    /// Spearman ρ(rᵢ, r_verbosity) before and ρ(r'ᵢ, r_verbosity) after, on the reference set.
    pub spearman_before: Vec<f64>,
    pub spearman_after: Vec<f64>,
    pub threshold: f64,
}

impl VerbosityDebias {
    /// No debiasing (every λ = 0).
    pub fn none(k: usize) -> Self {
        Self {
            verbosity: usize::MAX,
            penalties: vec![0.0; k],
            spearman_before: vec![],
            spearman_after: vec![],
            threshold: f64::NAN,
        }
    }

    /// `r'ᵢ = rᵢ − λᵢ r_verbosity`.
    pub fn apply(&self, r: &[f64]) -> Vec<f64> {
        let Some(&v) = r.get(self.verbosity) else {
            return r.to_vec();
        };
        r.iter()
            .zip(&self.penalties)
            .map(|(x, l)| x - l * v)
            .collect()
    }
}

/// Finds ArmoRM's verbosity penalties (module docs) on reference attribute rewards
/// (`rewards[n][k]`).
pub fn find_verbosity_penalties(
    rewards: &[Vec<f64>],
    verbosity: usize,
    threshold: f64,
    grid: &[f64],
) -> Result<VerbosityDebias> {
    let Some(k) = rewards.first().map(Vec::len) else {
        bail!("verbosity debiasing: the reference set is empty");
    };
    if verbosity >= k {
        bail!("verbosity debiasing: attribute {verbosity} is out of range for {k} attributes");
    }
    if rewards.len() < 3 {
        bail!(
            "verbosity debiasing: {} reference rows (at least 3)",
            rewards.len()
        );
    }
    let column = |i: usize| -> Vec<f64> { rewards.iter().map(|r| r[i]).collect() };
    let rv = column(verbosity);
    let before: Vec<f64> = (0..k).map(|i| spearman(&column(i), &rv)).collect();
    let mut penalties = vec![1.0; k];
    let mut open: Vec<usize> = (0..k).filter(|&i| i != verbosity).collect();
    for &lambda in grid {
        open.retain(|&i| {
            let adjusted: Vec<f64> = rewards
                .iter()
                .map(|r| r[i] - lambda * r[verbosity])
                .collect();
            if spearman(&adjusted, &rv) <= threshold {
                penalties[i] = lambda;
                false
            } else {
                true
            }
        });
        if open.is_empty() {
            break;
        }
    }
    let debias = VerbosityDebias {
        verbosity,
        penalties,
        spearman_before: before,
        spearman_after: vec![],
        threshold,
    };
    let adjusted: Vec<Vec<f64>> = rewards.iter().map(|r| debias.apply(r)).collect();
    let after = (0..k)
        .map(|i| spearman(&adjusted.iter().map(|r| r[i]).collect::<Vec<_>>(), &rv))
        .collect();
    Ok(VerbosityDebias {
        spearman_after: after,
        ..debias
    })
}

/// Gating settings (the `[gating]` recipe section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatingConfig {
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Hidden layers (ArmoRM: 3 of 1024).
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// τ (ArmoRM: 10).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// β's initial value (ArmoRM: 1).
    #[serde(default = "one")]
    pub logit_scale: f64,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Full-batch AdamW steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default)]
    pub seed: u64,
}

fn default_hidden() -> usize {
    256
}
fn default_layers() -> usize {
    2
}
fn default_temperature() -> f64 {
    10.0
}
fn one() -> f64 {
    1.0
}
fn default_lr() -> f64 {
    1e-3
}
fn default_steps() -> usize {
    300
}

impl Default for GatingConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// The gating MLP (module docs): hidden ReLU layers, an output layer of K logits, β.
#[derive(Module, Debug)]
pub struct GatingNetwork {
    pub layers: Vec<Linear>,
    pub logit_scale: Param<Tensor<1>>,
}

impl GatingNetwork {
    pub fn new(config: &GatingConfig, d_in: usize, k: usize, device: &Device) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed ^ 0x6a7e);
        let mut layers = Vec::new();
        let mut d = d_in;
        for _ in 0..config.layers {
            layers.push(seeded_linear(d, config.hidden, &mut rng, device));
            d = config.hidden;
        }
        layers.push(seeded_linear(d, k, &mut rng, device));
        Self {
            layers,
            logit_scale: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![config.logit_scale as f32], [1]),
                device,
            )),
        }
    }

    /// The MLP's output `g(x)`, `[B, K]`.
    pub fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        let n = self.layers.len();
        let mut h = x;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(h);
            if i + 1 < n {
                h = relu(h);
            }
        }
        h
    }

    /// `w = β · softmax(g(x) / τ)`, `[B, K]`.
    pub fn weights(&self, x: Tensor<2>, temperature: f64) -> Tensor<2> {
        let h = self.logits(x);
        let [b, k] = h.dims();
        let w = softmax(h.div_scalar(temperature), 1);
        w * self.logit_scale.val().reshape([1, 1]).expand([b, k])
    }
}

/// `R = Σₖ wₖ rₖ` per row: `[B, K]` × `[B, K]` → `[B]`.
pub fn gated_reward(weights: Tensor<2>, rewards: Tensor<2>) -> Tensor<1> {
    let b = weights.dims()[0];
    (weights * rewards).sum_dim(1).reshape([b])
}

/// The Bradley–Terry loss `−mean log σ(R_c − R_r)` (Bradley & Terry 1952).
pub fn bradley_terry_loss(chosen: Tensor<1>, rejected: Tensor<1>) -> Tensor<1> {
    log_sigmoid(chosen - rejected).mean().neg()
}

/// A trained gating network on the host: scoring needs no device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostGating {
    pub layers: Vec<HostLinear>,
    pub logit_scale: f64,
    pub temperature: f64,
}

impl HostGating {
    pub fn from_network(net: &GatingNetwork, temperature: f64) -> Result<Self> {
        Ok(Self {
            layers: net
                .layers
                .iter()
                .map(HostLinear::from_linear)
                .collect::<Result<_>>()?,
            logit_scale: tensor_vec(net.logit_scale.val())?[0] as f64,
            temperature,
        })
    }

    /// `w = β · softmax(g(x) / τ)` for one prompt.
    pub fn weights(&self, x: &[f32]) -> Vec<f64> {
        let n = self.layers.len();
        let mut h: Vec<f32> = x.to_vec();
        let mut logits = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let y = l.forward(&h);
            if i + 1 < n {
                h = y.iter().map(|&v| v.max(0.0) as f32).collect();
            } else {
                logits = y;
            }
        }
        let z: Vec<f64> = logits.iter().map(|v| v / self.temperature).collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| self.logit_scale * v / s).collect()
    }
}

/// What gating training saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatingTrace {
    pub first_loss: f64,
    pub last_loss: f64,
    pub steps: usize,
}

/// Trains the gating network with frozen (already debiased) attribute rewards: `prompts[n]` the
/// prompt features, `chosen[n]` / `rejected[n]` the K attribute rewards of each pair's responses.
pub fn train_gating(
    config: &GatingConfig,
    prompts: &[&[f32]],
    chosen: &[Vec<f64>],
    rejected: &[Vec<f64>],
    device: &Device,
) -> Result<(HostGating, GatingTrace)> {
    let n = prompts.len();
    if n == 0 || chosen.len() != n || rejected.len() != n {
        bail!(
            "gating: {n} prompts, {} chosen and {} rejected reward rows (need the same number > 0)",
            chosen.len(),
            rejected.len()
        );
    }
    let k = chosen[0].len();
    if !(config.temperature > 0.0 && config.temperature.is_finite()) {
        bail!("gating.temperature {} must be > 0", config.temperature);
    }
    let ad = device.clone().autodiff();
    let x = tensor_2d(prompts, &ad);
    let rows = |r: &[Vec<f64>]| -> Tensor<2> {
        let flat: Vec<f32> = r.iter().flatten().map(|&v| v as f32).collect();
        Tensor::from_data(TensorData::new(flat, [n, k]), &ad)
    };
    let (rc, rr) = (rows(chosen), rows(rejected));
    let mut net = GatingNetwork::new(config, prompts[0].len(), k, &ad);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init();
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for step in 0..config.steps {
        let w = net.weights(x.clone(), config.temperature);
        let loss = bradley_terry_loss(
            gated_reward(w.clone(), rc.clone()),
            gated_reward(w, rr.clone()),
        );
        let value = tensor_vec(loss.clone())?[0] as f64;
        if !value.is_finite() {
            bail!("gating: the loss became {value} at step {step}");
        }
        if step == 0 {
            first = value;
        }
        last = value;
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(config.lr, net, grads);
    }
    Ok((
        HostGating::from_network(&net, config.temperature)?,
        GatingTrace {
            first_loss: first,
            last_loss: last,
            steps: config.steps,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::device::test_device;

    fn small() -> GatingConfig {
        GatingConfig {
            hidden: 5,
            layers: 1,
            temperature: 2.0,
            logit_scale: 1.0,
            steps: 60,
            lr: 0.05,
            ..GatingConfig::default()
        }
    }

    #[test]
    fn weights_sum_to_the_scale_and_match_the_host_copy() {
        let device = test_device();
        let net = GatingNetwork::new(&small(), 3, 4, &device);
        let rows = [[0.5f32, -1.0, 2.0], [3.0, 0.0, -0.5]];
        let x = tensor_2d(&[&rows[0], &rows[1]], &device);
        let w = tensor_vec(net.weights(x, 2.0)).unwrap();
        let host = HostGating::from_network(&net, 2.0).unwrap();
        for b in 0..2 {
            let s: f32 = w[b * 4..(b + 1) * 4].iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "row {b} sums to {s}");
            let hw = host.weights(&rows[b]);
            assert!((hw.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            for j in 0..4 {
                assert!((hw[j] - w[b * 4 + j] as f64).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn bradley_terry_gradient_matches_finite_differences() {
        let device = test_device().autodiff();
        let net = GatingNetwork::new(&small(), 3, 2, &device);
        let x = tensor_2d(&[&[0.5f32, -1.0, 2.0], &[1.0, 1.0, 0.0]], &device);
        let rc = tensor_2d(&[&[1.0f32, -2.0], &[0.5, 0.3]], &device);
        let rr = tensor_2d(&[&[0.0f32, 1.0], &[-1.0, 0.4]], &device);
        let loss = |scale: f32, net: &GatingNetwork| -> Tensor<1> {
            let mut net = net.clone();
            net.logit_scale = Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![scale], [1]),
                &device,
            ));
            let w = net.weights(x.clone(), 2.0);
            bradley_terry_loss(
                gated_reward(w.clone(), rc.clone()),
                gated_reward(w, rr.clone()),
            )
        };
        let mut probe = net.clone();
        probe.logit_scale = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.5f32], [1]),
            &device,
        ));
        let l = {
            let w = probe.weights(x.clone(), 2.0);
            bradley_terry_loss(
                gated_reward(w.clone(), rc.clone()),
                gated_reward(w, rr.clone()),
            )
        };
        let grads2 = l.backward();
        let analytic = tensor_vec(probe.logit_scale.val().grad(&grads2).unwrap()).unwrap()[0];
        let eps = 1e-2f32;
        let numeric = (tensor_vec(loss(1.5 + eps, &net)).unwrap()[0]
            - tensor_vec(loss(1.5 - eps, &net)).unwrap()[0])
            / (2.0 * eps);
        assert!(
            (numeric - analytic).abs() < 2e-3 * (1.0 + numeric.abs()),
            "finite difference {numeric} vs autodiff {analytic}"
        );
        // By hand: with R = β Σ wₖ rₖ, dL/dβ = −mean σ(−Δ) Δ/β where Δ = R_c − R_r.
        let w = tensor_vec(net.weights(x.clone(), 2.0)).unwrap(); // β = 1 here
        let rcv = [[1.0, -2.0], [0.5, 0.3]];
        let rrv = [[0.0, 1.0], [-1.0, 0.4]];
        let mut by_hand = 0.0f64;
        for b in 0..2 {
            let d1: f64 = (0..2)
                .map(|j| w[b * 2 + j] as f64 * (rcv[b][j] - rrv[b][j]))
                .sum();
            let delta = 1.5 * d1;
            by_hand += -crate::linalg::sigmoid(-delta) * d1 / 2.0;
        }
        assert!(
            (by_hand - analytic as f64).abs() < 1e-4,
            "{by_hand} vs {analytic}"
        );
    }

    #[test]
    fn gating_learns_which_attribute_decides_per_prompt() {
        // Prompt feature sign says which attribute decides the pair; the other is anti-correlated.
        let device = test_device();
        let prompts: Vec<Vec<f32>> = (0..40)
            .map(|i| vec![if i % 2 == 0 { 1.0 } else { -1.0 }, 0.3])
            .collect();
        let chosen: Vec<Vec<f64>> = (0..40)
            .map(|i| {
                if i % 2 == 0 {
                    vec![1.0, -1.0]
                } else {
                    vec![-1.0, 1.0]
                }
            })
            .collect();
        let rejected: Vec<Vec<f64>> = chosen.iter().map(|r| vec![-r[0], -r[1]]).collect();
        let p: Vec<&[f32]> = prompts.iter().map(Vec::as_slice).collect();
        let (gating, trace) = train_gating(&small(), &p, &chosen, &rejected, &device).unwrap();
        assert!(trace.last_loss < trace.first_loss, "{trace:?}");
        let w_even = gating.weights(&prompts[0]);
        let w_odd = gating.weights(&prompts[1]);
        assert!(
            w_even[0] > w_even[1] && w_odd[1] > w_odd[0],
            "{w_even:?} {w_odd:?}"
        );
    }

    #[test]
    fn debiasing_follows_armorm_rule() {
        // r0 = verbosity / 2 + noise → a penalty near 1/2;
        // r1 is anti-correlated with verbosity → λ = 0; r2 = verbosity itself.
        let rewards: Vec<Vec<f64>> = (0..50)
            .map(|i| {
                let v = i as f64;
                let noise = ((i * 37) % 11) as f64 - 5.0;
                vec![0.5 * v + 2.0 * noise, -v + noise, v]
            })
            .collect();
        let d = find_verbosity_penalties(&rewards, 2, 0.03, &ARMORM_PENALTIES).unwrap();
        assert_eq!(d.penalties[1], 0.0);
        assert_eq!(d.penalties[2], 1.0);
        assert!(d.penalties[0] > 0.3 && d.penalties[0] < 0.7, "{d:?}");
        assert!(
            d.spearman_before[0] > 0.7 && d.spearman_after[0] <= 0.03,
            "{d:?}"
        );
        // The chosen λ is the first grid value under the threshold: the previous one is above.
        let i = ARMORM_PENALTIES
            .iter()
            .position(|&l| l == d.penalties[0])
            .unwrap();
        let prev = ARMORM_PENALTIES[i - 1];
        let adj: Vec<f64> = rewards.iter().map(|r| r[0] - prev * r[2]).collect();
        let v: Vec<f64> = rewards.iter().map(|r| r[2]).collect();
        assert!(spearman(&adj, &v) > 0.03);
        assert_eq!(d.apply(&[1.0, 2.0, 3.0])[2], 0.0);
    }
}
