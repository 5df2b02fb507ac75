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

/// Environment variable overriding the cache directory.
pub const CACHE_DIR_ENV: &str = "PLUMB_CACHE_DIR";

/// The cache directory (precomputed reference log-probs, …): `explicit`, else
/// `$PLUMB_CACHE_DIR`, else `$XDG_CACHE_HOME/plumbline`, else `$HOME/.cache/plumbline`, else
/// `.cache/plumbline` in the current directory.
pub fn cache_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var(CACHE_DIR_ENV)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("plumbline")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/plumbline")))
        .unwrap_or_else(|| PathBuf::from(".cache/plumbline"))
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

/// Checks that `path`, given to a loader that reads a folder (`what`: "a BERT model folder",
/// "a reward-model folder"), is one. A file is refused with what the command takes instead of
/// the loader failing later on `path/config.json`; a `.gguf` file is named as the decoder it
/// is (the commands that take one: `plumb logprobs`, `plumb generate`, Llama reward models).
pub fn require_folder(path: &Path, what: &str) -> anyhow::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist: expected {what} (run `cargo xtask fetch-models` for the models/ folder)",
            path.display()
        );
    }
    let gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let hint = if gguf {
        "; a .gguf file holds a decoder, which `plumb logprobs`, `plumb generate` and Llama \
         reward-model recipes take"
    } else {
        ""
    };
    anyhow::bail!(
        "{} is a file, but this command takes {what}, not a file{hint}",
        path.display()
    )
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

    #[test]
    fn folder_loaders_refuse_files_and_name_a_gguf_as_a_decoder() {
        let dir = std::env::temp_dir().join(format!("plumbline-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(require_folder(&dir, "a BERT model folder").is_ok());
        let gguf = dir.join("model.gguf");
        std::fs::write(&gguf, b"GGUF").unwrap();
        let err = require_folder(&gguf, "a BERT model folder")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{} is a file, but this command takes a BERT model folder, not a file; a .gguf \
                 file holds a decoder, which `plumb logprobs`, `plumb generate` and Llama \
                 reward-model recipes take",
                gguf.display()
            )
        );
        let other = dir.join("weights.safetensors");
        std::fs::write(&other, b"").unwrap();
        let err = require_folder(&other, "a reward-model folder")
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("takes a reward-model folder, not a file"),
            "{err}"
        );
        let missing = dir.join("nope");
        let err = require_folder(&missing, "a reward-model folder")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{} does not exist", missing.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
