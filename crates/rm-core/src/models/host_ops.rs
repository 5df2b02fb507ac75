//! Element-wise layers computed on the host, in parallel, when the device is burn's `flex` CPU
//! backend. `flex` runs element-wise ops on one thread, and two of them dominated a MiniLM
//! training step (profiled with `perf`: erf-GELU forward and backward ~23% of all samples, the
//! dropout masks' ChaCha draws ~12%), while PyTorch runs them vectorized on every core. Other
//! devices use burn's own ops unchanged.
//!
//! - [`dropout`] keeps burn's `Dropout` module and semantics (inverted dropout: kept values
//!   scaled by `1/(1-p)`; identity when not training, on a non-autodiff device, or when frozen) but
//!   builds the mask on the host: one 64-bit seed is drawn from the device's RNG (so
//!   `device.seed(..)` still makes runs reproducible) and element `i` is kept when a SplitMix64
//!   hash of `(seed, i)` falls below `1-p`; chunks are filled in parallel by rayon.
//! - [`gelu`] is the exact erf-GELU `g(x) = x·Φ(x)`. Without autodiff the values are computed on
//!   the host. With autodiff it uses a linearization that burn differentiates for us:
//!   `y = x ⊙ D + C` with the constants `D = g'(x)` and `C = g(x) − x ⊙ g'(x)`, both computed on
//!   the host in one pass, so `y = g(x)` and `∂y/∂x = g'(x)` exactly as the op itself would give.

use burn::nn::Dropout;
use burn::tensor::activation;
use burn::tensor::{Distribution, Tensor, TensorData};
use rayon::prelude::*;

use super::host_math::simd_dispatch;

/// `layer` applied to `input`: inverted dropout with probability `layer.prob` while training.
pub fn dropout<const D: usize>(layer: &Dropout, input: Tensor<D>) -> Tensor<D> {
    let device = input.device();
    if !layer.training.is_enabled() || !device.is_autodiff() || layer.prob == 0.0 {
        return input;
    }
    if !on_host(&input) {
        return layer.forward(input);
    }
    let seed = draw_seed(&device);
    let shape = input.shape();
    let mask = inverted_dropout_mask(seed, shape.num_elements(), layer.prob);
    input * Tensor::from_data(TensorData::new(mask, shape), &device)
}

/// The exact (erf) GELU, `g(x) = x·Φ(x)` with `Φ` the standard normal CDF (Hendrycks & Gimpel,
/// "Gaussian Error Linear Units (GELUs)", 2016); see the module docs for how it runs on `flex`.
pub fn gelu<const D: usize>(input: Tensor<D>) -> Tensor<D> {
    let device = input.device();
    if !on_host(&input) {
        return activation::gelu(input);
    }
    let shape = input.shape();
    let Ok(x) = input.clone().into_data().try_to_vec::<f32>() else {
        return activation::gelu(input);
    };
    if !device.is_autodiff() || !input.is_tracked() {
        let mut y = x;
        y.par_chunks_mut(CHUNK).for_each(gelu_values);
        return Tensor::from_data(TensorData::new(y, shape), &device);
    }
    let mut slope = x;
    let mut offset = vec![0.0f32; slope.len()];
    slope
        .par_chunks_mut(CHUNK)
        .zip(offset.par_chunks_mut(CHUNK))
        .for_each(|(s, o)| gelu_slopes(s, o));
    let slope = Tensor::from_data(TensorData::new(slope, shape.clone()), &device);
    let offset = Tensor::from_data(TensorData::new(offset, shape), &device);
    input * slope + offset
}

simd_dispatch! {
    /// `x ↦ g(x)` over a chunk.
    fn gelu_values(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = gelu_and_slope(*x).0;
        }
    }
}

simd_dispatch! {
    /// `x ↦ g'(x)` in `slope` (which holds `x`) and `g(x) − x·g'(x)` in `offset`.
    fn gelu_slopes(slope: &mut [f32], offset: &mut [f32]) {
        for (s, o) in slope.iter_mut().zip(offset.iter_mut()) {
            let x = *s;
            let (g, d) = gelu_and_slope(x);
            *s = d;
            *o = g - x * d;
        }
    }
}

/// Elements per rayon task in the host kernels.
const CHUNK: usize = 1 << 16;

/// `(g(x), g'(x))` for the erf-GELU: `g = x·Φ(x)`, `g' = Φ(x) + x·φ(x)`, with
/// `φ(x) = exp(−x²/2)/√(2π)` and `Φ` from Abramowitz & Stegun 7.1.26
/// (`erfc(z) ≈ (a₁t + a₂t² + a₃t³ + a₄t⁴ + a₅t⁵)·exp(−z²)`, `t = 1/(1 + p·z)`, `z = |x|/√2`,
/// absolute error ≤ 1.5e-7), which shares its `exp(−z²) = exp(−x²/2)` with `φ`.
#[inline(always)]
fn gelu_and_slope(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    // exp(−z²) is below f32's smallest normal past z ≈ 9.4. `exp1` is branch-free, so the
    // loops over this function vectorize (libm's scalar `expf` was 4% of a MiniLM encoding).
    let e = if z < 9.0 {
        super::host_math::exp1(-z * z)
    } else {
        0.0
    };
    let half_erfc = 0.5 * poly * e;
    let cdf = if x >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    (x * cdf, cdf + x * INV_SQRT_2PI * e)
}

/// Whether the host kernels take `input`: an f32 tensor on `flex`.
pub(crate) fn on_host<const D: usize>(input: &Tensor<D>) -> bool {
    input.dtype() == burn::tensor::DType::F32 && is_flex(&input.device())
}

#[cfg(feature = "flex")]
fn is_flex(device: &burn::tensor::Device) -> bool {
    device.clone().without_autodiff() == burn::tensor::Device::flex()
}

#[cfg(not(feature = "flex"))]
fn is_flex(_: &burn::tensor::Device) -> bool {
    false
}

/// 48 random bits from the device's seeded RNG (two uniform f32 draws of 24 bits each).
fn draw_seed(device: &burn::tensor::Device) -> u64 {
    let draws = Tensor::<1>::random([2], Distribution::Default, device)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    draws.iter().fold(0u64, |acc, &u| {
        (acc << 24) | ((u * (1u32 << 24) as f32) as u64 & 0xFF_FFFF)
    })
}

/// SplitMix64's finalizer: a bijective 64-bit mix (Steele, Lea & Flood, "Fast splittable
/// pseudorandom number generators", OOPSLA 2014).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_58B1_11EB_133B);
    z ^ (z >> 31)
}

/// `n` mask values: `1/(1-p)` where element `i` is kept, `0` where dropped. Element `i` is kept
/// when the top 32 bits of `splitmix64(seed ⊕ mix(i))` are below `(1-p)·2³²`, so the mask depends
/// only on `(seed, i)`, not on how the work is split between threads.
pub fn inverted_dropout_mask(seed: u64, n: usize, prob: f64) -> Vec<f32> {
    let keep = 1.0 - prob;
    let threshold = (keep * 4_294_967_296.0).min(u32::MAX as f64) as u64;
    let scale = (1.0 / keep) as f32;
    let base = splitmix64(seed);
    let mut mask = vec![0.0f32; n];
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let start = (c * CHUNK) as u64;
            for (j, m) in chunk.iter_mut().enumerate() {
                let bits =
                    splitmix64(base ^ (start + j as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 32;
                *m = if bits < threshold { scale } else { 0.0 };
            }
        });
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::DropoutConfig;
    use burn::tensor::Device;

    #[test]
    fn the_mask_keeps_the_expected_share_scaled_by_the_inverse_keep_rate() {
        let n = 1_000_000;
        let mask = inverted_dropout_mask(7, n, 0.1);
        let kept = mask.iter().filter(|&&m| m != 0.0).count();
        // Binomial(1e6, 0.9): standard deviation 300; allow 5 of them.
        assert!((kept as f64 - 900_000.0).abs() < 1_500.0, "kept {kept}");
        assert!(
            mask.iter()
                .all(|&m| m == 0.0 || (m - 1.0 / 0.9).abs() < 1e-6)
        );
        // The mean of an inverted-dropout mask is 1 in expectation.
        let mean = mask.iter().map(|&m| m as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 2e-3, "mean {mean}");
    }

    #[test]
    fn the_mask_depends_only_on_the_seed_and_neighbours_are_not_correlated() {
        assert_eq!(
            inverted_dropout_mask(3, 200_000, 0.5),
            inverted_dropout_mask(3, 200_000, 0.5)
        );
        assert_ne!(
            inverted_dropout_mask(3, 1_000, 0.5),
            inverted_dropout_mask(4, 1_000, 0.5)
        );
        // A prefix is the same mask (no dependence on the chunking of a longer tensor).
        assert_eq!(
            inverted_dropout_mask(9, 70_000, 0.3)[..1_000],
            inverted_dropout_mask(9, 1_000, 0.3)[..]
        );
        // Adjacent elements at p = 0.5: P(both kept) ≈ 0.25.
        let m = inverted_dropout_mask(11, 400_001, 0.5);
        let both = m.windows(2).filter(|w| w[0] != 0.0 && w[1] != 0.0).count() as f64;
        assert!(
            (both / 400_000.0 - 0.25).abs() < 0.005,
            "{}",
            both / 400_000.0
        );
    }

    #[test]
    fn dropout_is_the_identity_off_autodiff_and_reproducible_under_a_device_seed() {
        let layer = DropoutConfig::new(0.25).init();
        let plain = Device::flex();
        let x = Tensor::<2>::ones([64, 64], &plain);
        let y = dropout(&layer, x.clone());
        assert_eq!(y.into_data(), x.into_data());

        let device = Device::flex().autodiff();
        let run = || {
            device.seed(5);
            dropout(&layer, Tensor::<2>::ones([64, 64], &device))
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        let kept = a.iter().filter(|&&v| v != 0.0).count();
        assert!((kept as f64 / 4096.0 - 0.75).abs() < 0.05, "kept {kept}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn the_gradient_through_dropout_is_the_mask() {
        let layer = DropoutConfig::new(0.5).init();
        let device = Device::flex().autodiff();
        device.seed(1);
        let x = Tensor::<1>::ones([1000], &device).require_grad();
        let y = dropout(&layer, x.clone());
        let grads = y.clone().sum().backward();
        let g = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(g, y.into_data().try_to_vec::<f32>().unwrap());
    }

    #[test]
    fn gelu_and_its_slope_match_the_exact_formulas() {
        // Reference in f64 from the Maclaurin series erf(z) = 2/√π Σ (−1)ⁿ z^(2n+1)/(n!(2n+1)),
        // accurate in f64 for the |z| ≤ 4/√2 used here.
        fn erf(z: f64) -> f64 {
            let (mut sum, mut term, mut n) = (0.0, z, 0.0);
            while term.abs() > 1e-17 || n < 3.0 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -z * z / n;
            }
            2.0 / std::f64::consts::PI.sqrt() * sum
        }
        let mut worst = (0.0f64, 0.0f64);
        for i in -400..=400 {
            let x = i as f64 / 100.0; // [-4, 4]
            let cdf = 0.5 * (1.0 + erf(x / 2f64.sqrt()));
            let pdf = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let (g, d) = gelu_and_slope(x as f32);
            worst.0 = worst.0.max((g as f64 - x * cdf).abs() / x.abs().max(1.0));
            worst.1 = worst
                .1
                .max((d as f64 - (cdf + x * pdf)).abs() / x.abs().max(1.0));
        }
        assert!(worst.0 < 5e-7 && worst.1 < 5e-7, "{worst:?}");
        // Closed-form points: g(0) = 0, g'(0) = 1/2, g(x) → x and g'(x) → 1 for large x.
        let (g, d) = gelu_and_slope(0.0);
        assert!(g == 0.0 && (d - 0.5).abs() < 2e-7, "{d}");
        let (g, d) = gelu_and_slope(10.0);
        assert!((g - 10.0).abs() < 1e-6 && (d - 1.0).abs() < 1e-6);
        let (g, d) = gelu_and_slope(-10.0);
        assert!(g.abs() < 1e-6 && d.abs() < 1e-6);
    }

    #[test]
    fn gelu_matches_burns_values_and_gradients_with_and_without_autodiff() {
        let values: Vec<f32> = (0..5000).map(|i| (i as f32 - 2500.0) / 400.0).collect();
        let n = values.len();
        let plain = Device::flex();
        let x = Tensor::<1>::from_data(TensorData::new(values.clone(), [n]), &plain);
        let ours = gelu(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        let burns = activation::gelu(x).into_data().try_to_vec::<f32>().unwrap();
        let max_err = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(max_err(&ours, &burns) < 1e-6, "{}", max_err(&ours, &burns));

        let device = Device::flex().autodiff();
        let run = |f: &dyn Fn(Tensor<1>) -> Tensor<1>| {
            let x = Tensor::<1>::from_data(TensorData::new(values.clone(), [n]), &device)
                .require_grad();
            let y = f(x.clone());
            // A non-uniform upstream gradient, so the chain rule is exercised.
            let w = Tensor::<1>::from_data(
                TensorData::new((0..n).map(|i| 1.0 + (i % 7) as f32).collect(), [n]),
                &device,
            );
            let grads = (y.clone() * w).sum().backward();
            (
                y.into_data().try_to_vec::<f32>().unwrap(),
                x.grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
            )
        };
        let (y_ours, g_ours) = run(&|x| gelu(x));
        let (y_burn, g_burn) = run(&|x| activation::gelu(x));
        assert!(
            max_err(&y_ours, &y_burn) < 2e-6,
            "{}",
            max_err(&y_ours, &y_burn)
        );
        assert!(
            max_err(&g_ours, &g_burn) < 1e-5,
            "{}",
            max_err(&g_ours, &g_burn)
        );
    }
}
