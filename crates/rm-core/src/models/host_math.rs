//! Vectorized math for the host kernels: `exp`, a softmax, and the run-time choice of SIMD width.
//!
//! burn's `flex` backend and Rust's `f32::exp` call libm's scalar `expf` once per element; on a
//! MiniLM encoding that was 15% of all samples (`perf record`, Intel Xeon with AVX-512), most of
//! it in attention's softmax. [`exp_in_place`] computes the same function over a slice in SIMD
//! registers, picked at run time (AVX-512F, else AVX2 + FMA, else the portable build; the
//! `simd_dispatch!` macro, which the other host kernels use too).
//!
//! The method is Cephes' `expf` (S. L. Moshier): `x = n·ln 2 + r` with `n = round(x / ln 2)`
//! and `|r| ≤ ln 2 / 2`, `ln 2` split in two parts so `r` is exact, `e^r` by its degree-7
//! polynomial `1 + r + r²·P(r)`, and `2^n` put into the exponent bits. Relative error below
//! 2.5·10⁻⁷ (about 2 ulp) over the whole range (tested against f64); `x < −87.3` (below f32's
//! smallest normal) gives 0, `x > 88.7` gives +∞, NaN stays NaN.

/// Defines `fn NAME(ARGS) BODY` so that `BODY` runs compiled for the widest vector extension the
/// CPU has, picked at run time: AVX-512F, else AVX2 + FMA, else the portable build. Loops of
/// branch-free arithmetic in `BODY` then vectorize to that width.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn portable($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) {
                portable($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                portable($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

simd_dispatch! {
    /// `x ↦ eˣ` for every element of `xs`.
    pub fn exp_in_place(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = exp1(*x);
        }
    }
}

/// `row ↦ softmax(row + bias)` in place (`bias` as long as `row`), with [`exp1`]; vectorized as
/// [`exp_in_place`] is. The max and the sum are kept per lane, so their loops vectorize too.
pub fn softmax_in_place(row: &mut [f32], bias: &[f32]) {
    assert_eq!(
        row.len(),
        bias.len(),
        "softmax_in_place: row and bias lengths"
    );
    softmax_kernel(row, bias);
}

/// Lanes of the per-lane max and sum.
const LANES: usize = 16;

simd_dispatch! {
fn softmax_kernel(row: &mut [f32], bias: &[f32]) {
    let bigger = |a: f32, b: f32| if b > a { b } else { a };
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let split = row.len() / LANES * LANES;
    for (r, b) in row[..split]
        .chunks_exact_mut(LANES)
        .zip(bias[..split].chunks_exact(LANES))
    {
        for i in 0..LANES {
            r[i] += b[i];
            maxes[i] = bigger(maxes[i], r[i]);
        }
    }
    let mut max = maxes.iter().fold(f32::NEG_INFINITY, |m, &x| bigger(m, x));
    for (r, b) in row[split..].iter_mut().zip(&bias[split..]) {
        *r += b;
        max = bigger(max, *r);
    }
    let mut sums = [0.0f32; LANES];
    for r in row[..split].chunks_exact_mut(LANES) {
        for i in 0..LANES {
            let e = exp1(r[i] - max);
            r[i] = e;
            sums[i] += e;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for r in &mut row[split..] {
        *r = exp1(*r - max);
        sum += *r;
    }
    let inv = 1.0 / sum;
    for r in row.iter_mut() {
        *r *= inv;
    }
}
}

/// One element of [`exp_in_place`]: branch-free arithmetic and bit operations only, so the
/// loop around it vectorizes.
#[inline(always)]
pub fn exp1(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAX: f32 = 88.722_84;
    const MIN: f32 = -87.336_54;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer in f32.
    const ROUND: f32 = 12_582_912.0;
    let c = x.clamp(MIN, MAX);
    let t = c * LOG2E + ROUND;
    let n = t - ROUND;
    // The integer n sits in t's low mantissa bits (t = 1.5·2²³ + n); reading it there instead
    // of by a float-to-int cast keeps the loop vectorized (`as i32` saturates, element by element).
    let ni = (t.to_bits() as i32) - 0x4B40_0000;
    let r = c - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2ⁿ, n in [−126, 128]: exponent bits n + 127; n = 128 (x near MAX) is split in two halves.
    let half = ni >> 1;
    let two_half = f32::from_bits(((half + 127) as u32) << 23);
    let two_rest = f32::from_bits(((ni - half + 127) as u32) << 23);
    let y = er * two_half * two_rest;
    let y = if x < MIN { 0.0 } else { y };
    let y = if x > MAX { f32::INFINITY } else { y };
    if x.is_nan() { x } else { y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_exp_within_two_ulp_over_the_whole_range() {
        // Every 997th f32 bit pattern between −87.3 and 88.7, plus the ends and zero.
        let mut xs: Vec<f32> = Vec::new();
        for bits in (0u32..u32::MAX).step_by(997) {
            let x = f32::from_bits(bits);
            if x.is_finite() && (-87.3..88.7).contains(&x) {
                xs.push(x);
            }
        }
        xs.extend([0.0, -0.0, 1.0, -1.0, 88.7, -87.3, 1e-30, -1e-30]);
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        let mut worst = 0.0f64;
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = f64::from(x).exp();
            let rel = ((f64::from(y) - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        // The portable path gives the same bits as the vectorized one.
        for (&x, &y) in xs.iter().zip(&ys).step_by(1013) {
            assert_eq!(exp1(x).to_bits(), y.to_bits(), "x = {x}");
        }
    }

    #[test]
    fn softmax_with_bias_matches_the_formula() {
        for n in [1, 5, 16, 37, 128] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 23) as f32 * 0.37 - 4.0)
                .collect();
            // Every third key masked as the attention kernel masks pads.
            let bias: Vec<f32> = (0..n)
                .map(|i| if i % 3 == 2 { -1e9 } else { 0.1 * i as f32 })
                .collect();
            let mut row = xs.clone();
            softmax_in_place(&mut row, &bias);
            let z: Vec<f64> = xs
                .iter()
                .zip(&bias)
                .map(|(&x, &b)| f64::from(x + b))
                .collect();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = z.iter().map(|v| (v - max).exp()).sum();
            for (i, (&got, v)) in row.iter().zip(&z).enumerate() {
                let want = (v - max).exp() / total;
                assert!(
                    (f64::from(got) - want).abs() < 1e-6,
                    "n {n}, i {i}: {got} vs {want}"
                );
                if i % 3 == 2 {
                    assert_eq!(got, 0.0);
                }
            }
        }
    }

    #[test]
    fn limits_and_special_values() {
        let mut xs = vec![
            -1e9,
            -88.0,
            f32::NEG_INFINITY,
            89.0,
            f32::INFINITY,
            f32::NAN,
            0.0,
        ];
        exp_in_place(&mut xs);
        assert_eq!(&xs[..5], &[0.0, 0.0, 0.0, f32::INFINITY, f32::INFINITY]);
        assert!(xs[5].is_nan());
        assert_eq!(xs[6], 1.0);
        // Odd lengths: the vector loop's tail is computed too.
        for n in [1, 7, 15, 17, 33] {
            let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 1.0).collect();
            exp_in_place(&mut v);
            for (i, y) in v.iter().enumerate() {
                let want = (i as f64 * 0.1 - 1.0).exp();
                assert!(((f64::from(*y) - want) / want).abs() < 2.5e-7);
            }
        }
    }
}
