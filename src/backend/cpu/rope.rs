//! Rotary position embedding in the rotate-half layout of HF Llama: the pair of a head's
//! element i is element i + head_dim/2.

/// `cos_sin` holds, per row, head_dim/2 cosines followed by head_dim/2 sines.
pub fn rope(x: &mut [f32], rows: usize, n_heads: usize, head_dim: usize, cos_sin: &[f32]) {
    rotate(x, rows, n_heads, head_dim, cos_sin, 1.0);
}

/// Backward of `rope`, in place: turns dL/d(rotated) into dL/dx. Each pair is rotated by an
/// orthogonal 2×2 matrix, whose transpose (the gradient's map) is the rotation by −θ.
pub fn rope_backward(dx: &mut [f32], rows: usize, n_heads: usize, head_dim: usize, cos_sin: &[f32]) {
    rotate(dx, rows, n_heads, head_dim, cos_sin, -1.0);
}

/// Rotates every pair by θ (`direction` 1) or −θ (`direction` −1); negating sin is exact, so the
/// forward's results do not depend on sharing this loop.
fn rotate(x: &mut [f32], rows: usize, n_heads: usize, head_dim: usize, cos_sin: &[f32], direction: f32) {
    let half = head_dim / 2;
    for r in 0..rows {
        let (cos, sin) = cos_sin[r * head_dim..(r + 1) * head_dim].split_at(half);
        for h in 0..n_heads {
            let head = &mut x[(r * n_heads + h) * head_dim..(r * n_heads + h + 1) * head_dim];
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x0, x1, s) = (a[i], b[i], direction * sin[i]);
                a[i] = x0 * cos[i] - x1 * s;
                b[i] = x1 * cos[i] + x0 * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_norm_and_rotates_pairs() {
        let theta = 0.3f32;
        let mut x = vec![1.0, 2.0, 0.5, -1.0];
        let cos_sin = [theta.cos(), (2.0 * theta).cos(), theta.sin(), (2.0 * theta).sin()];
        rope(&mut x, 1, 1, 4, &cos_sin);
        assert!((x[0] - (theta.cos() - 0.5 * theta.sin())).abs() < 1e-6);
        assert!((x[2] - (0.5 * theta.cos() + theta.sin())).abs() < 1e-6);
        let norm: f32 = x.iter().map(|v| v * v).sum();
        assert!((norm - (1.0 + 4.0 + 0.25 + 1.0)).abs() < 1e-5);
    }

    #[test]
    fn backward_matches_finite_differences() {
        use crate::backend::cpu::gradcheck::{self as gc, assert_grad, numeric, to_f64};
        let (rows, heads, dim) = (3, 2, 6);
        // Positions 0, 4, 9 with frequencies 10^(−2i/dim): angles from 0 to 9 radians.
        let mut cos_sin = Vec::new();
        for pos in [0.0f32, 4.0, 9.0] {
            let angles: Vec<f32> = (0..dim / 2).map(|i| pos * 10f32.powf(-2.0 * i as f32 / dim as f32)).collect();
            cos_sin.extend(angles.iter().map(|a| a.cos()));
            cos_sin.extend(angles.iter().map(|a| a.sin()));
        }
        let mut rng = crate::rng::Rng::new(12);
        let x = gc::random(&mut rng, rows * heads * dim, 1.0);
        let g = gc::random(&mut rng, rows * heads * dim, 1.0);
        let mut dx = g.clone();
        rope_backward(&mut dx, rows, heads, dim, &cos_sin);
        let (cs64, g64) = (to_f64(&cos_sin), to_f64(&g));
        assert_grad("dx", &dx, &numeric(&to_f64(&x), |x| gc::dot(&gc::rope(x, dim, &cs64), &g64)));
    }
}
