//! GEMM / GEMV with f32 accumulation over weights kept in their stored dtype:
//! `out[m, n] = x[m, k] · wᵀ`, `w` `[n, k]` in f32, bf16 or f16.
//!
//! One kernel serves every `m`. Rayon tasks own blocks of output columns; a task walks its
//! columns `C` weight rows at a time and runs each block against the input rows in register tiles
//! of `R` rows × `C` columns (`kernel.rs`), so every weight is read from memory once per call and
//! a tree of 26 tokens costs little more than one token while the weights dominate. On AMD CPUs
//! (`stream_rows`) up to 3 rows take the weight rows one at a time instead, so a task's weights
//! stream as one sequence; calls of many rows (prefill, training) run in L2-sized blocks.
//!
//! Instruction sets, picked once at first use: AVX-512 F/BW/VL (16 lanes, 6×4 tiles) or AVX2 +
//! FMA + F16C (8 lanes, 3×4 tiles) on x86-64, NEON (8 lanes in two registers, 2×4 tiles) on
//! aarch64, and the portable kernel (8 lanes, 4×1 tiles, no FMA) everywhere else. On CPUs with
//! AMX, `CLOVER_MATMUL_ISA=amx` sends bf16 weights through the tile unit (`amx.rs`): a tree
//! verification costs far less, one decode row somewhat more, which on this project's machines
//! made the best speculative settings slower end to end, so it is not the default. On CPUs with
//! AVX-512 BF16, `CLOVER_MATMUL_ISA=avx512bf16` multiplies bf16 weights by the activations rounded
//! to bf16 with `vdpbf16ps` (`dpbf16.rs`): verification of a 26-node tree ~1.4× faster, one row
//! as fast, but the 2–3 row verifications that pay on such CPUs slower, and the activations are
//! bf16, so it is not the default either (docs/cpu-kernels.md). Setting `CLOVER_MATMUL_ISA` to `amx`, `avx512bf16`, `avx512`, `avx2`,
//! `neon` or `scalar` selects that set instead if the CPU has it, to compare them on one machine.
//!
//! Numerics: each output is a fixed-order f32 sum (see `kernel.rs`) that does not depend on `m`,
//! on the tiling or on the thread count, so a row's result is bit-identical whether it was
//! computed alone (decode) or among others (tree verification): speculative greedy decoding
//! reproduces plain greedy decoding token for token. The order does depend on the instruction
//! set (lane count; FMA skips the product's rounding), so results differ between sets, and from
//! the earlier kernel, by summation order and rounding only: each is within
//! `(k / 8 + 4) · 2⁻²⁴ · Σ|x·w|` of the exact sum (the bound the tests check).

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod bf16_split;
#[cfg(target_arch = "x86_64")]
mod dpbf16;
mod kernel;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use half::{bf16, f16};
use rayon::prelude::*;

use super::weight::CpuWeight;
use crate::weights::DType;
use kernel::{Job, OutPtr, Weights};

#[cfg(target_arch = "x86_64")]
pub use amx::PackedBf16;

/// Rayon tasks per thread: a few, so a thread slowed by another process is caught up by the rest.
const TASKS_PER_THREAD: usize = 4;
/// Multiply-adds below which splitting a task further costs more in scheduling than it gains.
const MIN_TASK_MACS: usize = 1 << 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 for f32 and f16 weights, AMX tiles for bf16 weights (`amx.rs`).
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// AVX-512 for f32 and f16 weights, `vdpbf16ps` for bf16 weights with the activations
    /// rounded to bf16 (`dpbf16.rs`).
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Isa {
    /// The one `CLOVER_MATMUL_ISA` names if the CPU has it, else the best vector set (AMX is
    /// used only when named: module docs; measurements in docs/cpu-kernels.md); detected once.
    fn get() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let vector = Isa::vector_sets();
            let best = vector[vector.len() - 1];
            let Ok(name) = std::env::var("CLOVER_MATMUL_ISA") else { return best };
            let available = Isa::available();
            available.iter().copied().find(|s| s.name() == name).unwrap_or_else(|| {
                // Said once (this runs once): an unknown or unavailable set must not pass unnoticed.
                let names: Vec<&str> = available.iter().map(|s| s.name()).collect();
                eprintln!(
                    "note: CLOVER_MATMUL_ISA={name} is not a set this CPU offers ({}); using {}",
                    names.join(", "),
                    best.name()
                );
                best
            })
        })
    }

    /// Every set this CPU supports, worst first: the vector sets, then AMX where the CPU has it
    /// and the OS lets this process use it (asking for that permission here, so only tests and
    /// `CLOVER_MATMUL_ISA` do).
    fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut sets = Isa::vector_sets();
        #[cfg(target_arch = "x86_64")]
        if sets.contains(&Isa::Avx512) && dpbf16::supported() {
            sets.push(Isa::Avx512Bf16);
        }
        #[cfg(target_arch = "x86_64")]
        if sets.contains(&Isa::Avx512) && amx::supported() {
            sets.push(Isa::Amx);
        }
        sets
    }

    /// The SIMD vector sets this CPU supports, worst first.
    fn vector_sets() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut sets = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                sets.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                {
                    sets.push(Isa::Avx512);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        sets.push(Isa::Neon);
        sets
    }

    fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512",
            #[cfg(target_arch = "x86_64")]
            Isa::Amx => "amx",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => "avx512bf16",
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => "neon",
        }
    }

    /// # Safety
    /// `self` came from `available()`; `c0 ≤ c1 ≤ job.n`; no other task writes these columns.
    unsafe fn columns(self, job: &Job, c0: usize, c1: usize) {
        match self {
            Isa::Scalar => scalar::columns(job, c0, c1),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::columns_avx2(job, c0, c1),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Amx | Isa::Avx512Bf16 => x86::columns_avx512(job, c0, c1),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon::columns(job, c0, c1),
        }
    }

    fn dot(self, x: &[f32], w: Weights) -> f32 {
        match self {
            Isa::Scalar => scalar::dot(x, w),
            // SAFETY: every `Isa` value comes from `available()`, so the CPU supports it.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::dot_avx2(x, w) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Amx | Isa::Avx512Bf16 => unsafe { x86::dot_avx512(x, w) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon::dot(x, w),
        }
    }
}

/// Up to how many rows a call streams each task's weight rows one at a time instead of running
/// them on the register tiles (`kernel::STREAM_ROWS` or 0), chosen once: `CLOVER_MATMUL_STREAM=on`
/// or `off` if set, else on for AMD CPUs only. Measured on this project's two machine kinds
/// (docs/cpu-kernels.md): on an AMD Zen 5 streaming moved a decode step's weights ~1.25× faster;
/// on an Intel Ice Lake the tiles were faster at every row count (1 row 0.87–0.92×, 2 rows
/// 0.86–0.88×, 3 rows 0.85× the streamed time). Either way every output has the same bits.
pub fn stream_rows() -> usize {
    static STREAM: OnceLock<usize> = OnceLock::new();
    *STREAM.get_or_init(|| {
        let on = match std::env::var("CLOVER_MATMUL_STREAM").as_deref() {
            Ok("on") => true,
            Ok("off") => false,
            _ => cpu_is_amd(),
        };
        if on {
            kernel::STREAM_ROWS
        } else {
            0
        }
    })
}

/// The matmul's instruction set and how it runs calls of 1–3 rows, as `bench` reports it, e.g.
/// "avx512, 1–3 rows streamed" (`CLOVER_MATMUL_ISA`, `CLOVER_MATMUL_STREAM`).
pub fn kernel_choice() -> String {
    let small = if stream_rows() > 0 { "streamed" } else { "on the tiles" };
    format!("{}, 1–{} rows {small}", Isa::get().name(), kernel::STREAM_ROWS)
}

/// Whether the CPU's vendor string is AMD's.
fn cpu_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // Leaf 0: the vendor string in ebx, edx, ecx.
        let id = std::arch::x86_64::__cpuid(0);
        [id.ebx, id.edx, id.ecx].map(u32::to_le_bytes).concat() == b"AuthenticAMD"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// out[m, n] = x[m, k] · wᵀ, w `[n, k]`.
pub fn matmul(x: &[f32], m: usize, w: &CpuWeight, out: &mut [f32]) {
    matmul_with(Isa::get(), stream_rows(), x, m, w, out)
}

/// An instruction set this CPU supports, by its `CLOVER_MATMUL_ISA` name: for benchmarks that
/// compare sets step by step in one process (this machine's speed drifts between runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulIsa {
    isa: Isa,
    stream_rows: usize,
}

impl MatmulIsa {
    /// Every set this CPU supports, worst first (AMX asks the OS for its permission here), each
    /// streaming small calls as `matmul` does on this CPU.
    pub fn available() -> Vec<MatmulIsa> {
        Isa::available().into_iter().map(|isa| MatmulIsa { isa, stream_rows: stream_rows() }).collect()
    }

    pub fn name(self) -> &'static str {
        self.isa.name()
    }

    /// This set with calls of up to 3 rows streamed (`true`) or on the tiles (`false`), whatever
    /// this CPU's default (`stream_rows`).
    pub fn streamed(self, on: bool) -> MatmulIsa {
        MatmulIsa { stream_rows: if on { kernel::STREAM_ROWS } else { 0 }, ..self }
    }

    /// `matmul` on this set: the same tasks, a different kernel.
    pub fn matmul(self, x: &[f32], m: usize, w: &CpuWeight, out: &mut [f32]) {
        matmul_with(self.isa, self.stream_rows, x, m, w, out)
    }
}

fn matmul_with(isa: Isa, stream_rows: usize, x: &[f32], m: usize, w: &CpuWeight, out: &mut [f32]) {
    group_with(isa, stream_rows, x, m, &mut [(w, out)]);
}

/// Several products of the same `x` (a layer's q, k and v; its gate and up) in one parallel
/// region: one wake-up of the thread pool instead of one per product, which at one row (a decode
/// step: ~200 products of a few to a few tens of µs) is a measurable share of the step. Each
/// output has the bits `matmul` gives it.
pub fn matmul_group(x: &[f32], m: usize, parts: &mut [(&CpuWeight, &mut [f32])]) {
    group_with(Isa::get(), stream_rows(), x, m, parts)
}

/// The column tasks of every product in one region (AMX products run their own, in turn).
fn group_with(isa: Isa, stream_rows: usize, x: &[f32], m: usize, parts: &mut [(&CpuWeight, &mut [f32])]) {
    let mut kernels = Vec::with_capacity(parts.len());
    let mut tasks = Vec::new();
    for (w, out) in parts.iter_mut() {
        let (n, k) = w.matrix_shape();
        check_shapes(x, m, w, out);
        if m == 0 || n == 0 {
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Amx && w.dtype() == DType::BF16 {
            amx::matmul(x, m, w.packed_bf16(), out);
            continue;
        }
        let per_task = task_width(m, k, n);
        tasks.extend((0..n.div_ceil(per_task)).map(|t| (kernels.len(), t * per_task, n.min((t + 1) * per_task))));
        kernels.push(column_kernel(isa, stream_rows, x, m, w, out));
    }
    let run = |&(part, c0, c1): &(usize, usize, usize)| kernels[part](c0, c1);
    match tasks.as_slice() {
        [] => {}
        [one] => run(one),
        _ => tasks.par_iter().for_each(run),
    }
}

fn check_shapes(x: &[f32], m: usize, w: &CpuWeight, out: &[f32]) {
    let (n, k) = w.matrix_shape();
    assert_eq!(x.len(), m * k, "matmul: x is not [{m}, {k}]");
    assert_eq!(out.len(), m * n, "matmul: out is not [{m}, {n}]");
}

/// The kernel of one `[m, k] · [k, n]` product as `run(c0, c1)`, which writes output columns
/// `c0..c1` of every row: tasks given disjoint column ranges may run in parallel. `out` stays
/// mutably borrowed for as long as the kernel lives.
fn column_kernel<'a>(
    isa: Isa,
    stream_rows: usize,
    x: &'a [f32],
    m: usize,
    w: &'a CpuWeight,
    out: &'a mut [f32],
) -> Box<dyn Fn(usize, usize) + Sync + 'a> {
    let (n, k) = w.matrix_shape();
    let w = weights(w);
    #[cfg(target_arch = "x86_64")]
    if let (Isa::Avx512Bf16, Weights::BF16(wb)) = (isa, w) {
        let rows = dpbf16::Rows::new(x, m, k);
        let out = OutPtr(out.as_mut_ptr());
        // SAFETY: `isa` is supported (so is AVX-512 BF16); callers give tasks disjoint column
        // ranges within `n`, and `out` (checked to be [m, n]) stays mutably borrowed while the
        // kernel lives.
        return Box::new(move |c0, c1| unsafe { dpbf16::columns(&rows, m, k, n, wb, out, c0, c1) });
    }
    let job = Job { x, m, k, n, w, out: OutPtr(out.as_mut_ptr()), stream_rows };
    // SAFETY: `isa` is supported; callers give tasks disjoint column ranges within `n`, and `out`
    // (checked to be [m, n]) stays mutably borrowed while the kernel lives.
    Box::new(move |c0, c1| unsafe { isa.columns(&job, c0, c1) })
}

/// Columns per task of an `[m, k] · [k, n]` product: a few tasks per thread, none too small,
/// in multiples of 16, which keeps tasks' output writes on separate cache lines.
fn task_width(m: usize, k: usize, n: usize) -> usize {
    let by_threads = n.div_ceil(rayon::current_num_threads() * TASKS_PER_THREAD);
    let by_work = MIN_TASK_MACS.div_ceil(m * k.max(1));
    by_threads.max(by_work).next_multiple_of(16)
}

/// `out[m, n] = x[m, k] · wᵀ` for an f32 `w` `[n, k]`, on the calling thread (for callers that
/// are already one of many parallel tasks); each output has `dot_f32`'s bits.
pub fn matmul_f32_serial(x: &[f32], m: usize, w: &[f32], n: usize, out: &mut [f32]) {
    let k = w.len().checked_div(n).unwrap_or(0);
    assert_eq!(w.len(), n * k, "matmul: w is not [{n}, k]");
    assert_eq!(x.len(), m * k, "matmul: x is not [{m}, {k}]");
    assert_eq!(out.len(), m * n, "matmul: out is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    let job = Job { x, m, k, n, w: Weights::F32(w), out: OutPtr(out.as_mut_ptr()), stream_rows: stream_rows() };
    // SAFETY: `Isa::get()` is supported; this one call writes all of `out`, checked to be [m, n].
    unsafe { Isa::get().columns(&job, 0, n) }
}

/// The weight's rows as one slice.
fn weights(w: &CpuWeight) -> Weights<'_> {
    fn whole<'a, E>(w: &CpuWeight, row: impl Fn(usize) -> &'a [E]) -> &'a [E] {
        let (n, k) = w.matrix_shape();
        let (first, last) = (row(0), row(n - 1));
        assert_eq!(last.as_ptr(), first.as_ptr().wrapping_add((n - 1) * k), "weight rows are not contiguous");
        // SAFETY: `first` and `last` are rows of the one buffer `w` holds, `last` starting
        // (n - 1) rows of k after `first` (checked), so the n · k elements between them are in it.
        unsafe { std::slice::from_raw_parts(first.as_ptr(), n * k) }
    }
    match w.dtype() {
        DType::F32 => Weights::F32(whole(w, |r| w.f32_row(r))),
        DType::BF16 => Weights::BF16(whole(w, |r| w.bf16_row(r))),
        DType::F16 => Weights::F16(whole(w, |r| w.f16_row(r))),
        DType::Q8_0 => Weights::Q8_0(w.blocks()),
        DType::Q4_0 => Weights::Q4_0(w.blocks()),
        DType::Q4_1 => Weights::Q4_1(w.blocks()),
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

/// `x · w` in the matmul kernel's summation order.
pub fn dot_f32(x: &[f32], w: &[f32]) -> f32 {
    Isa::get().dot(x, Weights::F32(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::weights::HostTensor;

    fn random(len: usize, rng: &mut Rng) -> Vec<f32> {
        (0..len).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect()
    }

    /// A weight of `dtype` from `values`, and the values it actually holds after rounding.
    fn weight(dtype: DType, n: usize, k: usize, values: &[f32]) -> (CpuWeight, Vec<f32>) {
        let (tensor, exact) = match dtype {
            DType::F32 => (HostTensor::from_f32("w", vec![n, k], values), values.to_vec()),
            DType::BF16 => {
                let b: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
                let bits = b.iter().map(|v| v.to_bits()).collect();
                (HostTensor::from_bits("w", dtype, vec![n, k], bits), b.iter().map(|v| v.to_f32()).collect())
            }
            DType::F16 => {
                let h: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
                let bits = h.iter().map(|v| v.to_bits()).collect();
                (HostTensor::from_bits("w", dtype, vec![n, k], bits), h.iter().map(|v| v.to_f32()).collect())
            }
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => unreachable!("quantized weights are made by `quantized`"),
        };
        (CpuWeight::new(tensor).unwrap(), exact)
    }

    fn run(isa: Isa, x: &[f32], m: usize, w: &CpuWeight) -> Vec<f32> {
        run_streamed(isa, stream_rows(), x, m, w)
    }

    /// Both ways of running calls of up to 3 rows: on the tiles, and streamed.
    const STREAMS: [usize; 2] = [0, kernel::STREAM_ROWS];

    fn run_streamed(isa: Isa, stream_rows: usize, x: &[f32], m: usize, w: &CpuWeight) -> Vec<f32> {
        let mut out = vec![f32::NAN; m * w.matrix_shape().0];
        matmul_with(isa, stream_rows, x, m, w, &mut out);
        out
    }

    const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

    /// Every instruction set, dtype, tile remainder (m past two full row tiles of every set, n not a
    /// multiple of the 4-column block or the 16-column task step) and k tail (not a multiple of
    /// 8 or 16) against an f64 reference, within the f32 summation bound of the module docs.
    #[test]
    fn matches_f64_reference() {
        let mut rng = Rng::new(1);
        // (50, 90, 1536): more rows than one cache block holds, and more columns (kernel::blocks).
        let mut shapes = vec![(1, 1, 1), (40, 5, 17), (64, 70, 64), (26, 130, 576), (3, 49, 1536), (50, 90, 1536)];
        for m in 1..=13 {
            for &(n, k) in &[(7, 3), (37, 23), (18, 100)] {
                shapes.push((m, n, k));
            }
        }
        for (isa, stream) in Isa::available().into_iter().flat_map(|isa| STREAMS.map(|s| (isa, s))) {
            for &(m, n, k) in &shapes {
                let x = random(m * k, &mut rng);
                let values = random(n * k, &mut rng);
                for dtype in DTYPES {
                    let (w, exact) = weight(dtype, n, k, &values);
                    let out = run_streamed(isa, stream, &x, m, &w);
                    for r in 0..m {
                        for c in 0..n {
                            let terms = (0..k).map(|i| x[r * k + i] as f64 * exact[c * k + i] as f64);
                            let want: f64 = terms.clone().sum();
                            let scale: f64 = terms.map(f64::abs).sum();
                            let mut tol = (k as f64 / 8.0 + 4.0) * 2f64.powi(-24) * scale;
                            #[cfg(target_arch = "x86_64")]
                            if dtype == DType::BF16 {
                                match isa {
                                    // x as hi + lo bf16 parts: within 2⁻¹⁶ of itself (amx.rs).
                                    Isa::Amx => tol += 2f64.powi(-16) * scale,
                                    // x rounded to bf16: within 2⁻⁸ of itself (dpbf16.rs).
                                    Isa::Avx512Bf16 => tol += 2f64.powi(-8) * scale,
                                    _ => {}
                                }
                            }
                            let got = out[r * n + c] as f64;
                            assert!(
                                (got - want).abs() <= tol,
                                "{isa:?} stream≤{stream} {dtype:?} m={m} n={n} k={k} [{r},{c}]: {got} vs {want} (tol {tol:e})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The speculative engine's invariant: a row's result does not depend on the other rows of
    /// the call, nor on the thread count, nor on whether the call was streamed.
    #[test]
    fn rows_are_bit_identical_whatever_m_and_threads() {
        let mut rng = Rng::new(2);
        let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let many = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for isa in Isa::available() {
            for &(n, k) in &[(576, 576), (200, 1536), (50, 37)] {
                let values = random(n * k, &mut rng);
                for dtype in DTYPES {
                    let (w, _) = weight(dtype, n, k, &values);
                    let x = random(26 * k, &mut rng);
                    let all = many.install(|| run(isa, &x, 26, &w));
                    for (m, stream) in [1, 2, 3, 5, 9].into_iter().flat_map(|m| STREAMS.map(|s| (m, s))) {
                        for first in [0, 26 - m] {
                            let rows = &x[first * k..(first + m) * k];
                            let part = single.install(|| run_streamed(isa, stream, rows, m, &w));
                            let want = &all[first * n..(first + m) * n];
                            assert!(
                                part.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{isa:?} {dtype:?} n={n} k={k}: rows {first}..{} of m=26 differ at m={m} (stream≤{stream})",
                                first + m
                            );
                        }
                    }
                }
            }
        }
    }

    /// A call of more rows than one cache block (prefill, training: `kernel::blocks`) gives each
    /// row the bits it has alone, whichever block and column block computed it.
    #[test]
    fn rows_of_a_blocked_call_keep_their_bits() {
        let mut rng = Rng::new(5);
        let single = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let many = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let (m, n, k) = (130, 300, 1536);
        let values = random(n * k, &mut rng);
        let x = random(m * k, &mut rng);
        for isa in Isa::available() {
            for dtype in DTYPES {
                let (w, _) = weight(dtype, n, k, &values);
                let all = many.install(|| run(isa, &x, m, &w));
                for first in [0, 41, 42, 83, 129] {
                    let part = single.install(|| run(isa, &x[first * k..(first + 1) * k], 1, &w));
                    let want = &all[first * n..(first + 1) * n];
                    assert!(
                        part.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa:?} {dtype:?}: row {first} of m={m} differs from its own call"
                    );
                }
            }
        }
    }

    /// The vendor check behind the default streaming choice reads the CPUID string the kernel
    /// reports.
    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn the_vendor_check_agrees_with_the_kernel() {
        let info = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
        let vendor = info.lines().find_map(|l| l.strip_prefix("vendor_id")).expect("a vendor_id line");
        assert_eq!(cpu_is_amd(), vendor.trim_start_matches([' ', '\t', ':']) == "AuthenticAMD", "vendor_id{vendor}");
    }

    /// `dot_*` (one-column tiles, single-vector lane sums) gives the matmul's bits (four-column
    /// tiles, batched lane sums).
    #[test]
    fn dot_matches_matmul_bits() {
        let mut rng = Rng::new(3);
        let (n, k) = (8, 301);
        let values = random(n * k, &mut rng);
        let x = random(k, &mut rng);
        for isa in Isa::available() {
            let (w, _) = weight(DType::F32, n, k, &values);
            let out = run(isa, &x, 1, &w);
            for (c, o) in out.iter().enumerate() {
                assert_eq!(isa.dot(&x, Weights::F32(w.f32_row(c))).to_bits(), o.to_bits(), "{isa:?} f32 column {c}");
            }
            #[cfg(target_arch = "x86_64")]
            if matches!(isa, Isa::Amx | Isa::Avx512Bf16) {
                continue; // bf16 goes through bf16 products, whose bits no dot reproduces (amx.rs, dpbf16.rs)
            }
            let (w, _) = weight(DType::BF16, n, k, &values);
            let out = run(isa, &x, 1, &w);
            for (c, o) in out.iter().enumerate() {
                assert_eq!(isa.dot(&x, Weights::BF16(w.bf16_row(c))).to_bits(), o.to_bits(), "{isa:?} bf16 column {c}");
            }
        }
    }

    /// A quantized weight of random blocks (finite scales), and the same values as an f32 weight.
    fn quantized(dtype: DType, n: usize, k: usize, rng: &mut Rng) -> (CpuWeight, CpuWeight) {
        let (per_block, bytes) = dtype.block();
        let scales = if dtype == DType::Q4_1 { 2 } else { 1 };
        let raw = crate::weights::quant::tests::random_blocks(bytes, n * k / per_block, scales, rng);
        let tensor = HostTensor {
            name: "wq".into(),
            dtype,
            shape: vec![n, k],
            bytes: crate::weights::Bytes::Owned(std::sync::Arc::new(raw)),
        };
        let values = tensor.to_f32();
        (CpuWeight::new(tensor).unwrap(), CpuWeight::new(HostTensor::from_f32("wf", vec![n, k], &values)).unwrap())
    }

    /// A group gives each product `matmul`'s bits, whatever the other products and their types
    /// (a layer's q, k, v; gate, up; and one too small to split), at every row count the engine
    /// uses.
    #[test]
    fn a_group_gives_each_product_the_bits_of_its_own_matmul() {
        let mut rng = Rng::new(41);
        let k = 96;
        for m in [1, 2, 3, 4, 5, 26] {
            let x = random(m * k, &mut rng);
            let (q8, _) = quantized(DType::Q8_0, 64, k, &mut rng);
            let weights = [
                weight(DType::BF16, 200, k, &random(200 * k, &mut rng)).0,
                weight(DType::F32, 48, k, &random(48 * k, &mut rng)).0,
                q8,
                weight(DType::BF16, 16, k, &random(16 * k, &mut rng)).0,
            ];
            let alone: Vec<Vec<f32>> = weights
                .iter()
                .map(|w| {
                    let mut out = vec![0.0; m * w.matrix_shape().0];
                    matmul(&x, m, w, &mut out);
                    out
                })
                .collect();
            let mut outs: Vec<Vec<f32>> = weights.iter().map(|w| vec![f32::NAN; m * w.matrix_shape().0]).collect();
            let mut parts: Vec<(&CpuWeight, &mut [f32])> =
                weights.iter().zip(outs.iter_mut()).map(|(w, o)| (w, o.as_mut_slice())).collect();
            matmul_group(&x, m, &mut parts);
            for (i, (got, want)) in outs.iter().zip(&alone).enumerate() {
                assert!(got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "m = {m}, product {i}");
            }
        }
    }

    /// Blocks widened in registers give the f32 kernel's bits on the dequantized values (the
    /// dequantization is exact, `quant.rs`), for every instruction set, type, tile remainder and
    /// thread split; and a row's bits do not depend on `m`.
    #[test]
    fn quantized_weights_give_the_bits_of_their_f32_values() {
        let mut rng = Rng::new(4);
        // m = 1..3 stream a weight row at a time, the others run in tiles (`kernel.rs`).
        let shapes = [(1, 7, 32), (2, 40, 64), (3, 37, 64), (13, 18, 96), (26, 130, 576), (7, 200, 1536)];
        for isa in Isa::available() {
            for dtype in DType::QUANTIZED {
                for &(m, n, k) in &shapes {
                    let (wq, wf) = quantized(dtype, n, k, &mut rng);
                    let x = random(m * k, &mut rng);
                    let (got, want) = (run(isa, &x, m, &wq), run(isa, &x, m, &wf));
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "{isa:?} {dtype:?} m={m} n={n} k={k} output {i}: {g} vs {w}"
                        );
                    }
                    for r in 0..m {
                        let one = run(isa, &x[r * k..(r + 1) * k], 1, &wq);
                        assert!(
                            one.iter().zip(&got[r * n..(r + 1) * n]).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{isa:?} {dtype:?} m={m} n={n} k={k}: row {r} alone differs"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn this_machine_uses_its_best_instruction_set() {
        let sets = Isa::available();
        if std::env::var("CLOVER_MATMUL_ISA").is_err() {
            let vector = Isa::vector_sets();
            assert_eq!(Isa::get(), vector[vector.len() - 1]);
        }
        eprintln!("matmul instruction sets here: {sets:?}");
    }
}
