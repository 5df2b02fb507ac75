//! A synthetic multi-population preference set built from preference pairs (HH-RLHF): each
//! population labels the same pairs by its own rule, each synthetic user belongs to one
//! population and has a few labelled context pairs (what a personalized model may read about the
//! user) and query pairs (what it is scored on).
//!
//! Rules: [`PreferenceRule::Chosen`] prefers the dataset's chosen response (HH harmless-base:
//! the more harmless one); [`PreferenceRule::Longer`] prefers the response with more
//! whitespace-separated words (pairs of equal length are left out of every user's pool, so every
//! population labels every pooled pair).

use anyhow::{Result, bail};
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// What a rule needs to know about a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairInfo {
    pub chosen_words: usize,
    pub rejected_words: usize,
}

impl PairInfo {
    pub fn new(chosen: &str, rejected: &str) -> Self {
        Self {
            chosen_words: chosen.split_whitespace().count(),
            rejected_words: rejected.split_whitespace().count(),
        }
    }
}

/// How one population labels a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreferenceRule {
    /// The dataset's chosen response is preferred.
    Chosen,
    /// The response with more words is preferred (undecided on equal lengths).
    Longer,
}

impl PreferenceRule {
    /// `Some(true)` when the pair's chosen response is preferred, `None` when undecided.
    pub fn prefers_chosen(self, p: &PairInfo) -> Option<bool> {
        match self {
            PreferenceRule::Chosen => Some(true),
            PreferenceRule::Longer => {
                (p.chosen_words != p.rejected_words).then_some(p.chosen_words > p.rejected_words)
            }
        }
    }
}

/// The `[population]` recipe section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopulationConfig {
    /// One rule per population.
    #[serde(default = "default_rules")]
    pub rules: Vec<PreferenceRule>,
    #[serde(default = "default_users")]
    pub users_per_population: usize,
    /// Labelled pairs a model may read per user.
    #[serde(default = "default_context")]
    pub context: usize,
    /// Pairs each user is scored on.
    #[serde(default = "default_query")]
    pub query: usize,
    #[serde(default)]
    pub seed: u64,
}

fn default_rules() -> Vec<PreferenceRule> {
    vec![PreferenceRule::Chosen, PreferenceRule::Longer]
}
fn default_users() -> usize {
    100
}
fn default_context() -> usize {
    8
}
fn default_query() -> usize {
    16
}

/// One labelled pair of a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelledPair {
    /// Index into the pair list.
    pub pair: usize,
    /// Whether the user prefers the pair's (dataset) chosen response.
    pub chosen_preferred: bool,
    /// Whether the populations' rules disagree on this pair.
    pub conflicting: bool,
}

/// A synthetic user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyntheticUser {
    pub population: usize,
    pub context: Vec<LabelledPair>,
    pub query: Vec<LabelledPair>,
}

/// Indices of the pairs every rule decides.
pub fn decided_pairs(pairs: &[PairInfo], rules: &[PreferenceRule]) -> Vec<usize> {
    (0..pairs.len())
        .filter(|&i| rules.iter().all(|r| r.prefers_chosen(&pairs[i]).is_some()))
        .collect()
}

/// The fraction of decided pairs on which all rules agree.
pub fn agreement(pairs: &[PairInfo], rules: &[PreferenceRule]) -> f64 {
    let decided = decided_pairs(pairs, rules);
    if decided.is_empty() {
        return 0.0;
    }
    let agree = decided
        .iter()
        .filter(|&&i| {
            let labels: Vec<bool> = rules
                .iter()
                .filter_map(|r| r.prefers_chosen(&pairs[i]))
                .collect();
            labels.windows(2).all(|w| w[0] == w[1])
        })
        .count();
    agree as f64 / decided.len() as f64
}

/// Draws `users_per_population` users per rule, each with `context + query` distinct pairs from
/// the decided pool, labelled by its population's rule. `seed_offset` separates the train and
/// test draws of one config.
pub fn build_users(
    pairs: &[PairInfo],
    config: &PopulationConfig,
    seed_offset: u64,
) -> Result<Vec<SyntheticUser>> {
    if config.rules.len() < 2 {
        bail!(
            "population.rules: {} rule(s); the test needs at least two populations",
            config.rules.len()
        );
    }
    if config.context == 0 || config.query == 0 || config.users_per_population == 0 {
        bail!("population: users_per_population, context and query must all be > 0");
    }
    let pool = decided_pairs(pairs, &config.rules);
    let need = config.context + config.query;
    if pool.len() < need {
        bail!(
            "population: {} of {} pairs are decided by every rule, fewer than the {need} (context + query) a user needs",
            pool.len(),
            pairs.len()
        );
    }
    let mut rng = StdRng::seed_from_u64(
        config
            .seed
            .wrapping_mul(0x9e37_79b9)
            .wrapping_add(seed_offset),
    );
    let mut users = Vec::new();
    for (population, rule) in config.rules.iter().enumerate() {
        for _ in 0..config.users_per_population {
            // A partial Fisher–Yates shuffle: `need` distinct pairs.
            let mut idx = pool.clone();
            for i in 0..need {
                let j = rng.random_range(i..idx.len());
                idx.swap(i, j);
            }
            let picked = &idx[..need];
            let label = |&i: &usize| {
                let labels: Vec<bool> = config
                    .rules
                    .iter()
                    .filter_map(|r| r.prefers_chosen(&pairs[i]))
                    .collect();
                LabelledPair {
                    pair: i,
                    chosen_preferred: rule.prefers_chosen(&pairs[i]).expect("decided pool"),
                    conflicting: labels.windows(2).any(|w| w[0] != w[1]),
                }
            };
            users.push(SyntheticUser {
                population,
                context: picked[..config.context].iter().map(label).collect(),
                query: picked[config.context..].iter().map(label).collect(),
            });
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs() -> Vec<PairInfo> {
        vec![
            PairInfo::new("a b c", "a"),   // chosen longer: rules agree
            PairInfo::new("a", "a b c d"), // rejected longer: rules conflict
            PairInfo::new("a b", "c d"),   // tie: undecided for Longer
            PairInfo::new("x", "y z"),     // conflict
        ]
    }

    #[test]
    fn rules_label_as_documented() {
        let p = pairs();
        assert_eq!(PreferenceRule::Chosen.prefers_chosen(&p[1]), Some(true));
        assert_eq!(PreferenceRule::Longer.prefers_chosen(&p[0]), Some(true));
        assert_eq!(PreferenceRule::Longer.prefers_chosen(&p[1]), Some(false));
        assert_eq!(PreferenceRule::Longer.prefers_chosen(&p[2]), None);
        let rules = default_rules();
        assert_eq!(decided_pairs(&p, &rules), vec![0, 1, 3]);
        assert!((agreement(&p, &rules) - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn users_get_distinct_pairs_labelled_by_their_population() {
        let p = pairs();
        let config = PopulationConfig {
            users_per_population: 5,
            context: 2,
            query: 1,
            ..toml::from_str("").unwrap()
        };
        let users = build_users(&p, &config, 0).unwrap();
        assert_eq!(users.len(), 10);
        for u in &users {
            let mut all: Vec<usize> = u.context.iter().chain(&u.query).map(|l| l.pair).collect();
            assert!(!all.contains(&2), "the tie is never used");
            all.sort();
            all.dedup();
            assert_eq!(all.len(), 3);
            for l in u.context.iter().chain(&u.query) {
                let want = if u.population == 0 {
                    true
                } else {
                    p[l.pair].chosen_words > p[l.pair].rejected_words
                };
                assert_eq!(l.chosen_preferred, want);
                assert_eq!(l.conflicting, l.pair != 0);
            }
        }
        assert_eq!(users[0].population, 0);
        assert_eq!(users[9].population, 1);
        let too_many = PopulationConfig {
            context: 3,
            ..config
        };
        assert!(
            build_users(&p, &too_many, 0)
                .unwrap_err()
                .to_string()
                .contains("fewer than the 4")
        );
    }
}
