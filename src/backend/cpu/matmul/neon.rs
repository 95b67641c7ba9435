//! aarch64 flavour of the kernel: NEON, which every aarch64 CPU has, so nothing is detected.
//! A vector is two 4-lane registers (8 lanes), giving even a one-row tile 8 independent FMA
//! chains per block of 4 columns.

use std::arch::aarch64::*;
use std::arch::asm;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::kernel::{self, Job, Load, Simd, Weights};
use crate::weights::quant::{Block, BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

#[derive(Clone, Copy)]
pub(super) struct Neon;

const LANES: usize = 8;

impl Simd for Neon {
    const LANES: usize = LANES;
    type V = [float32x4_t; 2];

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [vdupq_n_f32(0.0); 2]
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        [vld1q_f32(p), vld1q_f32(p.add(4))]
    }

    #[inline(always)]
    unsafe fn load_tail(p: *const f32, len: usize) -> Self::V {
        let mut buf = [0.0f32; LANES];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), len);
        Self::load(buf.as_ptr())
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        // PRFM never faults, whatever the address.
        asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
    }

    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, acc: Self::V) -> Self::V {
        [vfmaq_f32(acc[0], a[0], b[0]), vfmaq_f32(acc[1], a[1], b[1])]
    }

    /// Lane `l` with `l + 4`, then with `l + 2`, then with `l + 1`.
    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        let s = vaddq_f32(v[0], v[1]);
        let s = vadd_f32(vget_low_f32(s), vget_high_f32(s));
        vget_lane_f32::<0>(s) + vget_lane_f32::<1>(s)
    }
}

impl Load<f32> for Neon {
    #[inline(always)]
    unsafe fn load_w(w: *const f32, i: usize) -> Self::V {
        let p = w.add(i);
        Self::load(p)
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const f32, i: usize, len: usize) -> Self::V {
        let p = w.add(i);
        Self::load_tail(p, len)
    }
}

/// bf16 is the top half of an f32: interleaving zeros below each value makes the f32.
#[inline(always)]
unsafe fn bf16x8(u: uint16x8_t) -> [float32x4_t; 2] {
    let zero = vdupq_n_u16(0);
    [vreinterpretq_f32_u16(vzip1q_u16(zero, u)), vreinterpretq_f32_u16(vzip2q_u16(zero, u))]
}

impl Load<bf16> for Neon {
    #[inline(always)]
    unsafe fn load_w(w: *const bf16, i: usize) -> Self::V {
        let p = w.add(i);
        bf16x8(vld1q_u16(p.cast()))
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const bf16, i: usize, len: usize) -> Self::V {
        let p = w.add(i);
        let mut buf = [0u16; LANES];
        std::ptr::copy_nonoverlapping(p.cast(), buf.as_mut_ptr(), len);
        bf16x8(vld1q_u16(buf.as_ptr()))
    }
}

/// f16 goes through `half`'s slice conversion: the NEON f16 vector types are not stable Rust.
impl Load<f16> for Neon {
    #[inline(always)]
    unsafe fn load_w(w: *const f16, i: usize) -> Self::V {
        let p = w.add(i);
        let mut wide = [0.0f32; LANES];
        std::slice::from_raw_parts(p, LANES).convert_to_f32_slice(&mut wide);
        Self::load(wide.as_ptr())
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const f16, i: usize, len: usize) -> Self::V {
        let p = w.add(i);
        let mut wide = [0.0f32; LANES];
        std::slice::from_raw_parts(p, len).convert_to_f32_slice(&mut wide[..len]);
        Self::load(wide.as_ptr())
    }
}

/// Quantized blocks, value by value through `quant.rs` (exact in f32), then loaded.
macro_rules! load_block {
    ($ty:ty) => {
        impl Load<$ty> for Neon {
            #[inline(always)]
            unsafe fn load_w(w: *const $ty, i: usize) -> Self::V {
                let wide = (*w.add(i / QK)).values::<LANES>(i % QK);
                Self::load(wide.as_ptr())
            }

            #[inline(always)]
            unsafe fn load_w_tail(w: *const $ty, i: usize, len: usize) -> Self::V {
                let mut wide = (*w.add(i / QK)).values::<LANES>(i % QK);
                wide[len..].fill(0.0);
                Self::load(wide.as_ptr())
            }
        }
    };
}

load_block!(BlockQ8_0);
load_block!(BlockQ4_0);
load_block!(BlockQ4_1);

/// 2 rows × 4 columns: 16 accumulator registers, 8 for weights and 2 for inputs of the 32.
///
/// # Safety
/// As `kernel::columns`, less the instruction-set requirement.
pub(super) unsafe fn columns(job: &Job, c0: usize, c1: usize) {
    kernel::columns::<Neon, 2, 4>(job, c0, c1)
}

pub(super) fn dot(x: &[f32], w: Weights) -> f32 {
    // SAFETY: NEON is part of every aarch64 target.
    unsafe { kernel::dot::<Neon>(x, w) }
}
