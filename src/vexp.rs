//! exp over 16 lanes at a time, written so the compiler vectorises it: the soft cross-entropy
//! takes two exponentials per vocabulary entry (V = 49152) per row, and the scalar library `expf`
//! made the loss cost a third as much as the lm_head GEMMs around it. The CPU backend's losses,
//! attention and SwiGLU use it, and so does host-side sampling (`sampling.rs`), which the CPU
//! backend calls in turn: it lives at the crate root so neither depends on the other for it.
//!
//! Cody–Waite range reduction x = n·ln2 + r (|r| ≤ ln2/2, ln2 split in two so n·ln2 is exact) and
//! the degree-6 polynomial of the Cephes `expf`; 2ⁿ is built in the exponent bits. Relative error
//! below 2.5e-7 for x in [−87, 88]; below −87 the result is clamped to exp(−87) ≈ 1.6e-38 (no
//! subnormals), above 88 to exp(88); NaN stays NaN.

pub const LANES: usize = 16;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding 1.5·2²³ rounds a float of magnitude below 2²² to an integer (to nearest even), which
/// then sits in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;

#[inline(always)]
pub fn exp_lanes(x: [f32; LANES]) -> [f32; LANES] {
    let mut out = [0.0f32; LANES];
    for (o, &v) in out.iter_mut().zip(&x) {
        // `clamp` keeps NaN, which then comes out NaN.
        let v = v.clamp(-87.0, 88.0);
        let shifted = v * LOG2E + ROUND;
        let n = shifted - ROUND;
        let r = v - n * LN2_HI - n * LN2_LO;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
            + 1.666_666_5e-1)
            * r
            + 0.5;
        let e = p * r * r + r + 1.0;
        // The integer n is in the low bits of `shifted`; 2ⁿ is n + 127 in the exponent field.
        let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
        let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
        *o = e * scale;
    }
    out
}

/// The lanes (16 here, 8 in the scalar matmul kernel) summed in a fixed order (pairwise halves, N a
/// power of two), so a sum does not depend on anything but its inputs.
#[inline(always)]
pub fn sum_lanes<const N: usize>(mut v: [f32; N]) -> f32 {
    let mut width = N / 2;
    while width > 0 {
        for i in 0..width {
            v[i] += v[i + width];
        }
        width /= 2;
    }
    v[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_f64_exp_to_a_few_ulp_across_the_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let mut lanes = [0.0; LANES];
            for (l, v) in lanes.iter_mut().enumerate() {
                *v = x + l as f32 * 1e-3;
            }
            for (got, &v) in exp_lanes(lanes).iter().zip(&lanes) {
                let want = (v as f64).exp();
                worst = worst.max((*got as f64 - want).abs() / want);
            }
            x += 0.0371;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
    }

    #[test]
    fn clamps_the_tails_and_keeps_nan() {
        let mut lanes = [0.0; LANES];
        lanes[0] = -1e30;
        lanes[1] = f32::NEG_INFINITY;
        lanes[2] = f32::NAN;
        lanes[3] = 1e30;
        let e = exp_lanes(lanes);
        assert!(e[0] > 0.0 && e[0] < 2e-38 && e[1] == e[0], "{e:?}");
        assert!(e[2].is_nan());
        assert!(e[3].is_finite() && e[3] > 1e38);
        assert_eq!(e[4], 1.0);
    }

    #[test]
    fn lane_sum_is_pairwise() {
        let v: [f32; LANES] = std::array::from_fn(|i| i as f32);
        assert_eq!(sum_lanes(v), 120.0);
    }
}
