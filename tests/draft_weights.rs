//! `--draft-weights q8_0`: a head's matrices kept as Q8_0 draft logits close to the stored
//! weights' (and not the same bits: the quantization is really in use), greedy speculation with
//! them still equals plain decoding, and a head whose rows are not whole Q8_0 blocks is refused
//! naming the tensor.

mod common;

use std::path::PathBuf;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::draft::init::init_head;
use clover_engine::draft::vocab::{DraftVocab, DraftVocabChoice};
use clover_engine::draft::{load_head_opts, DraftHead, DraftKind, DraftOptions, DraftWeights};
use clover_engine::model::random::{tiny_llama_config, write_random_model};
use clover_engine::model::Llama;
use clover_engine::spec::drafting::TreeSpec;
use clover_engine::spec::tree::{Eagle2Params, StaticTree};

const VOCAB: usize = 128;

fn base_and_head(kind: DraftKind, config: serde_json::Value) -> (PathBuf, Llama<CpuBackend>) {
    let dir = common::temp_dir(&format!("draft-weights-{}", kind.name()));
    write_random_model(&dir.join("base"), &config, 3).unwrap();
    init_head(kind, &dir.join("base"), &dir.join("head"), 5).unwrap();
    let model = Llama::load(&dir.join("base"), CpuBackend).unwrap();
    (dir.join("head"), model)
}

fn load(
    kind: DraftKind,
    dir: &std::path::Path,
    model: &Llama<CpuBackend>,
    weights: DraftWeights,
) -> Box<dyn DraftHead<CpuBackend>> {
    load_head_opts(kind, dir, model, DraftOptions { vocab: DraftVocabChoice::FromHead, weights }).unwrap()
}

fn q8_0_logits_are_close(kind: DraftKind, vocab: Option<Vec<u32>>) {
    let (head_dir, model) = base_and_head(kind, tiny_llama_config(VOCAB));
    if let Some(ids) = vocab {
        DraftVocab { ids, meta: serde_json::json!({ "source": "test" }) }.save(&head_dir).unwrap();
    }
    let stored = common::draft_rows(load(kind, &head_dir, &model, DraftWeights::Stored).as_mut(), &model).concat();
    let q8 = common::draft_rows(load(kind, &head_dir, &model, DraftWeights::Q8_0).as_mut(), &model).concat();
    assert_eq!(stored.len(), q8.len());
    let scale = stored.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let worst = stored.iter().zip(&q8).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 0.03 * scale, "{}: logits moved by {worst} (largest {scale})", kind.name());
    assert!(worst > 0.0, "{}: the Q8_0 head gave the stored weights' bits", kind.name());
}

#[test]
fn eagle_q8_0_logits_are_close_to_the_stored_weights() {
    q8_0_logits_are_close(DraftKind::Eagle, None);
    q8_0_logits_are_close(DraftKind::Eagle, Some((0..VOCAB as u32).filter(|t| t % 2 == 0).collect()));
}

#[test]
fn clover2_q8_0_logits_are_close_to_the_stored_weights() {
    q8_0_logits_are_close(DraftKind::Clover2, None);
    q8_0_logits_are_close(DraftKind::Clover2, Some((0..VOCAB as u32).filter(|t| t % 2 == 0).collect()));
}

#[test]
fn greedy_speculation_with_q8_0_heads_equals_plain_decoding() {
    let trees = [
        TreeSpec::Static(StaticTree::mc_sim_7b_63()),
        TreeSpec::Eagle2(Eagle2Params { top_k: 4, max_depth: 4, total_tokens: 9 }),
    ];
    for kind in [DraftKind::Eagle, DraftKind::Clover2] {
        let (head_dir, model) = base_and_head(kind, tiny_llama_config(VOCAB));
        let mut head = load(kind, &head_dir, &model, DraftWeights::Q8_0);
        common::assert_greedy_equals_plain(
            &model,
            head.as_mut(),
            &trees,
            VOCAB as u32,
            &format!("{} head", kind.name()),
        );
    }
}

#[test]
fn rows_that_are_not_whole_blocks_are_refused_naming_the_tensor() {
    let mut config = tiny_llama_config(VOCAB);
    config["hidden_size"] = 40.into(); // 4 heads of 10: rows of 40 values, not whole blocks of 32
    let (head_dir, model) = base_and_head(DraftKind::Eagle, config);
    let opts = DraftOptions { vocab: DraftVocabChoice::Full, weights: DraftWeights::Q8_0 };
    let err = load_head_opts(DraftKind::Eagle, &head_dir, &model, opts).err().expect("a 40-wide head became Q8_0");
    let msg = err.to_string();
    assert!(msg.contains("not whole Q8_0 blocks of 32") && msg.contains("tensor "), "{msg}");
    let stored = DraftOptions { weights: DraftWeights::Stored, ..opts };
    assert!(load_head_opts(DraftKind::Eagle, &head_dir, &model, stored).is_ok());
}
