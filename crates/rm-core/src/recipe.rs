//! TOML recipes (`recipes/*.toml`) with command-line overrides: `--set train.lr=5e-5` sets one
//! dotted field; the value is read as TOML (number, bool, string, array), else taken as a plain
//! string. Unknown fields are errors (every recipe struct denies them), so a typo never trains
//! silently with a default. Every trainer's recipe type is read through [`load`] / [`parse`].

use std::path::Path;

use anyhow::{Context, Result, bail};

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
    use crate::train::TrainConfig;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Recipe {
        train: TrainConfig,
    }

    const RECIPE: &str = "[train]\nbatch_size = 4\nlr = 1e-3\nout_dir = \"runs/x\"\n";

    #[test]
    fn overrides_reach_nested_fields_and_typos_are_errors() {
        let r: Recipe = parse(
            RECIPE,
            "r.toml",
            &["train.lr=5e-5".into(), "train.out_dir=/tmp/y".into()],
        )
        .unwrap();
        assert_eq!(r.train.lr, 5e-5);
        assert_eq!(r.train.out_dir, std::path::PathBuf::from("/tmp/y"));
        let err = parse::<Recipe>(RECIPE, "r.toml", &["train.lrr=1".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("lrr"), "{err:#}");
        let err = parse::<Recipe>(RECIPE, "r.toml", &["train.lr".into()]).unwrap_err();
        assert!(err.to_string().contains("expected FIELD=VALUE"), "{err}");
        let err = parse::<Recipe>(RECIPE, "r.toml", &["train.lr.x=1".into()]).unwrap_err();
        assert!(err.to_string().contains("lr is not a table"), "{err}");
        let err = parse::<Recipe>(RECIPE, "r.toml", &["=1".into()]).unwrap_err();
        assert!(err.to_string().contains("empty field name"), "{err}");
        let err = parse::<Recipe>("[train", "r.toml", &[]).unwrap_err();
        assert!(err.to_string().contains("r.toml: invalid TOML"), "{err}");
    }
}
