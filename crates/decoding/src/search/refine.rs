//! GLoRe-style refinement (Havrilla et al. 2024, "GLoRe: When, Where, and How to Improve LLM
//! Reasoning via Global and Local Refinements"): a step-aware verifier decides *when* a draft
//! needs refining (its aggregated score below a threshold) and *where* (the first step it
//! doubts); a local refinement rewrites the draft from that step, a global one rewrites it
//! from scratch, and the verifier reranks the draft and every refinement.
//!
//! ```text
//! d ← one full sample;  s_d ← score(d)
//! if s_d ≥ τ: answer d
//! p ← the step probabilities of d;  k ← first step with p_k < τ (none: the last step)
//! L ← c samples continued from d's steps before k      (local refinements)
//! G ← c fresh samples                                   (global refinements)
//! answer ← argmax over d, L, G of score (ties: d, then L, then G, each in order)
//! ```
//!
//! GLoRe trains separate global and local refinement models; here the policy itself rewrites
//! (a resample from the kept prefix or from the prompt), so the verifier's signals — when and
//! where — are what this strategy takes from the paper.

use crate::error::Result;
use crate::search::{Expander, Partial};

/// Which candidate won.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refinement {
    Draft,
    Local,
    Global,
}

/// What a refinement round found.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RefineOutcome {
    pub best: Partial,
    pub score: f64,
    pub chosen: Refinement,
    pub draft_score: f64,
    /// The first step the verifier doubted (`None` when the draft was kept).
    pub flagged_step: Option<usize>,
    pub local_scores: Vec<f64>,
    pub global_scores: Vec<f64>,
}

/// The algorithm of the module docs with `candidates` refinements of each kind and threshold
/// `threshold` (on the aggregated score and on each step's probability).
pub(crate) fn refine(
    ex: &mut dyn Expander,
    candidates: usize,
    threshold: f64,
) -> Result<RefineOutcome> {
    let root = Partial::default();
    let draft = ex.expand(&[&root], true)?.remove(0);
    let draft_score = ex.score(&[&draft])?[0];
    if draft_score >= threshold {
        return Ok(RefineOutcome {
            best: draft,
            score: draft_score,
            chosen: Refinement::Draft,
            draft_score,
            flagged_step: None,
            local_scores: Vec::new(),
            global_scores: Vec::new(),
        });
    }
    let probs = ex.step_probs(&[&draft])?.remove(0);
    let flagged = probs
        .iter()
        .position(|&p| f64::from(p) < threshold)
        .unwrap_or(probs.len().saturating_sub(1));
    let local_parent = ex.prefix_before_step(&draft, flagged)?;
    let mut parents: Vec<&Partial> = vec![&local_parent; candidates];
    parents.extend(std::iter::repeat_n(&root, candidates));
    let children = ex.expand(&parents, true)?;
    let refs: Vec<&Partial> = children.iter().collect();
    let scores = ex.score(&refs)?;
    let (local_scores, global_scores) =
        (scores[..candidates].to_vec(), scores[candidates..].to_vec());
    let (mut best, mut score, mut chosen) = (draft, draft_score, Refinement::Draft);
    for (i, (child, s)) in children.into_iter().zip(scores).enumerate() {
        if s > score {
            score = s;
            best = child;
            chosen = if i < candidates {
                Refinement::Local
            } else {
                Refinement::Global
            };
        }
    }
    Ok(RefineOutcome {
        best,
        score,
        chosen,
        draft_score,
        flagged_step: Some(flagged),
        local_scores,
        global_scores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Tokens are steps. The draft is [1, 2, 3] with step probabilities (0.9, 0.3, 0.8); a
    /// rewrite of row r after the prefix [1] appends 10 + r, a fresh sample from the root is
    /// [20 + r]; scores come from a table.
    struct Scripted {
        scores: HashMap<Vec<u32>, f64>,
        expands: Vec<Vec<Vec<u32>>>,
        cut_at: Option<usize>,
    }

    impl Expander for Scripted {
        fn expand(&mut self, parents: &[&Partial], last: bool) -> Result<Vec<Partial>> {
            assert!(last, "refinement samples run to the end");
            self.expands
                .push(parents.iter().map(|p| p.tokens.clone()).collect());
            Ok(parents
                .iter()
                .enumerate()
                .map(|(r, p)| {
                    let tokens = match (self.expands.len(), p.tokens.as_slice()) {
                        (1, _) => vec![1, 2, 3],
                        (_, []) => vec![20 + r as u32],
                        (_, prefix) => [prefix, &[10 + r as u32]].concat(),
                    };
                    Partial {
                        tokens,
                        finished: true,
                    }
                })
                .collect())
        }

        fn score(&mut self, solutions: &[&Partial]) -> Result<Vec<f64>> {
            Ok(solutions.iter().map(|s| self.scores[&s.tokens]).collect())
        }

        fn step_probs(&mut self, solutions: &[&Partial]) -> Result<Vec<Vec<f32>>> {
            assert_eq!(solutions[0].tokens, vec![1, 2, 3]);
            Ok(vec![vec![0.9, 0.3, 0.8]])
        }

        fn prefix_before_step(&mut self, solution: &Partial, step: usize) -> Result<Partial> {
            self.cut_at = Some(step);
            Ok(Partial {
                tokens: solution.tokens[..step].to_vec(),
                finished: false,
            })
        }
    }

    fn scripted(draft: f64, table: &[(&[u32], f64)]) -> Scripted {
        let mut scores: HashMap<Vec<u32>, f64> =
            table.iter().map(|(k, v)| (k.to_vec(), *v)).collect();
        scores.insert(vec![1, 2, 3], draft);
        Scripted {
            scores,
            expands: Vec::new(),
            cut_at: None,
        }
    }

    #[test]
    fn a_confident_draft_is_kept_without_refining() {
        let mut ex = scripted(0.7, &[]);
        let out = refine(&mut ex, 2, 0.5).unwrap();
        assert_eq!(
            (out.chosen, out.best.tokens.clone()),
            (Refinement::Draft, vec![1, 2, 3])
        );
        assert_eq!((out.flagged_step, ex.expands.len()), (None, 1));
    }

    #[test]
    fn a_doubted_draft_is_rewritten_from_its_first_doubted_step_and_from_scratch() {
        // Local rewrites [1, 10], [1, 11]; global [22], [23] (rows 2 and 3 of the batch).
        let table: &[(&[u32], f64)] = &[
            (&[1, 10], 0.4),
            (&[1, 11], 0.6),
            (&[22], 0.55),
            (&[23], 0.1),
        ];
        let mut ex = scripted(0.2, table);
        let out = refine(&mut ex, 2, 0.5).unwrap();
        assert_eq!(ex.cut_at, Some(1), "step 1 is the first below 0.5");
        assert_eq!(
            ex.expands[1],
            vec![vec![1], vec![1], vec![], vec![]],
            "one batch: the local rewrites, then the fresh samples"
        );
        assert_eq!(
            (out.chosen, out.best.tokens.clone()),
            (Refinement::Local, vec![1, 11])
        );
        assert_eq!(out.local_scores, vec![0.4, 0.6]);
        assert_eq!(out.global_scores, vec![0.55, 0.1]);
        assert_eq!(
            (out.score, out.draft_score, out.flagged_step),
            (0.6, 0.2, Some(1))
        );
        // A global sample wins when it scores highest; the draft wins ties.
        let mut ex = scripted(
            0.2,
            &[(&[1, 10], 0.4), (&[1, 11], 0.3), (&[22], 0.9), (&[23], 0.1)],
        );
        assert_eq!(refine(&mut ex, 2, 0.5).unwrap().chosen, Refinement::Global);
        let mut ex = scripted(
            0.4,
            &[(&[1, 10], 0.4), (&[1, 11], 0.3), (&[22], 0.4), (&[23], 0.1)],
        );
        assert_eq!(refine(&mut ex, 2, 0.5).unwrap().chosen, Refinement::Draft);
    }
}
