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
}
