//! Scores for the responses of preference pairs, for the objectives that read them (CoPG,
//! A-LoL): a pair keeps the `scores: [chosen, rejected]` its source gave; a pair without them
//! is scored by the recipe's `[[reward]]` functions (the reward registry of `train-rl`: a
//! reward-model folder, GSM8K correctness, length, …, weighted and clipped as there), the score
//! being the weighted total.

use anyhow::{Result, bail};
use rm_core::types::PreferencePair;

use crate::online::rewards::{RewardSample, RewardSet};

/// Pairs scored per call of the reward functions (a progress line each).
const PAIRS_PER_CALL: usize = 64;

/// Gives every pair of `pairs` (from `source`, named in errors) its scores: the pairs that have
/// none are scored by `rewards`. Returns how many pairs were scored here.
///
/// Errors: a pair without scores and no `rewards`; a reward function failing on a response
/// (the pair, the response and the function's message are named); non-finite given scores.
pub fn fill_scores(
    pairs: &mut [PreferencePair],
    rewards: Option<&RewardSet>,
    source: &str,
) -> Result<usize> {
    for (i, p) in pairs.iter().enumerate() {
        if let Some(s) = p.scores
            && !s.iter().all(|v| v.is_finite())
        {
            bail!("{source}: pair {} has non-finite scores {s:?}", i + 1);
        }
    }
    let missing: Vec<usize> = (0..pairs.len())
        .filter(|&i| pairs[i].scores.is_none())
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let Some(rewards) = rewards else {
        bail!(
            "{source}: pair {} (and {} more) has no scores; the objective needs a score for each response: give each row `scores: [chosen, rejected]`, or add [[reward]] tables to the recipe to score the pairs",
            missing[0] + 1,
            missing.len() - 1
        );
    };
    for (done, chunk) in missing.chunks(PAIRS_PER_CALL).enumerate() {
        let samples: Vec<RewardSample<'_>> = chunk
            .iter()
            .flat_map(|&i| {
                let p = &pairs[i];
                [&p.chosen, &p.rejected].map(|response| RewardSample {
                    prompt: &p.prompt,
                    completion: response,
                    references: &[],
                    truncated: false,
                })
            })
            .collect();
        let scored = rewards.score(&samples);
        let mut values = Vec::with_capacity(chunk.len());
        for (&i, both) in chunk.iter().zip(scored.chunks_exact(2)) {
            let mut pair = [0f32; 2];
            for (slot, (s, which)) in pair.iter_mut().zip(both.iter().zip(["chosen", "rejected"])) {
                *slot = match s.total {
                    Some(v) => v,
                    None => bail!(
                        "{source}: pair {}, {which} response: no score ({})",
                        i + 1,
                        s.errors.join("; ")
                    ),
                };
            }
            values.push(pair);
        }
        for (&i, v) in chunk.iter().zip(values) {
            pairs[i].scores = Some(v);
        }
        eprintln!(
            "{source}: scored {} of {} pairs",
            (done * PAIRS_PER_CALL + chunk.len()).min(missing.len()),
            missing.len()
        );
    }
    Ok(missing.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::online::rewards::{RewardComponent, RewardError, RewardFunction};
    use rm_core::types::Prompt;

    /// The response's length in characters; fails on a response containing "boom".
    struct Chars;

    impl RewardFunction for Chars {
        fn name(&self) -> &str {
            "chars"
        }
        fn score_batch(&self, samples: &[RewardSample<'_>]) -> Vec<Result<f32, RewardError>> {
            samples
                .iter()
                .map(|s| match s.completion.contains("boom") {
                    true => Err(RewardError::Model("it threw".into())),
                    false => Ok(s.completion.chars().count() as f32),
                })
                .collect()
        }
    }

    fn pair(chosen: &str, rejected: &str, scores: Option<[f32; 2]>) -> PreferencePair {
        PreferencePair {
            prompt: Prompt::Text("q".into()),
            chosen: chosen.into(),
            rejected: rejected.into(),
            margin: None,
            subset: None,
            scores,
        }
    }

    fn chars_times(weight: f64) -> RewardSet {
        RewardSet::from_components(vec![RewardComponent {
            name: "chars".into(),
            weight,
            clip: Some([0.0, 5.0]),
            function: Box::new(Chars),
        }])
        .unwrap()
    }

    #[test]
    fn pairs_without_scores_get_the_weighted_clipped_total_and_given_scores_stay() {
        let mut pairs = vec![
            pair("abc", "a", None),
            pair("x", "y", Some([7.0, -1.0])),
            pair("abcdefgh", "ab", None),
        ];
        let n = fill_scores(&mut pairs, Some(&chars_times(0.5)), "t.jsonl").unwrap();
        assert_eq!(n, 2);
        // 0.5 × min(len, 5).
        assert_eq!(pairs[0].scores, Some([1.5, 0.5]));
        assert_eq!(pairs[1].scores, Some([7.0, -1.0]));
        assert_eq!(pairs[2].scores, Some([2.5, 1.0]));
    }

    #[test]
    fn missing_scores_without_rewards_a_failing_function_and_nan_scores_are_errors() {
        let mut pairs = vec![pair("a", "b", Some([1.0, 0.0])), pair("a", "b", None)];
        let err = fill_scores(&mut pairs, None, "t.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.jsonl: pair 2 (and 0 more) has no scores"),
            "{err}"
        );
        let mut pairs = vec![pair("a", "b", None), pair("fine", "boom", None)];
        let err = fill_scores(&mut pairs, Some(&chars_times(1.0)), "t.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pair 2, rejected response: no score (chars: reward model: it threw)"),
            "{err}"
        );
        let mut pairs = vec![pair("a", "b", Some([f32::NAN, 0.0]))];
        let err = fill_scores(&mut pairs, Some(&chars_times(1.0)), "t.jsonl")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pair 1 has non-finite scores"), "{err}");
    }
}
