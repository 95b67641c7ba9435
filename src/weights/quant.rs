//! GGUF's quantized blocks kept as they are (`import-gguf --dtype keep`): 32 values per block,
//! a f16 scale `d` (and for Q4_1 a f16 offset `m`), stored along a row's `k` axis, so a row of
//! `k` values is `k / 32` consecutive blocks and rows never share a block (spec/gguf.md).
//!
//! Dequantized values are exact in f32 (`d · q` has at most 11 + 8 significant bits; Q4_1's
//! `d · q + m` rounds once, the same with or without FMA), so the CPU kernels that widen blocks in
//! registers compute exactly what the f32 kernel computes on `dequantize`'s output.

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Values per block, for every quantized type here.
pub const QK: usize = 32;

/// `x = d · q`, q a signed byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK],
}

/// `x[j] = d · ((qs[j] & 15) − 8)`, `x[j + 16] = d · ((qs[j] >> 4) − 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; QK / 2],
}

/// `x[j] = d · (qs[j] & 15) + m`, `x[j + 16] = d · (qs[j] >> 4) + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; QK / 2],
}

/// A quantized block: its 32 values, or `N` of them from offset `o` (a multiple of `N`), which
/// is what the portable kernels load.
pub trait Block: Pod {
    fn value(&self, j: usize) -> f32;

    #[inline(always)]
    fn values<const N: usize>(&self, o: usize) -> [f32; N] {
        std::array::from_fn(|j| self.value(o + j))
    }
}

#[inline(always)]
fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

impl Block for BlockQ8_0 {
    #[inline(always)]
    fn value(&self, j: usize) -> f32 {
        f16_to_f32(self.d) * f32::from(self.qs[j])
    }
}

/// The 4-bit quant of value `j`: low nibbles hold values 0..16, high nibbles 16..32.
#[inline(always)]
fn nibble(qs: &[u8; QK / 2], j: usize) -> u8 {
    if j < QK / 2 {
        qs[j] & 15
    } else {
        qs[j - QK / 2] >> 4
    }
}

impl Block for BlockQ4_0 {
    #[inline(always)]
    fn value(&self, j: usize) -> f32 {
        f16_to_f32(self.d) * (f32::from(nibble(&self.qs, j)) - 8.0)
    }
}

impl Block for BlockQ4_1 {
    #[inline(always)]
    fn value(&self, j: usize) -> f32 {
        f16_to_f32(self.d).mul_add(f32::from(nibble(&self.qs, j)), f16_to_f32(self.m))
    }
}

/// Blocks of `B` from raw bytes, all values in order, into `out` (`bytes` holds whole blocks and
/// `out` 32 values for each).
pub fn dequantize_into<B: Block>(bytes: &[u8], out: &mut [f32]) {
    let size = std::mem::size_of::<B>();
    assert_eq!(bytes.len() % size, 0, "dequantize: {} bytes are not whole blocks of {size}", bytes.len());
    assert_eq!(
        out.len(),
        bytes.len() / size * QK,
        "dequantize: {} blocks into {} values",
        bytes.len() / size,
        out.len()
    );
    // Read unaligned: owned byte buffers promise no alignment.
    for (b, out) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(QK)) {
        let b: B = bytemuck::pod_read_unaligned(b);
        for (j, o) in out.iter_mut().enumerate() {
            *o = b.value(j);
        }
    }
}

/// `values` (whole blocks of 32) as Q8_0 blocks: per block the scale `d = max|x| / 127` rounded
/// to f16, and `q = round(x / d)` against that stored scale (llama.cpp divides by the unrounded
/// one), so every value comes back within d / 2. Used for draft-head matrices
/// (`--draft-weights q8_0`), where a smaller read matters and exactness does not: verification
/// never sees them.
pub fn quantize_q8_0(values: &[f32]) -> Vec<BlockQ8_0> {
    assert_eq!(values.len() % QK, 0, "quantize_q8_0: {} values are not whole blocks of {QK}", values.len());
    values
        .chunks_exact(QK)
        .map(|x| {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = f16::from_f32(amax / 127.0);
            let inv = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
            // |x| / d ≤ 127 · (1 + 2⁻¹¹) after d's rounding: the clamp only guards the type.
            BlockQ8_0 { d: d.to_bits(), qs: std::array::from_fn(|j| (x[j] * inv).round().clamp(-127.0, 127.0) as i8) }
        })
        .collect()
}

/// The values of whole blocks of a quantized `dtype`, in order, into `out`.
pub fn dequantize(dtype: super::DType, bytes: &[u8], out: &mut [f32]) {
    use super::DType;
    match dtype {
        DType::Q8_0 => dequantize_into::<BlockQ8_0>(bytes, out),
        DType::Q4_0 => dequantize_into::<BlockQ4_0>(bytes, out),
        DType::Q4_1 => dequantize_into::<BlockQ4_1>(bytes, out),
        DType::F32 | DType::BF16 | DType::F16 => panic!("dequantize: {dtype:?} is not a quantized type"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::weights::gguf::{self, GgmlType};
    use crate::weights::DType;

    /// Random bytes with finite f16 scales (exponent field below 31).
    pub fn random_blocks(bytes_per_block: usize, blocks: usize, scales: usize, rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::with_capacity(blocks * bytes_per_block);
        for _ in 0..blocks {
            for _ in 0..scales {
                let bits = (rng.next_u64() as u16) & 0xBFFF; // clear the exponent's top bit: |scale| < 2
                out.extend(bits.to_le_bytes());
            }
            for _ in 0..bytes_per_block - 2 * scales {
                out.push(rng.next_u64() as u8);
            }
        }
        out
    }

    #[test]
    fn q8_0_quantization_is_within_half_a_step_and_keeps_zeros() {
        let mut rng = Rng::new(5);
        let mut values: Vec<f32> = (0..QK * 8).map(|_| (rng.uniform_f32() - 0.5) * 6.0).collect();
        values[QK..2 * QK].fill(0.0); // an all-zero block: scale 0, no division by it
        values[2 * QK + 3] = -40.0; // an outlier sets its block's scale
        let blocks = quantize_q8_0(&values);
        let mut back = vec![f32::NAN; values.len()];
        dequantize_into::<BlockQ8_0>(bytemuck::cast_slice(&blocks), &mut back);
        for (b, (block, (x, y))) in blocks.iter().zip(values.chunks(QK).zip(back.chunks(QK))).enumerate() {
            let d = f16_to_f32(block.d);
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!((d - amax / 127.0).abs() <= amax / 127.0 / 1024.0, "block {b}: scale {d} for max {amax}");
            assert_eq!(block.qs.iter().map(|q| q.unsigned_abs()).max(), Some(if amax > 0.0 { 127 } else { 0 }));
            for (x, y) in x.iter().zip(y) {
                assert!((x - y).abs() <= 0.5 * d * 1.01, "block {b}: {x} came back as {y} (step {d})");
            }
        }
    }

    /// Every type against the GGUF reader's dequantization (spec/gguf.md's table, hand-checked
    /// blocks in gguf.rs), bit for bit.
    #[test]
    fn blocks_give_the_gguf_readers_values() {
        let mut rng = Rng::new(7);
        let cases =
            [(GgmlType::Q8_0, DType::Q8_0, 1), (GgmlType::Q4_0, DType::Q4_0, 1), (GgmlType::Q4_1, DType::Q4_1, 2)];
        for (ty, dtype, scales) in cases {
            let bytes = random_blocks(dtype.block().1, 64, scales, &mut rng);
            let want = gguf::dequantize(ty, &bytes);
            let mut got = vec![f32::NAN; want.len()];
            dequantize(dtype, &bytes, &mut got);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{ty:?} value {i}: {g} vs {w}");
            }
        }
    }
}
