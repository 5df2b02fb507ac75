//! Bootstrap resampling (Efron 1979): each ensemble member trains on `n` examples drawn with
//! replacement from the `n` training examples, so members see different data (about
//! 1 − 1/e ≈ 63.2 % distinct examples each) — the "bootstrap" member diversity of
//! Lakshminarayanan et al. 2017 and of the RM ensembles of Coste et al. 2024.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `n` indices in `0..n` drawn uniformly with replacement from `StdRng(seed)`; the same seed
/// gives the same resample. `n = 0` gives an empty list.
pub fn bootstrap_indices(n: usize, seed: u64) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resample_is_seeded_in_range_and_repeats_examples() {
        let a = bootstrap_indices(1000, 7);
        assert_eq!(a, bootstrap_indices(1000, 7), "same seed, same resample");
        assert_ne!(
            a,
            bootstrap_indices(1000, 8),
            "another seed, another resample"
        );
        assert_eq!(a.len(), 1000);
        assert!(a.iter().all(|&i| i < 1000));
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // With replacement: about 1 − 1/e = 63.2 % distinct (σ ≈ 1.5 % at n = 1000).
        let share = distinct.len() as f64 / 1000.0;
        assert!((0.58..0.68).contains(&share), "{share}");
        assert!(bootstrap_indices(0, 1).is_empty());
    }
}
