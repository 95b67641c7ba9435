//! The optimiser step and gradient clipping (clover2.md §9, eagle.md §5): AdamW with PyTorch's
//! semantics over f32 master parameters, and element-wise clipping by value.

use rayon::prelude::*;

use crate::backend::AdamW;

/// Elements per rayon task: the step is a few flops per element, so tasks must be long.
const ELEMS_PER_TASK: usize = 1 << 14;

/// One AdamW step (`torch.optim.AdamW`, step t = `step` ≥ 1): p ← p·(1 − lr·wd) (decoupled weight
/// decay, applied first), m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g², then
/// p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε), the order of PyTorch's own update.
pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamW, step: u64) {
    let n = param.len();
    assert!(grad.len() == n && m.len() == n && v.len() == n, "adamw: parameter, gradient and moments differ in size");
    let (step_size, bc2_sqrt) = hp.bias_corrections(step);
    let decay = 1.0 - hp.lr * hp.weight_decay;
    let (b1, b2) = (hp.beta1, hp.beta2);
    param.par_iter_mut().zip(grad).zip(m.par_iter_mut().zip(v.par_iter_mut())).with_min_len(ELEMS_PER_TASK).for_each(
        |((p, &g), (mi, vi))| {
            *p *= decay;
            *mi = b1 * *mi + (1.0 - b1) * g;
            *vi = b2 * *vi + (1.0 - b2) * g * g;
            *p -= step_size * *mi / (vi.sqrt() / bc2_sqrt + hp.eps);
        },
    );
}

/// Clamps every element to [−limit, limit] (clipping by value, not by norm).
pub fn clip_by_value(x: &mut [f32], limit: f32) {
    x.par_iter_mut().with_min_len(ELEMS_PER_TASK).for_each(|v| *v = v.clamp(-limit, limit));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps by hand with lr 0.1, wd 0.01, betas (0.9, 0.95), eps 1e-8.
    /// Element 0, g = 0.5 then −0.25:
    ///   t=1: p = 1·0.999 = 0.999; m = 0.05, v = 0.0125; m̂ = 0.5, v̂ = 0.25 → p = 0.999 − 0.1 = 0.899.
    ///   t=2: p = 0.899·0.999 = 0.898101; m = 0.045 − 0.025 = 0.02, v = 0.011875 + 0.003125 = 0.015;
    ///        m̂ = 0.02/0.19, √v̂ = √(0.015/0.0975) → p = 0.898101 − 0.1·0.105263/0.392232 = 0.871264058.
    /// Element 1, g = 0 then 3 (no gradient yet: only the decay acts):
    ///   t=1: p = −2·0.999 = −1.998; m = v = 0.
    ///   t=2: p = −1.996002; m = 0.3, v = 0.45; m̂ = 1.578947, √v̂ = 2.148345 → p = −2.069498.
    #[test]
    fn two_steps_match_pytorch_by_hand() {
        let hp = AdamW { lr: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.01 };
        let mut p = vec![1.0, -2.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adamw(&mut p, &[0.5, 0.0], &mut m, &mut v, &hp, 1);
        assert!((p[0] - 0.899).abs() < 1e-6 && (p[1] + 1.998).abs() < 1e-6, "{p:?}");
        adamw(&mut p, &[-0.25, 3.0], &mut m, &mut v, &hp, 2);
        assert!((m[0] - 0.02).abs() < 1e-7 && (v[0] - 0.015).abs() < 1e-7, "m {m:?} v {v:?}");
        assert!((p[0] - 0.871_264_06).abs() < 1e-6 && (p[1] + 2.069_498).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn clipping_clamps_each_element() {
        let mut g = vec![-3.0, -0.5, 0.2, 0.5, 0.7, f32::INFINITY];
        clip_by_value(&mut g, 0.5);
        assert_eq!(g, vec![-0.5, -0.5, 0.2, 0.5, 0.5, 0.5]);
    }
}
