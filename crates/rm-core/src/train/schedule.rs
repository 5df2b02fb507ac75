//! Learning-rate schedules: linear warm-up, then linear, cosine or no decay.
//!
//! Step `s` (0-based, the `s`-th optimizer update) uses `lr(s) = peak · f(s)` with
//! - warm-up, `s < W`: `f(s) = s / W`;
//! - linear: `f(s) = max(0, (N − s) / (N − W))`;
//! - cosine: `f(s) = max(0, ½(1 + cos(π·(s − W)/(N − W))))`;
//! - constant: `f(s) = 1`;
//!
//! for `N` total steps. These are the multipliers of transformers' `get_linear_schedule_with_warmup`
//! / `get_cosine_schedule_with_warmup` / `get_constant_schedule_with_warmup` (so the first
//! update of a warmed-up run uses `lr = 0`, as there), which keeps plumbline and the PyTorch peer
//! on the same curve.

use serde::{Deserialize, Serialize};

/// How the learning rate decays after warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecayKind {
    #[default]
    Linear,
    Cosine,
    Constant,
}

/// A learning-rate schedule over a known number of optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: DecayKind,
}

impl LrSchedule {
    /// `warmup_ratio` of `total_steps`, rounded up (as transformers' `get_warmup_steps`).
    pub fn with_warmup_ratio(
        peak: f64,
        warmup_ratio: f64,
        total_steps: u64,
        decay: DecayKind,
    ) -> Self {
        Self {
            peak,
            warmup_steps: (warmup_ratio * total_steps as f64).ceil() as u64,
            total_steps,
            decay,
        }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        let (s, w, n) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < self.warmup_steps {
            return self.peak * s / w.max(1.0);
        }
        let factor = match self.decay {
            DecayKind::Constant => 1.0,
            DecayKind::Linear => ((n - s) / (n - w).max(1.0)).max(0.0),
            DecayKind::Cosine => {
                let progress = (s - w) / (n - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        };
        self.peak * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_warmup_then_linear_decay_matches_the_closed_form() {
        let s = LrSchedule::with_warmup_ratio(1e-3, 0.1, 100, DecayKind::Linear);
        assert_eq!(s.warmup_steps, 10);
        assert_eq!(s.lr_at(0), 0.0);
        assert!((s.lr_at(5) - 5e-4).abs() < 1e-15);
        assert!((s.lr_at(10) - 1e-3).abs() < 1e-15);
        assert!((s.lr_at(55) - 1e-3 * 45.0 / 90.0).abs() < 1e-15);
        assert_eq!(s.lr_at(100), 0.0);
        assert_eq!(s.lr_at(150), 0.0);
    }

    #[test]
    fn cosine_decay_is_half_way_at_the_midpoint() {
        let s = LrSchedule::with_warmup_ratio(2.0, 0.0, 100, DecayKind::Cosine);
        assert_eq!(s.warmup_steps, 0);
        assert!((s.lr_at(0) - 2.0).abs() < 1e-12);
        assert!((s.lr_at(50) - 1.0).abs() < 1e-12);
        assert!(s.lr_at(100).abs() < 1e-12);
    }

    #[test]
    fn constant_after_warmup_and_warmup_rounds_up() {
        let s = LrSchedule::with_warmup_ratio(1.0, 0.05, 30, DecayKind::Constant);
        assert_eq!(s.warmup_steps, 2); // ceil(1.5)
        assert_eq!(s.lr_at(1), 0.5);
        assert_eq!(s.lr_at(29), 1.0);
    }
}
