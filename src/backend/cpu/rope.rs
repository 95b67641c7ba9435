//! Rotary position embedding in the rotate-half layout of HF Llama: the pair of a head's
//! element i is element i + head_dim/2.

/// `cos_sin` holds, per row, head_dim/2 cosines followed by head_dim/2 sines.
pub fn rope(x: &mut [f32], rows: usize, n_heads: usize, head_dim: usize, cos_sin: &[f32]) {
    let half = head_dim / 2;
    for r in 0..rows {
        let (cos, sin) = cos_sin[r * head_dim..(r + 1) * head_dim].split_at(half);
        for h in 0..n_heads {
            let head = &mut x[(r * n_heads + h) * head_dim..(r * n_heads + h + 1) * head_dim];
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x1 * cos[i] + x0 * sin[i];
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
}
