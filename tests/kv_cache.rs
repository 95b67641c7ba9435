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

/// After a tree is verified and a path of k drafts accepted, compaction keeps exactly that path:
/// the next step's logits equal those of plain decoding of the same tokens.
#[test]
fn compaction_after_accepting_a_path_equals_plain_decoding() {
    use clover_engine::spec::tree::StaticTree;

    let dir = common::temp_dir("kv-compact");
    write_random_model(&dir, &tiny_llama_config(64), 4).unwrap();
    let model = Llama::load(&dir, CpuBackend).unwrap();
    let vocab = model.config.vocab_size;
    let tree = StaticTree::mc_sim_7b_63();
    let bufs = tree.buffers();
    let prompt: Vec<u32> = vec![5, 9, 33, 2, 17];
    let tokens: Vec<u32> = (0..bufs.num_nodes() as u32).map(|i| (i * 11 + 3) % 64).collect();
    // Every leaf path of the tree, each of its prefixes as the accepted path.
    for row in bufs.retrieve_rows() {
        let path: Vec<usize> = row.iter().take_while(|&&n| n >= 0).map(|&n| n as usize).collect();
        for k in 0..path.len() {
            let keep = &path[..=k];
            let mut cache = model.new_cache(64);
            model.prefill(&mut cache, &prompt, LogitRows::None).unwrap();
            let base = cache.len();
            model.verify_tree(&mut cache, &tokens, bufs.positions(), bufs.mask()).unwrap();
            cache.compact(&model.backend, base, keep);
            let next = 42;
            let after = model.decode(&mut cache, next).unwrap().logits;

            let mut seq = prompt.clone();
            seq.extend(keep.iter().map(|&n| tokens[n]));
            seq.push(next);
            let mut fresh = model.new_cache(64);
            let plain = model.prefill(&mut fresh, &seq, LogitRows::Last).unwrap().logits;
            let d = max_rel_diff(&after, &plain);
            assert!(d < 1e-4, "path {keep:?}: relative difference {d}");
            assert_eq!(after.len(), vocab);
        }
    }
}

/// A verified tree node's attention has the bits plain decoding gives the same token, with the
/// tree block before, across and after a 256-slot boundary (the CUDA kernel's chunks).
#[test]
fn tree_attention_rows_have_plain_decodings_bits() {
    for past in [3, 250, 254, 256, 300] {
        common::tree_attention::tree_rows_equal_plain_rows(&CpuBackend, past).unwrap();
    }
}
