//! The Clover-2 head end to end: fresh initialisation (clover2.md §17 test 2), lossless greedy
//! decoding with every tree kind, the Augmenting Block's cache length (§17 test 6), loading the
//! reference tensor names and refusing heads that do not fit, and the CLI.

mod common;

use common::direct::{add, assert_close, begin_on_prompt, linear, rewrite_weights, rmsnorm, Tensors, PROMPT};

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;

use clover_engine::backend::cpu::CpuBackend;
use clover_engine::backend::{AttnMask, Backend, KvLayout};
use clover_engine::draft::clover2::Clover2Head;
use clover_engine::draft::init::{init_head, init_head_from};
use clover_engine::draft::{load_head, DraftHead, DraftKind};
use clover_engine::model::layer::{DecoderLayer, Rope};
use clover_engine::model::random::{tiny_llama_config, write_random_model};
use clover_engine::model::{ForwardOutput, KvCache, Llama, Logits};
use clover_engine::rng::Rng;
use clover_engine::sampling::SamplingParams;
use clover_engine::spec::drafting::TreeSpec;
use clover_engine::spec::engine::{generate_plain, generate_speculative, GenerationConfig};
use clover_engine::spec::tree::{CloverTreeParams, Eagle2Params, StaticTree};
use clover_engine::weights::safetensors::SafetensorsFiles;

const TINY_VOCAB: usize = 256;

/// A tiny random base model and an untrained Clover-2 head for it.
fn tiny_base_and_head(name: &str) -> (PathBuf, PathBuf) {
    let dir = common::temp_dir(name);
    let (base, head) = (dir.join("base"), dir.join("head"));
    write_random_model(&base, &tiny_llama_config(TINY_VOCAB), 7).unwrap();
    init_head(DraftKind::Clover2, &base, &head, 1).unwrap();
    (base, head)
}

fn every_tree() -> Vec<(&'static str, TreeSpec)> {
    vec![
        ("mc_sim_7b_63", TreeSpec::Static(StaticTree::mc_sim_7b_63())),
        ("clover", TreeSpec::Clover(CloverTreeParams { budget: 25, ..CloverTreeParams::default() })),
        ("eagle2", TreeSpec::Eagle2(Eagle2Params { top_k: 10, max_depth: 5, total_tokens: 26 })),
    ]
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig { max_new_tokens, sampling: SamplingParams::greedy(), seed: 0, stop_ids: Vec::new() }
}

fn random_prompts(n: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let len = 4 + (rng.next_u64() % 20) as usize;
            (0..len).map(|_| 3 + (rng.next_u64() % (vocab as u64 - 3)) as u32).collect()
        })
        .collect()
}

/// Speculative greedy output equals plain greedy output for every prompt and tree; returns τ
/// per tree so callers can see that drafts were accepted at all.
fn assert_lossless(model: &Llama<CpuBackend>, head_dir: &Path, prompts: &[Vec<u32>], new_tokens: usize) -> Vec<f64> {
    let cfg = greedy(new_tokens);
    let plain: Vec<Vec<u32>> = prompts.iter().map(|p| generate_plain(model, p, &cfg, |_| {}).unwrap().0).collect();
    let mut head = Clover2Head::load(head_dir, model).unwrap();
    let mut taus = Vec::new();
    for (name, tree) in every_tree() {
        let (mut committed, mut steps) = (0, 0);
        for (prompt, want) in prompts.iter().zip(&plain) {
            let (got, stats) = generate_speculative(model, &mut head, &tree, prompt, &cfg, |_| {}).unwrap();
            assert_eq!(&got, want, "tree {name}, prompt {prompt:?}");
            committed += stats.accepted_hist.iter().enumerate().map(|(a, n)| (a + 1) * n).sum::<usize>();
            steps += stats.base.steps;
        }
        taus.push(committed as f64 / steps.max(1) as f64);
    }
    taus
}

#[test]
fn fresh_init_follows_the_reference() {
    let (base_dir, head_dir) = tiny_base_and_head("c2-init");
    let base = SafetensorsFiles::open_dir(&base_dir).unwrap();
    let head = SafetensorsFiles::open_dir(&head_dir).unwrap();
    let h = 32;
    let get = |name: &str, shape: &[usize]| head.get(name, shape).unwrap().to_f32();
    // Every noise term is U[0, 0.01): non-negative and small.
    let near = |w: &[f32], cols: usize, eye_cols: usize, what: &str| {
        for (i, &v) in w.iter().enumerate() {
            let (r, c) = (i / cols, i % cols);
            let noise = v - if r == c && c < eye_cols { 1.0 } else { 0.0 };
            assert!((0.0..0.01).contains(&noise), "{what}[{r}, {c}] = {v}");
        }
    };
    near(&get("clover_head_mlp.weight", &[h, h]), h, h, "W0");
    near(&get("clover_head_mlp2.weight", &[h, 2 * h]), 2 * h, h, "W_c");
    for ad in ["clover_head_mlp_rnn", "clover_head_mlp_rnn2"] {
        near(&get(&format!("{ad}.q.weight"), &[h, h]), h, h, "Wq");
        near(&get(&format!("{ad}.k.weight"), &[h, h]), h, h, "Wk");
        near(&get(&format!("{ad}.v.weight"), &[h, h]), h, 0, "Wv");
        assert_eq!(get(&format!("{ad}.input_layernorm.weight"), &[h]), vec![1.0; h]);
        for b in ["q", "k", "v"] {
            assert_eq!(get(&format!("{ad}.{b}.bias"), &[h]), vec![0.0; h]);
        }
    }
    for b in ["clover_head_mlp.bias", "clover_head_mlp2.bias"] {
        assert_eq!(get(b, &[h]), vec![0.0; h]);
    }
    let final_norm = base.get("model.norm.weight", &[h]).unwrap().to_f32();
    assert_eq!(get("clover_norm.weight", &[h]), final_norm);
    assert_eq!(get("clover_head_norm.weight", &[h]), final_norm);
    // Both block layers are copies of the base model's last layer (layer 1 of 2).
    for (name, shape) in [("self_attn.q_proj.weight", vec![h, h]), ("mlp.down_proj.weight", vec![h, 64])] {
        let want = base.get(&format!("model.layers.1.{name}"), &shape).unwrap().to_f32();
        assert_ne!(want, base.get(&format!("model.layers.0.{name}"), &shape).unwrap().to_f32());
        for l in 0..2 {
            assert_eq!(get(&format!("layers.{l}.{name}"), &shape), want, "layers.{l}.{name}");
        }
    }
    assert!(!head.contains("clover_embed_tokens.weight"), "E is the base lm_head and is not stored");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(head_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["draft"]["kind"], "clover2");
    assert_eq!(config["clover"]["num_heads"], 5);
    assert_eq!(config["num_hidden_layers"], 2);
}

/// clover2.md §16 P4: the block's source layer is a setting (the reference's HEAD copies layer 0);
/// a layer the base does not have, or the setting on an EAGLE-1 head, is refused.
#[test]
fn block_can_be_copied_from_another_base_layer() {
    let (base_dir, _) = tiny_base_and_head("c2-init-layer");
    let out = base_dir.parent().unwrap().join("head-from-0");
    init_head_from(DraftKind::Clover2, &base_dir, &out, 7, Some(0)).unwrap();
    let (base, head) = (SafetensorsFiles::open_dir(&base_dir).unwrap(), SafetensorsFiles::open_dir(&out).unwrap());
    let shape = [64, 32];
    let want = base.get("model.layers.0.mlp.gate_proj.weight", &shape).unwrap().to_f32();
    for l in 0..2 {
        assert_eq!(head.get(&format!("layers.{l}.mlp.gate_proj.weight"), &shape).unwrap().to_f32(), want);
    }
    let err = init_head_from(DraftKind::Clover2, &base_dir, &out, 7, Some(2)).unwrap_err().to_string();
    assert!(err.contains("--block-from-layer 2") && err.contains("has 2 decoder layers (0..=1)"), "{err}");
    let err = init_head_from(DraftKind::Eagle, &base_dir, &out, 7, Some(0)).unwrap_err().to_string();
    assert!(err.contains("only a Clover-2 head"), "{err}");
}

#[test]
fn greedy_is_lossless_on_a_tiny_model_for_every_tree() {
    let (base_dir, head_dir) = tiny_base_and_head("c2-lossless");
    let model = Llama::load(&base_dir, CpuBackend).unwrap();
    let prompts = random_prompts(20, TINY_VOCAB, 3);
    let taus = assert_lossless(&model, &head_dir, &prompts, 128);
    eprintln!("tau per tree (static, clover, eagle2): {taus:?}");
    // The near-identity head on this model accepts drafts, so multi-row updates and KV compaction
    // are exercised too, not only the one-token-per-step path.
    assert!(taus.iter().all(|&t| t > 1.2), "tau per tree: {taus:?}");
}

#[test]
fn greedy_is_lossless_on_the_default_model_for_every_tree() {
    let Some(base_dir) = common::default_model() else {
        return;
    };
    let head_dir = common::temp_dir("c2-default");
    init_head(DraftKind::Clover2, &base_dir, &head_dir, 0).unwrap();
    let model = Llama::load(&base_dir, CpuBackend).unwrap();
    let prompts = random_prompts(3, 2000, 5);
    let taus = assert_lossless(&model, &head_dir, &prompts, 32);
    eprintln!("tau per tree (static, clover, eagle2): {taus:?}");
}

/// Forwards to a Clover-2 head and checks, at every `begin`, that the Augmenting Block's cache
/// holds exactly the committed base positions: the prompt plus every emitted token but the newest
/// (the root, not yet forwarded by the base model).
struct CacheChecked<'a> {
    inner: Clover2Head<CpuBackend>,
    prompt_len: usize,
    emitted: &'a Cell<usize>,
    begins: usize,
}

impl DraftHead<CpuBackend> for CacheChecked<'_> {
    fn kind(&self) -> DraftKind {
        self.inner.kind()
    }

    fn max_depth(&self) -> usize {
        self.inner.max_depth()
    }

    fn draft_vocab(&self) -> Option<&[u32]> {
        self.inner.draft_vocab()
    }

    fn reset(&mut self) {
        self.inner.reset();
        assert_eq!(self.inner.stable_len(), 0);
    }

    fn begin(
        &mut self,
        model: &Llama<CpuBackend>,
        base: &ForwardOutput<CpuBackend>,
        rows: &[usize],
        next_tokens: &[u32],
    ) -> clover_engine::Result<Logits<CpuBackend>> {
        let logits = self.inner.begin(model, base, rows, next_tokens)?;
        assert_eq!(self.inner.stable_len(), self.prompt_len + self.emitted.get() - 1, "begin {}", self.begins);
        self.begins += 1;
        Ok(logits)
    }

    fn expand(
        &mut self,
        model: &Llama<CpuBackend>,
        parents: &[usize],
        tokens: &[u32],
    ) -> clover_engine::Result<Logits<CpuBackend>> {
        let before = self.inner.stable_len();
        let logits = self.inner.expand(model, parents, tokens)?;
        assert_eq!(self.inner.stable_len(), before, "drafting must not touch the block's cache");
        Ok(logits)
    }
}

#[test]
fn stable_kv_length_is_the_committed_positions_after_every_cycle() {
    let (base_dir, head_dir) = tiny_base_and_head("c2-stable");
    let model = Llama::load(&base_dir, CpuBackend).unwrap();
    let emitted = Cell::new(0);
    for (name, tree) in every_tree() {
        for prompt in random_prompts(3, TINY_VOCAB, 9) {
            emitted.set(0);
            let inner = Clover2Head::load(&head_dir, &model).unwrap();
            let mut head = CacheChecked { inner, prompt_len: prompt.len(), emitted: &emitted, begins: 0 };
            let (out, stats) = generate_speculative(&model, &mut head, &tree, &prompt, &greedy(64), |ids| {
                emitted.set(emitted.get() + ids.len())
            })
            .unwrap();
            assert_eq!(out.len(), 64, "tree {name}");
            assert_eq!(
                head.begins, stats.base.steps,
                "tree {name}: one begin for the prefill and per cycle but the last"
            );
        }
    }
}

/// AD(x, y) of clover2.md §3 with the cell under `prefix` of `t`.
fn ad(t: &Tensors, prefix: &str, x: &[f64], y: &[f64], heads: usize, eps: f64) -> Vec<f64> {
    let h = x.len();
    let w = |n: &str| t.get(&format!("{prefix}.{n}.weight"), &[h, h]);
    let b = |n: &str| t.get(&format!("{prefix}.{n}.bias"), &[h]);
    let normed = rmsnorm(x, &t.get(&format!("{prefix}.input_layernorm.weight"), &[h]), eps);
    let q = add(&linear(&w("q"), h, 0, &normed), &b("q"));
    let k = add(&linear(&w("k"), h, 0, y), &b("k"));
    let v = add(&linear(&w("v"), h, 0, y), &b("v"));
    let d = h / heads;
    let norm = |s: &[f64]| s.iter().map(|a| a * a).sum::<f64>().sqrt().max(eps);
    let mut out = x.to_vec();
    for head in 0..heads {
        let s = head * d..(head + 1) * d;
        let dot: f64 = s.clone().map(|i| q[i] * k[i]).sum();
        let a = dot / (norm(&q[s.clone()]) * norm(&k[s.clone()]));
        for i in s {
            out[i] += a * v[i];
        }
    }
    out
}

/// The head's logits equal a direct computation of clover2.md §4–§5 from the stored tensors:
/// pre-norm features paired with the next token, E = rows of the lm_head, RoPE base 10000 in the
/// block even when the base model uses another, W_c over `[s ; e]` in that order, parent states
/// gathered per node.
#[test]
fn drafts_match_a_direct_computation_of_the_spec() {
    let dir = common::temp_dir("c2-direct");
    let (base_dir, head_dir) = (dir.join("base"), dir.join("head"));
    let mut config = tiny_llama_config(TINY_VOCAB);
    config["rope_theta"] = 100000.0.into();
    // Untied, so E reading the input embedding instead of lm_head's rows would show.
    config["tie_word_embeddings"] = false.into();
    write_random_model(&base_dir, &config, 4).unwrap();
    init_head(DraftKind::Clover2, &base_dir, &head_dir, 1).unwrap();
    // Far from the identity, so a swapped half or a missing term changes the result.
    let mut rng = Rng::new(21);
    rewrite_weights(&head_dir, |tensors| {
        for (name, _, values) in tensors.iter_mut().filter(|(n, _, _)| !n.starts_with("layers.")) {
            let gain = name.ends_with("norm.weight");
            for v in values.iter_mut() {
                let u = rng.uniform_f32();
                *v = if gain { 0.5 + u } else { 0.6 * u - 0.3 };
            }
        }
    });

    let model = Llama::load(&base_dir, CpuBackend).unwrap();
    let c = model.config.clone();
    let (h, v, eps) = (c.hidden_size, c.vocab_size, c.rms_norm_eps as f64);
    let lm_head = Tensors::open(&base_dir).get("lm_head.weight", &[v, h]);
    let e = |t: u32| lm_head[t as usize * h..(t as usize + 1) * h].to_vec();
    let project = |f: &[f64]| linear(&lm_head, h, 0, f);
    let head_files = SafetensorsFiles::open_dir(&head_dir).unwrap();
    let t = Tensors::open(&head_dir);

    let mut head = Clover2Head::load(&head_dir, &model).unwrap();
    let (base, next, logits0) = begin_on_prompt(&model, &mut head);

    // AD₀ over (u_t, E[x_{t+1}]), then the two block layers (the shared, separately tested
    // decoder layer) at positions 0.. with RoPE base 10000.
    let u = CpuBackend.download(&base.prenorm);
    let mut z: Vec<f32> = Vec::new();
    for (i, &tok) in next.iter().enumerate() {
        let row: Vec<f64> = u[i * h..(i + 1) * h].iter().map(|&x| x as f64).collect();
        z.extend(ad(&t, "clover_head_mlp_rnn", &row, &e(tok), c.num_heads, eps).iter().map(|&x| x as f32));
    }
    let layout = KvLayout { n_kv_heads: c.num_kv_heads, capacity: 64, head_dim: c.head_dim };
    let mut block_cache = KvCache::with_layout(&CpuBackend, 2, layout);
    let n = PROMPT.len();
    let positions: Vec<u32> = (0..n as u32).collect();
    let cos_sin = Rope::plain(10000.0, c.head_dim).cos_sin(&positions);
    for l in 0..2 {
        let layer = DecoderLayer::load(
            &CpuBackend,
            &head_files,
            &format!("layers.{l}"),
            c.layer_dims(),
            c.rms_norm_eps,
            true,
            &mut 0,
        )
        .unwrap();
        layer.forward(&CpuBackend, &mut z, n, block_cache.layer(l), &cos_sin, AttnMask::Causal);
    }
    let last: Vec<f64> = z[(n - 1) * h..].iter().map(|&x| x as f64).collect();
    let s0 = rmsnorm(&last, &t.get("clover_norm.weight", &[h]), eps);
    let head_norm = t.get("clover_head_norm.weight", &[h]);
    let f0 = rmsnorm(
        &add(&linear(&t.get("clover_head_mlp.weight", &[h, h]), h, 0, &s0), &t.get("clover_head_mlp.bias", &[h])),
        &head_norm,
        eps,
    );
    assert_close(&logits0, &project(&f0), "head 0");

    // Heads 1 and 2: AD₁ on the parent's state and the node's token, then W_c [s ; e] + b_c.
    let wc = t.get("clover_head_mlp2.weight", &[h, 2 * h]);
    let bc = t.get("clover_head_mlp2.bias", &[h]);
    let step = |parent: &[f64], tok: u32| {
        let s = ad(&t, "clover_head_mlp_rnn2", parent, &e(tok), c.num_heads, eps);
        let pre = add(&add(&linear(&wc, 2 * h, 0, &s), &linear(&wc, 2 * h, h, &e(tok))), &bc);
        (project(&rmsnorm(&pre, &head_norm, eps)), s)
    };
    let logits1 = head.expand(&model, &[0, 0], &[11, 23]).unwrap().to_host(&CpuBackend);
    let (want_a, s1a) = step(&s0, 11);
    let (want_b, s1b) = step(&s0, 23);
    assert_close(&logits1[..v], &want_a, "head 1, node 0");
    assert_close(&logits1[v..], &want_b, "head 1, node 1");
    let logits2 = head.expand(&model, &[1, 1, 0], &[31, 2, 31]).unwrap().to_host(&CpuBackend);
    assert_close(&logits2[..v], &step(&s1b, 31).0, "head 2, node 0");
    assert_close(&logits2[v..2 * v], &step(&s1b, 2).0, "head 2, node 1");
    assert_close(&logits2[2 * v..], &step(&s1a, 31).0, "head 2, node 2");
    assert_eq!(head.stable_len(), n);
}

fn copy_head(src: &Path, name: &str) -> PathBuf {
    let dir = common::temp_dir(name);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

fn load_error(dir: &Path, model: &Llama<CpuBackend>) -> String {
    match load_head(DraftKind::Clover2, dir, model) {
        Ok(_) => panic!("the head in {} loaded but should have been refused", dir.display()),
        Err(e) => {
            eprintln!("refused: {e}");
            e.to_string()
        }
    }
}

#[test]
fn reference_names_load_and_mismatched_heads_are_refused() {
    let (base_dir, head_dir) = tiny_base_and_head("c2-load");
    let model = Llama::load(&base_dir, CpuBackend).unwrap();
    let h = 32;

    // The reference state dict also carries the frozen E copy; it is ignored.
    let with_e = copy_head(&head_dir, "c2-with-e");
    rewrite_weights(&with_e, |t| {
        t.push(("clover_embed_tokens.weight".into(), vec![TINY_VOCAB, h], vec![0.5; TINY_VOCAB * h]))
    });
    let head = load_head(DraftKind::Clover2, &with_e, &model).unwrap();
    assert_eq!((head.kind(), head.max_depth()), (DraftKind::Clover2, 5));

    // A head for a base model with another hidden size.
    let other = common::temp_dir("c2-other-base");
    let mut config = tiny_llama_config(TINY_VOCAB);
    config["hidden_size"] = 64.into();
    write_random_model(&other.join("base"), &config, 2).unwrap();
    init_head(DraftKind::Clover2, &other.join("base"), &other.join("head"), 0).unwrap();
    let err = load_error(&other.join("head"), &model);
    assert!(err.contains("config.json") && err.contains("hidden_size"), "{err}");

    // One tensor of the wrong shape.
    let bad_shape = copy_head(&head_dir, "c2-bad-shape");
    rewrite_weights(&bad_shape, |t| {
        let w = t.iter_mut().find(|(n, _, _)| n == "clover_head_mlp2.weight").unwrap();
        w.1 = vec![h, h];
        w.2.truncate(h * h);
    });
    let err = load_error(&bad_shape, &model);
    assert!(err.contains("model.safetensors") && err.contains("clover_head_mlp2.weight"), "{err}");

    // One tensor missing.
    let missing = copy_head(&head_dir, "c2-missing");
    rewrite_weights(&missing, |t| t.retain(|(n, _, _)| n != "clover_head_mlp_rnn2.q.bias"));
    let err = load_error(&missing, &model);
    assert!(err.contains("model.safetensors") && err.contains("clover_head_mlp_rnn2.q.bias"), "{err}");

    // An EAGLE-1 head is not a Clover-2 head, and the other way round.
    let eagle = common::temp_dir("c2-eagle");
    init_head(DraftKind::Eagle, &base_dir, &eagle, 0).unwrap();
    let err = load_error(&eagle, &model);
    assert!(err.contains("config.json") && err.contains("draft.kind") && err.contains("eagle"), "{err}");
    let err = load_head(DraftKind::Eagle, &head_dir, &model).err().expect("an EAGLE loader took a Clover-2 head");
    assert!(err.to_string().contains("draft.kind"), "{err}");
}

/// One tree is enough here (each run loads the model and decodes on a 30-layer base); the library
/// tests above cover every tree kind.
#[test]
fn cli_generates_with_a_clover2_head() {
    let Some(base_dir) = common::default_model() else {
        return;
    };
    let engine = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_clover-engine")).args(args).output().unwrap();
    let head_dir = common::temp_dir("c2-cli");
    let (base, head) = (base_dir.to_str().unwrap(), head_dir.to_str().unwrap());
    let o = engine(&["init-head", "--kind", "clover2", "--model", base, "--out", head]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tree = "clover";
    let o = engine(&[
        "generate",
        "--model",
        base,
        "--chat",
        "What is the capital of France?",
        "--max-new-tokens",
        "24",
        "--draft",
        "clover2",
        "--draft-model",
        head,
        "--tree",
        tree,
    ]);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "--tree {tree}: {err}");
    assert!(out.contains("Paris") && !out.contains("<|im_end|>"), "--tree {tree}: {out}");
    assert!(err.contains("tau:"), "--tree {tree}: {err}");
}
