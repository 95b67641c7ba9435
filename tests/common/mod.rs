//! Shared by the integration tests: where the default model is, and a skip rule that cannot
//! hide a missing model in CI (CLOVER_REQUIRE_MODEL=1 turns the skip into a failure).

#![allow(dead_code)]

use std::path::PathBuf;

pub mod direct;
pub mod tree_attention;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::draft::DraftHead;
use clover_engine::model::{Llama, LogitRows};
use clover_engine::sampling::SamplingParams;
use clover_engine::spec::drafting::TreeSpec;
use clover_engine::spec::engine::{generate_plain, generate_speculative, GenerationConfig};

pub fn default_model() -> Option<PathBuf> {
    let dir = clover_engine::paths::default_model_dir();
    if dir.join("config.json").exists() {
        return Some(dir);
    }
    if std::env::var_os("CLOVER_REQUIRE_MODEL").is_some() {
        panic!("CLOVER_REQUIRE_MODEL is set but the default model is missing from {}", dir.display());
    }
    eprintln!("skipped: the default model is not in {} (run tools/fetch-default-model.sh)", dir.display());
    None
}

/// The default model's GGUF imported with its blocks kept (`import-gguf --dtype keep`) into a
/// fresh folder named after `name` (remove its parent when done); skipped like `default_model`.
pub fn kept_quantized_model(name: &str) -> Option<PathBuf> {
    let gguf = clover_engine::paths::default_gguf_file();
    if !gguf.exists() {
        assert!(
            std::env::var_os("CLOVER_REQUIRE_MODEL").is_none(),
            "CLOVER_REQUIRE_MODEL is set but {} is missing",
            gguf.display()
        );
        eprintln!("skipped: {} not found (run tools/fetch-default-model.sh)", gguf.display());
        return None;
    }
    let dir = temp_dir(name).join("q4_1");
    let o = engine(&["import-gguf", gguf.to_str().unwrap(), dir.to_str().unwrap(), "--dtype", "keep"]);
    assert!(o.status.success(), "import-gguf --dtype keep: {}", stderr(&o));
    Some(dir)
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A fresh, empty folder unique to this call: tests in one binary run in parallel threads of one
/// process, so the process id alone would let two of them share (and delete) one folder.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // CLOVER_TEST_TMPDIR: test binaries carried to another machine (tools/gpu-check.sh), where the
    // build's target folder, compiled into them, may not exist or be writable.
    let root = std::env::var_os("CLOVER_TEST_TMPDIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    let dir = root.join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Runs the `clover-engine` binary built for the tests.
pub fn engine(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_clover-engine")).args(args).output().expect("run clover-engine")
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with a message containing every `needle`, and without a panic.
pub fn assert_clean_error(o: &std::process::Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// Runs begin and two levels of expand; returns every row the head produced.
/// (The draft-vocabulary and draft-weights tests compare these rows between loadings of a head.)
pub fn draft_rows(head: &mut dyn DraftHead<CpuBackend>, model: &Llama<CpuBackend>) -> Vec<Vec<f32>> {
    let prompt = [5u32, 17, 42, 99, 3, 64];
    let mut cache = model.new_cache(64);
    let base = model.prefill(&mut cache, &prompt, LogitRows::Last).unwrap();
    let rows: Vec<usize> = (0..prompt.len()).collect();
    let next: Vec<u32> = prompt[1..].iter().copied().chain([7]).collect();
    head.reset();
    let first = head.begin(model, &base, &rows, &next).unwrap().to_host(&CpuBackend);
    let level1 = head.expand(model, &[0, 0, 0], &[10, 11, 12]).unwrap().to_host(&CpuBackend);
    let level2 = head.expand(model, &[2, 0], &[13, 14]).unwrap().to_host(&CpuBackend);
    vec![first, level1, level2]
}

/// Greedy speculation with `head` over each tree equals plain decoding, token for token, on three
/// short prompts of ids below `vocab`.
pub fn assert_greedy_equals_plain(
    model: &Llama<CpuBackend>,
    head: &mut dyn DraftHead<CpuBackend>,
    trees: &[TreeSpec],
    vocab: u32,
    what: &str,
) {
    let cfg = GenerationConfig { max_new_tokens: 32, sampling: SamplingParams::greedy(), seed: 0, stop_ids: vec![] };
    for p in 0..3u32 {
        let prompt: Vec<u32> = (0..5 + p).map(|i| (p * 31 + i * 7) % vocab).collect();
        let (plain, _) = generate_plain(model, &prompt, &cfg, |_| {}).unwrap();
        for tree in trees {
            let (spec, _) = generate_speculative(model, head, tree, &prompt, &cfg, |_| {}).unwrap();
            assert_eq!(spec, plain, "{what}, {tree:?}");
        }
    }
}
