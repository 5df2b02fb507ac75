//! The best-of-n overoptimization study (`plumb overopt`): how much a proxy reward model's
//! best-of-n choice really gains under a gold reward model, as n (and so the KL distance from
//! the policy) grows — the best-of-n curves of Gao et al. 2023 ("Scaling Laws for Reward Model
//! Overoptimization") and Coste et al. 2024 ("Reward Model Ensembles Help Mitigate
//! Overoptimization", ICLR), with single reward models, ensembles (mean, min = WCO,
//! mean − λ·std = UWO) and DMoERM folders (`rm_multiobj::dmoerm`, raw scale) as proxies or gold.
//!
//! One sampling pass: `m` completions per prompt (sampled here, or read from a
//! `plumb generate --input … --out` file). Every completion is scored once by the gold and by
//! every proxy; then for each n of the curve and each proxy, over prompts:
//! - proxy reward `Ê_n[r_proxy]` and gold reward `Ê_n[r_gold]` of the proxy's best-of-n
//!   choice, by the unbiased estimator over all n-subsets of the m samples
//!   ([`expected_best_of_n`]: `Σ_j C(j − 1, n − 1)/C(m, n) · r_(j)`, ranks by the proxy);
//! - against `√KL` with `KL = log n − (n − 1)/n` ([`kl_bound`], Beirami et al. 2024; Yang et
//!   al. 2024, "Asymptotics of Language Model Alignment").
//!
//! Rewards are on each model's stored normalized scale `(r − μ)/σ` when it has one (members of
//! an ensemble always are, see [`rm_ensembles::ensemble`]), so curves start near 0 at n = 1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bench_harness::ScoreItem;
use rm_core::burn::tensor::Device;
use rm_core::models::reward::RewardModelBundle;
use rm_core::plot::{LinePanel, Series, plot_lines};
use rm_core::sampling::SamplingConfig;
use rm_core::types::Prompt;
use rm_ensembles::{Aggregation, Ensemble, is_ensemble_dir};
use serde::Serialize;

use crate::bon::{expected_best_of_n, kl_bound};
use crate::error::{DecodeError, Result};
use crate::run::{PromptSource, read_prompt_rows};
use crate::sample::{SampleOutcome, SampleRequest, sample_prompts};

/// Where the study's completions come from.
pub enum StudySamples {
    /// Sample `samples` completions of each of the first `prompts` distinct prompts of `input`
    /// from `policy` (written to `<out_dir>/samples.jsonl`).
    Policy {
        policy: PathBuf,
        input: PromptSource,
        prompts: usize,
        samples: usize,
        sampling: SamplingConfig,
        /// Rows per generation batch.
        batch_size: usize,
    },
    /// A `plumb generate --input … --out FILE` file: one `{"prompt", "completion"}` line per
    /// sample; every prompt must have the same number of samples.
    File(PathBuf),
}

/// A `plumb overopt` run.
pub struct OveroptRequest {
    pub samples: StudySamples,
    /// Reward-model or ensemble folders; each single model is one curve, each ensemble one
    /// curve per aggregation in `aggregations`.
    pub proxies: Vec<PathBuf>,
    /// The aggregations of the ensemble proxies (empty: each ensemble's own).
    pub aggregations: Vec<Aggregation>,
    /// The gold reward model or ensemble folder.
    pub gold: PathBuf,
    /// The gold ensemble's aggregation (`None`: its own).
    pub gold_aggregation: Option<Aggregation>,
    /// The n of the curve, e.g. 1, 2, 4, 8, 16; each at most the samples per prompt.
    pub ns: Vec<usize>,
    pub data_dir: PathBuf,
    /// Gets `overopt.json`, `overopt.md`, `overopt.png`, `scores.jsonl` (and `samples.jsonl`
    /// when sampling here).
    pub out_dir: PathBuf,
    /// Texts per reward-model forward pass.
    pub batch_size: usize,
    pub device: Device,
}

/// One point of a curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OveroptPoint {
    pub n: usize,
    /// `log n − (n − 1)/n`.
    pub kl: f64,
    pub sqrt_kl: f64,
    /// Mean over prompts of `Ê_n[r_proxy]` of the proxy's choice, and its standard error.
    pub proxy_reward: f64,
    pub proxy_se: f64,
    /// Mean over prompts of `Ê_n[r_gold]` of the proxy's choice, and its standard error.
    pub gold_reward: f64,
    pub gold_se: f64,
}

/// A reward model or ensemble as the study used it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RewardInfo {
    pub label: String,
    pub dir: PathBuf,
    /// The aggregation of an ensemble; `None` for a single model.
    pub aggregation: Option<String>,
    pub members: usize,
    /// Whether every member's rewards were normalized by its stored statistics (else raw).
    pub normalized: bool,
}

/// One proxy's curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxyCurve {
    pub proxy: RewardInfo,
    /// Pearson correlation of the proxy's and the gold's rewards over all samples.
    pub gold_correlation: f64,
    pub points: Vec<OveroptPoint>,
}

/// What a study produced (also written as `overopt.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OveroptReport {
    pub prompts: usize,
    pub samples_per_prompt: usize,
    pub estimator: String,
    pub gold: RewardInfo,
    pub curves: Vec<ProxyCurve>,
    /// The sampling pass, when sampled here.
    pub sampling: Option<SampleOutcome>,
    pub samples_file: PathBuf,
    pub scoring_seconds: f64,
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub png: PathBuf,
    pub scores: PathBuf,
}

const ESTIMATOR: &str = "unbiased best-of-n over all n-subsets of the m samples: \
E_n = sum_j C(j-1, n-1)/C(m, n) * r_(j), samples ranked by ascending proxy reward \
(ties: the earlier sample ranks higher)";

/// The curves of every proxy from one table of rewards: `proxy[p][i]`, `gold[p][i]` are
/// prompt p's sample i rewards. See the module docs for the estimator.
pub fn overopt_curve(
    proxy: &[Vec<f32>],
    gold: &[Vec<f32>],
    ns: &[usize],
) -> Result<Vec<OveroptPoint>> {
    if proxy.is_empty() || proxy.len() != gold.len() {
        return Err(DecodeError::config(
            "rewards",
            format!(
                "{} prompts of proxy rewards and {} of gold rewards (need the same, at least one)",
                proxy.len(),
                gold.len()
            ),
        ));
    }
    ns.iter()
        .map(|&n| {
            let kl = kl_bound(n)?;
            let mut proxy_values = Vec::with_capacity(proxy.len());
            let mut gold_values = Vec::with_capacity(proxy.len());
            for (p, (s, g)) in proxy.iter().zip(gold).enumerate() {
                let at = |e: DecodeError| DecodeError::config("n", format!("prompt {p}: {e}"));
                proxy_values.push(expected_best_of_n(s, s, n).map_err(at)?);
                gold_values.push(expected_best_of_n(s, g, n).map_err(at)?);
            }
            let (proxy_reward, proxy_se) = mean_and_se(&proxy_values);
            let (gold_reward, gold_se) = mean_and_se(&gold_values);
            Ok(OveroptPoint {
                n,
                kl,
                sqrt_kl: kl.max(0.0).sqrt(),
                proxy_reward,
                proxy_se,
                gold_reward,
                gold_se,
            })
        })
        .collect()
}

/// Mean and standard error `s/√P` (sample standard deviation; 0 for one value).
fn mean_and_se(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Pearson correlation of two equally long samples (0 when either is constant).
fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&x| f64::from(x)).sum::<f64>() / n,
        b.iter().map(|&x| f64::from(x)).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Prompts and their samples, every prompt with the same number of samples.
struct SampleTable {
    prompts: Vec<Prompt>,
    completions: Vec<Vec<String>>,
}

/// Reads a `plumb generate --input` file: rows grouped by prompt (first-appearance order).
fn read_samples(path: &Path) -> Result<SampleTable> {
    let mut table = SampleTable {
        prompts: Vec::new(),
        completions: Vec::new(),
    };
    for (line, prompt, row) in read_prompt_rows(path)? {
        let completion = row
            .get("completion")
            .and_then(|c| c.as_str())
            .ok_or_else(|| DecodeError::BadRow {
                path: path.to_path_buf(),
                line,
                reason: "no text field `completion`".into(),
            })?;
        match table.prompts.iter().position(|p| *p == prompt) {
            Some(p) => table.completions[p].push(completion.to_string()),
            None => {
                table.prompts.push(prompt);
                table.completions.push(vec![completion.to_string()]);
            }
        }
    }
    let Some(first) = table.completions.first() else {
        return Err(DecodeError::EmptyInput(format!(
            "{} holds no sample",
            path.display()
        )));
    };
    let m = first.len();
    if let Some(p) = table.completions.iter().position(|c| c.len() != m) {
        return Err(DecodeError::config(
            "samples",
            format!(
                "{}: prompt {p} has {} samples, prompt 0 has {m}: every prompt needs the same number",
                path.display(),
                table.completions[p].len()
            ),
        ));
    }
    Ok(table)
}

/// A reward-model or ensemble folder loaded as an ensemble (a single model is a one-member
/// ensemble, normalized when it stores a normalization).
fn load_reward(dir: &Path, device: &Device) -> Result<Ensemble> {
    if is_ensemble_dir(dir) {
        return Ensemble::load(dir, device).map_err(DecodeError::model);
    }
    let bundle = RewardModelBundle::load(dir, device).map_err(DecodeError::model)?;
    let normalized = bundle.spec.normalization.is_some();
    Ensemble::single(dir, bundle, normalized).map_err(DecodeError::model)
}

/// A short name for a folder: its last component, or `parent/last` for `final`, `best`, `last`.
fn short_name(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name(dir) {
        Some(last) if ["final", "best", "last"].contains(&last.as_str()) => {
            match dir.parent().and_then(name) {
                Some(parent) => format!("{parent}/{last}"),
                None => last,
            }
        }
        Some(last) => last,
        None => dir.display().to_string(),
    }
}

/// Every aggregation's rewards of `items` by the reward model, ensemble or DMoERM at `dir`:
/// one `(info, rewards)` per aggregation (a single model or a DMoERM: one, its reward; a
/// DMoERM's members are its experts, its reward the routed task's aggregator's).
fn score_with(
    dir: &Path,
    aggregations: &[Aggregation],
    items: &[ScoreItem<'_>],
    batch_size: usize,
    device: &Device,
) -> Result<Vec<(RewardInfo, Vec<f32>)>> {
    if rm_multiobj::dmoerm::is_dmoerm_dir(dir) {
        let model =
            rm_multiobj::dmoerm::DmoermModel::load(dir, device).map_err(DecodeError::model)?;
        let pairs: Vec<(&Prompt, &str)> = items.iter().map(|i| (i.prompt, i.response)).collect();
        let rewards = model
            .score_items(&pairs, batch_size)
            .map_err(DecodeError::model)?
            .into_iter()
            .map(|s| s.reward as f32)
            .collect();
        let info = RewardInfo {
            label: short_name(dir),
            dir: dir.to_path_buf(),
            aggregation: None,
            members: model.experts.iter().map(Vec::len).sum(),
            normalized: false,
        };
        return Ok(vec![(info, rewards)]);
    }
    let ensemble = load_reward(dir, device)?;
    let single = !is_ensemble_dir(dir);
    let matrix = ensemble
        .member_rewards(items, 0, batch_size)
        .map_err(DecodeError::model)?;
    let aggregations: Vec<Aggregation> = if single {
        vec![Aggregation::Mean]
    } else if aggregations.is_empty() {
        vec![ensemble.aggregation.clone()]
    } else {
        aggregations.to_vec()
    };
    aggregations
        .iter()
        .map(|a| {
            let rewards = a
                .apply(&matrix)
                .map_err(|e| DecodeError::config("aggregation", format!("{e:#}")))?;
            let info = RewardInfo {
                label: if single {
                    short_name(dir)
                } else {
                    format!("{} [{}]", short_name(dir), a.label())
                },
                dir: dir.to_path_buf(),
                aggregation: (!single).then(|| a.label()),
                members: ensemble.members.len(),
                normalized: ensemble.members.iter().all(|m| m.normalized),
            };
            Ok((info, rewards))
        })
        .collect()
}

/// Checks everything that can be checked before sampling or loading a model.
fn check_request(request: &OveroptRequest) -> Result<()> {
    if request.ns.is_empty() || request.ns.contains(&0) {
        return Err(DecodeError::config(
            "n",
            format!(
                "the curve's n must be ≥ 1 and at least one, got {:?}",
                request.ns
            ),
        ));
    }
    if request.proxies.is_empty() {
        return Err(DecodeError::config(
            "proxy",
            "give at least one proxy reward model",
        ));
    }
    if !request.gold.is_dir() {
        return Err(DecodeError::File {
            path: request.gold.clone(),
            reason: "the gold reward model folder does not exist".into(),
        });
    }
    for proxy in &request.proxies {
        if !proxy.is_dir() {
            return Err(DecodeError::File {
                path: proxy.clone(),
                reason: "the proxy reward model folder does not exist".into(),
            });
        }
    }
    if !request.aggregations.is_empty() && !request.proxies.iter().any(|p| is_ensemble_dir(p)) {
        return Err(DecodeError::config(
            "aggregation",
            "aggregations given but no proxy is an ensemble folder (one with ensemble.json)",
        ));
    }
    if request.batch_size == 0 {
        return Err(DecodeError::config("batch_size", "must be at least 1"));
    }
    let n_max = *request.ns.iter().max().expect("non-empty");
    match &request.samples {
        StudySamples::Policy { samples, .. } if n_max > *samples => Err(DecodeError::config(
            "n",
            format!(
                "best-of-{n_max} needs at least {n_max} samples per prompt, --samples is {samples}"
            ),
        )),
        StudySamples::Policy { policy, .. } if !policy.exists() => Err(DecodeError::File {
            path: policy.clone(),
            reason: "no such policy folder".into(),
        }),
        _ => Ok(()),
    }
}

/// Runs the study: samples (or reads the samples), scores every sample with the gold and
/// every proxy, computes the curves and writes `overopt.json`, `overopt.md`, `overopt.png`
/// and `scores.jsonl` into `out_dir`. `progress` gets one line per stage.
pub fn run_overopt(
    request: &OveroptRequest,
    progress: &mut dyn FnMut(&str),
) -> Result<OveroptReport> {
    check_request(request)?;
    let out = &request.out_dir;
    std::fs::create_dir_all(out).map_err(|e| DecodeError::File {
        path: out.clone(),
        reason: e.to_string(),
    })?;
    let (samples_file, sampling) = match &request.samples {
        StudySamples::File(path) => (path.clone(), None),
        StudySamples::Policy {
            policy,
            input,
            prompts,
            samples,
            sampling,
            batch_size,
        } => {
            progress(&format!(
                "sampling {samples} completions of {prompts} prompts from {}",
                policy.display()
            ));
            let outcome = sample_prompts(&SampleRequest {
                model: policy.clone(),
                input: input.clone(),
                prompts: *prompts,
                samples: *samples,
                data_dir: request.data_dir.clone(),
                sampling: sampling.clone(),
                batch_size: *batch_size,
                out: out.join("samples.jsonl"),
                device: request.device.clone(),
                head_weights: None,
            })?;
            progress(&format!(
                "sampled {} completions, {} tokens in {:.0} s ({:.1} tokens/s)",
                outcome.samples, outcome.tokens, outcome.seconds, outcome.tokens_per_second
            ));
            (outcome.out.clone(), Some(outcome))
        }
    };
    let table = read_samples(&samples_file)?;
    let m = table.completions[0].len();
    let n_max = *request.ns.iter().max().expect("checked non-empty");
    if n_max > m {
        return Err(DecodeError::config(
            "n",
            format!(
                "best-of-{n_max} needs at least {n_max} samples per prompt, {} has {m}",
                samples_file.display()
            ),
        ));
    }
    let items: Vec<ScoreItem<'_>> = table
        .prompts
        .iter()
        .zip(&table.completions)
        .flat_map(|(prompt, cs)| {
            cs.iter().map(move |c| ScoreItem {
                prompt,
                response: c.as_str(),
            })
        })
        .collect();
    let started = Instant::now();
    let by_prompt =
        |flat: &[f32]| -> Vec<Vec<f32>> { flat.chunks(m).map(<[f32]>::to_vec).collect() };
    progress(&format!(
        "scoring {} samples with the gold {}",
        items.len(),
        request.gold.display()
    ));
    let gold_aggregations: Vec<Aggregation> = request.gold_aggregation.iter().cloned().collect();
    let (gold_info, gold_flat) = score_with(
        &request.gold,
        &gold_aggregations,
        &items,
        request.batch_size,
        &request.device,
    )?
    .remove(0);
    let gold = by_prompt(&gold_flat);
    let mut proxies: Vec<(RewardInfo, Vec<f32>)> = Vec::new();
    for dir in &request.proxies {
        progress(&format!(
            "scoring {} samples with the proxy {}",
            items.len(),
            dir.display()
        ));
        proxies.extend(score_with(
            dir,
            &request.aggregations,
            &items,
            request.batch_size,
            &request.device,
        )?);
    }
    let scoring_seconds = started.elapsed().as_secs_f64();
    let curves = proxies
        .iter()
        .map(|(info, flat)| {
            Ok(ProxyCurve {
                proxy: info.clone(),
                gold_correlation: pearson(flat, &gold_flat),
                points: overopt_curve(&by_prompt(flat), &gold, &request.ns)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let report = OveroptReport {
        prompts: table.prompts.len(),
        samples_per_prompt: m,
        estimator: ESTIMATOR.into(),
        gold: gold_info,
        curves,
        sampling,
        samples_file,
        scoring_seconds,
        json: out.join("overopt.json"),
        markdown: out.join("overopt.md"),
        png: out.join("overopt.png"),
        scores: out.join("scores.jsonl"),
    };
    write_scores(&report.scores, &table, &report.gold, &gold_flat, &proxies)?;
    let write = |path: &Path, bytes: &[u8]| {
        rm_core::checkpoint::write_bytes_atomically(path, bytes).map_err(|e| DecodeError::File {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        })
    };
    let json =
        serde_json::to_string_pretty(&report).map_err(|e| DecodeError::Model(e.to_string()))?;
    write(&report.json, json.as_bytes())?;
    write(&report.markdown, markdown(&report).as_bytes())?;
    plot(&report)?;
    Ok(report)
}

/// One JSON line per sample: its prompt index, sample index, completion and every reward.
fn write_scores(
    path: &Path,
    table: &SampleTable,
    gold: &RewardInfo,
    gold_flat: &[f32],
    proxies: &[(RewardInfo, Vec<f32>)],
) -> Result<()> {
    let io = |e: std::io::Error| DecodeError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let m = table.completions[0].len();
    for (p, completions) in table.completions.iter().enumerate() {
        for (i, completion) in completions.iter().enumerate() {
            let k = p * m + i;
            let proxy: serde_json::Map<String, serde_json::Value> = proxies
                .iter()
                .map(|(info, r)| (info.label.clone(), serde_json::json!(r[k])))
                .collect();
            let line = serde_json::json!({
                "prompt_index": p,
                "sample": i,
                "completion": completion,
                "gold": { "label": gold.label, "reward": gold_flat[k] },
                "proxy": proxy,
            });
            writeln!(file, "{line}").map_err(io)?;
        }
    }
    file.flush().map_err(io)
}

/// The report as Markdown: one table row per (proxy, n).
pub fn markdown(report: &OveroptReport) -> String {
    let mut s = format!(
        "# Best-of-n overoptimization\n\n{} prompts × {} samples; gold: `{}` ({} member{}, {}).\n\n\
         Estimator: {}. KL = log n − (n − 1)/n (a bound on KL(π_bon ‖ π)).\n\n\
         | proxy | corr. with gold | n | KL | √KL | proxy reward | gold reward |\n\
         |---|---|---|---|---|---|---|\n",
        report.prompts,
        report.samples_per_prompt,
        report.gold.label,
        report.gold.members,
        if report.gold.members == 1 { "" } else { "s" },
        if report.gold.normalized {
            "normalized"
        } else {
            "raw"
        },
        report.estimator,
    );
    for curve in &report.curves {
        for p in &curve.points {
            s += &format!(
                "| {} | {:.3} | {} | {:.3} | {:.3} | {:.3} ± {:.3} | {:.3} ± {:.3} |\n",
                curve.proxy.label,
                curve.gold_correlation,
                p.n,
                p.kl,
                p.sqrt_kl,
                p.proxy_reward,
                p.proxy_se,
                p.gold_reward,
                p.gold_se
            );
        }
    }
    s
}

/// Two panels, gold and proxy reward against √KL, one line per proxy.
fn plot(report: &OveroptReport) -> Result<()> {
    let panel = |title: String, value: fn(&OveroptPoint) -> f64| LinePanel {
        title,
        x_label: "√KL,  KL = log n − (n − 1)/n".into(),
        series: report
            .curves
            .iter()
            .map(|c| Series {
                name: c.proxy.label.clone(),
                points: c.points.iter().map(|p| (p.sqrt_kl, value(p))).collect(),
            })
            .collect(),
    };
    let panels = [
        panel(
            format!("gold reward ({}) of the proxy's choice", report.gold.label),
            |p| p.gold_reward,
        ),
        panel("proxy reward of its choice".into(), |p| p.proxy_reward),
    ];
    let title = format!(
        "best-of-n: {} prompts × {} samples",
        report.prompts, report.samples_per_prompt
    );
    plot_lines(&panels, &title, &report.png, 1200, 560).map_err(|e| DecodeError::File {
        path: report.png.clone(),
        reason: format!("{e:#}"),
    })?;
    Ok(())
}
