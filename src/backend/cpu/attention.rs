//! Attention of new query rows over a KV cache: causal or tree-masked among the new rows, the
//! cached prefix always visible; grouped-query heads; softmax in f32 with the max subtracted.

use rayon::prelude::*;

use super::kv::kv_write;
#[cfg(test)]
use super::matmul::dot_f32;
use super::matmul::matmul_f32_serial;
use crate::backend::{AttnMask, AttnShape, KvLayout};
use crate::vexp::{exp_lanes, LANES};

/// Query rows per task: with the GQA group's heads, the query vectors that meet each key and
/// value of one KV head together (24 for the default model's group of 3).
const ROWS_PER_TASK: usize = 8;

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
    let keys = past + rows;
    // One task per (KV head, block of rows): the scores of all its query vectors against all keys
    // come from the matmul kernel's register tiles (a key is loaded once for several queries, and
    // horizontal sums are batched), which gives each score the bits `dot_f32` gives it alone.
    // Masked scores are computed too and then replaced by −∞, except that under a causal mask a
    // block of rows stops at the last key its last row sees: a long causal prefill then does
    // about the work of its triangle, not of the square. The keys dropped weigh exactly 0, so
    // every row's bits are the same either way.
    let blocks = rows.div_ceil(ROWS_PER_TASK);
    let results: Vec<(usize, usize, Vec<f32>)> = (0..shape.n_kv_heads * blocks)
        .into_par_iter()
        .map(|task| {
            let (kv, block) = (task / blocks, task % blocks);
            let r0 = block * ROWS_PER_TASK;
            let block_rows = ROWS_PER_TASK.min(rows - r0);
            let vectors = block_rows * group;
            // Query vector j = (row r0 + j / group, head kv·group + j % group).
            let mut qs = Vec::with_capacity(vectors * d);
            for r in r0..r0 + block_rows {
                qs.extend_from_slice(&q[r * width + kv * group * d..][..group * d]);
            }
            let keys = match mask {
                AttnMask::Causal => past + r0 + block_rows,
                AttnMask::Tree { .. } => keys,
            };
            let k_head = &k_cache[kv * layout.capacity * d..][..keys * d];
            let v_head = &v_cache[kv * layout.capacity * d..][..keys * d];
            let mut scores = vec![0.0f32; vectors * keys];
            matmul_f32_serial(&qs, vectors, k_head, keys, &mut scores);
            for (j, row_scores) in scores.chunks_exact_mut(keys).enumerate() {
                let r = r0 + j / group;
                for (t, s) in row_scores.iter_mut().enumerate() {
                    let visible = match mask {
                        AttnMask::Causal => t <= past + r,
                        AttnMask::Tree { bits, first_key } => {
                            t < first_key || bits[r * (keys - first_key) + t - first_key] != 0
                        }
                    };
                    *s = if visible { *s * scale } else { f32::NEG_INFINITY };
                }
                softmax_weights(row_scores);
            }
            let mut o = vec![0.0f32; vectors * d];
            weighted_values(&scores, keys, v_head, &mut o);
            (kv, r0, o)
        })
        .collect();
    for (kv, r0, o) in results {
        for (j, oj) in o.chunks_exact(d).enumerate() {
            let (r, h) = (r0 + j / group, kv * group + j % group);
            out[r * width + h * d..][..d].copy_from_slice(oj);
        }
    }
}

/// Softmax in place, each weight written as `p / Σp` with `p = exp(score − max)`, masked
/// scores (−∞) weighing exactly 0. The exponentials are `vexp`'s 16 lanes at a time (the library
/// `expf` per score was a quarter of a tree verification's attention); the sum runs in order.
fn softmax_weights(scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F (checked just above).
        return unsafe { softmax_weights_avx512(scores) };
    }
    softmax_weights_portable(scores)
}

/// The same operations in 16-lane registers (no fused multiply-adds: the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_weights_avx512(scores: &mut [f32]) {
    softmax_weights_portable(scores)
}

#[inline(always)]
fn softmax_weights_portable(scores: &mut [f32]) {
    let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    for chunk in scores.chunks_mut(LANES) {
        let mut x = [f32::NEG_INFINITY; LANES];
        x[..chunk.len()].copy_from_slice(chunk);
        let e = exp_lanes(x.map(|s| s - max));
        for (s, (&x, &e)) in chunk.iter_mut().zip(x.iter().zip(&e)) {
            *s = if x == f32::NEG_INFINITY { 0.0 } else { e };
        }
    }
    let sum: f32 = scores.iter().sum();
    for s in scores.iter_mut() {
        *s /= sum;
    }
}

/// `o[j] = Σ_t w[j, t] · v[t]` for rows of weights `w` `[rows, keys]`, `v` `[keys, d]`: per
/// output element, terms in increasing `t`, each one multiply and one add, terms of weight 0
/// skipped. That order is the same whatever the rows, so the bits are too.
fn weighted_values(w: &[f32], keys: usize, v: &[f32], o: &mut [f32]) {
    o.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F (checked just above).
        return unsafe { weighted_values_avx512(w, keys, v, o) };
    }
    let d = v.len() / keys.max(1);
    weighted_values_columns(w, keys, v, d, o, 0..d);
}

/// The portable loop, over output columns `cols` of every row.
fn weighted_values_columns(w: &[f32], keys: usize, v: &[f32], d: usize, o: &mut [f32], cols: std::ops::Range<usize>) {
    for (wj, oj) in w.chunks_exact(keys).zip(o.chunks_exact_mut(d)) {
        for (t, &wt) in wj.iter().enumerate() {
            if wt != 0.0 {
                for (oi, vi) in oj[cols.clone()].iter_mut().zip(&v[t * d + cols.start..t * d + cols.end]) {
                    *oi += wt * vi;
                }
            }
        }
    }
}

/// 64-column strips of 4 rows at a time, the 16 accumulators in registers while each `v[t]`
/// strip is loaded once for the 4 rows; the columns past the last whole strip by the portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_values_avx512(w: &[f32], keys: usize, v: &[f32], o: &mut [f32]) {
    let d = v.len() / keys.max(1);
    let rows = o.len() / d.max(1);
    let strips = d / 64;
    for strip in 0..strips {
        let mut r = 0;
        while r + 4 <= rows {
            values_tile::<4>(w, keys, v, d, o, r, strip * 64);
            r += 4;
        }
        while r < rows {
            values_tile::<1>(w, keys, v, d, o, r, strip * 64);
            r += 1;
        }
    }
    if strips * 64 < d {
        weighted_values_columns(w, keys, v, d, o, strips * 64..d);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn values_tile<const R: usize>(
    w: &[f32],
    keys: usize,
    v: &[f32],
    d: usize,
    o: &mut [f32],
    r0: usize,
    c0: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for t in 0..keys {
        let vp = v.as_ptr().add(t * d + c0);
        let vt = [
            _mm512_loadu_ps(vp),
            _mm512_loadu_ps(vp.add(16)),
            _mm512_loadu_ps(vp.add(32)),
            _mm512_loadu_ps(vp.add(48)),
        ];
        for (r, acc) in acc.iter_mut().enumerate() {
            let wt = *w.get_unchecked((r0 + r) * keys + t);
            if wt != 0.0 {
                let wv = _mm512_set1_ps(wt);
                for c in 0..4 {
                    acc[c] = _mm512_add_ps(acc[c], _mm512_mul_ps(wv, vt[c]));
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let op = o.as_mut_ptr().add((r0 + r) * d + c0);
        for (c, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(op.add(16 * c), *a);
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
/// Two passes, each writing disjoint outputs so no task needs a lock, each over blocks of
/// `BACKWARD_BLOCK` rows of one head, whose score products come from the matmul kernel's register
/// tiles (as the forward's) instead of one dot product per (query, key) pair:
/// per (query block, head) the softmax p, dp = dO·Vᵀ, D = Σ p·dp and dq = scale·Σ p·(dp − D)·k,
/// keeping log-sum-exp and D per row; then per (key block, KV head) dk = scale·Σ p·(dp − D)·q and
/// dv = Σ p·dO over the later query rows of every query head in its group.
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
    if rows == 0 || d == 0 {
        return;
    }
    // Each head's rows as one contiguous [rows, d] matrix, as the kernels take them: the layout
    // of a KV cache of `rows` slots.
    let by_head = |x: &[f32], heads: usize| {
        let mut out = vec![0.0; rows * heads * d];
        kv_write(
            &mut out,
            KvLayout { n_kv_heads: heads, capacity: rows, head_dim: d },
            &x[..rows * heads * d],
            rows,
            0,
        );
        out
    };
    let (qh, doh) = (by_head(q, heads), by_head(d_out, heads));
    let (kg, vg) = (by_head(k, kv_heads), by_head(v, kv_heads));
    let head = |m, h, r0, r1| head_rows(m, rows, d, h, r0, r1);
    let blocks = rows.div_ceil(BACKWARD_BLOCK);
    let block_rows = |b: usize| (b * BACKWARD_BLOCK, ((b + 1) * BACKWARD_BLOCK).min(rows));

    // Pass 1, per (head, query block): the rows' probabilities over keys 0..=i and dq.
    let pass1: Vec<QueryBlock> = (0..heads * blocks)
        .into_par_iter()
        .map(|task| {
            let (h, (i0, i1)) = (task / blocks, block_rows(task % blocks));
            let (g, n, keys) = (h / group, i1 - i0, i1);
            let (k_g, v_g) = (head(&kg, g, 0, keys), head(&vg, g, 0, keys));
            let mut p = vec![0.0f32; n * keys];
            let mut ds = vec![0.0f32; n * keys];
            matmul_f32_serial(head(&qh, h, i0, i1), n, k_g, keys, &mut p);
            matmul_f32_serial(head(&doh, h, i0, i1), n, v_g, keys, &mut ds);
            let mut stats = Vec::with_capacity(n);
            for (r, (p, ds)) in p.chunks_exact_mut(keys).zip(ds.chunks_exact_mut(keys)).enumerate() {
                let seen = i0 + r + 1;
                p[..seen].iter_mut().for_each(|s| *s *= scale);
                let max = p[..seen].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let sum = exp_shifted(&mut p[..seen], max);
                let mut dsum = 0.0;
                for (pj, dp) in p[..seen].iter_mut().zip(&ds[..seen]) {
                    *pj /= sum;
                    dsum += *pj * dp;
                }
                // ds = scale·p·(dp − D) over the keys row i sees; 0 (skipped below) past them.
                for (dsj, pj) in ds[..seen].iter_mut().zip(&p[..seen]) {
                    *dsj = scale * pj * (*dsj - dsum);
                }
                ds[seen..].fill(0.0);
                stats.push((max + sum.ln(), dsum));
            }
            let mut dq_block = vec![0.0f32; n * d];
            weighted_values(&ds, keys, k_g, &mut dq_block);
            (dq_block, stats)
        })
        .collect();
    let mut stats = vec![(0.0f32, 0.0f32); rows * heads];
    for (task, (dq_block, block_stats)) in pass1.into_iter().enumerate() {
        let (h, (i0, _)) = (task / blocks, block_rows(task % blocks));
        for (r, (dqr, st)) in dq_block.chunks_exact(d).zip(block_stats).enumerate() {
            dq[(i0 + r) * qw + h * d..][..d].iter_mut().zip(dqr).for_each(|(o, x)| *o += x);
            stats[(i0 + r) * heads + h] = st;
        }
    }

    // Pass 2, per (KV head, key block): dk and dv from the query rows at or after each key.
    let pass2: Vec<(Vec<f32>, Vec<f32>)> = (0..kv_heads * blocks)
        .into_par_iter()
        .map(|task| {
            let (g, (j0, j1)) = (task / blocks, block_rows(task % blocks));
            let (n, later) = (j1 - j0, rows - j0);
            let (k_block, v_block) = (head(&kg, g, j0, j1), head(&vg, g, j0, j1));
            let (mut dk_block, mut dv_block) = (vec![0.0f32; n * d], vec![0.0f32; n * d]);
            let (mut p, mut ds) = (vec![0.0f32; n * later], vec![0.0f32; n * later]);
            let (mut dk_h, mut dv_h) = (vec![0.0f32; n * d], vec![0.0f32; n * d]);
            for h in g * group..(g + 1) * group {
                let (q_later, do_later) = (head(&qh, h, j0, rows), head(&doh, h, j0, rows));
                matmul_f32_serial(k_block, n, q_later, later, &mut p);
                matmul_f32_serial(v_block, n, do_later, later, &mut ds);
                for (r, (p, ds)) in p.chunks_exact_mut(later).zip(ds.chunks_exact_mut(later)).enumerate() {
                    // Key j0 + r is seen by the query rows from itself on: columns r.. of `later`.
                    p[..r].fill(0.0);
                    ds[..r].fill(0.0);
                    for (c, (pc, dsc)) in p[r..].iter_mut().zip(&mut ds[r..]).enumerate() {
                        let (lse, dsum) = stats[(j0 + r + c) * heads + h];
                        *pc = *pc * scale - lse;
                        *dsc -= dsum;
                    }
                    exp_shifted(&mut p[r..], 0.0);
                    for (pc, dsc) in p[r..].iter().zip(&mut ds[r..]) {
                        *dsc *= scale * pc;
                    }
                }
                weighted_values(&ds, later, q_later, &mut dk_h);
                weighted_values(&p, later, do_later, &mut dv_h);
                dk_block.iter_mut().zip(&dk_h).for_each(|(o, x)| *o += x);
                dv_block.iter_mut().zip(&dv_h).for_each(|(o, x)| *o += x);
            }
            (dk_block, dv_block)
        })
        .collect();
    for (task, (dk_block, dv_block)) in pass2.into_iter().enumerate() {
        let (g, (j0, _)) = (task / blocks, block_rows(task % blocks));
        for (r, (dkr, dvr)) in dk_block.chunks_exact(d).zip(dv_block.chunks_exact(d)).enumerate() {
            dk[(j0 + r) * kw + g * d..][..d].iter_mut().zip(dkr).for_each(|(o, x)| *o += x);
            dv[(j0 + r) * kw + g * d..][..d].iter_mut().zip(dvr).for_each(|(o, x)| *o += x);
        }
    }
}

/// What pass 1 of `attention_backward` gives per (head, query block): the rows' dq, and per row
/// the log-sum-exp of its scaled scores and D = Σ p·dp.
type QueryBlock = (Vec<f32>, Vec<(f32, f32)>);

/// Rows of one backward task: enough that a key or query block is reused across the tile rows,
/// few enough that a 512-token sequence's 9 heads make dozens of tasks.
const BACKWARD_BLOCK: usize = 16;

/// Rows `r0..r1` of head `h` in a `[heads, rows, d]` matrix.
fn head_rows(m: &[f32], rows: usize, d: usize, h: usize, r0: usize, r1: usize) -> &[f32] {
    &m[(h * rows + r0) * d..(h * rows + r1) * d]
}

/// `x ← exp(x − shift)` 16 lanes at a time (`vexp`), returning the sum in order. For unmasked
/// values only: unlike `softmax_weights`, a −∞ comes out as exp(−87), not 0.
fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
    let mut sum = 0.0;
    for chunk in x.chunks_mut(LANES) {
        let mut lanes = [0.0f32; LANES];
        lanes[..chunk.len()].copy_from_slice(chunk);
        let e = exp_lanes(lanes.map(|s| s - shift));
        for (c, e) in chunk.iter_mut().zip(e) {
            *c = e;
            sum += e;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::{self as gc, assert_grad, numeric, to_f64};

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

    /// More rows than one backward block (`BACKWARD_BLOCK`), so blocks meet the causal edge at
    /// different places, with grouped-query heads.
    #[test]
    fn backward_matches_finite_differences_across_blocks() {
        let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 8 };
        let rows = 2 * BACKWARD_BLOCK + 5;
        let (qw, kw) = (32, 16);
        let mut rng = crate::rng::Rng::new(16);
        let q = gc::random(&mut rng, rows * qw, 1.5);
        let k = gc::random(&mut rng, rows * kw, 1.5);
        let v = gc::random(&mut rng, rows * kw, 1.0);
        let g = gc::random(&mut rng, rows * qw, 1.0);
        let (q64, k64, v64, g64) = (to_f64(&q), to_f64(&k), to_f64(&v), to_f64(&g));
        // Gradients start where a caller's accumulation left them: the op adds to them.
        let (mut dq, mut dk, mut dv) = (vec![1.0; rows * qw], vec![-2.0; rows * kw], vec![0.5; rows * kw]);
        attention_backward(&q, &k, &v, shape, rows, &g, &mut dq, &mut dk, &mut dv);
        let loss = |q: &[f64], k: &[f64], v: &[f64]| gc::dot(&gc::attention(q, k, v, shape, rows), &g64);
        let shifted = |xs: &[f32], by: f32| xs.iter().map(|x| x - by).collect::<Vec<_>>();
        assert_grad("dq", &shifted(&dq, 1.0), &numeric(&q64, |x| loss(x, &k64, &v64)));
        assert_grad("dk", &shifted(&dk, -2.0), &numeric(&k64, |x| loss(&q64, x, &v64)));
        assert_grad("dv", &shifted(&dv, 0.5), &numeric(&v64, |x| loss(&q64, &k64, x)));
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

    /// The tiled scores give every output the bits of the plain per-(row, head) computation
    /// with `dot_f32`, so a row's result does not depend on the rows beside it (several task
    /// blocks, GQA, a tree mask over a prefix, a cache with spare capacity, a head dimension of
    /// one 64-column strip and a tail).
    #[test]
    fn tiled_scores_give_the_per_row_bits() {
        let shape = AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 80 };
        let (rows, past) = (19, 7);
        let keys = past + rows;
        let layout = KvLayout { n_kv_heads: 2, capacity: keys + 5, head_dim: 80 };
        let mut rng = crate::rng::Rng::new(15);
        let q = gc::random(&mut rng, rows * 480, 1.5);
        let kc = gc::random(&mut rng, 2 * layout.capacity * 80, 1.5);
        let vc = gc::random(&mut rng, 2 * layout.capacity * 80, 1.0);
        let bits: Vec<u8> = (0..rows * rows).map(|i| u8::from(i % rows <= i / rows && (i * 7) % 3 != 0)).collect();
        for mask in [AttnMask::Causal, AttnMask::Tree { bits: &bits, first_key: past }] {
            let mut out = vec![0.0; rows * 480];
            attention(&q, &kc, &vc, layout, shape, rows, past, mask, &mut out);
            for r in 0..rows {
                for h in 0..6 {
                    let (kv, d) = (h / 3, 80);
                    let qh = &q[r * 480 + h * d..][..d];
                    let mut scores: Vec<f32> = (0..keys)
                        .map(|t| {
                            let visible = match mask {
                                AttnMask::Causal => t <= past + r,
                                AttnMask::Tree { bits, first_key } => {
                                    t < first_key || bits[r * rows + t - first_key] != 0
                                }
                            };
                            let k = &kc[(kv * layout.capacity + t) * d..][..d];
                            if visible {
                                dot_f32(qh, k) * (1.0 / (d as f32).sqrt())
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                        .collect();
                    softmax_weights_portable(&mut scores);
                    let mut want = vec![0.0f32; d];
                    for (t, &w) in scores.iter().enumerate() {
                        if w != 0.0 {
                            for (oi, vi) in want.iter_mut().zip(&vc[(kv * layout.capacity + t) * d..][..d]) {
                                *oi += w * vi;
                            }
                        }
                    }
                    let got = &out[r * 480 + h * d..][..d];
                    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "row {r} head {h}");
                }
            }
        }
    }
}
