//! `plumb orchestrate`: trains the Preference Orchestrator
//! ([`rm_multiobj::orchestrator`], Liu et al. 2025) for a set of `[[reward]]` components, and
//! [`OrchestratorWeighting`], which lets `train-rl` weigh those components per prompt.
//!
//! The pipeline: prompts with a preferred response (`references[0]`: HH-RLHF's chosen response,
//! or a JSONL `reference`) → every component scores the preferred response → each objective is
//! standardized over the training prompts → targets `softmax(z / τ)` → the adapter is trained on
//! the prompts' frozen backbone features → `orchestrator.json`, `report.json`, `report.md`,
//! `curve.jsonl` / `curve.png` in `out_dir`.
//!
//! A prompt whose preferred response a component cannot score (a [`RewardError`]) is left out,
//! and counted in the report; a prompt with no reference is an error naming it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rm_core::burn::tensor::Device;
use rm_core::checkpoint::write_bytes_atomically;
use rm_core::types::Prompt;
use rm_multiobj::features::{Embedder, EmbedderConfig};
use rm_multiobj::orchestrator::{
    FORMAT_VERSION, Orchestrator, OrchestratorConfig, OrchestratorSpec, OrchestratorTrace,
    objective_norms, target_weights, train_orchestrator,
};
use serde::{Deserialize, Serialize};

use super::prompts::{PromptSource, RlPrompt};
use super::rewards::{PromptWeighting, RewardComponentConfig, RewardSample, RewardSet};

/// The prompts (`[data]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestrateData {
    pub train: PromptSource,
    /// Held out: picks the adapter's step and measures it.
    pub dev: PromptSource,
}

/// `plumb orchestrate`'s recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestrateRecipe {
    pub data: OrchestrateData,
    /// The backbone whose pooled prompt features the adapter reads.
    pub embedder: EmbedderConfig,
    /// The objectives: `train-rl`'s `[[reward]]` tables (their weights are not used here).
    #[serde(rename = "reward")]
    pub rewards: Vec<RewardComponentConfig>,
    #[serde(default)]
    pub orchestrator: OrchestratorConfig,
    /// Texts per scoring / embedding call.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    pub out_dir: PathBuf,
}

fn default_batch() -> usize {
    16
}

impl OrchestrateRecipe {
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        rm_core::recipe::load(path, overrides)
    }

    pub fn validate(&self) -> Result<()> {
        self.orchestrator.validate()?;
        if self.rewards.len() < 2 {
            bail!(
                "{} [[reward]] table(s): the orchestrator weighs two or more objectives",
                self.rewards.len()
            );
        }
        if self.batch_size == 0 {
            bail!("batch_size must be ≥ 1");
        }
        Ok(())
    }
}

/// Where and how the run happens.
pub struct OrchestrateRequest {
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    pub device: Device,
    /// One line per stage and scoring chunk.
    pub progress: bool,
}

/// The run's report (`report.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrchestrateReport {
    pub out_dir: PathBuf,
    pub objectives: Vec<String>,
    pub train_prompts: usize,
    pub dev_prompts: usize,
    /// Prompts left out because a component failed on their preferred response.
    pub skipped: Vec<String>,
    pub temperature: f64,
    /// The mean target of each split: how often each objective is the preferred response's
    /// strong side.
    pub mean_train_target: Vec<f64>,
    pub mean_dev_target: Vec<f64>,
    /// The adapter's mean weights on the dev prompts, and their spread (std over prompts).
    pub mean_dev_weights: Vec<f64>,
    pub std_dev_weights: Vec<f64>,
    pub trace: OrchestratorTrace,
    pub seconds: f64,
}

/// The preferred responses' raw rewards, one row per kept prompt, with the kept indices.
fn score_preferred(
    rewards: &RewardSet,
    prompts: &[RlPrompt],
    split: &str,
    batch_size: usize,
    progress: bool,
    skipped: &mut Vec<String>,
) -> Result<(Vec<usize>, Vec<Vec<f64>>)> {
    if let Some(i) = prompts.iter().position(|p| p.references.is_empty()) {
        bail!(
            "{split} prompt {i} has no preferred response (a `reference`): the orchestrator's targets come from one"
        );
    }
    let mut kept = Vec::new();
    let mut rows = Vec::new();
    for (c, chunk) in prompts.chunks(batch_size).enumerate() {
        let samples: Vec<RewardSample<'_>> = chunk
            .iter()
            .map(|p| RewardSample {
                prompt: &p.prompt,
                completion: &p.references[0],
                references: &p.references,
                truncated: false,
            })
            .collect();
        for (j, s) in rewards.score(&samples).into_iter().enumerate() {
            let i = c * batch_size + j;
            match s.components.iter().copied().collect::<Option<Vec<f32>>>() {
                Some(v) => {
                    kept.push(i);
                    rows.push(v.into_iter().map(f64::from).collect());
                }
                None => skipped.push(format!("{split} prompt {i}: {}", s.errors.join("; "))),
            }
        }
        if progress {
            eprintln!(
                "scored {}/{} {split} preferred responses",
                ((c + 1) * batch_size).min(prompts.len()),
                prompts.len()
            );
        }
    }
    if kept.is_empty() {
        bail!("no {split} prompt's preferred response could be scored by every component");
    }
    Ok((kept, rows))
}

fn rows(x: &[Vec<f32>]) -> Vec<&[f32]> {
    x.iter().map(Vec::as_slice).collect()
}

fn mean_rows(rows: &[Vec<f64>]) -> Vec<f64> {
    rm_multiobj::orchestrator::best_fixed_weights(rows)
}

fn std_rows(rows: &[Vec<f64>], mean: &[f64]) -> Vec<f64> {
    let n = rows.len().max(1) as f64;
    mean.iter()
        .enumerate()
        .map(|(j, m)| (rows.iter().map(|r| (r[j] - m).powi(2)).sum::<f64>() / n).sqrt())
        .collect()
}

/// Runs the pipeline of the module docs.
pub fn orchestrate(
    mut recipe: OrchestrateRecipe,
    request: &OrchestrateRequest,
) -> Result<OrchestrateReport> {
    recipe.validate()?;
    let start = std::time::Instant::now();
    recipe.embedder = recipe.embedder.resolved(&request.models_dir);
    let embedder_abs = recipe.embedder.absolute()?;
    let train = recipe.data.train.load(&request.data_dir, None)?;
    let dev = recipe.data.dev.load(&request.data_dir, None)?;
    let rewards = RewardSet::build(&recipe.rewards, &request.device)?;
    let objectives = rewards.component_names();
    let mut skipped = Vec::new();
    let (train_kept, train_r) = score_preferred(
        &rewards,
        &train,
        "training",
        recipe.batch_size,
        request.progress,
        &mut skipped,
    )?;
    let (dev_kept, dev_r) = score_preferred(
        &rewards,
        &dev,
        "dev",
        recipe.batch_size,
        request.progress,
        &mut skipped,
    )?;
    drop(rewards);
    let norms = objective_norms(&train_r, &objectives)
        .context("standardizing the training prompts' rewards")?;
    let tau = recipe.orchestrator.temperature;
    let targets = |rows: &[Vec<f64>]| -> Vec<Vec<f64>> {
        rows.iter()
            .map(|r| target_weights(&norms, r, tau))
            .collect()
    };
    let (train_t, dev_t) = (targets(&train_r), targets(&dev_r));
    if request.progress {
        eprintln!(
            "embedding {} + {} prompts",
            train_kept.len(),
            dev_kept.len()
        );
    }
    let embedder = Embedder::load(&recipe.embedder, &request.device)?;
    let embed = |prompts: &[RlPrompt], kept: &[usize]| -> Result<Vec<Vec<f32>>> {
        let texts: Vec<String> = kept
            .iter()
            .map(|&i| embedder.prompt_text(&prompts[i].prompt))
            .collect::<Result<_>>()?;
        embedder.embed(&texts, recipe.batch_size)
    };
    let train_x = embed(&train, &train_kept)?;
    let dev_x = embed(&dev, &dev_kept)?;
    if request.progress {
        eprintln!(
            "training the adapter ({} steps, full batch)",
            recipe.orchestrator.steps
        );
    }
    let (network, trace) = train_orchestrator(
        &recipe.orchestrator,
        &rows(&train_x),
        &train_t,
        &rows(&dev_x),
        &dev_t,
        &request.device,
    )?;
    let spec = OrchestratorSpec {
        format_version: FORMAT_VERSION,
        embedder: embedder_abs,
        objectives: objectives.clone(),
        normalization: norms,
        temperature: tau,
        network,
    };
    let out = &recipe.out_dir;
    spec.save(out)?;
    let dev_w: Vec<Vec<f64>> = dev_x.iter().map(|x| spec.weights(x)).collect();
    let mean_dev_weights = mean_rows(&dev_w);
    let report = OrchestrateReport {
        out_dir: out.clone(),
        objectives,
        train_prompts: train_kept.len(),
        dev_prompts: dev_kept.len(),
        skipped,
        temperature: tau,
        mean_train_target: mean_rows(&train_t),
        mean_dev_target: mean_rows(&dev_t),
        std_dev_weights: std_rows(&dev_w, &mean_dev_weights),
        mean_dev_weights,
        trace,
        seconds: start.elapsed().as_secs_f64(),
    };
    write_outputs(&report, out)?;
    Ok(report)
}

fn write_outputs(report: &OrchestrateReport, out: &Path) -> Result<()> {
    write_bytes_atomically(
        &out.join("report.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    write_bytes_atomically(&out.join("report.md"), markdown(report).as_bytes())?;
    let mut curve = String::new();
    for p in &report.trace.curve {
        writeln!(
            curve,
            "{}\n{}",
            serde_json::json!({"kind": "train", "step": p.step, "kl": p.train_kl}),
            serde_json::json!({"kind": "eval", "step": p.step, "kl": p.dev_kl}),
        )?;
    }
    let jsonl = out.join("curve.jsonl");
    write_bytes_atomically(&jsonl, curve.as_bytes())?;
    if let Err(e) = rm_core::plot::plot_metrics(&jsonl, &out.join("curve.png")) {
        eprintln!("warning: no curve.png ({e:#})");
    }
    Ok(())
}

/// The report as Markdown.
pub fn markdown(r: &OrchestrateReport) -> String {
    let t = &r.trace;
    let fmt = |v: &[f64]| -> String {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut s = String::new();
    let _ = writeln!(s, "# Preference Orchestrator\n");
    let _ = writeln!(
        s,
        "Objectives: {} (τ = {}); {} training and {} dev prompts ({} left out).\n",
        r.objectives.join(", "),
        r.temperature,
        r.train_prompts,
        r.dev_prompts,
        r.skipped.len()
    );
    let _ = writeln!(s, "| weights | train KL(w* ‖ w) | dev KL(w* ‖ w) |");
    let _ = writeln!(s, "|---|---|---|");
    let _ = writeln!(
        s,
        "| best fixed ({}) | {:.4} | {:.4} |",
        fmt(&t.fixed_weights),
        t.fixed_train_kl,
        t.fixed_dev_kl
    );
    let _ = writeln!(
        s,
        "| orchestrator (step {}) | {:.4} | {:.4} |",
        t.best_step, t.train_kl, t.dev_kl
    );
    let _ = writeln!(
        s,
        "\nDev mean target {}; the adapter's dev weights: mean {}, std over prompts {}.",
        fmt(&r.mean_dev_target),
        fmt(&r.mean_dev_weights),
        fmt(&r.std_dev_weights)
    );
    s
}

/// A trained orchestrator as `train-rl`'s per-prompt component weights
/// (`[algorithm] orchestrator = "DIR"`).
pub struct OrchestratorWeighting {
    orchestrator: Orchestrator,
    batch_size: usize,
}

impl OrchestratorWeighting {
    /// Loads the folder `dir` (resolved like a model path).
    pub fn load(dir: &Path, models_dir: &Path, device: &Device) -> Result<Self> {
        let dir = rm_core::paths::resolve_model_path(dir, models_dir);
        let orchestrator = Orchestrator::load(&dir, device)
            .with_context(|| format!("algorithm.orchestrator {}", dir.display()))?;
        Ok(Self {
            orchestrator,
            batch_size: 16,
        })
    }
}

impl PromptWeighting for OrchestratorWeighting {
    fn objectives(&self) -> &[String] {
        &self.orchestrator.spec.objectives
    }

    fn weights(&self, prompts: &[&Prompt]) -> Result<Vec<Vec<f64>>> {
        self.orchestrator.weights(prompts, self.batch_size)
    }

    fn standardize(&self, objective: usize, value: f64) -> f64 {
        self.orchestrator.spec.normalization[objective].apply(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::device::test_device;
    use serde_json::json;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("plumb-pro-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Prompts of two kinds: "w2 …" prompts' preferred responses contain `w7`, "w4 …" prompts'
    /// contain `w9`; both kinds share their other words. Objectives: has-w7 and has-w9. (The
    /// tiny tokenizer splits on whitespace only, so a prompt's last word, glued to the chat
    /// template's `<|im_end|>`, is unknown to it: the kind goes first.)
    fn write_prompts(path: &Path, n: usize, offset: usize) {
        let rows: Vec<String> = (0..n)
            .map(|i| {
                let (first, reference) = if i % 2 == 0 {
                    ("w2", "w7 w1")
                } else {
                    ("w4", "w9 w1")
                };
                json!({"prompt": format!("{first} w{} w3", 10 + (i / 2 + offset) % 12), "reference": reference})
                    .to_string()
            })
            .collect();
        std::fs::write(path, rows.join("\n")).unwrap();
    }

    fn recipe(root: &Path) -> OrchestrateRecipe {
        let text = format!(
            r#"
batch_size = 8
out_dir = "{out}"

[data]
train = {{ source = "jsonl", path = "{train}" }}
dev = {{ source = "jsonl", path = "{dev}" }}

[embedder]
kind = "backbone"
path = "{model}"
max_len = 64

[[reward]]
name = "w7"
kind = "keywords"
required = ["w7"]

[[reward]]
name = "w9"
kind = "keywords"
required = ["w9"]

[orchestrator]
hidden = 16
lr = 0.02
steps = 200
eval_every = 20
"#,
            train = root.join("train.jsonl").display(),
            dev = root.join("dev.jsonl").display(),
            model = root.join("model").display(),
            out = root.join("pro").display(),
        );
        rm_core::recipe::parse(&text, "test", &[]).unwrap()
    }

    fn request(root: &Path) -> OrchestrateRequest {
        OrchestrateRequest {
            data_dir: root.to_path_buf(),
            models_dir: root.to_path_buf(),
            device: test_device(),
            progress: false,
        }
    }

    /// The adapter learns which objective each kind of prompt's preferred response stands out
    /// on: dev KL far under the best fixed weights' (ln 2 − H(σ(2)) ≈ 0.33 for the targets
    /// (0.88, 0.12) and (0.12, 0.88)); the folder loads and weighs prompts; a reward set
    /// weighted by it gives `Σ v(x)·z(r)`.
    #[test]
    fn the_orchestrator_learns_prompt_specific_weights_from_preferred_responses() {
        let root = temp("learn");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_prompts(&root.join("train.jsonl"), 24, 0);
        write_prompts(&root.join("dev.jsonl"), 8, 7);
        let report = orchestrate(recipe(&root), &request(&root)).unwrap();
        assert_eq!((report.train_prompts, report.dev_prompts), (24, 8));
        assert!(report.skipped.is_empty());
        let t = &report.trace;
        let sig2 = 1.0 / (1.0 + (-2f64).exp());
        let fixed = 2f64.ln() + sig2 * sig2.ln() + (1.0 - sig2) * (1.0 - sig2).ln();
        assert!((t.fixed_dev_kl - fixed).abs() < 1e-6, "{t:?}");
        assert!(t.dev_kl < 0.1 * fixed, "{t:?}");
        for f in [
            "orchestrator.json",
            "report.json",
            "report.md",
            "curve.jsonl",
        ] {
            assert!(root.join("pro").join(f).is_file(), "{f}");
        }
        let w = OrchestratorWeighting::load(&root.join("pro"), &root, &test_device()).unwrap();
        let (a, b) = (
            Prompt::Text("w2 w11 w3".into()),
            Prompt::Text("w4 w11 w3".into()),
        );
        let v = w.weights(&[&a, &b]).unwrap();
        assert!(v[0][0] > 0.7 && v[1][1] > 0.7, "{v:?}");
        // In a reward set: one completion with w7 → Σ v·z with z = (1 − ½)/½ = 1 and −1.
        let components = recipe(&root).rewards;
        let mut set = RewardSet::build(&components, &test_device()).unwrap();
        set.set_prompt_weighting(Box::new(w)).unwrap();
        let out = set.score(&[RewardSample {
            prompt: &a,
            completion: "w7",
            references: &[],
            truncated: false,
        }]);
        let expected = (v[0][0] - v[0][1]) as f32;
        assert!((out[0].total.unwrap() - expected).abs() < 1e-5, "{out:?}");
        std::fs::remove_dir_all(&root).ok();
    }

    /// GRPO against two conflicting objectives — A: say `w7`, not `w9`; B: the reverse — weighed
    /// per prompt by an orchestrator trained on preferred responses ("w2 …" prompts prefer
    /// `w7`, "w4 …" prompts `w9`). No fixed weighting can reward both behaviours: a policy that
    /// always says one word scores ≈ 0 on the weighted total over both kinds. The tiny policy
    /// learns to answer each kind with its word within 60 collections: the held-out total rises
    /// from ≈ 0 to ≥ 0.5 (the best is ≈ 0.76 = v_A − v_B for the learnt weights).
    #[test]
    fn train_rl_learns_prompt_specific_behaviour_from_the_orchestrators_weights() {
        let _seeded = rm_core::device::seeded_test_lock();
        let root = temp("rl");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_prompts(&root.join("train.jsonl"), 24, 0);
        write_prompts(&root.join("dev.jsonl"), 8, 7);
        let conflicting = r#"
[[reward]]
name = "a"
kind = "keywords"
required = ["w7"]
forbidden = ["w9"]
whole_word = true

[[reward]]
name = "b"
kind = "keywords"
required = ["w9"]
forbidden = ["w7"]
whole_word = true
"#;
        let mut pro = recipe(&root);
        pro.rewards = rm_core::recipe::parse::<RewardTables>(conflicting, "test", &[])
            .unwrap()
            .reward;
        orchestrate(pro, &request(&root)).unwrap();
        let text = format!(
            r#"
[model]
policy = "{model}"
max_len = 16
template = "plain"
lora = {{ rank = 4, alpha = 8.0, target_modules = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"] }}

[data]
train = {{ source = "jsonl", path = "{train}" }}
eval = {{ source = "jsonl", path = "{dev}" }}

[rollout]
iterations = 60
prompts_per_iteration = 8
group_size = 8
generation_batch = 32
sampling = {{ max_new_tokens = 3, temperature = 1.0 }}

[algorithm]
estimator = {{ name = "grpo" }}
policy_loss = {{ name = "vanilla", clip_ratio_low = 0.2, clip_ratio_high = 0.28 }}
orchestrator = "{pro}"
{conflicting}
[train]
batch_size = 32
micro_batch_size = 16
lr = 0.05
weight_decay = 0.0
warmup_ratio = 0.0
schedule = "constant"
seed = 3
eval_every = 120
save_every = 120
out_dir = "{out}"
"#,
            model = root.join("model").display(),
            train = root.join("train.jsonl").display(),
            dev = root.join("dev.jsonl").display(),
            pro = root.join("pro").display(),
            out = root.join("run").display(),
        );
        let rl: super::super::RlRecipe = rm_core::recipe::parse(&text, "test", &[]).unwrap();
        let train_request = rm_pipeline::TrainRequest {
            data_dir: root.clone(),
            models_dir: root.clone(),
            device: test_device(),
            mode: rm_core::train::RunMode::Fresh,
            progress: false,
        };
        let report = super::super::train_rl_policy(rl.clone(), &train_request).unwrap();
        let (before, after) = (
            report.initial_eval.metrics["reward"],
            report.final_eval.metrics["reward"],
        );
        eprintln!("orchestrated total {before} → {after}");
        assert!(before.abs() < 0.3, "initial total {before}");
        assert!(
            after >= 0.5,
            "held-out orchestrated total {before} → {after}"
        );
        // Components the orchestrator does not weigh are refused, naming them.
        let mut bad = rl;
        bad.rewards[1].name = Some("c".into());
        bad.train.out_dir = root.join("run-bad");
        let err = format!(
            "{:#}",
            super::super::train_rl_policy(bad, &train_request).unwrap_err()
        );
        assert!(err.contains("[\"c\"]") && err.contains("[\"b\"]"), "{err}");
        std::fs::remove_dir_all(&root).ok();
    }

    #[derive(Deserialize)]
    struct RewardTables {
        reward: Vec<RewardComponentConfig>,
    }

    #[test]
    fn the_shipped_recipe_parses_and_validates() {
        let r: OrchestrateRecipe = rm_core::recipe::parse(
            include_str!("../../../../recipes/orchestrator-minilm-hh.toml"),
            "orchestrator-minilm-hh",
            &[],
        )
        .unwrap();
        r.validate().unwrap();
        let names: Vec<_> = r.rewards.iter().map(|c| c.name.clone().unwrap()).collect();
        assert_eq!(names, ["harmless", "longer"]);
        assert_eq!(r.orchestrator.temperature, 1.0);
    }

    #[test]
    fn bad_recipes_and_inputs_are_errors_naming_the_problem() {
        let root = temp("bad");
        rm_core::fixtures::write_tiny_llama(&root.join("model"), 9).unwrap();
        write_prompts(&root.join("train.jsonl"), 6, 0);
        write_prompts(&root.join("dev.jsonl"), 4, 0);
        let mut r = recipe(&root);
        r.rewards.truncate(1);
        let err = orchestrate(r, &request(&root)).unwrap_err().to_string();
        assert!(err.contains("two or more objectives"), "{err}");
        // An objective every preferred response scores the same on cannot be standardized.
        let mut r = recipe(&root);
        r.rewards[1] =
            toml::from_str("name = \"w1\"\nkind = \"keywords\"\nrequired = [\"w1\"]").unwrap();
        let err = format!("{:#}", orchestrate(r, &request(&root)).unwrap_err());
        assert!(err.contains("objective \"w1\" has the same value"), "{err}");
        // Prompts without a preferred response.
        std::fs::write(root.join("dev.jsonl"), "{\"prompt\": \"w1 w2\"}\n").unwrap();
        let err = orchestrate(recipe(&root), &request(&root))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dev prompt 0 has no preferred response"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).ok();
    }
}
