//! Speculative sampling reproduces the base model's distribution: on a tiny model whose
//! distributions can be enumerated exactly, 20k sampled continuations (first 3 tokens) from the
//! whole engine are compared with the exact distribution by a chi-square test, for the static
//! and both dynamic trees, at T = 1 and at T = 0.7 with top-p 0.9. A deliberately wrong
//! acceptance rule must fail the same test. The real heads (untrained) are checked the same way.

mod common;

#[path = "common/oracle.rs"]
mod oracle;

use std::collections::HashMap;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::draft::init::init_head;
use clover_engine::draft::{load_head, DraftKind};
use clover_engine::model::random::{tiny_llama_config, write_random_model_scaled};
use clover_engine::model::{Llama, LogitRows};
use clover_engine::rng::Rng;
use clover_engine::sampling::{self, SamplingParams};
use clover_engine::spec::drafting::{DraftedTree, TreeSpec};
use clover_engine::spec::engine::{
    accept_lossless, generate_speculative, generate_speculative_with, AcceptRule, GenerationConfig,
};
use clover_engine::spec::tree::{CloverTreeParams, Eagle2Params, StaticTree};
use clover_engine::spec::verify::{Accepted, BaseRows};

const VOCAB: usize = 12;
const RUNS: usize = 20_000;
const PROMPT: [u32; 3] = [3, 7, 1];

fn trees() -> Vec<(&'static str, TreeSpec)> {
    vec![
        (
            "mc_sim_7b_63",
            TreeSpec::Static(
                StaticTree::from_paths(vec![vec![0], vec![1], vec![0, 0], vec![0, 1], vec![1, 0], vec![0, 0, 0]], 4)
                    .unwrap(),
            ),
        ),
        ("clover", TreeSpec::Clover(CloverTreeParams { budget: 6, top_p: 0.9, ratio: 0.25, max_depth: 3 })),
        ("eagle2", TreeSpec::Eagle2(Eagle2Params { top_k: 3, max_depth: 3, total_tokens: 7 })),
    ]
}

fn model() -> Llama<CpuBackend> {
    Llama::load(&model_dir(), CpuBackend).unwrap()
}

fn model_dir() -> std::path::PathBuf {
    let dir = common::temp_dir("chi2-model");
    let mut config = tiny_llama_config(VOCAB);
    config["num_hidden_layers"] = 1.into();
    write_random_model_scaled(&dir, &config, 21, 0.25).unwrap();
    dir
}

/// P(t1, t2, t3 | prompt) under the processed base distributions, for every sequence.
fn exact(model: &Llama<CpuBackend>, params: &SamplingParams) -> HashMap<[u32; 3], f64> {
    let next = |prefix: &[u32]| -> Vec<f32> {
        let seq: Vec<u32> = PROMPT.iter().chain(prefix).copied().collect();
        let mut cache = model.new_cache(seq.len());
        sampling::process(&model.prefill(&mut cache, &seq, LogitRows::Last).unwrap().logits, params)
    };
    let mut probs = HashMap::new();
    let p1 = next(&[]);
    for a in 0..VOCAB as u32 {
        if p1[a as usize] == 0.0 {
            continue;
        }
        let p2 = next(&[a]);
        for b in 0..VOCAB as u32 {
            if p2[b as usize] == 0.0 {
                continue;
            }
            let p3 = next(&[a, b]);
            for c in 0..VOCAB as u32 {
                let p = p1[a as usize] as f64 * p2[b as usize] as f64 * p3[c as usize] as f64;
                if p > 0.0 {
                    probs.insert([a, b, c], p);
                }
            }
        }
    }
    probs
}

/// The chi-square critical value at significance 0.001 (Wilson–Hilferty approximation).
fn chi2_critical(df: usize) -> f64 {
    let k = df as f64;
    let z = 3.090_232; // one-sided normal quantile of 0.999
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// Pearson's statistic with cells of expected count < 5 pooled; an observed sequence of exact
/// probability 0 makes the statistic infinite.
fn chi2(observed: &HashMap<[u32; 3], usize>, exact: &HashMap<[u32; 3], f64>, n: usize) -> (f64, usize) {
    if observed.keys().any(|k| !exact.contains_key(k)) {
        return (f64::INFINITY, 1);
    }
    let (mut stat, mut cells) = (0.0, 0);
    let (mut pooled_obs, mut pooled_exp) = (0.0, 0.0);
    for (seq, &p) in exact {
        let e = p * n as f64;
        let o = *observed.get(seq).unwrap_or(&0) as f64;
        if e < 5.0 {
            pooled_obs += o;
            pooled_exp += e;
        } else {
            stat += (o - e).powi(2) / e;
            cells += 1;
        }
    }
    if pooled_exp > 0.0 {
        stat += (pooled_obs - pooled_exp).powi(2) / pooled_exp;
        cells += 1;
    }
    (stat, cells - 1)
}

fn sample_runs(
    model: &Llama<CpuBackend>,
    tree: &TreeSpec,
    params: &SamplingParams,
    rule: AcceptRule,
    draft_vocab: Option<&[u32]>,
) -> HashMap<[u32; 3], usize> {
    count_runs(|run| {
        let mut head = oracle::OracleHead::new(PROMPT[0], 1.0, run ^ 0xABCD);
        if let Some(ids) = draft_vocab {
            head = head.with_draft_vocab(ids.to_vec());
        }
        generate_speculative_with(model, &mut head, tree, &PROMPT, &three_tokens(params, run), rule, |_| {}).unwrap().0
    })
}

/// The first three tokens of `RUNS` runs, counted by sequence; `one(run)` gives run `run`'s.
fn count_runs(mut one: impl FnMut(u64) -> Vec<u32>) -> HashMap<[u32; 3], usize> {
    let mut counts = HashMap::new();
    for run in 0..RUNS as u64 {
        let out = one(run);
        *counts.entry([out[0], out[1], out[2]]).or_insert(0) += 1;
    }
    counts
}

fn three_tokens(params: &SamplingParams, seed: u64) -> GenerationConfig {
    GenerationConfig { max_new_tokens: 3, sampling: *params, seed, stop_ids: vec![] }
}

/// Wrong on purpose: accepts the first child whenever the base gives it any real probability,
/// ignoring the draft's probability and never touching the residual.
fn accept_first_plausible(
    tree: &DraftedTree,
    base: &mut dyn BaseRows,
    params: &SamplingParams,
    rng: &mut Rng,
) -> Accepted {
    let bufs = &tree.buffers;
    let mut path = vec![0];
    let mut node = 0;
    loop {
        let p = sampling::process(base.row(node), params);
        match bufs.children(node).first() {
            Some(&child) if p[tree.tokens[child] as usize] > 0.05 => {
                path.push(child);
                node = child;
            }
            _ => {
                let next_root = sampling::sample(&p, rng) as i64;
                return Accepted { best_row: 0, accepted_drafts: path.len() - 1, path_nodes: path, next_root };
            }
        }
    }
}

fn check(params: SamplingParams) {
    let model = model();
    let exact = exact(&model, &params);
    eprintln!("{} continuations have probability > 0", exact.len());
    for (name, tree) in trees() {
        let (stat, df) = chi2(&sample_runs(&model, &tree, &params, accept_lossless, None), &exact, RUNS);
        let critical = chi2_critical(df);
        eprintln!(
            "{name} T={} top-p={}: chi2 {stat:.1}, df {df}, critical {critical:.1}",
            params.temperature, params.top_p
        );
        assert!(stat < critical, "{name}: the engine's samples do not follow the base distribution");

        let (bad, bad_df) = chi2(&sample_runs(&model, &tree, &params, accept_first_plausible, None), &exact, RUNS);
        eprintln!("{name} negative control: chi2 {bad:.1}, critical {:.1}", chi2_critical(bad_df));
        assert!(bad > chi2_critical(bad_df), "{name}: the chi-square test missed a wrong acceptance rule");
    }
}

#[test]
fn temperature_one() {
    check(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 });
}

#[test]
fn temperature_0_7_top_p_0_9() {
    check(SamplingParams { temperature: 0.7, top_k: 0, top_p: 0.9 });
}

/// A reduced draft vocabulary (here 7 of the 12 tokens, in shuffled order) leaves the output
/// distribution exact: q is zero outside it, and the residual max(p − q, 0) keeps those tokens'
/// whole base probability.
#[test]
fn reduced_draft_vocabulary_temperature_one() {
    let params = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0 };
    let model = model();
    let exact = exact(&model, &params);
    let ids = [5, 0, 9, 2, 11, 7, 3];
    for (name, tree) in trees() {
        let (stat, df) = chi2(&sample_runs(&model, &tree, &params, accept_lossless, Some(&ids)), &exact, RUNS);
        let critical = chi2_critical(df);
        eprintln!("{name}, draft vocabulary of {}: chi2 {stat:.1}, df {df}, critical {critical:.1}", ids.len());
        assert!(stat < critical, "{name}: with a draft vocabulary the samples do not follow the base distribution");
    }
}

/// At top-k 2 the processed draft distribution keeps two tokens, so the root's third child is
/// not drawn: the drafter makes it the head's next most likely token, verified as a deterministic
/// draft after the two drawn ones. The output distribution stays exact.
#[test]
fn top_k_two_with_three_children_pads_deterministically() {
    let params = SamplingParams { temperature: 1.0, top_k: 2, top_p: 1.0 };
    let model = model();
    let exact = exact(&model, &params);
    let paths = vec![vec![0], vec![1], vec![2], vec![0, 0], vec![0, 1], vec![1, 0], vec![2, 0]];
    let tree = TreeSpec::Static(StaticTree::from_paths(paths, 4).unwrap());
    let (stat, df) = chi2(&sample_runs(&model, &tree, &params, accept_lossless, None), &exact, RUNS);
    let critical = chi2_critical(df);
    eprintln!("three children at top-k 2: chi2 {stat:.1}, df {df}, critical {critical:.1}");
    assert!(stat < critical, "the engine's samples do not follow the base distribution");
    let (bad, bad_df) = chi2(&sample_runs(&model, &tree, &params, accept_first_plausible, None), &exact, RUNS);
    assert!(bad > chi2_critical(bad_df), "the chi-square test missed a wrong acceptance rule");
}

/// At T > 0 with `--top-k 1` the processed draft distribution is one token, but an EAGLE-2 tree
/// of three root children still verifies the head's three most likely tokens: it ranks by the
/// draft distribution at the temperature alone (cut tokens would come in token-id order, or not
/// at all).
#[test]
fn eagle2_tree_ranks_past_a_top_k_cut() {
    use clover_engine::draft::DraftHead;
    use clover_engine::spec::drafting::draft_tree;
    let model = model();
    let mut cache = model.new_cache(PROMPT.len());
    let base = model.prefill(&mut cache, &PROMPT, LogitRows::Last).unwrap();
    // A noiseless oracle drafts the base model's own logits, whose order is known.
    let mut head = oracle::OracleHead::new(PROMPT[0], 0.0, 1);
    DraftHead::<CpuBackend>::reset(&mut head);
    let root = 4;
    let rows: Vec<usize> = (0..PROMPT.len()).collect();
    let next: Vec<u32> = PROMPT[1..].iter().copied().chain([root]).collect();
    let first = head.begin(&model, &base, &rows, &next).unwrap();
    let want: Vec<u32> = {
        let mut c = model.new_cache(PROMPT.len() + 1);
        let logits = model.prefill(&mut c, &[PROMPT.as_slice(), &[root]].concat(), LogitRows::Last).unwrap().logits;
        let mut order: Vec<u32> = (0..VOCAB as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        order[..3].to_vec()
    };
    let tree = TreeSpec::Eagle2(Eagle2Params { top_k: 3, max_depth: 1, total_tokens: 4 });
    let params = SamplingParams { temperature: 0.7, top_k: 1, top_p: 1.0 };
    let drafted = draft_tree(&tree, &model, &mut head, root, first, &params, &mut Rng::new(0)).unwrap();
    assert_eq!(drafted.tokens, [&[root], want.as_slice()].concat(), "root, then the head's top three");
}

/// The real heads (untrained EAGLE-1 and Clover-2, initialised as `init-head` does) at T = 1 on
/// every tree kind: their own draft distributions, draws and stored q̃, and their state updates
/// after accepted paths between steps, still give the base model's distribution. (The oracle
/// head above tests acceptance at every depth; these test the heads' own plumbing at T > 0.)
#[test]
fn real_heads_temperature_one() {
    let params = SamplingParams::with_temperature(1.0);
    let dir = model_dir();
    let model = Llama::load(&dir, CpuBackend).unwrap();
    let exact = exact(&model, &params);
    for kind in [DraftKind::Eagle, DraftKind::Clover2] {
        let head_dir = dir.join(format!("head-{}", kind.name()));
        let _ = std::fs::remove_dir_all(&head_dir);
        init_head(kind, &dir, &head_dir, 5).unwrap();
        let mut head = load_head(kind, &head_dir, &model).unwrap();
        for (name, tree) in trees() {
            let (mut steps, mut accepted) = (0, 0);
            let counts = count_runs(|run| {
                let (out, stats) =
                    generate_speculative(&model, head.as_mut(), &tree, &PROMPT, &three_tokens(&params, run), |_| {})
                        .unwrap();
                steps += stats.base.steps;
                accepted += stats.accepted_hist.iter().enumerate().map(|(a, n)| a * n).sum::<usize>();
                out
            });
            let (stat, df) = chi2(&counts, &exact, RUNS);
            let critical = chi2_critical(df);
            let rate = accepted as f64 / steps as f64;
            eprintln!(
                "{} head, {name}: chi2 {stat:.1}, df {df}, critical {critical:.1}, {rate:.2} drafts accepted a step",
                kind.name()
            );
            assert!(stat < critical, "{} head, {name}: the samples do not follow the base distribution", kind.name());
            assert!(rate > 0.1, "{} head, {name}: too few drafts accepted ({rate}) to test acceptance", kind.name());
        }
    }
}
