//! `rollout`: a head's chains run free through the drafting path on gen-data records. For
//! Clover-2, whose heads consume the data's tokens in training too, it must give distill's
//! teacher-forced held-out rollout (a different code path: the training forward); for EAGLE-1,
//! depth 1 is distill's top-k agreement and the deeper depths read its own features.

mod common;
#[path = "common/tiny_training.rs"]
mod tiny_training;

use std::path::Path;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::draft::{load_head, DraftKind};
use clover_engine::eval::rollout::{rollout_record, RolloutCounts, ROLLOUT_DEPTH};
use clover_engine::model::Llama;
use clover_engine::train::distill::{distill, DistillOptions};
use clover_engine::train::rollout::Rollout;
use clover_engine::train::shards::ShardReader;
use common::engine;
use tiny_training::{options, setup, tiny_model, write_data};

const EVAL_TOKENS: usize = 1000;

/// A head of `kind` trained 30 steps on the tiny data, then distill's held-out rollout over all
/// of that data (`--steps 0 --eval-data`) and the free rollout over the same records.
fn both_rollouts(kind: DraftKind) -> (Vec<Rollout>, RolloutCounts) {
    let (root, model_dir, data) = setup(&format!("rollout-{}", kind.name()));
    let head_dir = root.join("head");
    distill(&options(&model_dir, &data, kind, &head_dir, 30), CpuBackend).unwrap();
    let evaluated = DistillOptions {
        init: Some(head_dir.clone()),
        eval_data: vec![data.clone()],
        eval_tokens: EVAL_TOKENS,
        ..options(&model_dir, &data, kind, &root.join("evaluated"), 0)
    };
    let teacher_forced = distill(&evaluated, CpuBackend).unwrap().last_eval.unwrap().rollout;

    let model = Llama::load(&model_dir, CpuBackend).unwrap();
    let mut head = load_head(kind, &head_dir, &model).unwrap();
    let reader = ShardReader::open(&data).unwrap();
    let mut free = RolloutCounts::default();
    for i in reader.evaluation_set(&(0..reader.len()).collect::<Vec<_>>(), usize::MAX, EVAL_TOKENS) {
        rollout_record(&model, head.as_mut(), &reader.record(i), ROLLOUT_DEPTH, &mut free).unwrap();
    }
    (teacher_forced, free)
}

/// Fractions equal up to `rows` rows of `positions` (the two paths round differently, so a
/// near-tie at a top-k boundary may fall either way).
fn assert_close(what: &str, got: f64, want: f64, positions: usize, rows: f64) {
    assert!((got - want).abs() * positions as f64 <= rows, "{what}: {got} against {want} over {positions} positions");
}

#[test]
fn clover2_free_rollout_is_distills_teacher_forced_one() {
    let (teacher_forced, free) = both_rollouts(DraftKind::Clover2);
    let free_rollouts = free.rollouts();
    assert_eq!(free.accepted.len(), 5);
    assert!(free.positions > 500, "{free:?}");
    for (f, t) in free_rollouts.iter().zip(&teacher_forced) {
        assert_eq!((f.top, f.accepted.len()), (t.top, t.accepted.len()));
        for d in 0..5 {
            let what = format!("top-{} depth {}", f.top, d + 1);
            assert_close(&what, f.accepted[d], t.accepted[d], free.positions, 1.0);
        }
    }
    // Not trivially equal: chains get accepted, and fewer at every depth.
    let top10 = &free_rollouts[4].accepted;
    assert!(top10[0] > top10[1] && top10[4] > 0.0, "{top10:?}");
}

#[test]
fn eagle_free_rollout_starts_from_distills_top_k_and_goes_five_deep() {
    let (teacher_forced, free) = both_rollouts(DraftKind::Eagle);
    let free_rollouts = free.rollouts();
    assert_eq!(free.accepted.len(), 5, "EAGLE-1's chain runs five drafts deep");
    for (f, t) in free_rollouts.iter().zip(&teacher_forced) {
        assert_eq!(t.accepted.len(), 1, "distill evaluates EAGLE-1's one step only");
        assert_close(&format!("top-{} depth 1", f.top), f.accepted[0], t.accepted[0], free.positions, 1.0);
        assert!(f.accepted.windows(2).all(|w| w[1] <= w[0]), "{f:?}");
    }
    for pair in free_rollouts.windows(2) {
        assert!(pair[0].accepted.iter().zip(&pair[1].accepted).all(|(a, b)| a <= b), "{free_rollouts:?}");
    }
    assert!(free_rollouts[4].accepted[1] > 0.0, "{free_rollouts:?}");
}

#[test]
fn cli_writes_the_rollout_and_refuses_other_models_data() {
    let (root, model_dir, data) = setup("rollout-cli");
    let head_dir = root.join("head");
    distill(&options(&model_dir, &data, DraftKind::Clover2, &head_dir, 3), CpuBackend).unwrap();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let json = root.join("rollout.json");
    let args = ["rollout", "--model", &s(&model_dir), "--draft", "clover2", "--draft-model", &s(&head_dir)];
    let out = engine(&[&args[..], &["--data", &s(&data), "--tokens", "300", "--json", &s(&json)]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("top-10") && stdout.contains("τ"), "{stdout}");
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let tokens = written["tokens"].as_u64().unwrap();
    assert!(written["rollout"].as_array().unwrap().len() == 5 && (1..=300).contains(&tokens), "{written}");

    // Data made with another base model (another hidden size) is refused by name.
    let (other_model, other_data) = (root.join("other-model"), root.join("other-data"));
    tiny_model(&other_model, 48);
    write_data(&other_model, &other_data, 4);
    let out = engine(&[&args[..], &["--data", &s(&other_data)]].concat());
    common::assert_clean_error(&out, &["other-data", "index.json", "hidden_size"]);
    let out = engine(&[&args[..], &["--data", &s(&data), "--tokens", "0"]].concat());
    common::assert_clean_error(&out, &["--tokens 0"]);
}
