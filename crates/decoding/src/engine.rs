//! Host-stepped decoding over [`IncrementalDecoder`]: prefill a batch, then one token per row,
//! the logits read back so a strategy can choose each token itself (ARGS, controlled decoding).
//! Best-of-n and rejection sampling use [`rm_core::sampling::generate`] unchanged.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rm_core::burn::tensor::{Int, Tensor, TensorData};
use rm_core::models::llama::CausalLm;
use rm_core::sampling::IncrementalDecoder;

use crate::error::{DecodeError, Result};

/// The RNG of row `row` under `seed`, the stream [`rm_core::sampling::generate`] gives that row.
pub(crate) fn row_rng(seed: u64, row: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A batch being decoded with the KV cache.
pub(crate) struct Batch<'a> {
    lm: &'a CausalLm,
    cache: <CausalLm as IncrementalDecoder>::Cache,
    mask: Vec<Vec<i64>>,
}

fn host_rows(logits: Tensor<2>) -> Result<Vec<Vec<f32>>> {
    let [rows, vocab] = logits.dims();
    let flat: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| DecodeError::Model(format!("reading logits: {e:?}")))?;
    if flat.len() != rows * vocab {
        return Err(DecodeError::Model("logits of the wrong size".into()));
    }
    Ok(flat.chunks(vocab).map(<[f32]>::to_vec).collect())
}

fn mask_tensor(lm: &CausalLm, mask: &[Vec<i64>]) -> Tensor<2, Int> {
    let cols = mask[0].len();
    let flat: Vec<i64> = mask.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [mask.len(), cols]), &lm.device)
}

impl<'a> Batch<'a> {
    /// Prefills `rows` (left-padded with the pad id); returns the batch and each row's
    /// next-token logits.
    pub fn prefill(lm: &'a CausalLm, rows: &[Vec<u32>]) -> Result<(Self, Vec<Vec<f32>>)> {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        if rows.is_empty() || rows.iter().any(Vec::is_empty) {
            return Err(DecodeError::EmptyInput("an empty prompt".into()));
        }
        let pad = lm.tokenizer.pad_id();
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len());
        for r in rows {
            let n = len - r.len();
            ids.extend(std::iter::repeat_n(pad as i64, n));
            ids.extend(r.iter().map(|&t| t as i64));
            let mut m = vec![0i64; n];
            m.extend(std::iter::repeat_n(1i64, r.len()));
            mask.push(m);
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [rows.len(), len]), &lm.device);
        let (logits, cache) = lm
            .prefill(ids, mask_tensor(lm, &mask))
            .map_err(DecodeError::model)?;
        Ok((Self { lm, cache, mask }, host_rows(logits)?))
    }

    /// Feeds one token per row (`None`: the row is finished, fed the pad id masked out);
    /// returns the next logits.
    pub fn step(&mut self, next: &[Option<u32>]) -> Result<Vec<Vec<f32>>> {
        let pad = self.lm.tokenizer.pad_id();
        let ids: Vec<i64> = next.iter().map(|t| t.unwrap_or(pad) as i64).collect();
        for (m, t) in self.mask.iter_mut().zip(next) {
            m.push(i64::from(t.is_some()));
        }
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(ids, [next.len(), 1]), &self.lm.device);
        let logits = self
            .lm
            .step(ids, mask_tensor(self.lm, &self.mask), &mut self.cache)
            .map_err(DecodeError::model)?;
        host_rows(logits)
    }
}
