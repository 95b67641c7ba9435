//! SwiGLU: silu(gate) ⊙ up, forward and backward, 16 lanes at a time.
//!
//! The logistic function goes through `vexp::exp_lanes` rather than the library `expf`: a scalar
//! call per element cost a verification of 27 rows ~41k calls per layer, and the lanes vectorise.
//! Every element goes through the same lane function (a ragged tail is padded), so an element's
//! bits do not depend on where it sits in the buffer, nor on how many rows the call has.

use crate::vexp::{exp_lanes, LANES};

/// σ(x) = 1 / (1 + e^(−x)) for 16 lanes. `exp_lanes` clamps its argument to [−87, 88], so below
/// x = −87 σ is set to 0 (its true value is under 1.7e-38 there), which keeps silu(x) = x·σ(x) at
/// 0 for a huge negative x instead of x·1.6e-38.
#[inline(always)]
fn sigmoid_lanes(x: [f32; LANES]) -> [f32; LANES] {
    let e = exp_lanes(x.map(|v| -v));
    let mut sig = [0.0f32; LANES];
    for ((s, &e), &v) in sig.iter_mut().zip(&e).zip(&x) {
        *s = if v < -87.0 { 0.0 } else { 1.0 / (1.0 + e) };
    }
    sig
}

pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F (checked just above).
        return unsafe { swiglu_avx512(gate, up, out) };
    }
    swiglu_portable(gate, up, out)
}

/// The same operations in 16-lane registers (no fused multiply-adds: the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn swiglu_avx512(gate: &[f32], up: &[f32], out: &mut [f32]) {
    swiglu_portable(gate, up, out)
}

#[inline(always)]
fn swiglu_portable(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let whole = gate.len() / LANES * LANES;
    for ((g, u), o) in gate.chunks_exact(LANES).zip(up.chunks_exact(LANES)).zip(out.chunks_exact_mut(LANES)) {
        let (g, u): (&[f32; LANES], &[f32; LANES]) = (g.try_into().unwrap(), u.try_into().unwrap());
        let sig = sigmoid_lanes(*g);
        for l in 0..LANES {
            o[l] = g[l] * sig[l] * u[l];
        }
    }
    // The ragged tail through the same lane function, padded.
    let (g, u, o) = (&gate[whole..], &up[whole..], &mut out[whole..]);
    let mut lanes = [0.0f32; LANES];
    lanes[..g.len()].copy_from_slice(g);
    let sig = sigmoid_lanes(lanes);
    for l in 0..g.len() {
        o[l] = g[l] * sig[l] * u[l];
    }
}

/// Backward of `swiglu`: adds dL/dgate and dL/dup. With σ the logistic function, silu(g) = g·σ(g)
/// and silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
pub fn swiglu_backward(gate: &[f32], up: &[f32], d_out: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == d_out.len());
    assert!(d_out.len() == d_gate.len() && d_gate.len() == d_up.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 F (checked just above).
        return unsafe { swiglu_backward_avx512(gate, up, d_out, d_gate, d_up) };
    }
    swiglu_backward_portable(gate, up, d_out, d_gate, d_up)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn swiglu_backward_avx512(gate: &[f32], up: &[f32], d_out: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    swiglu_backward_portable(gate, up, d_out, d_gate, d_up)
}

#[inline(always)]
fn swiglu_backward_portable(gate: &[f32], up: &[f32], d_out: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    for start in (0..gate.len()).step_by(LANES) {
        let n = LANES.min(gate.len() - start);
        let mut lanes = [0.0f32; LANES];
        lanes[..n].copy_from_slice(&gate[start..start + n]);
        let sig = sigmoid_lanes(lanes);
        let (g, u, d) = (&gate[start..start + n], &up[start..start + n], &d_out[start..start + n]);
        let (dg, du) = (&mut d_gate[start..start + n], &mut d_up[start..start + n]);
        for l in 0..n {
            dg[l] += d[l] * u[l] * sig[l] * (1.0 + g[l] * (1.0 - sig[l]));
            du[l] += d[l] * g[l] * sig[l];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::{self as gc, assert_grad, numeric, to_f64};

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = crate::rng::Rng::new(13);
        let n = 24;
        let (gate, up, g) = (gc::random(&mut rng, n, 4.0), gc::random(&mut rng, n, 2.0), gc::random(&mut rng, n, 1.0));
        let (mut d_gate, mut d_up) = (vec![0.0; n], vec![0.0; n]);
        swiglu_backward(&gate, &up, &g, &mut d_gate, &mut d_up);
        let (gate64, up64, g64) = (to_f64(&gate), to_f64(&up), to_f64(&g));
        assert_grad("d_gate", &d_gate, &numeric(&gate64, |x| gc::dot(&gc::swiglu(x, &up64), &g64)));
        assert_grad("d_up", &d_up, &numeric(&up64, |x| gc::dot(&gc::swiglu(&gate64, x), &g64)));
    }

    #[test]
    fn forward_matches_f64_across_the_range() {
        let gate: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.9).chain([-1e30, 1e30, 0.0]).collect();
        let up: Vec<f32> = (0..gate.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut out = vec![f32::NAN; gate.len()];
        swiglu(&gate, &up, &mut out);
        for ((&g, &u), &o) in gate.iter().zip(&up).zip(&out) {
            let want = g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64;
            let err = (o as f64 - want).abs();
            assert!(err <= 1e-6 * want.abs() + 1e-35, "silu({g})·{u}: {o} against {want}");
        }
    }

    #[test]
    fn an_elements_bits_do_not_depend_on_its_place_in_the_buffer() {
        let mut rng = crate::rng::Rng::new(5);
        let (gate, up) = (gc::random(&mut rng, 53, 6.0), gc::random(&mut rng, 53, 2.0));
        let mut whole = vec![0.0; 53];
        swiglu(&gate, &up, &mut whole);
        for start in [1, 3, 16, 40] {
            let mut part = vec![0.0; 53 - start];
            swiglu(&gate[start..], &up[start..], &mut part);
            assert_eq!(part, whole[start..], "from element {start}");
        }
        // The dispatched path (AVX-512 where there is one) gives the portable loop's bits.
        let mut portable = vec![0.0; 53];
        swiglu_portable(&gate, &up, &mut portable);
        assert_eq!(portable, whole);
        let (mut dg, mut du, mut dg_p, mut du_p) = (vec![0.5; 53], vec![0.5; 53], vec![0.5; 53], vec![0.5; 53]);
        swiglu_backward(&gate, &up, &whole, &mut dg, &mut du);
        swiglu_backward_portable(&gate, &up, &whole, &mut dg_p, &mut du_p);
        assert_eq!((dg, du), (dg_p, du_p));
    }
}
