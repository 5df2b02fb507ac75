//! Reward-model ensembles in the pipeline: [`train_ensemble`] trains a recipe's
//! `[ensemble] members = K` reward models one after the other into `<out_dir>/member-<i>/`
//! (each a normal run folder, resumable; a finished member is skipped on `--resume`), writes
//! `ensemble.json`, and evaluates every member and every aggregation on the evaluation pairs
//! ([`evaluate_ensemble`], also behind `eval-rm` on an ensemble folder), with the robustness
//! probes of [`bench_harness::robustness`] and the contrast instructions of
//! [`bench_harness::contrast`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bench_harness::contrast::{
    ContrastConfig, ContrastConsistency, ContrastPair, ContrastScores, contrast_consistency,
    contrast_instructions,
};
use bench_harness::data::rows_from_pairs;
use bench_harness::robustness::{
    Calibration, Consistency, LengthBias, Perturbation, ScoredPair, calibration, consistency,
    length_bias, perturb,
};
use bench_harness::{ScoreItem, V1Row, V1Scored, v1_report};
use rm_core::train::RunMode;
pub use rm_ensembles::{
    Aggregation, ENSEMBLE_FILE, Ensemble, EnsembleConfig, EnsembleScorer, EnsembleSpec,
    RewardMatrix, Spread, is_ensemble_dir,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::recipe::RewardRecipe;
use crate::reports::write_report_pair;
use crate::train::{TrainRequest, train_reward_model};

/// One scorer's (a member's or an aggregation's) results on the evaluation pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScorerResult {
    pub name: String,
    /// RewardBench-v1 overall accuracy (on HH-RLHF: correct / pairs).
    pub accuracy: f64,
    /// `None` when undefined (e.g. constant rewards or every pair of one length order).
    pub length_bias: Option<LengthBias>,
    pub calibration: Option<Calibration>,
    pub consistency: Vec<Consistency>,
    /// Contrast instructions built from the evaluation prompts and their chosen responses
    /// (with the probes; `None` when no two prompts are similar enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast: Option<ContrastConsistency>,
}

/// An ensemble's evaluation: each member, then each aggregation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnsembleEvaluation {
    pub ensemble: PathBuf,
    pub pairs: usize,
    /// Whether each member's rewards were normalized by its stored statistics (else raw).
    pub normalized: Vec<bool>,
    pub members: Vec<ScorerResult>,
    pub aggregations: Vec<ScorerResult>,
}

fn opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.4}"))
}

impl EnsembleEvaluation {
    /// Every member and aggregation in one table (accuracy, length bias, ECE, consistency).
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# Ensemble {}\n\n{} pairs; rewards on each member's normalized scale ({}).\n\n",
            self.ensemble.display(),
            self.pairs,
            self.normalized
                .iter()
                .enumerate()
                .map(|(k, n)| format!("member {k}: {}", if *n { "normalized" } else { "raw" }))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let perts: Vec<&'static str> = self
            .members
            .first()
            .map(|m| {
                m.consistency
                    .iter()
                    .map(|c| c.perturbation.name())
                    .collect()
            })
            .unwrap_or_default();
        s += "| scorer | accuracy | Pearson(r, len) | Spearman(r, len) | acc. chosen shorter | acc. chosen longer | ECE |";
        for p in &perts {
            s += &format!(" mean abs Δr {p} | flips {p} |");
        }
        s += "\n|---|---|---|---|---|---|---|";
        s += &"---|---|".repeat(perts.len());
        s += "\n";
        for r in self.members.iter().chain(&self.aggregations) {
            let lb = r.length_bias.as_ref();
            s += &format!(
                "| {} | {:.4} | {} | {} | {} | {} | {} |",
                r.name,
                r.accuracy,
                opt(lb.map(|l| l.pearson)),
                opt(lb.map(|l| l.spearman)),
                opt(lb.and_then(|l| l.chosen_shorter.accuracy)),
                opt(lb.and_then(|l| l.chosen_longer.accuracy)),
                opt(r.calibration.as_ref().map(|c| c.ece)),
            );
            for c in &r.consistency {
                s += &format!(" {} | {:.4} |", opt(c.mean_abs_change), c.flip_rate);
            }
            s += "\n";
        }
        if let Some(first) = self.members.first().and_then(|m| m.contrast.as_ref()) {
            s += &format!(
                "\nContrast instructions: {} instances (pairs of similar evaluation prompts, each with its chosen response). Random scores: 0.5 per comparison, 0.25 for both; a scorer blind to the prompt: 0.5 for responses and 0 for both.\n\n",
                first.instances
            );
            s += "| scorer | response consistency | both | instruction consistency | both |\n|---|---|---|---|---|\n";
            for r in self.members.iter().chain(&self.aggregations) {
                if let Some(c) = &r.contrast {
                    s += &format!(
                        "| {} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
                        r.name, c.response, c.response_both, c.instruction, c.instruction_both
                    );
                }
            }
        }
        if let Some(lb) = self.members.first().and_then(|m| m.length_bias.as_ref()) {
            s += &format!(
                "\n{} pairs have the chosen response shorter, {} longer (characters).\n",
                lb.chosen_shorter.count, lb.chosen_longer.count
            );
        }
        s
    }

    /// `[{member, dev_accuracy}, …]` for a run's summary.
    pub fn member_accuracies_json(&self) -> serde_json::Value {
        self.members
            .iter()
            .map(|m| json!({"member": m.name, "dev_accuracy": m.accuracy}))
            .collect()
    }

    /// `[{aggregation, dev_accuracy}, …]` for a run's summary.
    pub fn aggregation_accuracies_json(&self) -> serde_json::Value {
        self.aggregations
            .iter()
            .map(|a| json!({"aggregation": a.name, "dev_accuracy": a.accuracy}))
            .collect()
    }

    /// The result named `name` (a member's path or an aggregation's label).
    pub fn get(&self, name: &str) -> Option<&ScorerResult> {
        self.members
            .iter()
            .chain(&self.aggregations)
            .find(|r| r.name == name)
    }
}

/// Interleaved (chosen, rejected) items of `rows`, each response edited by `edit`.
fn pair_items<'a>(rows: &'a [V1Row], texts: &'a [(String, String)]) -> Vec<ScoreItem<'a>> {
    rows.iter()
        .zip(texts)
        .flat_map(|(r, (c, j))| {
            [
                ScoreItem {
                    prompt: &r.prompt,
                    response: c,
                },
                ScoreItem {
                    prompt: &r.prompt,
                    response: j,
                },
            ]
        })
        .collect()
}

fn as_pairs(scores: &[f32]) -> Vec<(f32, f32)> {
    scores.chunks_exact(2).map(|s| (s[0], s[1])).collect()
}

/// An edit, which responses it changed (chosen, rejected per pair), and the members' rewards
/// of the edited responses.
type Perturbed = (Perturbation, Vec<(bool, bool)>, RewardMatrix);

/// The crossed items `(I_a, R_b)`, `(I_b, R_a)` of each contrast instance, interleaved; `R` is
/// a row's chosen response.
fn contrast_items<'a>(rows: &'a [V1Row], instances: &[ContrastPair]) -> Vec<ScoreItem<'a>> {
    instances
        .iter()
        .flat_map(|p| {
            [
                ScoreItem {
                    prompt: &rows[p.a].prompt,
                    response: &rows[p.b].chosen,
                },
                ScoreItem {
                    prompt: &rows[p.b].prompt,
                    response: &rows[p.a].chosen,
                },
            ]
        })
        .collect()
}

/// Contrast consistency of one scorer: `pair_scores` are its (chosen, rejected) rewards of the
/// rows, `crossed` its rewards of [`contrast_items`].
fn contrast_of(
    instances: &[ContrastPair],
    pair_scores: &[f32],
    crossed: &[f32],
) -> Result<Option<ContrastConsistency>> {
    if instances.is_empty() {
        return Ok(None);
    }
    let scores: Vec<ContrastScores> = instances
        .iter()
        .zip(crossed.chunks_exact(2))
        .map(|(p, x)| ContrastScores {
            aa: pair_scores[2 * p.a],
            ab: x[0],
            bb: pair_scores[2 * p.b],
            ba: x[1],
        })
        .collect();
    contrast_consistency(&scores).map(Some)
}

/// Scores `rows` with every member once (and, when `probes`, once per perturbation and once
/// for the contrast instructions' crossed items), then reports each member and each of
/// `aggregations` from the same reward matrices.
pub fn evaluate_ensemble(
    ensemble: &Ensemble,
    rows: &[V1Row],
    aggregations: &[Aggregation],
    batch_size: usize,
    probes: bool,
) -> Result<EnsembleEvaluation> {
    if rows.is_empty() {
        bail!("no evaluation pairs");
    }
    let original: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.chosen.clone(), r.rejected.clone()))
        .collect();
    let matrix = ensemble.member_rewards(&pair_items(rows, &original), 0, batch_size)?;
    let mut perturbed: Vec<Perturbed> = Vec::new();
    let mut instances = Vec::new();
    let mut crossed = None;
    if probes {
        let own: Vec<(&rm_core::types::Prompt, &str)> = rows
            .iter()
            .map(|r| (&r.prompt, r.chosen.as_str()))
            .collect();
        instances = contrast_instructions(&own, ContrastConfig::default())?;
        if !instances.is_empty() {
            crossed = Some(
                ensemble
                    .member_rewards(&contrast_items(rows, &instances), 0, batch_size)
                    .context("scoring the contrast instructions")?,
            );
        }
        for kind in Perturbation::ALL {
            let edited: Vec<(String, String)> = original
                .iter()
                .map(|(c, j)| (perturb(c, kind), perturb(j, kind)))
                .collect();
            let changed = original
                .iter()
                .zip(&edited)
                .map(|((c, j), (ec, ej))| (c != ec, j != ej))
                .collect();
            let m = ensemble
                .member_rewards(&pair_items(rows, &edited), 0, batch_size)
                .with_context(|| format!("scoring the {} perturbation", kind.name()))?;
            perturbed.push((kind, changed, m));
        }
    }
    let lengths: Vec<(usize, usize)> = rows
        .iter()
        .map(|r| (r.chosen.chars().count(), r.rejected.chars().count()))
        .collect();
    let result = |name: String,
                  scores: &[f32],
                  after: &[Vec<f32>],
                  crossed: Option<Vec<f32>>|
     -> Result<ScorerResult> {
        let scored = V1Scored::of_rows(rows, scores);
        let accuracy = v1_report(&name, &scored).overall;
        // Length bias and calibration come from these scores alone; only the consistency
        // probes (`probes`) score edited texts.
        let pairs = as_pairs(scores);
        let with_len: Vec<ScoredPair> = pairs
            .iter()
            .zip(&lengths)
            .map(|(&(c, r), &(cl, rl))| ScoredPair {
                chosen: c,
                rejected: r,
                chosen_len: cl,
                rejected_len: rl,
            })
            .collect();
        let consistency = perturbed
            .iter()
            .zip(after)
            .map(|((kind, changed, _), a)| consistency(*kind, &pairs, &as_pairs(a), changed))
            .collect::<Result<_>>()?;
        Ok(ScorerResult {
            name,
            accuracy,
            length_bias: length_bias(&with_len).ok(),
            calibration: Some(calibration(&pairs)?),
            consistency,
            contrast: match crossed {
                Some(x) => contrast_of(&instances, scores, &x)?,
                None => None,
            },
        })
    };
    let members = ensemble
        .members
        .iter()
        .enumerate()
        .map(|(k, m)| {
            let after: Vec<Vec<f32>> = perturbed
                .iter()
                .map(|(_, _, p)| p.row(k).to_vec())
                .collect();
            let crossed = crossed.as_ref().map(|c| c.row(k).to_vec());
            result(m.name.clone(), matrix.row(k), &after, crossed)
        })
        .collect::<Result<_>>()?;
    let aggregations = aggregations
        .iter()
        .map(|a| {
            let after = perturbed
                .iter()
                .map(|(_, _, p)| a.apply(p))
                .collect::<Result<Vec<_>>>()?;
            let crossed = crossed.as_ref().map(|c| a.apply(c)).transpose()?;
            result(a.label(), &a.apply(&matrix)?, &after, crossed)
        })
        .collect::<Result<_>>()?;
    Ok(EnsembleEvaluation {
        ensemble: ensemble.dir.clone(),
        pairs: rows.len(),
        normalized: ensemble.members.iter().map(|m| m.normalized).collect(),
        members,
        aggregations,
    })
}

/// One member of a trained ensemble.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberRun {
    pub dir: PathBuf,
    pub seed: u64,
    pub bootstrap: bool,
    /// Finished before this call (skipped on `--resume`).
    pub skipped: bool,
    /// Its own run's final dev accuracy (raw rewards, v1 overall), when trained now.
    pub dev_accuracy: Option<f64>,
    pub train_seconds: Option<f64>,
}

/// What [`train_ensemble`] produced.
#[derive(Clone, Debug)]
pub struct EnsembleTrainReport {
    pub out_dir: PathBuf,
    pub members: Vec<MemberRun>,
    pub evaluation: EnsembleEvaluation,
}

/// Member `i`'s recipe: the ensemble recipe without `[ensemble]`, its seed, its bootstrap seed,
/// its folder.
pub fn member_recipe(recipe: &RewardRecipe, config: &EnsembleConfig, i: usize) -> RewardRecipe {
    let mut member = recipe.clone();
    member.ensemble = None;
    let seed = config.seed(recipe.train.seed, i);
    member.train.seed = seed;
    member.data.bootstrap_seed = config.bootstrap.then_some(seed);
    member.train.out_dir = recipe
        .train
        .out_dir
        .join(EnsembleConfig::member_dir_name(i));
    member
}

/// A member folder whose run finished (its `summary.json` is written last).
fn finished(dir: &Path) -> bool {
    dir.join("summary.json").is_file()
        && dir
            .join("final")
            .join(rm_core::models::reward::SPEC_FILE)
            .is_file()
}

/// Ensemble outputs [`RunMode::Overwrite`] removes from the ensemble folder.
const ENSEMBLE_OUTPUTS: &[&str] = &[
    ENSEMBLE_FILE,
    "report.json",
    "report.md",
    "summary.json",
    "recipe.toml",
];

/// Trains the recipe's ensemble (see the module docs); `request.mode` applies to every member
/// (on resume: finished members are skipped, started ones resumed, missing ones started).
pub fn train_ensemble(
    mut recipe: RewardRecipe,
    request: &TrainRequest,
) -> Result<EnsembleTrainReport> {
    recipe.model.backbone =
        rm_core::paths::resolve_model_path(&recipe.model.backbone, &request.models_dir);
    let config = recipe
        .ensemble
        .clone()
        .context("the recipe has no [ensemble] section")?;
    recipe.validate()?;
    let out = recipe.train.out_dir.clone();
    match request.mode {
        RunMode::Fresh if out.join(ENSEMBLE_FILE).exists() => bail!(
            "{} already holds an ensemble ({ENSEMBLE_FILE}); continue it with --resume, or start over with --overwrite",
            out.display()
        ),
        RunMode::Overwrite => {
            for name in ENSEMBLE_OUTPUTS {
                let p = out.join(name);
                if p.exists() {
                    std::fs::remove_file(&p)
                        .with_context(|| format!("removing {}", p.display()))?;
                }
            }
        }
        _ => {}
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    rm_core::checkpoint::write_bytes_atomically(
        &out.join("recipe.toml"),
        toml::to_string_pretty(&recipe)?.as_bytes(),
    )?;
    let start = Instant::now();
    let mut members = Vec::new();
    for i in 0..config.members {
        let member = member_recipe(&recipe, &config, i);
        let dir = member.train.out_dir.clone();
        let seed = member.train.seed;
        let mode = match request.mode {
            RunMode::Resume { allow_changes } if finished(&dir) => {
                check_identity(&dir, &member, allow_changes)?;
                eprintln!("member {i}: {} finished, skipped", dir.display());
                members.push(MemberRun {
                    dir,
                    seed,
                    bootstrap: config.bootstrap,
                    skipped: true,
                    dev_accuracy: None,
                    train_seconds: None,
                });
                continue;
            }
            RunMode::Resume { .. } if !dir.join(rm_core::train::run_dir::RUN_FILE).exists() => {
                RunMode::Fresh
            }
            mode => mode,
        };
        eprintln!(
            "member {i} of {}: seed {seed}{} into {}",
            config.members,
            if config.bootstrap {
                ", bootstrap resample"
            } else {
                ""
            },
            dir.display()
        );
        let report = train_reward_model(
            member,
            &TrainRequest {
                mode,
                ..request.clone()
            },
        )
        .with_context(|| format!("ensemble member {i} ({})", dir.display()))?;
        members.push(MemberRun {
            dir,
            seed,
            bootstrap: config.bootstrap,
            skipped: false,
            dev_accuracy: Some(report.report.overall),
            train_seconds: Some(report.outcome.train_seconds),
        });
    }
    let spec = EnsembleSpec::new(
        (0..config.members)
            .map(|i| PathBuf::from(EnsembleConfig::member_dir_name(i)).join("final"))
            .collect(),
        config.aggregation.clone(),
    );
    spec.write(&out)?;

    eprintln!(
        "evaluating the ensemble and its members on {}",
        recipe.data.eval.describe()
    );
    let ensemble = Ensemble::load(&out, &request.device)?;
    let rows = rows_from_pairs(
        recipe.data.eval.load(&request.data_dir)?,
        &recipe.data.eval.subset(),
    );
    let evaluation = evaluate_ensemble(
        &ensemble,
        &rows,
        &Aggregation::report_set(&config.aggregation),
        recipe.eval.batch_size,
        true,
    )?;
    write_report_pair(
        &out.join("report.json"),
        &serde_json::to_string_pretty(&evaluation)?,
        &evaluation.to_markdown(),
    )?;
    let summary = json!({
        "recipe": recipe,
        "members": members,
        "member_dev_accuracy": evaluation.member_accuracies_json(),
        "aggregation_dev_accuracy": evaluation.aggregation_accuracies_json(),
        "aggregation": config.aggregation,
        "seconds": start.elapsed().as_secs_f64(),
    });
    crate::reports::write_summary(&out, &summary)?;
    Ok(EnsembleTrainReport {
        out_dir: out,
        members,
        evaluation,
    })
}

/// A finished member's stored recipe must be this member's (unless `allow_changes`).
fn check_identity(dir: &Path, member: &RewardRecipe, allow_changes: bool) -> Result<()> {
    let run_path = dir.join(rm_core::train::run_dir::RUN_FILE);
    let stored: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&run_path)
            .with_context(|| format!("reading {}", run_path.display()))?,
    )
    .with_context(|| format!("{}: not a run file", run_path.display()))?;
    let changes = rm_core::train::run_dir::identity_changes(
        &stored["identity"],
        &member.identity()?,
        &[rm_core::train::RESUMABLE_TRAIN_FIELDS, &["eval"]].concat(),
    );
    if !changes.is_empty() && !allow_changes {
        bail!(
            "--resume: the finished member {} was trained with another recipe ({}); resume with the ensemble's recipe, or pass --allow-changes",
            dir.display(),
            changes.join("; ")
        );
    }
    Ok(())
}
