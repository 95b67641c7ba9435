//! The EAGLE-1 head against a direct computation of eagle.md §2–§3 from its stored tensors: the
//! base's post-norm features paired with the next token, x = W_fc [E_in(token) ; f] + b_fc with
//! E_in the base's *input* embedding, one decoder layer without an input norm at RoPE base 10000
//! (even when the base model or the head's config names another), logits = W_lm f̂ with no final
//! norm, and each tree node seeing the prefix and its own ancestors (its parent's f̂ as its
//! feature).

mod common;

use common::direct::{add, assert_close, begin_on_prompt, linear, rewrite_weights, Tensors};

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::backend::{AttnMask, KvLayout};
use clover_engine::draft::eagle::EagleHead;
use clover_engine::draft::init::init_head;
use clover_engine::draft::{DraftHead, DraftKind};
use clover_engine::model::layer::{DecoderLayer, Rope};
use clover_engine::model::random::{tiny_llama_config, write_random_model};
use clover_engine::model::{KvCache, Llama};
use clover_engine::rng::Rng;

#[test]
fn drafts_match_a_direct_computation_of_the_spec() {
    let dir = common::temp_dir("eagle-direct");
    let (base_dir, head_dir) = (dir.join("base"), dir.join("head"));
    let mut config = tiny_llama_config(256);
    config["rope_theta"] = 100000.0.into();
    // Untied, so drafting with the lm_head's rows instead of the input embedding would show.
    config["tie_word_embeddings"] = false.into();
    write_random_model(&base_dir, &config, 5).unwrap();
    init_head(DraftKind::Eagle, &base_dir, &head_dir, 1).unwrap();
    // A checkpoint whose config names another RoPE base (a Llama-3 config copied whole): the
    // reference's layer uses 10000 regardless.
    let config_path = head_dir.join("config.json");
    let mut head_config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    head_config["rope_theta"] = 500000.0.into();
    std::fs::write(&config_path, serde_json::to_vec(&head_config).unwrap()).unwrap();
    // fc far from its initial values, so swapped halves or a missing bias change the result.
    let mut rng = Rng::new(22);
    rewrite_weights(&head_dir, |tensors| {
        for (_, _, values) in tensors.iter_mut().filter(|(n, _, _)| n.starts_with("fc.")) {
            values.iter_mut().for_each(|v| *v = 0.6 * rng.uniform_f32() - 0.3);
        }
    });

    let model = Llama::load(&base_dir, CpuBackend).unwrap();
    let c = model.config.clone();
    let (h, v) = (c.hidden_size, c.vocab_size);
    let base_tensors = Tensors::open(&base_dir);
    let embed = base_tensors.get("model.embed_tokens.weight", &[v, h]);
    let lm_head = base_tensors.get("lm_head.weight", &[v, h]);
    let head_tensors = Tensors::open(&head_dir);
    let (wfc, bfc) = (head_tensors.get("fc.weight", &[h, 2 * h]), head_tensors.get("fc.bias", &[h]));
    let fuse = |tok: u32, f: &[f64]| -> Vec<f32> {
        let e = &embed[tok as usize * h..(tok as usize + 1) * h];
        add(&add(&linear(&wfc, 2 * h, 0, e), &linear(&wfc, 2 * h, h, f)), &bfc).iter().map(|&x| x as f32).collect()
    };
    let layer =
        DecoderLayer::load(&CpuBackend, &head_tensors.0, "layers.0", c.layer_dims(), c.rms_norm_eps, false, &mut 0)
            .unwrap();
    // The layer over a chain of fused inputs at positions 0.., causal, in a fresh cache: the
    // last row's f̂ and its logits.
    let run = |inputs: &[Vec<f32>]| -> (Vec<f64>, Vec<f64>) {
        let n = inputs.len();
        let mut x: Vec<f32> = inputs.concat();
        let layout = KvLayout { n_kv_heads: c.num_kv_heads, capacity: n, head_dim: c.head_dim };
        let mut cache = KvCache::with_layout(&CpuBackend, 1, layout);
        let positions: Vec<u32> = (0..n as u32).collect();
        let cos_sin = Rope::plain(10000.0, c.head_dim).cos_sin(&positions);
        layer.forward(&CpuBackend, &mut x, n, cache.layer(0), &cos_sin, AttnMask::Causal);
        let last: Vec<f64> = x[(n - 1) * h..].iter().map(|&y| y as f64).collect();
        let logits = linear(&lm_head, h, 0, &last);
        (last, logits)
    };

    let mut head = EagleHead::load(&head_dir, &model).unwrap();
    let (base, next, logits0) = begin_on_prompt(&model, &mut head);

    let features = clover_engine::backend::Backend::download(&CpuBackend, &base.postnorm);
    let prefix: Vec<Vec<f32>> = next
        .iter()
        .enumerate()
        .map(|(i, &tok)| fuse(tok, &features[i * h..(i + 1) * h].iter().map(|&x| x as f64).collect::<Vec<_>>()))
        .collect();
    let (f_root, want0) = run(&prefix);
    assert_close(&logits0, &want0, "root row");

    // Level 1: two children of the root; level 2: children of both, each seeing its own chain.
    let chain = |links: &[(u32, &[f64])]| -> Vec<Vec<f32>> {
        prefix.iter().cloned().chain(links.iter().map(|&(tok, f)| fuse(tok, f))).collect()
    };
    let logits1 = head.expand(&model, &[0, 0], &[11, 23]).unwrap().to_host(&CpuBackend);
    let (f_a, want_a) = run(&chain(&[(11, &f_root)]));
    let (f_b, want_b) = run(&chain(&[(23, &f_root)]));
    assert_close(&logits1[..v], &want_a, "level 1, node 0");
    assert_close(&logits1[v..], &want_b, "level 1, node 1");
    let logits2 = head.expand(&model, &[1, 1, 0], &[31, 2, 31]).unwrap().to_host(&CpuBackend);
    assert_close(&logits2[..v], &run(&chain(&[(23, &f_root), (31, &f_b)])).1, "level 2, node 0");
    assert_close(&logits2[v..2 * v], &run(&chain(&[(23, &f_root), (2, &f_b)])).1, "level 2, node 1");
    assert_close(&logits2[2 * v..], &run(&chain(&[(11, &f_root), (31, &f_a)])).1, "level 2, node 2");
}

/// eagle.md §2: fc has a bias unless the head's config says `"bias": false`; such a head drafts
/// as the same head with a zero bias would, and the two ways of getting it wrong are named.
#[test]
fn config_without_an_fc_bias_drafts_as_a_zero_bias() {
    let dir = common::temp_dir("eagle-no-bias");
    let (base_dir, head_dir) = (dir.join("base"), dir.join("head"));
    write_random_model(&base_dir, &tiny_llama_config(256), 5).unwrap();
    init_head(DraftKind::Eagle, &base_dir, &head_dir, 1).unwrap();
    rewrite_weights(&head_dir, |tensors| {
        for (_, _, values) in tensors.iter_mut().filter(|(n, _, _)| n == "fc.bias") {
            values.iter_mut().for_each(|v| *v = 0.0);
        }
    });
    let model = Llama::load(&base_dir, CpuBackend).unwrap();
    let zero_bias = common::draft_rows(&mut EagleHead::load(&head_dir, &model).unwrap(), &model);

    let config_path = head_dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["bias"] = false.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = EagleHead::load(&head_dir, &model).err().expect("a bias the config denies").to_string();
    assert!(err.contains("fc.bias") && err.contains("\"bias\": false"), "{err}");

    rewrite_weights(&head_dir, |tensors| tensors.retain(|(n, _, _)| n != "fc.bias"));
    let no_bias = common::draft_rows(&mut EagleHead::load(&head_dir, &model).unwrap(), &model);
    assert_eq!(no_bias, zero_bias);

    config["bias"] = serde_json::Value::Null;
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = EagleHead::load(&head_dir, &model).err().expect("the default is a bias").to_string();
    assert!(err.contains("fc.bias"), "{err}");
    config["bias"] = "no".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = EagleHead::load(&head_dir, &model).err().expect("not a bool").to_string();
    assert!(err.contains("config.json") && err.contains("`bias`"), "{err}");
}
