//! The CPU matmul on the default model's shapes (bf16 weights) for the row counts a step can
//! have: 1 (plain decode), 2..64 (tree verification, draft heads, prefill chunks). A 256 MiB copy
//! in the same run gives this machine's memory bandwidth to compare the m = 1 rows against.
//!
//! Groups: `memory` (copy, bytes/s); `gemv_bf16` (m = 1, weight bytes/s);
//! `gemv_bf16_model_step` (a whole decode step's m = 1 calls from memory, per instruction set,
//! weight bytes/s); `gemm_bf16/<k>x<n>` (every m, multiply-adds/s as "elements"): the m = 26 /
//! m = 1 time ratio says how much a 26-node tree verification costs over one decode step;
//! `gemm_q4_1/<k>x<n>` the same for the blocks `import-gguf --dtype keep` keeps. Calls are timed
//! on a worker of a thread pool, as the CLI makes them (since 2026-12-06; earlier runs also timed
//! waking the pool, ~10–20 µs a call).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

use clover_engine::backend::cpu::matmul::{matmul, MatmulIsa};
use clover_engine::backend::cpu::CpuWeight;
use clover_engine::weights::{DType, HostTensor};

const COPY_BYTES: usize = 256 << 20;
/// `(k, n)`: attention projection, MLP up/gate, MLP down, LM head.
const SHAPES: [(usize, usize); 4] = [(576, 576), (576, 1536), (1536, 576), (576, 49152)];
const ROWS: [usize; 8] = [1, 2, 4, 8, 16, 26, 32, 64];

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn bf16_weight(n: usize, k: usize) -> CpuWeight {
    let bits = values(n * k, 7).iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
    CpuWeight::new(HostTensor::from_bits("w", DType::BF16, vec![n, k], bits)).unwrap()
}

/// `iters` calls of `f`, timed on a worker of a thread pool as the CLI runs every command (a call
/// from outside a pool would also time waking the pool and waiting for it: `cli::run`).
fn timed(iters: u64, mut f: impl FnMut() + Send) -> Duration {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().build().expect("thread pool"));
    pool.install(|| {
        let start = std::time::Instant::now();
        for _ in 0..iters {
            f();
            std::hint::black_box(());
        }
        start.elapsed()
    })
}

fn copy_bandwidth(c: &mut Criterion) {
    let src = vec![1u8; COPY_BYTES];
    let mut dst = vec![0u8; COPY_BYTES];
    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Bytes(COPY_BYTES as u64));
    g.sample_size(10);
    g.bench_function("copy_256MiB", |b| b.iter(|| dst.copy_from_slice(std::hint::black_box(&src))));
    g.finish();
}

fn gemv(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemv_bf16");
    g.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for (k, n) in SHAPES {
        let w = bf16_weight(n, k);
        let x = values(k, 1);
        let mut out = vec![0.0; n];
        g.throughput(Throughput::Bytes(w.bytes() as u64));
        g.bench_function(format!("{k}x{n}"), |b| b.iter_custom(|iters| timed(iters, || matmul(&x, 1, &w, &mut out))));
    }
    g.finish();
}

/// The LM head's GEMV with the weight at a 64-byte boundary and 16 bytes past one (a safetensors
/// file aligns its tensors to 8 bytes only, so a mapped weight can start anywhere in a cache line,
/// and every 64-byte load then spans two lines).
fn gemv_alignment(c: &mut Criterion) {
    let (k, n) = (576, 49152);
    let bits: Vec<u8> =
        values(n * k, 7).iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect();
    let mut map = memmap2::MmapMut::map_anon(bits.len() + 64).expect("anonymous map");
    let mut g = c.benchmark_group("gemv_bf16_alignment");
    g.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(bits.len() as u64));
    for offset in [0, 16] {
        map[offset..offset + bits.len()].copy_from_slice(&bits);
        let ro = std::sync::Arc::new(map.make_read_only().expect("read-only map"));
        let bytes = clover_engine::weights::Bytes::Mapped { map: ro.clone(), start: offset, len: bits.len() };
        let tensor = HostTensor { name: "w".into(), dtype: DType::BF16, shape: vec![n, k], bytes };
        let w = CpuWeight::new(tensor).unwrap();
        let x = values(k, 1);
        let mut out = vec![0.0; n];
        g.bench_function(format!("{k}x{n}/offset{offset}"), |b| {
            b.iter_custom(|iters| timed(iters, || matmul(&x, 1, &w, &mut out)))
        });
        drop(w);
        map = std::sync::Arc::try_unwrap(ro).expect("the only map").make_mut().expect("writable map");
    }
    g.finish();
}

/// One decode step's GEMVs in model order, each weight its own buffer (~270 MB in all, so every
/// byte comes from memory as in a real step): 30 layers of q, k, v, o, gate, up, down, then the LM
/// head; on every vector instruction set this CPU has, in one run. The single-shape `gemv_bf16`
/// groups reuse one weight that partly stays in cache, and missed a one-row slowdown of the
/// AVX-512 BF16 kernel that real steps showed (docs/cpu-kernels.md, "One weight stream per task").
fn gemv_model_step(c: &mut Criterion) {
    const LAYERS: usize = 30;
    let layer = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)];
    let mut shapes: Vec<(usize, usize)> = (0..LAYERS).flat_map(|_| layer).collect();
    shapes.push((576, 49152));
    let weights: Vec<CpuWeight> = shapes.iter().map(|&(k, n)| bf16_weight(n, k)).collect();
    let xs: Vec<Vec<f32>> = shapes.iter().map(|&(k, _)| values(k, 1)).collect();
    let mut outs: Vec<Vec<f32>> = shapes.iter().map(|&(_, n)| vec![0.0; n]).collect();
    let bytes: usize = weights.iter().map(|w| w.bytes()).sum();
    let mut g = c.benchmark_group("gemv_bf16_model_step");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(bytes as u64));
    // The scalar kernel is the portable fallback, not a contender; AMX is offered only by name.
    // Each set streamed and on the tiles (`matmul::stream_rows`: which is faster depends on the CPU).
    let sets = MatmulIsa::available().into_iter().filter(|i| !matches!(i.name(), "scalar" | "amx"));
    for (isa, way) in sets.flat_map(|i| [(i.streamed(true), "stream"), (i.streamed(false), "tiles")]) {
        g.bench_function(format!("{}/{way}", isa.name()), |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    for ((w, x), out) in weights.iter().zip(&xs).zip(outs.iter_mut()) {
                        isa.matmul(x, 1, w, out);
                    }
                })
            })
        });
    }
    g.finish();
}

fn gemm(c: &mut Criterion) {
    for (k, n) in SHAPES {
        let w = bf16_weight(n, k);
        let mut g = c.benchmark_group(format!("gemm_bf16/{k}x{n}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(800));
        for m in ROWS {
            let x = values(m * k, 1);
            let mut out = vec![0.0; m * n];
            g.throughput(Throughput::Elements((m * n * k) as u64));
            g.bench_with_input(BenchmarkId::from_parameter(m), &m, |b, &m| {
                b.iter_custom(|iters| timed(iters, || matmul(&x, m, &w, &mut out)))
            });
        }
        g.finish();
    }
}

/// Q4_1 blocks as `import-gguf --dtype keep` stores the default model's linear weights: random
/// quants, scales of a trained model's size.
fn q4_1_weight(n: usize, k: usize) -> CpuWeight {
    let v = values(n * k / 2, 3);
    let mut bytes = Vec::with_capacity(n * k / 32 * 20);
    for block in v.chunks(16) {
        bytes.extend(half::f16::from_f32(block[0] * 0.01).to_le_bytes());
        bytes.extend(half::f16::from_f32(block[1] * 0.05).to_le_bytes());
        bytes.extend(block.iter().map(|x| ((x + 1.0) * 127.0) as u8));
    }
    let tensor = HostTensor {
        name: "w".into(),
        dtype: DType::Q4_1,
        shape: vec![n, k],
        bytes: clover_engine::weights::Bytes::Owned(std::sync::Arc::new(bytes)),
    };
    CpuWeight::new(tensor).unwrap()
}

/// The kept-Q4_1 path for the small row counts of tree verification, where one row tile widens
/// the blocks in registers and more than one widens them once into scratch.
fn gemm_q4_1(c: &mut Criterion) {
    for (k, n) in [(576, 1536), (1536, 576)] {
        let w = q4_1_weight(n, k);
        let mut g = c.benchmark_group(format!("gemm_q4_1/{k}x{n}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(800));
        for m in [1, 2, 3, 4, 5, 6, 8, 13, 26] {
            let x = values(m * k, 1);
            let mut out = vec![0.0; m * n];
            g.throughput(Throughput::Elements((m * n * k) as u64));
            g.bench_with_input(BenchmarkId::from_parameter(m), &m, |b, &m| {
                b.iter_custom(|iters| timed(iters, || matmul(&x, m, &w, &mut out)))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, copy_bandwidth, gemv, gemv_alignment, gemv_model_step, gemm, gemm_q4_1);
criterion_main!(benches);
