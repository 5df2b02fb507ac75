//! TOML recipes (`recipes/*.toml`) with command-line overrides: `--set train.lr=5e-5` sets one
//! dotted field; the value is read as TOML (number, bool, string, array), else taken as a plain
//! string. Unknown fields are errors, so a typo never trains silently with a default.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rm_core::models::reward::RewardModelConfig;
use rm_core::train::TrainConfig;
use rm_losses::PairwiseObjective;
use serde::{Deserialize, Serialize};

/// The `[data]` section: which preference pairs train and evaluate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `hh-rlhf` (HH-RLHF harmless-base from the data dir), or a JSONL file of
    /// `{prompt, chosen, rejected[, margin]}` pairs.
    pub dataset: String,
    #[serde(default = "train_split")]
    pub train_split: String,
    #[serde(default = "dev_split")]
    pub eval_split: String,
    /// With a JSONL `dataset`: the evaluation file.
    #[serde(default)]
    pub eval_file: Option<PathBuf>,
    /// Use only the first N training pairs (0 = all).
    #[serde(default)]
    pub limit: usize,
    /// Use only the first N evaluation pairs (0 = all).
    #[serde(default)]
    pub eval_limit: usize,
}

fn train_split() -> String {
    "train".into()
}
fn dev_split() -> String {
    "dev".into()
}

/// The `[eval]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Texts per scoring forward pass.
    #[serde(default = "eval_batch")]
    pub batch_size: usize,
}

fn eval_batch() -> usize {
    32
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            batch_size: eval_batch(),
        }
    }
}

/// A reward-model training recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardRecipe {
    pub model: RewardModelConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub objective: PairwiseObjective,
    pub train: TrainConfig,
    #[serde(default)]
    pub eval: EvalConfig,
}

/// Reads a recipe and applies `overrides` (`a.b.c=value`).
pub fn load<T: serde::de::DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading recipe {}", path.display()))?;
    parse(&text, &path.display().to_string(), overrides)
}

/// Parses recipe text (named `origin` in errors) and applies `overrides`.
pub fn parse<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
    overrides: &[String],
) -> Result<T> {
    let mut value: toml::Table =
        toml::from_str(text).with_context(|| format!("{origin}: invalid TOML"))?;
    for o in overrides {
        apply_override(&mut value, o)?;
    }
    T::deserialize(toml::Value::Table(value))
        .with_context(|| format!("{origin} (with {} override(s))", overrides.len()))
}

fn apply_override(root: &mut toml::Table, spec: &str) -> Result<()> {
    let Some((path, raw)) = spec.split_once('=') else {
        bail!("--set {spec}: expected FIELD=VALUE, e.g. train.lr=5e-5");
    };
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        bail!("--set {spec}: empty field name");
    }
    let value = parse_value(raw.trim());
    let mut table = root;
    for key in &keys[..keys.len() - 1] {
        let entry = table
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("--set {spec}: {key} is not a table"),
        };
    }
    table.insert(keys[keys.len() - 1].to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = include_str!("../../../recipes/rm-minilm-hh.toml");

    #[test]
    fn the_shipped_recipe_parses_and_overrides_reach_any_field() {
        let r: RewardRecipe = parse(RECIPE, "rm-minilm-hh.toml", &[]).unwrap();
        assert_eq!(r.model.backbone, PathBuf::from("models/minilm"));
        assert_eq!(r.objective, PairwiseObjective::default());
        let r: RewardRecipe = parse(
            RECIPE,
            "rm-minilm-hh.toml",
            &[
                "train.lr=1e-4".into(),
                "train.epochs=3".into(),
                "model.pooling=cls".into(),
                "data.limit=10".into(),
                "train.out_dir=/tmp/x".into(),
                "objective.kind=bradley-terry".into(),
                "objective.label_smoothing=0.1".into(),
            ],
        )
        .unwrap();
        assert_eq!(r.train.lr, 1e-4);
        assert_eq!(r.train.epochs, 3);
        assert_eq!(r.data.limit, 10);
        assert_eq!(r.train.out_dir, PathBuf::from("/tmp/x"));
        assert_eq!(
            r.objective,
            PairwiseObjective::BradleyTerry {
                margin: false,
                centering: 0.0,
                label_smoothing: 0.1
            }
        );
    }

    #[test]
    fn typos_and_bad_overrides_are_errors() {
        let err = parse::<RewardRecipe>(RECIPE, "r.toml", &["train.lrr=1".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("lrr"), "{err:#}");
        let err = parse::<RewardRecipe>(RECIPE, "r.toml", &["train.lr".into()]).unwrap_err();
        assert!(err.to_string().contains("expected FIELD=VALUE"), "{err}");
        let err = parse::<RewardRecipe>(RECIPE, "r.toml", &["train.lr.x=1".into()]).unwrap_err();
        assert!(err.to_string().contains("lr is not a table"), "{err}");
    }
}
