//! A tiny random Llama and a small synthetic data set in the gen-data layout, for distill tests
//! (tests/distill.rs, and the GPU parity run in tests/cuda_parity.rs).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::backend::Backend;
use clover_engine::draft::DraftKind;
use clover_engine::model::random::{tiny_llama_config, write_random_model};
use clover_engine::model::{Llama, LogitRows};
use clover_engine::rng::Rng;
use clover_engine::train::distill::DistillOptions;
use clover_engine::train::layout::{write_data_folder, ShardRecord};

use super::common;

pub const VOCAB: usize = 64;

pub fn tiny_model(dir: &Path, hidden: usize) {
    let mut config = tiny_llama_config(VOCAB);
    config["hidden_size"] = hidden.into();
    write_random_model(dir, &config, 7).unwrap();
}

/// `n` conversations of random tokens run through the model, as gen-data would store them: the
/// first quarter of each is the "user" (mask 0), the rest the "assistant" (mask 1).
pub fn write_data(model_dir: &Path, dir: &Path, n: usize) {
    write_data_seeded(model_dir, dir, n, 11);
}

/// `write_data` with other random conversations for each `seed`.
pub fn write_data_seeded(model_dir: &Path, dir: &Path, n: usize, seed: u64) {
    let model = Llama::load(model_dir, CpuBackend).unwrap();
    let h = model.config.hidden_size;
    let mut rng = Rng::new(seed);
    let mut cache = model.new_cache(64);
    let records: Vec<ShardRecord> = (0..n)
        .map(|i| {
            let len = 16 + (rng.next_u64() % 24) as usize;
            let ids: Vec<u32> = (0..len).map(|_| (rng.next_u64() % VOCAB as u64) as u32).collect();
            cache.clear();
            let out = model.prefill(&mut cache, &ids, LogitRows::None).unwrap();
            let bf16 = |buf: &Vec<f32>| buf.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
            ShardRecord {
                index: i,
                input_ids: ids,
                hidden_state: bf16(&model.backend.download(&out.postnorm)),
                hidden_state_prenorm: bf16(&model.backend.download(&out.prenorm)),
                loss_mask: (0..len).map(|t| (t >= len / 4) as u8).collect(),
            }
        })
        .collect();
    write_data_folder(dir, "tiny", h, &records, 10).unwrap();
}

/// A tiny model and 40 conversations (2 held out) in a fresh folder.
pub fn setup(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let root = common::temp_dir(name);
    let (model, data) = (root.join("model"), root.join("data"));
    tiny_model(&model, 32);
    write_data(&model, &data, 40);
    (root, model, data)
}

pub fn options(model: &Path, data: &Path, head: DraftKind, out: &Path, steps: u64) -> DistillOptions {
    DistillOptions {
        model_dir: model.to_path_buf(),
        data_dirs: vec![data.to_path_buf()],
        head,
        out: out.to_path_buf(),
        init: None,
        resume: false,
        steps,
        batch_tokens: Some(80),
        lr: Some(2e-3),
        warmup: Some(3),
        total_steps: Some(200),
        max_len: None,
        seed: Some(5),
        draft_vocab: None,
        keep_draft_vocab: false,
        label_mask: false,
        lr_scales: Vec::new(),
        init_scales: Vec::new(),
        loss_weights: None,
        eval_every: 10,
        eval_tokens: 1000,
        eval_data: Vec::new(),
        progress: false,
    }
}
