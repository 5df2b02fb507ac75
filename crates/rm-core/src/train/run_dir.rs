//! The run folder: one run per folder, checkpoints that are all or nothing.
//!
//! - **A lock.** [`RunDir::open`] takes an exclusive lock on `<out>/.lock` (released when the
//!   [`RunDir`] is dropped or the process dies); a second process writing into the same folder
//!   fails at once, naming the folder.
//! - **No silent overwrite.** A fresh run into a folder that holds a run is refused unless the
//!   mode is [`RunMode::Overwrite`]; `--resume` needs a checkpoint.
//! - **The run's identity.** `run.json` records what defines the run (the recipe, less the
//!   fields that may change on resume); resuming with a recipe that differs elsewhere is refused
//!   with the differing fields named, unless changes are allowed explicitly (the trainer then
//!   records them in the metrics).
//! - **All-or-nothing checkpoints.** [`RunDir::write_checkpoint`] writes the whole state into a
//!   staging folder with a `manifest.json` (every file's size and SHA-256), then swaps it in by
//!   two renames: `last → .last.old-…`, `staging → last`. A kill at any moment leaves either
//!   the new `last` or the previous one (as `last`, or as `.last.old-…` between the renames,
//!   which [`RunDir::open`] restores); [`RunDir::checkpoint`] verifies the manifest before a
//!   resume trusts it. Model folders (`best/`, `final/`) are swapped the same way
//!   ([`replace_dir_atomically`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::unique_suffix;

/// How a run treats its folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// A new run; the folder must not hold one.
    Fresh,
    /// A new run that first removes the previous run's files from the folder.
    Overwrite,
    /// Continue from the folder's last checkpoint; `allow_changes` accepts a recipe that
    /// differs from the run's (the differences are recorded).
    Resume { allow_changes: bool },
}

/// The checkpoint folder a resume reads.
pub const LAST: &str = "last";
/// The manifest inside a checkpoint.
pub const MANIFEST: &str = "manifest.json";
/// The run's identity.
pub const RUN_FILE: &str = "run.json";
/// The metrics log.
pub const METRICS_FILE: &str = "metrics.jsonl";
const LOCK_FILE: &str = ".lock";
/// What a run writes into its folder (what [`RunMode::Overwrite`] removes).
const RUN_OUTPUTS: &[&str] = &[
    LAST,
    "best",
    "final",
    RUN_FILE,
    METRICS_FILE,
    "curves.png",
    "report.json",
    "report.md",
    "summary.json",
    "recipe.toml",
];

/// `manifest.json`: the files of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// file name → (bytes, hex SHA-256)
    pub files: BTreeMap<String, (u64, String)>,
}

/// `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RunFile {
    identity: serde_json::Value,
}

/// An open run folder (holds its lock).
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    mode: RunMode,
    /// Fields of the identity that differ from the resumed run's (`field: old → new`).
    changes: Vec<String>,
    _lock: File,
}

impl RunDir {
    /// Opens `root` for a run: creates it, takes the lock, restores a checkpoint or model folder
    /// left between the two renames of a swap, removes stale staging folders, then applies
    /// `mode` (see the module docs). `identity` defines the run; dotted fields with a prefix in
    /// `may_change` (e.g. `train.max_steps`) are not compared on resume.
    pub fn open(
        root: &Path,
        mode: RunMode,
        identity: &serde_json::Value,
        may_change: &[&str],
    ) -> Result<Self> {
        if root.as_os_str().is_empty() {
            bail!("the run folder (train.out_dir) is empty: name a folder");
        }
        if root.exists() && !root.is_dir() {
            bail!("{} exists and is not a folder", root.display());
        }
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => bail!(
                "{} is in use by another run (it holds {}); wait for it or choose another train.out_dir",
                root.display(),
                lock_path.display()
            ),
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()));
            }
        }
        let mut dir = Self {
            root: root.to_path_buf(),
            mode,
            changes: Vec::new(),
            _lock: lock,
        };
        dir.recover()?;
        match mode {
            RunMode::Fresh => {
                if let Some(found) = dir.existing_run() {
                    bail!(
                        "{} already holds a run ({found}); continue it with --resume, or start over with --overwrite",
                        root.display()
                    );
                }
                dir.write_identity(identity)?;
            }
            RunMode::Overwrite => {
                for name in RUN_OUTPUTS {
                    let path = root.join(name);
                    if path.is_dir() {
                        fs::remove_dir_all(&path)
                    } else if path.exists() {
                        fs::remove_file(&path)
                    } else {
                        Ok(())
                    }
                    .with_context(|| format!("removing {}", path.display()))?;
                }
                dir.write_identity(identity)?;
            }
            RunMode::Resume { allow_changes } => {
                dir.checkpoint().with_context(|| {
                    format!("--resume: {} holds no usable checkpoint", root.display())
                })?;
                let run_path = root.join(RUN_FILE);
                let stored: RunFile = serde_json::from_str(
                    &fs::read_to_string(&run_path)
                        .with_context(|| format!("reading {}", run_path.display()))?,
                )
                .with_context(|| format!("{}: not a run file", run_path.display()))?;
                dir.changes = identity_changes(&stored.identity, identity, may_change);
                if !dir.changes.is_empty() && !allow_changes {
                    bail!(
                        "--resume: the recipe differs from the run in {} ({}); resume with the run's recipe, or pass --allow-changes to accept (recorded in the metrics)",
                        root.display(),
                        dir.changes.join("; ")
                    );
                }
            }
        }
        Ok(dir)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The mode it was opened with.
    pub fn mode(&self) -> RunMode {
        self.mode
    }

    /// Whether this run continues a checkpoint.
    pub fn resuming(&self) -> bool {
        matches!(self.mode, RunMode::Resume { .. })
    }

    /// Identity fields a resume accepted as changed (`field: old → new`).
    pub fn changes(&self) -> &[String] {
        &self.changes
    }

    /// The metrics log's path.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join(METRICS_FILE)
    }

    fn existing_run(&self) -> Option<&'static str> {
        [LAST, METRICS_FILE, RUN_FILE, "final"]
            .into_iter()
            .find(|name| self.root.join(name).exists())
    }

    fn write_identity(&self, identity: &serde_json::Value) -> Result<()> {
        crate::checkpoint::write_bytes_atomically(
            &self.root.join(RUN_FILE),
            serde_json::to_string_pretty(&RunFile {
                identity: identity.clone(),
            })?
            .as_bytes(),
        )
    }

    /// Restores folders left between the renames of a swap; removes staging folders.
    fn recover(&self) -> Result<()> {
        let entries =
            fs::read_dir(&self.root).with_context(|| format!("listing {}", self.root.display()))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Some(rest) = name.strip_prefix('.')
                && let Some((target, kind)) = swap_leftover(rest)
            {
                let target_path = self.root.join(target);
                if kind == Leftover::Old && !target_path.exists() {
                    fs::rename(&path, &target_path).with_context(|| {
                        format!(
                            "restoring {} from {}",
                            target_path.display(),
                            path.display()
                        )
                    })?;
                } else {
                    remove_any(&path)?;
                }
            }
        }
        Ok(())
    }

    /// The verified last checkpoint's folder.
    pub fn checkpoint(&self) -> Result<PathBuf> {
        let last = self.root.join(LAST);
        if !last.is_dir() {
            bail!("{} does not exist", last.display());
        }
        verify_manifest(&last)?;
        Ok(last)
    }

    /// Writes a checkpoint through a staging folder (`write` fills it), adds the manifest and
    /// swaps it in as `last/` (see the module docs).
    pub fn write_checkpoint(&self, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        replace_dir_atomically(&self.root.join(LAST), |staging| {
            write(staging)?;
            write_manifest(staging)
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leftover {
    Staging,
    Old,
}

/// `<target>.staging-…` or `<target>.old-…` (after the leading dot).
fn swap_leftover(rest: &str) -> Option<(&str, Leftover)> {
    for (marker, kind) in [(".staging-", Leftover::Staging), (".old-", Leftover::Old)] {
        if let Some(i) = rest.find(marker)
            && i > 0
        {
            return Some((&rest[..i], kind));
        }
    }
    None
}

fn remove_any(path: &Path) -> Result<()> {
    if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .with_context(|| format!("removing {}", path.display()))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        d.sync_all().ok();
    }
}

/// Replaces the folder `target` by what `write` puts into a fresh staging folder beside it:
/// `target → .<name>.old-…`, `staging → target`, then the old folder is removed. Every file is
/// fsynced before the swap. A failed `write` leaves `target` untouched.
pub fn replace_dir_atomically(
    target: &Path,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .with_context(|| format!("{} has no folder name", target.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let suffix = unique_suffix();
    let staging = parent.join(format!(".{}.staging-{suffix}", name.to_string_lossy()));
    let old = parent.join(format!(".{}.old-{suffix}", name.to_string_lossy()));
    fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let written = write(&staging).and_then(|()| sync_tree(&staging));
    if let Err(e) = written {
        fs::remove_dir_all(&staging).ok();
        return Err(e.context(format!("writing {}", target.display())));
    }
    let had_old = target.exists();
    if had_old {
        fs::rename(target, &old).with_context(|| format!("moving {} aside", target.display()))?;
    }
    fs::rename(&staging, target)
        .with_context(|| format!("renaming {} to {}", staging.display(), target.display()))?;
    sync_dir(parent);
    if had_old {
        fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

/// fsyncs every file under `dir` and the folders themselves.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", path.display()))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((total, hex))
}

/// Writes `manifest.json` over the (flat) files of `dir`.
fn write_manifest(dir: &Path) -> Result<()> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST || !entry.path().is_file() {
            continue;
        }
        files.insert(name, sha256_file(&entry.path())?);
    }
    let body = serde_json::to_string_pretty(&Manifest { files })?;
    fs::write(dir.join(MANIFEST), body)
        .with_context(|| format!("writing {}", dir.join(MANIFEST).display()))
}

/// Checks every file of the manifest (size and SHA-256).
pub fn verify_manifest(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST);
    let manifest: Manifest = serde_json::from_str(
        &fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not a checkpoint manifest", path.display()))?;
    for (name, expected) in &manifest.files {
        let file = dir.join(name);
        let found = sha256_file(&file)
            .with_context(|| format!("{}: listed in the manifest", file.display()))?;
        if &found != expected {
            bail!(
                "{}: does not match the checkpoint manifest (size/checksum differ): the checkpoint is damaged",
                file.display()
            );
        }
    }
    Ok(())
}

/// The dotted leaves of a JSON value.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// `field: old → new` for every leaf that differs, except under `may_change`.
pub fn identity_changes(
    old: &serde_json::Value,
    new: &serde_json::Value,
    may_change: &[&str],
) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let absent = "(absent)".to_string();
    keys.into_iter()
        .filter(|k| {
            !may_change
                .iter()
                .any(|p| k.as_str() == *p || k.starts_with(&format!("{p}.")))
        })
        .filter_map(|k| {
            let (x, y) = (a.get(k).unwrap_or(&absent), b.get(k).unwrap_or(&absent));
            (x != y).then(|| format!("{k}: {x} → {y}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmp(name: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("plumbline-rundir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_folder() {
        let root = tmp("lock");
        let id = json!({"train": {"lr": 1}});
        let first = RunDir::open(&root, RunMode::Fresh, &id, &[]).unwrap();
        let err = RunDir::open(&root, RunMode::Overwrite, &id, &[]).unwrap_err();
        assert!(err.to_string().contains("in use by another run"), "{err}");
        drop(first);
        RunDir::open(&root, RunMode::Overwrite, &id, &[]).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_fresh_run_refuses_a_folder_with_a_run_and_resume_names_changed_fields() {
        let root = tmp("modes");
        let id = json!({"train": {"lr": 1, "max_steps": 5}, "data": {"limit": 3}});
        {
            let dir = RunDir::open(&root, RunMode::Fresh, &id, &[]).unwrap();
            dir.write_checkpoint(|d| Ok(fs::write(d.join("state.json"), "{}")?))
                .unwrap();
        }
        let err = RunDir::open(&root, RunMode::Fresh, &id, &[]).unwrap_err();
        assert!(err.to_string().contains("--resume"), "{err}");
        // max_steps may change; lr may not.
        let extended = json!({"train": {"lr": 1, "max_steps": 9}, "data": {"limit": 3}});
        RunDir::open(
            &root,
            RunMode::Resume {
                allow_changes: false,
            },
            &extended,
            &["train.max_steps"],
        )
        .unwrap();
        let changed = json!({"train": {"lr": 2, "max_steps": 5}, "data": {"limit": 3}});
        let err = RunDir::open(
            &root,
            RunMode::Resume {
                allow_changes: false,
            },
            &changed,
            &["train.max_steps"],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("train.lr: 1 → 2"), "{err}");
        let dir = RunDir::open(
            &root,
            RunMode::Resume {
                allow_changes: true,
            },
            &changed,
            &[],
        )
        .unwrap();
        assert_eq!(dir.changes(), ["train.lr: 1 → 2".to_string()]);
        drop(dir);
        assert!(RunDir::open(Path::new(""), RunMode::Fresh, &id, &[]).is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_swap_interrupted_between_its_renames_is_restored_and_damage_is_detected() {
        let root = tmp("swap");
        let id = json!({});
        let dir = RunDir::open(&root, RunMode::Fresh, &id, &[]).unwrap();
        dir.write_checkpoint(|d| Ok(fs::write(d.join("w.bin"), [1u8, 2, 3])?))
            .unwrap();
        dir.write_checkpoint(|d| Ok(fs::write(d.join("w.bin"), [4u8, 5, 6])?))
            .unwrap();
        assert_eq!(
            fs::read(dir.checkpoint().unwrap().join("w.bin")).unwrap(),
            [4, 5, 6]
        );
        // A failed write leaves the previous checkpoint.
        assert!(dir.write_checkpoint(|_| bail!("disk full")).is_err());
        assert_eq!(fs::read(root.join("last/w.bin")).unwrap(), [4, 5, 6]);
        drop(dir);
        // Simulate a kill after `last → .last.old-…`, before `staging → last`.
        fs::rename(root.join("last"), root.join(".last.old-1-2")).unwrap();
        fs::create_dir_all(root.join(".last.staging-1-3")).unwrap();
        let dir = RunDir::open(
            &root,
            RunMode::Resume {
                allow_changes: false,
            },
            &id,
            &[],
        )
        .unwrap();
        assert_eq!(
            fs::read(dir.checkpoint().unwrap().join("w.bin")).unwrap(),
            [4, 5, 6]
        );
        assert!(!root.join(".last.staging-1-3").exists());
        // A damaged file is caught by the manifest.
        fs::write(root.join("last/w.bin"), [4u8, 5, 7]).unwrap();
        let err = dir.checkpoint().unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        drop(dir);
        fs::remove_dir_all(&root).unwrap();
    }
}
