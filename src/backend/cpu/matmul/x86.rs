//! x86-64 flavours of the kernel: AVX2 + FMA + F16C (8 lanes) and AVX-512 F/BW/VL (16 lanes).
//! The trait methods are `#[inline(always)]` so they compile into the `#[target_feature]` entry
//! points below, which `mod.rs` calls only after detecting the features.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::kernel::{self, Job, Load, Simd, Weights};
use crate::weights::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

#[derive(Clone, Copy)]
pub(super) struct Avx2;

#[derive(Clone, Copy)]
pub(super) struct Avx512;

/// Lane `l` with lane `l + 2`, then with `l + 1`: the last two steps of every `sum` here.
#[inline(always)]
unsafe fn sum128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
}

/// Lane `l` with lane `l + 4`, then as `sum128`.
#[inline(always)]
unsafe fn sum256(v: __m256) -> f32 {
    sum128(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v)))
}

/// `len < 8` leading lanes set, for the masked loads of AVX.
#[inline(always)]
unsafe fn mask8(len: usize) -> __m256i {
    _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// Eight 16-bit values from `p`, zero past `len`, through a stack copy: AVX2 has no 16-bit masked
/// load, and this only runs once per row for a `k` that is not a multiple of 8.
#[inline(always)]
unsafe fn load_u16_tail(p: *const u16, len: usize) -> __m128i {
    let mut buf = [0u16; 8];
    std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), len);
    _mm_loadu_si128(buf.as_ptr().cast())
}

impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;

    #[inline(always)]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    #[inline(always)]
    unsafe fn load_tail(p: *const f32, len: usize) -> __m256 {
        _mm256_maskload_ps(p, mask8(len))
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast())
    }

    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, acc: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, acc)
    }

    #[inline(always)]
    unsafe fn sum(v: __m256) -> f32 {
        sum256(v)
    }

    /// `sum`'s additions, four vectors at a time.
    #[inline(always)]
    unsafe fn sum4([a, b, c, d]: [__m256; 4], out: *mut f32) {
        // l + 4: [a, b] and [c, d] in halves of 4.
        let ab = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b));
        let cd = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(c, d), _mm256_permute2f128_ps::<0x31>(c, d));
        // l + 2: [a a c c | b b d d].
        let s = _mm256_add_ps(_mm256_shuffle_ps::<0b01_00_01_00>(ab, cd), _mm256_shuffle_ps::<0b11_10_11_10>(ab, cd));
        // l + 1: [a c a c | b d b d].
        let s = _mm256_add_ps(_mm256_shuffle_ps::<0b10_00_10_00>(s, s), _mm256_shuffle_ps::<0b11_01_11_01>(s, s));
        _mm_storeu_ps(out, _mm_unpacklo_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s)));
    }
}

impl Load<f32> for Avx2 {
    #[inline(always)]
    unsafe fn load_w(w: *const f32, i: usize) -> __m256 {
        let p = w.add(i);
        Self::load(p)
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const f32, i: usize, len: usize) -> __m256 {
        let p = w.add(i);
        Self::load_tail(p, len)
    }
}

/// bf16 is the top half of an f32: zero-extend to 32 bits and shift left by 16.
#[inline(always)]
unsafe fn bf16x8(v: __m128i) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
}

impl Load<bf16> for Avx2 {
    #[inline(always)]
    unsafe fn load_w(w: *const bf16, i: usize) -> __m256 {
        let p = w.add(i);
        bf16x8(_mm_loadu_si128(p.cast()))
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const bf16, i: usize, len: usize) -> __m256 {
        let p = w.add(i);
        bf16x8(load_u16_tail(p.cast(), len))
    }
}

impl Load<f16> for Avx2 {
    #[inline(always)]
    unsafe fn load_w(w: *const f16, i: usize) -> __m256 {
        let p = w.add(i);
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const f16, i: usize, len: usize) -> __m256 {
        let p = w.add(i);
        _mm256_cvtph_ps(load_u16_tail(p.cast(), len))
    }
}

/// `len < 16` leading lanes set.
#[inline(always)]
fn mask16(len: usize) -> __mmask16 {
    ((1u32 << len) - 1) as __mmask16
}

impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;

    #[inline(always)]
    unsafe fn zero() -> __m512 {
        _mm512_setzero_ps()
    }

    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }

    #[inline(always)]
    unsafe fn load_tail(p: *const f32, len: usize) -> __m512 {
        _mm512_maskz_loadu_ps(mask16(len), p)
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8) {
        _mm_prefetch::<_MM_HINT_T0>(p.cast())
    }

    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, acc: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, acc)
    }

    /// Lane `l` with lane `l + 8`, then as `sum256`.
    #[inline(always)]
    unsafe fn sum(v: __m512) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        sum256(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
    }

    /// `sum`'s additions, four vectors at a time.
    #[inline(always)]
    unsafe fn sum4([a, b, c, d]: [__m512; 4], out: *mut f32) {
        // l + 8: [a, b] and [c, d] in halves of 8 (128-bit quarters 0,1 + 2,3).
        let ab = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b));
        let cd = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(c, d), _mm512_shuffle_f32x4::<0xEE>(c, d));
        // l + 4: [a, b, c, d] in quarters.
        let s = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(ab, cd), _mm512_shuffle_f32x4::<0xDD>(ab, cd));
        // l + 2, then l + 1, within each quarter.
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b11_10_11_10>(s));
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_01_01_01>(s));
        let first = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s);
        _mm_storeu_ps(out, _mm512_castps512_ps128(first));
    }
}

impl Load<f32> for Avx512 {
    #[inline(always)]
    unsafe fn load_w(w: *const f32, i: usize) -> __m512 {
        let p = w.add(i);
        Self::load(p)
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const f32, i: usize, len: usize) -> __m512 {
        let p = w.add(i);
        Self::load_tail(p, len)
    }
}

#[inline(always)]
unsafe fn bf16x16(v: __m256i) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
}

impl Load<bf16> for Avx512 {
    #[inline(always)]
    unsafe fn load_w(w: *const bf16, i: usize) -> __m512 {
        let p = w.add(i);
        bf16x16(_mm256_loadu_si256(p.cast()))
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const bf16, i: usize, len: usize) -> __m512 {
        let p = w.add(i);
        bf16x16(_mm256_maskz_loadu_epi16(mask16(len), p.cast()))
    }
}

impl Load<f16> for Avx512 {
    #[inline(always)]
    unsafe fn load_w(w: *const f16, i: usize) -> __m512 {
        let p = w.add(i);
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const f16, i: usize, len: usize) -> __m512 {
        let p = w.add(i);
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(len), p.cast()))
    }
}

/// A f16 scale as an f32 in every lane of a 4-lane vector (F16C).
#[inline(always)]
unsafe fn f16_scale(bits: u16) -> __m128 {
    _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits)))
}

/// The 4-bit quants of values `o .. o + 8` of a Q4 block (values 0..16 are the low nibbles of its
/// 16 quant bytes, 16..32 the high ones), one per byte.
#[inline(always)]
unsafe fn nibbles8_at(qs: *const u8, o: usize) -> __m128i {
    let shift = _mm_cvtsi32_si128((o / 16 * 4) as i32);
    _mm_and_si128(_mm_srl_epi16(_mm_loadl_epi64(qs.add(o % 16).cast()), shift), _mm_set1_epi8(15))
}

impl Load<BlockQ8_0> for Avx2 {
    #[inline(always)]
    unsafe fn load_w(w: *const BlockQ8_0, i: usize) -> __m256 {
        let b = &*w.add(i / QK);
        let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(b.qs.as_ptr().add(i % QK).cast()));
        _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_broadcastss_ps(f16_scale(b.d)))
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const BlockQ8_0, i: usize, len: usize) -> __m256 {
        _mm256_and_ps(Self::load_w(w, i), _mm256_castsi256_ps(mask8(len)))
    }
}

impl Load<BlockQ4_0> for Avx2 {
    #[inline(always)]
    unsafe fn load_w(w: *const BlockQ4_0, i: usize) -> __m256 {
        let b = &*w.add(i / QK);
        let q = nibbles8_at(b.qs.as_ptr(), i % QK);
        let q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(q), _mm256_set1_epi32(8));
        _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_broadcastss_ps(f16_scale(b.d)))
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const BlockQ4_0, i: usize, len: usize) -> __m256 {
        _mm256_and_ps(Self::load_w(w, i), _mm256_castsi256_ps(mask8(len)))
    }
}

impl Load<BlockQ4_1> for Avx2 {
    #[inline(always)]
    unsafe fn load_w(w: *const BlockQ4_1, i: usize) -> __m256 {
        let b = &*w.add(i / QK);
        let q = nibbles8_at(b.qs.as_ptr(), i % QK);
        let (d, m) = (_mm256_broadcastss_ps(f16_scale(b.d)), _mm256_broadcastss_ps(f16_scale(b.m)));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)), d, m)
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const BlockQ4_1, i: usize, len: usize) -> __m256 {
        _mm256_and_ps(Self::load_w(w, i), _mm256_castsi256_ps(mask8(len)))
    }
}

/// AVX-512's single-vector load of a block: the half of the block `load_w2` widens (the pair loop
/// of `kernel::tile` covers every block, so this only keeps the trait whole).
#[inline(always)]
unsafe fn block_half<E: kernel::Element>(w: *const E, i: usize) -> __m512
where
    Avx512: Load<E>,
{
    let (lo, hi) = Avx512::load_w2(w, i - i % QK);
    if i.is_multiple_of(QK) {
        lo
    } else {
        hi
    }
}

impl Load<BlockQ8_0> for Avx512 {
    #[inline(always)]
    unsafe fn load_w(w: *const BlockQ8_0, i: usize) -> __m512 {
        block_half(w, i)
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const BlockQ8_0, i: usize, len: usize) -> __m512 {
        _mm512_maskz_mov_ps(mask16(len), Self::load_w(w, i))
    }

    /// The whole block (`i` is a multiple of 32 here): one scale conversion for both halves.
    #[inline(always)]
    unsafe fn load_w2(w: *const BlockQ8_0, i: usize) -> (__m512, __m512) {
        let b = &*w.add(i / QK);
        let d = _mm512_broadcastss_ps(f16_scale(b.d));
        let half = |o: usize| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(b.qs.as_ptr().add(o).cast())));
        (_mm512_mul_ps(half(0), d), _mm512_mul_ps(half(16), d))
    }
}

impl Load<BlockQ4_0> for Avx512 {
    #[inline(always)]
    unsafe fn load_w(w: *const BlockQ4_0, i: usize) -> __m512 {
        block_half(w, i)
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const BlockQ4_0, i: usize, len: usize) -> __m512 {
        _mm512_maskz_mov_ps(mask16(len), Self::load_w(w, i))
    }

    /// The whole block (`i` is a multiple of 32 here): the 16 quant bytes widened once, low and
    /// high nibbles split from them.
    #[inline(always)]
    unsafe fn load_w2(w: *const BlockQ4_0, i: usize) -> (__m512, __m512) {
        let b = &*w.add(i / QK);
        let d = _mm512_broadcastss_ps(f16_scale(b.d));
        let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.qs.as_ptr().cast()));
        let eight = _mm512_set1_epi32(8);
        let lo = _mm512_sub_epi32(_mm512_and_si512(q, _mm512_set1_epi32(15)), eight);
        let hi = _mm512_sub_epi32(_mm512_srli_epi32::<4>(q), eight);
        (_mm512_mul_ps(_mm512_cvtepi32_ps(lo), d), _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d))
    }
}

impl Load<BlockQ4_1> for Avx512 {
    #[inline(always)]
    unsafe fn load_w(w: *const BlockQ4_1, i: usize) -> __m512 {
        block_half(w, i)
    }

    #[inline(always)]
    unsafe fn load_w_tail(w: *const BlockQ4_1, i: usize, len: usize) -> __m512 {
        _mm512_maskz_mov_ps(mask16(len), Self::load_w(w, i))
    }

    /// The whole block (`i` is a multiple of 32 here): d and m converted together, the 16 quant
    /// bytes widened once, low and high nibbles split from them.
    #[inline(always)]
    unsafe fn load_w2(w: *const BlockQ4_1, i: usize) -> (__m512, __m512) {
        let b = &*w.add(i / QK);
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(b.d) | (i32::from(b.m) << 16)));
        let (d, m) = (_mm512_broadcastss_ps(dm), _mm512_broadcastss_ps(_mm_movehdup_ps(dm)));
        let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(b.qs.as_ptr().cast()));
        let lo = _mm512_and_si512(q, _mm512_set1_epi32(15));
        let hi = _mm512_srli_epi32::<4>(q);
        (_mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), d, m), _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), d, m))
    }
}

/// 3 rows × 4 columns: 12 accumulators, 3 inputs and a weight in the 16 ymm registers.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; otherwise as `kernel::columns`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn columns_avx2(job: &Job, c0: usize, c1: usize) {
    kernel::columns::<Avx2, 3, 4>(job, c0, c1)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_avx2(x: &[f32], w: Weights) -> f32 {
    kernel::dot::<Avx2>(x, w)
}

/// 6 rows × 4 columns: 24 accumulators, 4 weights and an input in the 32 zmm registers.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL; otherwise as `kernel::columns`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn columns_avx512(job: &Job, c0: usize, c1: usize) {
    kernel::columns::<Avx512, 6, 4>(job, c0, c1)
}

/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn dot_avx512(x: &[f32], w: Weights) -> f32 {
    kernel::dot::<Avx512>(x, w)
}
