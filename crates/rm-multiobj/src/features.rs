//! Frozen backbone features, computed once and cached.
//!
//! An [`Embedder`] is a backbone (MiniLM, SmolLM2, or the backbone of a trained reward model)
//! with its tokenizer, chat template and pooling: `φ(prompt, response)` is the pooled last hidden
//! state of the rendered text, `φ(prompt)` that of the rendered prompt alone (the gating
//! network's input, as in ArmoRM).
//!
//! A [`FeatureCache`] keeps features in a folder, one entry per (embedder, list of texts): the
//! entry's key is the sha256 of the embedder's identity and of every text (length-prefixed), its
//! files are `KEY.safetensors` (one tensor `features`, `[N, D]` f32) and `KEY.json` (the index
//! entry: key, embedder, count, dim). A rerun with the same embedder and texts reads the entry
//! instead of running the backbone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rm_core::burn::tensor::Device;
use rm_core::checkpoint::write_bytes_atomically;
use rm_core::models::pooling::Pooling;
use rm_core::models::reward::{RewardModelBundle, RewardModelConfig, SPEC_FILE};
use rm_core::tokenize::TruncationSide;
use rm_core::types::Prompt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which backbone gives the features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum EmbedderConfig {
    /// An HF folder or `.gguf` (BERT encoders pool the mean by default, decoders the last token).
    Backbone {
        path: PathBuf,
        #[serde(default)]
        pooling: Option<Pooling>,
        #[serde(default = "default_max_len")]
        max_len: usize,
    },
    /// The backbone (weights, template, pooling, max length) of a trained reward-model folder.
    RewardModel { path: PathBuf },
}

fn default_max_len() -> usize {
    128
}

impl EmbedderConfig {
    /// The same config with its path made absolute (what a saved model folder records).
    pub fn absolute(&self) -> Result<Self> {
        Ok(match self {
            EmbedderConfig::Backbone {
                path,
                pooling,
                max_len,
            } => EmbedderConfig::Backbone {
                path: std::path::absolute(path)?,
                pooling: *pooling,
                max_len: *max_len,
            },
            EmbedderConfig::RewardModel { path } => EmbedderConfig::RewardModel {
                path: std::path::absolute(path)?,
            },
        })
    }

    /// The same config with `models/…` paths looked up in `models_dir`.
    pub fn resolved(&self, models_dir: &Path) -> Self {
        let fix = |p: &Path| rm_core::paths::resolve_model_path(p, models_dir);
        match self {
            EmbedderConfig::Backbone {
                path,
                pooling,
                max_len,
            } => EmbedderConfig::Backbone {
                path: fix(path),
                pooling: *pooling,
                max_len: *max_len,
            },
            EmbedderConfig::RewardModel { path } => EmbedderConfig::RewardModel { path: fix(path) },
        }
    }
}

/// A frozen backbone that turns texts into pooled feature vectors.
#[derive(Debug)]
pub struct Embedder {
    bundle: RewardModelBundle,
    id: String,
}

/// Names, sizes and modification times of a folder's weight files: part of an embedder's
/// identity, so a retrained folder at the same path gets new cache entries.
fn weights_fingerprint(path: &Path) -> String {
    let mut parts = Vec::new();
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if !(name.ends_with(".safetensors") || name.ends_with(".gguf") || name == SPEC_FILE) {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(&f) {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            parts.push(format!("{name}:{}:{mtime}", meta.len()));
        }
    }
    parts.join(",")
}

impl Embedder {
    /// Loads the backbone `config` names (paths already resolved, [`EmbedderConfig::resolved`]).
    pub fn load(config: &EmbedderConfig, device: &Device) -> Result<Self> {
        let (bundle, path) = match config {
            EmbedderConfig::Backbone {
                path,
                pooling,
                max_len,
            } => {
                let rm_config = RewardModelConfig {
                    backbone: path.clone(),
                    pooling: *pooling,
                    max_len: *max_len,
                    truncation: TruncationSide::Left,
                    attributes: vec!["unused".into()],
                    template: None,
                    lora: None,
                    head_init_std: 0.0,
                };
                (RewardModelBundle::build(&rm_config, 0, device)?, path)
            }
            EmbedderConfig::RewardModel { path } => (RewardModelBundle::load(path, device)?, path),
        };
        let s = &bundle.spec;
        let id = format!(
            "{:?}|{}|{:?}|{}|{:?}|{:?}|{}",
            s.kind,
            std::path::absolute(path)?.display(),
            s.pooling,
            s.max_len,
            s.truncation,
            s.template,
            weights_fingerprint(path)
        );
        Ok(Self { bundle, id })
    }

    /// The reward head of the folder this embedder was loaded from (a fresh, unused head for a
    /// bare backbone).
    pub fn head(&self) -> Result<crate::HostLinear> {
        crate::HostLinear::from_linear(&self.bundle.model.head)
    }

    /// What identifies this embedder in cache keys.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The text `φ(prompt, response)` encodes: the template's prompt and response.
    pub fn pair_text(&self, prompt: &Prompt, response: &str) -> Result<String> {
        self.bundle.text(prompt, response)
    }

    /// The text `φ(prompt)` encodes: the template's rendering of the prompt alone.
    pub fn prompt_text(&self, prompt: &Prompt) -> Result<String> {
        self.bundle.spec.template.render_prompt(prompt)
    }

    /// Pooled last hidden states, one vector per text, in batches of texts of similar length.
    pub fn embed(&self, texts: &[String], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let options = self.bundle.encode_options();
        let lengths: Vec<usize> = texts
            .iter()
            .map(|t| Ok(self.bundle.tokenizer.encode_text(t, &options)?.len()))
            .collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let device = &self.bundle.device;
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let refs: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            let batch = self.bundle.encode(&refs)?;
            let mask = batch.attention_tensor(device);
            let hidden = self
                .bundle
                .model
                .backbone
                .hidden(batch.ids_tensor(device), mask.clone());
            let pooled = self.bundle.spec.pooling.pool(hidden, mask);
            let d = pooled.dims()[1];
            let values = crate::tensor_vec(pooled)?;
            for (row, &i) in chunk.iter().enumerate() {
                out[i] = values[row * d..(row + 1) * d].to_vec();
            }
        }
        if let Some(i) = out.iter().position(|v| v.iter().any(|x| !x.is_finite())) {
            bail!("the backbone produced non-finite features for text {i}");
        }
        Ok(out)
    }
}

/// Whether an entry was read or computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheStatus {
    Hit,
    Computed,
}

/// The index entry written next to each features file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub key: String,
    pub embedder: String,
    pub count: usize,
    pub dim: usize,
}

/// A folder of cached features (module docs).
#[derive(Clone, Debug)]
pub struct FeatureCache {
    pub dir: PathBuf,
}

const TENSOR: &str = "features";

impl FeatureCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The key of (embedder, texts): sha256 over the embedder id and each length-prefixed text.
    pub fn key(embedder_id: &str, texts: &[String]) -> String {
        let mut h = Sha256::new();
        h.update((embedder_id.len() as u64).to_le_bytes());
        h.update(embedder_id.as_bytes());
        for t in texts {
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The features of `texts`: read from the cache when an entry for (embedder, texts) exists,
    /// else computed by `compute` and stored.
    pub fn get_or_compute(
        &self,
        embedder_id: &str,
        texts: &[String],
        compute: impl FnOnce(&[String]) -> Result<Vec<Vec<f32>>>,
    ) -> Result<(Vec<Vec<f32>>, CacheStatus)> {
        if texts.is_empty() {
            bail!("no texts to embed");
        }
        let key = Self::key(embedder_id, texts);
        let data = self.dir.join(format!("{key}.safetensors"));
        let index = self.dir.join(format!("{key}.json"));
        if data.is_file() && index.is_file() {
            return Ok((self.read(&data, &index, texts.len())?, CacheStatus::Hit));
        }
        let features = compute(texts)?;
        if features.len() != texts.len() {
            bail!(
                "{} texts gave {} feature vectors",
                texts.len(),
                features.len()
            );
        }
        let dim = features[0].len();
        if let Some(i) = features.iter().position(|f| f.len() != dim) {
            bail!(
                "feature vector {i} has {} values, vector 0 has {dim}",
                features[i].len()
            );
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating the feature cache {}", self.dir.display()))?;
        let bytes: Vec<u8> = features
            .iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![features.len(), dim],
            &bytes,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let encoded = safetensors::serialize(vec![(TENSOR, view)], None)
            .map_err(|e| anyhow::anyhow!("serializing features: {e}"))?;
        write_bytes_atomically(&data, &encoded)?;
        let entry = CacheEntry {
            key,
            embedder: embedder_id.to_string(),
            count: features.len(),
            dim,
        };
        write_bytes_atomically(&index, serde_json::to_string_pretty(&entry)?.as_bytes())?;
        Ok((features, CacheStatus::Computed))
    }

    fn read(&self, data: &Path, index: &Path, count: usize) -> Result<Vec<Vec<f32>>> {
        let entry: CacheEntry = serde_json::from_str(
            &std::fs::read_to_string(index)
                .with_context(|| format!("reading {}", index.display()))?,
        )
        .with_context(|| format!("{}: not a feature-cache index entry", index.display()))?;
        let bytes = std::fs::read(data).with_context(|| format!("reading {}", data.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
        let t = st
            .tensor(TENSOR)
            .map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape() != [count, entry.dim] {
            bail!(
                "{}: tensor {TENSOR} is {:?} {:?}, expected F32 [{count}, {}] (delete the entry to recompute it)",
                data.display(),
                t.dtype(),
                t.shape(),
                entry.dim
            );
        }
        let flat: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(flat.chunks(entry.dim).map(<[f32]>::to_vec).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_call_reads_the_cache_and_other_texts_miss_it() {
        let dir = std::env::temp_dir().join(format!("rm-multiobj-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = FeatureCache::new(&dir);
        let texts: Vec<String> = vec!["a".into(), "bb".into()];
        let calls = std::cell::Cell::new(0);
        let compute = |t: &[String]| -> Result<Vec<Vec<f32>>> {
            calls.set(calls.get() + 1);
            Ok(t.iter().map(|s| vec![s.len() as f32, 0.5, -1.0]).collect())
        };
        let (first, s1) = cache.get_or_compute("emb", &texts, compute).unwrap();
        let (second, s2) = cache.get_or_compute("emb", &texts, compute).unwrap();
        assert_eq!((s1, s2), (CacheStatus::Computed, CacheStatus::Hit));
        assert_eq!(calls.get(), 1);
        assert_eq!(first, second);
        assert_eq!(second[1], vec![2.0, 0.5, -1.0]);
        // Another embedder or other texts: another key.
        let (_, s3) = cache.get_or_compute("emb2", &texts, compute).unwrap();
        let (_, s4) = cache.get_or_compute("emb", &texts[..1], compute).unwrap();
        assert_eq!((s3, s4), (CacheStatus::Computed, CacheStatus::Computed));
        // Length prefixes: ["ab", "c"] and ["a", "bc"] differ.
        assert_ne!(
            FeatureCache::key("e", &["ab".into(), "c".into()]),
            FeatureCache::key("e", &["a".into(), "bc".into()])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
