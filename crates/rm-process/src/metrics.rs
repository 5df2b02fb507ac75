//! Pure metric functions of step scores and best-of-N selections, with hand-worked tests.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

/// Area under the ROC curve of `scores` for binary `labels` (true = positive): the probability
/// that a random positive outscores a random negative, ties counting ½ (the Mann–Whitney U
/// statistic over n₊·n₋). Errors when a class is missing or a score is NaN.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Result<f64> {
    if scores.len() != labels.len() {
        bail!("auroc: {} scores for {} labels", scores.len(), labels.len());
    }
    if scores.iter().any(|s| s.is_nan()) {
        bail!("auroc: a score is NaN");
    }
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        bail!("auroc needs both classes ({pos} positive, {neg} negative)");
    }
    // Rank-sum with average ranks for ties.
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += order[i..=j].iter().filter(|&&k| labels[k]).count() as f64 * avg_rank;
        i = j + 1;
    }
    let u = rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0;
    Ok(u / (pos as f64 * neg as f64))
}

/// The first step judged wrong (`p < threshold`), or −1 when none is.
pub fn predicted_first_error(probs: &[f32], threshold: f32) -> i64 {
    probs
        .iter()
        .position(|&p| p < threshold)
        .map_or(-1, |i| i as i64)
}

/// The first step labelled wrong, or −1 when none is (`labels[i]` = step i correct; `None`
/// = unlabelled, skipped).
pub fn gold_first_error(labels: &[Option<bool>]) -> i64 {
    labels
        .iter()
        .position(|&l| l == Some(false))
        .map_or(-1, |i| i as i64)
}

/// ProcessBench-style first-error scores (Zheng et al., "ProcessBench", 2024): accuracy of the
/// predicted first-error index on erroneous solutions, on correct solutions (predicted −1), and
/// their harmonic mean `F1 = 2·a_err·a_cor / (a_err + a_cor)` (0 when both are 0).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FirstErrorScores {
    pub erroneous: usize,
    pub correct: usize,
    /// Accuracy on erroneous solutions (`None` when there are none).
    pub accuracy_erroneous: Option<f64>,
    /// Accuracy on correct solutions (`None` when there are none).
    pub accuracy_correct: Option<f64>,
    /// The harmonic mean (`None` when a side is missing).
    pub f1: Option<f64>,
}

/// First-error scores of `(gold, predicted)` index pairs.
pub fn first_error_scores(pairs: &[(i64, i64)]) -> FirstErrorScores {
    let (mut err, mut err_hit, mut cor, mut cor_hit) = (0usize, 0usize, 0usize, 0usize);
    for &(gold, pred) in pairs {
        if gold < 0 {
            cor += 1;
            cor_hit += usize::from(pred < 0);
        } else {
            err += 1;
            err_hit += usize::from(pred == gold);
        }
    }
    let frac = |hit: usize, n: usize| (n > 0).then(|| hit as f64 / n as f64);
    let (a, b) = (frac(err_hit, err), frac(cor_hit, cor));
    FirstErrorScores {
        erroneous: err,
        correct: cor,
        accuracy_erroneous: a,
        accuracy_correct: b,
        f1: a.zip(b).map(|(a, b)| harmonic_mean(a, b)),
    }
}

/// `2ab / (a + b)`, 0 when `a + b = 0`.
pub fn harmonic_mean(a: f64, b: f64) -> f64 {
    if a + b == 0.0 {
        0.0
    } else {
        2.0 * a * b / (a + b)
    }
}

/// The expected correctness of picking uniformly among the candidates with the highest `score`
/// (ties share the pick): `mean(correct[i] for i in argmax)`. NaN scores are errors; `None` for
/// no candidates.
pub fn select_best(scores: &[f64], correct: &[bool]) -> Result<Option<f64>> {
    if scores.iter().any(|s| s.is_nan()) {
        bail!("a candidate's score is NaN");
    }
    let Some(best) = scores.iter().copied().reduce(f64::max) else {
        return Ok(None);
    };
    let winners: Vec<bool> = scores
        .iter()
        .zip(correct)
        .filter(|(s, _)| **s == best)
        .map(|(_, &c)| c)
        .collect();
    Ok(Some(mean_bool(&winners)))
}

fn mean_bool(v: &[bool]) -> f64 {
    v.iter().filter(|&&c| c).count() as f64 / v.len() as f64
}

/// (Weighted) majority vote over final answers: each candidate with an answer votes for it with
/// its weight (1 for plain majority voting, Wang et al., "Self-Consistency", 2023; the PRM's
/// solution score for PRM-weighted voting, Uesato et al., 2022 / Math-Shepherd). The answer
/// with the most weight wins (ties share the pick equally), and a pick from an answer group is a
/// uniform pick among its candidates: the value is the expected correctness
/// `mean over winning answers a of mean(correct[i] : answer[i] = a)`. `None` when no candidate
/// has an answer.
pub fn weighted_vote(
    answers: &[Option<String>],
    weights: &[f64],
    correct: &[bool],
) -> Result<Option<f64>> {
    if weights.iter().any(|w| w.is_nan()) {
        bail!("a vote weight is NaN");
    }
    let mut groups: BTreeMap<&str, (f64, Vec<bool>)> = BTreeMap::new();
    for ((a, &w), &c) in answers.iter().zip(weights).zip(correct) {
        if let Some(a) = a {
            let g = groups.entry(normalize_answer(a)).or_default();
            g.0 += w;
            g.1.push(c);
        }
    }
    let Some(best) = groups.values().map(|g| g.0).reduce(f64::max) else {
        return Ok(None);
    };
    let winners: Vec<f64> = groups
        .values()
        .filter(|g| g.0 == best)
        .map(|g| mean_bool(&g.1))
        .collect();
    Ok(Some(winners.iter().sum::<f64>() / winners.len() as f64))
}

/// Answers compared for voting: surrounding whitespace and a trailing period removed.
pub fn normalize_answer(a: &str) -> &str {
    a.trim().trim_end_matches('.').trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_on_hand_worked_numbers_with_ties() {
        // Positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) 1, (0.9>0.1) 1, (0.5=0.5) ½,
        // (0.5>0.1) 1 → 3.5 / 4.
        let a = auroc(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false]).unwrap();
        assert!((a - 0.875).abs() < 1e-12, "{a}");
        assert_eq!(auroc(&[0.1, 0.9], &[true, false]).unwrap(), 0.0);
        assert_eq!(auroc(&[0.3, 0.3, 0.3], &[true, false, true]).unwrap(), 0.5);
        assert!(auroc(&[0.3], &[true]).is_err());
        assert!(auroc(&[f32::NAN, 0.2], &[true, false]).is_err());
    }

    #[test]
    fn first_error_prediction_and_f1() {
        assert_eq!(predicted_first_error(&[0.9, 0.4, 0.2], 0.5), 1);
        assert_eq!(predicted_first_error(&[0.9, 0.6], 0.5), -1);
        assert_eq!(gold_first_error(&[Some(true), None, Some(false)]), 2);
        assert_eq!(gold_first_error(&[Some(true), None]), -1);
        // Erroneous: (1,1) hit, (2,0) miss, (0,-1) miss → 1/3; correct: (-1,-1) hit,
        // (-1,3) miss → 1/2; F1 = 2·(1/3)(1/2)/(5/6) = 0.4.
        let s = first_error_scores(&[(1, 1), (2, 0), (0, -1), (-1, -1), (-1, 3)]);
        assert_eq!((s.erroneous, s.correct), (3, 2));
        assert!((s.accuracy_erroneous.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.accuracy_correct, Some(0.5));
        assert!((s.f1.unwrap() - 0.4).abs() < 1e-12);
        assert_eq!(first_error_scores(&[(-1, -1)]).f1, None);
        assert_eq!(harmonic_mean(0.0, 0.0), 0.0);
    }

    #[test]
    fn selection_and_votes_share_ties() {
        assert_eq!(
            select_best(&[0.2, 0.9, 0.9], &[true, true, false]).unwrap(),
            Some(0.5)
        );
        assert_eq!(select_best(&[], &[]).unwrap(), None);
        let ans = |v: &[&str]| -> Vec<Option<String>> {
            v.iter()
                .map(|s| (!s.is_empty()).then(|| s.to_string()))
                .collect()
        };
        // "4" ×2 (one correct), "5" ×1 (correct), one without answer: plain vote picks "4" → ½.
        let a = ans(&["4", "4 ", "5", ""]);
        let c = [true, false, true, true];
        assert_eq!(weighted_vote(&a, &[1.0; 4], &c).unwrap(), Some(0.5));
        // Weighted: "4" 0.1+0.2 = 0.3 < "5" 0.9 → 1.
        assert_eq!(
            weighted_vote(&a, &[0.1, 0.2, 0.9, 5.0], &c).unwrap(),
            Some(1.0)
        );
        // A tie between "4" (½) and "5" (1) → ¾.
        assert_eq!(
            weighted_vote(&a, &[0.5, 0.5, 1.0, 0.0], &c).unwrap(),
            Some(0.75)
        );
        assert_eq!(
            weighted_vote(&ans(&["", ""]), &[1.0; 2], &[true, false]).unwrap(),
            None
        );
    }
}
