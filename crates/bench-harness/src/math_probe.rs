//! A RewardMATH-style robustness probe ("Evaluating Robustness of Reward Models for
//! Mathematical Reasoning", Kim et al. 2024): for each math problem, one correct solution
//! against `n` incorrect ones; a reward model passes a problem only when it ranks the correct
//! solution strictly above *every* incorrect one (a pairwise accuracy hides that: one
//! preferred wrong solution is all a best-of-N policy needs to go wrong).
//!
//! The correct solution is GSM8K's worked solution. RewardMATH's incorrect solutions are
//! sampled from LLMs; here they are made by rule, so the probe needs no generator: each one
//! changes one intermediate result of the worked solution by a seeded offset (a calculation
//! error) and carries a different final answer (the `#### N` line and its last mention), so
//! every incorrect solution reads like the correct one except where it is wrong.
//!
//! Scores: one-vs-all accuracy (the share of problems passed; chance `1/(n+1)`), the mean
//! reciprocal rank of the correct solution (ties rank it below; chance `H_{n+1}/(n+1)`), and
//! the pairwise accuracy over every (correct, incorrect) pair (chance ½).

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rm_core::data::gsm8k::Gsm8kProblem;
use rm_core::types::Prompt;
use serde::{Deserialize, Serialize};

use crate::data::V2Row;

/// The subset name the probe's rows carry.
pub const MATH_PROBE_SUBSET: &str = "gsm8k-one-vs-many";

/// A number in a solution: its byte range and value.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Number {
    start: usize,
    end: usize,
    value: f64,
}

/// The numbers of `text` (digits with an optional decimal part; commas inside are not
/// numbers, so "1,200" reads as 1 and 200 — GSM8K's solutions rarely write them).
fn numbers(text: &str) -> Vec<Number> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if let Ok(value) = text[start..i].parse::<f64>() {
                out.push(Number {
                    start,
                    end: i,
                    value,
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The results of the solution's computations: numbers right after an `=` (spaces and `$`
/// between them allowed).
fn results(text: &str) -> Vec<Number> {
    numbers(text)
        .into_iter()
        .filter(|n| {
            let before = text[..n.start].trim_end_matches([' ', '$']);
            before.ends_with('=')
        })
        .collect()
}

fn render(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{}", (value * 100.0).round() / 100.0)
    }
}

/// A nonzero offset on the scale of `value`: ±1..max(3, |value|/4), integers.
fn offset(rng: &mut StdRng, value: f64) -> f64 {
    let span = (value.abs() / 4.0).max(3.0) as i64;
    let magnitude = rng.random_range(1..=span) as f64;
    if rng.random_bool(0.5) {
        magnitude
    } else {
        -magnitude
    }
}

/// The correct solution's text: the worked solution and its `#### answer` line.
pub fn correct_solution(problem: &Gsm8kProblem) -> String {
    format!("{}\n#### {}", problem.solution.trim_end(), problem.answer)
}

/// `n` distinct incorrect solutions of `problem` (see the module docs), seeded. An error when
/// `n` distinct ones cannot be made (it never happens on GSM8K: the final answer alone can
/// take any value).
pub fn incorrect_solutions(problem: &Gsm8kProblem, n: usize, seed: u64) -> Result<Vec<String>> {
    let correct = correct_solution(problem);
    let solution = problem.solution.trim_end();
    let steps = results(solution);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = BTreeSet::from([correct]);
    let mut out = Vec::new();
    for _ in 0..(50 * n + 50) {
        if out.len() == n {
            break;
        }
        let mut text = solution.to_string();
        let mut answer = problem.answer_value + offset(&mut rng, problem.answer_value);
        if let Some(step) = (!steps.is_empty()).then(|| steps[rng.random_range(0..steps.len())]) {
            let wrong = step.value + offset(&mut rng, step.value);
            text.replace_range(step.start..step.end, &render(wrong));
            // The last computation is the answer: the error carries into it.
            if steps.last() == Some(&step) {
                answer = wrong;
            }
        }
        if answer == problem.answer_value || answer < 0.0 && problem.answer_value >= 0.0 {
            continue;
        }
        // The answer's last mention in the text says the wrong answer too.
        if let Some(last) = numbers(&text)
            .into_iter()
            .rev()
            .find(|n| n.value == problem.answer_value)
        {
            text.replace_range(last.start..last.end, &render(answer));
        }
        let candidate = format!("{text}\n#### {}", render(answer));
        if seen.insert(candidate.clone()) {
            out.push(candidate);
        }
    }
    if out.len() < n {
        bail!(
            "made only {} distinct incorrect solutions of {n} for {:?}",
            out.len(),
            problem.question
        );
    }
    Ok(out)
}

/// The probe's rows, RewardBench-2 shaped (`chosen` = the correct solution, `rejected` = the
/// `n` incorrect ones), problem `i` seeded with `seed + i`.
pub fn math_probe_rows(problems: &[Gsm8kProblem], n: usize, seed: u64) -> Result<Vec<V2Row>> {
    if n == 0 {
        bail!("the probe needs at least one incorrect solution per problem");
    }
    problems
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(V2Row {
                id: Some(format!("gsm8k-{i}")),
                prompt: Prompt::Text(p.question.clone()),
                chosen: vec![correct_solution(p)],
                rejected: incorrect_solutions(p, n, seed.wrapping_add(i as u64))?,
                subset: MATH_PROBE_SUBSET.to_string(),
            })
        })
        .collect()
}

/// The probe's scores (see the module docs), with what chance would score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MathProbeScores {
    pub problems: usize,
    pub incorrect_per_problem: usize,
    /// Share of problems whose correct solution beats every incorrect one.
    pub one_vs_all_accuracy: f64,
    pub mean_reciprocal_rank: f64,
    /// Share of (correct, incorrect) pairs won by the correct solution.
    pub pairwise_accuracy: f64,
    pub chance_one_vs_all: f64,
    pub chance_mrr: f64,
}

/// Scores from each problem's (correct score, incorrect scores). Ties count against the
/// correct solution. An empty list is an error.
pub fn math_probe_scores(scored: &[(f32, Vec<f32>)]) -> Result<MathProbeScores> {
    let Some((_, first)) = scored.first() else {
        bail!("the probe scored no problems");
    };
    let n = first.len();
    if n == 0 || scored.iter().any(|(_, w)| w.len() != n) {
        bail!("every problem needs the same number (≥ 1) of incorrect solutions");
    }
    let mut passed = 0usize;
    let mut rr = 0.0;
    let mut wins = 0usize;
    for (c, wrong) in scored {
        let beaten_by = wrong.iter().filter(|&&w| w >= *c).count();
        passed += usize::from(beaten_by == 0);
        rr += 1.0 / (beaten_by + 1) as f64;
        wins += wrong.len() - beaten_by;
    }
    let m = scored.len() as f64;
    let harmonic: f64 = (1..=n + 1).map(|k| 1.0 / k as f64).sum();
    Ok(MathProbeScores {
        problems: scored.len(),
        incorrect_per_problem: n,
        one_vs_all_accuracy: passed as f64 / m,
        mean_reciprocal_rank: rr / m,
        pairwise_accuracy: wins as f64 / (m * n as f64),
        chance_one_vs_all: 1.0 / (n + 1) as f64,
        chance_mrr: harmonic / (n + 1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> Gsm8kProblem {
        Gsm8kProblem {
            question: "Janet has 16 eggs, eats 3 and bakes with 4; she sells the rest at $2. How much does she make?".into(),
            solution: "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day.".into(),
            answer: "18".into(),
            answer_value: 18.0,
        }
    }

    #[test]
    fn numbers_and_results_are_found() {
        let text = "a 16 - 3 = 13, then 2.5 * 2 = $5 and 1,200";
        let values: Vec<f64> = numbers(text).iter().map(|n| n.value).collect();
        assert_eq!(values, [16.0, 3.0, 13.0, 2.5, 2.0, 5.0, 1.0, 200.0]);
        let r: Vec<f64> = results(text).iter().map(|n| n.value).collect();
        assert_eq!(r, [13.0, 5.0]);
        assert_eq!(render(3.0), "3");
        assert_eq!(render(2.5), "2.5");
    }

    #[test]
    fn incorrect_solutions_differ_where_wrong_and_end_in_a_wrong_answer() {
        let p = problem();
        assert_eq!(
            correct_solution(&p),
            "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day.\n#### 18"
        );
        let wrong = incorrect_solutions(&p, 9, 7).unwrap();
        assert_eq!(wrong.len(), 9);
        assert_eq!(wrong, incorrect_solutions(&p, 9, 7).unwrap(), "seeded");
        let distinct: BTreeSet<&String> = wrong.iter().collect();
        assert_eq!(distinct.len(), 9);
        for w in &wrong {
            let answer: f64 = w.rsplit("#### ").next().unwrap().parse().unwrap();
            assert_ne!(answer, 18.0, "{w}");
            // The text keeps the problem's wording: only numbers change.
            let letters = |s: &str| s.chars().filter(|c| c.is_alphabetic()).collect::<String>();
            assert_eq!(letters(w), letters(&correct_solution(&p)), "{w}");
            // The answer's last mention is the wrong answer.
            assert!(!w.contains("$18 every"), "{w}");
        }
        let rows = math_probe_rows(&[p.clone(), p], 3, 1).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].rejected.len(), 3);
        assert_ne!(
            rows[0].rejected, rows[1].rejected,
            "each problem its own seed"
        );
        assert!(math_probe_rows(&rows_problems(), 0, 1).is_err());
    }

    fn rows_problems() -> Vec<Gsm8kProblem> {
        vec![problem()]
    }

    #[test]
    fn scores_follow_their_definitions() {
        // Problem 1: correct 2.0 beats both (rank 1). Problem 2: correct 1.0, one wrong ties
        // it and one beats it → rank 3 (ties count against).
        let s = math_probe_scores(&[(2.0, vec![1.0, 0.5]), (1.0, vec![1.0, 3.0])]).unwrap();
        assert_eq!(s.one_vs_all_accuracy, 0.5);
        assert!((s.mean_reciprocal_rank - (1.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(s.pairwise_accuracy, 0.5);
        assert!((s.chance_one_vs_all - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.chance_mrr - (1.0 + 0.5 + 1.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!(math_probe_scores(&[]).is_err());
        assert!(math_probe_scores(&[(1.0, vec![0.0]), (1.0, vec![0.0, 1.0])]).is_err());
    }
}
