//! Token-level heads on a backbone's hidden states `[B, T, D]`: a scalar [`ValueHead`] (PPO's
//! critic, value models) and a K-class [`TokenClassHead`] (process reward models that label
//! chosen steps, e.g. Lightman et al., "Let's Verify Step by Step", 2023, read at the step
//! separators).
//!
//! Each head runs either on every position (`forward`) or only at chosen positions
//! (`at_positions`, `[B, N]` Int indices into the `T` axis: the hidden states are gathered first,
//! so the projection touches `N`, not `T`, rows). Positions are indices, not checked against `T`
//! (reading them would sync the device); shapes are checked and a mismatch is an error.

use anyhow::{Result, bail};
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

/// The hidden states at `positions`: `hidden` `[B, T, D]`, `positions` `[B, N]` (indices into
/// `T`, row by row) → `[B, N, D]`, `out[b, n] = hidden[b, positions[b, n]]`. Differentiable in
/// `hidden`.
pub fn gather_positions(hidden: Tensor<3>, positions: Tensor<2, Int>) -> Result<Tensor<3>> {
    let [b, t, d] = hidden.dims();
    let [pb, n] = positions.dims();
    if pb != b {
        bail!(
            "positions are [{pb}, {n}], the hidden states [{b}, {t}, {d}]: the batch sizes differ"
        );
    }
    if t == 0 && n > 0 {
        bail!("{n} positions asked of hidden states with no positions ([{b}, 0, {d}])");
    }
    let index = positions.reshape([b, n, 1]).expand([b, n, d]);
    Ok(hidden.gather(1, index))
}

/// The last dimension of `hidden` must be the head's input width.
fn check_width(hidden: &Tensor<3>, d_model: usize, head: &str) -> Result<()> {
    let dims = hidden.dims();
    if dims[2] != d_model {
        bail!(
            "{head} reads hidden states of width {d_model}, got [{}, {}, {}]",
            dims[0],
            dims[1],
            dims[2]
        );
    }
    Ok(())
}

/// Configuration of a [`ValueHead`].
#[derive(Config, Debug)]
pub struct ValueHeadConfig {
    /// Width `D` of the hidden states.
    pub d_model: usize,
    /// Whether the projection has a bias.
    #[config(default = true)]
    pub bias: bool,
}

impl ValueHeadConfig {
    /// A head with burn's default `Linear` initialization.
    pub fn init(&self, device: &Device) -> ValueHead {
        ValueHead {
            linear: LinearConfig::new(self.d_model, 1)
                .with_bias(self.bias)
                .init(device),
        }
    }
}

/// A scalar per position: `v_t = w·h_t + b` (the value head of PPO, Schulman et al.,
/// "Proximal Policy Optimization Algorithms", 2017, as TRL and verl put it on a causal LM).
#[derive(Module, Debug)]
pub struct ValueHead {
    /// `D → 1`.
    pub linear: Linear,
}

impl ValueHead {
    /// Values of every position: `[B, T, D]` → `[B, T]`.
    pub fn forward(&self, hidden: Tensor<3>) -> Result<Tensor<2>> {
        check_width(&hidden, self.linear.weight.dims()[0], "the value head")?;
        let [b, t, _] = hidden.dims();
        Ok(self.linear.forward(hidden).reshape([b, t]))
    }

    /// Values at `positions` `[B, N]`: `[B, T, D]` → `[B, N]`.
    pub fn at_positions(&self, hidden: Tensor<3>, positions: Tensor<2, Int>) -> Result<Tensor<2>> {
        self.forward(gather_positions(hidden, positions)?)
    }
}

/// Configuration of a [`TokenClassHead`].
#[derive(Config, Debug)]
pub struct TokenClassHeadConfig {
    /// Width `D` of the hidden states.
    pub d_model: usize,
    /// Number of classes `K` (≥ 1).
    pub num_classes: usize,
    /// Whether the projection has a bias.
    #[config(default = true)]
    pub bias: bool,
}

impl TokenClassHeadConfig {
    /// A head with burn's default `Linear` initialization; `num_classes = 0` is an error.
    pub fn init(&self, device: &Device) -> Result<TokenClassHead> {
        if self.num_classes == 0 {
            bail!("a token-class head needs at least one class");
        }
        Ok(TokenClassHead {
            linear: LinearConfig::new(self.d_model, self.num_classes)
                .with_bias(self.bias)
                .init(device),
        })
    }
}

/// K logits per position: `z_t = W·h_t + b` (a PRM's step-label head: K = 2 for
/// correct/incorrect, 3 with PRM800K's neutral).
#[derive(Module, Debug)]
pub struct TokenClassHead {
    /// `D → K`.
    pub linear: Linear,
}

impl TokenClassHead {
    /// Number of classes `K`.
    pub fn num_classes(&self) -> usize {
        self.linear.weight.dims()[1]
    }

    /// Logits of every position: `[B, T, D]` → `[B, T, K]`.
    pub fn forward(&self, hidden: Tensor<3>) -> Result<Tensor<3>> {
        check_width(
            &hidden,
            self.linear.weight.dims()[0],
            "the token-class head",
        )?;
        Ok(self.linear.forward(hidden))
    }

    /// Logits at `positions` `[B, N]`: `[B, T, D]` → `[B, N, K]`.
    pub fn at_positions(&self, hidden: Tensor<3>, positions: Tensor<2, Int>) -> Result<Tensor<3>> {
        self.forward(gather_positions(hidden, positions)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use burn::module::Param;
    use burn::tensor::TensorData;

    fn vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// `[B, T, D]` with `x[b, t, d] = 100·b + 10·t + d` and a value that varies.
    fn hidden(b: usize, t: usize, d: usize, device: &Device) -> (Vec<f32>, Tensor<3>) {
        let values: Vec<f32> = (0..b * t * d)
            .map(|i| {
                let (bi, ti, di) = (i / (t * d), (i / d) % t, i % d);
                (100 * bi + 10 * ti + di) as f32 * 0.01 - 0.5
            })
            .collect();
        let tensor = Tensor::from_data(TensorData::new(values.clone(), [b, t, d]), device);
        (values, tensor)
    }

    fn positions(rows: Vec<Vec<i64>>, device: &Device) -> Tensor<2, Int> {
        let (b, n) = (rows.len(), rows[0].len());
        Tensor::from_data(TensorData::new(rows.concat(), [b, n]), device)
    }

    #[test]
    fn gathered_positions_equal_manual_indexing() {
        let device = test_device();
        let (b, t, d, k) = (2, 5, 3, 4);
        let (host, h) = hidden(b, t, d, &device);
        let pos = vec![vec![4i64, 0, 2], vec![1, 1, 3]];
        let head = TokenClassHeadConfig::new(d, k).init(&device).unwrap();
        let w = vec(head.linear.weight.val());
        let bias = vec(head.linear.bias.as_ref().unwrap().val());
        let out = head
            .at_positions(h.clone(), positions(pos.clone(), &device))
            .unwrap();
        assert_eq!(out.dims(), [b, 3, k]);
        let out = vec(out);
        for (bi, row) in pos.iter().enumerate() {
            for (ni, &p) in row.iter().enumerate() {
                let x = &host[(bi * t + p as usize) * d..(bi * t + p as usize + 1) * d];
                for c in 0..k {
                    let manual: f32 = bias[c] + (0..d).map(|j| x[j] * w[j * k + c]).sum::<f32>();
                    let got = out[(bi * 3 + ni) * k + c];
                    assert!(
                        (got - manual).abs() < 1e-6,
                        "b{bi} n{ni} c{c}: {got} vs {manual}"
                    );
                }
            }
        }
        // The full-sequence logits agree with the gathered ones.
        let full = vec(head.forward(h.clone()).unwrap());
        let again = vec(head
            .at_positions(h.clone(), positions(pos.clone(), &device))
            .unwrap());
        for (bi, row) in pos.iter().enumerate() {
            for (ni, &p) in row.iter().enumerate() {
                for c in 0..k {
                    assert_eq!(
                        again[(bi * 3 + ni) * k + c],
                        full[(bi * t + p as usize) * k + c]
                    );
                }
            }
        }
        // The value head: one scalar per position.
        let value = ValueHeadConfig::new(d).init(&device);
        let all = vec(value.forward(h.clone()).unwrap());
        assert_eq!(all.len(), b * t);
        let at = value
            .at_positions(h, positions(pos.clone(), &device))
            .unwrap();
        assert_eq!(at.dims(), [b, 3]);
        for (i, v) in vec(at).iter().enumerate() {
            let p = pos[i / 3][i % 3] as usize;
            assert_eq!(*v, all[(i / 3) * t + p]);
        }
    }

    #[test]
    fn gradients_reach_the_head_and_match_finite_differences() {
        let device = test_device().autodiff();
        let (b, t, d) = (2, 4, 3);
        let (_, h) = hidden(b, t, d, &device);
        let pos = positions(vec![vec![3i64, 1], vec![0, 2]], &device);
        let head = ValueHeadConfig::new(d).init(&device);
        // loss = Σ v(at positions)²
        let loss = |head: &ValueHead| -> Tensor<1> {
            head.at_positions(h.clone(), pos.clone())
                .unwrap()
                .powf_scalar(2.0)
                .sum()
        };
        let grads = loss(&head).backward();
        let analytic = vec(head.linear.weight.val().grad(&grads).unwrap());
        let bias_grad = vec(head
            .linear
            .bias
            .as_ref()
            .unwrap()
            .val()
            .grad(&grads)
            .unwrap());
        assert!(bias_grad[0].abs() > 0.0);
        let w0 = vec(head.linear.weight.val());
        let eps = 1e-2f32;
        for j in 0..d {
            let shifted = |delta: f32| -> f32 {
                let mut w = w0.clone();
                w[j] += delta;
                let mut probe = head.clone();
                probe.linear.weight =
                    Param::from_tensor(Tensor::from_data(TensorData::new(w, [d, 1]), &device));
                loss(&probe).into_scalar::<f32>()
            };
            // The loss is quadratic in w: the central difference is exact up to rounding.
            let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
            assert!(
                (numeric - analytic[j]).abs() < 1e-3 * (1.0 + numeric.abs()),
                "w[{j}]: finite difference {numeric} vs gradient {}",
                analytic[j]
            );
        }
        // The gradient also flows back into the hidden states (the backbone).
        let h = h.require_grad();
        let g = ValueHeadConfig::new(d)
            .init(&device)
            .forward(h.clone())
            .unwrap()
            .sum()
            .backward();
        assert!(vec(h.grad(&g).unwrap()).iter().any(|&x| x != 0.0));
    }

    #[test]
    fn shape_mismatches_are_errors() {
        let device = test_device();
        let (_, h) = hidden(2, 4, 3, &device);
        let value = ValueHeadConfig::new(5).init(&device);
        let err = value.forward(h.clone()).unwrap_err().to_string();
        assert_eq!(
            err,
            "the value head reads hidden states of width 5, got [2, 4, 3]"
        );
        let head = TokenClassHeadConfig::new(3, 2).init(&device).unwrap();
        let err = head
            .at_positions(h.clone(), positions(vec![vec![0i64, 1]], &device))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "positions are [1, 2], the hidden states [2, 4, 3]: the batch sizes differ"
        );
        assert!(TokenClassHeadConfig::new(3, 0).init(&device).is_err());
        assert_eq!(head.num_classes(), 2);
    }
}
