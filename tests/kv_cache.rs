//! Decoding with the KV cache gives the logits of a fresh prefill of the whole sequence.

mod common;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::model::random::{tiny_llama_config, write_random_model};
use clover_engine::model::{Llama, LogitRows};

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn check_decode_matches_prefill(model: &Llama<CpuBackend>, tokens: &[u32], split: usize) {
    let vocab = model.config.vocab_size;
    let mut full_cache = model.new_cache(tokens.len());
    let full = model.prefill(&mut full_cache, tokens, LogitRows::All).unwrap().logits;

    let mut cache = model.new_cache(tokens.len());
    let first = model.prefill(&mut cache, &tokens[..split], LogitRows::Last).unwrap().logits;
    assert!(max_rel_diff(&first, &full[(split - 1) * vocab..split * vocab]) < 1e-4);
    for t in split..tokens.len() {
        let step = model.decode(&mut cache, tokens[t]).unwrap().logits;
        let d = max_rel_diff(&step, &full[t * vocab..(t + 1) * vocab]);
        assert!(d < 1e-4, "position {t}: relative difference {d}");
    }
}

#[test]
fn tiny_model_decode_equals_prefill() {
    let dir = common::temp_dir("kv-tiny");
    write_random_model(&dir, &tiny_llama_config(64), 3).unwrap();
    let model = Llama::load(&dir, CpuBackend).unwrap();
    let tokens: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 64).collect();
    check_decode_matches_prefill(&model, &tokens, 5);
}

#[test]
fn default_model_decode_equals_prefill() {
    let Some(dir) = common::default_model() else {
        return;
    };
    let model = Llama::load(&dir, CpuBackend).unwrap();
    let tokens: Vec<u32> = vec![1, 504, 3458, 282, 4649, 314, 253, 1345, 30, 378, 3458, 282, 4649, 314, 7042, 30];
    check_decode_matches_prefill(&model, &tokens, 6);
}
