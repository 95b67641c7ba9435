//! Reduced draft vocabularies: a head restricted to N tokens returns, for each of them, exactly
//! the logit the full head computes (same kernel, same summation order), its greedy speculation
//! still equals plain decoding, and a malformed `draft_vocab.json` is refused naming the field.

mod common;

use std::path::{Path, PathBuf};

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::draft::init::init_head;
use clover_engine::draft::vocab::{DraftVocab, DraftVocabChoice, DRAFT_VOCAB_FILE};
use clover_engine::draft::{load_head_with, DraftKind};
use clover_engine::model::random::{tiny_llama_config, write_random_model};
use clover_engine::model::Llama;
use clover_engine::spec::drafting::TreeSpec;
use clover_engine::spec::tree::{CloverTreeParams, Eagle2Params, StaticTree};

const VOCAB: usize = 128;

fn base_and_head(kind: DraftKind) -> (PathBuf, Llama<CpuBackend>) {
    let dir = common::temp_dir(&format!("draft-vocab-{}", kind.name()));
    write_random_model(&dir.join("base"), &tiny_llama_config(VOCAB), 3).unwrap();
    init_head(kind, &dir.join("base"), &dir.join("head"), 5).unwrap();
    let model = Llama::load(&dir.join("base"), CpuBackend).unwrap();
    (dir.join("head"), model)
}

/// Every third token, most frequent first in a made-up order.
fn some_ids() -> Vec<u32> {
    (0..VOCAB as u32).rev().filter(|t| t % 3 == 1).collect()
}

fn write_vocab(head: &Path, ids: Vec<u32>) {
    DraftVocab { ids, meta: serde_json::json!({ "source": "test" }) }.save(head).unwrap();
}

fn columns_equal_the_full_logits(kind: DraftKind) {
    let (head_dir, model) = base_and_head(kind);
    let full =
        common::draft_rows(load_head_with(kind, &head_dir, &model, DraftVocabChoice::Full).unwrap().as_mut(), &model);
    write_vocab(&head_dir, some_ids());
    for (choice, n) in [(DraftVocabChoice::FromHead, some_ids().len()), (DraftVocabChoice::Top(9), 9)] {
        let mut head = load_head_with(kind, &head_dir, &model, choice).unwrap();
        let ids = head.draft_vocab().expect("a draft vocabulary").to_vec();
        assert_eq!(ids, some_ids()[..n]);
        let reduced = common::draft_rows(head.as_mut(), &model);
        for (full, reduced) in full.iter().zip(&reduced) {
            assert_eq!(reduced.len(), full.len() / VOCAB * n);
            for (full_row, row) in full.chunks_exact(VOCAB).zip(reduced.chunks_exact(n)) {
                let want: Vec<u32> = ids.iter().map(|&t| full_row[t as usize].to_bits()).collect();
                let got: Vec<u32> = row.iter().map(|x| x.to_bits()).collect();
                assert_eq!(got, want, "{} head, {choice:?}", kind.name());
            }
        }
    }
}

#[test]
fn eagle_columns_equal_the_full_logits() {
    columns_equal_the_full_logits(DraftKind::Eagle);
}

#[test]
fn clover2_columns_equal_the_full_logits() {
    columns_equal_the_full_logits(DraftKind::Clover2);
}

#[test]
fn greedy_speculation_with_a_draft_vocabulary_equals_plain_decoding() {
    let trees = [
        TreeSpec::Static(StaticTree::mc_sim_7b_63()),
        TreeSpec::Clover(CloverTreeParams { budget: 12, ..CloverTreeParams::default() }),
        TreeSpec::Eagle2(Eagle2Params { top_k: 4, max_depth: 4, total_tokens: 9 }),
    ];
    for kind in [DraftKind::Eagle, DraftKind::Clover2] {
        let (head_dir, model) = base_and_head(kind);
        write_vocab(&head_dir, some_ids());
        let mut head = load_head_with(kind, &head_dir, &model, DraftVocabChoice::FromHead).unwrap();
        common::assert_greedy_equals_plain(
            &model,
            head.as_mut(),
            &trees,
            VOCAB as u32,
            &format!("{} head", kind.name()),
        );
    }
}

fn load_error(head_dir: &Path, model: &Llama<CpuBackend>, choice: DraftVocabChoice) -> String {
    match load_head_with(DraftKind::Eagle, head_dir, model, choice) {
        Ok(_) => panic!("loaded a head with a bad draft vocabulary"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_draft_vocabularies_are_refused_naming_the_field() {
    let (head_dir, model) = base_and_head(DraftKind::Eagle);
    let err = load_error(&head_dir, &model, DraftVocabChoice::Top(8));
    assert!(err.contains(DRAFT_VOCAB_FILE) && err.contains("draft-vocab"), "{err}");
    for (text, needle) in [
        (r#"{"token_ids": [1, 2, 128]}"#, "128"),
        (r#"{"token_ids": [1, 2, 1]}"#, "twice"),
        (r#"{"token_ids": []}"#, "empty"),
        (r#"{"ids": [1]}"#, "token_ids"),
        (r#"{"token_ids": [1, "a"]}"#, "entry 1"),
        ("not json", "json"),
    ] {
        std::fs::write(head_dir.join(DRAFT_VOCAB_FILE), text).unwrap();
        let err = load_error(&head_dir, &model, DraftVocabChoice::FromHead);
        assert!(err.contains(DRAFT_VOCAB_FILE) && err.contains(needle), "{text}: {err}");
    }
    // More tokens than the list has.
    std::fs::write(head_dir.join(DRAFT_VOCAB_FILE), r#"{"token_ids": [1, 2, 3]}"#).unwrap();
    let err = load_error(&head_dir, &model, DraftVocabChoice::Top(4));
    assert!(err.contains(DRAFT_VOCAB_FILE) && err.contains("lists 3 tokens"), "{err}");
    // `full` never reads the file.
    assert!(load_head_with(DraftKind::Eagle, &head_dir, &model, DraftVocabChoice::Full).is_ok());
}

#[test]
fn most_frequent_orders_by_count_then_id() {
    let (ids, coverage) = DraftVocab::most_frequent(&[3, 0, 5, 3, 1], 3);
    assert_eq!(ids, [2, 0, 3]);
    assert!((coverage - 11.0 / 12.0).abs() < 1e-12);
    assert_eq!("full".parse::<DraftVocabChoice>(), Ok(DraftVocabChoice::Full));
    assert_eq!("4096".parse::<DraftVocabChoice>(), Ok(DraftVocabChoice::Top(4096)));
    assert!("0".parse::<DraftVocabChoice>().is_err() && "x".parse::<DraftVocabChoice>().is_err());
}
