//! Best-of-N candidate sets: the row format of `eval-prm --format bon`, and a builder from
//! PRM800K's rated alternatives.
//!
//! **The builder's rule.** For a problem, the candidates are its preferred path and every
//! variant made by swapping ONE rated non-preferred alternative in at step `i` (the other steps
//! stay those of the path). A candidate is correct iff none of its steps is rated −1 (neutral
//! 0 and unrated steps count as acceptable, as Lightman et al. 2023 count a solution without
//! negative steps as correct). One swap at a time keeps every step of a candidate rated by
//! the labellers in the context it was rated in, except that the steps after a swap were rated
//! after the path's step, not the alternative — close, since PRM800K's alternatives at a step
//! mostly continue the same line of work. The final answer is the text after `# Answer` in the
//! last step, when it has one (PRM800K's convention), so swaps at the last step give majority
//! voting different answers. Problems with fewer than 2 candidates are left out; more than `n`
//! are cut to a seeded uniform sample of `n`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rm_core::types::{StepLabel, StepLabelledSolution};
use serde::{Deserialize, Serialize};

/// One candidate solution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BonCandidate {
    pub steps: Vec<String>,
    pub correct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// A problem with its candidates (a row of `--format bon`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BonProblem {
    pub prompt: String,
    pub candidates: Vec<BonCandidate>,
}

/// The final answer of PRM800K-style steps: the text after `# Answer` in the last step.
pub fn answer_of(steps: &[String]) -> Option<String> {
    let last = steps.last()?;
    let rest = last.trim_start().strip_prefix("# Answer")?;
    let a = rest.trim();
    (!a.is_empty()).then(|| a.to_string())
}

/// The best-of-N candidates of one PRM800K solution (see the module docs for the rule).
pub fn bon_from_alternatives(
    solution: &StepLabelledSolution,
    n: usize,
    seed: u64,
) -> Option<BonProblem> {
    let texts: Vec<String> = solution.steps.iter().map(|s| s.text.clone()).collect();
    let labels: Vec<Option<StepLabel>> = solution.steps.iter().map(|s| s.label).collect();
    let candidate = |steps: Vec<String>, labels: &[Option<StepLabel>]| BonCandidate {
        correct: !labels.contains(&Some(StepLabel::Bad)),
        answer: answer_of(&steps),
        steps,
    };
    let mut out = vec![candidate(texts.clone(), &labels)];
    for (i, alts) in solution.alternatives.iter().enumerate().take(texts.len()) {
        for alt in alts.iter().filter(|a| !a.preferred && a.label.is_some()) {
            let mut steps = texts.clone();
            steps[i] = alt.text.clone();
            let mut l = labels.clone();
            l[i] = alt.label;
            let c = candidate(steps, &l);
            if !out.iter().any(|o| o.steps == c.steps) {
                out.push(c);
            }
        }
    }
    if out.len() < 2 {
        return None;
    }
    if out.len() > n.max(2) {
        let mut h = DefaultHasher::new();
        solution.prompt.hash(&mut h);
        out.shuffle(&mut StdRng::seed_from_u64(seed ^ h.finish()));
        out.truncate(n.max(2));
    }
    Some(BonProblem {
        prompt: solution.prompt.clone(),
        candidates: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::types::{LabelledStep, StepAlternative};

    #[test]
    fn swapped_alternatives_make_candidates_labelled_by_their_worst_step() {
        use StepLabel::*;
        let alt = |text: &str, label, preferred| StepAlternative {
            text: text.into(),
            label: Some(label),
            preferred,
            human: false,
        };
        let s = StepLabelledSolution {
            prompt: "1+1?".into(),
            answer: Some("2".into()),
            steps: vec![
                LabelledStep {
                    text: "1+1=2".into(),
                    label: Some(Good),
                    soft: None,
                },
                LabelledStep {
                    text: "# Answer\n\n2".into(),
                    label: Some(Good),
                    soft: None,
                },
            ],
            alternatives: vec![
                vec![alt("1+1=2", Good, true), alt("1+1 is two", Neutral, false)],
                vec![
                    alt("# Answer\n\n2", Good, true),
                    alt("# Answer\n\n3", Bad, false),
                ],
            ],
        };
        let b = bon_from_alternatives(&s, 8, 1).unwrap();
        assert_eq!(b.candidates.len(), 3);
        let by_answer: Vec<(bool, Option<&str>)> = b
            .candidates
            .iter()
            .map(|c| (c.correct, c.answer.as_deref()))
            .collect();
        assert_eq!(
            by_answer,
            vec![(true, Some("2")), (true, Some("2")), (false, Some("3"))]
        );
        assert_eq!(b.candidates[1].steps[0], "1+1 is two");
        assert_eq!(bon_from_alternatives(&s, 2, 1).unwrap().candidates.len(), 2);
    }
}
