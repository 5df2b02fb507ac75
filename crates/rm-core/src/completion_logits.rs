//! The LM head's full-vocabulary logits on a batch's completion tokens, laid out on a compact
//! grid: what token-level distillation and token-wise KL objectives (RRPO, AlignDistil) read.
//!
//! [`crate::logprobs::SequenceLogprobs`] puts per-token values on the `[R, T−1]` grid of the
//! right-padded batch (position `j` predicts token `j + 1`), mostly prompt and padding. A
//! `[R, T−1, V]` logits tensor on that grid would be mostly waste (SmolLM2's `V` is 49,152), so
//! [`CompletionLogits`] keeps only the scored positions: entry `[r, m]` holds the logits that
//! predict the `m`-th scored token of row `r`, `[N, L, V]` with `L` the longest row's count.
//! [`CompletionLogits::gather`] moves any `[R, T−1]` per-token tensor onto the same grid.

use burn::tensor::{Device, Int, Tensor, TensorData};

/// Full-vocabulary logits of the first `N` rows' scored tokens; see the module docs.
#[derive(Clone, Debug)]
pub struct CompletionLogits {
    /// `[N, L, V]`: `[r, m]` predicts the `m`-th scored token of row `r`. Padding entries
    /// (`mask` 0) repeat a real position's logits, so every entry is finite.
    pub logits: Tensor<3>,
    /// `[N, L]`: the column of the `[R, T−1]` grid each entry comes from (0 for padding).
    pub positions: Tensor<2, Int>,
    /// `[N, L]`: 1 on scored tokens, 0 on padding.
    pub mask: Tensor<2>,
}

impl CompletionLogits {
    /// The compact logits of rows `0..N` from `logits` `[S, V]`, the LM head's output on the
    /// batch's `S` scored positions; `scored[r]` lists row `r`'s positions in order, each as
    /// `(row of logits, column of the [R, T−1] grid)`.
    pub(crate) fn from_scored(logits: Tensor<2>, scored: &[Vec<(usize, usize)>]) -> Self {
        let device = logits.device();
        let [s, vocab] = logits.dims();
        let n = scored.len();
        let width = scored.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut rows = vec![0i64; n * width];
        let mut columns = vec![0i64; n * width];
        let mut mask = vec![0f32; n * width];
        for (r, entries) in scored.iter().enumerate() {
            for (m, &(row, column)) in entries.iter().enumerate() {
                rows[r * width + m] = row as i64;
                columns[r * width + m] = column as i64;
                mask[r * width + m] = 1.0;
            }
        }
        let logits = match s {
            0 => Tensor::zeros([n, width, vocab], &device),
            _ => logits
                .select(0, int_tensor(rows, [n * width], &device))
                .reshape([n, width, vocab]),
        };
        Self {
            logits,
            positions: Tensor::from_data(TensorData::new(columns, [n, width]), &device),
            mask: Tensor::from_data(TensorData::new(mask, [n, width]), &device),
        }
    }

    /// `grid`'s values (`[R, T−1]`, `R ≥ N`, e.g. per-token log-probs; its first `N` rows are
    /// this grid's rows) on this compact grid, `[N, L]`, 0 on padding. Differentiable (a
    /// gather).
    pub fn gather(&self, grid: Tensor<2>) -> Tensor<2> {
        let [n, _] = self.mask.dims();
        grid.narrow(0, 0, n).gather(1, self.positions.clone()) * self.mask.clone()
    }

    /// Rows `start..start + len` of the compact grid (logits, positions and mask); gather onto
    /// it from the grid's rows `start..start + len`.
    pub fn rows(&self, start: usize, len: usize) -> Self {
        Self {
            logits: self.logits.clone().narrow(0, start, len),
            positions: self.positions.clone().narrow(0, start, len),
            mask: self.mask.clone().narrow(0, start, len),
        }
    }

    /// The same values without a graph (a teacher's or reference's logits).
    pub fn detach(self) -> Self {
        Self {
            logits: self.logits.detach(),
            ..self
        }
    }
}

fn int_tensor(values: Vec<i64>, shape: [usize; 1], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}
