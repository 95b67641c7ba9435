//! The learning-rate schedule of both references: linear warm-up from 0, then linear decay to 0 at
//! `total` steps (transformers' `get_linear_schedule_with_warmup`, stepped after each optimiser
//! step, so optimiser step s runs at the factor of s − 1 and the very first step at 0 when there
//! is a warm-up).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The peak learning rate.
    pub lr: f32,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// The learning rate of optimiser step `step` (counted from 1).
    pub fn lr_at(&self, step: u64) -> f32 {
        let k = step.saturating_sub(1) as f64;
        let (warmup, total) = (self.warmup as f64, self.total as f64);
        let factor = if k < warmup { k / warmup } else { ((total - k) / (total - warmup).max(1.0)).max(0.0) };
        (self.lr as f64 * factor) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_zero() {
        let s = Schedule { lr: 1e-3, warmup: 4, total: 12 };
        let lrs: Vec<f32> = (1..=14).map(|t| s.lr_at(t)).collect();
        let want = [0.0, 0.25, 0.5, 0.75, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0];
        for (got, want) in lrs.iter().zip(want) {
            assert!((got - 1e-3 * want).abs() < 1e-9, "{lrs:?}");
        }
        let flat = Schedule { lr: 2e-3, warmup: 0, total: 1_600_000 };
        assert_eq!(flat.lr_at(1), 2e-3);
        assert!((flat.lr_at(1001) - 2e-3 * (1.0 - 1000.0 / 1.6e6) as f32).abs() < 1e-10);
    }
}
