//! Preference pairs as policy token sequences: each pair's prompt rendered once with the
//! policy's chat template and followed by the chosen and by the rejected response, the response
//! tokens flagged as the completion ([`Policy::encode`]).

use anyhow::{Context, Result};
use rm_core::models::policy_folder::Policy;
use rm_core::tokenize::Sequence;
use rm_core::types::PreferencePair;

/// One pair, tokenized.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedPair {
    pub chosen: Sequence,
    pub rejected: Sequence,
    /// The responses' scores `[chosen, rejected]`, when the pair has them (CoPG, A-LoL).
    pub scores: Option<[f32; 2]>,
    /// A response the reference sampled for the pair's prompt (SELM), on the same prompt cut.
    pub sampled: Option<Sequence>,
    /// Token-level rewards of the chosen and the rejected sequence (T-REG), one per position
    /// `t` predicting token `t + 1` (`len − 1` each), 0 off the completion.
    pub token_rewards: Option<[Vec<f32>; 2]>,
}

impl EncodedPair {
    /// The longest of the pair's sequences.
    pub fn len(&self) -> usize {
        let sampled = self.sampled.as_ref().map_or(0, Sequence::len);
        self.chosen.len().max(self.rejected.len()).max(sampled)
    }

    /// Whether both sequences are empty (never, for pairs from [`encode_pairs`]).
    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty() && self.rejected.is_empty()
    }

    /// Whether either sequence lost tokens to `max_len` (it is `max_len` long).
    pub fn reaches(&self, max_len: usize) -> bool {
        self.len() >= max_len
    }
}

/// Encodes `pairs` from `source` (named in errors with the pair's 1-based number).
pub fn encode_pairs(
    policy: &Policy,
    pairs: &[PreferencePair],
    source: &str,
) -> Result<Vec<EncodedPair>> {
    pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // One prompt cut for both responses (see `Policy::encode_shared`).
            let [chosen, rejected]: [Sequence; 2] = policy
                .encode_shared(&p.prompt, &[&p.chosen, &p.rejected])
                .with_context(|| {
                    format!(
                        "{source}: pair {} (0-based {i}; response 1 = chosen, 2 = rejected)",
                        i + 1
                    )
                })?
                .try_into()
                .map_err(|_| anyhow::anyhow!("two responses gave other than two sequences"))?;
            Ok(EncodedPair {
                chosen,
                rejected,
                scores: p.scores,
                sampled: None,
                token_rewards: None,
            })
        })
        .collect()
}
