//! One Llama decoder layer: pre-norm attention with RoPE and GQA over a KV cache, then a pre-norm
//! SwiGLU MLP, both residual. Shared by the base model and the draft heads (EAGLE-1's layer has
//! no input norm; Clover-2's Augmenting Block is two ordinary layers).

use crate::backend::{AttnMask, AttnShape, Backend, KvLayout};
use crate::error::Result;
use crate::weights::safetensors::SafetensorsFiles;

/// Sizes of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub qkv_bias: bool,
}

impl LayerDims {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn attn_shape(&self) -> AttnShape {
        AttnShape { n_heads: self.n_heads, n_kv_heads: self.n_kv_heads, head_dim: self.head_dim }
    }
}

pub struct DecoderLayer<B: Backend> {
    pub dims: LayerDims,
    pub eps: f32,
    /// None for EAGLE-1's layer, whose input is already normalised.
    pub attn_norm: Option<B::Weight>,
    pub q: B::Weight,
    pub k: B::Weight,
    pub v: B::Weight,
    pub qkv_bias: Option<[B::Weight; 3]>,
    pub o: B::Weight,
    pub mlp_norm: B::Weight,
    pub gate: B::Weight,
    pub up: B::Weight,
    pub down: B::Weight,
}

/// The KV cache slice one layer reads and appends to.
pub struct LayerCache<'a, B: Backend> {
    pub keys: &'a mut B::Buf,
    pub values: &'a mut B::Buf,
    pub layout: KvLayout,
    /// Filled slots before this forward; new rows go to `past..past + rows`.
    pub past: usize,
}

impl<B: Backend> DecoderLayer<B> {
    /// Loads `{prefix}.input_layernorm`, `{prefix}.self_attn.*`, `{prefix}.post_attention_layernorm`
    /// and `{prefix}.mlp.*`. `bytes` accumulates the weight bytes read.
    pub fn load(
        backend: &B,
        files: &SafetensorsFiles,
        prefix: &str,
        dims: LayerDims,
        eps: f32,
        input_norm: bool,
        bytes: &mut usize,
    ) -> Result<Self> {
        let (h, q, kv, i) = (dims.hidden, dims.q_dim(), dims.kv_dim(), dims.intermediate);
        let mut get = |name: &str, shape: &[usize]| -> Result<B::Weight> {
            let t = files.get(&format!("{prefix}.{name}"), shape)?;
            *bytes += t.bytes.as_slice().len();
            backend.weight(t)
        };
        let attn_norm = if input_norm { Some(get("input_layernorm.weight", &[h])?) } else { None };
        let qkv_bias = if dims.qkv_bias {
            Some([
                get("self_attn.q_proj.bias", &[q])?,
                get("self_attn.k_proj.bias", &[kv])?,
                get("self_attn.v_proj.bias", &[kv])?,
            ])
        } else {
            None
        };
        Ok(DecoderLayer {
            dims,
            eps,
            attn_norm,
            q: get("self_attn.q_proj.weight", &[q, h])?,
            k: get("self_attn.k_proj.weight", &[kv, h])?,
            v: get("self_attn.v_proj.weight", &[kv, h])?,
            qkv_bias,
            o: get("self_attn.o_proj.weight", &[h, q])?,
            mlp_norm: get("post_attention_layernorm.weight", &[h])?,
            gate: get("mlp.gate_proj.weight", &[i, h])?,
            up: get("mlp.up_proj.weight", &[i, h])?,
            down: get("mlp.down_proj.weight", &[h, i])?,
        })
    }

    /// x ← layer(x) for `rows` new rows; their K/V are written to the cache at `past..`.
    pub fn forward(&self, b: &B, x: &mut B::Buf, rows: usize, cache: LayerCache<B>, cos_sin: &B::Buf, mask: AttnMask) {
        let d = self.dims;
        let (h, qd, kvd, i) = (d.hidden, d.q_dim(), d.kv_dim(), d.intermediate);
        let mut normed = b.zeros(rows * h);
        let attn_in = match &self.attn_norm {
            Some(g) => {
                b.rmsnorm(x, rows, g, self.eps, &mut normed);
                &normed
            }
            None => &*x,
        };
        let (mut q, mut k, mut v) = (b.zeros(rows * qd), b.zeros(rows * kvd), b.zeros(rows * kvd));
        b.matmul(attn_in, rows, &self.q, &mut q);
        b.matmul(attn_in, rows, &self.k, &mut k);
        b.matmul(attn_in, rows, &self.v, &mut v);
        if let Some([qb, kb, vb]) = &self.qkv_bias {
            b.add_bias(&mut q, rows, qb);
            b.add_bias(&mut k, rows, kb);
            b.add_bias(&mut v, rows, vb);
        }
        b.rope(&mut q, rows, d.n_heads, d.head_dim, cos_sin);
        b.rope(&mut k, rows, d.n_kv_heads, d.head_dim, cos_sin);
        b.kv_write(cache.keys, cache.layout, &k, rows, cache.past);
        b.kv_write(cache.values, cache.layout, &v, rows, cache.past);
        let mut attn = b.zeros(rows * qd);
        b.attention(&q, cache.keys, cache.values, cache.layout, d.attn_shape(), rows, cache.past, mask, &mut attn);
        let mut out = b.zeros(rows * h);
        b.matmul(&attn, rows, &self.o, &mut out);
        b.add(x, &out);

        b.rmsnorm(x, rows, &self.mlp_norm, self.eps, &mut normed);
        let (mut gate, mut up, mut act) = (b.zeros(rows * i), b.zeros(rows * i), b.zeros(rows * i));
        b.matmul(&normed, rows, &self.gate, &mut gate);
        b.matmul(&normed, rows, &self.up, &mut up);
        b.swiglu(&gate, &up, &mut act);
        b.matmul(&act, rows, &self.down, &mut out);
        b.add(x, &out);
    }
}

/// RoPE frequencies and the per-row cos/sin tables built from them.
#[derive(Clone, Debug)]
pub struct Rope {
    pub inv_freq: Vec<f64>,
}

impl Rope {
    pub fn plain(theta: f64, head_dim: usize) -> Self {
        Rope { inv_freq: (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect() }
    }

    /// Per row: cos of every frequency at that position, then sin; computed in f64 so long
    /// positions keep their precision.
    pub fn cos_sin(&self, positions: &[u32]) -> Vec<f32> {
        let mut table = Vec::with_capacity(positions.len() * self.inv_freq.len() * 2);
        for &p in positions {
            table.extend(self.inv_freq.iter().map(|f| (p as f64 * f).cos() as f32));
            table.extend(self.inv_freq.iter().map(|f| (p as f64 * f).sin() as f32));
        }
        table
    }
}
