//! Encoder self-attention for inference on burn's `flex` CPU backend, computed on the host.
//!
//! `softmax(s·Q_h K_hᵀ + bias) V_h` for every batch row and head `h`, with Q, K, V the projected
//! rows `[B·T, D]` (heads side by side, `D = H·d_h`) and `bias` a per-key additive bias `[B, T]`
//! (0 for real tokens, a large negative number for pads). On `flex` the fused attention op runs a
//! scalar scale/bias loop and libm's scalar `expf` per score; a `perf record` of MiniLM encoding
//! on an Intel Xeon (AVX-512) put 30% of all samples there. Here each (batch row, head) is one
//! rayon task: the two products are `gemm` calls (the crate `flex` itself uses for matmul) that
//! read Q, K, V in place through strides, the softmax takes the vectorized
//! [`softmax_in_place`](super::host_math::softmax_in_place), and the context is written straight into
//! `[B·T, D]` rows, so no head split/merge copies are made. Gradients are not tracked: training
//! keeps burn's ops.

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::host_math::softmax_in_place;

/// Whether [`attention`] takes tensors like `t`: on burn's `flex`, f32, no autodiff.
pub fn applies<const D: usize>(t: &Tensor<D>) -> bool {
    !t.device().is_autodiff() && super::host_ops::on_host(t)
}

/// The context rows `[B·T, D]` of `softmax(scale·Q_h K_hᵀ + key_bias) V_h` for `heads` heads
/// over `batch` rows of `seq` tokens; `key_bias[b·seq + j]` is added to every score of key `j`
/// in batch row `b`. `q`, `k`, `v` are `[B·T, D]` on `flex` ([`applies`]).
pub fn attention(
    q: Tensor<2>,
    k: Tensor<2>,
    v: Tensor<2>,
    key_bias: &[f32],
    (batch, seq, heads): (usize, usize, usize),
    scale: f32,
) -> Tensor<2> {
    let device = q.device();
    let [rows, d] = q.dims();
    assert_eq!(
        rows,
        batch * seq,
        "attention: {rows} rows for {batch}×{seq} tokens"
    );
    assert_eq!(
        key_bias.len(),
        rows,
        "attention: key bias of {} for {rows} rows",
        key_bias.len()
    );
    assert!(
        heads > 0 && d % heads == 0,
        "attention: D = {d} over {heads} heads"
    );
    let host = |t: Tensor<2>| {
        t.into_data()
            .try_into_vec::<f32>()
            .expect("applies() checked the dtype is f32")
    };
    let (q, k, v) = (host(q), host(k), host(v));
    let mut out = vec![0.0f32; rows * d];
    let dh = d / heads;
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..batch * heads).into_par_iter().for_each_init(
        || vec![0.0f32; seq * seq],
        |scores, task| {
            let (b, h) = (task / heads, task % heads);
            let offset = b * seq * d + h * dh;
            let bias = &key_bias[b * seq..(b + 1) * seq];
            // SAFETY: every pointer stays inside its buffer (rows b·seq .. (b+1)·seq, columns
            // h·dh .. (h+1)·dh of a [B·T, D] buffer; a seq × seq scratch), and tasks write
            // disjoint (b, h) blocks of `out`.
            unsafe {
                head_attention(
                    q.as_ptr().add(offset),
                    k.as_ptr().add(offset),
                    v.as_ptr().add(offset),
                    out_ptr.get().add(offset),
                    (seq, dh, d),
                    bias,
                    scale,
                    scores,
                );
            }
        },
    );
    Tensor::from_data(TensorData::new(out, [rows, d]), &device)
}

/// A raw pointer the rayon tasks share; each writes its own block.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks write disjoint blocks (see `attention`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One head of one batch row: `q`, `k`, `v`, `out` point at its first element, rows `stride`
/// apart, `dh` columns; `scores` is a `seq × seq` scratch.
///
/// # Safety
/// `q`, `k`, `v` must be readable and `out` writable at `i·stride + c` for `i < seq`, `c < dh`.
#[allow(clippy::too_many_arguments)]
unsafe fn head_attention(
    q: *const f32,
    k: *const f32,
    v: *const f32,
    out: *mut f32,
    (seq, dh, stride): (usize, usize, usize),
    bias: &[f32],
    scale: f32,
    scores: &mut [f32],
) {
    let stride = stride as isize;
    let n = seq as isize;
    // scores[i, j] = scale · Σ_c q[i, c] k[j, c]: lhs Q (rows `stride` apart), rhs Kᵀ (its
    // element (c, j) is k[j·stride + c]).
    unsafe {
        gemm::gemm(
            seq,
            seq,
            dh,
            scores.as_mut_ptr(),
            1,
            n,
            false,
            q,
            1,
            stride,
            k,
            stride,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    for row in scores.chunks_exact_mut(seq) {
        softmax_in_place(row, bias);
    }
    // out[i, c] = Σ_j p[i, j] v[j, c].
    unsafe {
        gemm::gemm(
            seq,
            dh,
            seq,
            out,
            1,
            stride,
            false,
            scores.as_ptr(),
            1,
            n,
            v,
            1,
            stride,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn::tensor::activation::softmax;

    #[test]
    fn equals_explicit_softmax_attention_with_padding() {
        let device = burn::tensor::Device::flex();
        let (batch, seq, heads, dh) = (3, 7, 4, 8);
        let d = heads * dh;
        let rows = batch * seq;
        let rand = || Tensor::<2>::random([rows, d], Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (rand(), rand(), rand());
        // Row 1 has its last 3 keys padded, row 2 its first 2 (left padding).
        let mut bias = vec![0.0f32; rows];
        for j in 4..7 {
            bias[seq + j] = -1e9;
        }
        for j in 0..2 {
            bias[2 * seq + j] = -1e9;
        }
        let scale = 1.0 / (dh as f32).sqrt();
        assert!(applies(&q));
        let got = attention(
            q.clone(),
            k.clone(),
            v.clone(),
            &bias,
            (batch, seq, heads),
            scale,
        );
        // The same with burn's ops: heads split, scores, softmax, context, heads merged.
        let split = |t: Tensor<2>| t.reshape([batch, seq, heads, dh]).swap_dims(1, 2);
        let bias_t = Tensor::<1>::from_data(TensorData::new(bias, [rows]), &device)
            .reshape([batch, 1, 1, seq]);
        let scores = split(q).mul_scalar(scale).matmul(split(k).swap_dims(2, 3)) + bias_t;
        let want = softmax(scores, 3)
            .matmul(split(v))
            .swap_dims(1, 2)
            .reshape([rows, d]);
        let diff = (got - want).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "max difference {diff}");
    }

    #[test]
    fn is_not_taken_with_gradients() {
        let device = burn::tensor::Device::flex().autodiff();
        let q = Tensor::<2>::zeros([2, 4], &device);
        assert!(!applies(&q));
    }
}
