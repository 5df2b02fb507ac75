//! The [`Scorer`] trait and the evaluation loops that feed it rows in batches.

use anyhow::{Context, bail, ensure};
use rm_core::types::Prompt;

use crate::data::{V1Row, V2Row};
use crate::v1::{V1Report, V1Scored, v1_report};
use crate::v2::{V2Report, V2Scored, v2_report};

/// One (prompt, response) to score. The prompt is kept as plumbline's [`Prompt`] (text or a
/// conversation) so that each scorer renders it with its own chat template
/// (e.g. `rm_core::chat::ChatTemplate::render_prompt`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreItem<'a> {
    pub prompt: &'a Prompt,
    pub response: &'a str,
}

/// Anything that gives a scalar score to (prompt, response): a reward model, a DPO policy's
/// implicit reward ([`crate::implicit`]), a heuristic.
pub trait Scorer {
    /// Name written into reports.
    fn name(&self) -> String;
    /// One score per item, in order; higher is better.
    fn score(&mut self, items: &[ScoreItem<'_>]) -> anyhow::Result<Vec<f32>>;
}

/// Progress of an evaluation, reported after each batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Items (responses) scored so far.
    pub done: usize,
    pub total: usize,
}

fn score_all(
    items: &[ScoreItem<'_>],
    scorer: &mut dyn Scorer,
    batch_size: usize,
    progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<Vec<f32>> {
    ensure!(batch_size > 0, "batch size must be at least 1");
    let mut scores = Vec::with_capacity(items.len());
    for batch in items.chunks(batch_size) {
        let start = scores.len();
        let out = scorer
            .score(batch)
            .with_context(|| format!("scoring items {start}..{}", start + batch.len()))?;
        if out.len() != batch.len() {
            bail!(
                "scorer {} returned {} scores for a batch of {}",
                scorer.name(),
                out.len(),
                batch.len()
            );
        }
        if let Some(i) = out.iter().position(|s| s.is_nan()) {
            bail!(
                "scorer {} returned NaN for item {}",
                scorer.name(),
                start + i
            );
        }
        scores.extend(out);
        progress(Progress {
            done: scores.len(),
            total: items.len(),
        });
    }
    Ok(scores)
}

/// Scores every row's chosen and rejected response (2 items a row, in batches of `batch_size`
/// items) and builds the v1 report.
pub fn evaluate_v1(
    rows: &[V1Row],
    scorer: &mut dyn Scorer,
    batch_size: usize,
    progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<V1Report> {
    let items: Vec<ScoreItem<'_>> = rows
        .iter()
        .flat_map(|r| {
            [
                ScoreItem {
                    prompt: &r.prompt,
                    response: &r.chosen,
                },
                ScoreItem {
                    prompt: &r.prompt,
                    response: &r.rejected,
                },
            ]
        })
        .collect();
    let scores = score_all(&items, scorer, batch_size, progress)?;
    let scored = V1Scored::of_rows(rows, &scores);
    Ok(v1_report(&scorer.name(), &scored))
}

/// Scores every completion of every row (chosen then rejected, in batches of `batch_size`
/// items) and builds the v2 report.
pub fn evaluate_v2(
    rows: &[V2Row],
    scorer: &mut dyn Scorer,
    batch_size: usize,
    progress: &mut dyn FnMut(Progress),
) -> anyhow::Result<V2Report> {
    let items: Vec<ScoreItem<'_>> = rows
        .iter()
        .flat_map(|r| {
            r.chosen.iter().chain(&r.rejected).map(|c| ScoreItem {
                prompt: &r.prompt,
                response: c,
            })
        })
        .collect();
    let scores = score_all(&items, scorer, batch_size, progress)?;
    let mut rest = &scores[..];
    let scored: Vec<V2Scored> = rows
        .iter()
        .map(|r| {
            let (c, tail) = rest.split_at(r.chosen.len());
            let (j, tail) = tail.split_at(r.rejected.len());
            rest = tail;
            V2Scored {
                id: r.id.clone(),
                subset: r.subset.clone(),
                chosen: c.to_vec(),
                rejected: j.to_vec(),
            }
        })
        .collect();
    Ok(v2_report(&scorer.name(), &scored)?)
}
