//! Contrast instructions: does a reward model follow the instruction, or only the response?
//! (Shen et al. 2023, "The Trickle-down Impact of Reward (In-)consistency on RLHF", §3.)
//!
//! An instance is two lexically similar instructions `I_a`, `I_b` with their own ground-truth
//! responses `R_a`, `R_b`. A consistent reward model `r` ranks each matched combination above
//! the crossed ones:
//!
//! - **response consistency**: for a fixed instruction, its own response wins,
//!   `r(I_a, R_a) > r(I_a, R_b)` and `r(I_b, R_b) > r(I_b, R_a)`;
//! - **instruction consistency**: for a fixed response, its own instruction wins,
//!   `r(I_a, R_a) > r(I_b, R_a)` and `r(I_b, R_b) > r(I_a, R_b)`.
//!
//! Each is reported over the `2·N` comparisons (a tie counts 1/2) and per instance with both
//! comparisons right. Random scores get 0.5 and 0.25. A scorer that reads only the response
//! gets exactly one of each instance's two response comparisons right (0.5, and 0 for both):
//! "both" is the figure that shows whether the instruction moves the reward at all.
//!
//! The paper retrieves its pairs from existing datasets by similarity; here
//! [`contrast_instructions`] builds them from any (prompt, response) set, e.g. HH-RLHF dev
//! prompts with their chosen responses: word-set Jaccard similarity of the prompts, pairs with
//! similarity in `[min_similarity, max_similarity]` and different responses, matched greedily
//! from the most similar down so every prompt is used at most once.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use rm_core::types::Prompt;
use serde::{Deserialize, Serialize};

/// Which prompts count as contrast instructions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContrastConfig {
    /// Least word-set Jaccard similarity of the two prompts (0.2: on the 200 HH-RLHF harmless
    /// dev prompts that gives 65 instances, on the 1,800 train prompts 667).
    pub min_similarity: f64,
    /// Most similarity: near-duplicate prompts (same question asked twice) are not contrasts.
    pub max_similarity: f64,
}

impl Default for ContrastConfig {
    fn default() -> Self {
        Self {
            min_similarity: 0.2,
            max_similarity: 0.9,
        }
    }
}

/// One instance: items `a` and `b` of the input (each a prompt with its own response).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContrastPair {
    pub a: usize,
    pub b: usize,
    /// Jaccard similarity of the two prompts' word sets.
    pub similarity: f64,
}

/// The lowercased alphanumeric words of every turn of `prompt`.
pub fn prompt_words(prompt: &Prompt) -> BTreeSet<String> {
    let text = match prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Conversation(c) => c
            .turns
            .iter()
            .map(|t| t.content.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    };
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// `|a ∩ b| / |a ∪ b|` (0 for two empty sets).
pub fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

/// Contrast instances among `items` (prompt, its response); see the module docs. Deterministic:
/// candidates are taken by similarity, then by index.
pub fn contrast_instructions(
    items: &[(&Prompt, &str)],
    config: ContrastConfig,
) -> Result<Vec<ContrastPair>> {
    let ContrastConfig {
        min_similarity,
        max_similarity,
    } = config;
    if !(0.0..=1.0).contains(&min_similarity)
        || !(0.0..=1.0).contains(&max_similarity)
        || min_similarity > max_similarity
    {
        bail!(
            "contrast instructions: need 0 ≤ min_similarity ≤ max_similarity ≤ 1, got {min_similarity} and {max_similarity}"
        );
    }
    let words: Vec<BTreeSet<String>> = items.iter().map(|(p, _)| prompt_words(p)).collect();
    let mut candidates = Vec::new();
    for a in 0..items.len() {
        for b in a + 1..items.len() {
            if items[a].1.trim() == items[b].1.trim() || items[a].0 == items[b].0 {
                continue;
            }
            let similarity = jaccard(&words[a], &words[b]);
            if (min_similarity..=max_similarity).contains(&similarity) {
                candidates.push(ContrastPair { a, b, similarity });
            }
        }
    }
    candidates.sort_by(|x, y| {
        y.similarity
            .total_cmp(&x.similarity)
            .then(x.a.cmp(&y.a))
            .then(x.b.cmp(&y.b))
    });
    let mut used = vec![false; items.len()];
    Ok(candidates
        .into_iter()
        .filter(|p| {
            let free = !used[p.a] && !used[p.b];
            if free {
                used[p.a] = true;
                used[p.b] = true;
            }
            free
        })
        .collect())
}

/// The four rewards of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContrastScores {
    /// `r(I_a, R_a)`
    pub aa: f32,
    /// `r(I_a, R_b)`
    pub ab: f32,
    /// `r(I_b, R_b)`
    pub bb: f32,
    /// `r(I_b, R_a)`
    pub ba: f32,
}

/// What [`contrast_consistency`] measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContrastConsistency {
    pub instances: usize,
    /// Share of the `2N` comparisons in which the instruction's own response wins.
    pub response: f64,
    /// Share of the `2N` comparisons in which the response's own instruction wins.
    pub instruction: f64,
    /// Share of instances with both response comparisons right.
    pub response_both: f64,
    /// Share of instances with both instruction comparisons right.
    pub instruction_both: f64,
}

/// 1 when `x > y`, 1/2 on a tie, else 0.
fn win(x: f32, y: f32) -> f64 {
    if x > y {
        1.0
    } else if x == y {
        0.5
    } else {
        0.0
    }
}

/// Response and instruction consistency of the instances' rewards (see the module docs).
pub fn contrast_consistency(scores: &[ContrastScores]) -> Result<ContrastConsistency> {
    if scores.is_empty() {
        bail!("contrast consistency: no instances");
    }
    if let Some(i) = scores
        .iter()
        .position(|s| ![s.aa, s.ab, s.bb, s.ba].iter().all(|x| x.is_finite()))
    {
        bail!("contrast consistency: instance {i} has a non-finite reward");
    }
    let n = scores.len() as f64;
    let mean = |f: &dyn Fn(&ContrastScores) -> f64| scores.iter().map(f).sum::<f64>() / n;
    Ok(ContrastConsistency {
        instances: scores.len(),
        response: mean(&|s| (win(s.aa, s.ab) + win(s.bb, s.ba)) / 2.0),
        instruction: mean(&|s| (win(s.aa, s.ba) + win(s.bb, s.ab)) / 2.0),
        response_both: mean(&|s| f64::from(s.aa > s.ab && s.bb > s.ba)),
        instruction_both: mean(&|s| f64::from(s.aa > s.ba && s.bb > s.ab)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Prompt {
        Prompt::Text(s.into())
    }

    #[test]
    fn jaccard_of_word_sets_on_hand_worked_numbers() {
        let a = prompt_words(&text("How do I bake bread?"));
        let b = prompt_words(&text("how do I bake a cake"));
        // {how, do, i, bake, bread} vs {how, do, i, bake, a, cake}: 4 shared of 7.
        assert!((jaccard(&a, &b) - 4.0 / 7.0).abs() < 1e-12);
        assert_eq!(jaccard(&BTreeSet::new(), &BTreeSet::new()), 0.0);
    }

    #[test]
    fn instances_are_matched_greedily_by_similarity_without_reuse() {
        let prompts = [
            text("how do I bake bread at home"),         // 0
            text("how do I bake a cake at home"),        // 1: 6/9 with 0
            text("how do I bake bread at home quickly"), // 2: 7/8 with 0
            text("what is the capital of France"),       // 3: nothing similar
            text("how do I bake a cake at home"),        // 4: same prompt as 1
        ];
        let responses = ["knead", "whisk", "fast knead", "Paris", "whisk hard"];
        let items: Vec<(&Prompt, &str)> = prompts.iter().zip(responses).collect();
        let pairs = contrast_instructions(&items, ContrastConfig::default()).unwrap();
        // (0,2) at 7/8 first; then 1 and 4 share their prompt (skipped); (1,0), (1,2) use
        // taken items; 4 ↔ 0/2 likewise. So one instance.
        assert_eq!(pairs.len(), 1);
        assert_eq!((pairs[0].a, pairs[0].b), (0, 2));
        assert!((pairs[0].similarity - 7.0 / 8.0).abs() < 1e-12);
        // Without item 2, 0 pairs with 1 (6/9 similarity).
        let pairs = contrast_instructions(&items[..2], ContrastConfig::default()).unwrap();
        assert_eq!((pairs[0].a, pairs[0].b), (0, 1));
        // A threshold above the best similarity finds nothing; a bad range is an error.
        let strict = ContrastConfig {
            min_similarity: 0.9,
            max_similarity: 1.0,
        };
        assert!(contrast_instructions(&items, strict).unwrap().is_empty());
        let bad = ContrastConfig {
            min_similarity: 0.8,
            max_similarity: 0.2,
        };
        assert!(contrast_instructions(&items, bad).is_err());
    }

    #[test]
    fn consistency_counts_each_comparison_and_each_instance() {
        let s = |aa, ab, bb, ba| ContrastScores { aa, ab, bb, ba };
        let scores = [
            // Both responses win for their instruction, and both instructions for their response.
            s(2.0, 1.0, 1.5, 1.0),
            // A scorer that ignores the instruction: r(·, R_a) = 1, r(·, R_b) = 0.
            s(1.0, 0.0, 0.0, 1.0),
        ];
        let c = contrast_consistency(&scores).unwrap();
        assert_eq!(c.instances, 2);
        // response: instance 1 → 1, 1; instance 2 → aa > ab (1), bb > ba (0) → (2 + 1) / 4.
        assert!((c.response - 0.75).abs() < 1e-12);
        // instruction: instance 1 → aa > ba (1), bb 1.5 > ab 1 (1); instance 2 → ties 1/2, 1/2.
        assert!((c.instruction - 0.75).abs() < 1e-12);
        assert!((c.response_both - 0.5).abs() < 1e-12);
        assert!((c.instruction_both - 0.5).abs() < 1e-12);
        assert!(contrast_consistency(&[]).is_err());
        assert!(contrast_consistency(&[s(f32::NAN, 0.0, 0.0, 0.0)]).is_err());
    }
}
