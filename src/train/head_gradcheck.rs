//! Whole-head gradient checks: the total loss of a record, from the head's inputs to every
//! parameter of both head kinds, against central differences of an independent f64 rewrite of
//! the spec (clover2.md §3–§5, §8; eagle.md §2, §3, §5). The rewrite indexes the record itself
//! (target t+i, mask t+i, tokens shifted by one) rather than through `align.rs`, so a matching
//! loss also confirms the trainer's alignment.
//!
//! Tolerance: the f64 central differences (h = 1e-5) are exact to ~1e-9; the analytic gradient
//! is f32 through a few dozen ops, with relative rounding ~1e-6 of the terms it sums. An element
//! passes at a relative error below 1e-3, measured against max(|analytic|, |numeric|, 1e-2 · the
//! tensor's largest analytic |gradient|): the floor keeps elements whose gradient cancels to
//! nearly zero from demanding precision f32 cannot have, and any indexing or missing-term mistake
//! produces errors of order 1.

use std::collections::HashMap;

use crate::backend::cpu::gradcheck as gc;
use crate::backend::cpu::CpuBackend;
use crate::draft::clover2::{AD0, AD1, CLOVER_NORM, HEAD0_FC, HEADS_FC, HEAD_NORM};
use crate::draft::config::CloverConfig;
use crate::draft::init::{fresh_head, Tensors};
use crate::draft::vocab::DraftLmHead;
use crate::draft::DraftKind;
use crate::model::layer::{LayerDims, Rope};
use crate::model::random::{tiny_llama_config, write_random_model};
use crate::model::{Llama, ModelConfig};
use crate::rng::Rng;
use crate::train::align::Aligned;
use crate::train::clover_train::{clover_specs, CloverTrainee};
use crate::train::eagle_train::{add_noise, eagle_specs, EagleTrainee};
use crate::train::head::{Mode, TrainHead};
use crate::train::params::{from_list, ParamSet};
use crate::train::shards::Record;
use crate::train::timers::Timers;

const VOCAB: usize = 48;
const T: usize = 7;

/// A tiny random base model, loaded, with its config and the frozen matrices in f64.
fn tiny_base(name: &str) -> (Llama<CpuBackend>, Vec<f64>, Vec<f64>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("clover-head-gradcheck-{name}-{}", std::process::id()));
    // Untied: Clover-2's token embedding is lm_head's rows and EAGLE-1's the input embedding
    // (clover2.md §2, eagle.md §2); with tied weights a swap of the two would pass unseen.
    let mut config = tiny_llama_config(VOCAB);
    config["tie_word_embeddings"] = false.into();
    write_random_model(&dir, &config, 3).unwrap();
    let model = Llama::load(&dir, CpuBackend).unwrap();
    let lm = gc::to_f64(&model.lm_head().to_f32());
    let embed = gc::to_f64(&model.embed_tokens().to_f32());
    assert_ne!(lm, embed, "the check needs distinct lm_head and input embedding");
    (model, lm, embed, dir)
}

/// The fresh head's tensors moved off their special initial values (identities, zero biases,
/// unit gains, U[0, 0.01) cells), so every term of every gradient is exercised.
fn perturbed(tensors: &Tensors, rng: &mut Rng) -> Tensors {
    tensors
        .iter()
        .map(|(name, shape, v)| {
            let scale = if shape.len() == 2 { 0.6 / (shape[1] as f32).sqrt() } else { 0.25 };
            (name.clone(), shape.clone(), v.iter().map(|x| x + scale * (2.0 * rng.uniform_f32() - 1.0)).collect())
        })
        .collect()
}

fn record(rng: &mut Rng, h: usize) -> Record {
    let feats = |rng: &mut Rng| (0..T * h).map(|_| 1.5 * (2.0 * rng.uniform_f32() - 1.0)).collect();
    Record {
        index: 0,
        input_ids: (0..T).map(|_| (rng.next_u64() % VOCAB as u64) as u32).collect(),
        hidden_state: feats(rng),
        hidden_state_prenorm: feats(rng),
        loss_mask: vec![0, 1, 1, 0, 1, 1, 1],
    }
}

type P64 = HashMap<String, Vec<f64>>;

fn get<'a>(p: &'a P64, name: &str) -> &'a [f64] {
    p.get(name).unwrap_or_else(|| panic!("no parameter {name}"))
}

fn rows_of(x: &[f64], h: usize, rows: std::ops::Range<usize>) -> Vec<f64> {
    x[rows.start * h..rows.end * h].to_vec()
}

/// Rows of a `[?, h]` table.
fn gather(table: &[f64], h: usize, ids: &[u32]) -> Vec<f64> {
    ids.iter().flat_map(|&i| table[i as usize * h..(i as usize + 1) * h].iter().copied()).collect()
}

/// Row-wise concatenation `[a ; b]`.
fn concat(a: &[f64], b: &[f64], h: usize) -> Vec<f64> {
    a.chunks(h).zip(b.chunks(h)).flat_map(|(x, y)| x.iter().chain(y).copied()).collect()
}

fn add_bias(x: Vec<f64>, bias: &[f64]) -> Vec<f64> {
    x.chunks(bias.len()).flat_map(|r| r.iter().zip(bias).map(|(a, b)| a + b).collect::<Vec<_>>()).collect()
}

/// A Llama decoder layer under `prefix` over `rows` rows.
fn layer(p: &P64, prefix: &str, x: &[f64], d: LayerDims, input_norm: bool, eps: f64, cs: &[f64]) -> Vec<f64> {
    let w = |n: &str| get(p, &format!("{prefix}.{n}"));
    let rows = x.len() / d.hidden;
    let a = if input_norm { gc::rmsnorm(x, w("input_layernorm.weight"), eps) } else { x.to_vec() };
    let q = gc::rope(&gc::linear(&a, w("self_attn.q_proj.weight"), d.q_dim()), d.head_dim, cs);
    let k = gc::rope(&gc::linear(&a, w("self_attn.k_proj.weight"), d.kv_dim()), d.head_dim, cs);
    let v = gc::linear(&a, w("self_attn.v_proj.weight"), d.kv_dim());
    let att = gc::attention(&q, &k, &v, d.attn_shape(), rows);
    let mid: Vec<f64> =
        x.iter().zip(gc::linear(&att, w("self_attn.o_proj.weight"), d.hidden)).map(|(a, b)| a + b).collect();
    let n = gc::rmsnorm(&mid, w("post_attention_layernorm.weight"), eps);
    let act = gc::swiglu(
        &gc::linear(&n, w("mlp.gate_proj.weight"), d.intermediate),
        &gc::linear(&n, w("mlp.up_proj.weight"), d.intermediate),
    );
    mid.iter().zip(gc::linear(&act, w("mlp.down_proj.weight"), d.hidden)).map(|(a, b)| a + b).collect()
}

/// The AD cell: x + concat_h(cos(q_h, k_h)·v_h), q from RMSNorm(x), k and v from y.
fn cell(p: &P64, prefix: &str, x: &[f64], y: &[f64], h: usize, heads: usize, eps: f64) -> Vec<f64> {
    let w = |n: &str| get(p, &format!("{prefix}.{n}"));
    let q = add_bias(gc::linear(&gc::rmsnorm(x, w("input_layernorm.weight"), eps), w("q.weight"), h), w("q.bias"));
    let k = add_bias(gc::linear(y, w("k.weight"), h), w("k.bias"));
    let v = add_bias(gc::linear(y, w("v.weight"), h), w("v.bias"));
    let d = h / heads;
    let mut out = x.to_vec();
    for s in (0..x.len()).step_by(d) {
        let (qh, kh) = (&q[s..s + d], &k[s..s + d]);
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt().max(eps);
        let cos = gc::dot(qh, kh) / (norm(qh) * norm(kh));
        for i in 0..d {
            out[s + i] += cos * v[s + i];
        }
    }
    out
}

/// Σ_t m_t·(wv·mean SmoothL1(f_t − target_t) + wp·softCE(lm f_t, softmax(lm target_t))) / (Σ m + offset),
/// over the rows of `lm` (the whole lm_head or a draft vocabulary's).
fn head_loss(f: &[f64], targets: &[f64], mask: &[u8], lm: &[f64], h: usize, (wv, wp): (f64, f64), offset: f64) -> f64 {
    let denom = mask.iter().map(|&m| m as f64).sum::<f64>() + offset;
    let lse = |z: &[f64]| {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
    };
    let mut total = 0.0;
    for (t, &m) in mask.iter().enumerate().filter(|(_, &m)| m != 0) {
        let (ft, tt) = (&f[t * h..(t + 1) * h], &targets[t * h..(t + 1) * h]);
        let vl = ft
            .iter()
            .zip(tt)
            .map(|(a, b)| (a - b).abs())
            .map(|d| if d < 1.0 { 0.5 * d * d } else { d - 0.5 })
            .sum::<f64>()
            / h as f64;
        let rows = lm.len() / h;
        let (z, tz) = (gc::linear(ft, lm, rows), gc::linear(tt, lm, rows));
        let (lz, lt) = (lse(&z), lse(&tz));
        let ce: f64 = -z.iter().zip(&tz).map(|(zv, tv)| (tv - lt).exp() * (zv - lz)).sum::<f64>();
        total += m as f64 * (wv * vl + wp * ce);
    }
    total / denom
}

/// The record's targets h_{t+1} (zero row last) and mask (last forced 0), written out directly.
fn shifted(rec: &Record, h: usize) -> (Vec<u32>, Vec<f64>, Vec<u8>) {
    let mut ids: Vec<u32> = rec.input_ids[1..].to_vec();
    ids.push(0);
    let mut targets = gc::to_f64(&rec.hidden_state[h..]);
    targets.extend(vec![0.0; h]);
    let mut mask = rec.loss_mask.clone();
    mask[T - 1] = 0;
    (ids, targets, mask)
}

/// Head i's mask: row t weighs `mask[t + i]`, and under a label mask (`plausible[p]`: whether
/// x_{p+1} is plausible) only if x_{t+1} ..= x_{t+1+i} all are.
fn head_mask(mask: &[u8], plausible: Option<&[u8]>, i: usize) -> Vec<u8> {
    (0..T - i)
        .map(|t| {
            let consumed = plausible.is_none_or(|ok| (t..=t + i).all(|p| ok[p] == 1));
            if consumed {
                mask[t + i]
            } else {
                0
            }
        })
        .collect()
}

/// `lm`: the rows of the lm_head the losses project through (all of it, or a draft vocabulary's).
#[allow(clippy::too_many_arguments)]
fn eagle_loss(
    p: &P64,
    c: &ModelConfig,
    rec: &Record,
    plausible: Option<&[u8]>,
    noisy: &[f32],
    embed: &[f64],
    lm: &[f64],
    cs: &[f64],
) -> f64 {
    let h = c.hidden_size;
    let (ids, targets, mask) = shifted(rec, h);
    let x = concat(&gather(embed, h, &ids), &gc::to_f64(noisy), h);
    let x = add_bias(gc::linear(&x, get(p, "fc.weight"), h), get(p, "fc.bias"));
    let f = layer(p, "layers.0", &x, c.layer_dims(), false, c.rms_norm_eps as f64, cs);
    head_loss(&f, &targets, &head_mask(&mask, plausible, 0), lm, h, (1.0, 0.1), 1e-5)
}

/// `lm`: the full lm_head (E); `proj`: the rows the losses project through.
#[allow(clippy::too_many_arguments)]
fn clover_loss(
    p: &P64,
    c: &ModelConfig,
    k: usize,
    rec: &Record,
    plausible: Option<&[u8]>,
    lm: &[f64],
    proj: &[f64],
    cs: &[f64],
) -> f64 {
    let (h, eps, heads) = (c.hidden_size, c.rms_norm_eps as f64, c.num_heads);
    let (ids, targets, mask) = shifted(rec, h);
    let mut z = cell(p, AD0, &gc::to_f64(&rec.hidden_state_prenorm), &gather(lm, h, &ids), h, heads, eps);
    for l in 0..2 {
        z = layer(p, &format!("layers.{l}"), &z, c.layer_dims(), true, eps, cs);
    }
    let mut s = gc::rmsnorm(&z, get(p, CLOVER_NORM), eps);
    let pre = add_bias(gc::linear(&s, get(p, &format!("{HEAD0_FC}.weight")), h), get(p, &format!("{HEAD0_FC}.bias")));
    let f = gc::rmsnorm(&pre, get(p, HEAD_NORM), eps);
    let mut total = head_loss(&f, &targets, &head_mask(&mask, plausible, 0), proj, h, (10.0, 1.0), 1.0);
    for i in 1..k {
        let rows = T - i;
        let e = gather(lm, h, &ids[i..]);
        s = cell(p, AD1, &rows_of(&s, h, 0..rows), &e, h, heads, eps);
        let pre = add_bias(
            gc::linear(&concat(&s, &e, h), get(p, &format!("{HEADS_FC}.weight")), h),
            get(p, &format!("{HEADS_FC}.bias")),
        );
        let f = gc::rmsnorm(&pre, get(p, HEAD_NORM), eps);
        let decay = 0.7f64.powi(i as i32);
        let mask_i = head_mask(&mask, plausible, i);
        total += head_loss(&f, &rows_of(&targets, h, i..T), &mask_i, proj, h, (10.0 * decay, decay), 1.0);
    }
    total
}

/// Trains one pass and compares the loss and every parameter tensor's gradient (at sampled
/// elements) with the f64 reference; with `draft_vocab`, the losses run over those tokens only;
/// with `plausible`, under that label mask.
fn check(kind: DraftKind, seed: u64, draft_vocab: Option<Vec<u32>>, plausible: Option<Vec<u8>>) {
    let (model, lm, embed, dir) = tiny_base(&format!("{}-{seed}", kind.name()));
    let h = model.config.hidden_size;
    let (lm_rows, proj) = match draft_vocab {
        Some(ids) => (gather(&lm, h, &ids), DraftLmHead::from_ids(&model, ids).unwrap()),
        None => (lm.clone(), DraftLmHead::full()),
    };
    let b = CpuBackend;
    let mut rng = Rng::new(seed);
    let (tensors, json) = fresh_head(kind, &dir, seed).unwrap();
    let tensors = perturbed(&tensors, &mut rng);
    let config = ModelConfig::from_json(&json, &dir).unwrap();
    let clover = CloverConfig::from_json(&json, &dir).unwrap();
    let specs = match kind {
        DraftKind::Eagle => eagle_specs(&config),
        DraftKind::Clover2 => clover_specs(&config, &clover),
    };
    let params = ParamSet::load(&b, specs, from_list(&tensors, "test")).unwrap();
    let weights = params.weights(&b).unwrap();
    let mut head: Box<dyn TrainHead<CpuBackend>> = match kind {
        DraftKind::Eagle => Box::new(EagleTrainee::new(&b, config.clone(), weights)),
        DraftKind::Clover2 => Box::new(CloverTrainee::new(&b, config.clone(), clover, weights)),
    };
    let rec = record(&mut rng, config.hidden_size);
    let heads = head.loss_spec().heads();
    let aligned = Aligned::new(&rec, h);
    let aligned = match &plausible {
        Some(ok) => aligned.with_label_mask(ok.clone()),
        None => aligned,
    };
    let scales = head.loss_spec().batch_scales(&(0..heads).map(|i| aligned.mask_sum(i)).collect::<Vec<_>>());
    let mut noise = Rng::new(seed + 1);
    let mut noisy = rec.hidden_state.clone();
    add_noise(&mut noisy, T, &mut noise.clone());
    let mode = Mode::Train { noise: &mut noise };
    let sums = head.pass(&b, &model, &proj, &rec, &aligned, &scales, mode, &mut Timers::default());
    let loss32: f64 = sums.iter().map(|s| s.vloss + s.ploss).sum();
    let grads: Vec<Vec<f32>> = head.grads().into_iter().map(|g| g.clone()).collect();
    let grads = params.tensors(&b, &grads, "");

    let positions: Vec<u32> = (0..T as u32).collect();
    let cs = gc::to_f64(&Rope::plain(10000.0, config.head_dim).cos_sin(&positions));
    let loss = |p: &P64| match kind {
        DraftKind::Eagle => eagle_loss(p, &config, &rec, plausible.as_deref(), &noisy, &embed, &lm_rows, &cs),
        DraftKind::Clover2 => clover_loss(p, &config, clover.num_heads, &rec, plausible.as_deref(), &lm, &lm_rows, &cs),
    };
    let mut p: P64 = tensors.iter().map(|(n, _, v)| (n.clone(), gc::to_f64(v))).collect();
    let loss64 = loss(&p);
    assert!((loss32 - loss64).abs() < 1e-4 * loss64.abs(), "{kind:?}: loss {loss32} vs f64 reference {loss64}");

    assert_eq!(grads.len(), tensors.len(), "a gradient for every tensor of the head");
    for (name, _, analytic) in &grads {
        let n = analytic.len();
        let scale = analytic.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        assert!(scale > 0.0, "{kind:?} {name}: no gradient reaches this tensor");
        let mut picks = vec![0, n / 2, n - 1];
        picks.extend((0..3).map(|_| (rng.next_u64() % n as u64) as usize));
        for i in picks {
            let x0 = p[name][i];
            let h = 1e-5;
            p.get_mut(name).unwrap()[i] = x0 + h;
            let plus = loss(&p);
            p.get_mut(name).unwrap()[i] = x0 - h;
            let minus = loss(&p);
            p.get_mut(name).unwrap()[i] = x0;
            let numeric = (plus - minus) / (2.0 * h);
            let a = analytic[i] as f64;
            let rel = (a - numeric).abs() / a.abs().max(numeric.abs()).max(1e-2 * scale);
            assert!(rel < 1e-3, "{kind:?} {name}[{i}]: analytic {a} vs numeric {numeric} (relative error {rel:e})");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eagle_head_gradients_match_finite_differences() {
    check(DraftKind::Eagle, 41, None, None);
}

#[test]
fn clover2_head_gradients_match_finite_differences() {
    check(DraftKind::Clover2, 42, None, None);
}

/// A draft vocabulary of 7 tokens (out of order): the teacher is renormalised over them.
#[test]
fn draft_vocabulary_gradients_match_finite_differences() {
    let ids = vec![9, 2, 14, 0, 5, 11, 3];
    check(DraftKind::Eagle, 43, Some(ids.clone()), None);
    check(DraftKind::Clover2, 44, Some(ids), None);
}

/// Under a label mask with x_3 implausible (position 2) the heads' masks part ways: head 0 keeps
/// rows 1, 4, 5, head 1 rows 0, 3, 4, head 2 row 3, heads 3 and 4 none (their denominators are
/// then 1), and every row reading x_3 drops out. With x_4 implausible instead (position 3), head
/// 1 learns the teacher rows 1, 2 and 5 of the active 1, 2, 4, 5: not a run of them, so its
/// teacher rows are gathered. The reference builds each head's mask itself.
#[test]
fn label_mask_gradients_match_finite_differences() {
    let plausible = vec![1, 1, 0, 1, 1, 1, 1];
    check(DraftKind::Eagle, 45, None, Some(plausible.clone()));
    check(DraftKind::Clover2, 46, Some(vec![9, 2, 14, 0, 5, 11, 3]), Some(plausible));
    check(DraftKind::Clover2, 47, None, Some(vec![1, 1, 1, 0, 1, 1, 1]));
}
