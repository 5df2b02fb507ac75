//! Which completions of a group keep their loss: PF-PPO's policy filtration.

use super::recipe::PolicyFiltration;
use super::rewards::ScoredSample;

/// PF-PPO's policy filtration (Shen et al. 2024, "Policy Filtration in RLHF to Fine-Tune LLM
/// for Code Generation"): a reward model is most reliable at the extremes of its scores, so
/// within each group only the best-rewarded row and the worst (`best_worst`) or a random other
/// row (`best_random`, drawn from `seed`) keep their loss; the rest are masked. Rows already
/// masked take no part; groups with fewer than three included rows are left as they are.
/// Returns how many rows it masked.
pub fn policy_filtration(
    filter: PolicyFiltration,
    scored: &[ScoredSample],
    included: &mut [bool],
    group_size: usize,
    seed: u64,
) -> usize {
    use rand::{Rng, SeedableRng};
    if filter == PolicyFiltration::None {
        return 0;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x9FF1_17E2);
    let mut masked = 0;
    for start in (0..included.len()).step_by(group_size.max(1)) {
        let end = (start + group_size).min(included.len());
        let rows: Vec<usize> = (start..end)
            .filter(|&r| included[r] && scored[r].total.is_some())
            .collect();
        if rows.len() < 3 {
            continue;
        }
        let reward = |r: usize| scored[r].total.unwrap_or(0.0);
        let best = *rows
            .iter()
            .reduce(|a, b| if reward(*b) > reward(*a) { b } else { a })
            .unwrap_or(&rows[0]);
        let other = match filter {
            PolicyFiltration::BestWorst => *rows
                .iter()
                .reduce(|a, b| if reward(*b) < reward(*a) { b } else { a })
                .unwrap_or(&rows[0]),
            _ => {
                let others: Vec<usize> = rows.iter().copied().filter(|&r| r != best).collect();
                others[rng.random_range(0..others.len())]
            }
        };
        for &r in &rows {
            if r != best && r != other {
                included[r] = false;
                masked += 1;
            }
        }
    }
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(rewards: &[Option<f32>]) -> Vec<ScoredSample> {
        rewards
            .iter()
            .map(|&total| ScoredSample {
                total,
                components: vec![total],
                errors: Vec::new(),
                steps: Vec::new(),
            })
            .collect()
    }

    /// PF-PPO keeps the best and the worst (or a random other) row of each group of ≥ 3
    /// included rows; already-masked or failed rows take no part.
    #[test]
    fn policy_filtration_keeps_the_extremes_of_each_group() {
        let s = scored(&[
            Some(0.5),
            Some(0.9),
            Some(0.1),
            Some(0.3),
            Some(1.0),
            None,
            Some(0.2),
            Some(0.0),
        ]);
        let mut included = vec![true; 8];
        let masked = policy_filtration(PolicyFiltration::BestWorst, &s, &mut included, 4, 1);
        // Group 0: best row 1, worst row 2; group 1 has three scored rows: best 4, worst 7.
        assert_eq!(
            included,
            [false, true, true, false, true, true, false, true],
            "the failed row 5 is left to the reward mask"
        );
        assert_eq!(masked, 3);
        let mut included = vec![true; 8];
        included[0] = false;
        included[3] = false;
        policy_filtration(PolicyFiltration::BestWorst, &s, &mut included, 4, 1);
        assert_eq!(
            &included[..4],
            [false, true, true, false],
            "a group of two is kept"
        );
        for seed in 0..20 {
            let mut included = vec![true; 8];
            policy_filtration(PolicyFiltration::BestRandom, &s, &mut included, 4, seed);
            assert!(included[1] && included[4], "the best always stays");
            assert_eq!(included[..4].iter().filter(|&&x| x).count(), 2);
        }
        let mut included = vec![true; 8];
        assert_eq!(
            policy_filtration(PolicyFiltration::None, &s, &mut included, 4, 0),
            0
        );
        assert!(included.iter().all(|&x| x));
    }
}
