//! Overoptimization of online RL (`plumb overopt-rl`): the policy-gradient counterpart of the
//! best-of-n study ([`crate::run_overopt`]) — gold and proxy reward of RL runs against √KL,
//! as in Gao et al. 2023 ("Scaling Laws for Reward Model Overoptimization") and Coste et al.
//! 2024 ("Reward Model Ensembles Help Mitigate Overoptimization") for RL.
//!
//! The runs are ordinary `plumb train-rl` runs whose `[[reward]]` set holds the proxy the policy
//! optimizes (a reward model, or an ensemble folder with its aggregation: mean, min,
//! mean − λ·std) and a gold reward model with `weight = 0.0`: logged at every evaluation, never
//! trained on. Each run's evaluations (the initial one from `summary.json`, then every `eval`
//! record of `metrics.jsonl`) give one point each: `KL = kl_ref`, the mean per-sequence
//! `KL(π ‖ π_ref)` of the evaluation samples, against the held-out mean of the two components.
//! No sampling or scoring happens here; the report reads what the runs logged.

use std::path::{Path, PathBuf};

use rm_core::plot::{LinePanel, Series, plot_lines};
use serde::Serialize;

use crate::error::{DecodeError, Result};

/// A `plumb overopt-rl` report request.
pub struct RlOveroptRequest {
    /// `plumb train-rl` output folders (each with `metrics.jsonl`).
    pub runs: Vec<PathBuf>,
    /// The `[[reward]]` component name of the proxy (the trained-on reward).
    pub proxy: String,
    /// The component name of the gold reward (logged with weight 0).
    pub gold: String,
    /// Gets `overopt_rl.{json,md,png}`.
    pub out_dir: PathBuf,
}

/// One evaluation of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RlOveroptPoint {
    /// The optimizer step of the evaluation (0: before training).
    pub step: u64,
    /// `kl_ref` as logged (a k1 estimate; slightly negative values can occur).
    pub kl: f64,
    /// `√max(KL, 0)`.
    pub sqrt_kl: f64,
    pub proxy_reward: f64,
    pub gold_reward: f64,
}

/// One run's curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RlOveroptCurve {
    /// The run folder's name.
    pub label: String,
    pub run: PathBuf,
    pub points: Vec<RlOveroptPoint>,
}

/// What the report holds (also written as `overopt_rl.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RlOveroptReport {
    pub proxy: String,
    pub gold: String,
    pub curves: Vec<RlOveroptCurve>,
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub png: PathBuf,
}

fn file_error(path: &Path, reason: impl Into<String>) -> DecodeError {
    DecodeError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The point of one evaluation's metrics (`what` names it in errors).
fn point(
    metrics: &serde_json::Value,
    step: u64,
    proxy: &str,
    gold: &str,
    what: &str,
    path: &Path,
) -> Result<RlOveroptPoint> {
    let value = |key: &str| -> Result<f64> {
        metrics[key].as_f64().ok_or_else(|| {
            let mut keys: Vec<&str> = metrics
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            keys.retain(|k| k.starts_with("reward/") || *k == "kl_ref");
            file_error(
                path,
                format!(
                    "{what} has no number {key:?} (it logs {}); the run needs a [[reward]] named {proxy:?} and one named {gold:?}, and evaluations",
                    keys.join(", ")
                ),
            )
        })
    };
    let kl = value("kl_ref")?;
    Ok(RlOveroptPoint {
        step,
        kl,
        sqrt_kl: kl.max(0.0).sqrt(),
        proxy_reward: value(&format!("reward/{proxy}"))?,
        gold_reward: value(&format!("reward/{gold}"))?,
    })
}

/// One run's curve: the initial evaluation of `summary.json` (when the run finished) and every
/// `eval` record of `metrics.jsonl`, by step.
pub fn run_curve(run: &Path, proxy: &str, gold: &str) -> Result<RlOveroptCurve> {
    let metrics = run.join("metrics.jsonl");
    if !metrics.is_file() {
        return Err(file_error(
            run,
            "no metrics.jsonl: not a plumb train-rl run folder",
        ));
    }
    let mut points = Vec::new();
    let summary = run.join("summary.json");
    if summary.is_file() {
        let text = std::fs::read_to_string(&summary)
            .map_err(|e| file_error(&summary, format!("reading: {e}")))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| file_error(&summary, format!("not JSON: {e}")))?;
        points.push(point(
            &json["initial_eval"],
            0,
            proxy,
            gold,
            "the initial evaluation",
            &summary,
        )?);
    }
    let records = rm_core::train::metrics::read_records(&metrics, "eval")
        .map_err(|e| file_error(&metrics, format!("{e:#}")))?;
    for record in &records {
        let step = record["step"].as_u64().unwrap_or(0);
        points.push(point(
            record,
            step,
            proxy,
            gold,
            &format!("the evaluation at step {step}"),
            &metrics,
        )?);
    }
    if points.is_empty() {
        return Err(file_error(
            &metrics,
            "no evaluation logged (set train.eval_every, or let the run finish)",
        ));
    }
    points.sort_by_key(|p| p.step);
    points.dedup_by_key(|p| p.step);
    let label = run
        .file_name()
        .map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into());
    Ok(RlOveroptCurve {
        label,
        run: run.to_path_buf(),
        points,
    })
}

/// Reads the runs, writes `overopt_rl.{json,md,png}` into `out_dir`, returns the report.
pub fn run_overopt_rl(request: &RlOveroptRequest) -> Result<RlOveroptReport> {
    if request.runs.is_empty() {
        return Err(DecodeError::config("runs", "give at least one run folder"));
    }
    if request.proxy == request.gold {
        return Err(DecodeError::config(
            "gold",
            format!("the proxy and the gold are both {:?}", request.proxy),
        ));
    }
    let curves = request
        .runs
        .iter()
        .map(|r| run_curve(r, &request.proxy, &request.gold))
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(&request.out_dir)
        .map_err(|e| file_error(&request.out_dir, format!("creating: {e}")))?;
    let report = RlOveroptReport {
        proxy: request.proxy.clone(),
        gold: request.gold.clone(),
        curves,
        json: request.out_dir.join("overopt_rl.json"),
        markdown: request.out_dir.join("overopt_rl.md"),
        png: request.out_dir.join("overopt_rl.png"),
    };
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| file_error(&report.json, format!("{e}")))?;
    rm_core::checkpoint::write_bytes_atomically(&report.json, json.as_bytes())
        .map_err(|e| file_error(&report.json, format!("{e:#}")))?;
    rm_core::checkpoint::write_bytes_atomically(&report.markdown, markdown_rl(&report).as_bytes())
        .map_err(|e| file_error(&report.markdown, format!("{e:#}")))?;
    plot_rl(&report)?;
    Ok(report)
}

/// The report as Markdown: one row per (run, evaluation).
pub fn markdown_rl(report: &RlOveroptReport) -> String {
    let mut s = format!(
        "# RL overoptimization\n\nproxy: `{}` (trained on), gold: `{}` (logged, weight 0); \
         KL = kl_ref, the mean per-sequence KL(π ‖ π_ref) of the evaluation samples.\n\n\
         | run | step | KL | √KL | proxy reward | gold reward |\n|---|---|---|---|---|---|\n",
        report.proxy, report.gold
    );
    for c in &report.curves {
        for p in &c.points {
            s += &format!(
                "| {} | {} | {:.4} | {:.3} | {:.4} | {:.4} |\n",
                c.label, p.step, p.kl, p.sqrt_kl, p.proxy_reward, p.gold_reward
            );
        }
    }
    s
}

/// Two panels, gold and proxy reward against √KL, one line per run.
fn plot_rl(report: &RlOveroptReport) -> Result<()> {
    let panel = |title: String, value: fn(&RlOveroptPoint) -> f64| LinePanel {
        title,
        x_label: "√KL,  KL = KL(π ‖ π_ref) per sequence".into(),
        series: report
            .curves
            .iter()
            .map(|c| Series {
                name: c.label.clone(),
                points: c.points.iter().map(|p| (p.sqrt_kl, value(p))).collect(),
            })
            .collect(),
    };
    let panels = [
        panel(format!("gold reward ({})", report.gold), |p| p.gold_reward),
        panel(format!("proxy reward ({})", report.proxy), |p| {
            p.proxy_reward
        }),
    ];
    plot_lines(&panels, "online RL against a proxy", &report.png, 1200, 560)
        .map_err(|e| file_error(&report.png, format!("{e:#}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("plumb-overopt-rl-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A run folder as `train-rl` leaves it: the initial evaluation in summary.json, two
    /// evaluation records (and records of other kinds) in metrics.jsonl.
    fn write_run(dir: &Path, gold_at_end: f64) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("summary.json"),
            r#"{"initial_eval": {"kl_ref": 0.0, "reward/proxy": 0.1, "reward/gold": 0.2}}"#,
        )
        .unwrap();
        let lines = [
            r#"{"kind": "collect", "step": 0, "reward": 0.1}"#.to_string(),
            r#"{"kind": "eval", "step": 4, "kl_ref": 0.25, "reward/proxy": 0.5, "reward/gold": 0.4}"#.into(),
            r#"{"kind": "train", "step": 5, "pg_loss": 0.1}"#.into(),
            format!(
                r#"{{"kind": "eval", "step": 8, "kl_ref": 1.0, "reward/proxy": 0.9, "reward/gold": {gold_at_end}}}"#
            ),
        ];
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n")).unwrap();
    }

    #[test]
    fn each_run_gives_its_evaluations_against_root_kl() {
        let root = temp("read");
        write_run(&root.join("single"), 0.1);
        write_run(&root.join("ensemble-min"), 0.45);
        let report = run_overopt_rl(&RlOveroptRequest {
            runs: vec![root.join("single"), root.join("ensemble-min")],
            proxy: "proxy".into(),
            gold: "gold".into(),
            out_dir: root.join("out"),
        })
        .unwrap();
        assert_eq!(report.curves.len(), 2);
        let single = &report.curves[0];
        assert_eq!(single.label, "single");
        let steps: Vec<u64> = single.points.iter().map(|p| p.step).collect();
        assert_eq!(steps, [0, 4, 8]);
        assert_eq!(single.points[1].sqrt_kl, 0.5);
        assert_eq!(single.points[2].gold_reward, 0.1);
        assert_eq!(report.curves[1].points[2].gold_reward, 0.45);
        assert!(report.png.is_file() && report.json.is_file());
        let md = std::fs::read_to_string(&report.markdown).unwrap();
        assert!(
            md.contains("| ensemble-min | 8 | 1.0000 | 1.000 | 0.9000 | 0.4500 |"),
            "{md}"
        );
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn missing_components_and_folders_are_errors_naming_them() {
        let root = temp("errors");
        write_run(&root.join("run"), 0.1);
        let request = |proxy: &str, gold: &str, run: &str| RlOveroptRequest {
            runs: vec![root.join(run)],
            proxy: proxy.into(),
            gold: gold.into(),
            out_dir: root.join("out"),
        };
        let err = run_overopt_rl(&request("proxy", "judge", "run")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("\"reward/judge\"") && text.contains("reward/gold"),
            "{text}"
        );
        let err = run_overopt_rl(&request("proxy", "gold", "nowhere")).unwrap_err();
        assert!(err.to_string().contains("metrics.jsonl"), "{err}");
        assert!(run_overopt_rl(&request("gold", "gold", "run")).is_err());
        std::fs::remove_dir_all(&root).ok();
    }
}
