//! Sequence log-probabilities: what DPO, PPO/GRPO, implicit rewards and RewardBench's DPO mode
//! consume.
//!
//! For a padded batch of token ids `y` `[B, T]`, logits `z` `[B, T, V]` from a causal model and
//! a completion mask `m` `[B, T]`, the log-prob of token `t` is `log softmax(z[t−1])[y[t]]`
//! (the first token has no prediction). Only tokens with `m[t] = 1` count:
//! `sum = Σ_t m[t]·log p(y[t] | y[<t])`, `count = Σ_t m[t]`, `mean = sum / count`.
//! Optionally the per-position `logsumexp(2·z[t−1])` (the full-vocabulary statistic WPO's
//! weights need, log Σ_v p_v² = logsumexp(2z) − 2·logsumexp(z)).

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Per-token and per-sequence log-probs of a batch.
#[derive(Clone, Debug)]
pub struct SequenceLogprobs {
    /// `[B, T−1]`: log p of token `t+1` given the tokens before it, times the mask (0 where
    /// masked).
    pub token_logprobs: Tensor<2>,
    /// `[B, T−1]`: the mask aligned with `token_logprobs` (as floats).
    pub mask: Tensor<2>,
    /// `[B]`: masked sums.
    pub sum: Tensor<1>,
    /// `[B]`: number of counted tokens.
    pub count: Tensor<1>,
    /// `[B]`: `sum / max(count, 1)`.
    pub mean: Tensor<1>,
    /// `[B, T−1]`: `logsumexp(2·logits)` of the predicting position, when requested.
    pub logsumexp_2x: Option<Tensor<2>>,
}

/// Gathers the log-probs of `input_ids` under `logits`; see the module docs. Works on autodiff
/// devices (gradients flow into `logits`).
pub fn sequence_logprobs(
    logits: Tensor<3>,
    input_ids: Tensor<2, Int>,
    completion_mask: Tensor<2, Int>,
    with_logsumexp_2x: bool,
) -> SequenceLogprobs {
    let [b, t, v] = logits.dims();
    assert!(
        t >= 2,
        "sequence log-probs need at least two positions, got {t}"
    );
    let predicting = logits.narrow(1, 0, t - 1);
    let targets = input_ids.narrow(1, 1, t - 1);
    let mask = completion_mask.narrow(1, 1, t - 1).float();
    let logsumexp_2x = with_logsumexp_2x.then(|| {
        let doubled = predicting.clone().mul_scalar(2.0);
        let max = doubled.clone().max_dim(2);
        ((doubled - max.clone()).exp().sum_dim(2).log() + max).reshape([b, t - 1])
    });
    let logp = log_softmax(predicting, 2);
    let _ = v;
    let token = logp
        .gather(2, targets.reshape([b, t - 1, 1]))
        .reshape([b, t - 1])
        * mask.clone();
    let sum = token.clone().sum_dim(1).reshape([b]);
    let count = mask.clone().sum_dim(1).reshape([b]);
    let mean = sum.clone() / count.clone().clamp_min(1.0);
    SequenceLogprobs {
        token_logprobs: token,
        mask,
        sum,
        count,
        mean,
        logsumexp_2x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use crate::models::llama::tests::tiny_model;
    use burn::tensor::TensorData;

    fn vec1(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn closed_form_example() {
        let device = test_device();
        // V = 2, logits [0, ln 3] → p = [1/4, 3/4] at every position.
        let l = (3.0f32).ln();
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![0.0, l, 0.0, l, 0.0, l], [1, 3, 2]),
            &device,
        );
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1, 0], [1, 3]), &device);
        let mask = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1, 1], [1, 3]), &device);
        let out = sequence_logprobs(logits, ids, mask, true);
        let expect = (0.75f32).ln() + (0.25f32).ln();
        assert!((vec1(out.sum)[0] - expect).abs() < 1e-6);
        assert_eq!(vec1(out.count), [2.0]);
        assert!((vec1(out.mean)[0] - expect / 2.0).abs() < 1e-6);
        // logsumexp(2z) = ln(1 + 9)
        let lse = out
            .logsumexp_2x
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((lse[0] - (10.0f32).ln()).abs() < 1e-5);
    }

    #[test]
    fn batched_padded_equals_one_sequence_at_a_time() {
        let device = test_device();
        let model = tiny_model(&device);
        let seqs: [&[i64]; 3] = [&[3, 4, 5, 6, 7], &[8, 9, 10], &[11, 12, 13, 14]];
        let completion_from = [2, 1, 3];
        // Naive: each sequence alone.
        let mut naive = Vec::new();
        for (s, &from) in seqs.iter().zip(&completion_from) {
            let n = s.len();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(s.to_vec(), [1, n]), &device);
            let attn = Tensor::<2, Int>::ones([1, n], &device);
            let logits = model
                .forward(ids, attn)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let v = logits.len() / n;
            let mut total = 0.0f64;
            for t in from..n {
                let row = &logits[(t - 1) * v..t * v];
                let lp = crate::sampling::log_softmax(row);
                total += lp[s[t] as usize] as f64;
            }
            naive.push(total as f32);
        }
        // Batched with right padding.
        let t = 5;
        let mut ids = Vec::new();
        let mut attn = Vec::new();
        let mut comp = Vec::new();
        for (s, &from) in seqs.iter().zip(&completion_from) {
            for i in 0..t {
                ids.push(*s.get(i).unwrap_or(&0));
                attn.push((i < s.len()) as i64);
                comp.push((i < s.len() && i >= from) as i64);
            }
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [3, t]), &device);
        let attn = Tensor::<2, Int>::from_data(TensorData::new(attn, [3, t]), &device);
        let comp = Tensor::<2, Int>::from_data(TensorData::new(comp, [3, t]), &device);
        let logits = model.forward(ids.clone(), attn);
        let out = sequence_logprobs(logits, ids, comp, false);
        let sums = vec1(out.sum);
        for (a, b) in sums.iter().zip(&naive) {
            assert!((a - b).abs() < 1e-5, "{sums:?} vs {naive:?}");
        }
        assert_eq!(vec1(out.count), [3.0, 2.0, 1.0]);
    }

    #[test]
    fn gradients_flow_into_the_logits() {
        let device = test_device().autodiff();
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 0.0, 0.0], [1, 2, 2]),
            &device,
        )
        .require_grad();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1], [1, 2]), &device);
        let mask = Tensor::<2, Int>::ones([1, 2], &device);
        let out = sequence_logprobs(logits.clone(), ids, mask, false);
        let grads = out.sum.sum().backward();
        let g = logits
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // d log softmax(z)[1] / dz at z = 0: [-1/2, 1/2] at position 0; nothing at position 1.
        assert_eq!(g, [-0.5, 0.5, 0.0, 0.0]);
    }
}
