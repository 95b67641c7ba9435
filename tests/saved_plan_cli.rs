//! `generate --tree-budget auto` saves its choice and later runs with the same model, head and
//! settings reuse it instead of calibrating again; `--recalibrate`, another setting or a
//! rewritten head file calibrate again.

mod common;

use std::process::{Command, Output};

use clover_engine::draft::init::init_head;
use clover_engine::draft::DraftKind;
use clover_engine::model::random::{tiny_llama_config, write_random_model};

fn generate(home: &std::path::Path, model: &std::path::Path, head: &std::path::Path, extra: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_clover-engine"))
        .env("CLOVER_ENGINE_HOME", home)
        .args(["generate", "--model", model.to_str().unwrap(), "--prompt", "One, two, three"])
        .args(["--max-new-tokens", "8", "--draft", "eagle", "--draft-model", head.to_str().unwrap()])
        .args(["--tree", "eagle2", "--tree-budget", "auto"])
        .args(extra)
        .output()
        .expect("run clover-engine");
    assert!(o.status.success(), "{}", common::stderr(&o));
    o
}

fn calibrated(o: &Output) -> bool {
    let err = common::stderr(o);
    // "… calibration steps at budget N" (greedy) or "… with a static tree of N drafts" (sampling).
    let measured = err.contains(" calibration steps ");
    let reused = err.contains("as calibrated");
    assert!(measured != reused, "either measured or reused: {err}");
    measured
}

#[test]
fn auto_budget_is_calibrated_once_per_machine_model_head_and_settings() {
    // The default model's tokenizer over a tiny random model of the same vocabulary: calibrating
    // it takes seconds, not the real model's ~20 s.
    let Some(default) = common::default_model() else { return };
    let dir = common::temp_dir("saved-plan");
    let model = dir.join("model");
    write_random_model(&model, &tiny_llama_config(49152), 3).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(default.join(f), model.join(f)).unwrap();
    }
    let head = dir.join("head");
    init_head(DraftKind::Eagle, &model, &head, 0).unwrap();
    let home = dir.join("home");

    let first = generate(&home, &model, &head, &[]);
    assert!(calibrated(&first));
    assert!(common::stderr(&first).contains("saved in"), "{}", common::stderr(&first));
    assert!(home.join("auto-budget").read_dir().unwrap().count() == 1, "one saved choice");

    assert!(!calibrated(&generate(&home, &model, &head, &[])), "the same run again reuses the choice");
    assert!(calibrated(&generate(&home, &model, &head, &["--recalibrate"])));
    assert!(calibrated(&generate(&home, &model, &head, &["--temperature", "1"])), "another sampling setting");
    // Sampling plans over static trees; that choice is saved and reused too.
    assert!(!calibrated(&generate(&home, &model, &head, &["--temperature", "1"])), "a sampled choice is reused");

    // A retrained head (its weights rewritten) is another head.
    init_head(DraftKind::Eagle, &model, &head, 1).unwrap();
    assert!(calibrated(&generate(&home, &model, &head, &[])));
    assert!(!calibrated(&generate(&home, &model, &head, &[])));

    // A saved file that cannot be read back is calibrated over, and the user told so.
    for entry in home.join("auto-budget").read_dir().unwrap() {
        std::fs::write(entry.unwrap().path(), "{ not json").unwrap();
    }
    let over = generate(&home, &model, &head, &[]);
    assert!(calibrated(&over));
    assert!(common::stderr(&over).contains("cannot be used"), "{}", common::stderr(&over));
    assert!(!calibrated(&generate(&home, &model, &head, &[])), "the new choice replaced it");
}
