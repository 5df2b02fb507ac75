//! Dataset loaders: streaming JSONL with every error naming `file:line` and the field, files
//! verified against the sha256 of their manifest (`datasets/*.toml`, compiled in).
//!
//! - [`hh_rlhf`]: Anthropic HH-RLHF transcripts → conversations and preference pairs;
//! - [`gsm8k`]: GSM8K questions, solutions and gold answers;
//! - [`prm800k`]: PRM800K phase-1 rows → step-labelled solutions with their alternatives;
//! - [`generic`]: users' own pairs, rankings, unpaired and step-labelled JSONL.

pub mod generic;
pub mod gsm8k;
pub mod hh_rlhf;
pub mod prm800k;

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A data error; every variant names the file, and the line and field where it applies.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "{path}: no such file (looked in the data dir {data_dir}; point --data-dir or PLUMB_DATA_DIR at the folder holding the datasets)",
        path = .path.display(), data_dir = .data_dir.display()
    )]
    MissingFile { path: PathBuf, data_dir: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{loc}: read error: {source}")]
    Read {
        loc: Loc,
        #[source]
        source: std::io::Error,
    },
    #[error("{loc}: invalid JSON: {message}")]
    Json { loc: Loc, message: String },
    #[error("{loc}: field \"{field}\": {message}")]
    Field {
        loc: Loc,
        field: String,
        message: String,
    },
    #[error("{}: sha256 is {actual}, the manifest says {expected}: the file is not the one plumbline was tested with", .path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
}

/// A position in a JSONL file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    pub path: Arc<Path>,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

impl Loc {
    /// An error about `field` at this position.
    pub fn field(&self, field: &str, message: impl Into<String>) -> DataError {
        DataError::Field {
            loc: self.clone(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Streams the non-empty lines of a JSONL file as parsed JSON values with their position.
///
/// Only regular files are read: a directory, a device or a FIFO is refused by [`open`](Self::open)
/// with one error. A UTF-8 byte-order mark at the start of the file is skipped. Every error names
/// the real (1-based) line: invalid JSON, a line that is not a JSON object, invalid UTF-8 (with the
/// byte offset in the line), or a read error. A read error ends the stream (the iterator is fused),
/// so a failing device never yields an endless run of errors.
pub struct JsonlReader<R: BufRead = BufReader<File>> {
    path: Arc<Path>,
    /// `None` once the end of the file or a read error was reached.
    reader: Option<R>,
    line: usize,
    buf: Vec<u8>,
}

/// The UTF-8 byte-order mark.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Refuses anything but a regular file (after following links), naming what it is.
pub fn require_regular_file(path: &Path) -> Result<(), DataError> {
    let meta = std::fs::metadata(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() {
        return Ok(());
    }
    let what = if meta.is_dir() {
        "a directory".to_string()
    } else {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            "a FIFO".to_string()
        } else if t.is_char_device() || t.is_block_device() {
            "a device".to_string()
        } else if t.is_socket() {
            "a socket".to_string()
        } else {
            format!("{t:?}")
        }
    };
    Err(DataError::Invalid {
        path: path.to_path_buf(),
        message: format!("is {what}, not a regular file; expected a JSONL file"),
    })
}

impl JsonlReader {
    /// Opens `path`, which must be a regular file ([`require_regular_file`]).
    pub fn open(path: &Path) -> Result<Self, DataError> {
        require_regular_file(path)?;
        let file = File::open(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::from_reader(path, BufReader::new(file)))
    }
}

impl<R: BufRead> JsonlReader<R> {
    /// Reads JSONL from any buffered reader (in-memory bytes, a pipe); `path` names it in
    /// errors.
    pub fn from_reader(path: &Path, reader: R) -> Self {
        Self {
            path: Arc::from(path),
            reader: Some(reader),
            line: 0,
            buf: Vec::new(),
        }
    }

    /// Reads the next physical line into `self.buf` (without its line ending); `None` at the end.
    fn read_line(&mut self) -> Option<Result<(), std::io::Error>> {
        let reader = self.reader.as_mut()?;
        self.buf.clear();
        match reader.read_until(b'\n', &mut self.buf) {
            Ok(0) => {
                self.reader = None;
                None
            }
            Ok(_) => {
                self.line += 1;
                if self.buf.last() == Some(&b'\n') {
                    self.buf.pop();
                    if self.buf.last() == Some(&b'\r') {
                        self.buf.pop();
                    }
                }
                if self.line == 1 && self.buf.starts_with(UTF8_BOM) {
                    self.buf.drain(..UTF8_BOM.len());
                }
                Some(Ok(()))
            }
            Err(e) => {
                self.reader = None;
                self.line += 1;
                Some(Err(e))
            }
        }
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = Result<(Loc, Value), DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let read = self.read_line()?;
            let loc = Loc {
                path: self.path.clone(),
                line: self.line,
            };
            if let Err(source) = read {
                return Some(Err(DataError::Read { loc, source }));
            }
            let text = match std::str::from_utf8(&self.buf) {
                Ok(t) => t,
                Err(e) => {
                    return Some(Err(DataError::Json {
                        loc,
                        message: format!(
                            "invalid UTF-8 at byte {} of the line",
                            e.valid_up_to() + 1
                        ),
                    }));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(match serde_json::from_str::<Value>(text) {
                Ok(v @ Value::Object(_)) => Ok((loc, v)),
                Ok(_) => Err(DataError::Json {
                    loc,
                    message: "expected a JSON object per line".into(),
                }),
                Err(e) => Err(DataError::Json {
                    loc,
                    message: e.to_string(),
                }),
            });
        }
    }
}

impl<R: BufRead> std::iter::FusedIterator for JsonlReader<R> {}

/// Typed access to a JSONL row's fields, with errors naming `file:line` and the field.
pub struct Row<'a> {
    pub loc: &'a Loc,
    pub value: &'a Value,
}

impl<'a> Row<'a> {
    pub fn new(loc: &'a Loc, value: &'a Value) -> Self {
        Self { loc, value }
    }

    /// The raw value of `field`, or `None` when absent or null.
    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.value.get(field).filter(|v| !v.is_null())
    }

    pub fn require(&self, field: &str) -> Result<&'a Value, DataError> {
        self.get(field)
            .ok_or_else(|| self.loc.field(field, "missing"))
    }

    pub fn str(&self, field: &str) -> Result<&'a str, DataError> {
        self.require(field)?
            .as_str()
            .ok_or_else(|| self.loc.field(field, "expected a string"))
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<&'a str>, DataError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.loc.field(field, "expected a string")),
        }
    }

    pub fn opt_f32(&self, field: &str) -> Result<Option<f32>, DataError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.loc.field(field, "expected a number")),
        }
    }

    pub fn array(&self, field: &str) -> Result<&'a Vec<Value>, DataError> {
        self.require(field)?
            .as_array()
            .ok_or_else(|| self.loc.field(field, "expected an array"))
    }

    pub fn str_array(&self, field: &str) -> Result<Vec<String>, DataError> {
        self.array(field)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    self.loc
                        .field(&format!("{field}[{i}]"), "expected a string")
                })
            })
            .collect()
    }

    pub fn f32_array(&self, field: &str) -> Result<Vec<f32>, DataError> {
        self.array(field)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_f64().map(|x| x as f32).ok_or_else(|| {
                    self.loc
                        .field(&format!("{field}[{i}]"), "expected a number")
                })
            })
            .collect()
    }
}

/// A dataset manifest (`datasets/NAME.toml`).
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub title: String,
    pub source: String,
    pub license: String,
    pub license_file: String,
    pub format: String,
    pub files: Vec<ManifestFile>,
}

/// One file of a manifest.
#[derive(Clone, Debug, Deserialize)]
pub struct ManifestFile {
    /// Relative to the data dir.
    pub path: String,
    pub split: String,
    pub sha256: String,
    pub records: usize,
}

const MANIFESTS: &[(&str, &str)] = &[
    ("hh-rlhf", include_str!("../../../../datasets/hh-rlhf.toml")),
    ("gsm8k", include_str!("../../../../datasets/gsm8k.toml")),
    ("prm800k", include_str!("../../../../datasets/prm800k.toml")),
];

/// Names of the datasets plumbline knows.
pub fn known_datasets() -> impl Iterator<Item = &'static str> {
    MANIFESTS.iter().map(|(name, _)| *name)
}

/// The compiled-in manifest of a known dataset.
pub fn manifest(name: &str) -> Option<Manifest> {
    MANIFESTS.iter().find(|(n, _)| *n == name).map(|(n, text)| {
        toml::from_str(text).unwrap_or_else(|e| panic!("datasets/{n}.toml is malformed: {e}"))
    })
}

impl Manifest {
    /// The manifest entry of `split`.
    pub fn file(&self, split: &str) -> Result<&ManifestFile, DataError> {
        self.files
            .iter()
            .find(|f| f.split == split)
            .ok_or_else(|| DataError::Invalid {
                path: PathBuf::from(format!("datasets/{}.toml", self.name)),
                message: format!(
                    "no split {split:?}; the splits are {}",
                    self.files
                        .iter()
                        .map(|f| f.split.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }
}

/// sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks `path` against `expected` (lower-case hex).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), DataError> {
    let actual = sha256_file(path)?;
    if actual != expected {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Resolves a manifest file in `data_dir`, checking that it exists and that its sha256 matches.
pub fn locate(data_dir: &Path, dataset: &str, split: &str) -> Result<PathBuf, DataError> {
    let manifest = manifest(dataset).ok_or_else(|| DataError::Invalid {
        path: PathBuf::from(dataset),
        message: format!(
            "unknown dataset; known: {}",
            known_datasets().collect::<Vec<_>>().join(", ")
        ),
    })?;
    let entry = manifest.file(split)?;
    let path = data_dir.join(&entry.path);
    if !path.is_file() {
        return Err(DataError::MissingFile {
            path,
            data_dir: data_dir.to_path_buf(),
        });
    }
    verify_sha256(&path, &entry.sha256)?;
    Ok(path)
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::PathBuf;

    /// `datasets/fixtures/NAME` in the repository.
    pub fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../datasets/fixtures")
            .join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::fixture;
    use super::*;

    #[test]
    fn manifests_parse_and_know_their_files() {
        let names: Vec<_> = known_datasets().collect();
        assert_eq!(names, ["hh-rlhf", "gsm8k", "prm800k"]);
        let hh = manifest("hh-rlhf").unwrap();
        assert_eq!(hh.file("train").unwrap().records, 1800);
        assert_eq!(hh.file("dev").unwrap().records, 200);
        assert_eq!(
            manifest("gsm8k").unwrap().file("test").unwrap().records,
            1319
        );
        assert_eq!(
            manifest("prm800k").unwrap().file("train").unwrap().records,
            900
        );
        assert!(
            hh.file("validation")
                .unwrap_err()
                .to_string()
                .contains("train, dev")
        );
    }

    #[test]
    fn a_malformed_line_is_reported_with_file_and_line() {
        let path = fixture("malformed.jsonl");
        let results: Vec<_> = JsonlReader::open(&path).unwrap().collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        let err = results[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("malformed.jsonl:2: invalid JSON"), "{err}");
    }

    #[test]
    fn checksums_and_missing_files_are_clear_errors() {
        let path = fixture("pairs.jsonl");
        let err = verify_sha256(&path, "00").unwrap_err().to_string();
        assert!(err.contains("pairs.jsonl: sha256 is"), "{err}");
        assert!(verify_sha256(&path, &sha256_file(&path).unwrap()).is_ok());
        let err = locate(Path::new("/nonexistent"), "gsm8k", "train")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/gsm8k/train.jsonl: no such file"),
            "{err}"
        );
        assert!(err.contains("PLUMB_DATA_DIR"), "{err}");
    }

    fn write_temp(tag: &str, bytes: &[u8]) -> PathBuf {
        let path = crate::checkpoint::tests::temp_dir(tag).join("rows.jsonl");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn non_regular_files_are_one_error_at_open() {
        let dir = crate::checkpoint::tests::temp_dir("jsonl-dir");
        let err = JsonlReader::open(&dir).err().unwrap().to_string();
        assert!(
            err.ends_with("is a directory, not a regular file; expected a JSONL file"),
            "{err}"
        );
        let err = JsonlReader::open(Path::new("/dev/null"))
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            "/dev/null: is a device, not a regular file; expected a JSONL file"
        );
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Opening a FIFO for reading would block until a writer comes; it is refused first.
            let err = JsonlReader::open(&fifo).err().unwrap().to_string();
            assert!(
                err.ends_with("fifo: is a FIFO, not a regular file; expected a JSONL file"),
                "{err}"
            );
        }
        let err = JsonlReader::open(&dir.join("absent.jsonl")).err().unwrap();
        assert!(matches!(err, DataError::Io { .. }), "{err}");
    }

    #[test]
    fn a_bom_is_skipped_and_crlf_endings_are_accepted() {
        let path = write_temp("jsonl-bom", b"\xEF\xBB\xBF{\"a\": 1}\r\n\r\n{\"a\": 2}\r\n");
        let rows: Vec<_> = JsonlReader::open(&path)
            .unwrap()
            .map(|r| {
                let (loc, v) = r.unwrap();
                (loc.line, v["a"].as_i64().unwrap())
            })
            .collect();
        assert_eq!(rows, [(1, 1), (3, 2)]);
    }

    #[test]
    fn errors_name_the_real_line_for_bad_bytes_and_bad_json() {
        let path = write_temp(
            "jsonl-lines",
            b"\n{\"a\": 1}\n\n{\"a\": \"\xFF\"}\n[1]\n{\"a\":\n\xEF\xBB\xBF{}\n",
        );
        let results: Vec<_> = JsonlReader::open(&path).unwrap().collect();
        assert_eq!(results.len(), 5);
        assert_eq!(results[0].as_ref().unwrap().0.line, 2);
        let errs: Vec<String> = results[1..]
            .iter()
            .map(|r| r.as_ref().unwrap_err().to_string())
            .collect();
        assert!(
            errs[0].ends_with("rows.jsonl:4: invalid JSON: invalid UTF-8 at byte 8 of the line"),
            "{}",
            errs[0]
        );
        assert!(
            errs[1].ends_with("rows.jsonl:5: invalid JSON: expected a JSON object per line"),
            "{}",
            errs[1]
        );
        assert!(
            errs[2].contains("rows.jsonl:6: invalid JSON: EOF while parsing"),
            "{}",
            errs[2]
        );
        // A BOM is only skipped at the start of the file.
        assert!(
            errs[3].contains("rows.jsonl:7: invalid JSON"),
            "{}",
            errs[3]
        );
    }

    #[test]
    fn a_read_error_ends_the_stream() {
        // /proc/self/mem is a regular file whose read at offset 0 fails (EIO): one error, then
        // the end, where a `BufRead::lines` reader yields the error forever.
        let path = Path::new("/proc/self/mem");
        if !path.is_file() {
            return;
        }
        let results: Vec<_> = JsonlReader::open(path).unwrap().take(10).collect();
        assert_eq!(results.len(), 1);
        let err = results[0].as_ref().unwrap_err();
        assert!(matches!(err, DataError::Read { .. }), "{err}");
        assert!(
            err.to_string().starts_with("/proc/self/mem:1: read error"),
            "{err}"
        );
    }
}
