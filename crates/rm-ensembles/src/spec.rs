//! `ensemble.json` — what makes a folder an ensemble — and the recipes' `[ensemble]` section.
//!
//! ```json
//! { "format_version": 1,
//!   "members": ["member-0/final", "member-1/final", "/abs/other-rm/final"],
//!   "aggregation": { "kind": "mean-minus-std", "lambda": 0.5 } }
//! ```
//! Relative member paths are relative to the ensemble folder.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rm_core::models::reward::RewardModelBundle;
use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregation;

/// The file that makes a folder an ensemble.
pub const ENSEMBLE_FILE: &str = "ensemble.json";
/// The `ensemble.json` format this build writes and reads.
pub const ENSEMBLE_FORMAT_VERSION: u32 = 1;

/// `ensemble.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleSpec {
    pub format_version: u32,
    /// Reward-model folders, relative to the ensemble folder (or absolute).
    pub members: Vec<PathBuf>,
    #[serde(default)]
    pub aggregation: Aggregation,
}

impl EnsembleSpec {
    pub fn new(members: Vec<PathBuf>, aggregation: Aggregation) -> Self {
        Self {
            format_version: ENSEMBLE_FORMAT_VERSION,
            members,
            aggregation,
        }
    }

    /// The members' folders as paths usable from the current directory.
    pub fn member_dirs(&self, dir: &Path) -> Vec<PathBuf> {
        self.members.iter().map(|m| dir.join(m)).collect()
    }

    /// Checks the spec against the folder `dir`: a supported version, at least one member,
    /// every member a reward-model folder, all with the same attributes.
    pub fn validate(&self, dir: &Path) -> Result<()> {
        let file = dir.join(ENSEMBLE_FILE);
        if self.format_version != ENSEMBLE_FORMAT_VERSION {
            bail!(
                "{}: format_version {} (this build reads {ENSEMBLE_FORMAT_VERSION})",
                file.display(),
                self.format_version
            );
        }
        if self.members.is_empty() {
            bail!(
                "{}: \"members\" is empty: an ensemble needs at least one reward-model folder",
                file.display()
            );
        }
        self.aggregation
            .validate()
            .with_context(|| format!("{}", file.display()))?;
        let mut first: Option<(PathBuf, Vec<String>)> = None;
        for (k, member) in self.member_dirs(dir).iter().enumerate() {
            if !member.is_dir() {
                bail!(
                    "{}: member {k} ({}) is not a folder: {} does not exist",
                    file.display(),
                    self.members[k].display(),
                    member.display()
                );
            }
            let spec = RewardModelBundle::read_spec(member)
                .with_context(|| format!("{}: member {k}", file.display()))?;
            match &first {
                None => first = Some((member.clone(), spec.attributes)),
                Some((dir0, attrs0)) if *attrs0 != spec.attributes => bail!(
                    "{}: member {k} ({}) has attributes {:?}, member 0 ({}) has {:?}: members must score the same attributes",
                    file.display(),
                    member.display(),
                    spec.attributes,
                    dir0.display(),
                    attrs0
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Reads and checks `dir/ensemble.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let file = dir.join(ENSEMBLE_FILE);
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "reading {} (is {} an ensemble folder?)",
                file.display(),
                dir.display()
            )
        })?;
        let spec: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an ensemble spec", file.display()))?;
        spec.validate(dir)?;
        Ok(spec)
    }

    /// Checks the spec against `dir`, then writes `dir/ensemble.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        self.validate(dir)?;
        let file = dir.join(ENSEMBLE_FILE);
        rm_core::checkpoint::write_bytes_atomically(
            &file,
            serde_json::to_string_pretty(self)?.as_bytes(),
        )?;
        Ok(file)
    }
}

/// A recipe's `[ensemble]` section: train `members` reward models one after the other into
/// `<out_dir>/member-<i>/`.
///
/// ```toml
/// [ensemble]
/// members = 4
/// seeds = [1, 2, 3, 4]        # default: train.seed + i
/// bootstrap = true            # resample the training pairs with replacement, per member
/// aggregation = { kind = "mean-minus-std", lambda = 0.5 }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleConfig {
    pub members: usize,
    /// One seed per member (model initialization, data order and bootstrap resample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<Vec<u64>>,
    #[serde(default)]
    pub bootstrap: bool,
    #[serde(default)]
    pub aggregation: Aggregation,
}

impl EnsembleConfig {
    /// Checks the member count, the seeds and the aggregation.
    pub fn validate(&self) -> Result<()> {
        if self.members == 0 {
            bail!("ensemble.members must be at least 1");
        }
        if let Some(seeds) = &self.seeds {
            if seeds.len() != self.members {
                bail!(
                    "ensemble.seeds has {} seeds for {} members: give one per member (or none for train.seed + i)",
                    seeds.len(),
                    self.members
                );
            }
            let mut sorted = seeds.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != seeds.len() {
                bail!("ensemble.seeds {seeds:?} repeats a seed: members would be identical");
            }
        }
        self.aggregation.validate().context("ensemble.aggregation")
    }

    /// Member `i`'s seed: `seeds[i]`, or `base + i`.
    pub fn seed(&self, base: u64, i: usize) -> u64 {
        match &self.seeds {
            Some(s) => s[i],
            None => base.wrapping_add(i as u64),
        }
    }

    /// Member `i`'s folder name.
    pub fn member_dir_name(i: usize) -> String {
        format!("member-{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_seeds_default_to_base_plus_i_and_are_checked() {
        let c = EnsembleConfig {
            members: 3,
            seeds: None,
            bootstrap: true,
            aggregation: Aggregation::Min,
        };
        c.validate().unwrap();
        assert_eq!(
            (0..3).map(|i| c.seed(42, i)).collect::<Vec<_>>(),
            [42, 43, 44]
        );
        let mut bad = c.clone();
        bad.seeds = Some(vec![1, 2]);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("2 seeds for 3")
        );
        bad.seeds = Some(vec![1, 2, 1]);
        assert!(bad.validate().unwrap_err().to_string().contains("repeats"));
        bad.seeds = Some(vec![5, 6, 7]);
        assert_eq!(bad.seed(42, 1), 6);
        bad.members = 0;
        assert!(bad.validate().is_err());
        let parsed: EnsembleConfig = toml::from_str(
            "members = 2\nbootstrap = true\naggregation = { kind = \"brme\", lambda = 0.5 }",
        )
        .unwrap();
        assert_eq!(parsed.aggregation, Aggregation::Brme { lambda: 0.5 });
        assert!(toml::from_str::<EnsembleConfig>("members = 2\nbootstrp = true").is_err());
    }

    #[test]
    fn an_empty_member_list_and_a_missing_folder_are_named() {
        let dir = std::env::temp_dir().join(format!("rm-ens-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = EnsembleSpec::new(vec![], Aggregation::Mean)
            .write(&dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"members\" is empty"), "{err}");
        let err = EnsembleSpec::new(vec!["member-0/final".into()], Aggregation::Mean)
            .write(&dir)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("member 0 (member-0/final) is not a folder"),
            "{err}"
        );
        std::fs::write(
            dir.join(ENSEMBLE_FILE),
            r#"{"format_version": 1, "members": [], "aggregation": {"kind": "mean"}}"#,
        )
        .unwrap();
        assert!(
            EnsembleSpec::read(&dir)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        std::fs::write(
            dir.join(ENSEMBLE_FILE),
            r#"{"format_version": 1, "member": []}"#,
        )
        .unwrap();
        let err = format!("{:#}", EnsembleSpec::read(&dir).unwrap_err());
        assert!(err.contains("not an ensemble spec"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
