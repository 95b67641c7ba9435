//! The engine's forward on the imported default model against an independent numpy forward of
//! the same GGUF weights (tools/reference_forward.py → tests/fixtures/reference_logits.json).

mod common;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::model::{Llama, LogitRows};
use serde_json::Value;

struct Agreement {
    positions: usize,
    top1_equal: usize,
    kl_sum: f64,
}

/// KL(p_ref ‖ p_engine) over the reference's top ids plus one bucket for the rest of the
/// vocabulary: a lower bound of the full KL that needs only the committed top-k.
fn kl_on_top_ids(position: &Value, logits: &[f32]) -> f64 {
    let ids: Vec<usize> =
        position["top_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let top: Vec<f64> = position["top_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let lse_ref = position["logsumexp"].as_f64().unwrap();
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse_eng = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    let p_ref: Vec<f64> = top.iter().map(|l| (l - lse_ref).exp()).collect();
    let p_eng: Vec<f64> = ids.iter().map(|&i| (logits[i] as f64 - lse_eng).exp()).collect();
    let rest_ref = (1.0 - p_ref.iter().sum::<f64>()).max(1e-12);
    let rest_eng = (1.0 - p_eng.iter().sum::<f64>()).max(1e-12);
    let kl_top: f64 = p_ref.iter().zip(&p_eng).map(|(p, q)| p * (p / q.max(1e-30)).ln()).sum();
    kl_top + rest_ref * (rest_ref / rest_eng).ln()
}

/// The engine's forward of the model in `dir` against every position of the fixture.
fn agreement(dir: &std::path::Path) -> Agreement {
    let text = std::fs::read_to_string(common::fixture("reference_logits.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let model = Llama::load(dir, CpuBackend).unwrap();
    let vocab = model.config.vocab_size;
    let mut total = Agreement { positions: 0, top1_equal: 0, kl_sum: 0.0 };
    for case in fixture["cases"].as_array().unwrap() {
        let ids: Vec<u32> = case["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut cache = model.new_cache(ids.len());
        let logits = model.prefill(&mut cache, &ids, LogitRows::All).unwrap().logits;
        let positions = case["positions"].as_array().unwrap();
        assert_eq!(positions.len(), ids.len(), "case {}", case["name"]);
        for (t, pos) in positions.iter().enumerate() {
            let row = &logits[t * vocab..(t + 1) * vocab];
            let engine_top = clover_engine::sampling::argmax(row);
            total.positions += 1;
            total.top1_equal += (engine_top as u64 == pos["top_ids"][0].as_u64().unwrap()) as usize;
            total.kl_sum += kl_on_top_ids(pos, row);
        }
    }
    total
}

impl Agreement {
    /// (top-1 agreement, mean KL), printed and checked against the bounds both imports meet.
    fn check(&self, what: &str) -> (f64, f64) {
        let top1 = self.top1_equal as f64 / self.positions as f64;
        let kl = self.kl_sum / self.positions as f64;
        eprintln!("{what}: {} positions: top-1 agreement {:.2}%, mean KL {:.2e}", self.positions, 100.0 * top1, kl);
        assert!(self.positions >= 50);
        assert!(top1 >= 0.98, "{what}: top-1 agreement {top1}");
        assert!(kl < 1e-2, "{what}: mean KL {kl}");
        (top1, kl)
    }
}

#[test]
fn logits_agree_with_independent_numpy_reference() {
    let Some(dir) = common::default_model() else {
        return;
    };
    agreement(&dir).check("bf16 import");
}

/// `import-gguf --dtype keep` multiplies the GGUF's own blocks, so it must agree with the
/// reference (which dequantizes them in numpy) at least as closely as the bf16 import, whose
/// weights are those values rounded to bf16.
#[test]
fn kept_quantized_weights_agree_more_closely_than_bf16() {
    let Some(dir) = common::default_model() else {
        return;
    };
    let Some(kept) = common::kept_quantized_model("reference-keep") else { return };
    let (_, kl_bf16) = agreement(&dir).check("bf16 import");
    let (_, kl_kept) = agreement(&kept).check("kept Q4_1/Q8_0 blocks");
    assert!(kl_kept <= kl_bf16, "kept blocks: mean KL {kl_kept:e} > bf16 import's {kl_bf16:e}");
    std::fs::remove_dir_all(kept.parent().unwrap()).unwrap();
}

/// The engine's greedy answers on the kept-block import, and its tokenisation of the chat
/// prompts, equal the numpy reference's (tests/fixtures/reference_greedy.json: argmax of the f64
/// forward of the same GGUF). The bf16 import rounds the weights, so it is held to the answers'
/// first tokens only (a near-tie later may go either way).
#[test]
fn greedy_answers_equal_the_independent_reference() {
    use clover_engine::model::{ChatMessage, TextTokenizer};
    use clover_engine::sampling::SamplingParams;
    use clover_engine::spec::engine::{generate_plain, GenerationConfig};
    let Some(dir) = common::default_model() else {
        return;
    };
    let Some(kept) = common::kept_quantized_model("reference-greedy") else { return };
    let text = std::fs::read_to_string(common::fixture("reference_greedy.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let tok = TextTokenizer::load(&dir).unwrap();
    for (name, folder, must_match) in [("kept blocks", &kept, usize::MAX), ("bf16 import", &dir, 4)] {
        let model = Llama::load(folder, CpuBackend).unwrap();
        for case in fixture["cases"].as_array().unwrap() {
            let (prompt, want) = (ids(&case["prompt_ids"]), ids(&case["greedy_ids"]));
            let message = ChatMessage::new("user", case["question"].as_str().unwrap());
            assert_eq!(tok.encode(&tok.render_chat(&[message], true).unwrap(), false).unwrap(), prompt);
            let cfg = GenerationConfig {
                max_new_tokens: want.len(),
                sampling: SamplingParams::greedy(),
                seed: 0,
                stop_ids: model.config.eos_token_ids.clone(),
            };
            let got = generate_plain(&model, &prompt, &cfg, |_| {}).unwrap().0;
            let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            eprintln!("{name}: {case}: {same} of {} reference tokens equal", want.len(), case = case["question"]);
            assert!(same >= want.len().min(must_match), "{name}: {:?} against the reference's {want:?}", got);
        }
    }
    std::fs::remove_dir_all(kept.parent().unwrap()).unwrap();
}
