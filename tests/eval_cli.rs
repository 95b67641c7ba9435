//! `eval` and `bench` as a user runs them: answers in the reference format, resume, greedy
//! answers equal across methods, the bench report, and clear errors for bad question files.

mod common;

use common::{assert_clean_error, engine, stderr};

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Two questions: one with two turns (the second refers to the first answer), one with one.
fn write_questions(dir: &Path) -> PathBuf {
    let path = dir.join("questions.jsonl");
    let lines = [
        r#"{"question_id": 81, "category": "writing", "turns": ["Name a colour.", "Now name another one."]}"#,
        r#"{"question_id": 321, "category": "qa", "turns": ["What is the capital of France?"]}"#,
    ];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

#[test]
fn eval_missing_bench_file_is_named() {
    let dir = common::temp_dir("eval-missing");
    let o = engine(&["eval", "--bench", "/nonexistent/questions.jsonl", "--out", s(&dir.join("a.jsonl"))]);
    assert_clean_error(&o, &["/nonexistent/questions.jsonl"]);
    assert!(!dir.join("a.jsonl").exists());
}

#[test]
fn eval_malformed_line_names_file_and_line() {
    let dir = common::temp_dir("eval-malformed");
    let path = dir.join("bad.jsonl");
    let good = r#"{"question_id": 1, "category": "qa", "turns": ["hi"]}"#;
    std::fs::write(&path, format!("{good}\n{{\"question_id\": 2, \"category\": \"qa\"}}\n")).unwrap();
    let o = engine(&["eval", "--bench", s(&path), "--out", s(&dir.join("a.jsonl"))]);
    assert_clean_error(&o, &["bad.jsonl: line 2", "turns"]);
    std::fs::write(&path, format!("{good}\n\n{good}\nnot json\n")).unwrap();
    let o = engine(&["eval", "--bench", s(&path), "--out", s(&dir.join("a.jsonl"))]);
    assert_clean_error(&o, &["bad.jsonl: line 4"]);
}

#[test]
fn eval_question_range_out_of_bounds() {
    let dir = common::temp_dir("eval-range");
    let q = write_questions(&dir);
    let out = dir.join("a.jsonl");
    let o = engine(&["eval", "--bench", s(&q), "--out", s(&out), "--question-end", "5"]);
    assert_clean_error(&o, &["0..5", "2 questions", "questions.jsonl"]);
    let o = engine(&["eval", "--bench", s(&q), "--out", s(&out), "--question-begin", "2"]);
    assert_clean_error(&o, &["2..2", "2 questions"]);
    let o = engine(&["eval", "--bench", s(&q), "--out", s(&out), "--max-turns", "0"]);
    assert_clean_error(&o, &["--max-turns"]);
    let o = engine(&["eval", "--bench", s(&q), "--out", s(&out), "--per-category", "0"]);
    assert_clean_error(&o, &["--per-category"]);
}

#[test]
fn eval_answers_resumes_and_matches_across_methods() {
    let Some(model) = common::default_model() else {
        return;
    };
    let dir = common::temp_dir("eval-e2e");
    let q = write_questions(&dir);
    let plain = dir.join("plain.jsonl");
    let args = |out: &Path| -> Vec<String> {
        ["eval", "--model", s(&model), "--bench", s(&q), "--out", s(out), "--max-new-tokens", "6", "--warmup", "1"]
            .map(String::from)
            .to_vec()
    };
    let run = |extra: &[&str], out: &Path| {
        let mut a = args(out);
        a.extend(extra.iter().map(|x| x.to_string()));
        let o = Command::new(env!("CARGO_BIN_EXE_clover-engine")).args(&a).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    run(&[], &plain);
    let answers = read_jsonl(&plain);
    assert_eq!(answers.len(), 2);
    assert_eq!((answers[0]["question_id"].as_u64(), answers[1]["category"].as_str()), (Some(81), Some("qa")));
    assert_eq!(answers[0]["model_id"], "SmolLM2-135M-Instruct-plain");
    for a in &answers {
        let c = &a["choices"][0];
        let turns = c["turns"].as_array().unwrap().len();
        let (idxs, new_tokens) = (usizes(&c["idxs"]), usizes(&c["new_tokens"]));
        let lengths: Vec<Vec<usize>> = c["accept_lengths"].as_array().unwrap().iter().map(usizes).collect();
        assert_eq!((idxs.len(), new_tokens.len(), lengths.len()), (turns, turns, turns));
        for t in 0..turns {
            // Plain decoding: the prefill gives the first token, each later one takes a step.
            assert!(new_tokens[t] >= 1 && new_tokens[t] <= 6);
            assert_eq!(lengths[t], vec![1; new_tokens[t] - 1]);
            assert_eq!(idxs[t], (new_tokens[t] - 1).saturating_sub(1));
            assert!(c["wall_time"][t].as_f64().unwrap() > 0.0);
        }
    }

    let before = std::fs::read(&plain).unwrap();
    let o = run(&[], &plain);
    assert_eq!(std::fs::read(&plain).unwrap(), before, "a resumed run rewrote finished answers");
    assert!(stderr(&o).contains("0 new answers"), "{}", stderr(&o));
    // Resuming with other settings would mix two runs in one file: refused, both named.
    let other = ["eval", "--model", s(&model), "--bench", s(&q), "--out", s(&plain), "--max-new-tokens", "7"];
    common::assert_clean_error(&engine(&other), &["plain.jsonl", "max_new_tokens 6", "max_new_tokens 7"]);
    assert_eq!(std::fs::read(&plain).unwrap(), before, "a refused run touched the answers");

    // --chat-template and --system reach the prompt: this template refuses a conversation that
    // does not open with a system message; both are recorded in the answers' settings.
    let template = dir.join("needs-system.jinja");
    std::fs::write(
        &template,
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('no system message') }}{% endif %}\
         <|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n<|im_start|>user\n{{ messages[1]['content'] }}\
         <|im_end|>\n<|im_start|>assistant\n",
    )
    .unwrap();
    let templated = dir.join("templated.jsonl");
    let with_template = ["--chat-template", s(&template), "--max-turns", "1"];
    let o = engine(&[&args(&templated).iter().map(String::as_str).collect::<Vec<_>>()[..], &with_template].concat());
    common::assert_clean_error(&o, &["needs-system.jinja", "no system message", "question 81"]);
    run(&[&with_template[..], &["--system", "Answer in French."]].concat(), &templated);
    let settings = read_jsonl(&templated)[0]["settings"].as_str().unwrap().to_string();
    assert!(settings.contains("needs-system.jinja") && settings.contains("Answer in French."), "{settings}");

    let head = dir.join("head");
    let o = engine(&["init-head", "--kind", "eagle", "--model", s(&model), "--out", s(&head)]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A second head into the same folder is refused (it would inherit what the folder holds).
    let again = engine(&["init-head", "--kind", "eagle", "--model", s(&model), "--out", s(&head)]);
    common::assert_clean_error(&again, &["not empty"]);
    let eagle = dir.join("eagle.jsonl");
    run(&["--draft", "eagle", "--draft-model", s(&head)], &eagle);
    let spec = read_jsonl(&eagle);
    for (p, e) in answers.iter().zip(&spec) {
        assert_eq!(p["choices"][0]["turns"], e["choices"][0]["turns"], "greedy answers differ");
        assert_eq!(p["choices"][0]["new_tokens"], e["choices"][0]["new_tokens"]);
    }
    assert_eq!(spec[0]["model_id"], "SmolLM2-135M-Instruct-eagle");

    let o = engine(&["metrics", "--answers", s(&eagle), "--baseline", s(&plain)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("mt_bench") && table.contains("overall"), "{table}");

    // --max-length caps prompt + answer: question 321's prompt plus 2 new tokens; at 1 (every
    // prompt already past it) each turn still answers with one token.
    let tok = clover_engine::model::TextTokenizer::load(&model).unwrap();
    let msg = clover_engine::model::ChatMessage::new("user", "What is the capital of France?");
    let prompt_len = tok.encode(&tok.render_chat(&[msg], true).unwrap(), false).unwrap().len();
    let capped = dir.join("capped.jsonl");
    run(&["--max-length", &(prompt_len + 2).to_string()], &capped);
    let capped = read_jsonl(&capped);
    assert_eq!(usizes(&capped[1]["choices"][0]["new_tokens"]), [2], "question 321 capped at its prompt + 2");
    assert!(capped[1]["settings"].as_str().unwrap().contains(&format!("max_length {}", prompt_len + 2)));
    let one = dir.join("one.jsonl");
    run(&["--max-length", "1"], &one);
    for a in read_jsonl(&one) {
        assert!(usizes(&a["choices"][0]["new_tokens"]).iter().all(|&n| n == 1), "{a}");
    }

    // --max-turns 1: the first turn only, and it is the same answer as in the two-turn run.
    let first = dir.join("first.jsonl");
    run(&["--max-turns", "1"], &first);
    let firsts = read_jsonl(&first);
    for (p, f) in answers.iter().zip(&firsts) {
        assert_eq!(f["choices"][0]["turns"].as_array().unwrap().len(), 1);
        assert_eq!(f["choices"][0]["turns"][0], p["choices"][0]["turns"][0]);
    }
}

#[test]
fn bench_reports_every_method() {
    let Some(model) = common::default_model() else {
        return;
    };
    let dir = common::temp_dir("bench-smoke");
    let q = write_questions(&dir);
    let json = dir.join("bench.json");
    let o = engine(&[
        "bench",
        "--model",
        s(&model),
        "--drafts",
        "eagle:init",
        "--prompts",
        s(&q),
        "--num-prompts",
        "2",
        "--steps",
        "4",
        "--json",
        s(&json),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("verify ms") && stdout.contains("eagle"), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let methods = report["methods"].as_array().unwrap();
    let names: Vec<&str> = methods.iter().map(|m| m["method"].as_str().unwrap()).collect();
    assert_eq!(names, ["plain", "eagle(init)"]);
    for m in methods {
        assert_eq!(m["prompts"], 2);
        assert_eq!(m["mismatched_prompts"], 0, "greedy output differs from plain decoding");
        assert!(m["steps"].as_u64().unwrap() > 0 && m["tokens_per_sec"].as_f64().unwrap() > 0.0);
        assert!(m["latency"]["verify"]["p50_ms"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(methods[0]["speedup"], 1.0);
    assert!(methods[1]["latency"]["draft"]["p50_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_on_random_weights() {
    let Some(model) = common::default_model() else {
        return;
    };
    let dir = common::temp_dir("bench-random");
    let q = write_questions(&dir);
    let config = dir.join("config.json");
    let tiny = clover_engine::model::random::tiny_llama_config(300);
    std::fs::write(&config, tiny.to_string()).unwrap();
    let o = engine(&[
        "bench",
        "--model",
        s(&model),
        "--random-weights",
        s(&config),
        "--drafts",
        "eagle:init",
        "--prompts",
        s(&q),
        "--steps",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("random weights") && stdout.contains("eagle"), "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
}

/// Random weights on a machine with no model folder at all (a GPU box that has only the binary):
/// the prompts are random token ids, and `--tree-budget auto`, which needs a tokenizer, says so.
#[test]
fn bench_on_random_weights_without_any_model_folder() {
    let dir = common::temp_dir("bench-random-no-model");
    let config = dir.join("config.json");
    std::fs::write(&config, clover_engine::model::random::tiny_llama_config(300).to_string()).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_clover-engine"))
            .args(
                [&["bench", "--random-weights", s(&config), "--steps", "6", "--num-prompts", "2"][..], extra].concat(),
            )
            .env("CLOVER_ENGINE_HOME", dir.join("empty-cache"))
            .output()
            .unwrap()
    };
    let o = run(&["--drafts", "clover2:init"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("random token ids") && stdout.contains("clover2"), "{stdout}");
    let o = run(&["--drafts", "eagle:init:tree=eagle2:budget=auto"]);
    common::assert_clean_error(&o, &["--tree-budget auto", "tokenizer"]);
}

/// Methods with their own settings, compared in one run; `budget=auto` plans the EAGLE-2 budget
/// (a random model: the plan means nothing, but every part of it runs and is reported).
#[test]
fn bench_per_method_settings_and_auto_budget() {
    let Some(model) = common::default_model() else {
        return;
    };
    let dir = common::temp_dir("bench-settings");
    let q = write_questions(&dir);
    let config = dir.join("config.json");
    std::fs::write(&config, clover_engine::model::random::tiny_llama_config(300).to_string()).unwrap();
    let json = dir.join("bench.json");
    let drafts = "eagle:init:tree=eagle2:budget=auto,clover2:init:tree=eagle2:budget=3:vocab=full";
    let args = ["bench", "--model", s(&model), "--random-weights", s(&config), "--prompts", s(&q), "--steps", "6"];
    let more = ["--drafts", drafts, "--num-prompts", "1", "--json", s(&json), "--verify-latency", "5"];
    let o = engine(&[&args[..], &more[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("tree budget auto") && stdout.contains("← chosen"), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let names: Vec<&str> =
        report["methods"].as_array().unwrap().iter().map(|m| m["method"].as_str().unwrap()).collect();
    assert_eq!(names[0], "plain");
    assert!(names[1].starts_with("eagle(init)[tree=eagle2,budget=auto]→"), "{names:?}");
    assert_eq!(names[2], "clover2(init)[tree=eagle2,budget=3,vocab=full]");
    let plans = report["budget_plans"].as_array().unwrap();
    assert_eq!(plans.len(), 1);
    let rows = plans[0][1]["rows"].as_array().unwrap();
    // Plain decoding and budgets 1..=8 (the probe), or 1..=32 when a larger tree might pay.
    assert!(rows.len() == 9 || rows.len() == 33, "{} plan rows", rows.len());
    assert!(rows.iter().all(|r| r["verify_ms"].as_f64().unwrap() > 0.0));
    assert_eq!(report["verify_ms_by_nodes"].as_array().unwrap().len(), 5);
    assert!(stdout.contains("verify latency by tree size"), "{stdout}");

    // auto plans with the eagle2 tree (its default when no tree is named): a static tree is refused.
    let o = engine(&[&args[..], &["--drafts", "eagle:init:tree=mc_sim_7b_63:budget=auto"]].concat());
    assert_clean_error(&o, &["--tree-budget auto", "eagle2"]);
    let o = engine(&[&args[..], &["--drafts", "eagle:init:vocab=0"]].concat());
    assert_clean_error(&o, &["vocab=0"]);
    let o = engine(&[&args[..], &["--drafts", "eagle:init:depth=3"]].concat());
    assert_clean_error(&o, &["depth"]);
}

#[test]
fn bench_bad_options_are_named() {
    let dir = common::temp_dir("bench-bad");
    let q = write_questions(&dir);
    let o = engine(&["bench", "--drafts", "medusa:/x", "--prompts", s(&q)]);
    assert_clean_error(&o, &["medusa"]);
    let o = engine(&["bench", "--drafts", "eagle", "--prompts", s(&q)]);
    assert_clean_error(&o, &["KIND:DIR"]);
    let o = engine(&["bench", "--prompts", "/nonexistent/prompts.jsonl"]);
    assert_clean_error(&o, &["/nonexistent/prompts.jsonl"]);
}

#[test]
fn eval_draft_model_without_draft_kind_is_refused() {
    let dir = common::temp_dir("eval-draft-kind");
    let q = write_questions(&dir);
    let o = engine(&["eval", "--bench", s(&q), "--out", s(&dir.join("a.jsonl")), "--draft-model", "/x"]);
    assert_clean_error(&o, &["--draft"]);
}
