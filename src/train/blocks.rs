//! The building blocks both head kinds train (a Llama decoder layer, a Clover AD cell): their
//! parameter specs, the weights built from the parameters and the gradient buffers, each listed
//! in the same order. The three lists of a block sit side by side here so they cannot drift apart.

use crate::backend::{Backend, CloverCellParams};
use crate::draft::clover2::cell_tensors;
use crate::model::layer::{DecoderLayer, LayerDims, LayerGrads};
use crate::train::params::ParamSpec;

/// Hands out the weights of a parameter list in order.
pub struct InOrder<T>(std::vec::IntoIter<T>);

impl<T> InOrder<T> {
    pub fn new(items: Vec<T>) -> Self {
        InOrder(items.into_iter())
    }

    pub fn next_item(&mut self) -> T {
        self.0.next().expect("one weight per parameter spec: the specs and the weights come from the same list")
    }
}

/// The decoder layer under `prefix` (`input_layernorm` only with `input_norm`; q/k/v biases when
/// the dims have them).
pub fn layer_specs(prefix: &str, d: LayerDims, input_norm: bool) -> Vec<ParamSpec> {
    let (h, q, kv, i) = (d.hidden, d.q_dim(), d.kv_dim(), d.intermediate);
    let mut s = Vec::new();
    let mut add = |name: &str, shape: Vec<usize>| s.push(ParamSpec::whole(format!("{prefix}.{name}"), shape));
    if input_norm {
        add("input_layernorm.weight", vec![h]);
    }
    add("self_attn.q_proj.weight", vec![q, h]);
    add("self_attn.k_proj.weight", vec![kv, h]);
    add("self_attn.v_proj.weight", vec![kv, h]);
    if d.qkv_bias {
        add("self_attn.q_proj.bias", vec![q]);
        add("self_attn.k_proj.bias", vec![kv]);
        add("self_attn.v_proj.bias", vec![kv]);
    }
    add("self_attn.o_proj.weight", vec![h, q]);
    add("post_attention_layernorm.weight", vec![h]);
    add("mlp.gate_proj.weight", vec![i, h]);
    add("mlp.up_proj.weight", vec![i, h]);
    add("mlp.down_proj.weight", vec![h, i]);
    s
}

pub fn layer_weights<B: Backend>(
    w: &mut InOrder<B::Weight>,
    dims: LayerDims,
    eps: f32,
    input_norm: bool,
) -> DecoderLayer<B> {
    let attn_norm = input_norm.then(|| w.next_item());
    let (q, k, v) = (w.next_item(), w.next_item(), w.next_item());
    let qkv_bias = dims.qkv_bias.then(|| [w.next_item(), w.next_item(), w.next_item()]);
    DecoderLayer {
        dims,
        eps,
        attn_norm,
        q,
        k,
        v,
        qkv_bias,
        o: w.next_item(),
        mlp_norm: w.next_item(),
        gate: w.next_item(),
        up: w.next_item(),
        down: w.next_item(),
    }
}

pub fn layer_grads<B: Backend>(g: &mut LayerGrads<B>) -> Vec<&mut B::Buf> {
    let mut out: Vec<&mut B::Buf> = g.attn_norm.iter_mut().collect();
    out.extend([&mut g.q, &mut g.k, &mut g.v]);
    if let Some(bias) = &mut g.qkv_bias {
        out.extend(bias.iter_mut());
    }
    out.extend([&mut g.o, &mut g.mlp_norm, &mut g.gate, &mut g.up, &mut g.down]);
    out
}

/// An AD cell under `prefix`, in `CloverCellParams` field order.
pub fn cell_specs(prefix: &str, h: usize) -> Vec<ParamSpec> {
    cell_tensors(h).into_iter().map(|(name, shape)| ParamSpec::whole(format!("{prefix}.{name}"), shape)).collect()
}

pub fn cell_weights<W>(w: &mut InOrder<W>) -> CloverCellParams<W> {
    CloverCellParams {
        gain: w.next_item(),
        wq: w.next_item(),
        bq: w.next_item(),
        wk: w.next_item(),
        bk: w.next_item(),
        wv: w.next_item(),
        bv: w.next_item(),
    }
}

pub fn cell_zeros<B: Backend>(b: &B, h: usize) -> CloverCellParams<B::Buf> {
    CloverCellParams {
        gain: b.zeros(h),
        wq: b.zeros(h * h),
        bq: b.zeros(h),
        wk: b.zeros(h * h),
        bk: b.zeros(h),
        wv: b.zeros(h * h),
        bv: b.zeros(h),
    }
}

pub fn cell_grads<T>(g: &mut CloverCellParams<T>) -> Vec<&mut T> {
    vec![&mut g.gain, &mut g.wq, &mut g.bq, &mut g.wk, &mut g.bk, &mut g.wv, &mut g.bv]
}
