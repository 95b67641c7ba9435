//! Training EAGLE-1 (eagle.md §2, §3, §5), forward and backward side by side. Per record:
//! `x = fc_e·E[ids'] + fc_f·(h + noise) + b` → the decoder layer without input norm → f̂, with
//! h the post-norm features of positions 0..T, ids' the tokens shifted by one (the alignment of
//! `align.rs`), E the base model's frozen input embedding. f̂ is head 0 of the shared losses:
//! 1.0·SmoothL1(f̂, target) + 0.1·softCE(lm_head f̂, softmax(lm_head target)), / (Σ mask + 1e-5).

use crate::backend::Backend;
use crate::draft::eagle::EAGLE_ROPE_THETA;
use crate::draft::vocab::DraftLmHead;
use crate::draft::DraftKind;
use crate::model::layer::{DecoderLayer, LayerActs, LayerGrads, Rope};
use crate::model::{Llama, ModelConfig};
use crate::rng::Rng;
use crate::train::align::Aligned;
use crate::train::blocks::{layer_grads, layer_specs, layer_weights, InOrder};
use crate::train::head::{Mode, TrainHead};
use crate::train::losses::{head_losses, HeadScale, HeadSums, LossSpec, Wants};
use crate::train::params::ParamSpec;
use crate::train::shards::Record;
use crate::train::timers::{Phase, Timers};

/// The trained tensors: `fc.weight` as its embedding and feature halves, `fc.bias`, `layers.0.*`.
pub fn eagle_specs(c: &ModelConfig) -> Vec<ParamSpec> {
    let h = c.hidden_size;
    let mut s = vec![
        ParamSpec::column_block("fc.weight", vec![h, 2 * h], 0, 2),
        ParamSpec::column_block("fc.weight", vec![h, 2 * h], 1, 2),
        ParamSpec::whole("fc.bias", vec![h]),
    ];
    s.extend(layer_specs("layers.0", c.layer_dims(), false));
    s
}

/// eagle.md §5, following the reference code: `(U[0,1) − 0.5)·0.2·512/seq_len` added to every
/// element of the input features (±0.1 at 512 positions), never to the target.
pub fn add_noise(features: &mut [f32], seq_len: usize, rng: &mut Rng) {
    let scale = 0.2 * 512.0 / seq_len.max(1) as f32;
    for v in features {
        *v += (rng.uniform_f32() - 0.5) * scale;
    }
}

struct Weights<B: Backend> {
    fc_embed: B::Weight,
    fc_feature: B::Weight,
    fc_bias: B::Weight,
    layer: DecoderLayer<B>,
}

struct Grads<B: Backend> {
    fc_embed: B::Buf,
    fc_feature: B::Buf,
    fc_bias: B::Buf,
    layer: LayerGrads<B>,
}

pub struct EagleTrainee<B: Backend> {
    config: ModelConfig,
    loss: LossSpec,
    rope: Rope,
    w: Weights<B>,
    g: Grads<B>,
}

impl<B: Backend> EagleTrainee<B> {
    /// `weights` in the order of `eagle_specs(&config)`.
    pub fn new(b: &B, config: ModelConfig, weights: Vec<B::Weight>) -> Self {
        let w = Self::build(&config, weights);
        let h = config.hidden_size;
        let g = Grads {
            fc_embed: b.zeros(h * h),
            fc_feature: b.zeros(h * h),
            fc_bias: b.zeros(h),
            layer: LayerGrads::zeros(b, &w.layer),
        };
        EagleTrainee { rope: Rope::plain(EAGLE_ROPE_THETA, config.head_dim), loss: LossSpec::eagle(), config, w, g }
    }

    fn build(c: &ModelConfig, weights: Vec<B::Weight>) -> Weights<B> {
        let mut w = InOrder::new(weights);
        Weights {
            fc_embed: w.next_item(),
            fc_feature: w.next_item(),
            fc_bias: w.next_item(),
            layer: layer_weights(&mut w, c.layer_dims(), c.rms_norm_eps, false),
        }
    }
}

/// What the forward keeps for the backward.
struct Saved<B: Backend> {
    emb: B::Buf,
    features: B::Buf,
    cos_sin: B::Buf,
    acts: LayerActs<B>,
}

impl<B: Backend> EagleTrainee<B> {
    fn forward(
        &self,
        b: &B,
        base: &Llama<B>,
        rec: &Record,
        a: &Aligned,
        noise: Option<&mut Rng>,
    ) -> (B::Buf, Saved<B>) {
        let (t, h) = (a.len, self.config.hidden_size);
        let mut features = rec.hidden_state.clone();
        if let Some(rng) = noise {
            add_noise(&mut features, t, rng);
        }
        let features = b.upload(&features);
        let mut emb = b.zeros(t * h);
        b.embedding(base.embed_tokens(), &a.next_ids, &mut emb);
        let (mut x, mut from_features) = (b.zeros(t * h), b.zeros(t * h));
        b.matmul(&emb, t, &self.w.fc_embed, &mut x);
        b.matmul(&features, t, &self.w.fc_feature, &mut from_features);
        b.add(&mut x, &from_features);
        b.add_bias(&mut x, t, &self.w.fc_bias);
        let positions: Vec<u32> = (0..t as u32).collect();
        let cos_sin = b.upload(&self.rope.cos_sin(&positions));
        let acts = self.w.layer.forward_train(b, &mut x, t, &cos_sin);
        (x, Saved { emb, features, cos_sin, acts })
    }

    /// From dL/df̂ (consumed) to every parameter gradient.
    fn backward(&mut self, b: &B, t: usize, s: &Saved<B>, mut dx: B::Buf) {
        self.w.layer.backward(b, &s.acts, t, &s.cos_sin, &mut dx, &mut self.g.layer);
        b.bias_backward(&dx, t, &mut self.g.fc_bias);
        b.matmul_backward(&s.emb, &dx, t, &self.w.fc_embed, None, Some(&mut self.g.fc_embed));
        b.matmul_backward(&s.features, &dx, t, &self.w.fc_feature, None, Some(&mut self.g.fc_feature));
    }
}

impl<B: Backend> TrainHead<B> for EagleTrainee<B> {
    fn kind(&self) -> DraftKind {
        DraftKind::Eagle
    }

    fn loss_spec(&self) -> &LossSpec {
        &self.loss
    }

    fn set_loss_spec(&mut self, spec: LossSpec) {
        self.loss = spec;
    }

    fn set_weights(&mut self, weights: Vec<B::Weight>) {
        self.w = Self::build(&self.config, weights);
    }

    fn grads(&mut self) -> Vec<&mut B::Buf> {
        let g = &mut self.g;
        let mut out = vec![&mut g.fc_embed, &mut g.fc_feature, &mut g.fc_bias];
        out.extend(layer_grads(&mut g.layer));
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
        if a.len == 0 {
            return vec![HeadSums::default()];
        }
        let (noise, wants) = match mode {
            Mode::Train { noise } => (Some(noise), Wants { grads: true, agreement: false }),
            Mode::Eval => (None, Wants { grads: false, agreement: true }),
        };
        let (out, saved) = timers.time(Phase::Forward, || self.forward(b, base, rec, a, noise));
        let (sums, mut grads) = timers.time(Phase::LmHead, || {
            let target = b.upload(&a.target);
            head_losses(b, base, lm, a, &target, std::slice::from_ref(&out), scales, wants)
        });
        if let Some(d_out) = grads.pop() {
            timers.time(Phase::Backward, || self.backward(b, a.len, &saved, d_out));
        }
        sums
    }
}
