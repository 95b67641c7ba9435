//! The op set every device implements. Model, draft and training code are generic over
//! `B: Backend` and never branch on the device; the CPU backend is the reference.
//!
//! Conventions: activations are row-major f32 buffers (`rows × width`); weights keep the dtype
//! they were stored in (f32, bf16, f16) and are used as `[out, in]` matrices (y = x · Wᵀ), like
//! PyTorch's `nn.Linear`; every reduction accumulates in f32.

pub mod cpu;

use crate::error::Result;
use crate::weights::HostTensor;

/// Which cached keys a block of `rows` new query rows (written at slots `past..past + rows`) may
/// attend to.
#[derive(Clone, Copy, Debug)]
pub enum AttnMask<'a> {
    /// Every slot before the row's own, and the row itself (prefill, decode, chains).
    Causal,
    /// Slots before `first_key` are all visible (the committed prefix); slot `first_key + j` is
    /// visible to row i when `bits[i * width + j] != 0`, `width = past + rows - first_key`
    /// (tree verification: `first_key = past`; tree drafting also masks earlier tree levels).
    Tree { bits: &'a [u8], first_key: usize },
}

/// Head layout shared by the attention ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// A per-layer key or value cache is `[n_kv_heads, capacity, head_dim]`: one contiguous run of
/// positions per head, so appending and compacting touch contiguous rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub n_kv_heads: usize,
    pub capacity: usize,
    pub head_dim: usize,
}

pub trait Backend: Send + Sync {
    /// An f32 activation buffer on the device.
    type Buf: Send + Sync;
    /// A weight tensor on the device, in its stored dtype.
    type Weight: Send + Sync;

    fn name(&self) -> String;

    /// Makes a weight usable by the device. The CPU backend keeps memory-mapped bytes in place.
    fn weight(&self, tensor: HostTensor) -> Result<Self::Weight>;
    fn zeros(&self, len: usize) -> Self::Buf;
    fn upload(&self, data: &[f32]) -> Self::Buf;
    fn download(&self, buf: &Self::Buf) -> Vec<f32>;
    /// Copies rows `[start, start + rows)` of a `? × width` buffer into a new buffer.
    fn slice_rows(&self, buf: &Self::Buf, width: usize, start: usize, rows: usize) -> Self::Buf;
    /// out[i] = buf[rows[i]] for a `? × width` buffer.
    fn gather_rows(&self, buf: &Self::Buf, width: usize, rows: &[usize]) -> Self::Buf;

    /// out[r] = table[ids[r]] as f32.
    fn embedding(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Buf);
    /// out[rows, n] = x[rows, k] · wᵀ with w `[n, k]`.
    fn matmul(&self, x: &Self::Buf, rows: usize, w: &Self::Weight, out: &mut Self::Buf);
    /// x[r] += bias for every row.
    fn add_bias(&self, x: &mut Self::Buf, rows: usize, bias: &Self::Weight);
    /// x += y element-wise.
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf);
    /// out[r] = x[r] / rms(x[r]) · gain.
    fn rmsnorm(&self, x: &Self::Buf, rows: usize, gain: &Self::Weight, eps: f32, out: &mut Self::Buf);
    /// Rotate-half RoPE in place on `rows × n_heads × head_dim`; `cos_sin` is `rows × head_dim`
    /// (cos of the head_dim/2 frequencies, then their sin), built by the caller per position.
    fn rope(&self, x: &mut Self::Buf, rows: usize, n_heads: usize, head_dim: usize, cos_sin: &Self::Buf);
    /// out = silu(gate) ⊙ up.
    fn swiglu(&self, gate: &Self::Buf, up: &Self::Buf, out: &mut Self::Buf);

    /// Writes `rows` new key (or value) rows `[rows, n_kv_heads·head_dim]` at slots `start..`.
    fn kv_write(&self, cache: &mut Self::Buf, layout: KvLayout, new: &Self::Buf, rows: usize, start: usize);
    /// Moves cache slot `from` to slot `to` for every head, in order (KV compaction).
    fn kv_move(&self, cache: &mut Self::Buf, layout: KvLayout, moves: &[(usize, usize)]);
    /// Scaled-dot-product attention of `rows` new queries `[rows, n_heads·head_dim]` over the
    /// cache, whose slots `0..past + rows` are filled (the new rows last). GQA maps query head h
    /// to KV head h / (n_heads / n_kv_heads).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        layout: KvLayout,
        shape: AttnShape,
        rows: usize,
        past: usize,
        mask: AttnMask,
        out: &mut Self::Buf,
    );
}
