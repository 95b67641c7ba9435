//! f32 activations as bf16 for the kernels that multiply bf16 by bf16: split into two parts,
//! `x ≈ hi + lo` within 2⁻¹⁶ of `x` against bf16's 2⁻⁸, so that a bf16 weight times both parts
//! keeps most of the f32 activation's precision (AMX tiles, `amx.rs`), or rounded once
//! (`vdpbf16ps`, `dpbf16.rs`).

/// Whether the CPU has what `split_row` is compiled for.
#[cfg(test)]
fn supported() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

/// `hi = bf16(x)`, `lo = bf16(x − hi)`, rounding to nearest even (NaN stays NaN). Written on
/// bits so that it vectorises: the split was a fifth of a 26-row matmul when done per element
/// with `half`'s conversion.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn split_row(x: &[f32], hi: &mut [u16], lo: &mut [u16]) {
    for ((&v, h), l) in x.iter().zip(hi.iter_mut()).zip(lo.iter_mut()) {
        *h = round(v);
        *l = round(v - f32::from_bits((*h as u32) << 16));
    }
}

/// `hi` alone: the activations rounded to bf16 (for the kernel that multiplies them as they are).
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn round_row(x: &[f32], hi: &mut [u16]) {
    for (&v, h) in x.iter().zip(hi.iter_mut()) {
        *h = round(v);
    }
}

/// f32 → bf16 bits, to nearest even; any NaN becomes the quiet NaN 0x7fc0.
#[inline(always)]
fn round(v: f32) -> u16 {
    let b = v.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        0x7fc0
    } else {
        rounded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// The bit-level split rounds like `half` (to nearest even), keeps NaN a NaN, and `hi + lo`
    /// is within 2⁻¹⁶ of `x`.
    #[test]
    fn split_rounds_like_half() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512 F/BW (the split runs only where it does)");
            return;
        }
        let mut x: Vec<f32> =
            vec![0.0, -0.0, 1.0, -1.5, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, -f32::INFINITY];
        // Exact ties between two bf16 values (round to the even one), and their neighbours.
        for bits in [0x3f80_8000u32, 0x3f81_8000, 0x3f80_7fff, 0x3f81_8001, 0xbf80_8000] {
            x.push(f32::from_bits(bits));
        }
        let mut state = 12345u32;
        for _ in 0..2000 {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            x.push(f32::from_bits(state) % 1e6);
        }
        let (mut hi, mut lo) = (vec![0u16; x.len()], vec![0u16; x.len()]);
        // SAFETY: checked above.
        unsafe { split_row(&x, &mut hi, &mut lo) };
        let mut rounded = vec![0u16; x.len()];
        // SAFETY: as above.
        unsafe { round_row(&x, &mut rounded) };
        assert_eq!(rounded, hi, "round_row is split_row's hi");
        for (i, &v) in x.iter().enumerate() {
            if v.is_nan() {
                assert!(bf16::from_bits(hi[i]).is_nan() && bf16::from_bits(lo[i]).is_nan(), "NaN split as numbers");
                continue;
            }
            let h = bf16::from_f32(v);
            assert_eq!(hi[i], h.to_bits(), "hi of {v:e}");
            // (Within 2⁻⁸ of f32::MAX, hi rounds to infinity: such activations are not split.)
            if h.to_f32().is_finite() {
                assert_eq!(lo[i], bf16::from_f32(v - h.to_f32()).to_bits(), "lo of {v:e}");
                let back = h.to_f32() as f64 + bf16::from_bits(lo[i]).to_f32() as f64;
                assert!(
                    (back - v as f64).abs() <= (v as f64).abs() * 2f64.powi(-16) + 2f64.powi(-133),
                    "{v:e} split as {back:e}"
                );
            }
        }
        let nan = [f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xff80_0001)];
        let (mut hi, mut lo) = (vec![0u16; 3], vec![0u16; 3]);
        // SAFETY: as above.
        unsafe { split_row(&nan, &mut hi, &mut lo) };
        assert!(hi.iter().chain(&lo).all(|&b| bf16::from_bits(b).is_nan()), "NaN split as {hi:x?} {lo:x?}");
    }
}
