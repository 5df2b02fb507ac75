//! PRM-guided beam search and diverse verifier tree search (DVTS), one routine: a forest of
//! `groups` beams, each keeping `keep` partial solutions and growing `keep · width` children
//! per step.

use crate::error::{DecodeError, Result};
use crate::search::{Expander, Partial};

/// What a grouped beam search found.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BeamOutcome {
    /// The best finished solution and its score.
    pub best: Partial,
    pub score: f64,
    /// The group (DVTS subtree) it grew in.
    pub group: usize,
    /// Steps taken (expansion rounds, each one batch and one PRM call).
    pub iterations: usize,
    /// Every finished solution's score, in the order they finished.
    pub finished_scores: Vec<f64>,
    /// The index of `best` in `finished_scores`.
    pub chosen: usize,
}

/// Grouped beam search, the common core of PRM-guided beam search and DVTS.
///
/// ```text
/// active[g] ← [root] for g < G;  F ← []
/// for t in 0 .. max_steps:                       (t = max_steps − 1: steps run to the end)
///     for each g with active[g] ≠ []:
///         rows_g ← K·M parents, round-robin over active[g]    (the root: K·M copies)
///     children ← one step of every row (one batch);  s ← PRM scores (one call)
///     finished children → F (with their group and score)
///     active[g] ← the K best unfinished children of g by s (ties: the earlier row)
///     stop when every active[g] is empty
/// answer ← argmax_{c ∈ F} s(c)  (ties: the earlier finished)
/// ```
///
/// Round-robin filling keeps the compute at K·M rows per group and step when fewer than K
/// beams are left (search-and-learn duplicates the surviving beams the same way). Finished
/// children leave the beam without taking one of its K places.
pub(crate) fn grouped_beam_search(
    ex: &mut dyn Expander,
    groups: usize,
    keep: usize,
    width: usize,
    max_steps: usize,
) -> Result<BeamOutcome> {
    let rows_per_group = keep * width;
    let mut active: Vec<Vec<Partial>> = vec![vec![Partial::default()]; groups];
    let mut finished: Vec<(usize, Partial, f64)> = Vec::new();
    let mut iterations = 0;
    for t in 0..max_steps {
        let last = t + 1 == max_steps;
        let mut parents: Vec<&Partial> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        for (g, beams) in active.iter().enumerate() {
            if beams.is_empty() {
                continue;
            }
            for j in 0..rows_per_group {
                parents.push(&beams[j % beams.len()]);
                owner.push(g);
            }
        }
        if parents.is_empty() {
            break;
        }
        iterations += 1;
        let children = ex.expand(&parents, last)?;
        let refs: Vec<&Partial> = children.iter().collect();
        let scores = ex.score(&refs)?;
        let mut next: Vec<Vec<(Partial, f64)>> = vec![Vec::new(); groups];
        for ((child, score), g) in children.into_iter().zip(scores).zip(owner) {
            if child.finished {
                finished.push((g, child, score));
            } else {
                next[g].push((child, score));
            }
        }
        for (g, mut cands) in next.into_iter().enumerate() {
            // A stable sort keeps the earlier row first among equal scores.
            cands.sort_by(|a, b| b.1.total_cmp(&a.1));
            cands.truncate(keep);
            active[g] = cands.into_iter().map(|(c, _)| c).collect();
        }
    }
    let chosen = finished
        .iter()
        .enumerate()
        .fold(None::<usize>, |best, (i, f)| match best {
            Some(b) if finished[b].2 >= f.2 => Some(b),
            _ => Some(i),
        })
        .ok_or_else(|| DecodeError::config("steps.max_steps", "no solution finished"))?;
    let finished_scores = finished.iter().map(|f| f.2).collect();
    let (group, best, score) = finished.swap_remove(chosen);
    Ok(BeamOutcome {
        best,
        score,
        group,
        iterations,
        finished_scores,
        chosen,
    })
}
