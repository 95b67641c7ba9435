//! The claim `--tree-budget auto` plans sampled decoding on (src/spec/auto_budget/sampled.rs):
//! one sampled run with a static tree predicts τ of every subtree that keeps each node's parent
//! and earlier siblings, as 1 + Σ over its nodes of how often the run accepted them. Checked on a
//! tiny model with a noisy oracle head (drafts often right, often wrong): each subtree is run
//! itself, and its measured τ must match the prediction within sampling noise; the EAGLE-2
//! tree's deterministic drafts, measured the same way, must not (the check can tell them apart).

mod common;

#[path = "common/oracle.rs"]
mod oracle;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::model::random::{tiny_llama_config, write_random_model_scaled};
use clover_engine::model::Llama;
use clover_engine::sampling::SamplingParams;
use clover_engine::spec::drafting::TreeSpec;
use clover_engine::spec::engine::{generate_speculative, GenerationConfig, SpecStats};
use clover_engine::spec::tree::{Eagle2Params, StaticTree};

const VOCAB: usize = 12;
const PROMPT: [u32; 3] = [3, 7, 1];
const RUNS: u64 = 800;

fn paths(ps: &[&[usize]]) -> Vec<Vec<usize>> {
    ps.iter().map(|p| p.to_vec()).collect()
}

/// `RUNS` sampled generations of 24 tokens with `tree`, statistics summed.
fn run(model: &Llama<CpuBackend>, tree: &TreeSpec) -> SpecStats {
    let params = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 };
    let mut total = SpecStats::default();
    for seed in 0..RUNS {
        let cfg = GenerationConfig { max_new_tokens: 24, sampling: params, seed, stop_ids: vec![] };
        let mut head = oracle::OracleHead::new(PROMPT[0], 1.5, seed ^ 0x5EED);
        let (_, stats) = generate_speculative(model, &mut head, tree, &PROMPT, &cfg, |_| {}).unwrap();
        total.add(&stats);
    }
    total
}

/// Standard error of τ over a run's steps.
fn std_error(stats: &SpecStats) -> f64 {
    let steps: usize = stats.accepted_hist.iter().sum();
    let tau = stats.tau();
    let var: f64 =
        stats.accepted_hist.iter().enumerate().map(|(a, &n)| n as f64 * (a as f64 + 1.0 - tau).powi(2)).sum::<f64>()
            / steps as f64;
    (var / steps as f64).sqrt()
}

#[test]
fn one_sampled_run_predicts_tau_of_every_subtree() {
    let dir = common::temp_dir("sampled-subtrees-model");
    let mut config = tiny_llama_config(VOCAB);
    config["num_hidden_layers"] = 1.into();
    write_random_model_scaled(&dir, &config, 21, 0.25).unwrap();
    let model = Llama::load(&dir, CpuBackend).unwrap();

    let probe = paths(&[&[0], &[1], &[2], &[0, 0], &[0, 1], &[1, 0], &[0, 0, 0], &[0, 0, 0, 0]]);
    let big = StaticTree::from_paths(probe, 10).unwrap();
    let stats = run(&model, &TreeSpec::Static(big.clone()));
    let steps = stats.base.steps as f64;
    let predict = |subtree: &[Vec<usize>]| {
        let accepted: usize = subtree
            .iter()
            .map(|p| big.paths().iter().position(|q| q == p).unwrap())
            .map(|node| stats.accepted_by_id.get(node).copied().unwrap_or(0))
            .sum();
        1.0 + accepted as f64 / steps
    };
    let subtrees = [
        paths(&[&[0]]),
        paths(&[&[0], &[1]]),
        paths(&[&[0], &[0, 0]]),
        paths(&[&[0], &[1], &[0, 0], &[1, 0]]),
        paths(&[&[0], &[0, 0], &[0, 0, 0], &[0, 0, 0, 0]]),
    ];
    for subtree in &subtrees {
        let width = subtree.iter().filter_map(|p| p.last()).max().unwrap() + 1;
        let measured = run(&model, &TreeSpec::Static(StaticTree::from_paths(subtree.clone(), width).unwrap()));
        let (want, got) = (predict(subtree), measured.tau());
        let tolerance = 4.0 * std_error(&measured).hypot(std_error(&stats));
        eprintln!("{subtree:?}: predicted τ {want:.4}, measured {got:.4} (±{tolerance:.4})");
        assert!((want - got).abs() < tolerance, "{subtree:?}: predicted τ {want:.4}, measured {got:.4}");
    }
    // The deterministic rule at one node accepts measurably less: the check above can fail.
    let deterministic = run(&model, &TreeSpec::Eagle2(Eagle2Params { top_k: 1, max_depth: 1, total_tokens: 2 }));
    let (sampled, got) = (predict(&subtrees[0]), deterministic.tau());
    eprintln!("one node, deterministic draft: τ {got:.4} against sampled {sampled:.4}");
    assert!(sampled - got > 4.0 * std_error(&deterministic).hypot(std_error(&stats)), "{sampled} vs {got}");
}
