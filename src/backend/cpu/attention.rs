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
        let mut scores = Vec::with_capacity(keys);
        for t in 0..keys {
            let seen = visible(t);
            let k = &k_cache[(kv * layout.capacity + t) * d..][..d];
            scores.push(if seen { dot_f32(qh, k) * scale } else { f32::NEG_INFINITY });
        }
        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            if p != 0.0 {
                let v = &v_cache[(kv * layout.capacity + t) * d..][..d];
                let w = p / sum;
                for (oi, vi) in o.iter_mut().zip(v) {
                    *oi += w * vi;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
