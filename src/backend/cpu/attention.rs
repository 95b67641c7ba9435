//! Attention of new query rows over a KV cache: causal or tree-masked among the new rows, the
//! cached prefix always visible; grouped-query heads; softmax in f32 with the max subtracted.

use rayon::prelude::*;

use super::matmul::dot_f32;
use crate::backend::{AttnMask, AttnShape, KvLayout};

#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    layout: KvLayout,
    shape: AttnShape,
    rows: usize,
    past: usize,
    mask: AttnMask,
    out: &mut [f32],
) {
    let d = shape.head_dim;
    let group = shape.n_heads / shape.n_kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let width = shape.n_heads * d;
    // One task per (row, head): each writes its own head_dim slice of `out`.
    out.par_chunks_mut(d).enumerate().for_each(|(task, o)| {
        let (r, h) = (task / shape.n_heads, task % shape.n_heads);
        let kv = h / group;
        let qh = &q[r * width + h * d..][..d];
        let keys = past + rows;
        let visible = |t: usize| match mask {
            AttnMask::Causal => t <= past + r,
            AttnMask::Tree { bits, first_key } => t < first_key || bits[r * (keys - first_key) + t - first_key] != 0,
        };
        let k_head = &k_cache[kv * layout.capacity * d..][..keys * d];
        let v_head = &v_cache[kv * layout.capacity * d..][..keys * d];
        let mut scores = Vec::with_capacity(keys);
        for t in 0..keys {
            scores.push(if visible(t) { dot_f32(qh, &k_head[t * d..][..d]) * scale } else { f32::NEG_INFINITY });
        }
        weighted_sum(&mut scores, v_head, o);
    });
}

/// `o = Σ_t softmax(scores)_t · v[t]`, `v` `[keys, d]`; `scores` is overwritten.
fn weighted_sum(scores: &mut [f32], v: &[f32], o: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F (checked just above).
        return unsafe { weighted_sum_avx512(scores, v, o) };
    }
    weighted_sum_portable(scores, v, o)
}

/// The same operations in the same order, with the `o += w · v` loop in 16-lane registers (the
/// default x86-64 target only has 4): elementwise, so the bits are those of the portable version.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_sum_avx512(scores: &mut [f32], v: &[f32], o: &mut [f32]) {
    weighted_sum_portable(scores, v, o)
}

#[inline(always)]
fn weighted_sum_portable(scores: &mut [f32], v: &[f32], o: &mut [f32]) {
    let d = o.len();
    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    o.fill(0.0);
    for (t, &p) in scores.iter().enumerate() {
        if p != 0.0 {
            let w = p / sum;
            for (oi, vi) in o.iter_mut().zip(&v[t * d..][..d]) {
                *oi += w * vi;
            }
        }
    }
}

/// Backward of causal self-attention over a whole sequence (training is teacher-forced with no
/// cache: the `rows` queries and keys are the same positions). q `[rows, n_heads·d]` and k, v
/// `[rows, n_kv_heads·d]` are row-major, q and k after RoPE as the forward used them. Adds dL/dq,
/// dL/dk and dL/dv for `d_out` = dL/d(attention output) `[rows, n_heads·d]`.
///
/// The probabilities are recomputed, not saved. Saving them costs n_heads·T² floats per layer and
/// sequence, 151 MB at T = 2048 with 9 heads (×4 sequences ×2 layers for a Clover-2 batch: 1.2 GB);
/// recomputing costs the QKᵀ and dO·Vᵀ products twice more, ≈ 4·(T²/2)·H multiply-adds (≈ 5 G per
/// layer and sequence at H = 576), a tenth of one lm_head input gradient (T·V·H ≈ 58 G).
///
/// Two passes, each writing disjoint outputs so no task needs a lock: per (query row, head) the
/// softmax p, dp = dO·v, D = Σ p·dp and dq = scale·Σ p·(dp − D)·k, keeping log-sum-exp and D;
/// then per (key row, KV head) dk = scale·Σ p·(dp − D)·q and dv = Σ p·dO over the later query
/// rows of every query head in its group.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: AttnShape,
    rows: usize,
    d_out: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let d = shape.head_dim;
    let (heads, kv_heads) = (shape.n_heads, shape.n_kv_heads);
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let (qw, kw) = (heads * d, kv_heads * d);
    assert!(q.len() >= rows * qw && d_out.len() >= rows * qw && dq.len() >= rows * qw, "attention_backward: q rows");
    assert!(k.len() >= rows * kw && v.len() >= rows * kw, "attention_backward: k or v has fewer than {rows} rows");
    assert!(dk.len() >= rows * kw && dv.len() >= rows * kw, "attention_backward: dk or dv too short");
    let q_head = |i: usize, h: usize| &q[i * qw + h * d..][..d];
    let do_head = |i: usize, h: usize| &d_out[i * qw + h * d..][..d];
    let k_head = |j: usize, g: usize| &k[j * kw + g * d..][..d];
    let v_head = |j: usize, g: usize| &v[j * kw + g * d..][..d];

    // (log-sum-exp of the scaled scores, D) per (query row, head).
    let mut stats = vec![(0.0f32, 0.0f32); rows * heads];
    dq[..rows * qw].par_chunks_mut(d).zip(stats.par_iter_mut()).enumerate().for_each_init(
        || (Vec::with_capacity(rows), Vec::with_capacity(rows)),
        |(probs, dps), (task, (dqh, stat))| {
            let (i, h) = (task / heads, task % heads);
            let (g, qh, doh) = (h / group, q_head(i, h), do_head(i, h));
            probs.clear();
            probs.extend((0..=i).map(|j| dot_f32(qh, k_head(j, g)) * scale));
            let max = probs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in probs.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            dps.clear();
            dps.extend((0..=i).map(|j| dot_f32(doh, v_head(j, g))));
            let mut dsum = 0.0;
            for (p, dp) in probs.iter_mut().zip(dps.iter()) {
                *p /= sum;
                dsum += *p * dp;
            }
            for (j, (p, dp)) in probs.iter().zip(dps.iter()).enumerate() {
                let ds = scale * p * (dp - dsum);
                for (o, kv) in dqh.iter_mut().zip(k_head(j, g)) {
                    *o += ds * kv;
                }
            }
            *stat = (max + sum.ln(), dsum);
        },
    );

    dk[..rows * kw].par_chunks_mut(d).zip(dv[..rows * kw].par_chunks_mut(d)).enumerate().for_each(
        |(task, (dkh, dvh))| {
            let (j, g) = (task / kv_heads, task % kv_heads);
            let (kj, vj) = (k_head(j, g), v_head(j, g));
            for h in g * group..(g + 1) * group {
                for i in j..rows {
                    let (qh, doh) = (q_head(i, h), do_head(i, h));
                    let (lse, dsum) = stats[i * heads + h];
                    let p = (dot_f32(qh, kj) * scale - lse).exp();
                    let ds = scale * p * (dot_f32(doh, vj) - dsum);
                    for ((dkc, dvc), (qc, dc)) in dkh.iter_mut().zip(dvh.iter_mut()).zip(qh.iter().zip(doh)) {
                        *dkc += ds * qc;
                        *dvc += p * dc;
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::{self as gc, assert_grad, numeric, to_f64};
    use crate::backend::cpu::kv::kv_write;

    /// Grouped-query heads (4 query heads share 2 KV heads) over T = 5 causal rows.
    #[test]
    fn backward_matches_finite_differences_with_gqa_and_causal_mask() {
        let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 4 };
        let rows = 5;
        let (qw, kw) = (16, 8);
        let mut rng = crate::rng::Rng::new(14);
        let q = gc::random(&mut rng, rows * qw, 1.5);
        let k = gc::random(&mut rng, rows * kw, 1.5);
        let v = gc::random(&mut rng, rows * kw, 1.0);
        let g = gc::random(&mut rng, rows * qw, 1.0);
        let (q64, k64, v64, g64) = (to_f64(&q), to_f64(&k), to_f64(&v), to_f64(&g));

        // The f64 reference computes what the forward op does with the keys in a cache of T slots.
        let layout = KvLayout { n_kv_heads: 2, capacity: rows, head_dim: 4 };
        let (mut kc, mut vc) = (vec![0.0; rows * kw], vec![0.0; rows * kw]);
        kv_write(&mut kc, layout, &k, rows, 0);
        kv_write(&mut vc, layout, &v, rows, 0);
        let mut out = vec![0.0; rows * qw];
        attention(&q, &kc, &vc, layout, shape, rows, 0, AttnMask::Causal, &mut out);
        for (a, b) in out.iter().zip(gc::attention(&q64, &k64, &v64, shape, rows)) {
            assert!((*a as f64 - b).abs() < 1e-5, "forward {a} vs reference {b}");
        }

        let (mut dq, mut dk, mut dv) = (vec![0.0; rows * qw], vec![0.0; rows * kw], vec![0.0; rows * kw]);
        attention_backward(&q, &k, &v, shape, rows, &g, &mut dq, &mut dk, &mut dv);
        let loss = |q: &[f64], k: &[f64], v: &[f64]| gc::dot(&gc::attention(q, k, v, shape, rows), &g64);
        assert_grad("dq", &dq, &numeric(&q64, |x| loss(x, &k64, &v64)));
        assert_grad("dk", &dk, &numeric(&k64, |x| loss(&q64, x, &v64)));
        assert_grad("dv", &dv, &numeric(&v64, |x| loss(&q64, &k64, x)));
        // Row 0 attends only to itself: its query cannot change the output.
        assert!(dq[..qw].iter().all(|v| v.abs() < 1e-6));
    }

    /// One head, head_dim 1: attention is a softmax-weighted average of the values.
    #[test]
    fn tree_mask_hides_non_ancestors_and_prefix_stays_visible() {
        let layout = KvLayout { n_kv_heads: 1, capacity: 4, head_dim: 1 };
        let shape = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 1 };
        let k = [0.0, 0.0, 0.0, 0.0]; // equal scores: uniform weights over visible keys
        let v = [1.0, 10.0, 100.0, 0.0];
        let q = [1.0, 1.0];
        // Prefix of 1 slot; new rows 1 and 2 are siblings (each sees itself only).
        let mask = [1, 0, 0, 1];
        let mut out = [0.0; 2];
        attention(&q, &k, &v, layout, shape, 2, 1, AttnMask::Tree { bits: &mask, first_key: 1 }, &mut out);
        assert!((out[0] - 5.5).abs() < 1e-5);
        assert!((out[1] - 50.5).abs() < 1e-5);
        // Masking from slot 0 with a 3-wide mask: row 0 sees only itself, row 1 the prefix and itself.
        let wide = [0, 1, 0, 1, 0, 1];
        attention(&q, &k, &v, layout, shape, 2, 1, AttnMask::Tree { bits: &wide, first_key: 0 }, &mut out);
        assert!((out[0] - 10.0).abs() < 1e-5);
        assert!((out[1] - 50.5).abs() < 1e-5);
        attention(&q, &k, &v, layout, shape, 2, 1, AttnMask::Causal, &mut out);
        assert!((out[1] - 37.0).abs() < 1e-5);
    }
}
