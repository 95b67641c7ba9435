//! Test support for the backward ops: random inputs, f64 reference forwards, central finite
//! differences and the one comparison every gradient check uses.
//!
//! Every check differentiates the scalar L = Σ out · g for a random upstream gradient g, so each
//! analytic backward sees a generic dL/dout rather than all ones.

use crate::backend::AttnShape;
use crate::rng::Rng;

/// `len` values uniform in [-scale, scale).
pub fn random(rng: &mut Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| (2.0 * rng.uniform_f32() - 1.0) * scale).collect()
}

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// dL/dx by central differences of the f64 function `loss` around `x`. With O(1) inputs, h = 1e-5
/// leaves a truncation error ~h² and a rounding error ~1e-16/h, both far below the tolerance.
pub fn numeric(x: &[f64], mut loss: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    const H: f64 = 1e-5;
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + H;
            let plus = loss(&x);
            x[i] = x0 - H;
            let minus = loss(&x);
            x[i] = x0;
            (plus - minus) / (2.0 * H)
        })
        .collect()
}

/// Asserts that an analytic f32 gradient matches the f64 numeric one: relative error below 1e-3
/// per element, measured against max(|analytic|, |numeric|, 1e-2 · the tensor's largest |numeric|).
/// The floor exists because the f32 analytic gradient carries absolute rounding errors of about
/// 1e-7 times the size of the terms it sums; an element whose true value cancels to near zero has
/// no relative precision left, so it is judged at 1e-2 of the tensor's scale (an allowed absolute
/// error of 1e-5 times that scale, still 100× the f32 noise and far below any real mistake).
pub fn assert_grad(name: &str, analytic: &[f32], numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len(), "{name}: gradient lengths differ");
    let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{name}: the numeric gradient is all zeros, the check would prove nothing");
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let a = a as f64;
        let denom = a.abs().max(n.abs()).max(1e-2 * scale);
        let rel = (a - n).abs() / denom;
        assert!(rel < 1e-3, "{name}[{i}]: analytic {a} vs numeric {n} (relative error {rel:e})");
    }
}

/// RMSNorm per row of width `gain.len()`.
pub fn rmsnorm(x: &[f64], gain: &[f64], eps: f64) -> Vec<f64> {
    let h = gain.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(h) {
        let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / h as f64 + eps).sqrt();
        out.extend(row.iter().zip(gain).map(|(v, g)| v * inv * g));
    }
    out
}

/// y[m, n] = x[m, k] · wᵀ with w `[n, k]`.
pub fn linear(x: &[f64], w: &[f64], n: usize) -> Vec<f64> {
    let k = w.len() / n;
    x.chunks_exact(k).flat_map(|row| w.chunks_exact(k).map(move |wr| dot(row, wr))).collect()
}

/// Rotate-half RoPE on `[rows, heads, head_dim]` with the per-row table of the CPU op.
pub fn rope(x: &[f64], head_dim: usize, cos_sin: &[f64]) -> Vec<f64> {
    let half = head_dim / 2;
    let rows = cos_sin.len() / head_dim;
    let heads = x.len() / (rows * head_dim);
    let mut out = x.to_vec();
    for r in 0..rows {
        let (cos, sin) = cos_sin[r * head_dim..(r + 1) * head_dim].split_at(half);
        for h in 0..heads {
            let base = (r * heads + h) * head_dim;
            for i in 0..half {
                let (a, b) = (x[base + i], x[base + half + i]);
                out[base + i] = a * cos[i] - b * sin[i];
                out[base + half + i] = b * cos[i] + a * sin[i];
            }
        }
    }
    out
}

/// Causal grouped-query self-attention over `rows` rows, q `[rows, n_heads·d]`, k, v
/// `[rows, n_kv_heads·d]`.
pub fn attention(q: &[f64], k: &[f64], v: &[f64], shape: AttnShape, rows: usize) -> Vec<f64> {
    let d = shape.head_dim;
    let group = shape.n_heads / shape.n_kv_heads;
    let (qw, kw) = (shape.n_heads * d, shape.n_kv_heads * d);
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; rows * qw];
    for i in 0..rows {
        for h in 0..shape.n_heads {
            let kv = h / group;
            let qh = &q[i * qw + h * d..][..d];
            let scores: Vec<f64> = (0..=i).map(|j| dot(qh, &k[j * kw + kv * d..][..d]) * scale).collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for (j, e) in exps.iter().enumerate() {
                for c in 0..d {
                    out[i * qw + h * d + c] += e / sum * v[j * kw + kv * d + c];
                }
            }
        }
    }
    out
}

pub fn swiglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}
