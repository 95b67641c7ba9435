//! Attention on the GPU: the two-pass forward over the KV cache (`attention_partial` per chunk of
//! `ATT_CHUNK` cached positions and block of queries, then `attention_combine`), with the causal or
//! tree mask of `AttnMask`, and the training backward over one sequence. The CPU's `attention.rs`
//! is the reference of both (tests/cuda_parity.rs).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::tree_keys::{tree_key_positions, ATT_CHUNK};
use super::{grid, int, CudaBackend, Device};
use crate::backend::{AttnMask, AttnShape, Backend, KvLayout};
use crate::nvtx;

/// attention.cu: the largest head a query row of its shared arrays holds (`ATT_MAX_DIM`).
pub(super) const MAX_HEAD_DIM: usize = 128;

/// attention.cu: queries per block of the first pass (`ATT_QUERIES`).
const QUERIES: usize = 16;

/// The most floats of per-chunk partial results (`part_acc` and `part_ml`) one pass allocates:
/// they grow with rows × chunks, i.e. with the square of a causal prefill's length (a 32-head,
/// 128-wide model would need 4 GiB at 8k tokens in one pass), so a longer prefill runs in passes
/// of fewer rows. 2²⁶ floats: 256 MiB.
const PARTIAL_FLOATS: usize = 1 << 26;

/// Both directions map query head h to KV head h / (n_heads / n_kv_heads) and stage a head's row
/// in arrays of `ATT_MAX_DIM` (128): another shape would read out of bounds.
fn check_heads(shape: AttnShape) {
    assert!(shape.head_dim <= MAX_HEAD_DIM, "CUDA attention: head_dim {} > {MAX_HEAD_DIM}", shape.head_dim);
    assert!(
        shape.n_kv_heads > 0 && shape.n_heads.is_multiple_of(shape.n_kv_heads),
        "CUDA attention: {} query heads in groups of {} KV heads",
        shape.n_heads,
        shape.n_kv_heads
    );
}

/// Rows of a causal block over `keys` cached positions that keep one pass within `PARTIAL_FLOATS`.
fn causal_rows_per_pass(shape: AttnShape, keys: usize) -> usize {
    let per_row = shape.n_heads * keys.div_ceil(ATT_CHUNK) * (shape.head_dim + 2);
    (PARTIAL_FLOATS / per_row.max(1)).max(QUERIES)
}

/// `Backend::attention`.
// The `Backend` op's arguments and the backend.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    be: &CudaBackend,
    q: &CudaSlice<f32>,
    k_cache: &CudaSlice<f32>,
    v_cache: &CudaSlice<f32>,
    layout: KvLayout,
    shape: AttnShape,
    rows: usize,
    past: usize,
    mask: AttnMask,
    out: &mut CudaSlice<f32>,
) {
    // As the CPU backend (which panics on these too): the kernel would read out of bounds.
    assert!(
        past + rows <= layout.capacity,
        "CUDA attention: {past} + {rows} rows beyond the cache's {}",
        layout.capacity
    );
    check_heads(shape);
    if rows == 0 {
        return;
    }
    let per_pass = match mask {
        AttnMask::Causal => causal_rows_per_pass(shape, past + rows),
        AttnMask::Tree { .. } => rows,
    };
    if rows > per_pass {
        // Each pass is the causal attention of its rows after all the slots before them. A query's
        // result does not depend on the other queries of its call (its keys' chunks are fixed by
        // slot), so the passes give the bits of one call.
        let width = shape.n_heads * shape.head_dim;
        for start in (0..rows).step_by(per_pass) {
            let n = per_pass.min(rows - start);
            let q_part = be.slice_rows(q, width, start, n);
            let mut out_part = be.alloc(n * width);
            forward(be, &q_part, k_cache, v_cache, layout, shape, n, past + start, mask, &mut out_part);
            let mut dst = out.slice_mut(start * width..(start + n) * width);
            be.dev.stream.memcpy_dtod(&out_part, &mut dst).expect("CUDA backend: copy");
        }
        return;
    }
    let _range = nvtx::Range::new(c"attention");
    // attention.cu: ATT_CHUNK positions and QUERIES queries per block of the first pass.
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let n_chunks = (past + rows).div_ceil(ATT_CHUNK);
    let group = shape.n_heads / shape.n_kv_heads;
    let queries = rows * shape.n_heads;
    // SAFETY: attention_partial writes every (query, chunk) slot of both before the combine
    // pass reads them, so they need no zeroing (a memset of megabytes per layer otherwise).
    let (mut part_acc, mut part_ml) = unsafe {
        let stream = &be.dev.stream;
        let alloc = |n: usize| stream.alloc::<f32>(n.max(1)).expect("CUDA backend: allocation");
        (alloc(queries * n_chunks * shape.head_dim), alloc(queries * n_chunks * 2))
    };
    let cfg = LaunchConfig {
        grid_dim: ((rows * group).div_ceil(QUERIES) as u32, n_chunks as u32, shape.n_kv_heads as u32),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let (r, p, nc) = (int(rows), int(past), int(n_chunks));
    let (h, kvh, d, cap) = (int(shape.n_heads), int(shape.n_kv_heads), int(shape.head_dim), int(layout.capacity));
    match mask {
        AttnMask::Causal => {
            let (null, first, width) = (0u64, 0i32, 0i32);
            launch!(&be.dev, "attention_partial", cfg; &mut part_acc, &mut part_ml, q, k_cache, v_cache,
                &null, &null, &r, &p, &h, &kvh, &d, &cap, &scale, &first, &width, &nc);
        }
        AttnMask::Tree { bits, first_key } => {
            let width = past + rows - first_key;
            let bits = &bits[..rows * width];
            let key_pos = be.tree_key_pos.get(&be.dev.stream, &tree_key_positions(bits, rows, past, first_key));
            let bits = be.tree_mask.get(&be.dev.stream, bits);
            let (first, w) = (int(first_key), int(width));
            launch!(&be.dev, "attention_partial", cfg; &mut part_acc, &mut part_ml, q, k_cache, v_cache,
                &*bits, &*key_pos, &r, &p, &h, &kvh, &d, &cap, &scale, &first, &w, &nc);
        }
    }
    launch!(&be.dev, "attention_combine", grid(rows, shape.n_heads, 128); out, &part_acc, &part_ml, &h, &d, &nc);
}

/// `Backend::attention_backward`.
// The `Backend` op's arguments and the backend.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    be: &CudaBackend,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    shape: AttnShape,
    rows: usize,
    d_out: &CudaSlice<f32>,
    dq: &mut CudaSlice<f32>,
    dk: &mut CudaSlice<f32>,
    dv: &mut CudaSlice<f32>,
) {
    check_heads(shape);
    let (qw, kw) = (rows * shape.n_heads * shape.head_dim, rows * shape.n_kv_heads * shape.head_dim);
    assert!(
        q.len() >= qw
            && d_out.len() >= qw
            && dq.len() >= qw
            && [k.len(), v.len(), dk.len(), dv.len()].iter().all(|&n| n >= kw),
        "CUDA attention backward: buffers smaller than {rows} rows of {} query and {} KV heads",
        shape.n_heads,
        shape.n_kv_heads
    );
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let (r, h, kvh, d) = (int(rows), int(shape.n_heads), int(shape.n_kv_heads), int(shape.head_dim));
    launch!(&be.dev, "attention_backward", grid(rows, shape.n_heads, 128);
        dq, dk, dv, q, k, v, d_out, &r, &h, &kvh, &d, &scale);
}
