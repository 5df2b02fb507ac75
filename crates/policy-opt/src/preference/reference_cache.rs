//! Reference log-probs computed once before training (TRL's `precompute_ref_log_probs`) and
//! kept on disk, so that a DPO step runs the policy only, and a second run on the same data and
//! reference skips the computation.
//!
//! The cache file is `<cache dir>/reference-logps/<key>.safetensors`, the key a SHA-256 over a
//! format tag, the reference model's files (each one's name, size and modification time: a
//! changed file misses the cache) and every training sequence's token ids and completion mask.
//! It holds `values` (the per-token log-probs of every sequence, positions `1..len` each, in
//! pair order: chosen then rejected) and `lengths` (each sequence's `len − 1`), and is written
//! atomically; a file that does not read back to the expected shape is an error naming it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rm_core::burn::module::Module;
use rm_core::burn::tensor::{Device, Tensor, TensorData};
use rm_core::models::llama::LlamaModel;
use rm_core::policy::CausalPolicy;
use rm_core::tokenize::{PaddingSide, Sequence, TokenBatch};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::data::EncodedPair;

/// The `[reference]` section of a preference recipe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReferenceConfig {
    /// Compute the reference's log-probs of every training pair once, before training, and
    /// reuse them from the cache directory in later runs (TRL's `precompute_ref_log_probs`).
    /// DPO objectives only.
    pub precompute: bool,
    /// Where the cache lives (default: `$PLUMB_CACHE_DIR`, else `~/.cache/plumbline`).
    pub cache_dir: Option<PathBuf>,
}

/// The reference's per-token log-probs of one pair's two sequences (positions `1..len`).
#[derive(Clone, Debug, PartialEq)]
pub struct PairReference {
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
}

/// Whether [`load_or_compute`] found the cache file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Read from this file.
    Hit(PathBuf),
    /// Computed and written to this file.
    Written(PathBuf),
}

impl CacheStatus {
    pub fn path(&self) -> &Path {
        match self {
            Self::Hit(p) | Self::Written(p) => p,
        }
    }
}

const FORMAT: &str = "plumbline reference-logps v1";

/// The cache key of `pairs` under the reference loaded from `model_path` (a file or a folder).
pub fn cache_key(model_path: &Path, pairs: &[EncodedPair]) -> Result<String> {
    let mut hash = Sha256::new();
    hash.update(FORMAT.as_bytes());
    let mut files = if model_path.is_dir() {
        std::fs::read_dir(model_path)
            .with_context(|| format!("listing {}", model_path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("listing {}", model_path.display()))?
    } else {
        vec![model_path.to_path_buf()]
    };
    files.sort();
    for file in files.iter().filter(|f| f.is_file()) {
        let meta =
            std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hash.update(file.file_name().unwrap_or_default().as_encoded_bytes());
        hash.update(meta.len().to_le_bytes());
        hash.update(modified.to_le_bytes());
    }
    let mut sequence = |s: &Sequence| {
        hash.update((s.ids.len() as u64).to_le_bytes());
        for (&id, &c) in s.ids.iter().zip(&s.completion) {
            hash.update(id.to_le_bytes());
            hash.update([c as u8]);
        }
    };
    for p in pairs {
        sequence(&p.chosen);
        sequence(&p.rejected);
    }
    Ok(format!("{:x}", hash.finalize()))
}

/// The reference's per-token log-probs of every pair, `batch` pairs per forward pass (pairs
/// taken in length order so batches pad little).
pub fn compute(
    reference: &LlamaModel,
    pairs: &[EncodedPair],
    pad_id: u32,
    batch: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<PairReference>> {
    let reference = reference.valid();
    let device = reference.embed_tokens.weight.val().device();
    let seqs: Vec<&Sequence> = pairs
        .iter()
        .flat_map(|p| [&p.chosen, &p.rejected])
        .collect();
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
    let mut rows: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
    for chunk in order.chunks(2 * batch.max(1)) {
        let padded: Vec<Sequence> = chunk.iter().map(|&i| seqs[i].clone()).collect();
        let b = TokenBatch::pad(&padded, pad_id, PaddingSide::Right)?;
        let logps = reference
            .completion_logprobs(
                b.ids_tensor(&device),
                b.attention_tensor(&device),
                b.completion_tensor(&device),
                false,
            )?
            .token_logprobs;
        let width = b.seq_len - 1;
        let values: Vec<f32> = logps
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| anyhow::anyhow!("reading reference log-probs: {e:?}"))?;
        for (k, &i) in chunk.iter().enumerate() {
            let len = seqs[i].len().saturating_sub(1);
            rows[i] = values[k * width..k * width + len].to_vec();
        }
        progress(chunk.len() / 2);
    }
    let mut rows = rows.into_iter();
    Ok(pairs
        .iter()
        .map(|_| PairReference {
            chosen: rows.next().unwrap_or_default(),
            rejected: rows.next().unwrap_or_default(),
        })
        .collect())
}

/// The cached reference log-probs of `pairs` under the reference loaded from `model_path`, or
/// (on a miss) [`compute`]d and written to the cache.
pub fn load_or_compute(
    config: &ReferenceConfig,
    model_path: &Path,
    reference: &LlamaModel,
    pairs: &[EncodedPair],
    pad_id: u32,
    batch: usize,
) -> Result<(Vec<PairReference>, CacheStatus)> {
    let dir = rm_core::paths::cache_dir(config.cache_dir.as_deref()).join("reference-logps");
    let path = dir.join(format!("{}.safetensors", cache_key(model_path, pairs)?));
    if path.is_file() {
        let refs = read(&path, pairs)?;
        return Ok((refs, CacheStatus::Hit(path)));
    }
    let total = pairs.len();
    let mut done = 0;
    let refs = compute(reference, pairs, pad_id, batch, |n| {
        done += n;
        eprint!("\rreference log-probs: {done}/{total} pairs");
    })?;
    eprintln!();
    write(&path, &refs)?;
    Ok((refs, CacheStatus::Written(path)))
}

fn write(path: &Path, refs: &[PairReference]) -> Result<()> {
    let rows = || refs.iter().flat_map(|r| [&r.chosen, &r.rejected]);
    let values: Vec<u8> = rows().flatten().flat_map(|v| v.to_le_bytes()).collect();
    let lengths: Vec<u8> = rows()
        .flat_map(|r| (r.len() as u64).to_le_bytes())
        .collect();
    let n_values = values.len() / 4;
    let n_rows = 2 * refs.len();
    let views = [
        (
            "values",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n_values], &values)?,
        ),
        (
            "lengths",
            safetensors::tensor::TensorView::new(safetensors::Dtype::U64, vec![n_rows], &lengths)?,
        ),
    ];
    let bytes = safetensors::serialize(views, None)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    rm_core::checkpoint::write_bytes_atomically(path, &bytes)
}

fn read(path: &Path, pairs: &[EncodedPair]) -> Result<Vec<PairReference>> {
    let bad = |what: String| anyhow::anyhow!("reference cache {}: {what}", path.display());
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let tensor = |name: &str, dtype| {
        let t = file
            .tensor(name)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        if t.dtype() != dtype {
            return Err(bad(format!("tensor {name} is {:?}", t.dtype())));
        }
        Ok(t.data().to_vec())
    };
    let values: Vec<f32> = tensor("values", safetensors::Dtype::F32)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let lengths: Vec<usize> = tensor("lengths", safetensors::Dtype::U64)?
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .collect();
    let expected: Vec<usize> = pairs
        .iter()
        .flat_map(|p| [p.chosen.len(), p.rejected.len()])
        .map(|l| l.saturating_sub(1))
        .collect();
    if lengths != expected || lengths.iter().sum::<usize>() != values.len() {
        bail!(
            "reference cache {}: its rows do not match the training pairs (delete it to recompute)",
            path.display()
        );
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "reference cache {}: value {i} is {}",
            path.display(),
            values[i]
        );
    }
    let mut offset = 0;
    let mut row = |len: usize| {
        let r = values[offset..offset + len].to_vec();
        offset += len;
        r
    };
    Ok(lengths
        .chunks(2)
        .map(|l| PairReference {
            chosen: row(l[0]),
            rejected: row(l[1]),
        })
        .collect())
}

/// The `[2B, width]` reference log-probs of a batch of pairs laid out as the task pads them
/// (chosen rows first, then rejected; zeros past each row's length).
pub fn batch_tensor(refs: &[&PairReference], width: usize, device: &Device) -> Tensor<2> {
    let b = refs.len();
    let mut data = vec![0f32; 2 * b * width];
    for (k, row) in refs
        .iter()
        .map(|r| &r.chosen)
        .chain(refs.iter().map(|r| &r.rejected))
        .enumerate()
    {
        let len = row.len().min(width);
        data[k * width..k * width + len].copy_from_slice(&row[..len]);
    }
    Tensor::from_data(TensorData::new(data, [2 * b, width]), device)
}
