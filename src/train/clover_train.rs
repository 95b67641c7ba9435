//! Training Clover-2 (clover2.md §3–§5, §8), forward and backward side by side. Per record, with
//! the alignment of `align.rs` (ids' = tokens shifted by one) and E = the frozen base lm_head:
//!
//! ```text
//! z   = AD₀(u, E[ids'])              u: pre-norm base features of positions 0..T, no noise
//! z   = layer₁(layer₀(z))            the Augmenting Block, causal over the T positions
//! s⁰  = RMSNorm_clover(z)
//! f⁰  = RMSNorm_head(W₀ s⁰ + b₀)
//! sⁱ  = AD₁(sⁱ⁻¹[0:T−i], E[ids'][i:T])                  i = 1..K
//! fⁱ  = RMSNorm_head(W_c,s sⁱ + W_c,e E[ids'][i:T] + b_c)
//! ```
//!
//! and the shared losses of heads 0..K over the fⁱ. The backward walks the heads from the deepest
//! down: the gradient reaching sⁱ comes from head i's FC and from the AD₁ cell of head i+1, which
//! read sⁱ's first T−i−1 rows.

use crate::backend::{Backend, CloverCellParams};
use crate::draft::clover2::{AD0, AD1, CLOVER_NORM, CLOVER_ROPE_THETA, HEAD0_FC, HEADS_FC, HEAD_NORM};
use crate::draft::config::CloverConfig;
use crate::draft::vocab::DraftLmHead;
use crate::draft::DraftKind;
use crate::model::layer::{DecoderLayer, LayerActs, LayerGrads, Rope};
use crate::model::{Llama, ModelConfig};
use crate::train::align::Aligned;
use crate::train::blocks::{
    cell_grads, cell_specs, cell_weights, cell_zeros, layer_grads, layer_specs, layer_weights, InOrder,
};
use crate::train::head::{Mode, TrainHead};
use crate::train::losses::{head_losses, HeadScale, HeadSums, LossSpec, Wants};
use crate::train::params::ParamSpec;
use crate::train::shards::Record;
use crate::train::timers::{Phase, Timers};

/// The trained tensors under their reference names (`draft/clover2.rs`), `clover_head_mlp2` as its
/// state and embedding halves.
pub fn clover_specs(c: &ModelConfig, clover: &CloverConfig) -> Vec<ParamSpec> {
    let h = c.hidden_size;
    let mut s = cell_specs(AD0, h);
    for l in 0..clover.num_layers {
        s.extend(layer_specs(&format!("layers.{l}"), c.layer_dims(), true));
    }
    s.push(ParamSpec::whole(CLOVER_NORM, vec![h]));
    s.push(ParamSpec::whole(format!("{HEAD0_FC}.weight"), vec![h, h]));
    s.push(ParamSpec::whole(format!("{HEAD0_FC}.bias"), vec![h]));
    s.extend(cell_specs(AD1, h));
    s.push(ParamSpec::column_block(format!("{HEADS_FC}.weight"), vec![h, 2 * h], 0, 2));
    s.push(ParamSpec::column_block(format!("{HEADS_FC}.weight"), vec![h, 2 * h], 1, 2));
    s.push(ParamSpec::whole(format!("{HEADS_FC}.bias"), vec![h]));
    s.push(ParamSpec::whole(HEAD_NORM, vec![h]));
    s
}

struct Weights<B: Backend> {
    ad0: CloverCellParams<B::Weight>,
    block: Vec<DecoderLayer<B>>,
    clover_norm: B::Weight,
    head0_fc: B::Weight,
    head0_bias: B::Weight,
    ad1: CloverCellParams<B::Weight>,
    fc_state: B::Weight,
    fc_embed: B::Weight,
    fc_bias: B::Weight,
    head_norm: B::Weight,
}

struct Grads<B: Backend> {
    ad0: CloverCellParams<B::Buf>,
    block: Vec<LayerGrads<B>>,
    clover_norm: B::Buf,
    head0_fc: B::Buf,
    head0_bias: B::Buf,
    ad1: CloverCellParams<B::Buf>,
    fc_state: B::Buf,
    fc_embed: B::Buf,
    fc_bias: B::Buf,
    head_norm: B::Buf,
}

pub struct CloverTrainee<B: Backend> {
    config: ModelConfig,
    clover: CloverConfig,
    loss: LossSpec,
    rope: Rope,
    w: Weights<B>,
    g: Grads<B>,
}

impl<B: Backend> CloverTrainee<B> {
    /// `weights` in the order of `clover_specs(&config, &clover)`.
    pub fn new(b: &B, config: ModelConfig, clover: CloverConfig, weights: Vec<B::Weight>) -> Self {
        let w = Self::build(&config, &clover, weights);
        let h = config.hidden_size;
        let g = Grads {
            ad0: cell_zeros(b, h),
            block: w.block.iter().map(|l| LayerGrads::zeros(b, l)).collect(),
            clover_norm: b.zeros(h),
            head0_fc: b.zeros(h * h),
            head0_bias: b.zeros(h),
            ad1: cell_zeros(b, h),
            fc_state: b.zeros(h * h),
            fc_embed: b.zeros(h * h),
            fc_bias: b.zeros(h),
            head_norm: b.zeros(h),
        };
        let loss = LossSpec::clover(clover.num_heads, clover.heads_coefficient, clover.decay_coefficient);
        CloverTrainee { rope: Rope::plain(CLOVER_ROPE_THETA, config.head_dim), loss, config, clover, w, g }
    }

    fn build(c: &ModelConfig, clover: &CloverConfig, weights: Vec<B::Weight>) -> Weights<B> {
        let mut w = InOrder::new(weights);
        Weights {
            ad0: cell_weights(&mut w),
            block: (0..clover.num_layers)
                .map(|_| layer_weights(&mut w, c.layer_dims(), c.rms_norm_eps, true))
                .collect(),
            clover_norm: w.next_item(),
            head0_fc: w.next_item(),
            head0_bias: w.next_item(),
            ad1: cell_weights(&mut w),
            fc_state: w.next_item(),
            fc_embed: w.next_item(),
            fc_bias: w.next_item(),
            head_norm: w.next_item(),
        }
    }
}

/// Head i ≥ 1's inputs and intermediates, `T − i` rows each.
struct Depth<B: Backend> {
    /// sⁱ⁻¹[0:T−i], AD₁'s state input.
    state_in: B::Buf,
    /// E[ids'][i:T].
    emb: B::Buf,
    /// sⁱ.
    state: B::Buf,
    /// The FC output before the head norm.
    pre: B::Buf,
}

/// What the forward keeps for the backward.
struct Saved<B: Backend> {
    features: B::Buf,
    emb: B::Buf,
    cos_sin: B::Buf,
    acts: Vec<LayerActs<B>>,
    /// The Augmenting Block's output.
    block_out: B::Buf,
    s0: B::Buf,
    pre0: B::Buf,
    depths: Vec<Depth<B>>,
}

impl<B: Backend> CloverTrainee<B> {
    fn embed(&self, b: &B, base: &Llama<B>, ids: &[u32]) -> B::Buf {
        let mut e = b.zeros(ids.len() * self.config.hidden_size);
        b.embedding(base.lm_head(), ids, &mut e);
        e
    }

    fn cell(&self, b: &B, cell: &CloverCellParams<B::Weight>, x: &B::Buf, y: &B::Buf, rows: usize) -> B::Buf {
        let c = &self.config;
        let mut out = b.zeros(rows * c.hidden_size);
        b.clover_cell(cell, c.num_heads, c.rms_norm_eps, x, y, rows, &mut out);
        out
    }

    fn norm(&self, b: &B, x: &B::Buf, rows: usize, gain: &B::Weight) -> B::Buf {
        let mut out = b.zeros(rows * self.config.hidden_size);
        b.rmsnorm(x, rows, gain, self.config.rms_norm_eps, &mut out);
        out
    }

    /// The outputs f⁰..f^(K−1) (heads without rows are left out) and what the backward needs.
    fn forward(&self, b: &B, base: &Llama<B>, rec: &Record, a: &Aligned) -> (Vec<B::Buf>, Saved<B>) {
        let (t, h) = (a.len, self.config.hidden_size);
        let features = b.upload(&rec.hidden_state_prenorm);
        let emb = self.embed(b, base, a.head_tokens(0));
        let mut z = self.cell(b, &self.w.ad0, &features, &emb, t);
        let positions: Vec<u32> = (0..t as u32).collect();
        let cos_sin = b.upload(&self.rope.cos_sin(&positions));
        let acts = self.w.block.iter().map(|layer| layer.forward_train(b, &mut z, t, &cos_sin)).collect();
        let s0 = self.norm(b, &z, t, &self.w.clover_norm);
        let mut pre0 = b.zeros(t * h);
        b.matmul(&s0, t, &self.w.head0_fc, &mut pre0);
        b.add_bias(&mut pre0, t, &self.w.head0_bias);
        let mut outs = vec![self.norm(b, &pre0, t, &self.w.head_norm)];
        let mut depths: Vec<Depth<B>> = Vec::new();
        for i in 1..self.clover.num_heads.min(t) {
            let rows = a.rows(i);
            let state_in = b.slice_rows(depths.last().map_or(&s0, |d| &d.state), h, 0, rows);
            let emb_i = self.embed(b, base, a.head_tokens(i));
            let state = self.cell(b, &self.w.ad1, &state_in, &emb_i, rows);
            let (mut pre, mut from_emb) = (b.zeros(rows * h), b.zeros(rows * h));
            b.matmul(&state, rows, &self.w.fc_state, &mut pre);
            b.matmul(&emb_i, rows, &self.w.fc_embed, &mut from_emb);
            b.add(&mut pre, &from_emb);
            b.add_bias(&mut pre, rows, &self.w.fc_bias);
            outs.push(self.norm(b, &pre, rows, &self.w.head_norm));
            depths.push(Depth { state_in, emb: emb_i, state, pre });
        }
        (outs, Saved { features, emb, cos_sin, acts, block_out: z, s0, pre0, depths })
    }

    /// From dL/dfⁱ (consumed, one per head of the forward) to every parameter gradient.
    fn backward(&mut self, b: &B, t: usize, s: &Saved<B>, d_outs: Vec<B::Buf>) {
        let (h, eps, heads) = (self.config.hidden_size, self.config.rms_norm_eps, self.config.num_heads);
        let (w, g) = (&self.w, &mut self.g);
        // dL/dsⁱ[0:T−i−1] from head i+1's AD₁ cell.
        let mut carry: Option<B::Buf> = None;
        let mut d_outs = d_outs;
        for (i, depth) in s.depths.iter().enumerate().rev().map(|(k, d)| (k + 1, d)) {
            let rows = t - i;
            let d_out = d_outs.pop().expect("one output gradient per head");
            let mut d_pre = b.zeros(rows * h);
            b.rmsnorm_backward(&depth.pre, rows, &w.head_norm, eps, &d_out, &mut d_pre, &mut g.head_norm);
            b.bias_backward(&d_pre, rows, &mut g.fc_bias);
            let mut d_state = with_carry(b, rows * h, h, carry.take());
            b.matmul_backward(&depth.state, &d_pre, rows, &w.fc_state, Some(&mut d_state), Some(&mut g.fc_state));
            b.matmul_backward(&depth.emb, &d_pre, rows, &w.fc_embed, None, Some(&mut g.fc_embed));
            let mut d_state_in = b.zeros(rows * h);
            b.clover_cell_backward(
                &w.ad1,
                heads,
                eps,
                &depth.state_in,
                &depth.emb,
                rows,
                &d_state,
                &mut d_state_in,
                None,
                &mut g.ad1,
            );
            carry = Some(d_state_in);
        }

        let d_out = d_outs.pop().expect("head 0's output gradient");
        let mut d_pre = b.zeros(t * h);
        b.rmsnorm_backward(&s.pre0, t, &w.head_norm, eps, &d_out, &mut d_pre, &mut g.head_norm);
        b.bias_backward(&d_pre, t, &mut g.head0_bias);
        let mut d_s0 = with_carry(b, t * h, h, carry);
        b.matmul_backward(&s.s0, &d_pre, t, &w.head0_fc, Some(&mut d_s0), Some(&mut g.head0_fc));
        let mut dz = b.zeros(t * h);
        b.rmsnorm_backward(&s.block_out, t, &w.clover_norm, eps, &d_s0, &mut dz, &mut g.clover_norm);
        for ((layer, acts), lg) in w.block.iter().zip(&s.acts).zip(&mut g.block).rev() {
            layer.backward(b, acts, t, &s.cos_sin, &mut dz, lg);
        }
        // The features are data: their gradient is discarded.
        let mut d_features = b.zeros(t * h);
        b.clover_cell_backward(&w.ad0, heads, eps, &s.features, &s.emb, t, &dz, &mut d_features, None, &mut g.ad0);
    }
}

/// A zeroed gradient of `len` values whose leading rows (all but the last) hold `carry`, the
/// gradient the next depth's cell sent back, if any.
fn with_carry<B: Backend>(b: &B, len: usize, h: usize, carry: Option<B::Buf>) -> B::Buf {
    let mut d = b.zeros(len);
    if let Some(c) = carry {
        let rows: Vec<usize> = (0..len / h - 1).collect();
        b.scatter_add_rows(&mut d, h, &rows, &c);
    }
    d
}

impl<B: Backend> TrainHead<B> for CloverTrainee<B> {
    fn kind(&self) -> DraftKind {
        DraftKind::Clover2
    }

    fn loss_spec(&self) -> &LossSpec {
        &self.loss
    }

    fn set_loss_spec(&mut self, spec: LossSpec) {
        self.loss = spec;
    }

    fn set_weights(&mut self, weights: Vec<B::Weight>) {
        self.w = Self::build(&self.config, &self.clover, weights);
    }

    fn grads(&mut self) -> Vec<&mut B::Buf> {
        let g = &mut self.g;
        let mut out = cell_grads(&mut g.ad0);
        for l in &mut g.block {
            out.extend(layer_grads(l));
        }
        out.extend([&mut g.clover_norm, &mut g.head0_fc, &mut g.head0_bias]);
        out.extend(cell_grads(&mut g.ad1));
        out.extend([&mut g.fc_state, &mut g.fc_embed, &mut g.fc_bias, &mut g.head_norm]);
        out
    }

    fn pass(
        &mut self,
        b: &B,
        base: &Llama<B>,
        lm: &DraftLmHead<B>,
        rec: &Record,
        a: &Aligned,
        scales: &[HeadScale],
        mode: Mode,
        timers: &mut Timers,
    ) -> Vec<HeadSums> {
        let mut sums = vec![HeadSums::default(); self.clover.num_heads];
        if a.len == 0 {
            return sums;
        }
        let wants = match mode {
            Mode::Train { .. } => Wants { grads: true, agreement: false },
            Mode::Eval => Wants { grads: false, agreement: true },
        };
        let (outs, saved) = timers.time(Phase::Forward, || self.forward(b, base, rec, a));
        let (head_sums, grads) = timers.time(Phase::LmHead, || {
            let target = b.upload(&a.target);
            head_losses(b, base, lm, a, &target, &outs, &scales[..outs.len()], wants)
        });
        if wants.grads {
            timers.time(Phase::Backward, || self.backward(b, a.len, &saved, grads));
        }
        sums[..head_sums.len()].clone_from_slice(&head_sums);
        sums
    }
}
