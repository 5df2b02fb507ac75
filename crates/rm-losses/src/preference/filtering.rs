//! Learning from reward-filtered or reward-relabelled samples: RAFT's reward-ranked selection,
//! SuperHF's supervised loss with a KL penalty, and reward-augmented DPO's relabelling of scored
//! pairs into reward-conditioned pairs.

use burn::tensor::Tensor;

use super::{masked, row_sum};
use crate::LossError;
use crate::checks::{in_range, same_shape};

/// How many of a prompt's `N` samples [`raft_select`] keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RaftKeep {
    /// The `k` best (`1 ≤ k ≤ N`; `k = 1` is best-of-N, RAFT's default).
    TopK(usize),
    /// The best `⌈f·N⌉` (`0 < f ≤ 1`).
    Fraction(f32),
}

/// RAFT's reward-ranked selection (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for
/// Generative Foundation Model Alignment", Algorithm 1; also SuperHF's filtering step, Mukobi et
/// al. 2023): from `N = samples_per_prompt` samples of each prompt (`rewards` prompt-major, `N`
/// per prompt), keep the highest-rewarded ones. Returns their indices into `rewards`, prompt by
/// prompt, best first within each prompt (equal rewards: the earlier sample first). The kept
/// samples are then fine-tuned on with [`superhf_loss`] (`kl_coef = 0` is RAFT's plain SFT).
///
/// Errors: `N = 0`; no rewards, or a length that is not a multiple of `N`; a NaN reward; `k`
/// outside `1..=N`; `f` outside `(0, 1]`.
pub fn raft_select(
    rewards: &[f32],
    samples_per_prompt: usize,
    keep: RaftKeep,
) -> Result<Vec<usize>, LossError> {
    const OBJECTIVE: &str = "raft-select";
    let n = samples_per_prompt;
    let bad = |parameter: &'static str, value: f32, expected: &'static str| {
        Err(LossError::InvalidParameter {
            objective: OBJECTIVE,
            parameter,
            value,
            expected,
        })
    };
    if n == 0 {
        return bad("samples_per_prompt", 0.0, "at least 1");
    }
    let kept = match keep {
        RaftKeep::TopK(k) if (1..=n).contains(&k) => k,
        RaftKeep::TopK(k) => return bad("k", k as f32, "1 <= k <= samples_per_prompt"),
        RaftKeep::Fraction(f) if f > 0.0 && f <= 1.0 => {
            ((f as f64 * n as f64).ceil() as usize).max(1)
        }
        RaftKeep::Fraction(f) => return bad("fraction", f, "0 < fraction <= 1"),
    };
    if rewards.is_empty() {
        return Err(LossError::EmptyBatch {
            objective: OBJECTIVE,
        });
    }
    if !rewards.len().is_multiple_of(n) {
        return Err(LossError::InvalidInput {
            objective: OBJECTIVE,
            input: "rewards",
            reason: format!(
                "length {} is not a multiple of samples_per_prompt = {n}",
                rewards.len()
            ),
        });
    }
    if rewards.iter().any(|r| r.is_nan()) {
        return Err(LossError::InvalidInput {
            objective: OBJECTIVE,
            input: "rewards",
            reason: "a reward is NaN".into(),
        });
    }
    let mut selected = Vec::with_capacity(rewards.len() / n * kept);
    for (prompt, row) in rewards.chunks(n).enumerate() {
        let mut order: Vec<usize> = (0..n).collect();
        // Stable: equal rewards keep the earlier sample first.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        selected.extend(order[..kept].iter().map(|&i| prompt * n + i));
    }
    Ok(selected)
}

/// SuperHF's loss (Mukobi et al. 2023, "SuperHF: Supervised Iterative Learning from Human
/// Feedback", Eq. 1) on the reward-filtered samples of the current policy: supervised
/// fine-tuning plus a KL penalty to the reference,
///
/// `L = −Σ_{i,t} m_{i,t} log π_θ,i,t / Σ_{i,t} m_{i,t}  +  κ · Σ_{i,t} m_{i,t} (log π_θ,i,t − log π_ref,i,t) / Σ_{i,t} m_{i,t}`
///
/// (token means over the batch; the counts are clamped at 1). Judgement call: the paper's KL
/// `KL(π_θ ‖ π_ref)` is estimated from the completion tokens themselves (samples of the policy),
/// the single-sample estimate `log π_θ − log π_ref`, so the loss needs per-token log-probs only,
/// not the vocabulary distributions. `κ = 0` is RAFT's SFT on the selected samples. The
/// reference is detached.
///
/// Inputs: per-token log-probs of the policy and the reference and the completion mask, `[B, L]`.
///
/// Errors: an empty batch; inputs of other shapes; `κ` negative or not finite.
pub fn superhf_loss(
    policy: Tensor<2>,
    reference: Tensor<2>,
    mask: Tensor<2>,
    kl_coef: f32,
) -> Result<Tensor<1>, LossError> {
    const OBJECTIVE: &str = "superhf";
    in_range(
        OBJECTIVE,
        "kl_coef",
        kl_coef,
        0.0,
        f32::INFINITY,
        "a finite value >= 0",
    )?;
    let dims = policy.dims();
    if dims[0] == 0 {
        return Err(LossError::EmptyBatch {
            objective: OBJECTIVE,
        });
    }
    same_shape(OBJECTIVE, "reference", dims, &reference)?;
    same_shape(OBJECTIVE, "mask", dims, &mask)?;
    let tokens = row_sum(mask.clone().not_equal_elem(0.0).float())
        .sum()
        .clamp_min(1.0);
    let logp = masked(policy, &mask);
    let nll = row_sum(logp.clone()).sum().neg() / tokens.clone();
    if kl_coef == 0.0 {
        return Ok(nll);
    }
    let kl = row_sum(logp - masked(reference.detach(), &mask)).sum() / tokens;
    Ok(nll + kl.mul_scalar(kl_coef))
}

/// A preference pair with both completions scored, the input of [`reward_augment`]; `P` is the
/// prompt (text, or a caller's richer prompt type).
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredPair<P = String> {
    /// The prompt `x`.
    pub prompt: P,
    /// The preferred completion `y_w`.
    pub chosen: String,
    /// The dispreferred completion `y_l`.
    pub rejected: String,
    /// `r(x, y_w)`, e.g. a judge's quality score.
    pub score_chosen: f32,
    /// `r(x, y_l)`.
    pub score_rejected: f32,
}

/// A preference pair (prompt, chosen, rejected), the output of [`reward_augment`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreferencePair<P = String> {
    /// The (possibly reward-conditioned) prompt.
    pub prompt: P,
    /// The preferred completion.
    pub chosen: String,
    /// The dispreferred completion.
    pub rejected: String,
}

/// The instruction [`condition_on_score`] puts before a prompt: the target overall score on a
/// 1–10 scale. Integral scores print without a fraction (`7`, not `7.0`).
pub fn score_instruction(score: f32) -> String {
    format!(
        "Write a response to the instruction below that would earn this target score \
         (1 = worst, 10 = best).\nOverall score: {score}"
    )
}

/// The default reward-conditioning of a prompt (the paper's scheme, in our words): a preamble
/// naming the target overall score on a 1–10 scale ([`score_instruction`]), a blank line, then
/// the prompt.
pub fn condition_on_score(prompt: &str, score: f32) -> String {
    format!("{}\n\n{prompt}", score_instruction(score))
}

/// Reward-augmented DPO's data transform (Zhang et al. 2024, "Reward-Augmented Data Enhances
/// Direct Preference Alignment of LLMs", Sec. 4): each scored pair `(x, y_w, y_l, r_w, r_l)`
/// becomes two reward-conditioned pairs, one per ordering,
///
/// `(g(x, r_w), y_w ≻ y_l)`  and  `(g(x, r_l), y_l ≻ y_w)`,
///
/// where `g(x, r)` is the prompt conditioned on the target score `r` (`condition`, e.g.
/// [`condition_on_score`]): asked for a response of quality `r_l`, the rejected response is the
/// better match, so the model learns the whole quality range instead of only unlearning `y_l`
/// (which is also why the rejected response's own score matters). Rows come pair by pair (the
/// official script concatenates all first orderings, then all second ones; shuffle either way).
/// With `keep_original` the original, unconditioned pair is kept too (first). Judgement call: a
/// pair whose scores are equal yields no conditioned rows — its two goals coincide, so the two
/// orderings would contradict each other (the official script keeps them) — but keeps its
/// original row when asked.
///
/// Errors: a non-finite score.
pub fn reward_augment<P: Clone>(
    pairs: &[ScoredPair<P>],
    condition: impl Fn(&P, f32) -> P,
    keep_original: bool,
) -> Result<Vec<PreferencePair<P>>, LossError> {
    let mut rows = Vec::with_capacity(pairs.len() * (2 + keep_original as usize));
    for (i, p) in pairs.iter().enumerate() {
        if !p.score_chosen.is_finite() || !p.score_rejected.is_finite() {
            return Err(LossError::InvalidInput {
                objective: "reward-augment",
                input: "pairs",
                reason: format!("pair {i} has a non-finite score"),
            });
        }
        if keep_original {
            rows.push(PreferencePair {
                prompt: p.prompt.clone(),
                chosen: p.chosen.clone(),
                rejected: p.rejected.clone(),
            });
        }
        if p.score_chosen == p.score_rejected {
            continue;
        }
        rows.push(PreferencePair {
            prompt: condition(&p.prompt, p.score_chosen),
            chosen: p.chosen.clone(),
            rejected: p.rejected.clone(),
        });
        rows.push(PreferencePair {
            prompt: condition(&p.prompt, p.score_rejected),
            chosen: p.rejected.clone(),
            rejected: p.chosen.clone(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, matrix, scalar};
    use rm_core::device::test_device;

    #[test]
    fn raft_keeps_the_best_per_prompt() {
        let r = [0.1, 0.9, 0.5, 0.9, -1.0, 2.0, 3.0, 0.0];
        assert_eq!(raft_select(&r, 4, RaftKeep::TopK(1)).unwrap(), vec![1, 6]);
        // Ties: the earlier sample first.
        assert_eq!(
            raft_select(&r, 4, RaftKeep::TopK(2)).unwrap(),
            vec![1, 3, 6, 5]
        );
        assert_eq!(
            raft_select(&r, 4, RaftKeep::Fraction(0.5)).unwrap(),
            vec![1, 3, 6, 5]
        );
        // ⌈0.3·4⌉ = 2; f = 1 keeps everything, sorted.
        assert_eq!(
            raft_select(&r, 4, RaftKeep::Fraction(0.3)).unwrap().len(),
            4
        );
        assert_eq!(
            raft_select(&r, 4, RaftKeep::Fraction(1.0)).unwrap(),
            vec![1, 3, 2, 0, 6, 5, 7, 4]
        );
    }

    #[test]
    fn raft_bad_inputs_are_errors() {
        let r = [0.1, 0.2, 0.3, 0.4];
        assert!(raft_select(&r, 0, RaftKeep::TopK(1)).is_err());
        assert!(raft_select(&r, 2, RaftKeep::TopK(0)).is_err());
        assert!(raft_select(&r, 2, RaftKeep::TopK(3)).is_err());
        assert!(raft_select(&r, 2, RaftKeep::Fraction(0.0)).is_err());
        assert!(raft_select(&r, 2, RaftKeep::Fraction(1.5)).is_err());
        assert!(raft_select(&r, 2, RaftKeep::Fraction(f32::NAN)).is_err());
        assert!(raft_select(&r, 3, RaftKeep::TopK(1)).is_err());
        assert!(raft_select(&[], 3, RaftKeep::TopK(1)).is_err());
        assert!(raft_select(&[0.1, f32::NAN], 2, RaftKeep::TopK(1)).is_err());
    }

    const P: [f32; 6] = [-1.0, -0.5, f32::NAN, -2.0, -0.1, -0.7];
    const Q: [f32; 6] = [-1.4, -0.2, 0.0, -1.0, -0.3, -0.6];
    const M: [f32; 6] = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0];

    fn naive_superhf(kappa: f64) -> f64 {
        let on: Vec<usize> = (0..6).filter(|&i| M[i] != 0.0).collect();
        let n = on.len() as f64;
        let nll = -on.iter().map(|&i| P[i] as f64).sum::<f64>() / n;
        let kl = on.iter().map(|&i| P[i] as f64 - Q[i] as f64).sum::<f64>() / n;
        nll + kappa * kl
    }

    #[test]
    fn superhf_matches_the_naive_implementation() {
        let d = test_device();
        for kappa in [0.0f32, 0.1, 2.0] {
            let l = superhf_loss(
                matrix(&P, [2, 3], &d),
                matrix(&Q, [2, 3], &d),
                matrix(&M, [2, 3], &d),
                kappa,
            )
            .unwrap();
            assert_close(scalar(l), naive_superhf(kappa as f64) as f32, 1e-6);
        }
    }

    #[test]
    fn superhf_gradients_and_errors() {
        let p = [-1.0, -0.5, 0.0, -2.0, -0.1, -0.7];
        check_gradients(&[(&p, [2, 3])], |t| {
            let d = t[0].device();
            superhf_loss(
                t[0].clone(),
                matrix(&Q, [2, 3], &d),
                matrix(&M, [2, 3], &d),
                0.5,
            )
            .unwrap()
        });
        let d = test_device();
        for kappa in [-0.1, f32::NAN] {
            assert!(matches!(
                superhf_loss(
                    matrix(&p, [2, 3], &d),
                    matrix(&Q, [2, 3], &d),
                    matrix(&M, [2, 3], &d),
                    kappa
                ),
                Err(LossError::InvalidParameter {
                    parameter: "kl_coef",
                    ..
                })
            ));
        }
        assert!(matches!(
            superhf_loss(
                matrix(&p, [2, 3], &d),
                matrix(&Q[..3], [1, 3], &d),
                matrix(&M, [2, 3], &d),
                0.1
            ),
            Err(LossError::ShapeMismatch { .. })
        ));
    }

    fn pair(c: f32, r: f32) -> ScoredPair {
        ScoredPair {
            prompt: "x".into(),
            chosen: "good".into(),
            rejected: "bad".into(),
            score_chosen: c,
            score_rejected: r,
        }
    }

    #[test]
    fn reward_augment_conditions_both_orderings() {
        let cond = |p: &String, s: f32| format!("[{s}] {p}");
        let rows = reward_augment(&[pair(8.0, 3.5), pair(5.0, 5.0)], cond, false).unwrap();
        let expected = vec![
            PreferencePair {
                prompt: "[8] x".into(),
                chosen: "good".into(),
                rejected: "bad".into(),
            },
            PreferencePair {
                prompt: "[3.5] x".into(),
                chosen: "bad".into(),
                rejected: "good".into(),
            },
        ];
        assert_eq!(rows, expected);
        let rows = reward_augment(&[pair(8.0, 3.5), pair(5.0, 5.0)], cond, true).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].prompt, "x");
        assert_eq!(rows[3].prompt, "x");
        assert_eq!(
            condition_on_score("x", 7.0).lines().nth(1),
            Some("Overall score: 7")
        );
        assert!(condition_on_score("x", 7.5).ends_with("Overall score: 7.5\n\nx"));
        assert!(reward_augment(&[pair(f32::NAN, 1.0)], cond, false).is_err());
    }
}
