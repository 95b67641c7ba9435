//! The portable kernel: plain f32 arrays as vectors, which LLVM vectorises for whatever the
//! target's baseline has (SSE2, NEON). Multiply and add stay separate (Rust never contracts them
//! to FMA), so this path's results differ from the FMA paths' by rounding, but its own order is
//! as fixed as theirs.

use half::{bf16, f16};

use super::kernel::{self, Job, Load, Simd, Weights};
use crate::weights::quant::{Block, BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

#[derive(Clone, Copy)]
pub(super) struct Scalar;

const LANES: usize = 8;

impl Simd for Scalar {
    const LANES: usize = LANES;
    type V = [f32; LANES];

    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; LANES]
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        p.cast::<[f32; LANES]>().read_unaligned()
    }

    #[inline(always)]
    unsafe fn load_tail(p: *const f32, len: usize) -> Self::V {
        let mut v = [0.0; LANES];
        std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len);
        v
    }

    /// Nothing portable to do; the hardware prefetchers have to suffice.
    #[inline(always)]
    unsafe fn prefetch(_: *const u8) {}

    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, mut acc: Self::V) -> Self::V {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
        acc
    }

    #[inline(always)]
    unsafe fn sum(v: Self::V) -> f32 {
        crate::vexp::sum_lanes(v)
    }
}

impl Load<f32> for Scalar {
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

/// Widens 16-bit weights lane by lane with `to_f32`.
macro_rules! load_half {
    ($ty:ty, $to_f32:expr) => {
        impl Load<$ty> for Scalar {
            #[inline(always)]
            unsafe fn load_w(w: *const $ty, i: usize) -> Self::V {
                let p = w.add(i);
                p.cast::<[$ty; LANES]>().read_unaligned().map($to_f32)
            }

            #[inline(always)]
            unsafe fn load_w_tail(w: *const $ty, i: usize, len: usize) -> Self::V {
                let p = w.add(i);
                let mut v = [<$ty>::ZERO; LANES];
                std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len);
                v.map($to_f32)
            }
        }
    };
}

load_half!(bf16, |v: bf16| f32::from_bits((v.to_bits() as u32) << 16));
load_half!(f16, f16::to_f32);

/// Quantized blocks, value by value through `quant.rs` (exact in f32).
macro_rules! load_block {
    ($ty:ty) => {
        impl Load<$ty> for Scalar {
            #[inline(always)]
            unsafe fn load_w(w: *const $ty, i: usize) -> Self::V {
                (*w.add(i / QK)).values::<LANES>(i % QK)
            }

            #[inline(always)]
            unsafe fn load_w_tail(w: *const $ty, i: usize, len: usize) -> Self::V {
                let mut v = Self::load_w(w, i);
                v[len..].fill(0.0);
                v
            }
        }
    };
}

load_block!(BlockQ8_0);
load_block!(BlockQ4_0);
load_block!(BlockQ4_1);

/// 4 rows × 1 column: on x86-64 (SSE2) this ran 2-3× faster than 2 × 4 or 4 × 2 tiles, whose
/// arrays LLVM did not keep in registers.
///
/// # Safety
/// As `kernel::columns`, less the instruction-set requirement.
pub(super) unsafe fn columns(job: &Job, c0: usize, c1: usize) {
    kernel::columns::<Scalar, 4, 1>(job, c0, c1)
}

pub(super) fn dot(x: &[f32], w: Weights) -> f32 {
    // SAFETY: plain Rust, no instruction-set requirement.
    unsafe { kernel::dot::<Scalar>(x, w) }
}
