//! `cargo xtask tch`: burn's LibTorch backend (plumbline's opt-in `tch` feature), built against
//! the PyTorch wheel from PyPI.
//!
//! burn 0.22.1's `tch` feature pulls in burn-tch 0.22.1 → tch 0.22.0 → torch-sys 0.22.0, whose
//! build script would download libtorch from PyTorch's own server. With `LIBTORCH_USE_PYTORCH=1`
//! it instead asks the `python` on `PATH` (the venv's, since `VIRTUAL_ENV` is set) where an
//! installed `torch` package keeps its headers and `lib/`, and refuses any torch version but the
//! one it was written for ([`TORCH_VERSION`]). So this step
//!
//! 1. makes `.venv-tch/` (git-ignored) and installs exactly `torch==TORCH_VERSION` from PyPI into
//!    it (the default Linux wheel: CUDA 12 build plus its `nvidia-*` wheels, about 3.5 GB to
//!    download; PyPI carries no CPU-only wheel — it also serves `tch:cuda:N` on a GPU machine);
//! 2. builds with that venv first on `PATH`, `VIRTUAL_ENV` and `LIBTORCH_USE_PYTORCH=1`, and
//!    runs what it built with `torch/lib` on `LD_LIBRARY_PATH` (torch-sys links libtorch
//!    dynamically and sets no rpath on the final binaries).
//!
//! ```text
//! cargo xtask tch                    # venv + release build of `plumb --features tch`
//! cargo xtask tch -- test            # rm-core's tensor tests + MiniLM/SmolLM2 golden parity on tch
//! cargo xtask tch -- bench [ARGS]    # the backbones bench on flex and tch:cpu (ARGS as `xtask bench`)
//! cargo xtask tch -- env             # print the environment (shell `export`s), to run a tch build by hand
//! ```
//!
//! Never part of `cargo xtask test` or the default build.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The PyTorch release torch-sys 0.22.0 checks for (`TORCH_VERSION` in its build script); any
/// other version fails the build unless `LIBTORCH_BYPASS_VERSION_CHECK` is set, which we do not.
pub const TORCH_VERSION: &str = "2.9.0";

/// The venv holding the pinned `torch`, relative to the repository root.
const VENV: &str = ".venv-tch";

const USAGE: &str = "usage: cargo xtask tch [-- build|test|bench [ARGS]|env]
  build (default)   make .venv-tch with torch==2.9.0 from PyPI, then
                    `cargo build --release -p plumb --features tch`
  test              rm-core's unit tests (its tensor code) and the MiniLM / SmolLM2 golden-parity
                    tests with PLUMB_TEST_DEVICE=tch
  bench [ARGS]      the backbones bench with `--device flex,tch:cpu` (both in one table; pass
                    --device SPEC[,SPEC] to choose); other ARGS as in `cargo xtask bench`
                    (--threads N, --iters N, --only PREFIX, --no-peer)
  env               print the environment variables a tch build and its binaries need
";

/// The pinned torch in its venv: what a tch build and its binaries need from the environment.
struct Torch {
    venv: PathBuf,
    /// `torch/lib` inside the venv: libtorch, libtorch_cpu, libc10 (and libtorch_cuda).
    lib: PathBuf,
}

impl Torch {
    /// Makes the venv when absent and installs the pinned torch when it holds another version
    /// (or none).
    fn ensure(root: &Path) -> Result<Torch> {
        let venv = root.join(VENV);
        let python = venv.join("bin/python");
        if !python.is_file() {
            let mut make = Command::new("python3");
            make.current_dir(root).args(["-m", "venv"]).arg(&venv);
            super::step(&format!("python3 -m venv {VENV}"), make)?;
        }
        if installed_torch(&python).as_deref() != Some(TORCH_VERSION) {
            let mut install = Command::new(&python);
            install
                .current_dir(root)
                .args(["-m", "pip", "install", "--no-input"])
                .arg(format!("torch=={TORCH_VERSION}"));
            super::step(
                &format!("pip install torch=={TORCH_VERSION} into {VENV}"),
                install,
            )?;
            let found = installed_torch(&python);
            if found.as_deref() != Some(TORCH_VERSION) {
                bail!(
                    "{VENV}: after installing torch=={TORCH_VERSION}, `import torch` reports {}",
                    found.as_deref().unwrap_or("no torch")
                );
            }
        }
        let out = Command::new(&python)
            .args([
                "-c",
                "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
            ])
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        if !out.status.success() {
            bail!(
                "{}: locating torch/lib failed: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let lib = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if !lib.join("libtorch_cpu.so").is_file() {
            bail!("{} holds no libtorch_cpu.so", lib.display());
        }
        Ok(Torch { venv, lib })
    }

    /// `PATH` with the venv's `bin/` first.
    fn path(&self) -> OsString {
        prepend(self.venv.join("bin"), std::env::var_os("PATH"))
    }

    /// `LD_LIBRARY_PATH` with `torch/lib` first.
    fn ld_library_path(&self) -> OsString {
        prepend(self.lib.clone(), std::env::var_os("LD_LIBRARY_PATH"))
    }

    /// Sets what torch-sys's and burn-tch's build scripts read, and what the built binaries need
    /// to load libtorch. Also drops the package variables that `cargo run` set for this xtask
    /// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, …): build scripts such as ring's declare
    /// `rerun-if-env-changed` on them and cargo compares its own environment, so leaving them in
    /// re-runs ring's build script and everything above it — rustls, ureq, torch-sys's C++
    /// compile — each time a build alternates between the xtask and a plain shell.
    fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_MANIFEST_")
                || matches!(
                    key.as_ref(),
                    "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
                )
            {
                cmd.env_remove(key.as_ref());
            }
        }
        cmd.env("LIBTORCH_USE_PYTORCH", "1")
            .env("VIRTUAL_ENV", &self.venv)
            .env("PATH", self.path())
            .env("LD_LIBRARY_PATH", self.ld_library_path())
            .env_remove("LIBTORCH")
            .env_remove("LIBTORCH_BYPASS_VERSION_CHECK")
    }
}

/// The `torch.__version__` (without a `+local` suffix) that `python` imports, if any.
fn installed_torch(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args(["-c", "import torch; print(torch.__version__.split('+')[0])"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn prepend(first: PathBuf, rest: Option<OsString>) -> OsString {
    let mut paths = vec![first];
    if let Some(rest) = rest {
        paths.extend(std::env::split_paths(&rest));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// `cargo xtask tch [-- build|test|bench ARGS|env]`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let args: Vec<String> = args.iter().filter(|a| *a != "--").cloned().collect();
    let (what, rest) = match args.split_first() {
        Some((w, rest)) => (w.as_str(), rest),
        None => ("build", &[][..]),
    };
    if matches!(what, "-h" | "--help" | "help") {
        print!("{USAGE}");
        return Ok(());
    }
    if !matches!(what, "build" | "test" | "bench" | "env") {
        bail!("unknown `cargo xtask tch` command `{what}`\n\n{USAGE}");
    }
    let start = Instant::now();
    let torch = Torch::ensure(root)?;
    match what {
        "build" => build(root, &torch)?,
        "test" => test(root, &torch)?,
        "bench" => bench(root, &torch, rest)?,
        _ => {
            println!("export LIBTORCH_USE_PYTORCH=1");
            println!("export VIRTUAL_ENV={}", torch.venv.display());
            println!("export PATH={}:\"$PATH\"", torch.venv.join("bin").display());
            println!(
                "export LD_LIBRARY_PATH={}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}",
                torch.lib.display()
            );
            return Ok(());
        }
    }
    println!(
        "\nxtask tch {what}: done in {:.1} min (torch {TORCH_VERSION} from {})",
        start.elapsed().as_secs_f64() / 60.0,
        torch.lib.display()
    );
    Ok(())
}

/// Runs a cargo build step with the torch environment and prints its wall time (the build time
/// the README quotes).
fn build_step(root: &Path, torch: &Torch, name: &str, args: &[&str]) -> Result<()> {
    let mut cmd = super::cargo();
    torch.apply(cmd.current_dir(root).args(args));
    super::step(name, cmd)
}

fn build(root: &Path, torch: &Torch) -> Result<()> {
    build_step(
        root,
        torch,
        "build: cargo build --release -p plumb --features tch",
        &["build", "--release", "-p", "plumb", "--features", "tch"],
    )?;
    println!(
        "\nrun it with LD_LIBRARY_PATH={} (see `cargo xtask tch -- env`), e.g. \
         `plumb --device tch info`",
        torch.lib.display()
    );
    Ok(())
}

/// rm-core's unit tests (its tensor code: layers, log-probs, sampling, LoRA, training steps) and
/// the golden-parity tests of MiniLM and SmolLM2 against PyTorch/transformers, on
/// `PLUMB_TEST_DEVICE=tch` — as `test-wgpu` does for wgpu. The builds are separate steps so
/// their times print on their own.
fn test(root: &Path, torch: &Torch) -> Result<()> {
    super::models::fetch_all(&root.join("models"))?;
    let core: &[&str] = &["-p", "rm-core", "--lib", "--features", "tch"];
    let parity: &[&str] = &[
        "-p",
        "plumbline",
        "--features",
        "tch",
        "--test",
        "parity_minilm",
        "--test",
        "parity_smollm2",
    ];
    let mut failed = Vec::new();
    for (name, selection) in [
        ("rm-core unit tests", core),
        ("MiniLM / SmolLM2 golden parity", parity),
    ] {
        let mut args = vec!["nextest", "run", "--no-run"];
        args.extend_from_slice(selection);
        build_step(root, torch, &format!("build: {name} (tch)"), &args)?;
        let mut run = super::cargo();
        torch
            .apply(run.current_dir(root))
            .env("PLUMB_TEST_DEVICE", "tch")
            .args([
                "nextest",
                "run",
                "--no-fail-fast",
                "--failure-output",
                "final",
            ])
            .args(selection);
        if let Err(e) = super::step(&format!("{name} on tch"), run) {
            eprintln!("{e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("failed on tch: {}", failed.join(", "));
    }
    Ok(())
}

/// The backbones bench built with `tch`; plumbline timed on flex and on LibTorch's CPU device in
/// one run (one table, one peer run) unless ARGS name `--device`. `--threads N` also becomes
/// `OMP_NUM_THREADS` so LibTorch's intra-op pool gets the same count as flex's rayon pool.
fn bench(root: &Path, torch: &Torch, args: &[String]) -> Result<()> {
    super::models::fetch_all(&root.join("models"))?;
    let mut pass: Vec<String> = args.to_vec();
    let no_peer = pass.iter().any(|a| a == "--no-peer");
    pass.retain(|a| a != "--no-peer");
    if !pass.iter().any(|a| a == "--device") {
        pass.push("--device".into());
        pass.push("flex,tch:cpu".into());
    }
    if !no_peer {
        let python = super::peer_python(root)?;
        pass.push("--peer-python".into());
        pass.push(python.display().to_string());
    }
    let bench_args = [
        "-p",
        "plumbline",
        "--bench",
        "backbones",
        "--features",
        "tch",
    ];
    let mut build = vec!["bench", "--no-run"];
    build.extend_from_slice(&bench_args);
    build_step(root, torch, "build: backbones bench (tch, release)", &build)?;
    let mut run = super::cargo();
    torch
        .apply(run.current_dir(root))
        .arg("bench")
        .args(bench_args)
        .arg("--")
        .args(&pass);
    if let Some(threads) = super::flag_value(&pass, "--threads") {
        run.env("OMP_NUM_THREADS", threads);
    }
    super::step("cargo bench --bench backbones (tch)", run)
}
