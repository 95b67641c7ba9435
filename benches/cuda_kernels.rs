//! The CUDA kernels against the hardware, as ratios in one run (issue targets in brackets):
//! a device-to-device copy gives the memory bandwidth; RMSNorm, RoPE and SwiGLU at 4096 × 4096
//! report bytes moved per second [≥ 70% of the copy's]; tree attention of 26 nodes over a 2k prefix
//! (7B shape: 32 heads of 128) reports its K/V bytes per second [time ≤ 2× reading the K/V once,
//! i.e. ≥ 50% of the copy's read rate]; the few-row products of decoding and verification
//! (kernels/gemv.cu) on a 7B MLP weight report its bytes read per second. Without a GPU it prints
//! why and measures nothing.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use clover_engine::backend::cuda::CudaBackend;
use clover_engine::backend::{AttnMask, AttnShape, Backend, KvLayout};
use clover_engine::weights::{DType, HostTensor};

const N: usize = 4096;

fn kernels(c: &mut Criterion) {
    let gpu = match CudaBackend::new(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("cuda_kernels skipped: {e}");
            return;
        }
    };
    let values: Vec<f32> = (0..N * N).map(|i| ((i % 1000) as f32 - 500.0) / 500.0).collect();
    let x = gpu.upload(&values);
    let y = gpu.upload(&values);
    let mut out = gpu.zeros(N * N);
    let bytes = (N * N * 4) as u64;
    let mut g = c.benchmark_group("cuda");
    g.sample_size(30);

    // Copy: one read and one write of 64 MiB.
    g.throughput(Throughput::Bytes(2 * bytes));
    g.bench_function("copy_64MiB", |b| {
        b.iter(|| {
            gpu.copy(&x, &mut out);
            gpu.synchronize()
        })
    });
    let gain = gpu.weight(HostTensor::from_f32("gain", vec![N], &values[..N])).unwrap();
    g.throughput(Throughput::Bytes(2 * bytes));
    g.bench_function("rmsnorm_4096x4096", |b| {
        b.iter(|| {
            gpu.rmsnorm(&x, N, &gain, 1e-5, &mut out);
            gpu.synchronize()
        })
    });
    let (heads, hd) = (32, 128);
    let cos_sin = gpu.upload(&(0..N * hd).map(|i| (i as f32 * 1e-3).cos()).collect::<Vec<_>>());
    let mut rot = gpu.upload(&values);
    g.throughput(Throughput::Bytes(2 * bytes));
    g.bench_function("rope_4096x32x128", |b| {
        b.iter(|| {
            gpu.rope(&mut rot, N, heads, hd, &cos_sin);
            gpu.synchronize()
        })
    });
    g.throughput(Throughput::Bytes(3 * bytes));
    g.bench_function("swiglu_4096x4096", |b| {
        b.iter(|| {
            gpu.swiglu(&x, &y, &mut out);
            gpu.synchronize()
        })
    });

    // Tree attention: 26 new rows after a 2048-token prefix, each seeing the prefix and its
    // ancestors (a chain here: the mask pattern does not change what is read).
    let (past, rows) = (2048, 26);
    let layout = KvLayout { n_kv_heads: heads, capacity: past + rows, head_dim: hd };
    let shape = AttnShape { n_heads: heads, n_kv_heads: heads, head_dim: hd };
    let cache_len = heads * (past + rows) * hd;
    let k = gpu.upload(&values[..cache_len]);
    let v = gpu.upload(&values[..cache_len]);
    let q = gpu.upload(&values[..rows * heads * hd]);
    let mut att = gpu.zeros(rows * heads * hd);
    let bits: Vec<u8> = (0..rows * rows).map(|i| (i % rows <= i / rows) as u8).collect();
    g.throughput(Throughput::Bytes((2 * cache_len * 4) as u64));
    g.bench_function("tree_attention_26_over_2048", |b| {
        b.iter(|| {
            gpu.attention(
                &q,
                &k,
                &v,
                layout,
                shape,
                rows,
                past,
                AttnMask::Tree { bits: &bits, first_key: past },
                &mut att,
            );
            gpu.synchronize()
        })
    });

    // Decoding and verification products: 1 and 26 rows times an 11008 × 4096 bf16 weight (90 MB,
    // a 7B model's MLP projection); the weight is read once per call whatever the rows.
    let (wn, wk) = (11008, 4096);
    let bits: Vec<u16> =
        (0..wn * wk).map(|i| half::bf16::from_f32(values[i % values.len()] * 0.02).to_bits()).collect();
    let w = gpu.weight(HostTensor::from_bits("w", DType::BF16, vec![wn, wk], bits)).unwrap();
    let xs = gpu.upload(&values[..26 * wk]);
    let mut prod = gpu.zeros(26 * wn);
    for rows in [1, 26] {
        g.throughput(Throughput::Bytes((wn * wk * 2) as u64));
        g.bench_function(format!("gemv_bf16_11008x4096_{rows}_rows"), |b| {
            b.iter(|| {
                gpu.matmul(&xs, rows, &w, &mut prod);
                gpu.synchronize()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
