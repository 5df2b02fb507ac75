//! The LM head's full-vocabulary logits on a batch's completion tokens: what token-level
//! distillation and token-wise KL objectives (RRPO, AlignDistil) and the entropy of RL losses
//! read.
//!
//! [`crate::logprobs::SequenceLogprobs`] puts per-token values on the `[R, T−1]` grid of the
//! right-padded batch (position `j` predicts token `j + 1`), mostly prompt and padding. A
//! `[R, T−1, V]` logits tensor on that grid would be mostly waste (SmolLM2's `V` is 49,152), so
//! [`CompletionLogits`] keeps the head's output on the scored positions only, `[S, V]`, as the
//! head computed it (no copy), and maps it two ways: onto a compact grid `[N, L, V]`
//! ([`CompletionLogits::logits`]: entry `[r, m]` predicts the `m`-th scored token of row `r`, `L`
//! the longest row's count) with [`CompletionLogits::gather`] moving any `[R, T−1]` tensor onto
//! it, and back onto the `[N, T−1]` grid ([`CompletionLogits::spread`]) for per-position values
//! computed on the `S` rows.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

/// Full-vocabulary logits of the first `N` rows' scored tokens; see the module docs.
#[derive(Clone, Debug)]
pub struct CompletionLogits {
    /// `[S, V]`: the logits predicting each scored token of rows `0..N`, row by row, in order
    /// (`[1, V]` of zeros when no token is scored).
    pub scored: Tensor<2>,
    /// `[N, L]`: the column of the `[R, T−1]` grid each compact entry comes from (0 for
    /// padding).
    pub positions: Tensor<2, Int>,
    /// `[N, L]`: 1 on scored tokens, 0 on padding.
    pub mask: Tensor<2>,
    /// `[N·L]`: the row of `scored` behind each compact entry (padding repeats row 0).
    compact: Tensor<1, Int>,
    /// `[S]`: each scored row's index `r·(T−1) + j` on the `[N, T−1]` grid.
    destinations: Tensor<1, Int>,
    /// `T − 1`.
    width: usize,
}

impl CompletionLogits {
    /// The logits of rows `0..N` from `logits` `[S', V]`, the LM head's output on a batch of
    /// grid width `width` (`T − 1`); `scored[r]` lists row `r`'s scored positions in order,
    /// each as `(row of logits, column of the grid)`. When those rows are a prefix of `logits`
    /// (the usual case), `scored` is a view of it.
    pub(crate) fn from_scored(
        logits: Tensor<2>,
        scored: &[Vec<(usize, usize)>],
        width: usize,
    ) -> Self {
        let device = logits.device();
        let vocab = logits.dims()[1];
        let n = scored.len();
        let longest = scored.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let sources: Vec<usize> = scored.iter().flatten().map(|&(row, _)| row).collect();
        let count = sources.len();
        let scored_rows = if count == 0 {
            Tensor::zeros([1, vocab], &device)
        } else if sources.iter().enumerate().all(|(k, &row)| k == row) {
            logits.narrow(0, 0, count)
        } else {
            logits.select(
                0,
                int_tensor(sources.iter().map(|&s| s as i64).collect(), &device),
            )
        };
        let mut compact = vec![0i64; n * longest];
        let mut columns = vec![0i64; n * longest];
        let mut mask = vec![0f32; n * longest];
        let mut destinations = Vec::with_capacity(count);
        let mut k = 0;
        for (r, entries) in scored.iter().enumerate() {
            for (m, &(_, column)) in entries.iter().enumerate() {
                compact[r * longest + m] = k as i64;
                columns[r * longest + m] = column as i64;
                mask[r * longest + m] = 1.0;
                destinations.push((r * width + column) as i64);
                k += 1;
            }
        }
        Self {
            scored: scored_rows,
            positions: Tensor::from_data(TensorData::new(columns, [n, longest]), &device),
            mask: Tensor::from_data(TensorData::new(mask, [n, longest]), &device),
            compact: int_tensor(compact, &device),
            destinations: int_tensor(destinations, &device),
            width,
        }
    }

    /// The logits on the compact grid, `[N, L, V]` (a copy of the scored rows; padding entries
    /// repeat a real row, so every entry is finite).
    pub fn logits(&self) -> Tensor<3> {
        let [n, longest] = self.mask.dims();
        let vocab = self.scored.dims()[1];
        self.scored
            .clone()
            .select(0, self.compact.clone())
            .reshape([n, longest, vocab])
    }

    /// `grid`'s values (`[R, T−1]`, `R ≥ N`, e.g. per-token log-probs; its first `N` rows are
    /// this batch's rows) on the compact grid, `[N, L]`, 0 on padding. Differentiable.
    pub fn gather(&self, grid: Tensor<2>) -> Tensor<2> {
        let [n, _] = self.mask.dims();
        grid.narrow(0, 0, n).gather(1, self.positions.clone()) * self.mask.clone()
    }

    /// Per-scored-row values `[S]` (computed on [`Self::scored`]) on the `[N, T−1]` grid, 0 at
    /// the positions that were not scored. Differentiable.
    pub fn spread(&self, values: Tensor<1>) -> Tensor<2> {
        let [n, _] = self.mask.dims();
        let device = values.device();
        if self.destinations.dims()[0] == 0 {
            return Tensor::zeros([n, self.width], &device);
        }
        Tensor::<1>::zeros([n * self.width], &device)
            .select_assign(0, self.destinations.clone(), values, IndexingUpdateOp::Add)
            .reshape([n, self.width])
    }

    /// The same values without a graph (a teacher's or reference's logits).
    pub fn detach(self) -> Self {
        Self {
            scored: self.scored.detach(),
            ..self
        }
    }
}

fn int_tensor(values: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}
