//! GGUF v2/v3 reader (llama.cpp's model format) that treats the file as hostile.
//!
//! llama.cpp's own parser had heap overflows from unchecked counts and sizes (2024 CVEs). Here
//! every count, string length, array length, dimension count, dimension, offset and byte size is
//! checked against the bytes that remain before anything is allocated or indexed, products use
//! checked arithmetic, and tensor data must lie inside the file's data section. A malformed file
//! is a [`GgufError`] naming the field and byte offset — never a panic, never an allocation of a
//! size the file chose.
//!
//! Tensors are dequantized to f32 by [`dequant`]; the tokenizer in the metadata becomes a
//! `tokenizers` tokenizer in [`tokenizer`].

pub mod dequant;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use dequant::GgmlType;

/// A malformed or unsupported GGUF file.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GgufError {
    #[error("{0}")]
    Io(String),
    #[error("not a GGUF file (magic {0:?})")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    #[error("truncated at byte {offset}: {what} needs {needed} bytes, {left} left")]
    Truncated {
        offset: usize,
        what: String,
        needed: u64,
        left: usize,
    },
    #[error("at byte {offset}: {message}")]
    Malformed { offset: usize, message: String },
    #[error("tensor {name}: {message}")]
    Tensor { name: String, message: String },
    #[error("metadata key {key}: {message}")]
    Metadata { key: String, message: String },
}

type Result<T> = std::result::Result<T, GgufError>;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// Any integer type as u64 (negative values are `None`).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type as i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any float type (or integer) as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor lives and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` varies fastest.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl GgufTensorInfo {
    /// The shape in PyTorch (row-major, outermost first) order: the ggml dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn num_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file (held in memory).
pub struct GgufFile {
    path: Option<PathBuf>,
    bytes: Vec<u8>,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Nesting limit for array values (GGUF writers use one level; two are allowed).
const MAX_ARRAY_DEPTH: usize = 2;
/// GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.left() as u64 {
            return Err(GgufError::Truncated {
                offset: self.pos,
                what: what.to_string(),
                needed: n,
                left: self.left(),
            });
        }
        let n = n as usize;
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::Malformed {
            offset: at,
            message: format!("{what} is not valid UTF-8"),
        })
    }

    /// A count of items each at least `min_item` bytes long, bounded by what remains.
    fn count(&mut self, what: &str, min_item: u64) -> Result<u64> {
        let at = self.pos;
        let n = self.u64(what)?;
        let need = n.checked_mul(min_item).ok_or(GgufError::Malformed {
            offset: at,
            message: format!("{what} {n} overflows"),
        })?;
        if need > self.left() as u64 {
            return Err(GgufError::Malformed {
                offset: at,
                message: format!(
                    "{what} {n} cannot fit in the {} bytes that remain",
                    self.left()
                ),
            });
        }
        Ok(n)
    }

    fn value(&mut self, value_type: u32, depth: usize, what: &str) -> Result<GgufValue> {
        let at = self.pos;
        Ok(match value_type {
            0 => GgufValue::U8(self.array::<1>(what)?[0]),
            1 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    return Err(GgufError::Malformed {
                        offset: at,
                        message: format!("{what}: bool byte {b}"),
                    });
                }
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Malformed {
                        offset: at,
                        message: format!("{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    });
                }
                let elem_type = self.u32(what)?;
                let min = match elem_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => {
                        return Err(GgufError::Malformed {
                            offset: at,
                            message: format!("{what}: unknown array element type {t}"),
                        });
                    }
                };
                let n = self.count(what, min)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem_type, depth + 1, what)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => {
                return Err(GgufError::Malformed {
                    offset: at,
                    message: format!("{what}: unknown value type {t}"),
                });
            }
        })
    }
}

impl GgufFile {
    /// Reads and parses a file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| GgufError::Io(format!("reading {}: {e}", path.display())))?;
        let mut file = Self::from_bytes(bytes)?;
        file.path = Some(path.to_path_buf());
        Ok(file)
    }

    /// Parses a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let (version, metadata, tensors, data_start) = {
            let mut c = Cursor {
                bytes: &bytes,
                pos: 0,
            };
            let magic: [u8; 4] = c.array("magic")?;
            if &magic != b"GGUF" {
                return Err(GgufError::BadMagic(magic));
            }
            let version = c.u32("version")?;
            if !(2..=3).contains(&version) {
                return Err(GgufError::Version(version));
            }
            // Smallest tensor info: name length (8) + n_dims (4) + one dim (8) + type (4) +
            // offset (8); smallest key/value: key length (8) + type (4) + one byte.
            let n_tensors = c.count("tensor count", 32)?;
            let n_kv = c.count("metadata count", 13)?;
            let mut metadata = BTreeMap::new();
            for _ in 0..n_kv {
                let key = c.string("metadata key")?;
                let value_type = c.u32("metadata value type")?;
                let value = c.value(value_type, 0, &format!("metadata {key}"))?;
                metadata.insert(key, value);
            }
            let alignment = match metadata.get("general.alignment") {
                None => 32,
                Some(v) => match v.as_u64() {
                    Some(a) if a.is_power_of_two() && a <= 1 << 16 => a,
                    _ => {
                        return Err(GgufError::Metadata {
                            key: "general.alignment".into(),
                            message: format!("{v:?} is not a power of two ≤ 65536"),
                        });
                    }
                },
            };
            let mut infos = Vec::with_capacity(n_tensors as usize);
            for _ in 0..n_tensors {
                let at = c.pos;
                let name = c.string("tensor name")?;
                let n_dims = c.u32("tensor dimension count")?;
                if n_dims == 0 || n_dims > MAX_DIMS {
                    return Err(GgufError::Malformed {
                        offset: at,
                        message: format!(
                            "tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                        ),
                    });
                }
                let mut dims = Vec::with_capacity(n_dims as usize);
                for _ in 0..n_dims {
                    dims.push(c.u64("tensor dimension")?);
                }
                let type_id = c.u32("tensor type")?;
                let offset = c.u64("tensor offset")?;
                let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::Tensor {
                    name: name.clone(),
                    message: format!("ggml type {type_id} is not supported"),
                })?;
                let elements = dims
                    .iter()
                    .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                    .ok_or_else(|| GgufError::Tensor {
                        name: name.clone(),
                        message: format!("dimensions {dims:?} overflow"),
                    })?;
                let (block, block_bytes) = ggml_type.block();
                if dims[0] % block != 0 {
                    return Err(GgufError::Tensor {
                        name,
                        message: format!(
                            "first dimension {} is not a multiple of the {ggml_type:?} block size {block}",
                            dims[0]
                        ),
                    });
                }
                let size = (elements / block).checked_mul(block_bytes).ok_or_else(|| {
                    GgufError::Tensor {
                        name: name.clone(),
                        message: "byte size overflows".into(),
                    }
                })?;
                if offset % alignment != 0 {
                    return Err(GgufError::Tensor {
                        name,
                        message: format!("offset {offset} is not aligned to {alignment}"),
                    });
                }
                infos.push(GgufTensorInfo {
                    name,
                    dims,
                    ggml_type,
                    offset,
                    size,
                });
            }
            let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
            if !infos.is_empty() && data_start > bytes.len() as u64 {
                return Err(GgufError::Truncated {
                    offset: c.pos,
                    what: "alignment padding before the tensor data".into(),
                    needed: data_start - c.pos as u64,
                    left: bytes.len() - c.pos,
                });
            }
            let data_len = (bytes.len() as u64).saturating_sub(data_start);
            let mut seen = std::collections::BTreeSet::new();
            for info in &infos {
                if !seen.insert(info.name.as_str()) {
                    return Err(GgufError::Tensor {
                        name: info.name.clone(),
                        message: "listed twice".into(),
                    });
                }
                let end = info.offset.checked_add(info.size);
                if end.is_none_or(|e| e > data_len) {
                    return Err(GgufError::Tensor {
                        name: info.name.clone(),
                        message: format!(
                            "data [{}, +{}) lies outside the {data_len}-byte data section",
                            info.offset, info.size
                        ),
                    });
                }
            }
            (version, metadata, infos, data_start as usize)
        };
        Ok(Self {
            path: None,
            bytes,
            version,
            metadata,
            tensors,
            data_start,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    pub fn tensor_infos(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn get(&self, key: &str) -> Result<&GgufValue> {
        self.metadata.get(key).ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            message: "missing".into(),
        })
    }

    fn typed<'a, T: 'a>(
        &'a self,
        key: &str,
        kind: &str,
        f: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<T> {
        let v = self.get(key)?;
        f(v).ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            message: format!("expected {kind}, found {}", describe(v)),
        })
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.typed(key, "a non-negative integer", GgufValue::as_u64)
    }

    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.typed(key, "an integer", GgufValue::as_i64)
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.typed(key, "a number", GgufValue::as_f64)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "a string", |v| v.as_str())
    }

    pub fn get_array(&self, key: &str) -> Result<&[GgufValue]> {
        self.typed(key, "an array", |v| v.as_array())
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().ok_or_else(|| GgufError::Metadata {
                    key: format!("{key}[{i}]"),
                    message: format!("expected a string, found {}", describe(v)),
                })
            })
            .collect()
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        // Bounds were checked at parse time.
        let start = self.data_start + info.offset as usize;
        &self.bytes[start..start + info.size as usize]
    }

    /// A tensor dequantized to f32, with its PyTorch-order shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.tensor_info(name).ok_or_else(|| GgufError::Tensor {
            name: name.into(),
            message: format!(
                "not in {}",
                self.path
                    .as_ref()
                    .map_or("the file".into(), |p| p.display().to_string())
            ),
        })?;
        let values = dequant::dequantize(
            info.ggml_type,
            self.tensor_bytes(info),
            info.num_elements() as usize,
        )
        .map_err(|message| GgufError::Tensor {
            name: name.into(),
            message,
        })?;
        Ok((info.shape(), values))
    }
}

fn describe(v: &GgufValue) -> String {
    match v {
        GgufValue::Array(a) => format!("an array of {}", a.len()),
        GgufValue::String(_) => "a string".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    /// Writes a small GGUF v3 file: metadata (string and u32 keys) and F32/Q8_0 tensors.
    pub struct Builder {
        pub kv: Vec<(String, u32, Vec<u8>)>,
        pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    }

    impl Builder {
        pub fn new() -> Self {
            Self {
                kv: Vec::new(),
                tensors: Vec::new(),
            }
        }

        fn string(s: &str) -> Vec<u8> {
            let mut out = (s.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(s.as_bytes());
            out
        }

        pub fn kv_str(mut self, k: &str, v: &str) -> Self {
            self.kv.push((k.into(), 8, Self::string(v)));
            self
        }

        pub fn kv_u32(mut self, k: &str, v: u32) -> Self {
            self.kv.push((k.into(), 4, v.to_le_bytes().to_vec()));
            self
        }

        pub fn kv_str_array(mut self, k: &str, items: &[&str]) -> Self {
            let mut v = 8u32.to_le_bytes().to_vec();
            v.extend((items.len() as u64).to_le_bytes());
            for s in items {
                v.extend(Self::string(s));
            }
            self.kv.push((k.into(), 9, v));
            self
        }

        pub fn tensor_f32(mut self, name: &str, dims: &[u64], values: &[f32]) -> Self {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.tensors.push((name.into(), dims.to_vec(), 0, data));
            self
        }

        pub fn build(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend((self.tensors.len() as u64).to_le_bytes());
            out.extend((self.kv.len() as u64).to_le_bytes());
            for (k, t, v) in &self.kv {
                out.extend(Self::string(k));
                out.extend(t.to_le_bytes());
                out.extend(v);
            }
            let mut offset = 0u64;
            let mut offsets = Vec::new();
            for (name, dims, ty, data) in &self.tensors {
                out.extend(Self::string(name));
                out.extend((dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend(d.to_le_bytes());
                }
                out.extend(ty.to_le_bytes());
                out.extend(offset.to_le_bytes());
                offsets.push(offset);
                offset += (data.len() as u64).div_ceil(32) * 32;
            }
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
            for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
                let start = out.len();
                debug_assert_eq!(start % 32, 0);
                let _ = off;
                out.extend(data);
                while !out.len().is_multiple_of(32) {
                    out.push(0);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::Builder;
    use super::*;

    /// Fuzz finding (cargo fuzz, gguf_reader, in its first seconds): a zero-element tensor in a
    /// file cut inside the alignment padding passed the data-section bounds check and then
    /// indexed past the end of the file.
    #[test]
    fn zero_sized_tensor_in_a_file_cut_inside_the_padding_is_an_error() {
        let bytes = Builder::new().tensor_f32("empty", &[0], &[]).build();
        let file = GgufFile::from_bytes(bytes.clone()).unwrap();
        assert_eq!(file.tensor_f32("empty").unwrap(), (vec![0], vec![]));
        for cut in 0..bytes.len() {
            let err = GgufFile::from_bytes(bytes[..cut].to_vec()).err();
            assert!(
                err.is_some(),
                "a file cut at {cut} of {} parsed",
                bytes.len()
            );
        }
    }

    #[test]
    fn a_tensor_listed_twice_is_an_error() {
        let bytes = Builder::new()
            .tensor_f32("w", &[2], &[1.0, 2.0])
            .tensor_f32("w", &[2], &[3.0, 4.0])
            .build();
        let err = GgufFile::from_bytes(bytes).unwrap_err().to_string();
        assert_eq!(err, "tensor w: listed twice");
    }

    fn sample() -> Vec<u8> {
        Builder::new()
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.block_count", 2)
            .kv_str_array("tokenizer.ggml.tokens", &["a", "b"])
            .tensor_f32("w", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            .tensor_f32("v", &[2], &[7.0, 8.0])
            .build()
    }

    #[test]
    fn parses_a_hand_built_file() {
        let f = GgufFile::from_bytes(sample()).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
        assert_eq!(
            f.get_str_array("tokenizer.ggml.tokens").unwrap(),
            ["a", "b"]
        );
        let (shape, values) = f.tensor_f32("w").unwrap();
        assert_eq!(shape, [2, 3]);
        assert_eq!(values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(f.tensor_f32("v").unwrap().1, [7.0, 8.0]);
        assert_eq!(
            f.get_u64("nope").unwrap_err().to_string(),
            "metadata key nope: missing"
        );
        assert_eq!(
            f.get_u64("general.architecture").unwrap_err().to_string(),
            "metadata key general.architecture: expected a non-negative integer, found a string"
        );
        assert!(
            f.tensor_f32("x")
                .unwrap_err()
                .to_string()
                .starts_with("tensor x: not in")
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            // The last tensor's padding is not data: cuts inside it still parse.
            if let Ok(f) = GgufFile::from_bytes(bytes[..cut].to_vec()) {
                assert!(cut > bytes.len() - 32, "cut at {cut} parsed");
                assert_eq!(f.tensor_infos().len(), 2);
            }
        }
    }

    fn patch(mut bytes: Vec<u8>, at: usize, value: u64) -> Vec<u8> {
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        bytes
    }

    #[test]
    fn absurd_counts_and_sizes_are_rejected_before_allocating() {
        let good = sample();
        // Tensor count (byte 8) and metadata count (byte 16).
        for (at, v) in [
            (8, 1u64 << 60),
            (16, 1 << 62),
            (8, u64::MAX),
            (16, u64::MAX),
        ] {
            let err = GgufFile::from_bytes(patch(good.clone(), at, v)).unwrap_err();
            assert!(matches!(err, GgufError::Malformed { .. }), "{err}");
        }
        // The first key's length (byte 24).
        let err = GgufFile::from_bytes(patch(good.clone(), 24, 1 << 63)).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
        // Bad magic and version.
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(
            GgufFile::from_bytes(b).unwrap_err(),
            GgufError::BadMagic(_)
        ));
        let mut b = good.clone();
        b[4] = 9;
        assert_eq!(GgufFile::from_bytes(b).unwrap_err(), GgufError::Version(9));
    }

    #[test]
    fn bad_tensor_infos_are_rejected() {
        let dims_overflow = Builder::new()
            .tensor_f32("t", &[1 << 40, 1 << 40], &[])
            .build();
        let err = GgufFile::from_bytes(dims_overflow).unwrap_err().to_string();
        assert!(err.starts_with("tensor t:"), "{err}");
        let past_end = Builder::new().tensor_f32("t", &[1 << 20], &[1.0]).build();
        let err = GgufFile::from_bytes(past_end).unwrap_err().to_string();
        assert!(err.contains("outside the"), "{err}");
        let mut too_many_dims = Builder::new().tensor_f32("t", &[1, 1, 1, 1, 1], &[1.0]);
        too_many_dims.kv.clear();
        let err = GgufFile::from_bytes(too_many_dims.build())
            .unwrap_err()
            .to_string();
        assert!(err.contains("5 dimensions"), "{err}");
    }
}
