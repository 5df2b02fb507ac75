//! Evaluation rows and their JSONL readers.
//!
//! Three layouts:
//! - **v1** (reward-bench `filtered` split): `{prompt, chosen, rejected, subset, id?}` with
//!   `chosen`/`rejected` strings;
//! - **v2** (RewardBench 2): `{prompt, chosen: [..], rejected: [..], subset, id?}`; when present,
//!   `num_correct` must equal `len(chosen)` and `total_completions` must equal
//!   `len(chosen) + len(rejected)`;
//! - **pairs** (plumbline's generic preference pairs, [`rm_core::data::generic::parse_pair`]):
//!   `{prompt, chosen, rejected, subset?, ...}`; a row without `subset` takes the file stem.
//!
//! `prompt` is a string or a list of `{role, content}` turns (`role` one of system / user /
//! human / assistant). `id` is a string or an integer. Extra fields are ignored.
//!
//! Every error names `file:line` and the field ([`DataError`]). Each layout has a strict reader
//! (first error stops it) and a lenient one ([`Loaded`]) that keeps the good rows, collects the
//! row errors and goes on; an unreadable file (a directory, a device, a FIFO, a read error) is
//! one error for both. [`detect_format`] tells the layout from the first row.

use std::path::Path;

use rm_core::data::generic::{self, parse_pair};
use rm_core::data::hh_rlhf;
use rm_core::data::{DataError, JsonlReader, Row};
use rm_core::types::{PreferencePair, Prompt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The subset name given to plumbline's HH-RLHF (harmless-base) pairs.
pub const HH_RLHF_SUBSET: &str = "hh-rlhf-harmless";

/// One v1 row: a prompt with one chosen and one rejected response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct V1Row {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub prompt: Prompt,
    pub chosen: String,
    pub rejected: String,
    pub subset: String,
}

/// One v2 row: a prompt with its correct (`chosen`) and incorrect (`rejected`) completions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct V2Row {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub prompt: Prompt,
    pub chosen: Vec<String>,
    pub rejected: Vec<String>,
    pub subset: String,
}

/// What a lenient reader returns: the rows that parsed and the errors of those that did not.
#[derive(Debug, Default)]
pub struct Loaded<T> {
    pub rows: Vec<T>,
    pub errors: Vec<DataError>,
}

fn parse_id(row: &Row) -> Result<Option<String>, DataError> {
    match row.get("id") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(_) => Err(row.loc.field("id", "expected a string or an integer")),
    }
}

fn non_empty_subset(row: &Row) -> Result<String, DataError> {
    let subset = row.str("subset")?;
    if subset.trim().is_empty() {
        return Err(row.loc.field("subset", "is empty"));
    }
    Ok(subset.to_string())
}

/// Parses one v1 row.
pub fn parse_v1(row: &Row) -> Result<V1Row, DataError> {
    Ok(V1Row {
        id: parse_id(row)?,
        prompt: generic::parse_prompt(row)?,
        chosen: row.str("chosen")?.to_string(),
        rejected: row.str("rejected")?.to_string(),
        subset: non_empty_subset(row)?,
    })
}

/// Parses one v2 row.
pub fn parse_v2(row: &Row) -> Result<V2Row, DataError> {
    let id = parse_id(row)?;
    let prompt = generic::parse_prompt(row)?;
    let chosen = row.str_array("chosen")?;
    let rejected = row.str_array("rejected")?;
    if chosen.is_empty() {
        return Err(row
            .loc
            .field("chosen", "needs at least one correct completion"));
    }
    if rejected.is_empty() {
        return Err(row
            .loc
            .field("rejected", "needs at least one incorrect completion"));
    }
    let count = |field: &str| -> Result<Option<u64>, DataError> {
        match row.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| row.loc.field(field, "expected a non-negative integer")),
        }
    };
    if let Some(n) = count("num_correct")?
        && n as usize != chosen.len()
    {
        return Err(row.loc.field(
            "num_correct",
            format!("is {n} but chosen has {} completions", chosen.len()),
        ));
    }
    if let Some(n) = count("total_completions")?
        && n as usize != chosen.len() + rejected.len()
    {
        return Err(row.loc.field(
            "total_completions",
            format!(
                "is {n} but chosen and rejected have {} completions",
                chosen.len() + rejected.len()
            ),
        ));
    }
    Ok(V2Row {
        id,
        prompt,
        chosen,
        rejected,
        subset: non_empty_subset(row)?,
    })
}

/// A row of plumbline's generic pair layout as a v1 row; `default_subset` when it has none.
pub fn parse_pair_row(row: &Row, default_subset: &str) -> Result<V1Row, DataError> {
    let id = parse_id(row)?;
    let pair = parse_pair(row)?;
    Ok(pair_to_row(pair, id, default_subset))
}

fn pair_to_row(pair: PreferencePair, id: Option<String>, default_subset: &str) -> V1Row {
    V1Row {
        id,
        prompt: pair.prompt,
        chosen: pair.chosen,
        rejected: pair.rejected,
        subset: pair.subset.unwrap_or_else(|| default_subset.to_string()),
    }
}

/// Preference pairs (e.g. from [`hh_rlhf::load`]) as v1 rows; pairs without a subset take
/// `subset`, and ids are their 0-based positions.
pub fn rows_from_pairs(pairs: Vec<PreferencePair>, subset: &str) -> Vec<V1Row> {
    pairs
        .into_iter()
        .enumerate()
        .map(|(i, p)| pair_to_row(p, Some(i.to_string()), subset))
        .collect()
}

/// plumbline's HH-RLHF harmless-base split (checksum-verified) as v1 rows of subset
/// [`HH_RLHF_SUBSET`].
pub fn load_hh_rlhf(data_dir: &Path, split: hh_rlhf::Split) -> Result<Vec<V1Row>, DataError> {
    let (pairs, _report) = hh_rlhf::load(data_dir, split)?;
    Ok(rows_from_pairs(pairs, HH_RLHF_SUBSET))
}

fn read_strict<T>(
    path: &Path,
    mut parse: impl FnMut(&Row) -> Result<T, DataError>,
) -> Result<Vec<T>, DataError> {
    JsonlReader::open(path)?
        .map(|item| {
            let (loc, value) = item?;
            parse(&Row::new(&loc, &value))
        })
        .collect()
}

fn read_lenient<T>(
    path: &Path,
    mut parse: impl FnMut(&Row) -> Result<T, DataError>,
) -> Result<Loaded<T>, DataError> {
    let mut loaded = Loaded {
        rows: Vec::new(),
        errors: Vec::new(),
    };
    for item in JsonlReader::open(path)? {
        match item.and_then(|(loc, value)| parse(&Row::new(&loc, &value))) {
            Ok(row) => loaded.rows.push(row),
            Err(e) => loaded.errors.push(e),
        }
    }
    Ok(loaded)
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pairs".to_string())
}

/// Reads a v1 file; the first malformed row is the error.
pub fn read_v1(path: &Path) -> Result<Vec<V1Row>, DataError> {
    read_strict(path, parse_v1)
}

/// Reads a v1 file, collecting malformed rows.
pub fn read_v1_lenient(path: &Path) -> Result<Loaded<V1Row>, DataError> {
    read_lenient(path, parse_v1)
}

/// Reads a v2 file; the first malformed row is the error.
pub fn read_v2(path: &Path) -> Result<Vec<V2Row>, DataError> {
    read_strict(path, parse_v2)
}

/// Reads a v2 file, collecting malformed rows.
pub fn read_v2_lenient(path: &Path) -> Result<Loaded<V2Row>, DataError> {
    read_lenient(path, parse_v2)
}

/// Reads a generic pairs file as v1 rows (subset = the row's `subset`, else the file stem).
pub fn read_pairs(path: &Path) -> Result<Vec<V1Row>, DataError> {
    let stem = file_stem(path);
    read_strict(path, |row| parse_pair_row(row, &stem))
}

/// Reads a generic pairs file as v1 rows, collecting malformed rows.
pub fn read_pairs_lenient(path: &Path) -> Result<Loaded<V1Row>, DataError> {
    let stem = file_stem(path);
    read_lenient(path, |row| parse_pair_row(row, &stem))
}

/// The layout of an evaluation file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalFormat {
    /// reward-bench v1: `{prompt, chosen, rejected, subset}` ([`read_v1`]).
    Rewardbench,
    /// RewardBench 2: `{prompt, chosen: [..], rejected: [..], subset}` ([`read_v2`]).
    Rewardbench2,
    /// Preference pairs `{prompt, chosen, rejected}`; the subset is the file stem
    /// ([`read_pairs`]).
    Pairs,
}

/// Tells the layout of `path` from its first non-blank row: `chosen` a list → v2
/// ([`EvalFormat::Rewardbench2`]); else a `subset` field → v1 ([`EvalFormat::Rewardbench`]);
/// else [`EvalFormat::Pairs`].
///
/// Errors: a path that is not a regular file, a file with no rows, or a first row that cannot
/// be read (invalid UTF-8, invalid JSON, not an object) — each naming the file and the real
/// line.
pub fn detect_format(path: &Path) -> Result<EvalFormat, DataError> {
    let Some(first) = JsonlReader::open(path)?.next() else {
        return Err(DataError::Invalid {
            path: path.to_path_buf(),
            message: "the file has no rows".into(),
        });
    };
    let (_, row) = first?;
    Ok(if row.get("chosen").is_some_and(Value::is_array) {
        EvalFormat::Rewardbench2
    } else if row.get("subset").is_some_and(|v| !v.is_null()) {
        EvalFormat::Rewardbench
    } else {
        EvalFormat::Pairs
    })
}
