//! The Clover attention-decoder cell (clover2.md §3), forward and backward:
//! `AD(x, y) = x + concat_h(cos(q_h, k_h) · v_h)`, `q = Wq·RMSNorm_g(x) + bq`, `k = Wk·y + bk`,
//! `v = Wv·y + bv`, `cos(q, k) = <q, k> / (max(|q|, eps) · max(|k|, eps))`.
//!
//! The backward recomputes q, k, v and the norm instead of taking them from the forward: the
//! reference trains with gradient checkpointing anyway, the recompute costs three H×H GEMMs (the
//! forward's) on top of the backward's four to six, no activation memory is held between the
//! passes, and the trait stays free of a saved-state type every backend would have to agree on.

use super::linear::{self, matmul_backward};
use super::matmul::{matmul, matmul_group};
use super::weight::CpuWeight;
use crate::backend::CloverCellParams;

/// What both directions compute from the inputs.
struct Projections {
    hidden: usize,
    head_dim: usize,
    /// RMSNorm_g(x), `[rows, H]`.
    normed: Vec<f32>,
    /// 1 / rms(x) per row.
    inv_rms: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn project(input: &[f32], rows: usize, w: &CpuWeight, b: &CpuWeight) -> Vec<f32> {
    let (n, _) = w.matrix_shape();
    let mut out = vec![0.0; rows * n];
    matmul(input, rows, w, &mut out);
    add_bias(&mut out, b);
    out
}

/// `project` of one input by two weights (k and v of the token), in one matmul group.
fn project_pair(input: &[f32], rows: usize, [(w1, b1), (w2, b2)]: [(&CpuWeight, &CpuWeight); 2]) -> [Vec<f32>; 2] {
    let mut a = vec![0.0; rows * w1.matrix_shape().0];
    let mut b = vec![0.0; rows * w2.matrix_shape().0];
    matmul_group(input, rows, &mut [(w1, a.as_mut_slice()), (w2, b.as_mut_slice())]);
    add_bias(&mut a, b1);
    add_bias(&mut b, b2);
    [a, b]
}

fn add_bias(out: &mut [f32], b: &CpuWeight) {
    let bias = b.to_f32();
    linear::add_bias(out, out.len() / bias.len(), &bias);
}

fn projections(
    cell: &CloverCellParams<CpuWeight>,
    n_heads: usize,
    eps: f32,
    x: &[f32],
    y: &[f32],
    rows: usize,
) -> Projections {
    let gain = cell.gain.to_f32();
    let h = gain.len();
    assert!(n_heads > 0 && h.is_multiple_of(n_heads), "clover_cell: {n_heads} heads do not divide {h}");
    assert_eq!(cell.wq.matrix_shape(), (h, h), "clover_cell: Wq is not [{h}, {h}]");
    assert!(x.len() >= rows * h && y.len() >= rows * h, "clover_cell: x or y has fewer than {rows} rows");
    let (x, y) = (&x[..rows * h], &y[..rows * h]);
    let mut normed = vec![0.0; rows * h];
    let mut inv_rms = Vec::with_capacity(rows);
    for (xr, nr) in x.chunks_exact(h).zip(normed.chunks_exact_mut(h)) {
        let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f32>() / h as f32 + eps).sqrt();
        for ((n, &v), &g) in nr.iter_mut().zip(xr).zip(&gain) {
            *n = v * r * g;
        }
        inv_rms.push(r);
    }
    let q = project(&normed, rows, &cell.wq, &cell.bq);
    let [k, v] = project_pair(y, rows, [(&cell.wk, &cell.bk), (&cell.wv, &cell.bv)]);
    Projections { hidden: h, head_dim: h / n_heads, normed, inv_rms, q, k, v }
}

/// `(cos, |q|, |k|)` of one head.
fn cosine(q: &[f32], k: &[f32], eps: f32) -> (f32, f32, f32) {
    let dot: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
    let qn = q.iter().map(|v| v * v).sum::<f32>().sqrt();
    let kn = k.iter().map(|v| v * v).sum::<f32>().sqrt();
    (dot / (qn.max(eps) * kn.max(eps)), qn, kn)
}

pub fn clover_cell(
    cell: &CloverCellParams<CpuWeight>,
    n_heads: usize,
    eps: f32,
    x: &[f32],
    y: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    let p = projections(cell, n_heads, eps, x, y, rows);
    let (h, d) = (p.hidden, p.head_dim);
    out[..rows * h].copy_from_slice(&x[..rows * h]);
    for (head, o) in out[..rows * h].chunks_exact_mut(d).enumerate() {
        let s = head * d..(head + 1) * d;
        let (a, _, _) = cosine(&p.q[s.clone()], &p.k[s.clone()], eps);
        for (ov, vv) in o.iter_mut().zip(&p.v[s]) {
            *ov += a * vv;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn clover_cell_backward(
    cell: &CloverCellParams<CpuWeight>,
    n_heads: usize,
    eps: f32,
    x: &[f32],
    y: &[f32],
    rows: usize,
    d_out: &[f32],
    dx: &mut [f32],
    dy: Option<&mut [f32]>,
    grads: &mut CloverCellParams<Vec<f32>>,
) {
    let p = projections(cell, n_heads, eps, x, y, rows);
    let (h, d) = (p.hidden, p.head_dim);
    let n = rows * h;

    // Per head: a = <q,k>/(Q K) with Q = max(|q|, eps); where |q| > eps, ∂a/∂q = k/(QK) − a q/Q²
    // (and symmetrically for k); where the clamp is active Q is constant and the second term vanishes.
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for head in 0..rows * n_heads {
        let s = head * d..(head + 1) * d;
        let (q, k, v, g) = (&p.q[s.clone()], &p.k[s.clone()], &p.v[s.clone()], &d_out[s.clone()]);
        let (a, qn, kn) = cosine(q, k, eps);
        let (qc, kc) = (qn.max(eps), kn.max(eps));
        let da: f32 = g.iter().zip(v).map(|(a, b)| a * b).sum();
        let q_self = if qn > eps { a / (qc * qc) } else { 0.0 };
        let k_self = if kn > eps { a / (kc * kc) } else { 0.0 };
        let cross = 1.0 / (qc * kc);
        for i in 0..d {
            dq[s.start + i] = da * (k[i] * cross - q[i] * q_self);
            dk[s.start + i] = da * (q[i] * cross - k[i] * k_self);
            dv[s.start + i] = a * g[i];
        }
    }

    for (acc, g) in dx[..n].iter_mut().zip(&d_out[..n]) {
        *acc += g;
    }
    add_bias_grad(&mut grads.bq, &dq, h);
    add_bias_grad(&mut grads.bk, &dk, h);
    add_bias_grad(&mut grads.bv, &dv, h);
    // The three projections' backward: the linear layer's register-blocked kernels.
    let mut dy = dy;
    matmul_backward(&y[..n], &dk, rows, &cell.wk, dy.as_deref_mut(), Some(&mut grads.wk));
    matmul_backward(&y[..n], &dv, rows, &cell.wv, dy, Some(&mut grads.wv));
    let mut d_normed = vec![0.0; n];
    matmul_backward(&p.normed, &dq, rows, &cell.wq, Some(&mut d_normed), Some(&mut grads.wq));

    // RMSNorm: n = x·r·g with r = (mean(x²) + eps)^-½, so ∂L/∂x = r·g⊙dn − r³/H · x · Σ g⊙dn⊙x.
    let gain = cell.gain.to_f32();
    for (r, ((xr, dnr), dxr)) in
        x[..n].chunks_exact(h).zip(d_normed.chunks_exact(h)).zip(dx.chunks_exact_mut(h)).enumerate()
    {
        let inv = p.inv_rms[r];
        let dot: f32 = xr.iter().zip(dnr).zip(&gain).map(|((x, dn), g)| x * dn * g).sum();
        let coef = inv * inv * inv * dot / h as f32;
        for i in 0..h {
            dxr[i] += inv * gain[i] * dnr[i] - coef * xr[i];
            grads.gain[i] += dnr[i] * xr[i] * inv;
        }
    }
}

/// db += Σ_rows dz.
fn add_bias_grad(db: &mut [f32], dz: &[f32], h: usize) {
    for row in dz.chunks_exact(h) {
        for (b, g) in db.iter_mut().zip(row) {
            *b += g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::weights::HostTensor;

    const EPS: f32 = 1e-5;

    /// The cell's parameters as plain f64 arrays, in `CloverCellParams` field order.
    type Params = [Vec<f64>; 7];
    const NAMES: [&str; 7] = ["gain", "wq", "bq", "wk", "bk", "wv", "bv"];

    fn random(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        // Rounded through f32 so the engine and the reference see the same numbers.
        (0..n).map(|_| (lo + (hi - lo) * rng.uniform()) as f32 as f64).collect()
    }

    fn random_params(rng: &mut Rng, h: usize) -> Params {
        [
            random(rng, h, 0.5, 1.5),
            random(rng, h * h, -0.6, 0.6),
            random(rng, h, -0.3, 0.3),
            random(rng, h * h, -0.6, 0.6),
            random(rng, h, -0.3, 0.3),
            random(rng, h * h, -0.6, 0.6),
            random(rng, h, -0.3, 0.3),
        ]
    }

    fn to_cell(p: &Params, h: usize) -> CloverCellParams<CpuWeight> {
        let w = |i: usize| {
            let shape = if p[i].len() == h { vec![h] } else { vec![h, h] };
            let values: Vec<f32> = p[i].iter().map(|&v| v as f32).collect();
            CpuWeight::new(HostTensor::from_f32(NAMES[i], shape, &values)).unwrap()
        };
        CloverCellParams { gain: w(0), wq: w(1), bq: w(2), wk: w(3), bk: w(4), wv: w(5), bv: w(6) }
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// Scalar f64 reference: (out, per-row per-head cosines, v).
    fn reference(
        p: &Params,
        x: &[f64],
        y: &[f64],
        rows: usize,
        h: usize,
        heads: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let eps = EPS as f64;
        let d = h / heads;
        let linear = |w: &[f64], b: &[f64], inp: &[f64]| -> Vec<f64> {
            (0..h).map(|o| b[o] + (0..h).map(|i| w[o * h + i] * inp[i]).sum::<f64>()).collect()
        };
        let (mut out, mut cos, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rows {
            let xr = &x[r * h..(r + 1) * h];
            let yr = &y[r * h..(r + 1) * h];
            let ms = xr.iter().map(|v| v * v).sum::<f64>() / h as f64;
            let normed: Vec<f64> = (0..h).map(|i| xr[i] / (ms + eps).sqrt() * p[0][i]).collect();
            let q = linear(&p[1], &p[2], &normed);
            let k = linear(&p[3], &p[4], yr);
            let v = linear(&p[5], &p[6], yr);
            for head in 0..heads {
                let s = head * d..(head + 1) * d;
                let dot: f64 = s.clone().map(|i| q[i] * k[i]).sum();
                let qn = s.clone().map(|i| q[i] * q[i]).sum::<f64>().sqrt().max(eps);
                let kn = s.clone().map(|i| k[i] * k[i]).sum::<f64>().sqrt().max(eps);
                let a = dot / (qn * kn);
                cos.push(a);
                out.extend(s.map(|i| xr[i] + a * v[i]));
            }
            vs.extend(v);
        }
        (out, cos, vs)
    }

    fn run_forward(p: &Params, x: &[f64], y: &[f64], rows: usize, h: usize, heads: usize) -> Vec<f32> {
        let mut out = vec![0.0; rows * h];
        clover_cell(&to_cell(p, h), heads, EPS, &f32s(x), &f32s(y), rows, &mut out);
        out
    }

    #[test]
    fn forward_matches_scalar_reference() {
        let (rows, h, heads) = (5, 48, 3);
        let mut rng = Rng::new(3);
        let p = random_params(&mut rng, h);
        let x = random(&mut rng, rows * h, -2.0, 2.0);
        let y = random(&mut rng, rows * h, -1.0, 1.0);
        let got = run_forward(&p, &x, &y, rows, h, heads);
        let (want, _, _) = reference(&p, &x, &y, rows, h, heads);
        for (a, b) in got.iter().zip(&want) {
            assert!((*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// clover2.md §17 test 1: per head, AD(x,y) − x = cos(q_h, k_h)·v_h with |cos| ≤ 1; a zero
    /// token with zero biases gives k = v = 0, so the state passes through unchanged.
    #[test]
    fn residual_is_cosine_times_value_and_zero_token_passes_state() {
        let (rows, h, heads) = (3, 16, 4);
        let d = h / heads;
        let mut rng = Rng::new(5);
        let p = random_params(&mut rng, h);
        let x = random(&mut rng, rows * h, -1.0, 1.0);
        let y = random(&mut rng, rows * h, -1.0, 1.0);
        let out = run_forward(&p, &x, &y, rows, h, heads);
        let (_, cos, v) = reference(&p, &x, &y, rows, h, heads);
        for r in 0..rows {
            for head in 0..heads {
                let a = cos[r * heads + head];
                assert!(a.abs() <= 1.0 + 1e-12);
                for i in head * d..(head + 1) * d {
                    let diff = out[r * h + i] as f64 - x[r * h + i];
                    assert!(
                        (diff - a * v[r * h + i]).abs() < 1e-5,
                        "row {r} head {head}: {diff} vs {}",
                        a * v[r * h + i]
                    );
                }
            }
        }

        let mut zero_bias = p.clone();
        for b in [2, 4, 6] {
            zero_bias[b] = vec![0.0; h];
        }
        let out = run_forward(&zero_bias, &x, &vec![0.0; rows * h], rows, h, heads);
        assert_eq!(out, f32s(&x));
    }

    /// Central differences of L = Σ w ⊙ AD(x, y) in f64 against the f32 analytic backward, for
    /// every element of x, y and of each parameter.
    #[test]
    fn backward_matches_finite_differences() {
        let (rows, h, heads) = (3, 8, 2);
        let mut rng = Rng::new(11);
        let p = random_params(&mut rng, h);
        let x = random(&mut rng, rows * h, -1.5, 1.5);
        let y = random(&mut rng, rows * h, -1.0, 1.0);
        let w = random(&mut rng, rows * h, -1.0, 1.0);
        let loss = |p: &Params, x: &[f64], y: &[f64]| -> f64 {
            reference(p, x, y, rows, h, heads).0.iter().zip(&w).map(|(o, w)| o * w).sum()
        };

        let cell = to_cell(&p, h);
        // Start from non-zero gradients to check that the backward adds to them.
        let seed = 0.25f32;
        let mut dx = vec![seed; rows * h];
        let mut dy = vec![seed; rows * h];
        let mut grads = CloverCellParams {
            gain: vec![seed; h],
            wq: vec![seed; h * h],
            bq: vec![seed; h],
            wk: vec![seed; h * h],
            bk: vec![seed; h],
            wv: vec![seed; h * h],
            bv: vec![seed; h],
        };
        let (xf, yf, wf) = (f32s(&x), f32s(&y), f32s(&w));
        clover_cell_backward(&cell, heads, EPS, &xf, &yf, rows, &wf, &mut dx, Some(&mut dy), &mut grads);
        let analytic: [&[f32]; 7] = [&grads.gain, &grads.wq, &grads.bq, &grads.wk, &grads.bk, &grads.wv, &grads.bv];

        let step = 1e-6;
        let check = |name: &str, i: usize, got: f32, plus: f64, minus: f64| {
            let numeric = (plus - minus) / (2.0 * step);
            let got = got as f64 - seed as f64;
            let err = (got - numeric).abs() / numeric.abs().max(1e-2);
            assert!(err < 1e-4, "d{name}[{i}]: analytic {got} vs numeric {numeric} (rel err {err:e})");
        };
        for (t, g) in analytic.iter().enumerate() {
            for i in 0..p[t].len() {
                let (mut hi, mut lo) = (p.clone(), p.clone());
                hi[t][i] += step;
                lo[t][i] -= step;
                check(NAMES[t], i, g[i], loss(&hi, &x, &y), loss(&lo, &x, &y));
            }
        }
        for i in 0..rows * h {
            let (mut hi, mut lo) = (x.clone(), x.clone());
            hi[i] += step;
            lo[i] -= step;
            check("x", i, dx[i], loss(&p, &hi, &y), loss(&p, &lo, &y));
            let (mut hi, mut lo) = (y.clone(), y.clone());
            hi[i] += step;
            lo[i] -= step;
            check("y", i, dy[i], loss(&p, &x, &hi), loss(&p, &x, &lo));
        }
    }
}
