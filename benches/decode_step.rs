//! One decode step of the default model, beside this machine's memory copy bandwidth measured in
//! the same run. Both report bytes per second (criterion's "thrpt"): for the decode step the
//! bytes are the weights one token streams, so the ratio of the two throughputs is the fraction
//! of copy bandwidth the GEMV reaches.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::model::{Llama, LogitRows};
use clover_engine::weights::gguf_import::{import_gguf, ImportDType};

const COPY_BYTES: usize = 256 << 20;
const CONTEXT: usize = 2048;

fn copy_bandwidth(c: &mut Criterion) {
    let src = vec![1u8; COPY_BYTES];
    let mut dst = vec![0u8; COPY_BYTES];
    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Bytes(COPY_BYTES as u64));
    g.sample_size(20);
    g.bench_function("copy_256MiB", |b| b.iter(|| dst.copy_from_slice(std::hint::black_box(&src))));
    g.finish();
}

/// The default model as tools/fetch-default-model.sh imports it (bf16), and the same GGUF with
/// its Q4_1/Q8_0 blocks kept (`import-gguf --dtype keep`, into a scratch folder), one after the
/// other in this run.
fn decode_step(c: &mut Criterion) {
    let dir = clover_engine::paths::default_model_dir();
    match Llama::load(&dir, CpuBackend) {
        Ok(model) => decode_bench(c, "decode_step", &model),
        Err(e) => eprintln!("decode_step skipped: {e} (run tools/fetch-default-model.sh)"),
    }
    let gguf = clover_engine::paths::default_gguf_file();
    let kept = std::env::temp_dir().join(format!("clover-bench-q4_1-{}", std::process::id()));
    let imported = import_gguf(&gguf, &kept, ImportDType::Keep, &|d| Llama::load(d, CpuBackend).map(|_| ()));
    match imported.and_then(|_| Llama::load(&kept, CpuBackend)) {
        Ok(model) => decode_bench(c, "decode_step_q4_1_kept", &model),
        Err(e) => eprintln!("decode_step_q4_1_kept skipped: {e} (run tools/fetch-default-model.sh)"),
    }
    let _ = std::fs::remove_dir_all(&kept);
}

fn decode_bench(c: &mut Criterion, name: &str, model: &Llama<CpuBackend>) {
    let prompt: Vec<u32> = (0..64).map(|i| 100 + i * 13).collect();
    let mut cache = model.new_cache(CONTEXT);
    model.prefill(&mut cache, &prompt, LogitRows::None).expect("prefill");
    // Each step runs on a worker of the pool, as the CLI runs every command (cli::run says why).
    let pool = rayon::ThreadPoolBuilder::new().build().expect("thread pool");
    let mut g = c.benchmark_group("default_model");
    g.throughput(Throughput::Bytes(model.weight_bytes_per_token() as u64));
    g.sample_size(30);
    g.bench_function(name, |b| {
        b.iter(|| {
            pool.install(|| {
                if cache.len() + 1 >= CONTEXT {
                    cache.clear();
                    model.prefill(&mut cache, &prompt, LogitRows::None).expect("prefill");
                }
                model.decode(&mut cache, 42).expect("decode")
            })
        })
    });
    g.finish();
}

criterion_group!(benches, copy_bandwidth, decode_step);
criterion_main!(benches);
