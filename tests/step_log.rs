//! The per-step records `eval` and `bench` are built on: one per step, their accept lengths the
//! same as the acceptance histogram, tokens accounted for, phase times inside the step time.

mod common;

#[path = "common/oracle.rs"]
mod oracle;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::model::random::{tiny_llama_config, write_random_model};
use clover_engine::model::Llama;
use clover_engine::sampling::SamplingParams;
use clover_engine::spec::drafting::TreeSpec;
use clover_engine::spec::engine::{generate_plain, generate_speculative, GenerationConfig, StepRecord};
use clover_engine::spec::tree::StaticTree;

fn phases_fit(s: &StepRecord) -> bool {
    s.draft_secs >= 0.0 && s.verify_secs > 0.0 && s.draft_secs + s.verify_secs + s.accept_secs <= s.total_secs
}

#[test]
fn step_records_match_steps_and_tokens() {
    let dir = common::temp_dir("step-log");
    write_random_model(&dir, &tiny_llama_config(96), 12).unwrap();
    let model = Llama::load(&dir, CpuBackend).unwrap();
    let cfg = GenerationConfig { max_new_tokens: 40, sampling: SamplingParams::greedy(), seed: 0, stop_ids: vec![] };
    let tree = TreeSpec::Static(StaticTree::mc_sim_7b_63());
    for p in 0..3u32 {
        let prompt: Vec<u32> = (0..5 + p).map(|i| (p * 7 + i * 31) % 96).collect();

        let (ids, stats) = generate_plain(&model, &prompt, &cfg, |_| {}).unwrap();
        assert_eq!((stats.step_log.len(), ids.len()), (stats.steps, stats.steps + 1));
        assert!(stats.step_log.iter().all(|s| s.committed == 1 && s.draft_secs == 0.0 && phases_fit(s)));

        let mut head = oracle::OracleHead::new(prompt[0], 20.0, p as u64);
        let (ids, spec) = generate_speculative(&model, &mut head, &tree, &prompt, &cfg, |_| {}).unwrap();
        let log = &spec.base.step_log;
        assert_eq!(log.len(), spec.base.steps);
        let mut hist = vec![0; spec.accepted_hist.len()];
        log.iter().for_each(|s| hist[s.committed - 1] += 1);
        assert_eq!(hist, spec.accepted_hist);
        assert!(log.iter().any(|s| s.committed > 2), "the oracle should get deep paths accepted");
        // The prefill commits the first token; only the last step can be cut at the token limit.
        let committed: usize = log.iter().map(|s| s.committed).sum();
        assert!(committed + 1 >= ids.len() && committed + 1 - log.last().unwrap().committed < ids.len());
        assert!(log.iter().all(|s| s.draft_secs > 0.0 && phases_fit(s)));
        let draft_total: f64 = log.iter().map(|s| s.draft_secs).sum();
        assert!(draft_total <= spec.draft_secs, "step draft times exceed the run's");
    }
}
