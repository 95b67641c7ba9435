//! RMSNorm: y = x / sqrt(mean(x²) + eps) · g, per row, in f32.

pub fn rmsnorm(x: &[f32], gain: &[f32], eps: f32, out: &mut [f32]) {
    let dim = gain.len();
    for (xr, yr) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let inv = inv_rms(xr, eps);
        for ((y, &v), &g) in yr.iter_mut().zip(xr).zip(gain) {
            *y = v * inv * g;
        }
    }
}

/// Backward of `rmsnorm`: adds dL/dx to `dx` and dL/dgain, summed over the rows, to `d_gain`.
/// With r = 1/rms(x) and y = x·r·g: dL/dx = r·(dy⊙g) − x·r³·⟨dy⊙g, x⟩/H and dL/dg = Σ_rows dy⊙x·r
/// (r depends on every element of the row, hence the second term). r is recomputed from x: one
/// pass over the row, cheaper than a saved buffer to thread through the caller.
pub fn rmsnorm_backward(x: &[f32], gain: &[f32], eps: f32, dy: &[f32], dx: &mut [f32], d_gain: &mut [f32]) {
    let dim = gain.len();
    assert_eq!(d_gain.len(), dim, "rmsnorm_backward: gain gradient is not [{dim}]");
    for ((xr, dyr), dxr) in x.chunks_exact(dim).zip(dy.chunks_exact(dim)).zip(dx.chunks_exact_mut(dim)) {
        let inv = inv_rms(xr, eps);
        let proj = xr.iter().zip(dyr).zip(gain).map(|((v, d), g)| v * d * g).sum::<f32>();
        let coef = inv * inv * inv * proj / dim as f32;
        for (((o, &v), &d), (&g, dg)) in dxr.iter_mut().zip(xr).zip(dyr).zip(gain.iter().zip(d_gain.iter_mut())) {
            *o += inv * d * g - v * coef;
            *dg += d * v * inv;
        }
    }
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (mean_sq + eps).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_rms_after_norm_with_unit_gain() {
        let x = [3.0, -4.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0];
        let mut y = [0.0; 8];
        rmsnorm(&x, &[1.0; 4], 0.0, &mut y);
        for row in y.chunks(4) {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / 4.0;
            assert!((ms - 1.0).abs() < 1e-6);
        }
        // Row 0: rms = sqrt(26/4).
        assert!((y[0] - 3.0 / (6.5f32).sqrt()).abs() < 1e-6);
    }

    #[test]
    fn backward_matches_finite_differences() {
        use crate::backend::cpu::gradcheck::{self as gc, assert_grad, numeric, to_f64};
        let (rows, dim, eps) = (3, 5, 1e-5);
        let mut rng = crate::rng::Rng::new(11);
        let x = gc::random(&mut rng, rows * dim, 1.0);
        let gain: Vec<f32> = gc::random(&mut rng, dim, 0.5).iter().map(|v| 1.0 + v).collect();
        let g = gc::random(&mut rng, rows * dim, 1.0);
        let (mut dx, mut d_gain) = (vec![0.0; rows * dim], vec![0.0; dim]);
        rmsnorm_backward(&x, &gain, eps, &g, &mut dx, &mut d_gain);
        let (x64, gain64, g64) = (to_f64(&x), to_f64(&gain), to_f64(&g));
        let eps64 = eps as f64;
        assert_grad("dx", &dx, &numeric(&x64, |x| gc::dot(&gc::rmsnorm(x, &gain64, eps64), &g64)));
        assert_grad("d_gain", &d_gain, &numeric(&gain64, |gn| gc::dot(&gc::rmsnorm(&x64, gn, eps64), &g64)));
        // The gradients accumulate: a second call doubles them.
        let (dx1, dg1) = (dx.clone(), d_gain.clone());
        rmsnorm_backward(&x, &gain, eps, &g, &mut dx, &mut d_gain);
        assert!(dx.iter().zip(&dx1).chain(d_gain.iter().zip(&dg1)).all(|(a, b)| (a - 2.0 * b).abs() < 1e-6));
    }
}
