//! The optimiser (clover2.md §9, eagle.md §5): every gradient element clipped to ±0.5 (by value,
//! not by norm), then AdamW with betas (0.9, 0.95), weight decay 0.01 (PyTorch's default, which the
//! references leave in place) and eps 1e-8, at the schedule's learning rate.

pub mod schedule;

use crate::backend::{AdamW, Backend};

pub const BETA1: f32 = 0.9;
pub const BETA2: f32 = 0.95;
pub const WEIGHT_DECAY: f32 = 0.01;
pub const EPS: f32 = 1e-8;
pub const CLIP_VALUE: f32 = 0.5;

/// AdamW's moments per parameter and the number of steps taken.
pub struct Optimizer<B: Backend> {
    pub m: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    pub steps: u64,
}

impl<B: Backend> Optimizer<B> {
    /// Clips the gradients in place and updates every parameter (`params[i]` with `grads[i]`, at
    /// `lr · lr_factors[i]`).
    pub fn step(&mut self, b: &B, params: &mut [B::Buf], grads: Vec<&mut B::Buf>, lr: f32, lr_factors: &[f32]) {
        assert_eq!(params.len(), grads.len(), "optimiser: one gradient per parameter");
        assert_eq!(params.len(), lr_factors.len(), "optimiser: one learning-rate factor per parameter");
        self.steps += 1;
        for ((((p, g), m), v), factor) in params.iter_mut().zip(grads).zip(&mut self.m).zip(&mut self.v).zip(lr_factors)
        {
            let hp = AdamW { lr: lr * factor, beta1: BETA1, beta2: BETA2, eps: EPS, weight_decay: WEIGHT_DECAY };
            b.clip_by_value(g, CLIP_VALUE);
            b.adamw(p, g, m, v, &hp, self.steps);
        }
    }
}
