//! Goal-conditioned contrastive representations for reward models (a recipe's
//! `[goal_conditioned]` section): Nath et al. 2024, "Learning Goal-Conditioned Representations
//! for Language Reward Models".
//!
//! Beside the pairwise objective, the reward model's last hidden states are trained so that a
//! state on the preferred response is similar to a *later* state of that response (a goal it
//! reaches) and a state on the dispreferred response is not similar to that goal. For a pair
//! whose token sequences share the prompt up to position `d`, draw
//! - a goal position `g` and a source position `t` with `d ≤ t < g` on the chosen sequence,
//! - a source position `t'` with `t' ≥ d` on the rejected sequence,
//!
//! and with `s(a, b) = cos(a, b) / τ`:
//!
//! ```text
//! L_goal = −log σ(s(h⁺_t, h⁺_g)) − log(1 − σ(s(h⁻_t', h⁺_g)))
//! L      = L_pairwise + λ · mean over the drawn triples of L_goal
//! ```
//!
//! `s(h_t, h_g)` then reads as a goal-conditioned value: how likely the text so far reaches a
//! preferred end. Stated readings: the paper describes the positives as "future states along
//! preferred trajectories" and the negatives as "randomly sampled dispreferred trajectories";
//! pairing the dispreferred source with the *preferred* goal, the cosine similarity and the
//! temperature `τ` are this implementation's choices. With a bidirectional encoder (MiniLM)
//! every state sees the whole text, so "future" is weaker than with a causal backbone.
//!
//! ```toml
//! [goal_conditioned]
//! weight = 0.5        # λ
//! temperature = 0.1   # τ
//! samples_per_pair = 2
//! ```

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rm_core::burn::tensor::activation::softplus;
use rm_core::burn::tensor::{Int, Tensor, TensorData};
use rm_core::tokenize::Sequence;
use serde::{Deserialize, Serialize};

/// The `[goal_conditioned]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalConditionedConfig {
    /// λ, the contrastive term's weight beside the pairwise objective.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// τ: cosine similarities are divided by it before the sigmoid.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// (source, goal, negative source) triples drawn per pair and step.
    #[serde(default = "default_samples")]
    pub samples_per_pair: usize,
    /// Seeds the draws (with the step's pair indices, so a resumed run draws the same).
    #[serde(default)]
    pub seed: u64,
}

fn default_weight() -> f64 {
    0.5
}
fn default_temperature() -> f64 {
    0.1
}
fn default_samples() -> usize {
    2
}

impl GoalConditionedConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.weight.is_finite() && self.weight > 0.0) {
            bail!("goal_conditioned.weight {} must be > 0", self.weight);
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            bail!(
                "goal_conditioned.temperature {} must be > 0",
                self.temperature
            );
        }
        if self.samples_per_pair == 0 {
            bail!("goal_conditioned.samples_per_pair must be at least 1");
        }
        Ok(())
    }
}

/// One drawn triple, as positions in a batch whose first `B` rows are the chosen sequences
/// and the next `B` the rejected ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoalTriple {
    pub pair: usize,
    /// `t` on the chosen sequence.
    pub source: usize,
    /// `g > t` on the chosen sequence.
    pub goal: usize,
    /// `t'` on the rejected sequence.
    pub negative: usize,
}

/// Where the two sequences stop sharing tokens (the responses' first differing position).
fn divergence(chosen: &[u32], rejected: &[u32]) -> usize {
    chosen
        .iter()
        .zip(rejected)
        .take_while(|(a, b)| a == b)
        .count()
}

/// Draws `samples` triples per pair (see the module doc). A pair whose chosen response has
/// fewer than two tokens past the shared prefix, or whose rejected response has none, gets
/// none. `key` seeds the draws (the step's pair indices, so a resumed run draws the same).
pub fn draw_triples(
    pairs: &[(&Sequence, &Sequence)],
    samples: usize,
    seed: u64,
    key: &[usize],
) -> Vec<GoalTriple> {
    let mixed = key.iter().fold(seed ^ 0x9E37_79B9_7F4A_7C15, |h, &i| {
        (h ^ i as u64).wrapping_mul(0x100_0000_01B3)
    });
    let mut rng = StdRng::seed_from_u64(mixed);
    let mut out = Vec::new();
    for (pair, (chosen, rejected)) in pairs.iter().enumerate() {
        let (lc, lr) = (chosen.ids.len(), rejected.ids.len());
        let d = divergence(&chosen.ids, &rejected.ids);
        if lc < d + 2 || lr < d + 1 {
            continue;
        }
        for _ in 0..samples {
            let goal = rng.random_range(d + 1..lc);
            out.push(GoalTriple {
                pair,
                source: rng.random_range(d..goal),
                goal,
                negative: rng.random_range(d..lr),
            });
        }
    }
    out
}

/// The contrastive term and its accuracy (the fraction of triples with `s⁺ > s⁻`), both `[1]`,
/// from the last hidden states `[2B, T, D]` of the chosen then rejected sequences. `None` when
/// there is no triple.
pub fn goal_loss(
    hidden: Tensor<3>,
    triples: &[GoalTriple],
    temperature: f64,
) -> Option<(Tensor<1>, Tensor<1>)> {
    if triples.is_empty() {
        return None;
    }
    let [rows, t, d] = hidden.dims();
    let b = rows / 2;
    let device = hidden.device();
    let flat = hidden.reshape([rows * t, d]);
    let pick = |index: &dyn Fn(&GoalTriple) -> usize| {
        let idx: Vec<i64> = triples.iter().map(|x| index(x) as i64).collect();
        let n = idx.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &device);
        unit_rows(flat.clone().select(0, idx))
    };
    let source = pick(&|x| x.pair * t + x.source);
    let goal = pick(&|x| x.pair * t + x.goal);
    let negative = pick(&|x| (b + x.pair) * t + x.negative);
    let n = triples.len();
    let positive = (source * goal.clone()).sum_dim(1).reshape([n]) / temperature;
    let negative = (negative * goal).sum_dim(1).reshape([n]) / temperature;
    let accuracy = (positive.clone() - negative.clone())
        .greater_elem(0.0)
        .float()
        .mean();
    // −log σ(x) = softplus(−x); −log(1 − σ(x)) = softplus(x).
    let loss = (softplus(positive.neg(), 1.0) + softplus(negative, 1.0)).mean();
    Some((loss, accuracy))
}

/// Rows scaled to unit length.
fn unit_rows(x: Tensor<2>) -> Tensor<2> {
    let norm = (x.clone() * x.clone()).sum_dim(1).add_scalar(1e-12).sqrt();
    x / norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use rm_core::burn::tensor::Device;

    fn seq(ids: &[u32]) -> Sequence {
        Sequence::from_ids(ids.to_vec())
    }

    #[test]
    fn triples_stay_past_the_shared_prompt_and_goals_follow_sources() {
        let chosen = seq(&[1, 2, 3, 10, 11, 12, 13]);
        let rejected = seq(&[1, 2, 3, 20, 21]);
        let short = seq(&[1, 2, 3, 10]); // one token past the prompt: no goal after a source
        let same = seq(&[1, 2, 3]);
        let pairs = [(&chosen, &rejected), (&short, &rejected), (&chosen, &same)];
        let triples = draw_triples(&pairs, 50, 3, &[4, 5, 6]);
        assert_eq!(triples.len(), 50);
        for x in &triples {
            assert_eq!(x.pair, 0);
            assert!(3 <= x.source && x.source < x.goal && x.goal < 7, "{x:?}");
            assert!((3..5).contains(&x.negative), "{x:?}");
        }
        // Every allowed goal and negative position is drawn.
        let goals: std::collections::BTreeSet<usize> = triples.iter().map(|x| x.goal).collect();
        assert_eq!(goals.into_iter().collect::<Vec<_>>(), vec![4, 5, 6]);
        // Seeded by (seed, key): the same draws again, other draws for another step.
        assert_eq!(triples, draw_triples(&pairs, 50, 3, &[4, 5, 6]));
        assert_ne!(triples, draw_triples(&pairs, 50, 3, &[7, 8, 9]));
    }

    /// The naive per-triple formula, in f64.
    fn naive(h: &[Vec<Vec<f64>>], triples: &[GoalTriple], tau: f64) -> (f64, f64) {
        let cos = |a: &[f64], b: &[f64]| {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
            dot / (na * nb)
        };
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let b = h.len() / 2;
        let (mut loss, mut wins) = (0.0, 0.0);
        for x in triples {
            let goal = &h[x.pair][x.goal];
            let pos = cos(&h[x.pair][x.source], goal) / tau;
            let neg = cos(&h[b + x.pair][x.negative], goal) / tau;
            loss += -sigmoid(pos).ln() - (1.0 - sigmoid(neg)).ln();
            wins += f64::from(u8::from(pos > neg));
        }
        let n = triples.len() as f64;
        (loss / n, wins / n)
    }

    fn hidden_values() -> Vec<Vec<Vec<f64>>> {
        // 2 pairs → 4 rows, 3 positions, 3 dims.
        (0..4)
            .map(|r| {
                (0..3)
                    .map(|p| {
                        (0..3)
                            .map(|k| (((r * 7 + p * 5 + k * 3) % 11) as f64 - 5.0) / 4.0 + 0.1)
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    fn tensor(h: &[Vec<Vec<f64>>], device: &Device) -> Tensor<3> {
        let flat: Vec<f32> = h.iter().flatten().flatten().map(|&v| v as f32).collect();
        Tensor::from_data(TensorData::new(flat, [4, 3, 3]), device)
    }

    const TRIPLES: [GoalTriple; 3] = [
        GoalTriple {
            pair: 0,
            source: 0,
            goal: 2,
            negative: 1,
        },
        GoalTriple {
            pair: 1,
            source: 1,
            goal: 2,
            negative: 0,
        },
        GoalTriple {
            pair: 1,
            source: 0,
            goal: 1,
            negative: 2,
        },
    ];

    #[test]
    fn the_loss_matches_the_naive_formula() {
        let device = rm_core::device::test_device();
        let h = hidden_values();
        for tau in [0.1, 1.0] {
            let (loss, accuracy) = goal_loss(tensor(&h, &device), &TRIPLES, tau).unwrap();
            let (want_loss, want_accuracy) = naive(&h, &TRIPLES, tau);
            let got = loss.into_scalar::<f32>() as f64;
            assert!(
                (got - want_loss).abs() < 1e-4 * want_loss.max(1.0),
                "{got} vs {want_loss}"
            );
            assert_eq!(accuracy.into_scalar::<f32>() as f64, want_accuracy);
        }
        assert!(goal_loss(tensor(&h, &device), &[], 0.1).is_none());
    }

    #[test]
    fn gradients_match_finite_differences() {
        let device = rm_core::device::test_device().autodiff();
        let h = hidden_values();
        let tau = 0.5;
        let x = tensor(&h, &device).require_grad();
        let (loss, _) = goal_loss(x.clone(), &TRIPLES, tau).unwrap();
        let grads = loss.backward();
        let g: Vec<f32> = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        let eps = 1e-4;
        for (r, p, k) in [
            (0, 0, 1),
            (0, 2, 0),
            (2, 1, 2),
            (3, 2, 1),
            (1, 1, 0),
            (3, 0, 0),
        ] {
            let mut up = h.clone();
            up[r][p][k] += eps;
            let mut down = h.clone();
            down[r][p][k] -= eps;
            let fd = (naive(&up, &TRIPLES, tau).0 - naive(&down, &TRIPLES, tau).0) / (2.0 * eps);
            let got = g[r * 9 + p * 3 + k] as f64;
            assert!((got - fd).abs() < 1e-3, "({r},{p},{k}): {got} vs {fd}");
        }
        // Position (0, 1) is in no triple: no gradient.
        assert_eq!(g[3..6], [0.0; 3]);
    }

    #[test]
    fn the_section_is_checked() {
        let ok = GoalConditionedConfig {
            weight: 0.5,
            temperature: 0.1,
            samples_per_pair: 2,
            seed: 0,
        };
        assert!(ok.validate().is_ok());
        let parsed: GoalConditionedConfig = toml::from_str("weight = 0.5").unwrap();
        assert_eq!(parsed, ok);
        for (bad, what) in [
            (
                GoalConditionedConfig {
                    weight: 0.0,
                    ..ok.clone()
                },
                "weight",
            ),
            (
                GoalConditionedConfig {
                    temperature: -1.0,
                    ..ok.clone()
                },
                "temperature",
            ),
            (
                GoalConditionedConfig {
                    samples_per_pair: 0,
                    ..ok.clone()
                },
                "samples_per_pair",
            ),
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
    }
}
