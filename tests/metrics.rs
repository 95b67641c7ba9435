//! Metrics on hand-made answer files whose numbers are worked out below by hand.
//!
//! `answers_small.jsonl` (speculative; two categories once MT-bench's are folded into mt_bench):
//!
//! | question | category        | turn | accept_lengths | steps | Σ committed | new_tokens | idxs | wall |
//! |----------|-----------------|------|----------------|-------|-------------|------------|------|------|
//! | 81       | writing→mt_bench| 1    | 3 2 4          | 3     | 9           | 10         | 2    | 0.5  |
//! | 81       |                 | 2    | 1 3            | 2     | 4           | 5          | 1    | 0.5  |
//! | 82       | coding→mt_bench | 1    | 2 2 2 2        | 4     | 8           | 9          | 3    | 0.5  |
//! | 321      | qa              | 1    | 5 1            | 2     | 6           | 7          | 1    | 0.25 |
//!
//! mt_bench: τ = (9+4+8)/(3+2+4) = 21/9 = 2.3333; τ_ref = (10+5+9)/(2+1+3) = 24/6 = 4;
//!   speeds: q81 = 15 tokens / 1.0 s = 15, q82 = 9 / 0.5 = 18 → mean 16.5; total 24 / 1.5 = 16.
//! qa: τ = 6/2 = 3; τ_ref = 7/1 = 7; speed = total = 7 / 0.25 = 28.
//! overall: τ = 27/11 = 2.4545; τ_ref = 31/7 = 4.4286; speed = (15+18+28)/3 = 20.3333;
//!   total = 31 / 1.75 = 17.7143.
//! Acceptance per depth over the 11 steps (lengths 3 2 4 1 3 2 2 2 2 5 1): ≥ 1 draft: 9/11,
//!   ≥ 2: 4/11 (3 4 3 5), ≥ 3: 2/11 (4 5), ≥ 4: 1/11 (5).
//!
//! `baseline_small.jsonl` (plain decoding, no accept_lengths, lines shuffled, one blank line):
//!   q81: 15 / 2.0 = 7.5; q82: 9 / 1.5 = 6; q321: 7 / 0.5 = 14.
//! Speedups (ratio of mean speeds): mt_bench 16.5 / ((7.5+6)/2 = 6.75) = 2.4444; qa 28 / 14 = 2;
//!   overall (61/3) / (27.5/3) = 61 / 27.5 = 2.2182.
//! Without q82 in the baseline, over the common questions: mt_bench 15 / 7.5 = 2;
//!   overall ((15+28)/2) / ((7.5+14)/2) = 21.5 / 10.75 = 2.

mod common;

use std::process::Command;

use clover_engine::eval::answers::read_answers;
use clover_engine::eval::metrics::{compute, GroupMetrics};
use clover_engine::eval::svg::metrics_svg;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn check(g: &GroupMetrics, tau: f64, tau_ref: f64, speed: f64, total: f64, speedup: Option<f64>) {
    let name = &g.category;
    assert!(close(g.tau.unwrap(), tau), "{name} τ {:?}", g.tau);
    assert!(close(g.tau_ref.unwrap(), tau_ref), "{name} τ_ref {:?}", g.tau_ref);
    assert!(close(g.speed, speed), "{name} speed {}", g.speed);
    assert!(close(g.total_speed, total), "{name} total speed {}", g.total_speed);
    match (g.speedup, speedup) {
        (Some(a), Some(b)) => assert!(close(a, b), "{name} speedup {a}"),
        (a, b) => assert_eq!(a, b, "{name} speedup"),
    }
}

#[test]
fn hand_computed_metrics() {
    let answers = read_answers(&common::fixture("answers_small.jsonl")).unwrap();
    let baseline = read_answers(&common::fixture("baseline_small.jsonl")).unwrap();
    let m = compute(&answers, Some(&baseline));
    let names: Vec<&str> = m.categories.iter().map(|g| g.category.as_str()).collect();
    assert_eq!(names, ["mt_bench", "qa"]);
    check(&m.categories[0], 21.0 / 9.0, 4.0, 16.5, 16.0, Some(16.5 / 6.75));
    check(&m.categories[1], 3.0, 7.0, 28.0, 28.0, Some(2.0));
    check(&m.overall, 27.0 / 11.0, 31.0 / 7.0, 61.0 / 3.0, 31.0 / 1.75, Some(61.0 / 27.5));
    assert_eq!((m.categories[0].questions, m.categories[0].turns, m.categories[0].steps), (2, 3, Some(9)));
    assert_eq!((m.overall.new_tokens, m.overall.steps, m.compared_questions), (31, Some(11), Some(3)));
    let expected = [9.0 / 11.0, 4.0 / 11.0, 2.0 / 11.0, 1.0 / 11.0];
    assert_eq!(m.overall.acceptance_per_depth.len(), 4);
    assert!(m.overall.acceptance_per_depth.iter().zip(expected).all(|(a, b)| close(*a, b)));

    let m = compute(&answers, None);
    assert_eq!((m.overall.speedup, m.compared_questions), (None, None));
}

/// Spec-Bench's answer files have `decoding_steps` instead of `idxs` (counted differently by each
/// of its methods' scripts, so τ_ref is not computed from it) and list every step of a question in
/// one `accept_lengths` list: the same answers in that shape give the same τ, speeds and acceptance.
#[test]
fn spec_bench_shaped_answers_give_the_same_metrics() {
    let text = std::fs::read_to_string(common::fixture("answers_small.jsonl")).unwrap();
    let dir = common::temp_dir("spec-bench-answers");
    let path = dir.join("spec_bench.jsonl");
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut a: serde_json::Value = serde_json::from_str(line).unwrap();
        let c = &mut a["choices"][0];
        let c = c.as_object_mut().unwrap();
        let idxs = c.remove("idxs").unwrap();
        c.insert("decoding_steps".into(), idxs);
        let flat: Vec<serde_json::Value> =
            c["accept_lengths"].as_array().unwrap().iter().flat_map(|t| t.as_array().unwrap().clone()).collect();
        c.insert("accept_lengths".into(), flat.into());
        lines.push(a.to_string());
    }
    std::fs::write(&path, lines.join("\n")).unwrap();
    let reshaped = compute(&read_answers(&path).unwrap(), None);
    let original = compute(&read_answers(&common::fixture("answers_small.jsonl")).unwrap(), None);
    let (r, o) = (&reshaped.overall, &original.overall);
    assert!(close(r.tau.unwrap(), 27.0 / 11.0) && close(r.speed, 61.0 / 3.0) && close(r.total_speed, 31.0 / 1.75));
    assert_eq!((r.tau_ref, o.tau_ref.is_some()), (None, true), "no τ_ref from decoding_steps");
    assert_eq!(r.acceptance_per_depth, o.acceptance_per_depth);
    // A flat list is checked entry by entry.
    std::fs::write(&path, lines[0].replace("[3,2,4,1,3]", "[3,0,4,1,3]")).unwrap();
    let err = read_answers(&path).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("accept_lengths"), "{err}");
    // Neither shape: named, with both shapes said.
    std::fs::write(&path, lines[0].replace("[3,2,4,1,3]", "[3,-2]")).unwrap();
    let err = read_answers(&path).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("`accept_lengths`: expected"), "{err}");
    // Without idxs and decoding_steps: named.
    std::fs::write(&path, lines[0].replace("\"decoding_steps\"", "\"steps\"")).unwrap();
    let err = read_answers(&path).unwrap_err().to_string();
    assert!(err.contains("`idxs` is missing"), "{err}");
}

#[test]
fn speedup_is_over_the_questions_both_files_answer() {
    let answers = read_answers(&common::fixture("answers_small.jsonl")).unwrap();
    let baseline: Vec<_> = read_answers(&common::fixture("baseline_small.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|a| a.question_id != 82)
        .collect();
    let m = compute(&answers, Some(&baseline));
    assert!(close(m.categories[0].speedup.unwrap(), 2.0));
    assert!(close(m.overall.speedup.unwrap(), 2.0));
    assert_eq!(m.compared_questions, Some(2));
}

#[test]
fn baseline_without_accept_lengths_has_tau_ref_only() {
    let baseline = read_answers(&common::fixture("baseline_small.jsonl")).unwrap();
    let m = compute(&baseline, None);
    // τ_ref = (10 + 5 + 9 + 7) / (9 + 4 + 8 + 6) = 31 / 27.
    assert!(close(m.overall.tau_ref.unwrap(), 31.0 / 27.0));
    assert_eq!((m.overall.tau, m.overall.steps), (None, None));
    assert!(m.overall.acceptance_per_depth.is_empty());
    assert!(metrics_svg(&m).contains("no accept_lengths"));
}

#[test]
fn svg_has_both_charts() {
    let answers = read_answers(&common::fixture("answers_small.jsonl")).unwrap();
    let svg = metrics_svg(&compute(&answers, None));
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("Acceptance rate per depth") && svg.contains("τ per category"));
    // Four depth bars and three τ bars (two categories and overall), plus the background.
    assert_eq!(svg.matches("<rect").count(), 1 + 4 + 3);
    assert!(svg.contains(">0.82<") && svg.contains(">2.33<") && svg.contains(">overall<"));
}

/// `metrics` on the hand-made answers against `baseline`, writing JSON and SVG.
fn metrics_cli(baseline: &std::path::Path, json: &std::path::Path, svg: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clover-engine"))
        .args(["metrics", "--answers"])
        .arg(common::fixture("answers_small.jsonl"))
        .arg("--baseline")
        .arg(baseline)
        .arg("--json")
        .arg(json)
        .arg("--svg")
        .arg(svg)
        .output()
        .unwrap()
}

#[test]
fn metrics_cli_writes_table_json_and_svg() {
    let dir = common::temp_dir("metrics-cli");
    let (json, svg) = (dir.join("m.json"), dir.join("m.svg"));
    let o = metrics_cli(&common::fixture("baseline_small.jsonl"), &json, &svg);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let row = table.lines().find(|l| l.starts_with("qa")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, ["qa", "1", "1", "7", "2", "3.000", "7.000", "28.00", "28.00", "2.000"]);
    let parsed: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(parsed["overall"]["steps"], 11);
    assert_eq!(parsed["categories"][0]["category"], "mt_bench");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("</svg>"));
}

#[test]
fn malformed_answer_line_is_named() {
    let dir = common::temp_dir("metrics-bad");
    let path = dir.join("bad.jsonl");
    let good = std::fs::read_to_string(common::fixture("answers_small.jsonl")).unwrap();
    let first = good.lines().next().unwrap();
    std::fs::write(&path, format!("{first}\n{}\n", first.replace("\"idxs\": [2, 1]", "\"idxs\": [2]"))).unwrap();
    let err = read_answers(&path).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl") && err.contains("line 2") && err.contains("idxs"), "{err}");
    std::fs::write(&path, format!("{first}\n{first}\n")).unwrap();
    let err = read_answers(&path).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("line 1"), "{err}");
    std::fs::write(&path, "{\"question_id\": 1,\n").unwrap();
    let err = read_answers(&path).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl: line 1"), "{err}");
}

#[test]
fn baseline_sharing_no_question_is_refused() {
    let dir = common::temp_dir("metrics-disjoint");
    let baseline = dir.join("other.jsonl");
    let text = std::fs::read_to_string(common::fixture("baseline_small.jsonl")).unwrap();
    // The same answers under question ids the answers file does not have.
    std::fs::write(&baseline, text.replace("\"question_id\": ", "\"question_id\": 9")).unwrap();
    let (json, svg) = (dir.join("m.json"), dir.join("m.svg"));
    let o = metrics_cli(&baseline, &json, &svg);
    common::assert_clean_error(&o, &["other.jsonl", "none of the", "answers_small.jsonl"]);
    assert!(!json.exists() && !svg.exists(), "a refused run wrote its outputs");
}
