//! Reward shaping as pure functions.
//!
//! - [`clip_reward`]: a component's clip range, `r' = min(max(r, low), high)` (the `clip` of a
//!   `[[reward]]` table).
//! - [`clip_process_rewards`] and [`delta_process_rewards`]: the **Clip** and **Delta**
//!   mechanisms of Gao et al. 2024, "On Designing Effective RL Reward at Training Time for LLM
//!   Reasoning" (arXiv 2410.15115). A process reward model gives step rewards `r_1 … r_K` to a
//!   solution of `K` reasoning steps; used as dense rewards they can be hacked by repeating
//!   correct but unnecessary steps (every extra step adds reward). Both mechanisms bound the
//!   return of any trajectory from above:
//!   - Clip: `r̃_k = min(r_k − η, 0)` — the reward is upper-bounded by 0 after subtracting the
//!     threshold `η`, so extra steps can only lower the return;
//!   - Delta: `r̃_k = r_k − r_{k+1}` for `k ≤ K − 2`, `r̃_{K−1} = r_{K−1}`, `r̃_K = 0` (the last
//!     step's process reward is dropped; the final step is rewarded by the outcome/success
//!     reward), so the return from step `k`, `Σ_{t≥k} r̃_t = r_k`, telescopes to a single step
//!     reward. The two can be combined: Delta of the clipped rewards.
//!
//!   The definitions follow the paper's description and its Figure (clipped bars below `η`
//!   become negative, bars above it 0; Delta's last step is crossed out).
//!
//! Dynamic reward scaling (GRPO-S of DR-IRL, Cheng et al. 2025, "Inverse Reinforcement Learning
//! with Dynamic Reward Scaling for LLM Alignment") is not implemented: its exact scaling formula
//! was not available.

/// `min(max(r, low), high)`.
pub fn clip_reward(r: f64, low: f64, high: f64) -> f64 {
    r.max(low).min(high)
}

/// Gao et al.'s Clip mechanism: `min(r_k − η, 0)` for every step reward.
pub fn clip_process_rewards(step_rewards: &[f32], eta: f32) -> Vec<f32> {
    step_rewards.iter().map(|&r| (r - eta).min(0.0)).collect()
}

/// Gao et al.'s Delta mechanism: `r_k − r_{k+1}` for `k ≤ K − 2`, `r_{K−1}` for the next to
/// last step, `0` for the last (`K` steps; one step → `[0]`, none → `[]`).
pub fn delta_process_rewards(step_rewards: &[f32]) -> Vec<f32> {
    let k = step_rewards.len();
    (0..k)
        .map(|i| {
            if i + 1 == k {
                0.0
            } else if i + 2 == k {
                step_rewards[i]
            } else {
                step_rewards[i] - step_rewards[i + 1]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn clip_reward_clamps_into_the_range() {
        assert_eq!(clip_reward(3.0, -1.0, 1.0), 1.0);
        assert_eq!(clip_reward(-3.0, -1.0, 1.0), -1.0);
        assert_eq!(clip_reward(0.25, -1.0, 1.0), 0.25);
    }

    #[test]
    fn clip_mechanism_subtracts_eta_and_caps_at_zero() {
        // The paper's figure: steps 1 and 4 above η give 0, steps 2 and 3 below it go negative.
        let r = [0.7, 0.2, 0.4, 0.8];
        close(&clip_process_rewards(&r, 0.5), &[0.0, -0.3, -0.1, 0.0]);
        // Repeating a good step never raises the return.
        let padded = [0.7, 0.7, 0.7, 0.2, 0.4, 0.8];
        let sum = |v: Vec<f32>| v.iter().sum::<f32>();
        assert!(sum(clip_process_rewards(&padded, 0.5)) <= sum(clip_process_rewards(&r, 0.5)));
    }

    #[test]
    fn delta_mechanism_telescopes_to_the_step_reward() {
        let r = [0.7, 0.2, 0.4, 0.8];
        // [0.7 − 0.2, 0.2 − 0.4, 0.4, 0]
        let d = delta_process_rewards(&r);
        close(&d, &[0.5, -0.2, 0.4, 0.0]);
        // The return from each step k (k < K) is r_k.
        for k in 0..r.len() - 1 {
            let ret: f32 = d[k..].iter().sum();
            assert!((ret - r[k]).abs() < 1e-6, "step {k}: {ret}");
        }
        close(&delta_process_rewards(&[0.9]), &[0.0]);
        close(&delta_process_rewards(&[0.9, 0.3]), &[0.9, 0.0]);
        assert!(delta_process_rewards(&[]).is_empty());
    }
}
