//! HF safetensors as a [`WeightSource`]: one file, a sharded checkpoint through its
//! `*.safetensors.index.json`, or every `*.safetensors` of a folder. F32, F16 and BF16 tensors
//! are read as f32.

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
    /// Opens a `.safetensors` file, a sharded checkpoint's `*.safetensors.index.json`, or a
    /// folder. A folder with an index json (`model.safetensors.index.json`) is read through it;
    /// a folder without one, through every `.safetensors` file it holds.
    ///
    /// With an index, every shard it names must exist and every tensor it lists must be in the
    /// shard it names. Malformed or truncated files and tensors held twice are errors naming
    /// the file (and the tensor).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (paths, index_file) = if path.is_dir() {
            match find_index(path)? {
                Some(index) => (shards_of(&index)?.0, Some(index)),
                None => {
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
                    (paths, None)
                }
            }
        } else if path.is_file() {
            if is_index(path) {
                (shards_of(path)?.0, Some(path.to_path_buf()))
            } else {
                (vec![path.to_path_buf()], None)
            }
        } else {
            bail!("{} does not exist", path.display());
        };
        let mut weights = Self {
            files: Vec::with_capacity(paths.len()),
            index: BTreeMap::new(),
        };
        for p in paths {
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            weights.add_file(p, bytes)?;
        }
        if let Some(index_file) = index_file {
            weights.check_index(&index_file)?;
        }
        Ok(weights)
    }

    /// Parses one safetensors file held in memory; `label` names it in error messages. The
    /// header is checked (offsets in bounds, shapes matching byte lengths) before any tensor is
    /// read.
    pub fn from_bytes(label: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        let mut weights = Self {
            files: Vec::with_capacity(1),
            index: BTreeMap::new(),
        };
        weights.add_file(label.into(), bytes)?;
        Ok(weights)
    }

    fn add_file(&mut self, p: PathBuf, bytes: Vec<u8>) -> Result<()> {
        let i = self.files.len();
        let names = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", p.display()))?
            .names()
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        for name in names {
            if let Some(first) = self.index.insert(name.clone(), i) {
                bail!(
                    "tensor {name} is in both {} and {}",
                    self.files[first].0.display(),
                    p.display()
                );
            }
        }
        self.files.push((p, bytes));
        Ok(())
    }

    /// The files read, in order.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|(p, _)| p.as_path()).collect()
    }

    /// Checks that every tensor the index lists is in the shard it names.
    fn check_index(&self, index_file: &Path) -> Result<()> {
        let (_, weight_map) = shards_of(index_file)?;
        for (name, shard) in &weight_map {
            let Some(&i) = self.index.get(name) else {
                bail!(
                    "{}: tensor {name} is listed in {shard} but is not there",
                    index_file.display()
                );
            };
            let actual = &self.files[i].0;
            if actual.file_name().is_none_or(|f| f != shard.as_str()) {
                bail!(
                    "{}: tensor {name} is listed in {shard} but is in {}",
                    index_file.display(),
                    actual.display()
                );
            }
        }
        Ok(())
    }
}

/// Whether `path` names a sharded checkpoint's index (`*.safetensors.index.json`).
fn is_index(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".safetensors.index.json"))
}

/// The index json of a folder: `model.safetensors.index.json`, else the only
/// `*.safetensors.index.json`, else none.
fn find_index(folder: &Path) -> Result<Option<PathBuf>> {
    let preferred = folder.join("model.safetensors.index.json");
    if preferred.is_file() {
        return Ok(Some(preferred));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("listing {}", folder.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_index(p))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => bail!(
            "{} holds several safetensors index files ({}); open one of them",
            folder.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The shard files an index json names (sorted, each once, in the index's folder; each must
/// exist) and its `weight_map` (tensor name → shard file name).
fn shards_of(index_file: &Path) -> Result<(Vec<PathBuf>, BTreeMap<String, String>)> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index_file)
        .with_context(|| format!("reading {}", index_file.display()))?;
    let index: Index = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a safetensors index (a json object with a \"weight_map\")",
            index_file.display()
        )
    })?;
    let folder = index_file.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<&String> = index.weight_map.values().collect();
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        bail!("{}: the weight_map is empty", index_file.display());
    }
    let mut paths = Vec::with_capacity(shards.len());
    for shard in shards {
        // A shard is a plain file name beside the index, never a path elsewhere.
        if Path::new(shard)
            .file_name()
            .is_none_or(|f| f != shard.as_str())
        {
            bail!(
                "{}: shard {shard:?} is not a file name",
                index_file.display()
            );
        }
        let p = folder.join(shard);
        if !p.is_file() {
            bail!(
                "{}: shard {} is missing (an incomplete download?)",
                index_file.display(),
                p.display()
            );
        }
        paths.push(p);
    }
    Ok((paths, index.weight_map))
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
        super::weights::check_finite(&path.display().to_string(), name, &values)?;
        Ok(HostTensor { shape, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Writes `(name, dtype, shape, little-endian bytes)` tensors to `dir/name`.
    fn write_raw(
        dir: &Path,
        name: &str,
        tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    ) -> PathBuf {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, dtype, shape, bytes)| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        let out = safetensors::serialize(views, None).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, out).unwrap();
        path
    }

    fn write_file(dir: &Path, name: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> PathBuf {
        let raw: Vec<_> = tensors
            .iter()
            .map(|(n, s, v)| (*n, Dtype::F32, s.clone(), f32_bytes(v)))
            .collect();
        write_raw(dir, name, &raw)
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("plumb-st-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_nan_or_inf_weight_is_an_error_naming_the_tensor_and_file() {
        let dir = temp_dir("nonfinite");
        let half_inf = half::f16::INFINITY.to_le_bytes().to_vec();
        write_raw(
            &dir,
            "model.safetensors",
            &[
                ("ok", Dtype::F32, vec![2], f32_bytes(&[1.0, -2.0])),
                ("nan", Dtype::F32, vec![3], f32_bytes(&[0.0, 1.0, f32::NAN])),
                ("inf16", Dtype::F16, vec![1], half_inf),
            ],
        );
        let w = SafetensorsWeights::open(&dir).unwrap();
        assert_eq!(w.tensor("ok").unwrap().values, [1.0, -2.0]);
        let err = w.tensor("nan").unwrap_err().to_string();
        assert!(
            err.ends_with("model.safetensors: tensor nan holds 1 non-finite value(s) (the first, NaN, at flat index 2)"),
            "{err}"
        );
        let err = w.tensor("inf16").unwrap_err().to_string();
        assert!(
            err.contains(
                "tensor inf16 holds 1 non-finite value(s) (the first, inf, at flat index 0)"
            ),
            "{err}"
        );
    }

    #[test]
    fn reads_shards_and_reports_bad_files() {
        let dir = temp_dir("shards");
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
        // Garbage after a valid header length, and a header length past the end.
        let mut bad = bytes.clone();
        bad[8] = b'!';
        std::fs::write(&second, &bad).unwrap();
        assert!(SafetensorsWeights::open(&second).is_err());
        let mut bad = bytes.clone();
        bad[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&second, &bad).unwrap();
        assert!(SafetensorsWeights::open(&second).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn sharded_checkpoints_are_read_through_their_index() {
        let dir = temp_dir("index");
        write_file(
            &dir,
            "model-00001-of-00002.safetensors",
            &[("a", vec![2], vec![1.0, 2.0])],
        );
        let second = write_file(
            &dir,
            "model-00002-of-00002.safetensors",
            &[("b", vec![1], vec![3.0])],
        );
        // A stray file the index does not name is not read.
        write_file(
            &dir,
            "consolidated.safetensors",
            &[("a", vec![1], vec![9.0])],
        );
        let index = dir.join("model.safetensors.index.json");
        let write_index = |map: &str| {
            std::fs::write(
                &index,
                format!("{{\"metadata\": {{\"total_size\": 12}}, \"weight_map\": {{{map}}}}}"),
            )
            .unwrap()
        };
        write_index(
            r#""a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors""#,
        );
        for w in [
            SafetensorsWeights::open(&dir).unwrap(),
            SafetensorsWeights::open(&index).unwrap(),
        ] {
            assert_eq!(w.names(), ["a", "b"]);
            assert_eq!(w.tensor("a").unwrap().values, [1.0, 2.0]);
            assert_eq!(w.paths().len(), 2);
        }

        // The index places a tensor in the wrong shard.
        write_index(
            r#""a": "model-00002-of-00002.safetensors", "b": "model-00002-of-00002.safetensors""#,
        );
        let err = SafetensorsWeights::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains("tensor a is listed in model-00002-of-00002.safetensors but is not there"),
            "{err}"
        );

        // A missing shard is named.
        write_index(
            r#""a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors""#,
        );
        std::fs::remove_file(&second).unwrap();
        let err = SafetensorsWeights::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains("shard") && err.contains("model-00002-of-00002.safetensors is missing"),
            "{err}"
        );

        // Shard names stay inside the folder.
        write_index(r#""a": "../model-00001-of-00002.safetensors""#);
        let err = SafetensorsWeights::open(&dir).unwrap_err().to_string();
        assert!(err.contains("is not a file name"), "{err}");

        // Not an index at all.
        std::fs::write(&index, "[1, 2]").unwrap();
        let err = format!("{:#}", SafetensorsWeights::open(&dir).unwrap_err());
        assert!(err.contains("not a safetensors index"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn half_precision_tensors_are_read_as_f32() {
        let dir = temp_dir("dtypes");
        let values = [1.0f32, -2.5, 0.099_975_586, 65504.0];
        let f16: Vec<u8> = values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        let i32s: Vec<u8> = [1i32, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
        let path = write_raw(
            &dir,
            "m.safetensors",
            &[
                ("h", Dtype::F16, vec![2, 2], f16),
                ("b", Dtype::BF16, vec![4], bf16),
                ("i", Dtype::I32, vec![2], i32s),
            ],
        );
        let w = SafetensorsWeights::open(&path).unwrap();
        let h = w.tensor("h").unwrap();
        assert_eq!(h.shape, [2, 2]);
        assert_eq!(h.values, values);
        let b = w.tensor("b").unwrap().values;
        for (x, y) in b.iter().zip(values) {
            assert!((x - y).abs() <= y.abs() / 128.0, "{b:?}");
        }
        let err = format!("{:#}", w.tensor("i").unwrap_err());
        assert!(
            err.contains("m.safetensors: tensor i") && err.contains("unsupported"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
