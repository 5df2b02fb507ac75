//! Poolings from per-token hidden states `[B, T, D]` and an attention mask `[B, T]` to one
//! vector per sequence `[B, D]`.

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// How a sequence's hidden states become one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Mean over the real (mask = 1) tokens (sentence-transformers' default).
    #[default]
    Mean,
    /// The first token (BERT's `[CLS]`).
    Cls,
    /// The last real token, wherever the padding is (decoder reward models).
    LastToken,
}

impl Pooling {
    /// Pools `hidden` `[B, T, D]` with `mask` `[B, T]` (1 real, 0 pad) into `[B, D]`.
    pub fn pool(self, hidden: Tensor<3>, mask: Tensor<2, Int>) -> Tensor<2> {
        let [b, t, d] = hidden.dims();
        match self {
            Pooling::Mean => {
                let m = mask.float().unsqueeze_dim::<3>(2); // [B, T, 1]
                let summed = (hidden * m.clone()).sum_dim(1).reshape([b, d]);
                let counts = m.sum_dim(1).reshape([b, 1]).clamp_min(1e-9);
                summed / counts
            }
            Pooling::Cls => hidden.narrow(1, 0, 1).reshape([b, d]),
            Pooling::LastToken => {
                let device = hidden.device();
                let positions = Tensor::<1, Int>::arange(0..t as i64, &device)
                    .reshape([1, t])
                    .float();
                // position × mask is largest at the last real token, for left or right padding.
                let weighted = positions * mask.float();
                let (_, index) = weighted.max_dim_with_indices(1); // [B, 1]
                let index = index.reshape([b, 1, 1]).expand([b, 1, d]);
                hidden.gather(1, index).reshape([b, d])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::test_device;
    use burn::tensor::TensorData;

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn poolings_match_hand_computed_values() {
        let device = test_device();
        // B=2, T=3, D=2: token t of row b holds [10b + t, -(10b + t)].
        let h: Vec<f32> = (0..2)
            .flat_map(|b| (0..3).flat_map(move |t| [(10 * b + t) as f32, -((10 * b + t) as f32)]))
            .collect();
        let hidden = Tensor::<3>::from_data(TensorData::new(h, [2, 3, 2]), &device);
        // Row 0 right-padded (2 real tokens), row 1 left-padded (2 real tokens).
        let mask = Tensor::<2, Int>::from_data(
            TensorData::new(vec![1i64, 1, 0, 0, 1, 1], [2, 3]),
            &device,
        );
        assert_eq!(
            values(Pooling::Mean.pool(hidden.clone(), mask.clone())),
            [0.5, -0.5, 11.5, -11.5]
        );
        assert_eq!(
            values(Pooling::Cls.pool(hidden.clone(), mask.clone())),
            [0.0, 0.0, 10.0, -10.0]
        );
        assert_eq!(
            values(Pooling::LastToken.pool(hidden, mask)),
            [1.0, -1.0, 12.0, -12.0]
        );
    }
}
