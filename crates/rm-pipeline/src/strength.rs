//! The recipe's `[preference_strength]` section applied to the training pairs before training
//! ([`rm_ensembles::preference_strength`]: Wang et al. 2024, "Secrets of RLHF Part II"): an
//! ensemble (or one reward model) scores every pair, the pairs it votes against are flipped,
//! and every pair gets the adaptive margin `s · μ̂`. Each pair's `μ̂`, `σ̂` and whether it was
//! flipped go to `<out_dir>/preference_strength.jsonl`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bench_harness::ScoreItem;
use rm_core::burn::tensor::Device;
use rm_core::models::reward::RewardModelBundle;
use rm_core::types::PreferencePair;
use rm_ensembles::{
    Ensemble, PreferenceStrengthConfig, adaptive_margins, is_ensemble_dir, preference_strength,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The file of per-pair strengths in the run folder.
pub const STRENGTH_FILE: &str = "preference_strength.jsonl";

/// What the section did to the training pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StrengthSummary {
    pub ensemble: PathBuf,
    pub members: usize,
    pub pairs: usize,
    /// Quartiles of `μ̂` (min, 25 %, median, 75 %, max), before flipping.
    pub mean_quartiles: [f32; 5],
    /// Pairs with `μ̂ < 0` (the ensemble prefers the rejected response).
    pub voted_against: usize,
    pub flipped: usize,
    /// Of the flipped pairs, those `[data] label_noise` had flipped (a flip that undoes it),
    /// when label noise was injected.
    pub flipped_injected: Option<usize>,
    /// The mean adaptive margin, when margins were set.
    pub mean_margin: Option<f64>,
    pub file: PathBuf,
}

fn quartiles(values: &[f32]) -> [f32; 5] {
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.0), at(0.25), at(0.5), at(0.75), at(1.0)]
}

fn load_scorer(dir: &Path, device: &Device) -> Result<Ensemble> {
    if is_ensemble_dir(dir) {
        return Ensemble::load(dir, device);
    }
    let bundle = RewardModelBundle::load(dir, device)
        .with_context(|| format!("{}: neither an ensemble nor a reward model", dir.display()))?;
    let normalized = bundle.spec.normalization.is_some();
    Ensemble::single(dir, bundle, normalized)
}

/// Scores `pairs` with the section's ensemble, flips and/or sets margins in place, and writes
/// the per-pair file into `out_dir`. `injected` says which pairs label noise flipped.
pub(crate) fn apply_preference_strength(
    config: &PreferenceStrengthConfig,
    pairs: &mut [PreferencePair],
    injected: &[bool],
    device: &Device,
    out_dir: &Path,
) -> Result<StrengthSummary> {
    let ensemble = load_scorer(&config.ensemble, device)
        .with_context(|| format!("preference_strength.ensemble {}", config.ensemble.display()))?;
    eprintln!(
        "preference strength: scoring {} training pairs with {} ({} member(s))",
        pairs.len(),
        config.ensemble.display(),
        ensemble.members.len()
    );
    let items: Vec<ScoreItem> = pairs
        .iter()
        .flat_map(|p| {
            [
                ScoreItem {
                    prompt: &p.prompt,
                    response: &p.chosen,
                },
                ScoreItem {
                    prompt: &p.prompt,
                    response: &p.rejected,
                },
            ]
        })
        .collect();
    let rewards = ensemble
        .member_rewards(&items, 0, config.batch_size)
        .context("scoring the training pairs for their preference strength")?;
    let strengths = preference_strength(&rewards)?;
    let flips = config
        .flip
        .as_ref()
        .map_or(vec![false; pairs.len()], |rule| rule.flips(&strengths));
    let margins = config
        .adaptive_margin
        .map(|scale| adaptive_margins(&strengths, &flips, scale));
    for (i, p) in pairs.iter_mut().enumerate() {
        if flips[i] {
            std::mem::swap(&mut p.chosen, &mut p.rejected);
            p.scores = p.scores.map(|[c, r]| [r, c]);
            p.margin = p.margin.map(|m| -m);
        }
        if let Some(m) = &margins {
            p.margin = Some(m[i]);
        }
    }

    let file = out_dir.join(STRENGTH_FILE);
    let mut text = Vec::new();
    for (i, s) in strengths.iter().enumerate() {
        let mut row = json!({ "pair": i, "mean": s.mean, "std": s.std, "flipped": flips[i] });
        if let Some(m) = &margins {
            row["margin"] = json!(m[i]);
        }
        if injected.iter().any(|&f| f) {
            row["injected_noise"] = json!(injected[i]);
        }
        writeln!(text, "{row}")?;
    }
    std::fs::create_dir_all(out_dir)?;
    rm_core::checkpoint::write_bytes_atomically(&file, &text)?;

    let means: Vec<f32> = strengths.iter().map(|s| s.mean).collect();
    let flipped = flips.iter().filter(|&&f| f).count();
    let summary = StrengthSummary {
        ensemble: config.ensemble.clone(),
        members: ensemble.members.len(),
        pairs: pairs.len(),
        mean_quartiles: quartiles(&means),
        voted_against: means.iter().filter(|&&m| m < 0.0).count(),
        flipped,
        flipped_injected: injected.iter().any(|&f| f).then(|| {
            flips
                .iter()
                .zip(injected)
                .filter(|&(&f, &n)| f && n)
                .count()
        }),
        mean_margin: margins
            .as_ref()
            .map(|m| m.iter().map(|&x| x as f64).sum::<f64>() / m.len() as f64),
        file,
    };
    eprintln!(
        "preference strength μ̂ quartiles {:?}; {} pairs voted against, {} flipped{}{}",
        summary.mean_quartiles,
        summary.voted_against,
        summary.flipped,
        summary.flipped_injected.map_or(String::new(), |n| format!(
            " ({n} of them undo injected label noise)"
        )),
        summary
            .mean_margin
            .map_or(String::new(), |m| format!("; mean adaptive margin {m:.4}"))
    );
    Ok(summary)
}

/// With adaptive margins, evaluation pairs that carry no margin get margin 0, so the
/// evaluation loss is the plain Bradley–Terry loss (the margins shape training only, and the
/// evaluation pairs are never scored by the ensemble).
pub(crate) fn zero_eval_margins(
    config: Option<&PreferenceStrengthConfig>,
    pairs: &mut [PreferencePair],
) {
    if config.is_some_and(|c| c.adaptive_margin.is_some()) {
        for p in pairs {
            p.margin.get_or_insert(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_pick_order_statistics() {
        let q = quartiles(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(q, [1.0, 2.0, 3.0, 4.0, 5.0]);
    }
}
