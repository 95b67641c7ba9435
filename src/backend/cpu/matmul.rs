//! GEMM / GEMV with f32 accumulation over weights kept in their stored dtype.
//!
//! Decode is bandwidth-bound: each weight row is streamed once and dotted with every input row
//! while it is hot in L1, so a step over a tree of m tokens reads the weights once, not m times.
//! The inner dot products use 16 independent lanes so LLVM vectorises them; an AVX2+FMA build of
//! the same code is picked at run time on x86-64.

use half::{bf16, f16};
use rayon::prelude::*;

use super::weight::CpuWeight;
use crate::weights::DType;

/// Output columns handed to one rayon task: big enough to amortise scheduling, small enough to
/// balance across cores.
const COLS_PER_TASK: usize = 64;
/// Input rows dotted against one hot weight row; keeps the x tile within L2.
const ROWS_PER_TILE: usize = 32;

/// out[m, n] = x[m, k] · wᵀ, w `[n, k]`.
pub fn matmul(x: &[f32], m: usize, w: &CpuWeight, out: &mut [f32]) {
    let (n, k) = w.matrix_shape();
    assert_eq!(x.len(), m * k, "matmul: x is not [{m}, {k}]");
    assert_eq!(out.len(), m * n, "matmul: out is not [{m}, {n}]");
    if m == 1 {
        out.par_chunks_mut(COLS_PER_TASK)
            .enumerate()
            .for_each(|(task, chunk)| columns(x, 1, w, task * COLS_PER_TASK, chunk));
        return;
    }
    // Each task fills a transposed block [cols, m] so its writes are contiguous.
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(COLS_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let first = task * COLS_PER_TASK;
            let cols = COLS_PER_TASK.min(n - first);
            let mut block = vec![0.0; cols * m];
            columns(x, m, w, first, &mut block);
            block
        })
        .collect();
    for (task, block) in blocks.iter().enumerate() {
        let first = task * COLS_PER_TASK;
        let cols = block.len() / m;
        for c in 0..cols {
            for r in 0..m {
                out[r * n + first + c] = block[c * m + r];
            }
        }
    }
}

/// Fills `block[c * m + r] = dot(x[r], w[first + c])` for the block's columns.
fn columns(x: &[f32], m: usize, w: &CpuWeight, first: usize, block: &mut [f32]) {
    let (_, k) = w.matrix_shape();
    let cols = block.len() / m;
    let mut row = vec![0.0f32; k];
    for c in 0..cols {
        let j = first + c;
        if m == 1 && w.dtype() == DType::BF16 {
            block[c] = dot_bf16(x, w.bf16_row(j));
            continue;
        }
        let wrow: &[f32] = match w.dtype() {
            DType::F32 => w.f32_row(j),
            DType::BF16 => {
                bf16_to_f32(w.bf16_row(j), &mut row);
                &row
            }
            DType::F16 => {
                f16_to_f32(w.f16_row(j), &mut row);
                &row
            }
        };
        for tile in (0..m).step_by(ROWS_PER_TILE) {
            for r in tile..(tile + ROWS_PER_TILE).min(m) {
                block[c * m + r] = dot_f32(&x[r * k..(r + 1) * k], wrow);
            }
        }
    }
}

pub fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((s.to_bits() as u32) << 16);
    }
}

pub fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
}

macro_rules! lanes_dot {
    ($name:ident, $elem:ty, $conv:expr) => {
        #[inline(always)]
        fn $name(x: &[f32], w: &[$elem]) -> f32 {
            const LANES: usize = 16;
            let mut acc = [0.0f32; LANES];
            let xs = x.chunks_exact(LANES);
            let ws = w.chunks_exact(LANES);
            let (xr, wr) = (xs.remainder(), ws.remainder());
            for (xc, wc) in xs.zip(ws) {
                for l in 0..LANES {
                    acc[l] += xc[l] * $conv(wc[l]);
                }
            }
            let mut tail = 0.0;
            for (a, b) in xr.iter().zip(wr) {
                tail += a * $conv(*b);
            }
            acc.iter().sum::<f32>() + tail
        }
    };
}

lanes_dot!(dot_f32_lanes, f32, |v: f32| v);
lanes_dot!(dot_bf16_lanes, bf16, |v: bf16| f32::from_bits((v.to_bits() as u32) << 16));

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(x: &[f32], w: &[f32]) -> f32 {
    dot_f32_lanes(x, w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_bf16_avx2(x: &[f32], w: &[bf16]) -> f32 {
    dot_bf16_lanes(x, w)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

pub fn dot_f32(x: &[f32], w: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { dot_f32_avx2(x, w) };
    }
    dot_f32_lanes(x, w)
}

pub fn dot_bf16(x: &[f32], w: &[bf16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { dot_bf16_avx2(x, w) };
    }
    dot_bf16_lanes(x, w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::HostTensor;

    fn naive(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0.0; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| x[r * k + i] as f64 * w[c * k + i] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_naive_for_every_dtype_and_shape() {
        for &(m, n, k) in &[(1, 130, 37), (3, 70, 64), (40, 5, 17), (1, 1, 1)] {
            let x = values(m * k, 1);
            let w32 = values(n * k, 2);
            // Round the weights through each dtype first so the reference sees the same values.
            let wb: Vec<bf16> = w32.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
            let cases: Vec<(HostTensor, Vec<f32>)> = vec![
                (HostTensor::from_f32("w", vec![n, k], &w32), w32.clone()),
                (
                    HostTensor::from_bits("w", DType::BF16, vec![n, k], wb.iter().map(|v| v.to_bits()).collect()),
                    wb.iter().map(|v| v.to_f32()).collect(),
                ),
                (
                    HostTensor::from_bits("w", DType::F16, vec![n, k], wh.iter().map(|v| v.to_bits()).collect()),
                    wh.iter().map(|v| v.to_f32()).collect(),
                ),
            ];
            for (tensor, exact) in cases {
                let w = CpuWeight::new(tensor).unwrap();
                let mut out = vec![0.0; m * n];
                matmul(&x, m, &w, &mut out);
                let want = naive(&x, m, &exact, n, k);
                for (a, b) in out.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b} at m={m} n={n} k={k}");
                }
            }
        }
    }
}
