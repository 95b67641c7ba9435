//! AVX-512 BF16 for bf16 weights (AMD Zen 4 and later, Intel Cooper Lake and later): `out = x ·
//! wᵀ` with the multiply-adds done by `vdpbf16ps`, 32 bf16 pairs per instruction (two products
//! into each of 16 f32 lanes) where an FMA on widened weights takes 16, and nothing to widen.
//!
//! Why: a tree verification of more than ~8 nodes is compute-bound on two cores (docs/cpu-
//! kernels.md). The weights need no packing: a bf16 row is already the pair order `vdpbf16ps`
//! reads (`w[c, 2l]`, `w[c, 2l + 1]` in lane `l`), and so is a bf16 activation row.
//!
//! Numerics: the activations are rounded to bf16 (within 2⁻⁸ of themselves, as llama.cpp does
//! for bf16 weights and as a bf16 GEMM on a GPU does) and multiplied once. Splitting them into
//! `hi + lo` parts instead, as the AMX path does (`bf16_split.rs`), keeps f32-like precision but
//! takes two instructions per 32 products, the FMA kernel's count: measured no faster than it
//! (docs/cpu-kernels.md), so that flavour is not offered. Each lane computes `acc + a₀b₀ + a₁b₁`
//! with the instruction's own rounding (subnormal inputs and results flushed to zero, far below any
//! activation or weight of a trained model). An output depends only on its own row of `x` and
//! column of `w`, through the same instructions in the same order whatever `m`, the tiling or the
//! thread count is, so rows are bit-identical alone (decode) or in a tree (verification), which
//! the lossless speculative engine needs; the bits differ from the FMA kernel's, so every bf16
//! matmul goes through here when this set is selected, m = 1 included.

use std::arch::x86_64::*;

use half::bf16;

use super::bf16_split::round_row;
use super::kernel::{store_sums, OutPtr};
use super::x86::Avx512;

/// Rows × columns of a register tile: 24 accumulators, 4 weight vectors and an activation vector
/// of the 32 zmm registers, as the FMA kernel's.
const R: usize = 6;
const C: usize = 4;
/// bf16 values per vector: 16 lanes of pairs.
const BLOCK: usize = 32;
/// How far ahead one row's weight stream is prefetched (bf16 values: 8 KiB). Streamed, one row
/// measured 0.83× (one thread) and 0.86× (two) of the FMA kernel's time of then, where this set's
/// 1 × 4 tile took 1.11–1.17×; unlike the FMA kernel's, streaming 2 rows gained nothing and 3 or
/// more lost (1.5–2.4×), so only one row streams (docs/cpu-kernels.md, "One weight stream per task").
const STREAM_AHEAD: usize = 4096;

/// Whether this CPU has AVX-512 F/BW/VL and BF16.
pub(super) fn supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bf16")
}

/// The activation rows rounded to bf16, each padded with zeros to a multiple of `BLOCK` so the
/// loop over `k` needs no tail for them.
pub(super) struct Rows {
    x: Vec<u16>,
    stride: usize,
}

impl Rows {
    pub(super) fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert!(supported(), "vdpbf16ps matmul called on a CPU without AVX-512 BF16");
        let stride = k.next_multiple_of(BLOCK);
        let mut rounded = vec![0u16; m * stride];
        for r in 0..m {
            // SAFETY: AVX-512 F/BW are there (asserted above).
            unsafe { round_row(&x[r * k..(r + 1) * k], &mut rounded[r * stride..r * stride + k]) };
        }
        Rows { x: rounded, stride }
    }
}

/// `out[r, c0..c1]` for every row `r` of `rows` against the bf16 weight `w` `[n, k]`.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and BF16 (`Rows::new` asserts it); `c0 ≤ c1 ≤ n`; `out` is
/// `[m, n]` and no other task writes these columns.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
pub(super) unsafe fn columns(rows: &Rows, m: usize, k: usize, n: usize, w: &[bf16], out: OutPtr, c0: usize, c1: usize) {
    let w = w.as_ptr().cast::<u16>();
    if m == 1 {
        // As the FMA kernel (`kernel.rs`): the task's weight rows one at a time, one stream.
        for c in c0..c1 {
            let (at, o) = ([c * k], out.0.add(c));
            tile::<1, 1, false>(rows.x.as_ptr(), rows.stride, k, w, at, o, n, STREAM_AHEAD);
        }
        return;
    }
    let mut j = c0;
    while j < c1 {
        let cols = C.min(c1 - j);
        let mut at = [0; C];
        for (c, a) in at.iter_mut().enumerate().take(cols) {
            *a = (j + c) * k;
        }
        let mut r = 0;
        while r < m {
            let (x, o) = (rows.x.as_ptr().add(r * rows.stride), out.0.add(r * n + j));
            let s = rows.stride;
            // All the rows left as one tile when they fit (a tile loads its weights once).
            let tile_rows = (m - r).min(R);
            if cols == C {
                match tile_rows {
                    1 => tile::<1, C, true>(x, s, k, w, at, o, n, C * k),
                    2 => tile::<2, C, true>(x, s, k, w, at, o, n, C * k),
                    3 => tile::<3, C, true>(x, s, k, w, at, o, n, C * k),
                    4 => tile::<4, C, true>(x, s, k, w, at, o, n, C * k),
                    5 => tile::<5, C, true>(x, s, k, w, at, o, n, C * k),
                    _ => tile::<R, C, true>(x, s, k, w, at, o, n, C * k),
                }
            } else {
                for (c, &a) in at.iter().enumerate().take(cols) {
                    match tile_rows {
                        1 => tile::<1, 1, true>(x, s, k, w, [a], o.add(c), n, C * k),
                        2 => tile::<2, 1, true>(x, s, k, w, [a], o.add(c), n, C * k),
                        3 => tile::<3, 1, true>(x, s, k, w, [a], o.add(c), n, C * k),
                        4 => tile::<4, 1, true>(x, s, k, w, [a], o.add(c), n, C * k),
                        5 => tile::<5, 1, true>(x, s, k, w, [a], o.add(c), n, C * k),
                        _ => tile::<R, 1, true>(x, s, k, w, [a], o.add(c), n, C * k),
                    }
                }
            }
            r += tile_rows;
        }
        j += cols;
    }
}

/// `out[r · n + c] = x[r] · w[c]` for an `RR × CC` tile, all accumulators in registers: activation
/// row `r` at `x + r · stride`, weight row `c` from value `at[c]` of `w`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<const RR: usize, const CC: usize, const FAR: bool>(
    x: *const u16,
    stride: usize,
    k: usize,
    w: *const u16,
    at: [usize; CC],
    out: *mut f32,
    n: usize,
    ahead: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); CC]; RR];
    let mut wv = [_mm512_setzero_si512(); CC];
    let mut i = 0;
    while i < k {
        let len = (k - i).min(BLOCK);
        for c in 0..CC {
            let p = w.add(at[c] + i);
            wv[c] = if len == BLOCK {
                _mm512_loadu_si512(p.cast())
            } else {
                _mm512_maskz_loadu_epi16(((1u64 << len) - 1) as __mmask32, p.cast())
            };
            // `ahead` values on, and with `FAR` twice that: for a tile, the same place in the next
            // two blocks of CC rows (the rows are contiguous, so this runs ahead of the stream);
            // one block ahead, as the FMA kernel, left the LM head's GEMV ~10% slower than also
            // fetching the second (benches/gemm.rs, gemv_bf16_alignment).
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(at[c] + i + ahead).cast());
            if FAR {
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(at[c] + i + 2 * ahead).cast());
            }
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = pairs(_mm512_loadu_si512(x.add(r * stride + i).cast()));
            for c in 0..CC {
                acc[c] = _mm512_dpbf16_ps(acc[c], xv, pairs(wv[c]));
            }
        }
        i += BLOCK;
    }
    store_sums::<Avx512, RR, CC>(&acc, out, n);
}

/// The same 512 bits, as 32 bf16 values.
#[inline(always)]
unsafe fn pairs(v: __m512i) -> __m512bh {
    std::mem::transmute(v)
}
