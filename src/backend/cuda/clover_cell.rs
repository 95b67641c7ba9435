//! The Clover draft cell (clover2.md §3) on the GPU: q, k, v projected by cuBLAS, the per-head
//! cosine gate and residual by `clover_combine`, and the backward from `clover_cell_grads` and the
//! GEMMs of each projection. The CPU's `clover_cell.rs` is the reference.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{gemm, grid, int, linear, CudaBackend, CudaWeight, Device};
use crate::backend::{Backend, CloverCellParams};
use crate::nvtx;

/// `Backend::clover_cell`.
// The `Backend` op's arguments and the backend.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    be: &CudaBackend,
    cell: &CloverCellParams<CudaWeight>,
    n_heads: usize,
    eps: f32,
    x: &CudaSlice<f32>,
    y: &CudaSlice<f32>,
    rows: usize,
    out: &mut CudaSlice<f32>,
) {
    let _range = nvtx::Range::new(c"clover cell");
    let p = cell_projections(be, cell, n_heads, eps, x, y, rows);
    let (r, hid, heads) = (int(rows), int(cell.gain.cols), int(n_heads));
    launch!(&be.dev, "clover_combine", grid(rows, n_heads, 128); out, x, &p.q, &p.k, &p.v, &r, &hid, &heads, &eps);
}

/// `Backend::clover_cell_backward`.
// The `Backend` op's arguments and the backend.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    be: &CudaBackend,
    cell: &CloverCellParams<CudaWeight>,
    n_heads: usize,
    eps: f32,
    x: &CudaSlice<f32>,
    y: &CudaSlice<f32>,
    rows: usize,
    d_out: &CudaSlice<f32>,
    dx: &mut CudaSlice<f32>,
    dy: Option<&mut CudaSlice<f32>>,
    grads: &mut CloverCellParams<CudaSlice<f32>>,
) {
    let _range = nvtx::Range::new(c"clover cell backward");
    let h = cell.gain.cols;
    let p = cell_projections(be, cell, n_heads, eps, x, y, rows);
    let (mut dq, mut dk, mut dv) = (be.alloc(rows * h), be.alloc(rows * h), be.alloc(rows * h));
    let (r, hid, heads) = (int(rows), int(h), int(n_heads));
    launch!(&be.dev, "clover_cell_grads", grid(rows, n_heads, 128);
        &mut dq, &mut dk, &mut dv, &p.q, &p.k, &p.v, d_out, &r, &hid, &heads, &eps);
    // The residual.
    let n = int(rows * h);
    launch!(&be.dev, "add", linear(rows * h); &mut *dx, d_out, &n);
    be.bias_backward(&dq, rows, &mut grads.bq);
    be.bias_backward(&dk, rows, &mut grads.bk);
    be.bias_backward(&dv, rows, &mut grads.bv);
    gemm::matmul_weight_grad(&be.dev, &p.normed, &dq, rows, h, h, &mut grads.wq);
    gemm::matmul_weight_grad(&be.dev, y, &dk, rows, h, h, &mut grads.wk);
    gemm::matmul_weight_grad(&be.dev, y, &dv, rows, h, h, &mut grads.wv);
    if let Some(dy) = dy {
        gemm::matmul_input_grad(&be.dev, &dk, rows, &cell.wk, dy);
        gemm::matmul_input_grad(&be.dev, &dv, rows, &cell.wv, dy);
    }
    let mut d_normed = be.alloc(rows * h);
    gemm::matmul_input_grad(&be.dev, &dq, rows, &cell.wq, &mut d_normed);
    be.rmsnorm_backward(x, rows, &cell.gain, eps, &d_normed, dx, &mut grads.gain);
}

/// What both directions of the Clover cell compute from its inputs (clover2.md §3).
struct CellProjections {
    normed: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
}

fn cell_projections(
    be: &CudaBackend,
    cell: &CloverCellParams<CudaWeight>,
    n_heads: usize,
    eps: f32,
    x: &CudaSlice<f32>,
    y: &CudaSlice<f32>,
    rows: usize,
) -> CellProjections {
    assert!(
        n_heads > 0 && cell.gain.cols.is_multiple_of(n_heads),
        "Clover cell: width {} in {n_heads} heads",
        cell.gain.cols
    );
    let h = cell.gain.cols;
    let mut normed = be.alloc(rows * h);
    be.rmsnorm(x, rows, &cell.gain, eps, &mut normed);
    let project = |input: &CudaSlice<f32>, w: &CudaWeight, b: &CudaWeight| {
        let mut out = be.alloc(rows * h);
        be.matmul(input, rows, w, &mut out);
        be.add_bias(&mut out, rows, b);
        out
    };
    let q = project(&normed, &cell.wq, &cell.bq);
    let k = project(y, &cell.wk, &cell.bk);
    let v = project(y, &cell.wv, &cell.bv);
    CellProjections { normed, q, k, v }
}
