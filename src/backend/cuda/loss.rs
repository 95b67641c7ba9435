//! The distillation losses and the optimiser step on the GPU (loss.cu, elementwise.cu): each
//! loss writes its gradient and returns the weighted sum, as cpu/loss.rs; AdamW and the clipping
//! match cpu/optim.rs bit for bit.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{grid, int, linear, CudaBackend, Device};
use crate::backend::{AdamW, Backend};

/// `Backend::soft_cross_entropy`.
pub(super) fn soft_cross_entropy(
    be: &CudaBackend,
    logits: &CudaSlice<f32>,
    teacher_logits: &CudaSlice<f32>,
    row_weight: &[f32],
    d_logits: &mut CudaSlice<f32>,
) -> f32 {
    weighted_row_loss(be, "soft_cross_entropy", 1024, logits, teacher_logits, row_weight, d_logits)
}

/// `Backend::smooth_l1`.
pub(super) fn smooth_l1(
    be: &CudaBackend,
    pred: &CudaSlice<f32>,
    target: &CudaSlice<f32>,
    row_weight: &[f32],
    d_pred: &mut CudaSlice<f32>,
) -> f32 {
    weighted_row_loss(be, "smooth_l1", 256, pred, target, row_weight, d_pred)
}

/// `Backend::clip_by_value`.
pub(super) fn clip_by_value(be: &CudaBackend, x: &mut CudaSlice<f32>, limit: f32) {
    let n = int(x.len());
    launch!(&be.dev, "clip_by_value", linear(x.len()); x, &limit, &n);
}

/// `Backend::adamw`.
pub(super) fn adamw(
    be: &CudaBackend,
    param: &mut CudaSlice<f32>,
    grad: &CudaSlice<f32>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    hp: &AdamW,
    step: u64,
) {
    let n = param.len();
    assert!(grad.len() == n && m.len() == n && v.len() == n, "adamw: parameter, gradient and moments differ in size");
    let (step_size, bc2_sqrt) = hp.bias_corrections(step);
    let n = int(n);
    launch!(&be.dev, "adamw", linear(param.len());
        param, grad, m, v, &hp.lr, &hp.beta1, &hp.beta2, &hp.eps, &hp.weight_decay, &step_size, &bc2_sqrt, &n);
}

/// A loss kernel of `(grad, row_loss, input, target, row_weight, rows, width)` (loss.cu): one
/// block of `threads` per row of `row_weight`, each writing its row's gradient and weighted
/// loss; returns the rows' sum.
fn weighted_row_loss(
    be: &CudaBackend,
    kernel: &'static str,
    threads: u32,
    input: &CudaSlice<f32>,
    target: &CudaSlice<f32>,
    row_weight: &[f32],
    grad: &mut CudaSlice<f32>,
) -> f32 {
    let rows = row_weight.len();
    if rows == 0 {
        return 0.0;
    }
    let width = input.len() / rows;
    assert!(
        width > 0 && input.len() == rows * width && target.len() == input.len() && grad.len() == input.len(),
        "{kernel}: input, target and gradient are not all {rows} rows of one width"
    );
    let weights = be.upload(row_weight);
    let mut row_loss = be.alloc(rows);
    let (r, width) = (int(rows), int(width));
    launch!(&be.dev, kernel, grid(rows, 1, threads); grad, &mut row_loss, input, target, &weights, &r, &width);
    let host = be.dev.stream.clone_dtoh(&row_loss).expect("CUDA backend: download");
    // Summed in f64 and rounded once, as cpu/loss.rs sums its rows.
    host[..rows].iter().map(|&l| f64::from(l)).sum::<f64>() as f32
}
