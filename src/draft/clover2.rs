//! Clover-2 (clover2.md §2–§5, §10). Per verification cycle, `begin` runs the Attention Decoder
//! AD₀ over the newly committed pairs (pre-norm base feature u_t, embedding of x_{t+1}), then the
//! Augmenting Block (two ordinary Llama layers with their own KV cache, only ever appended), and
//! turns the last row into the state s⁰ and head 0's logits. Each `expand` runs the next head on
//! one tree level: `sⁱ = AD₁(sⁱ⁻¹[parent], E[token])`, `fⁱ = RMSNorm_head(W_c [sⁱ ; eⁱ] + b_c)`.
//! Every head's f goes through the base lm_head, and E, the token embedding, is that same matrix.
//!
//! Tensor names are the reference `Clover2Model` state dict (the frozen `clover_embed_tokens`
//! copy of the lm_head is not stored, and is ignored if present):
//!
//! | name | shape | role |
//! |---|---|---|
//! | `clover_head_mlp_rnn.input_layernorm.weight` | `[H]` | AD₀ query-norm gain |
//! | `clover_head_mlp_rnn.{q,k,v}.weight` / `.bias` | `[H,H]` / `[H]` | AD₀ projections |
//! | `layers.{0,1}.*` | | Augmenting Block: Llama layers with input_layernorm |
//! | `clover_norm.weight` | `[H]` | norm after the block |
//! | `clover_head_mlp.weight` / `.bias` | `[H,H]` / `[H]` | head 0 FC |
//! | `clover_head_mlp_rnn2.*` | as AD₀ | AD₁, shared by heads ≥ 1 |
//! | `clover_head_mlp2.weight` / `.bias` | `[H,2H]` / `[H]` | FC of heads ≥ 1, input `[s ; e]` |
//! | `clover_head_norm.weight` | `[H]` | norm shared by every head |
//!
//! The AD cell's sub-names (`input_layernorm`, `q`, `k`, `v`) are those of the reference's
//! `ResAttentionBlock`.

use std::path::Path;

use crate::backend::{AttnMask, Backend, CloverCellParams, KvLayout};
use crate::draft::config::{
    check_compatible, declared_kind, read_json, refuse_base_model, refuse_unused_layers, CloverConfig,
};
use crate::draft::vocab::DraftLmHead;
use crate::draft::{split_columns, DraftHead, DraftKind};
use crate::error::{Error, Result};
use crate::model::layer::{DecoderLayer, Rope};
use crate::model::{ForwardOutput, KvCache, Llama, Logits, ModelConfig};
use crate::weights::safetensors::SafetensorsFiles;

/// The Augmenting Block's RoPE base, whatever the base model uses: the reference hard-codes it,
/// and trained checkpoints depend on it (clover2.md §4).
pub const CLOVER_ROPE_THETA: f64 = 10000.0;

/// AD₀, before the Augmenting Block.
pub const AD0: &str = "clover_head_mlp_rnn";
/// AD₁, the recurrence of heads ≥ 1.
pub const AD1: &str = "clover_head_mlp_rnn2";
/// An AD cell's tensors under its prefix with their shapes, in `CloverCellParams` field order.
pub fn cell_tensors(h: usize) -> [(&'static str, Vec<usize>); 7] {
    [
        ("input_layernorm.weight", vec![h]),
        ("q.weight", vec![h, h]),
        ("q.bias", vec![h]),
        ("k.weight", vec![h, h]),
        ("k.bias", vec![h]),
        ("v.weight", vec![h, h]),
        ("v.bias", vec![h]),
    ]
}
pub const CLOVER_NORM: &str = "clover_norm.weight";
/// Head 0's FC `[H, H]` (`.weight`, `.bias`).
pub const HEAD0_FC: &str = "clover_head_mlp";
/// The FC of heads ≥ 1, `[H, 2H]` (`.weight`, `.bias`).
pub const HEADS_FC: &str = "clover_head_mlp2";
pub const HEAD_NORM: &str = "clover_head_norm.weight";

pub struct Clover2Head<B: Backend> {
    pub config: ModelConfig,
    pub clover: CloverConfig,
    ad0: CloverCellParams<B::Weight>,
    block: Vec<DecoderLayer<B>>,
    clover_norm: B::Weight,
    head0_fc: B::Weight,
    head0_bias: B::Weight,
    ad1: CloverCellParams<B::Weight>,
    /// W_c's columns split by input half, so `[s ; e]` is never built.
    fc_state: B::Weight,
    fc_embed: B::Weight,
    fc_bias: B::Weight,
    head_norm: B::Weight,
    /// The base lm_head, or its rows for the head's draft vocabulary.
    lm_head: DraftLmHead<B>,
    rope: Rope,
    /// The Augmenting Block's cache: one entry per committed base position, never rolled back.
    stable_kv: KvCache<B>,
    /// States sⁱ of the last drafted level (s⁰ alone after `begin`); `level_rows` of them.
    level_states: B::Buf,
    level_rows: usize,
    /// The head that produced `level_states`.
    level: usize,
}

impl<B: Backend> Clover2Head<B> {
    pub fn load(dir: &Path, base: &Llama<B>) -> Result<Self> {
        let config_path = dir.join("config.json");
        let json = read_json(&config_path)?;
        if let Some(kind) = declared_kind(&json).filter(|k| *k != DraftKind::Clover2.name()) {
            return Err(Error::format(
                &config_path,
                "draft.kind",
                format!("this is a `{kind}` head, not a Clover-2 head"),
            ));
        }
        let config = ModelConfig::from_json(&json, &config_path)?;
        check_compatible(&config, &base.config, &config_path)?;
        let files = SafetensorsFiles::open_dir(dir)?;
        refuse_base_model(&files, dir)?;
        let clover = CloverConfig::from_json(&json, &config_path)?;
        let layers = clover.num_layers;
        let head = Self::from_files(config, clover, &files, base)?;
        refuse_unused_layers(&files, &config_path, "clover.num_layers", layers)?;
        Ok(head)
    }

    pub fn from_files(
        config: ModelConfig,
        clover: CloverConfig,
        files: &SafetensorsFiles,
        base: &Llama<B>,
    ) -> Result<Self> {
        let b = &base.backend;
        let h = config.hidden_size;
        let get = |name: &str, shape: &[usize]| b.weight(files.get(name, shape)?);
        let mut bytes = 0;
        let block = (0..clover.num_layers)
            .map(|l| {
                let prefix = format!("layers.{l}");
                DecoderLayer::load(b, files, &prefix, config.layer_dims(), config.rms_norm_eps, true, &mut bytes)
            })
            .collect::<Result<Vec<_>>>()?;
        let (fc_state, fc_embed) = split_columns(&files.get(&format!("{HEADS_FC}.weight"), &[h, 2 * h])?, h);
        let layout = KvLayout {
            n_kv_heads: config.num_kv_heads,
            capacity: base.config.max_position_embeddings,
            head_dim: config.head_dim,
        };
        Ok(Clover2Head {
            ad0: load_cell(b, files, AD0, h)?,
            block,
            clover_norm: get(CLOVER_NORM, &[h])?,
            head0_fc: get(&format!("{HEAD0_FC}.weight"), &[h, h])?,
            head0_bias: get(&format!("{HEAD0_FC}.bias"), &[h])?,
            ad1: load_cell(b, files, AD1, h)?,
            fc_state: b.weight(fc_state)?,
            fc_embed: b.weight(fc_embed)?,
            fc_bias: get(&format!("{HEADS_FC}.bias"), &[h])?,
            head_norm: get(HEAD_NORM, &[h])?,
            lm_head: DraftLmHead::full(),
            rope: Rope::plain(CLOVER_ROPE_THETA, config.head_dim),
            stable_kv: KvCache::with_layout(b, clover.num_layers, layout),
            level_states: b.zeros(0),
            level_rows: 0,
            level: 0,
            config,
            clover,
        })
    }

    /// Drafts through `lm_head` (a reduced draft vocabulary) instead of the full base lm_head.
    pub fn with_lm_head(self, lm_head: DraftLmHead<B>) -> Self {
        Clover2Head { lm_head, ..self }
    }

    /// Every matrix the head drafts through (cells, block, FCs, its lm_head rows) stored as Q8_0
    /// (`--draft-weights q8_0`); norms and biases kept.
    pub fn quantize_q8_0(self, base: &Llama<B>) -> Result<Self> {
        let b = &base.backend;
        let q = |w: &B::Weight| b.quantize_q8_0(w);
        Ok(Clover2Head {
            ad0: self.ad0.map_matrices(q)?,
            block: self.block.into_iter().map(|l| l.map_matrices(q)).collect::<Result<_>>()?,
            head0_fc: q(&self.head0_fc)?,
            ad1: self.ad1.map_matrices(q)?,
            fc_state: q(&self.fc_state)?,
            fc_embed: q(&self.fc_embed)?,
            lm_head: self.lm_head.quantize_q8_0(base)?,
            ..self
        })
    }

    /// Entries in the Augmenting Block's cache: after every cycle, the number of committed base
    /// positions (the newest root is not one yet).
    pub fn stable_len(&self) -> usize {
        self.stable_kv.len()
    }

    /// E[tokens]: rows of the base lm_head, which the head uses as its token embedding.
    fn embed(&self, model: &Llama<B>, tokens: &[u32]) -> Result<B::Buf> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Error::input(format!(
                "Clover-2 head: token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let b = &model.backend;
        let mut e = b.zeros(tokens.len() * self.config.hidden_size);
        b.embedding(model.lm_head(), tokens, &mut e);
        Ok(e)
    }

    fn cell(
        &self,
        model: &Llama<B>,
        cell: &CloverCellParams<B::Weight>,
        x: &B::Buf,
        y: &B::Buf,
        rows: usize,
    ) -> B::Buf {
        let b = &model.backend;
        let mut out = b.zeros(rows * self.config.hidden_size);
        b.clover_cell(cell, self.config.num_heads, self.config.rms_norm_eps, x, y, rows, &mut out);
        out
    }

    /// logits = lm_head(RMSNorm_head(pre)) for `rows` rows.
    fn head_logits(&self, model: &Llama<B>, pre: &B::Buf, rows: usize) -> Logits<B> {
        let b = &model.backend;
        let mut f = b.zeros(rows * self.config.hidden_size);
        b.rmsnorm(pre, rows, &self.head_norm, self.config.rms_norm_eps, &mut f);
        self.lm_head.project(model, &f, rows)
    }
}

fn load_cell<B: Backend>(
    b: &B,
    files: &SafetensorsFiles,
    prefix: &str,
    h: usize,
) -> Result<CloverCellParams<B::Weight>> {
    let [gain, wq, bq, wk, bk, wv, bv] =
        cell_tensors(h).map(|(name, shape)| b.weight(files.get(&format!("{prefix}.{name}"), &shape)?));
    Ok(CloverCellParams { gain: gain?, wq: wq?, bq: bq?, wk: wk?, bk: bk?, wv: wv?, bv: bv? })
}

impl<B: Backend> DraftHead<B> for Clover2Head<B> {
    fn kind(&self) -> DraftKind {
        DraftKind::Clover2
    }

    fn max_depth(&self) -> usize {
        self.clover.num_heads
    }

    fn draft_vocab(&self) -> Option<&[u32]> {
        self.lm_head.ids()
    }

    fn reset(&mut self) {
        self.stable_kv.clear();
        self.level_rows = 0;
        self.level = 0;
    }

    fn begin(
        &mut self,
        model: &Llama<B>,
        base: &ForwardOutput<B>,
        rows: &[usize],
        next_tokens: &[u32],
    ) -> Result<Logits<B>> {
        let b = &model.backend;
        let (n, h, eps) = (rows.len(), self.config.hidden_size, self.config.rms_norm_eps);
        if n == 0 || next_tokens.len() != n {
            return Err(Error::input("Clover-2 head: begin needs one next token per committed feature row"));
        }
        if self.stable_kv.len() + n > self.stable_kv.capacity() {
            return Err(Error::input("Clover-2 head: the draft cache is full (sequence longer than the context)"));
        }
        let features = b.gather_rows(&base.prenorm, h, rows);
        let emb = self.embed(model, next_tokens)?;
        let mut z = self.cell(model, &self.ad0, &features, &emb, n);
        let past = self.stable_kv.len();
        let positions: Vec<u32> = (past..past + n).map(|p| p as u32).collect();
        let cos_sin = b.upload(&self.rope.cos_sin(&positions));
        for (l, layer) in self.block.iter().enumerate() {
            layer.forward(b, &mut z, n, self.stable_kv.layer(l), &cos_sin, AttnMask::Causal);
        }
        self.stable_kv.advance(n);

        let last = b.slice_rows(&z, h, n - 1, 1);
        let mut s0 = b.zeros(h);
        b.rmsnorm(&last, 1, &self.clover_norm, eps, &mut s0);
        let mut pre = b.zeros(h);
        b.matmul(&s0, 1, &self.head0_fc, &mut pre);
        b.add_bias(&mut pre, 1, &self.head0_bias);
        let logits = self.head_logits(model, &pre, 1);
        self.level_states = s0;
        self.level_rows = 1;
        self.level = 0;
        Ok(logits)
    }

    fn expand(&mut self, model: &Llama<B>, parents: &[usize], tokens: &[u32]) -> Result<Logits<B>> {
        let b = &model.backend;
        let (n, h) = (tokens.len(), self.config.hidden_size);
        if n == 0 || parents.len() != n || parents.iter().any(|&p| p >= self.level_rows) {
            return Err(Error::input("Clover-2 head: a node's parent is not in the previous level"));
        }
        let head = self.level + 1;
        if head >= self.clover.num_heads {
            return Err(Error::input(format!(
                "Clover-2 head: the tree asks for draft level {} but the head has {} heads",
                head + 1,
                self.clover.num_heads
            )));
        }
        let parent_states = b.gather_rows(&self.level_states, h, parents);
        let emb = self.embed(model, tokens)?;
        let states = self.cell(model, &self.ad1, &parent_states, &emb, n);
        let (mut pre, mut from_emb) = (b.zeros(n * h), b.zeros(n * h));
        b.matmul(&states, n, &self.fc_state, &mut pre);
        b.matmul(&emb, n, &self.fc_embed, &mut from_emb);
        b.add(&mut pre, &from_emb);
        b.add_bias(&mut pre, n, &self.fc_bias);
        let logits = self.head_logits(model, &pre, n);
        self.level_states = states;
        self.level_rows = n;
        self.level = head;
        Ok(logits)
    }
}
