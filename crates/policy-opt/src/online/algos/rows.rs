//! Host-side `[B][T]` rows: shape checks and the masked statistics verl computes on them
//! (`verl.utils.torch_functional.masked_mean / masked_whiten`), in f64.

use super::AlgoError;

/// Checks that `rows` is `[b][t]` (`t` = `None`: any common width). Returns the width.
pub(crate) fn check_rows(
    what: &'static str,
    array: &'static str,
    rows: &[Vec<f32>],
    b: usize,
    t: Option<usize>,
) -> Result<usize, AlgoError> {
    let width = t.unwrap_or_else(|| rows.first().map_or(0, Vec::len));
    if rows.len() != b {
        return Err(AlgoError::ShapeMismatch {
            what,
            array,
            expected: vec![b, width],
            actual: vec![rows.len(), rows.first().map_or(0, Vec::len)],
        });
    }
    for (row, r) in rows.iter().enumerate() {
        if r.len() != width {
            return Err(AlgoError::RaggedRows {
                what,
                array,
                row,
                len: r.len(),
                expected: width,
            });
        }
    }
    Ok(width)
}

/// Checks that a per-row input has `b` entries.
pub(crate) fn check_len(
    what: &'static str,
    array: &'static str,
    len: usize,
    b: usize,
) -> Result<(), AlgoError> {
    if len == b {
        Ok(())
    } else {
        Err(AlgoError::ShapeMismatch {
            what,
            array,
            expected: vec![b],
            actual: vec![len],
        })
    }
}

/// Number of tokens on the mask of each row (the mask's sum, as verl).
pub(crate) fn row_lengths(mask: &[Vec<f32>]) -> Vec<f64> {
    mask.iter()
        .map(|r| r.iter().map(|&m| f64::from(m)).sum())
        .collect()
}

/// Whitens `values` over the mask of the whole batch:
/// `(x − μ) / sqrt(σ² + 1e-8)` with `μ = Σ m·x / (Σ m + 1e-8)` and the Bessel-corrected
/// `σ² = Σ m·(x − μ)² / (Σ m + 1e-8) · Σm / (Σm − 1)`. Every entry is transformed, on the mask or
/// not (the caller multiplies by the mask where verl does). Fewer than 2 mask tokens is an error,
/// as in verl.
pub(crate) fn masked_whiten(
    what: &'static str,
    values: &[Vec<f64>],
    mask: &[Vec<f32>],
) -> Result<Vec<Vec<f64>>, AlgoError> {
    let mut sum = 0.0;
    let mut count = 0.0;
    for (v, m) in values.iter().zip(mask) {
        for (&x, &w) in v.iter().zip(m) {
            if w != 0.0 {
                sum += x * f64::from(w);
            }
            count += f64::from(w);
        }
    }
    if count < 2.0 {
        return Err(AlgoError::TooFewTokens {
            what,
            tokens: count.max(0.0) as usize,
        });
    }
    let mean = sum / (count + 1e-8);
    let mut sq = 0.0;
    for (v, m) in values.iter().zip(mask) {
        for (&x, &w) in v.iter().zip(m) {
            if w != 0.0 {
                sq += (x - mean).powi(2) * f64::from(w);
            }
        }
    }
    let var = sq / (count + 1e-8) * count / (count - 1.0);
    let scale = 1.0 / (var + 1e-8).sqrt();
    Ok(values
        .iter()
        .map(|v| v.iter().map(|&x| (x - mean) * scale).collect())
        .collect())
}

/// `rows` back to f32.
pub(crate) fn to_f32(rows: Vec<Vec<f64>>) -> Vec<Vec<f32>> {
    rows.into_iter()
        .map(|r| r.into_iter().map(|x| x as f32).collect())
        .collect()
}

/// The row indices of each group, groups in order of first appearance.
pub(crate) fn groups(group: &[usize]) -> Vec<Vec<usize>> {
    let mut members: std::collections::HashMap<usize, usize> = Default::default();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, &g) in group.iter().enumerate() {
        let slot = *members.entry(g).or_insert_with(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[slot].push(i);
    }
    out
}

/// The mean and the unbiased (Bessel-corrected, as `torch.std`) standard deviation of `xs`;
/// `(0, 1)` for a single value, verl's convention for a group of one.
pub(crate) fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.len() < 2 {
        return (0.0, 1.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}
