//! Where plumbline looks for datasets, models and golden files.
//!
//! Resolution order for each: an explicit path (a `--data-dir`/`--models-dir` flag), then an
//! environment variable, then a default relative to the current directory.

use std::path::{Path, PathBuf};

/// Environment variable overriding the dataset directory.
pub const DATA_DIR_ENV: &str = "PLUMB_DATA_DIR";
/// Environment variable overriding the models directory.
pub const MODELS_DIR_ENV: &str = "PLUMB_MODELS_DIR";
/// Environment variable overriding the golden-values directory.
pub const GOLDEN_DIR_ENV: &str = "PLUMB_GOLDEN_DIR";

/// Default dataset directory: the `shared/datasets` folder beside the repository.
pub const DEFAULT_DATA_DIR: &str = "../shared/datasets";
/// Default models directory (filled by `cargo xtask fetch-models`).
pub const DEFAULT_MODELS_DIR: &str = "models";
/// Default golden-values directory.
pub const DEFAULT_GOLDEN_DIR: &str = "../shared/golden";

fn resolve(explicit: Option<&Path>, env: &str, default: &str) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os(env) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(default),
    }
}

/// The dataset directory: `explicit`, else `$PLUMB_DATA_DIR`, else `../shared/datasets`.
pub fn data_dir(explicit: Option<&Path>) -> PathBuf {
    resolve(explicit, DATA_DIR_ENV, DEFAULT_DATA_DIR)
}

/// The models directory: `explicit`, else `$PLUMB_MODELS_DIR`, else `models`.
pub fn models_dir(explicit: Option<&Path>) -> PathBuf {
    resolve(explicit, MODELS_DIR_ENV, DEFAULT_MODELS_DIR)
}

/// The golden-values directory: `explicit`, else `$PLUMB_GOLDEN_DIR`, else `../shared/golden`.
pub fn golden_dir(explicit: Option<&Path>) -> PathBuf {
    resolve(explicit, GOLDEN_DIR_ENV, DEFAULT_GOLDEN_DIR)
}

/// The repository root, for tests and benches run by cargo (whose working directory is a crate's
/// folder). Found by walking up from `start` to the first folder holding both `Cargo.toml` and
/// `crates/`.
pub fn repo_root_from(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|p| p.join("Cargo.toml").is_file() && p.join("crates").is_dir())
        .map(Path::to_path_buf)
}

/// Paths used by tests and benches: the repository root's `models/`, `../shared/datasets` and
/// `../shared/golden`, each still overridable by its environment variable.
pub mod for_tests {
    use super::*;

    fn root() -> PathBuf {
        let cwd = std::env::current_dir().expect("current directory");
        repo_root_from(&cwd).unwrap_or(cwd)
    }

    pub fn data_dir() -> PathBuf {
        super::data_dir(
            std::env::var_os(DATA_DIR_ENV)
                .is_none()
                .then(|| root().join(DEFAULT_DATA_DIR))
                .as_deref(),
        )
    }

    pub fn models_dir() -> PathBuf {
        super::models_dir(
            std::env::var_os(MODELS_DIR_ENV)
                .is_none()
                .then(|| root().join(DEFAULT_MODELS_DIR))
                .as_deref(),
        )
    }

    pub fn golden_dir() -> PathBuf {
        super::golden_dir(
            std::env::var_os(GOLDEN_DIR_ENV)
                .is_none()
                .then(|| root().join(DEFAULT_GOLDEN_DIR))
                .as_deref(),
        )
    }
}

/// A model path from a recipe or a flag, with the models folder applied: a relative path under
/// the default `models/` (e.g. the recipes' `models/minilm`) is looked up in `models_dir`
/// (`--models-dir` / `$PLUMB_MODELS_DIR`) instead; any other path is taken as it is.
pub fn resolve_model_path(path: &Path, models_dir: &Path) -> PathBuf {
    if path.is_relative()
        && let Ok(rest) = path.strip_prefix(DEFAULT_MODELS_DIR)
        && models_dir != Path::new(DEFAULT_MODELS_DIR)
    {
        return models_dir.join(rest);
    }
    path.to_path_buf()
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    #[test]
    fn recipe_model_paths_follow_the_models_folder() {
        let custom = Path::new("/opt/plumb-models");
        assert_eq!(
            resolve_model_path(Path::new("models/minilm"), custom),
            PathBuf::from("/opt/plumb-models/minilm")
        );
        assert_eq!(
            resolve_model_path(Path::new("models/minilm"), Path::new("models")),
            PathBuf::from("models/minilm")
        );
        assert_eq!(
            resolve_model_path(Path::new("/abs/minilm"), custom),
            PathBuf::from("/abs/minilm")
        );
        assert_eq!(
            resolve_model_path(Path::new("elsewhere/m"), custom),
            PathBuf::from("elsewhere/m")
        );
    }
}
