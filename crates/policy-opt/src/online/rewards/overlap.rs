//! Reference-overlap rewards: BLEU and ROUGE-L of the completion against the sample's reference
//! texts (`references`, e.g. the chosen response of an HH pair). A sample without references is
//! an error (masked); an empty completion scores 0.
//!
//! **BLEU** (Papineni et al. 2002), used as an RL reward by BLEUBERI (Chang et al. 2025,
//! "BLEUBERI: BLEU is a surprisingly effective reward for instruction following", arXiv
//! 2505.11080), on a 0–1 scale:
//! `BLEU = BP · exp( (1/N') Σ_{n=1..N'} ln p_n )`.
//!
//! `smoothing = "bleuberi"` (default) is what BLEUBERI's code computes (Hugging Face
//! `evaluate`'s `bleu` with `smooth=True`, i.e. tensorflow/nmt's `compute_bleu`):
//! `p_n = (m_n + 1) / (t_n + 1)` for every order `n = 1..N` (`N' = N` even when the hypothesis
//! is shorter than `N`), with `m_n` the clipped matches and `t_n` the hypothesis's n-grams, and
//! `BP = 1` if `c > r`, else `exp(1 − r/c)`, with `r` the length of the *shortest* reference.
//!
//! The other settings compute sacrebleu's `sentence_bleu`:
//! - `p_n = Σ_g min(c_hyp(g), max_ref c_ref(g)) / Σ_g c_hyp(g)` over the hypothesis's n-grams `g`
//!   (counts clipped by the maximum count in any one reference);
//! - `N'` the effective order: `N = max_order` (default 4), less the orders for which the
//!   hypothesis has no n-gram at all (a 2-word completion is scored on unigrams and bigrams);
//! - `BP = 1` if `c ≥ r`, else `exp(1 − r/c)`, with `c` the hypothesis length and `r` the length
//!   of the reference closest to it (the shorter one on a tie);
//! - smoothing of orders with no match (`smoothing`): `exp` (default; sacrebleu's, from NIST
//!   mteval: the k-th order with no match gets `p_n = 1 / (2^k · total_n)`), `add_one` (orders
//!   n ≥ 2 get `(m_n + 1)/(total_n + 1)`, Lin & Och 2004), or `none` (any zero precision makes
//!   BLEU 0).
//!
//! Tokens: runs of alphanumeric characters, and every other non-space character on its own
//! (a simplification of sacrebleu's `13a` tokenizer); `lowercase = true` folds case first.
//!
//! **ROUGE-L** (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"), as Google's
//! `rouge_score`: with `LCS` the length of the longest common subsequence of tokens,
//! `P = LCS/|hyp|`, `R = LCS/|ref|`, `F_β = (1 + β²)·P·R / (R + β²·P)` (`beta`, default 1: the
//! harmonic mean), the maximum over the references. Tokens: lowercased alphanumeric runs
//! (punctuation dropped), as `rouge_score`'s default tokenizer.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{RewardError, RewardFunction, RewardSample, per_sample};

/// BLEU smoothing for orders without matches (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BleuSmoothing {
    /// BLEUBERI's: add one to every order's matches and n-grams, shortest reference.
    #[default]
    Bleuberi,
    /// sacrebleu, no smoothing.
    None,
    /// sacrebleu's default for sentences (NIST geometric smoothing).
    Exp,
    /// sacrebleu's add-k with k = 1 (orders ≥ 2).
    AddOne,
}

fn four() -> usize {
    4
}

/// `kind = "bleu"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleuSpec {
    #[serde(default = "four")]
    pub max_order: usize,
    #[serde(default)]
    pub smoothing: BleuSmoothing,
    #[serde(default)]
    pub lowercase: bool,
}

impl Default for BleuSpec {
    fn default() -> Self {
        Self {
            max_order: 4,
            smoothing: BleuSmoothing::Bleuberi,
            lowercase: false,
        }
    }
}

/// `kind = "rouge_l"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RougeLSpec {
    #[serde(default = "super::one")]
    pub beta: f64,
}

impl Default for RougeLSpec {
    fn default() -> Self {
        Self { beta: 1.0 }
    }
}

/// BLEU's tokens: alphanumeric runs and single punctuation characters.
pub fn bleu_tokens(text: &str, lowercase: bool) -> Vec<String> {
    let text = if lowercase {
        text.to_lowercase()
    } else {
        text.to_string()
    };
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// ROUGE's tokens: lowercased alphanumeric runs.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    if tokens.len() >= n {
        for g in tokens.windows(n) {
            *counts.entry(g).or_insert(0) += 1;
        }
    }
    counts
}

/// Sentence BLEU in [0, 1] of tokenized `hyp` against tokenized `refs` (see the module docs).
/// 0 for an empty hypothesis or no references.
pub fn bleu(
    hyp: &[String],
    refs: &[Vec<String>],
    max_order: usize,
    smoothing: BleuSmoothing,
) -> f64 {
    if hyp.is_empty() || refs.is_empty() || max_order == 0 {
        return 0.0;
    }
    let bleuberi = smoothing == BleuSmoothing::Bleuberi;
    let mut log_sum = 0.0;
    let mut order = 0usize;
    let mut mteval = 1.0;
    for n in 1..=max_order {
        let hyp_counts = ngram_counts(hyp, n);
        let mut total: f64 = hyp_counts.values().sum::<usize>() as f64;
        if total == 0.0 && !bleuberi {
            break;
        }
        let ref_counts: Vec<_> = refs.iter().map(|r| ngram_counts(r, n)).collect();
        let mut matches: f64 = hyp_counts
            .iter()
            .map(|(g, &c)| {
                let max_ref = ref_counts
                    .iter()
                    .map(|rc| rc.get(g).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0);
                c.min(max_ref)
            })
            .sum::<usize>() as f64;
        if bleuberi || (smoothing == BleuSmoothing::AddOne && n > 1) {
            matches += 1.0;
            total += 1.0;
        }
        let p = if matches > 0.0 {
            matches / total
        } else {
            match smoothing {
                BleuSmoothing::Exp => {
                    mteval *= 2.0;
                    1.0 / (mteval * total)
                }
                BleuSmoothing::None | BleuSmoothing::AddOne | BleuSmoothing::Bleuberi => {
                    return 0.0;
                }
            }
        };
        log_sum += p.ln();
        order = n;
    }
    let c = hyp.len() as f64;
    let lengths = refs.iter().map(|r| r.len());
    let r = if bleuberi {
        lengths.min()
    } else {
        lengths.min_by_key(|&len| (len.abs_diff(hyp.len()), len))
    }
    .unwrap_or(0) as f64;
    let bp = if c >= r { 1.0 } else { (1.0 - r / c).exp() };
    bp * (log_sum / order as f64).exp()
}

/// Length of the longest common subsequence.
pub fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L `F_β` of tokenized `hyp` against one tokenized reference.
pub fn rouge_l(hyp: &[String], reference: &[String], beta: f64) -> f64 {
    let lcs = lcs_len(hyp, reference) as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let p = lcs / hyp.len() as f64;
    let r = lcs / reference.len() as f64;
    let b2 = beta * beta;
    (1.0 + b2) * p * r / (r + b2 * p)
}

fn references<'a>(s: &RewardSample<'a>) -> Result<&'a [String], RewardError> {
    if s.references.is_empty() {
        Err(RewardError::MissingReference(
            "BLEU / ROUGE-L need reference texts",
        ))
    } else {
        Ok(s.references)
    }
}

/// The BLEU reward.
pub struct BleuReward {
    name: String,
    spec: BleuSpec,
}

impl BleuReward {
    pub fn new(name: &str, spec: BleuSpec) -> anyhow::Result<Self> {
        if spec.max_order == 0 {
            anyhow::bail!("bleu: max_order must be at least 1");
        }
        Ok(Self {
            name: name.to_string(),
            spec,
        })
    }
}

impl RewardFunction for BleuReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
        per_sample(samples, |s| {
            let refs: Vec<Vec<String>> = references(s)?
                .iter()
                .map(|r| bleu_tokens(r, self.spec.lowercase))
                .collect();
            let hyp = bleu_tokens(s.completion, self.spec.lowercase);
            Ok(bleu(&hyp, &refs, self.spec.max_order, self.spec.smoothing) as f32)
        })
    }
}

/// The ROUGE-L reward.
pub struct RougeLReward {
    name: String,
    spec: RougeLSpec,
}

impl RougeLReward {
    pub fn new(name: &str, spec: RougeLSpec) -> anyhow::Result<Self> {
        if !(spec.beta.is_finite() && spec.beta > 0.0) {
            anyhow::bail!("rouge_l: beta {} must be finite and > 0", spec.beta);
        }
        Ok(Self {
            name: name.to_string(),
            spec,
        })
    }
}

impl RewardFunction for RougeLReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
        per_sample(samples, |s| {
            let hyp = rouge_tokens(s.completion);
            let best = references(s)?
                .iter()
                .map(|r| rouge_l(&hyp, &rouge_tokens(r), self.spec.beta))
                .fold(0.0, f64::max);
            Ok(best as f32)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::types::Prompt;

    fn t(s: &str) -> Vec<String> {
        bleu_tokens(s, false)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn bleu_tokens_split_punctuation() {
        assert_eq!(t("Hi, there!"), ["Hi", ",", "there", "!"]);
        assert_eq!(bleu_tokens("The Cat", true), ["the", "cat"]);
    }

    #[test]
    fn bleu_matches_hand_computed_values() {
        let hyp = t("the cat sat on the mat");
        let refs = vec![t("the cat is on the mat")];
        // p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3; BP = 1 (both 6 tokens).
        assert_eq!(bleu(&hyp, &refs, 4, BleuSmoothing::None), 0.0);
        // exp: p4 = 1/(2·3); BLEU = (5/6 · 3/5 · 1/4 · 1/6)^(1/4) = (1/48)^(1/4).
        close(
            bleu(&hyp, &refs, 4, BleuSmoothing::Exp),
            (1.0f64 / 48.0).powf(0.25),
        );
        // add-one on n ≥ 2: (5/6 · 4/6 · 2/5 · 1/4)^(1/4) = (1/18)^(1/4).
        close(
            bleu(&hyp, &refs, 4, BleuSmoothing::AddOne),
            (1.0f64 / 18.0).powf(0.25),
        );
        // Identical: 1.
        close(
            bleu(&hyp, std::slice::from_ref(&hyp), 4, BleuSmoothing::None),
            1.0,
        );
        // Bigram BLEU: (5/6 · 3/5)^(1/2) = 0.5^(1/2).
        close(bleu(&hyp, &refs, 2, BleuSmoothing::None), 0.5f64.sqrt());
        // BLEUBERI: ((5+1)/(6+1) · (3+1)/(5+1) · (1+1)/(4+1) · (0+1)/(3+1))^(1/4) = (2/35)^(1/4).
        close(
            bleu(&hyp, &refs, 4, BleuSmoothing::Bleuberi),
            (2.0f64 / 35.0).powf(0.25),
        );
    }

    #[test]
    fn bleuberi_smooths_every_order_and_measures_brevity_against_the_shortest_reference() {
        // 2 tokens vs 6: p1 = 3/3, p2 = 2/2, p3 = p4 = (0+1)/(0+1) = 1; BP = e^(1 − 6/2).
        close(
            bleu(
                &t("the cat"),
                &[t("the cat sat on the mat")],
                4,
                BleuSmoothing::Bleuberi,
            ),
            (-2.0f64).exp(),
        );
        // "the dog" vs "the cat": p1 = 2/3, p2 = 1/2, p3 = p4 = 1 → (1/3)^(1/4), BP 1.
        close(
            bleu(&t("the dog"), &[t("the cat")], 4, BleuSmoothing::Bleuberi),
            (1.0f64 / 3.0).powf(0.25),
        );
        // 5 tokens, references of 2 and 6: sacrebleu takes the closest (6): BP = e^(1 − 6/5);
        // BLEUBERI the shortest (2): BP = 1.
        let hyp = t("a b c d e");
        let refs = [t("a b"), t("a b c d e f")];
        close(bleu(&hyp, &refs, 1, BleuSmoothing::None), (-0.2f64).exp());
        close(bleu(&hyp, &refs, 1, BleuSmoothing::Bleuberi), 1.0);
    }

    #[test]
    fn bleu_brevity_penalty_effective_order_and_multiple_references() {
        // 2 tokens vs 6: p1 = p2 = 1, orders 3 and 4 have no n-grams; BP = e^(1 − 6/2).
        let short = t("the cat");
        close(
            bleu(
                &short,
                &[t("the cat sat on the mat")],
                4,
                BleuSmoothing::Exp,
            ),
            (-2.0f64).exp(),
        );
        // Counts clipped by the max over references: "the" ×3 vs refs with 1 and 2 → 2/3;
        // bigram "the the" ×2 vs 1 → 1/2; trigram 0/1 → exp 1/2; no 4-grams.
        // BP: closest reference length to 3 is 3 → 1. BLEU = (2/3 · 1/2 · 1/2)^(1/3).
        let hyp = t("the the the");
        let refs = vec![t("the cat"), t("the the dog")];
        close(
            bleu(&hyp, &refs, 4, BleuSmoothing::Exp),
            (1.0f64 / 6.0).powf(1.0 / 3.0),
        );
        // Closest reference length, shorter on a tie: hyp 4 tokens, refs 2 and 6 → r = 2, BP 1.
        let hyp = t("a b c d");
        close(
            bleu(&hyp, &[t("a b"), t("a b c d e f")], 1, BleuSmoothing::None),
            1.0,
        );
        assert_eq!(bleu(&[], &refs, 4, BleuSmoothing::Exp), 0.0);
    }

    #[test]
    fn rouge_l_matches_hand_computed_values() {
        let r = |h: &str, r: &str, b: f64| rouge_l(&rouge_tokens(h), &rouge_tokens(r), b);
        // LCS "the cat on the mat" = 5 of 6 and 6: F = 5/6.
        close(
            r("the cat sat on the mat", "the cat is on the mat", 1.0),
            5.0 / 6.0,
        );
        // LCS "a c e" = 3: P = 3/5, R = 3/4, F1 = 2·0.45/1.35 = 2/3, F2 = 5·0.45/3.15 = 5/7.
        close(r("a b c d e", "a x c e", 1.0), 2.0 / 3.0);
        close(r("a b c d e", "a x c e", 2.0), 5.0 / 7.0);
        // Case and punctuation are ignored.
        close(r("The cat.", "the cat", 1.0), 1.0);
        close(r("dog", "the cat", 1.0), 0.0);
        close(r("", "the cat", 1.0), 0.0);
    }

    #[test]
    fn overlap_rewards_take_the_best_reference_and_mask_samples_without_one() {
        let prompt = Prompt::Text("q".into());
        let refs = vec!["a x c e".to_string(), "a b c d e".to_string()];
        let none: Vec<String> = vec![];
        let samples = [
            RewardSample {
                prompt: &prompt,
                completion: "a b c d e",
                references: &refs,
                truncated: false,
            },
            RewardSample {
                prompt: &prompt,
                completion: "a b c d e",
                references: &none,
                truncated: false,
            },
        ];
        let rouge = RougeLReward::new("rouge_l", RougeLSpec::default()).unwrap();
        let out = rouge.score_batch(&samples);
        assert_eq!(out[0], Ok(1.0));
        assert!(matches!(out[1], Err(RewardError::MissingReference(_))));
        let bleu = BleuReward::new("bleu", BleuSpec::default()).unwrap();
        let out = bleu.score_batch(&samples);
        assert_eq!(out[0], Ok(1.0));
        assert!(out[1].is_err());
        assert!(RougeLReward::new("r", RougeLSpec { beta: 0.0 }).is_err());
    }
}
