//! SwiGLU: silu(gate) ⊙ up.

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// Backward of `swiglu`: adds dL/dgate and dL/dup. With σ the logistic function, silu(g) = g·σ(g)
/// and silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
pub fn swiglu_backward(gate: &[f32], up: &[f32], d_out: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
    for ((((&g, &u), &d), dg), du) in gate.iter().zip(up).zip(d_out).zip(d_gate.iter_mut()).zip(d_up.iter_mut()) {
        let sig = 1.0 / (1.0 + (-g).exp());
        *dg += d * u * sig * (1.0 + g * (1.0 - sig));
        *du += d * g * sig;
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
}
