//! Advantage estimators (verl's `compute_*_advantage`), host-side on `[B][T]` f32 rows and
//! computed in f64.
//!
//! Inputs: `r_{i,t}` token-level rewards (an outcome reward sits on the last response token),
//! `m_{i,t}` the response mask, `g(i)` the prompt (group) of row `i`, and for some estimators
//! `V_{i,t}` (GAE) or `b_i` (ReMax). `s_i = Σ_t r_{i,t}` is row `i`'s score. Outcome estimators
//! broadcast one advantage per row over its response tokens (`A_{i,t} = a_i · m_{i,t}`).
//!
//! Edge cases, as verl: a group of one row has mean 0 and standard deviation 1 (GRPO, RLOO,
//! REINFORCE++-baseline, OPO leave its score as it is, up to GRPO's ε); a group whose scores are
//! all equal gets advantage 0; a row whose mask is empty gets an all-zero advantage row but its
//! score still counts in its group's statistics (GAE and REINFORCE++ leave their unmasked
//! entries as verl does). Whitening estimators need at least 2 response tokens in the batch.

use serde::{Deserialize, Serialize};

use super::AlgoError;
use super::error::invalid;
use super::process::{CreditAssignment, process_rloo_advantages};
use super::rows::{check_len, check_rows, groups, masked_whiten, mean_std, row_lengths, to_f32};

/// How GRPO scales the group-centred score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpoScale {
    /// Divide by the group's standard deviation (GRPO, verl's `norm_adv_by_std_in_grpo = true`).
    #[default]
    GroupStd,
    /// Divide by the standard deviation of every score of the batch (TRL's
    /// `scale_rewards = "batch"`; "Tricks or Traps? A Deep Dive into RL for LLM Reasoning",
    /// Liu et al. 2025).
    BatchStd,
    /// Do not scale (Dr. GRPO, verl's `norm_adv_by_std_in_grpo = false`).
    None,
}

fn default_epsilon() -> f64 {
    1e-6
}

/// A named advantage estimator, as a recipe's `[advantage]` table selects it
/// (`name = "grpo"`, …).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdvantageEstimator {
    /// Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous
    /// Control Using Generalized Advantage Estimation"):
    /// `δ_t = r_t + γ·V_{t+1} − V_t`, `Â_t = δ_t + γλ·Â_{t+1}`, returns `R_t = Â_t + V_t`,
    /// then `A = whiten(Â)` over the batch's response tokens. Positions off the mask are skipped
    /// (the next value and the running advantage carry over them), as verl.
    Gae {
        /// Discount γ in `[0, 1]`.
        gamma: f64,
        /// GAE λ in `[0, 1]`.
        lam: f64,
    },
    /// GRPO (Shao et al. 2024, "DeepSeekMath"): `a_i = (s_i − mean_g s) / (std_g s + ε)` with the
    /// unbiased group standard deviation; `scale = "none"` is Dr. GRPO (Liu et al. 2025,
    /// "Understanding R1-Zero-Like Training"): `a_i = s_i − mean_g s`; `scale = "batch_std"`
    /// divides by the standard deviation of all the batch's scores instead.
    Grpo {
        /// How the centred score is scaled (default: the group's standard deviation).
        #[serde(default)]
        scale: GrpoScale,
        /// ε added to the standard deviation (default 1e-6, as verl).
        #[serde(default = "default_epsilon")]
        epsilon: f64,
    },
    /// RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization"):
    /// the leave-one-out baseline, `a_i = s_i − mean_{j∈g, j≠i} s_j = n/(n−1)·(s_i − mean_g s)`;
    /// a group of one keeps `a_i = s_i`.
    Rloo,
    /// REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
    /// Language Models"): discounted returns `G_t = r_t + γ·G_{t+1}` (reset after the response
    /// ends), whitened over the batch's response tokens: `A = whiten(G)·m`, returns `G`.
    ReinforcePlusPlus {
        /// Discount γ in `[0, 1]`.
        gamma: f64,
    },
    /// REINFORCE++ with a group-mean baseline (Hu 2025): `a_i = s_i − mean_g s` broadcast over the
    /// response, then whitened over the batch's response tokens.
    ReinforcePlusPlusBaseline,
    /// ReMax (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning
    /// Method for Aligning Large Language Models"): returns `G_t = Σ_{t'≥t} r_{t'}·m_{t'}`,
    /// `A_t = G_t − b_i·m_t` with `b_i` the reward of the greedy response to the same prompt.
    Remax,
    /// OPO (Hao et al. 2025, "On-Policy RL with Optimal Reward Baseline"): the length-weighted
    /// group baseline `b_g = Σ_{j∈g} |y_j|·s_j / Σ_{j∈g} |y_j|`, `a_i = s_i − b_g` (a group of
    /// one, or one whose responses are all empty, has `b_g = 0`).
    Opo,
    /// Online RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation
    /// Model Alignment"): the `top_k` best-rewarded responses of each group get `a_i = 1`, the
    /// others 0 (ties to the earlier row). A group whose rewards are all equal (a group of one
    /// included) ranks nothing and selects nothing: with a verifiable 0/1 reward, fine-tuning on
    /// an arbitrary failed response of an all-failed group would teach the failure. With the on-policy ratio 1 the policy gradient is
    /// then exactly the fine-tuning gradient on the selected responses, `∇ Σ_{i∈top} log π(y_i)`
    /// under the chosen aggregation.
    Raft {
        /// Responses kept per group (≥ 1).
        #[serde(default = "one")]
        top_k: usize,
    },
    /// PURE's RLOO on process returns (Cheng et al. 2025, "Stop Summation: Min-Form Credit
    /// Assignment Is All Process Reward Model Needs for Reasoning"): token rewards carrying a
    /// PRM's step rewards (and any outcome reward on the last token), returns by `credit`
    /// (min form `G_t = min_{k≥t, s_k=1} r_k`, or sum form), minus the leave-one-out mean of
    /// the group's per-token mean returns; see [`super::process::process_rloo_advantages`].
    /// The min form reads `step_mask`.
    ProcessRloo {
        /// `{ form = "min" }` (default) or `{ form = "sum", gamma = 1.0 }`.
        #[serde(default)]
        credit: CreditAssignment,
    },
}

fn one() -> usize {
    1
}

/// The inputs of [`compute_advantages`]: `[B][T]` rows.
#[derive(Clone, Copy, Debug)]
pub struct AdvantageInput<'a> {
    /// `r_{i,t}`.
    pub token_level_rewards: &'a [Vec<f32>],
    /// `m_{i,t}`, 1 on response tokens.
    pub response_mask: &'a [Vec<f32>],
    /// group (prompt) id of each row; rows of a group need not be adjacent
    pub group: &'a [usize],
    /// The critic's values `V_{i,t}` (GAE).
    pub values: Option<&'a [Vec<f32>]>,
    /// The greedy rollout's reward `b_i` (ReMax).
    pub reward_baselines: Option<&'a [f32]>,
    /// `s_{i,t}`: 1 on the tokens that carry a process reward (step ends; min-form credit).
    pub step_mask: Option<&'a [Vec<f32>]>,
}

/// Advantages and returns, `[B][T]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Advantages {
    /// `A_{i,t}`.
    pub advantages: Vec<Vec<f32>>,
    /// The value targets (`A + V` for GAE, the returns for REINFORCE++ and ReMax, the advantages
    /// themselves for the outcome estimators, as verl).
    pub returns: Vec<Vec<f32>>,
}

impl AdvantageEstimator {
    /// The estimator's name, as in recipes and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Gae { .. } => "gae",
            Self::Grpo { .. } => "grpo",
            Self::Rloo => "rloo",
            Self::ReinforcePlusPlus { .. } => "reinforce_plus_plus",
            Self::ReinforcePlusPlusBaseline => "reinforce_plus_plus_baseline",
            Self::Remax => "remax",
            Self::Opo => "opo",
            Self::Raft { .. } => "raft",
            Self::ProcessRloo { .. } => "process_rloo",
        }
    }

    /// Whether the estimator groups rows by prompt (and so reads `group`).
    pub fn uses_groups(&self) -> bool {
        matches!(
            self,
            Self::Grpo { .. }
                | Self::Rloo
                | Self::ReinforcePlusPlusBaseline
                | Self::Opo
                | Self::Raft { .. }
                | Self::ProcessRloo { .. }
        )
    }

    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<(), AlgoError> {
        let what = self.name();
        let unit = |parameter, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(invalid(what, parameter, v, "a value in [0, 1]"))
            }
        };
        match *self {
            Self::Gae { gamma, lam } => {
                unit("gamma", gamma)?;
                unit("lam", lam)
            }
            Self::ReinforcePlusPlus { gamma } => unit("gamma", gamma),
            Self::ProcessRloo {
                credit: CreditAssignment::Sum { gamma },
            } => unit("gamma", gamma),
            Self::Raft { top_k: 0 } => Err(invalid(what, "top_k", 0.0, "at least 1")),
            Self::Grpo { epsilon, .. } if !(epsilon.is_finite() && epsilon >= 0.0) => {
                Err(invalid(what, "epsilon", epsilon, "a finite value >= 0"))
            }
            _ => Ok(()),
        }
    }
}

/// Computes advantages and returns with the named estimator (see [`AdvantageEstimator`] for each
/// formula). Errors: a hyper-parameter out of range; inputs of mismatched shapes (naming the
/// array); `values` missing for GAE or `reward_baselines` for ReMax; fewer than 2 response tokens
/// for the whitening estimators (GAE, REINFORCE++, REINFORCE++-baseline).
pub fn compute_advantages(
    estimator: &AdvantageEstimator,
    input: &AdvantageInput,
) -> Result<Advantages, AlgoError> {
    estimator.validate()?;
    let what = estimator.name();
    let b = input.token_level_rewards.len();
    let t = check_rows(
        what,
        "token_level_rewards",
        input.token_level_rewards,
        b,
        None,
    )?;
    check_rows(what, "response_mask", input.response_mask, b, Some(t))?;
    if estimator.uses_groups() {
        check_len(what, "group", input.group.len(), b)?;
    }
    let rewards = input.token_level_rewards;
    let mask = input.response_mask;
    match *estimator {
        AdvantageEstimator::Gae { gamma, lam } => {
            let values = input.values.ok_or(AlgoError::MissingInput {
                what,
                input: "values",
            })?;
            check_rows(what, "values", values, b, Some(t))?;
            gae(rewards, values, mask, gamma, lam)
        }
        AdvantageEstimator::ReinforcePlusPlus { gamma } => reinforce_pp(rewards, mask, gamma),
        AdvantageEstimator::Remax => {
            let baselines = input.reward_baselines.ok_or(AlgoError::MissingInput {
                what,
                input: "reward_baselines",
            })?;
            check_len(what, "reward_baselines", baselines.len(), b)?;
            Ok(remax(rewards, mask, baselines))
        }
        AdvantageEstimator::Grpo { scale, epsilon } => {
            let s = scores(rewards);
            let a = grpo_scores(&s, input.group, scale, epsilon);
            Ok(outcome(&a, mask))
        }
        AdvantageEstimator::Rloo => {
            let mut a = scores(rewards);
            for members in groups(input.group) {
                let n = members.len() as f64;
                if members.len() > 1 {
                    let mean = members.iter().map(|&i| a[i]).sum::<f64>() / n;
                    for &i in &members {
                        a[i] = (a[i] - mean) * n / (n - 1.0);
                    }
                }
            }
            Ok(outcome(&a, mask))
        }
        AdvantageEstimator::Opo => {
            let mut a = scores(rewards);
            let lens = row_lengths(mask);
            for members in groups(input.group) {
                let total: f64 = members.iter().map(|&i| lens[i]).sum();
                let baseline = if members.len() > 1 && total > 0.0 {
                    members.iter().map(|&i| lens[i] * a[i]).sum::<f64>() / total
                } else {
                    0.0
                };
                for &i in &members {
                    a[i] -= baseline;
                }
            }
            Ok(outcome(&a, mask))
        }
        AdvantageEstimator::Raft { top_k } => {
            let s = scores(rewards);
            let mut a = vec![0.0; b];
            for members in groups(input.group) {
                if members.iter().all(|&i| s[i] == s[members[0]]) {
                    continue;
                }
                let mut ranked = members.clone();
                // Best first; the stable sort keeps the earlier row first on ties.
                ranked.sort_by(|&i, &j| s[j].total_cmp(&s[i]));
                for &i in ranked.iter().take(top_k) {
                    a[i] = 1.0;
                }
            }
            Ok(outcome(&a, mask))
        }
        AdvantageEstimator::ProcessRloo { credit } => {
            let zeros;
            let steps = match (input.step_mask, credit) {
                (Some(s), _) => s,
                (None, CreditAssignment::Sum { .. }) => {
                    zeros = vec![vec![0.0; t]; b];
                    &zeros
                }
                (None, CreditAssignment::Min) => {
                    return Err(AlgoError::MissingInput {
                        what,
                        input: "step_mask",
                    });
                }
            };
            let adv = process_rloo_advantages(rewards, steps, mask, input.group, credit)?;
            Ok(Advantages {
                returns: adv.clone(),
                advantages: adv,
            })
        }
        AdvantageEstimator::ReinforcePlusPlusBaseline => {
            let mut a = scores(rewards);
            for members in groups(input.group) {
                let xs: Vec<f64> = members.iter().map(|&i| a[i]).collect();
                let (mean, _) = mean_std(&xs);
                for &i in &members {
                    a[i] -= mean;
                }
            }
            let tiled: Vec<Vec<f64>> = a
                .iter()
                .zip(mask)
                .map(|(&x, m)| m.iter().map(|&w| x * f64::from(w)).collect())
                .collect();
            let white = masked_whiten(what, &tiled, mask)?;
            let adv = to_f32(apply_mask(white, mask));
            Ok(Advantages {
                returns: adv.clone(),
                advantages: adv,
            })
        }
    }
}

/// `s_i = Σ_t r_{i,t}`.
fn scores(rewards: &[Vec<f32>]) -> Vec<f64> {
    rewards
        .iter()
        .map(|r| r.iter().map(|&x| f64::from(x)).sum())
        .collect()
}

/// GRPO's per-row advantage from the scores.
pub(crate) fn grpo_scores(s: &[f64], group: &[usize], scale: GrpoScale, epsilon: f64) -> Vec<f64> {
    let mut a = s.to_vec();
    let batch_std = mean_std(s).1;
    for members in groups(group) {
        let xs: Vec<f64> = members.iter().map(|&i| s[i]).collect();
        let (mean, std) = mean_std(&xs);
        for &i in &members {
            a[i] = match scale {
                GrpoScale::GroupStd => (s[i] - mean) / (std + epsilon),
                GrpoScale::BatchStd => (s[i] - mean) / (batch_std + epsilon),
                GrpoScale::None => s[i] - mean,
            };
        }
    }
    a
}

/// `a_i · m_{i,t}` as both advantages and returns.
fn outcome(a: &[f64], mask: &[Vec<f32>]) -> Advantages {
    let adv: Vec<Vec<f32>> = a
        .iter()
        .zip(mask)
        .map(|(&x, m)| m.iter().map(|&w| (x * f64::from(w)) as f32).collect())
        .collect();
    Advantages {
        returns: adv.clone(),
        advantages: adv,
    }
}

fn apply_mask(rows: Vec<Vec<f64>>, mask: &[Vec<f32>]) -> Vec<Vec<f64>> {
    rows.into_iter()
        .zip(mask)
        .map(|(r, m)| {
            r.into_iter()
                .zip(m)
                .map(|(x, &w)| x * f64::from(w))
                .collect()
        })
        .collect()
}

fn gae(
    rewards: &[Vec<f32>],
    values: &[Vec<f32>],
    mask: &[Vec<f32>],
    gamma: f64,
    lam: f64,
) -> Result<Advantages, AlgoError> {
    let b = rewards.len();
    let t = rewards.first().map_or(0, Vec::len);
    let mut adv = vec![vec![0.0f64; t]; b];
    let mut ret = vec![vec![0.0f64; t]; b];
    for i in 0..b {
        let mut next_value = 0.0;
        let mut last = 0.0;
        for k in (0..t).rev() {
            let v = f64::from(values[i][k]);
            let m = f64::from(mask[i][k]);
            let delta = f64::from(rewards[i][k]) + gamma * next_value - v;
            let candidate = delta + gamma * lam * last;
            next_value = v * m + (1.0 - m) * next_value;
            last = candidate * m + (1.0 - m) * last;
            adv[i][k] = last;
            ret[i][k] = last + v;
        }
    }
    let white = masked_whiten("gae", &adv, mask)?;
    Ok(Advantages {
        advantages: to_f32(white),
        returns: to_f32(ret),
    })
}

fn reinforce_pp(
    rewards: &[Vec<f32>],
    mask: &[Vec<f32>],
    gamma: f64,
) -> Result<Advantages, AlgoError> {
    let returns: Vec<Vec<f64>> = rewards
        .iter()
        .zip(mask)
        .map(|(r, m)| {
            let mut out = vec![0.0; r.len()];
            let mut running = 0.0;
            for k in (0..r.len()).rev() {
                running = f64::from(r[k]) + gamma * running;
                out[k] = running;
                running *= f64::from(m[k]);
            }
            out
        })
        .collect();
    let white = masked_whiten("reinforce_plus_plus", &returns, mask)?;
    Ok(Advantages {
        advantages: to_f32(apply_mask(white, mask)),
        returns: to_f32(returns),
    })
}

fn remax(rewards: &[Vec<f32>], mask: &[Vec<f32>], baselines: &[f32]) -> Advantages {
    let mut advantages = Vec::with_capacity(rewards.len());
    let mut returns = Vec::with_capacity(rewards.len());
    for ((r, m), &base) in rewards.iter().zip(mask).zip(baselines) {
        let mut g = vec![0.0f64; r.len()];
        let mut acc = 0.0;
        for k in (0..r.len()).rev() {
            acc += f64::from(r[k]) * f64::from(m[k]);
            g[k] = acc;
        }
        advantages.push(
            g.iter()
                .zip(m)
                .map(|(&x, &w)| (x - f64::from(base) * f64::from(w)) as f32)
                .collect(),
        );
        returns.push(g.into_iter().map(|x| x as f32).collect());
    }
    Advantages {
        advantages,
        returns,
    }
}
