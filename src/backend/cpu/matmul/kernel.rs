//! The register-blocked micro-kernel, written once over a small SIMD abstraction that each
//! instruction set implements (`x86.rs`: AVX2, AVX-512; `scalar.rs`: portable).
//!
//! Summation order, the invariant everything here keeps: output `(r, c)` is accumulated in one
//! vector of `S::LANES` f32 lanes, lane `l` taking `x[r, i] · w[c, i]` for `i ≡ l (mod LANES)` in
//! increasing `i` (the last partial step zero-padded), then the lanes are summed by `S::sum`'s
//! fixed tree. Nothing in that order depends on how many rows or columns a tile holds or how
//! columns were split across threads, so a row's result is bit-identical whatever `m` the call had.

use half::{bf16, f16};

use crate::weights::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

/// A SIMD flavour used through zero-sized marker types. Every method is `unsafe` because it
/// reads or writes raw pointers and may use instructions the caller has to have checked for.
pub(super) trait Simd {
    const LANES: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    /// `LANES` values from `p`.
    unsafe fn load(p: *const f32) -> Self::V;
    /// `len < LANES` values from `p`, the other lanes zero; reads nothing past `p + len`.
    unsafe fn load_tail(p: *const f32, len: usize) -> Self::V;
    /// `acc + a · b`, fused where the instruction set has FMA.
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    /// The sum of the lanes: lane `l` with lane `l + LANES/2`, then with `l + LANES/4`, … .
    unsafe fn sum(v: Self::V) -> f32;
    /// A hint to fetch the cache line at `p` (any address: it is never dereferenced).
    unsafe fn prefetch(p: *const u8);
    /// `out[c] = sum(v[c])` for four vectors: a flavour may batch the shuffles, but must give
    /// exactly `sum`'s results.
    #[inline(always)]
    unsafe fn sum4(v: [Self::V; 4], out: *mut f32) {
        for (c, v) in v.into_iter().enumerate() {
            *out.add(c) = Self::sum(v);
        }
    }
}

/// What a weight matrix is stored as: plain values, or blocks of `PER_UNIT` values (GGUF's
/// quantized blocks, which never straddle two rows because `k` is a multiple of 32 for them).
pub(super) trait Element {
    const PER_UNIT: usize;

    /// The address holding value `i` of the matrix at `w` (rows contiguous: row `r`, column `j`
    /// is value `r · k + j`); for prefetching, so it may point past the matrix.
    #[inline(always)]
    fn address(w: *const Self, i: usize) -> *const u8
    where
        Self: Sized,
    {
        w.wrapping_add(i / Self::PER_UNIT).cast()
    }
}

impl Element for f32 {
    const PER_UNIT: usize = 1;
}
impl Element for bf16 {
    const PER_UNIT: usize = 1;
}
impl Element for f16 {
    const PER_UNIT: usize = 1;
}
impl Element for BlockQ8_0 {
    const PER_UNIT: usize = QK;
}
impl Element for BlockQ4_0 {
    const PER_UNIT: usize = QK;
}
impl Element for BlockQ4_1 {
    const PER_UNIT: usize = QK;
}

/// Loading weights stored as `E`, widened to f32 lanes: `LANES` values from value `i` of the
/// matrix at `w` (`i` a multiple of `LANES`; for blocks, `LANES` divides 32 so a load never
/// leaves its block).
pub(super) trait Load<E: Element>: Simd {
    unsafe fn load_w(w: *const E, i: usize) -> Self::V;
    /// As `Simd::load_tail`: `len < LANES` values, the other lanes zero (only plain types have
    /// rows that end inside a vector).
    unsafe fn load_w_tail(w: *const E, i: usize, len: usize) -> Self::V;

    /// `2 · LANES` values from value `i`, as `(load_w(i), load_w(i + LANES))`: a flavour whose
    /// vector is half a block widens the block's scales and quants once for both halves.
    #[inline(always)]
    unsafe fn load_w2(w: *const E, i: usize) -> (Self::V, Self::V) {
        (Self::load_w(w, i), Self::load_w(w, i + Self::LANES))
    }
}

/// Every weight type the kernel reads.
pub(super) trait LoadAll:
    Load<f32> + Load<bf16> + Load<f16> + Load<BlockQ8_0> + Load<BlockQ4_0> + Load<BlockQ4_1>
{
}
impl<S> LoadAll for S where S: Load<f32> + Load<bf16> + Load<f16> + Load<BlockQ8_0> + Load<BlockQ4_0> + Load<BlockQ4_1> {}

/// The weight matrix `[n, k]` as one typed slice.
#[derive(Clone, Copy)]
pub(super) enum Weights<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
    Q8_0(&'a [BlockQ8_0]),
    Q4_0(&'a [BlockQ4_0]),
    Q4_1(&'a [BlockQ4_1]),
}

/// Where a task writes: `out` of a `[m, n]` call. Tasks own disjoint column ranges.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub *mut f32);

// SAFETY: the pointer is only written through by tasks of one `matmul` call, each to its own
// column range, while the `&mut` it came from is held by that call.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// One call's operands: `out[m, n] = x[m, k] · wᵀ`, lengths checked by the caller.
pub(super) struct Job<'a> {
    pub x: &'a [f32],
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub w: Weights<'a>,
    pub out: OutPtr,
    /// Calls of up to this many rows stream each task's weight rows one at a time (0 or
    /// `STREAM_ROWS`: `matmul::stream_rows`); more rows run on the tiles.
    pub stream_rows: usize,
}

/// Fills `out[r, c0..c1]` for every row `r`: up to `STREAM_ROWS` rows a weight row at a time;
/// more, `C` weight rows at a time against tiles of `R` input rows. The weight block is read from
/// memory once and stays in L1 across the row tiles; 16-bit weights are widened in registers each time, which measured faster than widening a block once
/// into scratch (that scratch evicts the input rows from L1 when `k` is large).
///
/// # Safety
/// The CPU must support `S`'s instructions; `c0 ≤ c1 ≤ n`; no other task writes these columns.
#[inline(always)]
pub(super) unsafe fn columns<S: LoadAll, const R: usize, const C: usize>(job: &Job, c0: usize, c1: usize) {
    match job.w {
        Weights::F32(w) => columns_typed::<S, f32, R, C>(job, w.as_ptr(), c0, c1),
        Weights::BF16(w) => columns_typed::<S, bf16, R, C>(job, w.as_ptr(), c0, c1),
        Weights::F16(w) => columns_typed::<S, f16, R, C>(job, w.as_ptr(), c0, c1),
        Weights::Q8_0(w) => columns_typed::<S, BlockQ8_0, R, C>(job, w.as_ptr(), c0, c1),
        Weights::Q4_0(w) => columns_typed::<S, BlockQ4_0, R, C>(job, w.as_ptr(), c0, c1),
        Weights::Q4_1(w) => columns_typed::<S, BlockQ4_1, R, C>(job, w.as_ptr(), c0, c1),
    }
}

#[inline(always)]
unsafe fn columns_typed<S: Load<E>, E: Element, const R: usize, const C: usize>(
    job: &Job,
    w: *const E,
    c0: usize,
    c1: usize,
) {
    let Job { x, m, k, n, out, .. } = *job;
    debug_assert!(job.stream_rows <= STREAM_ROWS, "columns_typed has stream tiles up to {STREAM_ROWS} rows");
    // Up to `job.stream_rows` rows (plain decoding, small trees, on CPUs where it pays: see
    // `STREAM_ROWS`): the task's weight rows one at a time, so its column range is read as one
    // sequential stream (rows are contiguous), prefetched `STREAM_AHEAD_BYTES` ahead. An R × 1
    // tile sums as every tile, so the choice never changes a result.
    if m <= job.stream_rows {
        let ahead = STREAM_AHEAD_BYTES * E::PER_UNIT / std::mem::size_of::<E>();
        for c in c0..c1 {
            let (x, out) = (x.as_ptr(), out.0.add(c));
            match m {
                1 => tile::<S, E, 1, 1>(x, k, w, [c * k], out, n, ahead),
                2 => tile::<S, E, 2, 1>(x, k, w, [c * k], out, n, ahead),
                _ => tile::<S, E, 3, 1>(x, k, w, [c * k], out, n, ahead),
            }
        }
        return;
    }
    // Many rows (prefill, training): blocks of the task's columns against blocks of rows, each
    // block sized to stay in L2 while the other is walked, instead of every row against every
    // group of C columns (at 512 rows of k = 576 the input is 1.2 MB, larger than L2, and was
    // read from L3 again for each group). Blocking changes which tile computes an output, not its
    // summation order, so the bits are those of one pass.
    let (row_block, col_block) = blocks(m, k, std::mem::size_of::<E>() as f64 / E::PER_UNIT as f64, R, C);
    let mut j0 = c0;
    while j0 < c1 {
        let j1 = j0.saturating_add(col_block).min(c1);
        let mut r0 = 0;
        while r0 < m {
            let rows_here = row_block.min(m - r0);
            let xr = x.as_ptr().add(r0 * k);
            let mut j = j0;
            while j < j1 {
                let cols = C.min(j1 - j);
                // Where each column's weight row starts, counted in values from `w`.
                let mut rows = [0; C];
                for (c, row) in rows.iter_mut().enumerate().take(cols) {
                    *row = (j + c) * k;
                }
                row_groups::<S, E, R, C>(xr, rows_here, k, w, rows, cols, out.0.add(r0 * n + j), n);
                j += cols;
            }
            r0 += rows_here;
        }
        j0 = j1;
    }
}

/// Bytes of the input rows, and of the weight rows, a block keeps in L2 (1 MB per core on the
/// Zen 5, 1.25 MB on the Ice Lake this project runs on; the two blocks together take about half,
/// leaving room for the outputs). 128–512 KB measured within ~10% of each other
/// (docs/cpu-kernels.md, "Many rows in cache blocks").
const BLOCK_BYTES: usize = 256 << 10;

/// `(rows, columns)` of a cache block for `m` rows of length `k` against weights of
/// `weight_bytes` per value: whole tiles of `r` rows and groups of `c` columns, at least one of
/// each; all the rows while they fit, so calls of up to a few dozen rows run as one block.
fn blocks(m: usize, k: usize, weight_bytes: f64, r: usize, c: usize) -> (usize, usize) {
    let rows = (BLOCK_BYTES / (4 * k.max(1))) / r * r;
    let cols = ((BLOCK_BYTES as f64 / (weight_bytes * k.max(1) as f64)) as usize) / c * c;
    if m <= rows.max(r) {
        return (m, usize::MAX);
    }
    (rows.max(r), cols.max(c))
}

/// Every row of `x` against `cols ≤ C` weight rows: tiles of `R` rows, the last one of the rows
/// left.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn row_groups<S: Load<E>, E: Element, const R: usize, const C: usize>(
    x: *const f32,
    m: usize,
    k: usize,
    w: *const E,
    rows_at: [usize; C],
    cols: usize,
    out: *mut f32,
    n: usize,
) {
    let mut r = 0;
    while r < m {
        let (xr, or) = (x.add(r * k), out.add(r * n));
        // One tile of all the rows left when they fit: a tile widens its weights once, so 3 rows
        // as one tile cost less than 2 + 1 (for quantized blocks, far less).
        let rows = (m - r).min(R);
        if cols == C {
            match rows {
                1 => tile::<S, E, 1, C>(xr, k, w, rows_at, or, n, C * k),
                2 => tile::<S, E, 2, C>(xr, k, w, rows_at, or, n, C * k),
                3 => tile::<S, E, 3, C>(xr, k, w, rows_at, or, n, C * k),
                4 => tile::<S, E, 4, C>(xr, k, w, rows_at, or, n, C * k),
                5 => tile::<S, E, 5, C>(xr, k, w, rows_at, or, n, C * k),
                _ => tile::<S, E, R, C>(xr, k, w, rows_at, or, n, C * k),
            }
        } else {
            for (c, &at) in rows_at.iter().enumerate().take(cols) {
                match rows {
                    1 => tile::<S, E, 1, 1>(xr, k, w, [at], or.add(c), n, C * k),
                    2 => tile::<S, E, 2, 1>(xr, k, w, [at], or.add(c), n, C * k),
                    3 => tile::<S, E, 3, 1>(xr, k, w, [at], or.add(c), n, C * k),
                    4 => tile::<S, E, 4, 1>(xr, k, w, [at], or.add(c), n, C * k),
                    5 => tile::<S, E, 5, 1>(xr, k, w, [at], or.add(c), n, C * k),
                    _ => tile::<S, E, R, 1>(xr, k, w, [at], or.add(c), n, C * k),
                }
            }
        }
        r += rows;
    }
}

/// `out[r * n + c] = x[r] · w[c]` for an `R × C` tile, all accumulators in registers; weight
/// row `c` starts at value `rows_at[c]` of `w`; each load prefetches the weights `ahead` values on.
#[inline(always)]
unsafe fn tile<S: Load<E>, E: Element, const R: usize, const C: usize>(
    x: *const f32,
    k: usize,
    w: *const E,
    rows_at: [usize; C],
    out: *mut f32,
    n: usize,
    ahead: usize,
) {
    let mut acc = [[S::zero(); C]; R];
    let mut wv = [S::zero(); C];
    let mut i = 0;
    // Blocks two vectors at a time, column by column (two weight vectors live, not 2·C): the
    // same multiply-adds in the same order per accumulator as the loop below, so the same bits.
    while E::PER_UNIT > 1 && i + 2 * S::LANES <= k {
        for c in 0..C {
            let (lo, hi) = S::load_w2(w, rows_at[c] + i);
            S::prefetch(E::address(w, rows_at[c] + i + ahead));
            for (r, acc) in acc.iter_mut().enumerate() {
                acc[c] = S::fma(S::load(x.add(r * k + i)), lo, acc[c]);
                acc[c] = S::fma(S::load(x.add(r * k + i + S::LANES)), hi, acc[c]);
            }
        }
        i += 2 * S::LANES;
    }
    while i + S::LANES <= k {
        for c in 0..C {
            wv[c] = S::load_w(w, rows_at[c] + i);
            // `ahead` values on: for a tile, the same place in the next block of C rows (the rows
            // are contiguous, so this runs one block ahead of the stream); the hardware
            // prefetchers alone left the decode GEMV latency-bound at a third of its bandwidth.
            S::prefetch(E::address(w, rows_at[c] + i + ahead));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = S::load(x.add(r * k + i));
            for c in 0..C {
                acc[c] = S::fma(xv, wv[c], acc[c]);
            }
        }
        i += S::LANES;
    }
    if i < k {
        let len = k - i;
        for c in 0..C {
            wv[c] = S::load_w_tail(w, rows_at[c] + i, len);
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let xv = S::load_tail(x.add(r * k + i), len);
            for c in 0..C {
                acc[c] = S::fma(xv, wv[c], acc[c]);
            }
        }
    }
    store_sums::<S, R, C>(&acc, out, n);
}

/// `out[r · n + c] = S::sum(acc[r][c])` for a tile of accumulators, four columns at a time
/// through `sum4`.
#[inline(always)]
pub(super) unsafe fn store_sums<S: Simd, const R: usize, const C: usize>(
    acc: &[[S::V; C]; R],
    out: *mut f32,
    n: usize,
) {
    for (r, acc) in acc.iter().enumerate() {
        let o = out.add(r * n);
        let mut c = 0;
        while c + 4 <= C {
            S::sum4([acc[c], acc[c + 1], acc[c + 2], acc[c + 3]], o.add(c));
            c += 4;
        }
        while c < C {
            *o.add(c) = S::sum(acc[c]);
            c += 1;
        }
    }
}

/// Up to how many rows a call takes its weight rows one at a time (one stream per task) where
/// streaming is on (`Job::stream_rows`). With more, the tiles' reuse of each weight vector across
/// four columns wins (AMD Zen 5: 1.28× and 1.09× faster streamed at 2 and 3 rows, 0.88× at 4,
/// 0.64× at 6; `gemv_bf16_model_step`'s weights, one process, docs/cpu-kernels.md).
/// `columns_typed` has a tile for each count up to 3.
pub(super) const STREAM_ROWS: usize = 3;
const _: () = assert!(STREAM_ROWS <= 3);

/// How far ahead a streamed call prefetches its weights: for `dpbf16.rs`'s loop of the
/// same shape, 8 KiB measured 5–7% faster than 4 KiB and ~4% faster than 16 KiB (Zen 5, one thread).
const STREAM_AHEAD_BYTES: usize = 8192;

/// `x · w` with the kernel's summation order (one row, one column).
///
/// # Safety
/// The CPU must support `S`'s instructions.
#[inline(always)]
pub(super) unsafe fn dot<S: LoadAll>(x: &[f32], w: Weights) -> f32 {
    match w {
        Weights::F32(w) => dot_typed::<S, f32>(x, w),
        Weights::BF16(w) => dot_typed::<S, bf16>(x, w),
        Weights::F16(w) => dot_typed::<S, f16>(x, w),
        Weights::Q8_0(w) => dot_typed::<S, BlockQ8_0>(x, w),
        Weights::Q4_0(w) => dot_typed::<S, BlockQ4_0>(x, w),
        Weights::Q4_1(w) => dot_typed::<S, BlockQ4_1>(x, w),
    }
}

#[inline(always)]
unsafe fn dot_typed<S: Load<E>, E: Element>(x: &[f32], w: &[E]) -> f32 {
    assert_eq!(x.len(), w.len() * E::PER_UNIT, "dot: lengths differ");
    let mut out = 0.0;
    tile::<S, E, 1, 1>(x.as_ptr(), x.len(), w.as_ptr(), [0], &mut out, 1, x.len());
    out
}
