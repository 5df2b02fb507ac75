//! Reward-augmented preference data (the recipe's `[reward_augment]` section): scored training
//! pairs become reward-conditioned pairs, both orderings
//! ([`rm_losses::preference::reward_augment`], Zhang et al. 2024, "Reward-Augmented Data
//! Enhances Direct Preference Alignment of LLMs"), before any objective of the DPO family trains
//! on them. Scores come from the pairs (`scores: [chosen, rejected]`) or the recipe's
//! `[[reward]]` functions, as for CoPG ([`super::scored`]); the evaluation pairs stay as they
//! are (the report compares the policy on the task itself).
//!
//! Where the condition goes: a text prompt gets the score instruction before it, as in the
//! paper; a conversation gets it at the start of its *last user turn* — the turn the response
//! answers, and the part of a long multi-turn prompt that survives the left cut to `max_len`
//! (a system turn at the top would be the first thing cut).

use anyhow::{Result, bail};
use rm_core::types::{PreferencePair, Prompt, Role};
use rm_losses::preference::{ScoredPair, condition_on_score, reward_augment};
use serde::{Deserialize, Serialize};

/// The `[reward_augment]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardAugmentConfig {
    /// Keep each original, unconditioned pair beside its two conditioned ones.
    pub keep_original: bool,
    /// Map the scores linearly onto the instruction's 1–10 scale, the lowest score of the
    /// training pairs to 1 and the highest to 10 (a reward model's scores have no fixed
    /// range); `false` writes the scores as they are.
    pub rescale: bool,
    /// Decimals the written score keeps.
    pub decimals: u32,
}

impl Default for RewardAugmentConfig {
    fn default() -> Self {
        Self {
            keep_original: true,
            rescale: true,
            decimals: 1,
        }
    }
}

impl RewardAugmentConfig {
    pub fn validate(&self) -> Result<()> {
        if self.decimals > 6 {
            bail!(
                "reward_augment.decimals must be at most 6, got {}",
                self.decimals
            );
        }
        Ok(())
    }
}

/// `prompt` conditioned on the target `score` (see the module docs).
pub fn condition_prompt(prompt: &Prompt, score: f32) -> Prompt {
    match prompt {
        Prompt::Text(t) => Prompt::Text(condition_on_score(t, score)),
        Prompt::Conversation(c) => {
            let mut c = c.clone();
            match c.turns.iter_mut().rev().find(|t| t.role == Role::User) {
                Some(turn) => turn.content = condition_on_score(&turn.content, score),
                None => c.turns.insert(
                    0,
                    rm_core::types::Turn::new(Role::User, condition_on_score("", score)),
                ),
            }
            Prompt::Conversation(c)
        }
    }
}

/// The reward-conditioned training pairs of `pairs` (every pair scored; `source` is named in
/// errors).
pub fn augment_pairs(
    pairs: &[PreferencePair],
    config: &RewardAugmentConfig,
    source: &str,
) -> Result<Vec<PreferencePair>> {
    let mut scored = Vec::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        let Some([chosen, rejected]) = p.scores else {
            bail!("{source}: pair {} has no scores to condition on", i + 1);
        };
        scored.push(ScoredPair {
            prompt: p.prompt.clone(),
            chosen: p.chosen.clone(),
            rejected: p.rejected.clone(),
            score_chosen: chosen,
            score_rejected: rejected,
        });
    }
    let (lo, hi) = scored
        .iter()
        .flat_map(|p| [p.score_chosen, p.score_rejected])
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| {
            (lo.min(s), hi.max(s))
        });
    let unit = 10f32.powi(config.decimals as i32);
    let write = |s: f32| {
        let s = match config.rescale {
            true if hi > lo => 1.0 + 9.0 * (s - lo) / (hi - lo),
            true => 5.5,
            false => s,
        };
        (s * unit).round() / unit
    };
    let mut out = Vec::with_capacity(scored.len() * 3);
    for (i, pair) in scored.iter().enumerate() {
        let rows = reward_augment(
            std::slice::from_ref(pair),
            |prompt, score| condition_prompt(prompt, write(score)),
            config.keep_original,
        )
        .map_err(|e| anyhow::anyhow!("{source}: pair {}: {e}", i + 1))?;
        // Each row keeps its responses' scores, in its own order.
        out.extend(rows.into_iter().map(|r| {
            let flipped = r.chosen != pair.chosen;
            PreferencePair {
                prompt: r.prompt,
                chosen: r.chosen,
                rejected: r.rejected,
                margin: None,
                subset: None,
                scores: Some(match flipped {
                    false => [pair.score_chosen, pair.score_rejected],
                    true => [pair.score_rejected, pair.score_chosen],
                }),
            }
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::types::{Conversation, Turn};

    fn pair(prompt: Prompt, scores: Option<[f32; 2]>) -> PreferencePair {
        PreferencePair {
            prompt,
            chosen: "good".into(),
            rejected: "bad".into(),
            margin: None,
            subset: None,
            scores,
        }
    }

    /// Scores −1, 0.5 and 2 map onto 1, 5.5 and 10; each scored pair gives its original row
    /// and both conditioned orderings; a conversation is conditioned in its last user turn.
    #[test]
    fn pairs_become_both_conditioned_orderings_on_the_one_to_ten_scale() {
        let chat = Prompt::Conversation(Conversation::new(vec![
            Turn::new(Role::User, "first"),
            Turn::new(Role::Assistant, "reply"),
            Turn::new(Role::User, "second"),
        ]));
        let pairs = vec![
            pair(Prompt::Text("x".into()), Some([2.0, -1.0])),
            pair(chat, Some([0.5, 0.5])),
        ];
        let rows = augment_pairs(&pairs, &RewardAugmentConfig::default(), "test").unwrap();
        // Pair 1: original + 2 conditioned; pair 2 (equal scores): original only.
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].prompt, Prompt::Text("x".into()));
        assert_eq!(rows[1].prompt, Prompt::Text(condition_on_score("x", 10.0)));
        assert_eq!(
            (rows[1].chosen.as_str(), rows[1].rejected.as_str()),
            ("good", "bad")
        );
        assert_eq!(rows[2].prompt, Prompt::Text(condition_on_score("x", 1.0)));
        assert_eq!(
            (rows[2].chosen.as_str(), rows[2].rejected.as_str()),
            ("bad", "good")
        );
        assert_eq!(rows[2].scores, Some([-1.0, 2.0]));
        assert_eq!(rows[3].prompt, pairs[1].prompt);
        // Raw scores, one decimal, no originals.
        let raw = RewardAugmentConfig {
            keep_original: false,
            rescale: false,
            decimals: 1,
        };
        let pairs = vec![pair(pairs[1].prompt.clone(), Some([0.74, -0.26]))];
        let rows = augment_pairs(&pairs, &raw, "test").unwrap();
        assert_eq!(rows.len(), 2);
        let Prompt::Conversation(c) = &rows[0].prompt else {
            panic!("a conversation stays one");
        };
        assert_eq!(c.turns[0].content, "first");
        assert_eq!(c.turns[2].content, condition_on_score("second", 0.7));
        let Prompt::Conversation(c) = &rows[1].prompt else {
            panic!("a conversation stays one");
        };
        assert!(c.turns[2].content.contains("Overall score: -0.3\n\nsecond"));
        let err = augment_pairs(&[pair(Prompt::Text("x".into()), None)], &raw, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("test: pair 1 has no scores"), "{err}");
    }
}
