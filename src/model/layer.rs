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
    /// The layer with its seven matrices replaced by `f` of them (norm gains and biases kept).
    pub fn map_matrices(self, f: impl Fn(&B::Weight) -> Result<B::Weight>) -> Result<Self> {
        Ok(DecoderLayer {
            q: f(&self.q)?,
            k: f(&self.k)?,
            v: f(&self.v)?,
            o: f(&self.o)?,
            gate: f(&self.gate)?,
            up: f(&self.up)?,
            down: f(&self.down)?,
            ..self
        })
    }

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
        self.attention_block(b, x, rows, cache, cos_sin, mask);
        self.mlp_block(b, x, rows);
    }

    /// `forward` over a whole sequence for training (teacher forcing): causal, no history (a
    /// scratch K/V cache of `rows` slots), keeping what `backward` needs.
    pub fn forward_train(&self, b: &B, x: &mut B::Buf, rows: usize, cos_sin: &B::Buf) -> LayerActs<B> {
        let d = self.dims;
        let layout = KvLayout { n_kv_heads: d.n_kv_heads, capacity: rows, head_dim: d.head_dim };
        let (mut keys, mut values) = (b.zeros(rows * d.kv_dim()), b.zeros(rows * d.kv_dim()));
        let input = b.slice_rows(x, d.hidden, 0, rows);
        let cache = LayerCache { keys: &mut keys, values: &mut values, layout, past: 0 };
        let attn = self.attention_block(b, x, rows, cache, cos_sin, AttnMask::Causal);
        let mid = b.slice_rows(x, d.hidden, 0, rows);
        let mlp = self.mlp_block(b, x, rows);
        LayerActs { input, attn, mid, mlp }
    }

    /// Backward of `forward_train`: `dx` holds dL/d(layer output) on entry and dL/d(layer input) on
    /// exit; the weight gradients are added to `grads` (from `LayerGrads::zeros` for this layer).
    /// `cos_sin` is the table the forward used.
    pub fn backward(
        &self,
        b: &B,
        acts: &LayerActs<B>,
        rows: usize,
        cos_sin: &B::Buf,
        dx: &mut B::Buf,
        grads: &mut LayerGrads<B>,
    ) {
        assert_eq!(self.attn_norm.is_some(), grads.attn_norm.is_some(), "layer backward: gradients of another layer");
        assert_eq!(self.qkv_bias.is_some(), grads.qkv_bias.is_some(), "layer backward: gradients of another layer");
        let d = self.dims;
        let (h, qd, kvd, i) = (d.hidden, d.q_dim(), d.kv_dim(), d.intermediate);

        // out = mid + down(swiglu(gate·n, up·n)), n = RMSNorm(mid): the residual passes dx on
        // unchanged and the MLP path adds to it, leaving dL/dmid.
        let m = &acts.mlp;
        let mut d_act = b.zeros(rows * i);
        b.matmul_backward(&m.act, dx, rows, &self.down, Some(&mut d_act), Some(&mut grads.down));
        let (mut d_gate, mut d_up) = (b.zeros(rows * i), b.zeros(rows * i));
        b.swiglu_backward(&m.gate, &m.up, &d_act, &mut d_gate, &mut d_up);
        let mut d_normed = b.zeros(rows * h);
        b.matmul_backward(&m.normed, &d_gate, rows, &self.gate, Some(&mut d_normed), Some(&mut grads.gate));
        b.matmul_backward(&m.normed, &d_up, rows, &self.up, Some(&mut d_normed), Some(&mut grads.up));
        b.rmsnorm_backward(&acts.mid, rows, &self.mlp_norm, self.eps, &d_normed, dx, &mut grads.mlp_norm);

        // mid = input + o(attention(rope(q·a + bq), rope(k·a + bk), v·a + bv)), a = the attention
        // input (normed or not): the same pattern, leaving dL/dinput.
        let a = &acts.attn;
        let mut d_attn = b.zeros(rows * qd);
        b.matmul_backward(&a.out, dx, rows, &self.o, Some(&mut d_attn), Some(&mut grads.o));
        let (mut dq, mut dk, mut dv) = (b.zeros(rows * qd), b.zeros(rows * kvd), b.zeros(rows * kvd));
        b.attention_backward(&a.q, &a.k, &a.v, d.attn_shape(), rows, &d_attn, &mut dq, &mut dk, &mut dv);
        b.rope_backward(&mut dq, rows, d.n_heads, d.head_dim, cos_sin);
        b.rope_backward(&mut dk, rows, d.n_kv_heads, d.head_dim, cos_sin);
        if let Some([gq, gk, gv]) = &mut grads.qkv_bias {
            b.bias_backward(&dq, rows, gq);
            b.bias_backward(&dk, rows, gk);
            b.bias_backward(&dv, rows, gv);
        }
        let attn_in = a.normed.as_ref().unwrap_or(&acts.input);
        // Without an input norm the projections' input gradient goes straight into dx.
        let mut d_normed_in = self.attn_norm.as_ref().map(|_| b.zeros(rows * h));
        let d_in = d_normed_in.as_mut().unwrap_or(&mut *dx);
        for (w, dw, dy) in [(&self.q, &mut grads.q, &dq), (&self.k, &mut grads.k, &dk), (&self.v, &mut grads.v, &dv)] {
            b.matmul_backward(attn_in, dy, rows, w, Some(&mut *d_in), Some(dw));
        }
        if let (Some(gain), Some(d_in), Some(d_gain)) = (&self.attn_norm, &d_normed_in, &mut grads.attn_norm) {
            b.rmsnorm_backward(&acts.input, rows, gain, self.eps, d_in, dx, d_gain);
        }
    }

    /// x ← x + o(attention(…)) for `rows` new rows, their K/V appended to the cache.
    fn attention_block(
        &self,
        b: &B,
        x: &mut B::Buf,
        rows: usize,
        cache: LayerCache<B>,
        cos_sin: &B::Buf,
        mask: AttnMask,
    ) -> AttnActs<B> {
        let d = self.dims;
        let (h, qd, kvd) = (d.hidden, d.q_dim(), d.kv_dim());
        let normed = self.attn_norm.as_ref().map(|g| {
            let mut normed = b.zeros(rows * h);
            b.rmsnorm(x, rows, g, self.eps, &mut normed);
            normed
        });
        let attn_in = normed.as_ref().unwrap_or(&*x);
        let (mut q, mut k, mut v) = (b.zeros(rows * qd), b.zeros(rows * kvd), b.zeros(rows * kvd));
        b.matmul_group(attn_in, rows, &mut [(&self.q, &mut q), (&self.k, &mut k), (&self.v, &mut v)]);
        if let Some([qb, kb, vb]) = &self.qkv_bias {
            b.add_bias(&mut q, rows, qb);
            b.add_bias(&mut k, rows, kb);
            b.add_bias(&mut v, rows, vb);
        }
        b.rope(&mut q, rows, d.n_heads, d.head_dim, cos_sin);
        b.rope(&mut k, rows, d.n_kv_heads, d.head_dim, cos_sin);
        b.kv_write(cache.keys, cache.layout, &k, rows, cache.past);
        b.kv_write(cache.values, cache.layout, &v, rows, cache.past);
        let mut out = b.zeros(rows * qd);
        b.attention(&q, cache.keys, cache.values, cache.layout, d.attn_shape(), rows, cache.past, mask, &mut out);
        let mut projected = b.zeros(rows * h);
        b.matmul(&out, rows, &self.o, &mut projected);
        b.add(x, &projected);
        AttnActs { normed, q, k, v, out }
    }

    /// x ← x + down(silu(gate·n) ⊙ up·n), n = RMSNorm(x).
    fn mlp_block(&self, b: &B, x: &mut B::Buf, rows: usize) -> MlpActs<B> {
        let (h, i) = (self.dims.hidden, self.dims.intermediate);
        let mut normed = b.zeros(rows * h);
        b.rmsnorm(x, rows, &self.mlp_norm, self.eps, &mut normed);
        let (mut gate, mut up, mut act) = (b.zeros(rows * i), b.zeros(rows * i), b.zeros(rows * i));
        b.matmul_group(&normed, rows, &mut [(&self.gate, &mut gate), (&self.up, &mut up)]);
        b.swiglu(&gate, &up, &mut act);
        let mut out = b.zeros(rows * h);
        b.matmul(&act, rows, &self.down, &mut out);
        b.add(x, &out);
        MlpActs { normed, gate, up, act }
    }
}

/// What `forward_train` keeps for `backward`: every activation a gradient needs, ≈ 6H + 2·kv + 3I
/// floats per row (34 KB per row of a SmolLM2 layer, H = 576: 69 MB for 2048 rows).
pub struct LayerActs<B: Backend> {
    /// The layer input.
    input: B::Buf,
    attn: AttnActs<B>,
    /// The input plus the attention branch: the MLP norm's input.
    mid: B::Buf,
    mlp: MlpActs<B>,
}

struct AttnActs<B: Backend> {
    /// RMSNorm(input), when the layer has an input norm.
    normed: Option<B::Buf>,
    /// q and k after RoPE, as the attention saw them; v.
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    /// The attention output, o_proj's input.
    out: B::Buf,
}

struct MlpActs<B: Backend> {
    normed: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    /// silu(gate) ⊙ up, down_proj's input.
    act: B::Buf,
}

/// f32 gradients of a decoder layer's weights, shaped like them.
pub struct LayerGrads<B: Backend> {
    pub attn_norm: Option<B::Buf>,
    pub q: B::Buf,
    pub k: B::Buf,
    pub v: B::Buf,
    pub qkv_bias: Option<[B::Buf; 3]>,
    pub o: B::Buf,
    pub mlp_norm: B::Buf,
    pub gate: B::Buf,
    pub up: B::Buf,
    pub down: B::Buf,
}

impl<B: Backend> LayerGrads<B> {
    /// Zeroed gradients for `layer`'s weights.
    pub fn zeros(b: &B, layer: &DecoderLayer<B>) -> Self {
        let d = layer.dims;
        let (h, q, kv, i) = (d.hidden, d.q_dim(), d.kv_dim(), d.intermediate);
        LayerGrads {
            attn_norm: layer.attn_norm.as_ref().map(|_| b.zeros(h)),
            q: b.zeros(q * h),
            k: b.zeros(kv * h),
            v: b.zeros(kv * h),
            qkv_bias: layer.qkv_bias.as_ref().map(|_| [b.zeros(q), b.zeros(kv), b.zeros(kv)]),
            o: b.zeros(h * q),
            mlp_norm: b.zeros(h),
            gate: b.zeros(i * h),
            up: b.zeros(i * h),
            down: b.zeros(h * i),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::gradcheck::{self as gc, assert_grad, numeric, to_f64};
    use crate::backend::cpu::{CpuBackend, CpuWeight};
    use crate::model::kv_cache::KvCache;
    use crate::weights::HostTensor;

    const EPS: f32 = 1e-5;
    const ROWS: usize = 4;

    /// A tiny layer's parameters by name, in a fixed order, with their shapes.
    fn shapes(d: LayerDims, input_norm: bool) -> Vec<(&'static str, Vec<usize>)> {
        let (h, q, kv, i) = (d.hidden, d.q_dim(), d.kv_dim(), d.intermediate);
        let mut s = Vec::new();
        if input_norm {
            s.push(("attn_norm", vec![h]));
        }
        s.extend([("q", vec![q, h]), ("k", vec![kv, h]), ("v", vec![kv, h])]);
        if d.qkv_bias {
            s.extend([("q_bias", vec![q]), ("k_bias", vec![kv]), ("v_bias", vec![kv])]);
        }
        s.extend([
            ("o", vec![h, q]),
            ("mlp_norm", vec![h]),
            ("gate", vec![i, h]),
            ("up", vec![i, h]),
            ("down", vec![h, i]),
        ]);
        s
    }

    fn find(shapes: &[(&str, Vec<usize>)], name: &str) -> Option<usize> {
        shapes.iter().position(|(n, _)| *n == name)
    }

    fn build(d: LayerDims, shapes: &[(&'static str, Vec<usize>)], values: &[Vec<f32>]) -> DecoderLayer<CpuBackend> {
        let w = |name: &str| {
            let at = find(shapes, name).expect("a parameter of this layer");
            CpuWeight::new(HostTensor::from_f32(name, shapes[at].1.clone(), &values[at])).expect("a 1-d or 2-d tensor")
        };
        let has = |name: &str| find(shapes, name).is_some();
        DecoderLayer {
            dims: d,
            eps: EPS,
            attn_norm: has("attn_norm").then(|| w("attn_norm")),
            q: w("q"),
            k: w("k"),
            v: w("v"),
            qkv_bias: d.qkv_bias.then(|| [w("q_bias"), w("k_bias"), w("v_bias")]),
            o: w("o"),
            mlp_norm: w("mlp_norm"),
            gate: w("gate"),
            up: w("up"),
            down: w("down"),
        }
    }

    /// The layer in f64, written from the composition of the reference ops.
    fn reference(
        d: LayerDims,
        shapes: &[(&'static str, Vec<usize>)],
        p: &[Vec<f64>],
        x: &[f64],
        cos_sin: &[f64],
    ) -> Vec<f64> {
        let get = |name: &str| find(shapes, name).map(|at| p[at].as_slice());
        let param = |name: &str| get(name).expect("a parameter of this layer");
        let add_rows = |y: &mut Vec<f64>, b: &[f64]| {
            y.chunks_exact_mut(b.len()).for_each(|r| r.iter_mut().zip(b).for_each(|(v, bv)| *v += bv))
        };
        let eps = EPS as f64;
        let a = get("attn_norm").map_or_else(|| x.to_vec(), |g| gc::rmsnorm(x, g, eps));
        let mut q = gc::linear(&a, param("q"), d.q_dim());
        let mut k = gc::linear(&a, param("k"), d.kv_dim());
        let mut v = gc::linear(&a, param("v"), d.kv_dim());
        if let (Some(bq), Some(bk), Some(bv)) = (get("q_bias"), get("k_bias"), get("v_bias")) {
            add_rows(&mut q, bq);
            add_rows(&mut k, bk);
            add_rows(&mut v, bv);
        }
        let (q, k) = (gc::rope(&q, d.head_dim, cos_sin), gc::rope(&k, d.head_dim, cos_sin));
        let attn = gc::attention(&q, &k, &v, d.attn_shape(), ROWS);
        let mid: Vec<f64> = x.iter().zip(gc::linear(&attn, param("o"), d.hidden)).map(|(a, b)| a + b).collect();
        let n = gc::rmsnorm(&mid, param("mlp_norm"), eps);
        let act =
            gc::swiglu(&gc::linear(&n, param("gate"), d.intermediate), &gc::linear(&n, param("up"), d.intermediate));
        mid.iter().zip(gc::linear(&act, param("down"), d.hidden)).map(|(a, b)| a + b).collect()
    }

    fn grad<'a>(g: &'a LayerGrads<CpuBackend>, name: &str) -> &'a [f32] {
        let bias = |i: usize| &g.qkv_bias.as_ref().expect("bias gradients")[i];
        match name {
            "attn_norm" => g.attn_norm.as_ref().expect("input norm gradient"),
            "q" => &g.q,
            "k" => &g.k,
            "v" => &g.v,
            "q_bias" => bias(0),
            "k_bias" => bias(1),
            "v_bias" => bias(2),
            "o" => &g.o,
            "mlp_norm" => &g.mlp_norm,
            "gate" => &g.gate,
            "up" => &g.up,
            "down" => &g.down,
            other => panic!("no parameter {other}"),
        }
    }

    /// H = 8, 2 query heads sharing 1 KV head, I = 16, T = 4: `forward_train` equals `forward`,
    /// both equal the f64 reference, and `backward` matches central differences for the input
    /// and every weight.
    fn check_layer(input_norm: bool, qkv_bias: bool, seed: u64) {
        let d = LayerDims { hidden: 8, intermediate: 16, n_heads: 2, n_kv_heads: 1, head_dim: 4, qkv_bias };
        let shapes = shapes(d, input_norm);
        let mut rng = crate::rng::Rng::new(seed);
        let values: Vec<Vec<f32>> = shapes
            .iter()
            .map(|(name, shape)| {
                let n = shape.iter().product();
                let v = gc::random(&mut rng, n, 0.6);
                if name.ends_with("norm") {
                    v.iter().map(|x| 1.0 + 0.5 * x).collect()
                } else {
                    v
                }
            })
            .collect();
        let b = CpuBackend;
        let layer = build(d, &shapes, &values);
        let x = gc::random(&mut rng, ROWS * d.hidden, 1.0);
        let g = gc::random(&mut rng, ROWS * d.hidden, 1.0);
        let cos_sin = Rope::plain(10000.0, d.head_dim).cos_sin(&[0, 1, 2, 3]);

        let mut out = x.clone();
        let acts = layer.forward_train(&b, &mut out, ROWS, &cos_sin);
        // A cache with room to spare, as inference has: only the filled slots may count.
        let layout = KvLayout { n_kv_heads: d.n_kv_heads, capacity: 16, head_dim: d.head_dim };
        let mut cache = KvCache::with_layout(&b, 1, layout);
        let mut inference = x.clone();
        layer.forward(&b, &mut inference, ROWS, cache.layer(0), &cos_sin, AttnMask::Causal);
        assert_eq!(out, inference, "forward_train computes what forward does");

        let (x64, g64, cs64) = (to_f64(&x), to_f64(&g), to_f64(&cos_sin));
        let p64: Vec<Vec<f64>> = values.iter().map(|v| to_f64(v)).collect();
        for (a, r) in out.iter().zip(reference(d, &shapes, &p64, &x64, &cs64)) {
            assert!((*a as f64 - r).abs() < 1e-4 * (1.0 + r.abs()), "forward {a} vs reference {r}");
        }

        let mut dx = g.clone();
        let mut grads = LayerGrads::zeros(&b, &layer);
        layer.backward(&b, &acts, ROWS, &cos_sin, &mut dx, &mut grads);
        let loss = |p: &[Vec<f64>], x: &[f64]| gc::dot(&reference(d, &shapes, p, x, &cs64), &g64);
        assert_grad("dx", &dx, &numeric(&x64, |x| loss(&p64, x)));
        for (at, (name, _)) in shapes.iter().enumerate() {
            let mut p = p64.clone();
            let num = numeric(&p64[at], |v| {
                p[at].copy_from_slice(v);
                loss(&p, &x64)
            });
            assert_grad(name, grad(&grads, name), &num);
        }
    }

    #[test]
    fn backward_with_input_norm_matches_finite_differences() {
        check_layer(true, false, 21);
    }

    #[test]
    fn backward_without_input_norm_matches_finite_differences() {
        check_layer(false, false, 22);
    }

    #[test]
    fn backward_with_qkv_bias_matches_finite_differences() {
        check_layer(true, true, 23);
    }
}
