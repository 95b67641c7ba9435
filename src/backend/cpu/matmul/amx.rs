//! AMX tiles for bf16 weights (Intel Sapphire Rapids and later): `out = x · wᵀ` with the
//! multiply-adds done by `tdpbf16ps`, 16 rows × 16 columns × 32 products per instruction.
//!
//! Why: a tree verification multiplies 2–64 rows by every weight. With AVX-512 FMA that costs
//! about 2 ms per extra row on the default model (compute-bound at ~50 G multiply-adds/s on two
//! cores); a tile instruction does 8,192 multiply-adds, so the matmuls of a 26-row step cost
//! about a third of AVX-512's. The price: a tile load takes ~20 ns per KiB, so one decode row
//! streams the weights ~20% slower than the AVX-512 kernel. Used only when
//! `CLOVER_MATMUL_ISA=amx` (mod.rs says why; docs/cpu-kernels.md has the measurements).
//!
//! Layout. Weights are packed once per weight (on its first use) into the tile order the
//! instruction wants: for each group of 64 output columns, each block of 32 `k`, four 1 KiB
//! tiles (16 columns each) whose row `r` holds, per column, the pair `w[c, 2r], w[c, 2r + 1]`.
//! A group's tiles for one `k` block are contiguous, so a task streams its weights in order.
//! `n` is padded to 64 and `k` to 32 with zeros.
//!
//! Numerics. The tiles multiply bf16 by bf16 and accumulate in f32. Activations are f32, so each
//! row is split into `hi = bf16(x)` and `lo = bf16(x − hi)` and both are multiplied (`x` is kept
//! to within 2⁻¹⁶ of itself, against bf16's 2⁻⁸): every `k` block adds `hi · w` then `lo · w`.
//! An output depends only on its own row of `x` and column of `w`, through the same sequence of
//! instructions whatever `m` is, so rows are bit-identical alone (decode) or in a tree
//! (verification), which the lossless speculative engine needs. As Intel describes the
//! instruction, it treats subnormal inputs as zero and flushes subnormal results (below 2⁻¹²⁶,
//! far from any activation or weight of a trained model). Inside one instruction the unit
//! computes `c + (E + O)`, `E` and `O` the even- and odd-`k` products summed in order
//! (measured: docs/cpu-kernels.md), not a sequential sum, so the AVX-512 kernel's bits differ:
//! every bf16 matmul goes through here when AMX is selected, m = 1 included.

use std::arch::asm;
use std::arch::x86_64::{__cpuid_count, _mm_prefetch, _MM_HINT_T0};
use std::sync::OnceLock;

use half::bf16;
use rayon::prelude::*;

use super::bf16_split::split_row;
use super::kernel::OutPtr;
use super::{MIN_TASK_MACS, TASKS_PER_THREAD};

/// Output columns per group: four 16-column tiles accumulate at once (tmm0–tmm3).
const GROUP_COLS: usize = 64;
/// `k` per tile instruction: 16 pairs.
const BLOCK_K: usize = 32;
/// Rows per tile.
const TILE_ROWS: usize = 16;
/// u16 elements in one 16 × 64-byte tile.
const TILE_ELEMS: usize = TILE_ROWS * BLOCK_K;
/// How far ahead of the tiles being loaded to prefetch the weight stream, in bytes: the next
/// `k` block of the group (two or four blocks ahead, or a further prefetch into L2, measured no
/// better on the gemm bench nor on the default model's decode).
const PREFETCH_AHEAD: usize = 4 * TILE_ELEMS * 2;

/// Whether this CPU has AMX-TILE and AMX-BF16 and the OS lets this process use the tiles;
/// asked once (the permission is per process and is requested here).
pub(super) fn supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // Leaf 7 exists on every CPU that reaches here (it has AVX-512).
        let leaf7 = __cpuid_count(7, 0);
        let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        amx_bf16 && amx_tile && request_tile_permission()
    })
}

/// Linux keeps the 8 KiB of tile registers out of a process's saved state until the process
/// asks for them (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); a tile instruction
/// before that raises SIGILL.
#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a raw arch_prctl system call with two integer arguments; it reads and writes no
    // memory of ours. The kernel clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// One cache line of packed weights (keeps tiles 64-byte aligned).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; 32]);

/// A `[n, k]` bf16 weight in tile order (see the module docs).
pub struct PackedBf16 {
    n: usize,
    k: usize,
    groups: usize,
    blocks: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for PackedBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedBf16 [{}, {}]", self.n, self.k)
    }
}

impl PackedBf16 {
    pub fn new(w: &[bf16], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "pack: weight is not [{n}, {k}]");
        let (groups, blocks) = (n.div_ceil(GROUP_COLS), k.div_ceil(BLOCK_K));
        // One group's tiles: blocks × 4 tiles × 16 lines.
        let group_lines = blocks * 4 * TILE_ROWS;
        let mut lines = vec![Line([0; 32]); groups * group_lines];
        lines.par_chunks_mut(group_lines).enumerate().for_each(|(g, lines)| {
            for (t, tile) in lines.chunks_mut(TILE_ROWS).enumerate() {
                let (block, j) = (t / 4, t % 4);
                for (r, line) in tile.iter_mut().enumerate() {
                    for c in 0..16 {
                        let col = g * GROUP_COLS + j * 16 + c;
                        for e in 0..2 {
                            let i = block * BLOCK_K + 2 * r + e;
                            if col < n && i < k {
                                line.0[2 * c + e] = w[col * k + i].to_bits();
                            }
                        }
                    }
                }
            }
        });
        PackedBf16 { n, k, groups, blocks, lines }
    }

    /// The four tiles of group `g`, `k` block `b`.
    fn tiles(&self, g: usize, b: usize) -> *const u16 {
        self.lines[(g * self.blocks + b) * 4 * TILE_ROWS..].as_ptr().cast()
    }
}

/// `x` rows as `hi` and `lo` bf16 parts, rows padded to a multiple of 16 and `k` to a multiple
/// of 32 with zeros: `[tiles · 16, blocks · 32]` each.
struct SplitRows {
    hi: Vec<u16>,
    lo: Vec<u16>,
    tiles: usize,
    stride: usize,
}

impl SplitRows {
    fn new(x: &[f32], m: usize, k: usize) -> Self {
        let (tiles, stride) = (m.div_ceil(TILE_ROWS), k.next_multiple_of(BLOCK_K));
        let mut hi = vec![0u16; tiles * TILE_ROWS * stride];
        let mut lo = hi.clone();
        for r in 0..m {
            let (h, l) = (&mut hi[r * stride..r * stride + k], &mut lo[r * stride..r * stride + k]);
            // SAFETY: AMX CPUs have AVX-512 F/BW (supported() is checked by the caller).
            unsafe { split_row(&x[r * k..(r + 1) * k], h, l) };
        }
        SplitRows { hi, lo, tiles, stride }
    }
}

/// The tile shapes: C tiles `tmm0`–`tmm3` and A tiles `tmm4`–`tmm5` of `rows` rows, B tiles
/// `tmm6`–`tmm7` of 16 rows (32 `k`); all 64 bytes wide.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    /// A call of fewer than 16 rows uses tiles of just those rows: the tile unit's time per
    /// instruction and per A load grows with the rows (measured: 3.3 ns per `tdpbf16ps` at 1 row,
    /// 5.6 ns at 16), and each row's result is the same whatever the tile's height.
    fn for_rows(rows: usize) -> Self {
        let r = rows.min(TILE_ROWS) as u8;
        let mut config =
            TileConfig { palette: 1, start_row: 0, reserved: [0; 14], bytes_per_row: [0; 16], rows: [0; 16] };
        for t in 0..8 {
            config.bytes_per_row[t] = 64;
            config.rows[t] = if t < 6 { r } else { TILE_ROWS as u8 };
        }
        config
    }
}

/// `out[m, n] = x[m, k] · wᵀ` on the tiles. `supported()` must have returned true.
pub(super) fn matmul(x: &[f32], m: usize, w: &PackedBf16, out: &mut [f32]) {
    assert!(supported(), "AMX matmul called on a CPU or OS without AMX");
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k, "matmul: x is not [{m}, {k}]");
    assert_eq!(out.len(), m * n, "matmul: out is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    let rows = SplitRows::new(x, m, k);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let by_threads = w.groups.div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD);
    let by_work = MIN_TASK_MACS.div_ceil(m * k.max(1) * GROUP_COLS);
    let per_task = by_threads.max(by_work).max(1);
    let task = |t: usize| {
        let g0 = t * per_task;
        // SAFETY: AMX is supported and permitted (asserted above); tasks own disjoint column
        // groups, and `out` (checked to be [m, n]) stays mutably borrowed until they finish.
        unsafe { groups(&rows, m, w, &out_ptr, g0, w.groups.min(g0 + per_task)) }
    };
    let tasks = w.groups.div_ceil(per_task);
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// Column groups `g0..g1` for every row.
///
/// # Safety
/// AMX is supported and permitted; no other task writes these columns of `out`.
unsafe fn groups(rows: &SplitRows, m: usize, w: &PackedBf16, out: &OutPtr, g0: usize, g1: usize) {
    let n = w.n;
    let a_stride = rows.stride * 2;
    let b_stride = BLOCK_K * 2;
    let tile_bytes = TILE_ELEMS * 2;
    // Four 16 × 16 f32 C tiles side by side: one 16 × 64 block of the output.
    let mut c = [0f32; TILE_ROWS * GROUP_COLS];
    let config = TileConfig::for_rows(m);
    asm!("ldtilecfg [{}]", in(reg) &config as *const TileConfig, options(nostack, readonly));
    for g in g0..g1 {
        for t in 0..rows.tiles {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
            let a_hi = rows.hi.as_ptr().add(t * TILE_ROWS * rows.stride);
            let a_lo = rows.lo.as_ptr().add(t * TILE_ROWS * rows.stride);
            for b in 0..w.blocks {
                let tiles = w.tiles(g, b).cast::<u8>();
                if t == 0 {
                    // The next block of this group's stream (past the end: harmless).
                    let ahead = tiles.wrapping_add(PREFETCH_AHEAD);
                    for line in 0..4 * TILE_ROWS {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64).cast());
                    }
                }
                asm!(
                    "tileloadd tmm4, [{a_hi} + {a_stride}*1]",
                    "tileloadd tmm6, [{b0} + {b_stride}*1]",
                    "tileloadd tmm5, [{a_lo} + {a_stride}*1]",
                    "tileloadd tmm7, [{b1} + {b_stride}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm0, tmm5, tmm6",
                    "tdpbf16ps tmm1, tmm5, tmm7",
                    "tileloadd tmm6, [{b2} + {b_stride}*1]",
                    "tileloadd tmm7, [{b3} + {b_stride}*1]",
                    "tdpbf16ps tmm2, tmm4, tmm6",
                    "tdpbf16ps tmm3, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a_hi = in(reg) a_hi.add(b * BLOCK_K),
                    a_lo = in(reg) a_lo.add(b * BLOCK_K),
                    a_stride = in(reg) a_stride,
                    b0 = in(reg) tiles,
                    b1 = in(reg) tiles.add(tile_bytes),
                    b2 = in(reg) tiles.add(2 * tile_bytes),
                    b3 = in(reg) tiles.add(3 * tile_bytes),
                    b_stride = in(reg) b_stride,
                    options(nostack, readonly),
                );
            }
            let cp = c.as_mut_ptr();
            asm!(
                "tilestored [{c0} + {stride}*1], tmm0",
                "tilestored [{c1} + {stride}*1], tmm1",
                "tilestored [{c2} + {stride}*1], tmm2",
                "tilestored [{c3} + {stride}*1], tmm3",
                c0 = in(reg) cp,
                c1 = in(reg) cp.add(16),
                c2 = in(reg) cp.add(32),
                c3 = in(reg) cp.add(48),
                stride = in(reg) GROUP_COLS * 4,
                options(nostack),
            );
            let col0 = g * GROUP_COLS;
            let cols = GROUP_COLS.min(n - col0);
            for r in 0..TILE_ROWS.min(m - t * TILE_ROWS) {
                let dst = out.0.add((t * TILE_ROWS + r) * n + col0);
                std::ptr::copy_nonoverlapping(c.as_ptr().add(r * GROUP_COLS), dst, cols);
            }
        }
    }
    // Back to the init state: the OS then need not save the tiles at a context switch.
    asm!("tilerelease", options(nostack, nomem));
}
