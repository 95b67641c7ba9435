//! The linear layer y = x·Wᵀ + b: the bias, and the backward of both parts. The forward GEMM is
//! matmul.rs; its backward is two other loops (rows of W summed into dX, rows of x summed into
//! dW) rather than the forward's dot products, so it lives here.

use rayon::prelude::*;

use super::weight::CpuWeight;

/// Rows of dX one task owns: W is widened to f32 once per task, so this amortises the widening
/// (1/64 of the multiply-adds) and still leaves 32 tasks for a 2048-row sequence.
const DX_ROWS_PER_TASK: usize = 64;
/// W rows widened at a time: 64 × k f32 stays in L2 while all the task's dX rows meet it.
const W_ROWS_PER_CHUNK: usize = 64;
/// Rows of dW one task owns (18 tasks for H = 576).
const DW_ROWS_PER_TASK: usize = 32;
/// Rows of x per pass over a task's dW rows: the tile stays in L2 while every dW row meets it.
const X_ROWS_PER_TILE: usize = 64;

/// `x[r] += bias` for the first `rows` rows.
pub fn add_bias(x: &mut [f32], rows: usize, bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()).take(rows) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Backward of `add_bias`: d_bias += Σ_rows dy.
pub fn bias_backward(dy: &[f32], rows: usize, d_bias: &mut [f32]) {
    for row in dy.chunks_exact(d_bias.len()).take(rows) {
        for (d, v) in d_bias.iter_mut().zip(row) {
            *d += v;
        }
    }
}

/// Backward of `matmul` (y[m, n] = x[m, k]·wᵀ): `dx += dy·w` for a weight of any dtype (the frozen
/// bf16 lm_head needs only this half), and `dw += dyᵀ·x` into an f32 `[n, k]` buffer.
pub fn matmul_backward(x: &[f32], dy: &[f32], m: usize, w: &CpuWeight, dx: Option<&mut [f32]>, dw: Option<&mut [f32]>) {
    let (n, k) = w.matrix_shape();
    assert!(dy.len() >= m * n, "matmul_backward: dy has fewer than {m} rows of {n}");
    let dy = &dy[..m * n];
    if let Some(dx) = dx {
        assert!(dx.len() >= m * k, "matmul_backward: dx has fewer than {m} rows of {k}");
        input_gradient(dy, w, &mut dx[..m * k]);
    }
    if let Some(dw) = dw {
        assert!(x.len() >= m * k, "matmul_backward: x has fewer than {m} rows of {k}");
        assert_eq!(dw.len(), n * k, "matmul_backward: dw is not [{n}, {k}]");
        weight_gradient(&x[..m * k], dy, n, dw);
    }
}

/// dx[m, k] += dy[m, n]·w[n, k]: each task owns a tile of dx rows and adds every row of W into
/// them, weighted by the tile's dy column, W widened to f32 a chunk of rows at a time.
fn input_gradient(dy: &[f32], w: &CpuWeight, dx: &mut [f32]) {
    let (n, k) = w.matrix_shape();
    dx.par_chunks_mut(DX_ROWS_PER_TASK * k).zip(dy.par_chunks(DX_ROWS_PER_TASK * n)).for_each(|(dx_tile, dy_tile)| {
        let mut wide = vec![0.0f32; W_ROWS_PER_CHUNK * k];
        for first in (0..n).step_by(W_ROWS_PER_CHUNK) {
            let rows = W_ROWS_PER_CHUNK.min(n - first);
            for (j, dst) in wide.chunks_exact_mut(k).take(rows).enumerate() {
                w.row_to_f32(first + j, dst);
            }
            for (group, dy_group) in dx_tile.chunks_mut(4 * k).zip(dy_tile.chunks(4 * n)) {
                accumulate(group, k, &wide[..rows * k], |q, j| dy_group[q * n + first + j]);
            }
        }
    });
}

/// dw[n, k] += dy[m, n]ᵀ·x[m, k]: each task owns a tile of dw rows and adds every row of x into
/// them, weighted by the tile's dy columns, x walked a tile of rows at a time.
fn weight_gradient(x: &[f32], dy: &[f32], n: usize, dw: &mut [f32]) {
    let k = dw.len() / n;
    let m = x.len() / k;
    dw.par_chunks_mut(DW_ROWS_PER_TASK * k).enumerate().for_each(|(task, dw_tile)| {
        for r0 in (0..m).step_by(X_ROWS_PER_TILE) {
            let x_tile = &x[r0 * k..(r0 + X_ROWS_PER_TILE).min(m) * k];
            for (g, group) in dw_tile.chunks_mut(4 * k).enumerate() {
                let j0 = task * DW_ROWS_PER_TASK + 4 * g;
                accumulate(group, k, x_tile, |q, r| dy[(r0 + r) * n + j0 + q]);
            }
        }
    });
}

/// For every row j of `src` (`[≤ MAX_SRC_ROWS, k]`): row q of `group` (at most 4 rows of k)
/// += coef(q, j) · src[j]. Source rows whose coefficients are all zero (masked rows give zero
/// gradients) are dropped first.
fn accumulate(group: &mut [f32], k: usize, src: &[f32], coef: impl Fn(usize, usize) -> f32) {
    let rows = group.len() / k;
    assert!(rows <= 4 && src.len() <= MAX_SRC_ROWS * k, "accumulate: a tile larger than the kernel's");
    let mut active = [(0usize, [0.0f32; 4]); MAX_SRC_ROWS];
    let mut len = 0;
    for j in 0..src.len() / k {
        let mut a = [0.0f32; 4];
        for (q, v) in a.iter_mut().enumerate().take(rows) {
            *v = coef(q, j);
        }
        if a != [0.0; 4] {
            active[len] = (j, a);
            len += 1;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX-512F and FMA (checked above).
        return unsafe { accumulate_avx512(group, k, src, &active[..len]) };
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { accumulate_avx2(group, k, src, &active[..len]) };
    }
    accumulate_strips::<Separate, STRIP>(group, k, src, &active[..len])
}

/// Source rows per kernel call: the callers' W chunks and x tiles.
const MAX_SRC_ROWS: usize = if W_ROWS_PER_CHUNK > X_ROWS_PER_TILE { W_ROWS_PER_CHUNK } else { X_ROWS_PER_TILE };
/// Output columns per register tile: 4 rows × 16 columns are 8 AVX2 accumulators, which leaves
/// registers for the source strip and the four broadcast coefficients.
const STRIP: usize = 16;
/// With AVX-512's 32 registers: 4 rows × 64 columns are 16 accumulators, 4 more for the source
/// strip (twice the AVX2 kernel's multiply-adds per cycle; the lm_head's input gradient is a
/// quarter of a Clover-2 training step).
const STRIP_AVX512: usize = 64;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_avx2(group: &mut [f32], k: usize, src: &[f32], active: &[(usize, [f32; 4])]) {
    accumulate_strips::<Fused, STRIP>(group, k, src, active)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn accumulate_avx512(group: &mut [f32], k: usize, src: &[f32], active: &[(usize, [f32; 4])]) {
    let done = strips::<Fused, STRIP_AVX512>(group, k, src, active, 0);
    let done = strips::<Fused, STRIP>(group, k, src, active, done);
    columns::<Fused>(group, k, src, active, done);
}

/// The register-blocked kernel: W-wide strips of the output, each a 4 × W tile summed in registers
/// over every active source row, then added to memory once (no stores in the inner loop); then
/// the columns left over, one at a time.
#[inline(always)]
fn accumulate_strips<M: MulAdd, const W: usize>(
    group: &mut [f32],
    k: usize,
    src: &[f32],
    active: &[(usize, [f32; 4])],
) {
    let done = strips::<M, W>(group, k, src, active, 0);
    columns::<M>(group, k, src, active, done);
}

/// The W-wide strips from column `first` on; returns the first column it left.
#[inline(always)]
fn strips<M: MulAdd, const W: usize>(
    group: &mut [f32],
    k: usize,
    src: &[f32],
    active: &[(usize, [f32; 4])],
    first: usize,
) -> usize {
    let rows = group.len() / k;
    let count = (k - first) / W;
    for c0 in (0..count).map(|s| first + s * W) {
        let mut acc = [[0.0f32; W]; 4];
        for &(j, a) in active {
            let s = &src[j * k + c0..][..W];
            for (acc_q, &a_q) in acc.iter_mut().zip(&a) {
                for (t, &v) in acc_q.iter_mut().zip(s) {
                    *t = M::mul_add(a_q, v, *t);
                }
            }
        }
        for (q, acc_q) in acc.iter().enumerate().take(rows) {
            for (d, t) in group[q * k + c0..][..W].iter_mut().zip(acc_q) {
                *d += t;
            }
        }
    }
    first + count * W
}

/// Columns `first..k` one at a time (the same sum order as the strips: source rows in order).
#[inline(always)]
fn columns<M: MulAdd>(group: &mut [f32], k: usize, src: &[f32], active: &[(usize, [f32; 4])], first: usize) {
    let rows = group.len() / k;
    for c in first..k {
        for q in 0..rows {
            group[q * k + c] += active.iter().fold(0.0, |sum, &(j, a)| M::mul_add(a[q], src[j * k + c], sum));
        }
    }
}

/// a·b + c, fused where the CPU has FMA (a separate multiply and add elsewhere: without the
/// instruction, `f32::mul_add` is a slow library call).
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

#[cfg(target_arch = "x86_64")]
struct Fused;

#[cfg(target_arch = "x86_64")]
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;
    use crate::backend::cpu::gradcheck::{self as gc, assert_grad, numeric, to_f64};
    use crate::weights::{DType, HostTensor};

    fn f32_weight(n: usize, k: usize, values: &[f32]) -> CpuWeight {
        CpuWeight::new(HostTensor::from_f32("w", vec![n, k], values)).expect("a 2-d f32 tensor")
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (m, n, k) = (6, 5, 7);
        let mut rng = crate::rng::Rng::new(15);
        let (x, w, b, g) = (
            gc::random(&mut rng, m * k, 1.0),
            gc::random(&mut rng, n * k, 1.0),
            gc::random(&mut rng, n, 1.0),
            gc::random(&mut rng, m * n, 1.0),
        );
        let (mut dx, mut dw, mut db) = (vec![0.0; m * k], vec![0.0; n * k], vec![0.0; n]);
        matmul_backward(&x, &g, m, &f32_weight(n, k, &w), Some(&mut dx), Some(&mut dw));
        bias_backward(&g, m, &mut db);
        let (x64, w64, b64, g64) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&g));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = gc::linear(x, w, n);
            for row in y.chunks_exact_mut(n) {
                row.iter_mut().zip(b).for_each(|(v, bv)| *v += bv);
            }
            gc::dot(&y, &g64)
        };
        assert_grad("dx", &dx, &numeric(&x64, |v| loss(v, &w64, &b64)));
        assert_grad("dw", &dw, &numeric(&w64, |v| loss(&x64, v, &b64)));
        assert_grad("db", &db, &numeric(&b64, |v| loss(&x64, &w64, v)));
    }

    /// Shapes that cross every tile boundary (k = 85: one 64-wide AVX-512 strip, one 16-wide
    /// strip, 5 single columns), f32 and bf16 weights, gradients added to what the buffers
    /// already hold; the reference is the f64 product of the same (rounded) weights.
    #[test]
    fn accumulates_over_tiles_for_f32_and_bf16_weights() {
        for k in [37, 85] {
            accumulates_over_tiles(k);
        }
    }

    fn accumulates_over_tiles(k: usize) {
        let (m, n) = (133, 141);
        let mut rng = crate::rng::Rng::new(16);
        let x = gc::random(&mut rng, m * k, 1.0);
        let mut dy = gc::random(&mut rng, m * n, 1.0);
        // A masked row: its zero gradient must leave dx's row as it was.
        dy[70 * n..71 * n].fill(0.0);
        let w = gc::random(&mut rng, n * k, 1.0);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let bits = wb.iter().map(|v| v.to_bits()).collect();
        let bf16_weight = CpuWeight::new(HostTensor::from_bits("w", DType::BF16, vec![n, k], bits)).expect("bf16");
        let start = gc::random(&mut rng, m * k, 1.0);
        for (weight, exact) in
            [(f32_weight(n, k, &w), to_f64(&w)), (bf16_weight, wb.iter().map(|v| v.to_f64()).collect())]
        {
            let mut dx = start.clone();
            let mut dw = vec![0.5; n * k];
            matmul_backward(&x, &dy, m, &weight, Some(&mut dx), Some(&mut dw));
            for r in 0..m {
                for c in 0..k {
                    let want =
                        start[r * k + c] as f64 + (0..n).map(|j| dy[r * n + j] as f64 * exact[j * k + c]).sum::<f64>();
                    let got = dx[r * k + c] as f64;
                    assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "dx[{r},{c}] {got} vs {want}");
                }
            }
            for j in 0..n {
                for c in 0..k {
                    let want = 0.5 + (0..m).map(|r| dy[r * n + j] as f64 * x[r * k + c] as f64).sum::<f64>();
                    let got = dw[j * k + c] as f64;
                    assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "dw[{j},{c}] {got} vs {want}");
                }
            }
        }
    }
}
