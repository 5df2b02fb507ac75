//! HF safetensors as a [`WeightSource`]: one file, or every `*.safetensors` of a folder (sharded
//! checkpoints). F32, F16 and BF16 tensors are read as f32.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use safetensors::{Dtype, SafeTensors};

use super::weights::{HostTensor, WeightSource};

/// The tensors of one or more safetensors files, held in memory.
pub struct SafetensorsWeights {
    files: Vec<(PathBuf, Vec<u8>)>,
    /// tensor name → index into `files`.
    index: BTreeMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsWeights")
            .field(
                "files",
                &self.files.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl SafetensorsWeights {
    /// Opens a `.safetensors` file, or every `.safetensors` file of a folder.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let paths = if path.is_dir() {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("listing {}", path.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            paths.sort();
            if paths.is_empty() {
                bail!("{} holds no .safetensors file", path.display());
            }
            paths
        } else if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            bail!("{} does not exist", path.display());
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut index = BTreeMap::new();
        for (i, p) in paths.into_iter().enumerate() {
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            let names = SafeTensors::deserialize(&bytes)
                .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", p.display()))?
                .names()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>();
            for name in names {
                if index.insert(name.clone(), i).is_some() {
                    bail!(
                        "tensor {name} appears in more than one file of {}",
                        p.display()
                    );
                }
            }
            files.push((p, bytes));
        }
        Ok(Self { files, index })
    }

    /// The files read, in order.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|(p, _)| p.as_path()).collect()
    }
}

/// Decodes little-endian tensor bytes as f32.
pub fn decode_f32(dtype: Dtype, data: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => bail!("unsupported safetensors dtype {other:?} (F32, F16 and BF16 are)"),
    })
}

impl WeightSource for SafetensorsWeights {
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let Some(&i) = self.index.get(name) else {
            bail!(
                "tensor {name} is not in {}",
                self.paths()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let (path, bytes) = &self.files[i];
        let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let view = st
            .tensor(name)
            .map_err(|e| anyhow!("{}: tensor {name}: {e}", path.display()))?;
        let values = decode_f32(view.dtype(), view.data())
            .with_context(|| format!("{}: tensor {name}", path.display()))?;
        let shape = view.shape().to_vec();
        let expected: usize = shape.iter().product();
        if values.len() != expected {
            bail!(
                "{}: tensor {name} holds {} values for shape {shape:?}",
                path.display(),
                values.len()
            );
        }
        Ok(HostTensor { shape, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(dir: &Path, name: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> PathBuf {
        let data: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
        drop(data);
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let out = safetensors::serialize(views, None).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, out).unwrap();
        path
    }

    #[test]
    fn reads_shards_and_reports_bad_files() {
        let dir = std::env::temp_dir().join(format!("plumb-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_file(
            &dir,
            "model-00001-of-00002.safetensors",
            &[("a", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])],
        );
        let second = write_file(
            &dir,
            "model-00002-of-00002.safetensors",
            &[("b", vec![3], vec![5.0, 6.0, 7.0])],
        );
        let w = SafetensorsWeights::open(&dir).unwrap();
        assert_eq!(w.names(), ["a", "b"]);
        assert_eq!(w.tensor("a").unwrap().values, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(w.tensor("b").unwrap().shape, [3]);
        let err = w.tensor("c").unwrap_err().to_string();
        assert!(err.starts_with("tensor c is not in"), "{err}");

        // A truncated file is an error naming it, not a panic.
        let bytes = std::fs::read(&second).unwrap();
        std::fs::write(&second, &bytes[..bytes.len() - 5]).unwrap();
        let err = SafetensorsWeights::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains("model-00002-of-00002.safetensors: not a valid safetensors file"),
            "{err}"
        );
        for cut in [0, 4, 8, 20] {
            std::fs::write(&second, &bytes[..cut]).unwrap();
            assert!(SafetensorsWeights::open(&second).is_err());
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
