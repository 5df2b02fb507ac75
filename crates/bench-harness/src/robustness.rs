//! Robustness probes of a reward model's (or ensemble's) scores on preference pairs, as pure
//! functions over the scores:
//!
//! - [`length_bias`]: Pearson and Spearman correlation of reward with response length (in
//!   characters) over all chosen and rejected responses, and the accuracy on pairs whose chosen
//!   response is shorter vs longer than the rejected one (equal lengths in neither) — the
//!   length bias of Singhal et al. 2023, "A Long Way to Go: Investigating Length Correlations
//!   in RLHF";
//! - [`calibration`]: the expected calibration error (Guo et al. 2017) of the preference
//!   probability `p = σ(r_c − r_r)`, top-label form: confidence `max(p, 1 − p)` of the model's
//!   pick, correct when the pick is the chosen response (a tie counts 1/2), 10 equal-width bins
//!   over [0.5, 1]: `ECE = Σ_b (n_b / N)·|acc_b − conf_b|`, with a reliability table;
//! - [`perturb`] and [`consistency`]: reward (in-)consistency under meaning-preserving edits
//!   (Shen et al. 2023, "The Trickle-down Impact of Reward (In-)consistency on RLHF"): the
//!   mean |Δr| when responses are edited deterministically, and the share of pairs whose
//!   preference flips.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Pearson's `r = Σ (x − x̄)(y − ȳ) / sqrt(Σ (x − x̄)² · Σ (y − ȳ)²)`. Needs ≥ 2 points, equal
/// lengths, finite values and some spread in both.
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64> {
    if x.len() != y.len() {
        bail!("pearson: {} x values, {} y values", x.len(), y.len());
    }
    if x.len() < 2 {
        bail!("pearson: needs at least 2 points, got {}", x.len());
    }
    if x.iter().chain(y).any(|v| !v.is_finite()) {
        bail!("pearson: a value is not finite");
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    if sxx == 0.0 || syy == 0.0 {
        bail!("pearson: one variable is constant, the correlation is undefined");
    }
    Ok(sxy / (sxx * syy).sqrt())
}

/// 1-based ranks, ties given the mean of their ranks.
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Spearman's ρ: Pearson's r of the ranks (ties averaged).
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    if x.len() != y.len() {
        bail!("spearman: {} x values, {} y values", x.len(), y.len());
    }
    pearson(&ranks(x), &ranks(y))
}

/// One scored pair with its responses' lengths.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoredPair {
    pub chosen: f32,
    pub rejected: f32,
    /// Length of the chosen response (characters).
    pub chosen_len: usize,
    pub rejected_len: usize,
}

/// Accuracy over a group of pairs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupAccuracy {
    pub count: usize,
    /// `None` for an empty group.
    pub accuracy: Option<f64>,
}

impl GroupAccuracy {
    fn of<'a>(pairs: impl Iterator<Item = &'a ScoredPair>) -> Self {
        let (mut n, mut correct) = (0usize, 0usize);
        for p in pairs {
            n += 1;
            correct += usize::from(p.chosen > p.rejected);
        }
        Self {
            count: n,
            accuracy: (n > 0).then(|| correct as f64 / n as f64),
        }
    }
}

/// What [`length_bias`] measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LengthBias {
    /// Over the 2N responses: reward vs length in characters.
    pub pearson: f64,
    pub spearman: f64,
    /// Pairs whose chosen response is shorter than the rejected one.
    pub chosen_shorter: GroupAccuracy,
    /// Pairs whose chosen response is longer.
    pub chosen_longer: GroupAccuracy,
}

/// Length bias of the scores of `pairs` (see the module docs).
pub fn length_bias(pairs: &[ScoredPair]) -> Result<LengthBias> {
    let lengths: Vec<f64> = pairs
        .iter()
        .flat_map(|p| [p.chosen_len as f64, p.rejected_len as f64])
        .collect();
    let rewards: Vec<f64> = pairs
        .iter()
        .flat_map(|p| [p.chosen as f64, p.rejected as f64])
        .collect();
    Ok(LengthBias {
        pearson: pearson(&lengths, &rewards)?,
        spearman: spearman(&lengths, &rewards)?,
        chosen_shorter: GroupAccuracy::of(pairs.iter().filter(|p| p.chosen_len < p.rejected_len)),
        chosen_longer: GroupAccuracy::of(pairs.iter().filter(|p| p.chosen_len > p.rejected_len)),
    })
}

/// One bin of the reliability table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Confidence range `[lo, hi)` (the last bin includes 1).
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean confidence `max(p, 1 − p)` in the bin (`None` when empty).
    pub confidence: Option<f64>,
    /// Share of the bin's pairs whose pick is the chosen response.
    pub accuracy: Option<f64>,
}

/// What [`calibration`] measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub ece: f64,
    pub bins: Vec<ReliabilityBin>,
}

/// The number of [`calibration`] bins.
pub const CALIBRATION_BINS: usize = 10;

/// ECE of `p = σ(r_c − r_r)` over the pairs' (chosen, rejected) scores (see the module docs).
pub fn calibration(pairs: &[(f32, f32)]) -> Result<Calibration> {
    if pairs.is_empty() {
        bail!("calibration: no pairs");
    }
    let mut count = [0usize; CALIBRATION_BINS];
    let mut conf = [0f64; CALIBRATION_BINS];
    let mut correct = [0f64; CALIBRATION_BINS];
    for (i, &(c, r)) in pairs.iter().enumerate() {
        let d = c as f64 - r as f64;
        if !d.is_finite() {
            bail!("calibration: pair {i} has a non-finite score ({c}, {r})");
        }
        let p = 1.0 / (1.0 + (-d).exp());
        let confidence = p.max(1.0 - p);
        let hit = if d > 0.0 {
            1.0
        } else if d == 0.0 {
            0.5
        } else {
            0.0
        };
        let b = (((confidence - 0.5) / 0.5 * CALIBRATION_BINS as f64) as usize)
            .min(CALIBRATION_BINS - 1);
        count[b] += 1;
        conf[b] += confidence;
        correct[b] += hit;
    }
    let n = pairs.len() as f64;
    let width = 0.5 / CALIBRATION_BINS as f64;
    let mut ece = 0.0;
    let bins = (0..CALIBRATION_BINS)
        .map(|b| {
            let (confidence, accuracy) = if count[b] > 0 {
                let k = count[b] as f64;
                ece += k / n * (correct[b] / k - conf[b] / k).abs();
                (Some(conf[b] / k), Some(correct[b] / k))
            } else {
                (None, None)
            };
            ReliabilityBin {
                lo: 0.5 + b as f64 * width,
                hi: 0.5 + (b + 1) as f64 * width,
                count: count[b],
                confidence,
                accuracy,
            }
        })
        .collect();
    Ok(Calibration { ece, bins })
}

impl Calibration {
    /// The reliability table as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from(
            "| confidence | pairs | mean confidence | accuracy |\n|---|---|---|---|\n",
        );
        let fmt = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
        for b in &self.bins {
            s += &format!(
                "| {:.2}–{:.2} | {} | {} | {} |\n",
                b.lo,
                b.hi,
                b.count,
                fmt(b.confidence),
                fmt(b.accuracy)
            );
        }
        s + &format!("\nECE = {:.4}\n", self.ece)
    }
}

/// A deterministic, meaning-preserving edit of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Perturbation {
    /// Every run of whitespace becomes one space, then a double space follows each `.`, `!`
    /// and `?` that ends a sentence, and the text gets a trailing newline.
    Whitespace,
    /// The final sentence punctuation is removed when present, else a `.` is added; `, ` after
    /// the first word of the text gets dropped when present.
    Punctuation,
    /// The first two sentences (split after `.`, `!`, `?` followed by a space) trade places;
    /// a one-sentence text is unchanged.
    SwapSentences,
}

impl Perturbation {
    pub const ALL: [Perturbation; 3] = [
        Perturbation::Whitespace,
        Perturbation::Punctuation,
        Perturbation::SwapSentences,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Perturbation::Whitespace => "whitespace",
            Perturbation::Punctuation => "punctuation",
            Perturbation::SwapSentences => "swap-sentences",
        }
    }
}

/// Sentences of `text`: split after `.`, `!` or `?` followed by whitespace (kept with the
/// sentence, trimmed).
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for w in chars.windows(2) {
        let ((i, c), (_, next)) = (w[0], w[1]);
        if matches!(c, '.' | '!' | '?') && next.is_whitespace() {
            let s = text[start..i + c.len_utf8()].trim();
            if !s.is_empty() {
                out.push(s);
            }
            start = i + c.len_utf8();
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// `text` edited by `kind` (see [`Perturbation`]).
pub fn perturb(text: &str, kind: Perturbation) -> String {
    match kind {
        Perturbation::Whitespace => {
            let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut out = String::with_capacity(joined.len() + 8);
            let mut prev: Option<char> = None;
            for c in joined.chars() {
                if c == ' ' && matches!(prev, Some('.' | '!' | '?')) {
                    out.push(' ');
                }
                out.push(c);
                prev = Some(c);
            }
            out.push('\n');
            out
        }
        Perturbation::Punctuation => {
            let trimmed = text.trim_end();
            let mut out = match trimmed.chars().last() {
                Some('.' | '!' | '?') => trimmed[..trimmed.len() - 1].to_string(),
                _ => format!("{trimmed}."),
            };
            if let Some(i) = out.find(", ")
                && !out[..i].contains(' ')
            {
                out.replace_range(i..i + 1, "");
            }
            out
        }
        Perturbation::SwapSentences => {
            let s = sentences(text);
            if s.len() < 2 {
                return text.to_string();
            }
            let mut order = s.clone();
            order.swap(0, 1);
            order.join(" ")
        }
    }
}

/// What [`consistency`] measures for one perturbation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Consistency {
    pub perturbation: Perturbation,
    /// Responses the edit changed (unchanged ones are left out of `mean_abs_change`).
    pub changed: usize,
    /// Mean |r(edited) − r(original)| over the changed responses.
    pub mean_abs_change: Option<f64>,
    /// Share of pairs whose preference (sign of r_c − r_r) differs after both responses are
    /// edited (a tie counts as its own sign).
    pub flip_rate: f64,
    /// Pairwise accuracy before and after.
    pub accuracy_before: f64,
    pub accuracy_after: f64,
}

/// Consistency of (chosen, rejected) scores `before` vs `after` the edit, with `changed[i]`
/// saying whether the edit changed the chosen and rejected response of pair `i`.
pub fn consistency(
    perturbation: Perturbation,
    before: &[(f32, f32)],
    after: &[(f32, f32)],
    changed: &[(bool, bool)],
) -> Result<Consistency> {
    if before.is_empty() {
        bail!("consistency: no pairs");
    }
    if before.len() != after.len() || before.len() != changed.len() {
        bail!(
            "consistency: {} pairs before, {} after, {} change flags",
            before.len(),
            after.len(),
            changed.len()
        );
    }
    let n = before.len() as f64;
    let (mut sum, mut count, mut flips, mut acc0, mut acc1) = (0.0, 0usize, 0usize, 0usize, 0usize);
    for ((b, a), c) in before.iter().zip(after).zip(changed) {
        for (x, y, ch) in [(b.0, a.0, c.0), (b.1, a.1, c.1)] {
            if ch {
                sum += (y as f64 - x as f64).abs();
                count += 1;
            }
        }
        let sign = |p: &(f32, f32)| (p.0 - p.1).partial_cmp(&0.0);
        flips += usize::from(sign(b) != sign(a));
        acc0 += usize::from(b.0 > b.1);
        acc1 += usize::from(a.0 > a.1);
    }
    Ok(Consistency {
        perturbation,
        changed: count,
        mean_abs_change: (count > 0).then(|| sum / count as f64),
        flip_rate: flips as f64 / n,
        accuracy_before: acc0 as f64 / n,
        accuracy_after: acc1 as f64 / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn pearson_and_spearman_on_hand_worked_numbers() {
        // x = (1,2,3,4), y = (2,4,5,9): x̄ = 2.5, ȳ = 5; Σdxdy = 1.5·3 + 0.5·1 + 0 + 1.5·4 = 11,
        // Σdx² = 5, Σdy² = 9+1+0+16 = 26 → r = 11 / sqrt(130).
        close(
            pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 5.0, 9.0]).unwrap(),
            11.0 / 130f64.sqrt(),
        );
        // Monotone but not linear: ρ = 1.
        close(
            spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 8.0, 27.0, 64.0]).unwrap(),
            1.0,
        );
        close(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap(), -1.0);
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 5.0]), [2.5, 4.0, 2.5, 1.0]);
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_err(), "constant x");
        assert!(pearson(&[1.0], &[1.0]).is_err());
        assert!(pearson(&[1.0, 2.0], &[1.0]).is_err());
    }

    #[test]
    fn length_bias_splits_pairs_by_which_response_is_longer() {
        let p = |chosen, rejected, chosen_len, rejected_len| ScoredPair {
            chosen,
            rejected,
            chosen_len,
            rejected_len,
        };
        let pairs = [
            p(2.0, 1.0, 20, 10), // chosen longer, right
            p(3.0, 0.0, 30, 5),  // chosen longer, right
            p(0.5, 1.5, 5, 15),  // chosen shorter, wrong
            p(1.0, 0.0, 8, 8),   // equal: neither group
        ];
        let lb = length_bias(&pairs).unwrap();
        assert_eq!(
            lb.chosen_longer,
            GroupAccuracy {
                count: 2,
                accuracy: Some(1.0)
            }
        );
        assert_eq!(
            lb.chosen_shorter,
            GroupAccuracy {
                count: 1,
                accuracy: Some(0.0)
            }
        );
        let lengths = [20.0, 10.0, 30.0, 5.0, 5.0, 15.0, 8.0, 8.0];
        let rewards = [2.0, 1.0, 3.0, 0.0, 0.5, 1.5, 1.0, 0.0];
        close(lb.pearson, pearson(&lengths, &rewards).unwrap());
        assert!(
            lb.pearson > 0.5,
            "longer responses score higher here: {}",
            lb.pearson
        );
        close(lb.spearman, spearman(&lengths, &rewards).unwrap());
    }

    #[test]
    fn ece_on_hand_worked_numbers() {
        let ln = |p: f64| (p / (1.0 - p)).ln() as f32;
        // Margins with p = σ(d) = 0.9, 0.9 (right), 0.8 picked wrong (d < 0), 0.5 tie.
        // conf 0.9 → bin [0.90, 0.95): 2 pairs, acc 1, |1 − 0.9| = 0.1
        // conf 0.8 → bin [0.80, 0.85): 1 pair, acc 0, |0 − 0.8| = 0.8
        // conf 0.5 → bin [0.50, 0.55): 1 tie, acc 0.5, |0.5 − 0.5| = 0
        // ECE = 2/4·0.1 + 1/4·0.8 + 0 = 0.25
        let pairs = [(ln(0.9), 0.0), (ln(0.9), 0.0), (0.0, ln(0.8)), (1.0, 1.0)];
        let cal = calibration(&pairs).unwrap();
        assert!((cal.ece - 0.25).abs() < 1e-6, "{}", cal.ece);
        assert_eq!(cal.bins.len(), 10);
        assert_eq!(cal.bins[8].count, 2);
        assert_eq!(cal.bins[6].count, 1);
        assert_eq!(cal.bins[6].accuracy, Some(0.0));
        assert_eq!(cal.bins[0].count, 1);
        assert_eq!(cal.bins.iter().map(|b| b.count).sum::<usize>(), 4);
        assert!(cal.to_markdown().contains("ECE = 0.2500"));
        // Confidence 1 falls in the last bin.
        let sure = calibration(&[(100.0, 0.0)]).unwrap();
        assert_eq!(sure.bins[9].count, 1);
        assert!(sure.ece < 1e-6);
        assert!(calibration(&[]).is_err());
        assert!(calibration(&[(f32::NAN, 0.0)]).is_err());
    }

    #[test]
    fn perturbations_are_deterministic_edits() {
        let t = "Sure, I can help.  Here is how.\tIt works!";
        assert_eq!(
            perturb(t, Perturbation::Whitespace),
            "Sure, I can help.  Here is how.  It works!\n"
        );
        assert_eq!(
            perturb(t, Perturbation::Punctuation),
            "Sure I can help.  Here is how.\tIt works"
        );
        assert_eq!(perturb("No", Perturbation::Punctuation), "No.");
        assert_eq!(
            perturb(t, Perturbation::SwapSentences),
            "Here is how. Sure, I can help. It works!"
        );
        assert_eq!(
            perturb("One sentence", Perturbation::SwapSentences),
            "One sentence"
        );
    }

    #[test]
    fn consistency_counts_changes_and_flips() {
        let before = [(1.0, 0.0), (2.0, 1.0), (0.0, 1.0)];
        let after = [(1.5, 0.0), (0.5, 1.0), (0.0, 1.0)];
        let changed = [(true, false), (true, true), (false, false)];
        let c = consistency(Perturbation::Whitespace, &before, &after, &changed).unwrap();
        // |Δ| over changed responses: 0.5, 1.5, 0 → mean 2/3.
        assert_eq!(c.changed, 3);
        close(c.mean_abs_change.unwrap(), 2.0 / 3.0);
        close(c.flip_rate, 1.0 / 3.0);
        close(c.accuracy_before, 2.0 / 3.0);
        close(c.accuracy_after, 1.0 / 3.0);
        assert!(consistency(Perturbation::Whitespace, &before, &after[..2], &changed).is_err());
    }
}
