//! EAGLE-1 (eagle.md §2, §8): `x = fc([Emb(t_{i+1}) ; f_i]) + b` → one Llama decoder layer with
//! no input norm → `f̂_{i+1}` → the base lm_head. Drafting runs the layer at every tree level over
//! that level's nodes, each attending to the committed pairs and to its own ancestors; those tree
//! entries are discarded at the next step.

use std::path::Path;

use crate::backend::{AttnMask, Backend, KvLayout};
use crate::draft::config::{check_compatible, declared_kind, read_json, refuse_base_model, refuse_unused_layers};
use crate::draft::vocab::DraftLmHead;
use crate::draft::{split_columns, DraftHead, DraftKind};
use crate::error::{Error, Result};
use crate::model::layer::{DecoderLayer, Rope};
use crate::model::{ForwardOutput, KvCache, Llama, Logits, ModelConfig};
use crate::weights::safetensors::SafetensorsFiles;
use crate::weights::HostTensor;

/// EAGLE's layer has no depth limit of its own; this bounds the per-step tree entries.
pub const EAGLE_MAX_DEPTH: usize = 16;
/// Room for tree entries after the committed pairs.
const TREE_SLOTS: usize = 512;

/// The layer's RoPE base, whatever the head config says: the reference builds its rotary
/// embedding with the default base (eagle.md §2, step 3a), and trained checkpoints depend on it.
/// Fresh heads write it into their config (`init-head`), so there the two agree.
pub const EAGLE_ROPE_THETA: f64 = 10000.0;

pub struct EagleHead<B: Backend> {
    pub config: ModelConfig,
    /// `embed_tokens.weight` when the checkpoint has one; else the base model's input embedding.
    embed: Option<B::Weight>,
    /// fc's columns split by input half, so no concatenated input is ever built.
    fc_embed: B::Weight,
    fc_feature: B::Weight,
    fc_bias: B::Weight,
    layer: DecoderLayer<B>,
    /// The base lm_head, or its rows for the head's draft vocabulary.
    lm_head: DraftLmHead<B>,
    rope: Rope,
    cache: KvCache<B>,
    /// Committed pairs in the cache; tree entries live after them.
    pairs: usize,
    /// Outputs f̂ of the last drafted level (the root's alone after `begin`).
    level_states: B::Buf,
    /// Cache slots (relative to `pairs`) of each node of the last level's ancestors, itself last.
    level_paths: Vec<Vec<usize>>,
    level: usize,
}

/// eagle.md §2: fc has a bias unless the head's config says `"bias": false` (the reference's
/// default is true, and EAGLE-1's released configs do not name it).
pub fn fc_has_bias(config: &serde_json::Value, config_path: &Path) -> Result<bool> {
    match config.get("bias") {
        None | Some(serde_json::Value::Null) => Ok(true),
        Some(v) => v.as_bool().ok_or_else(|| Error::format(config_path, "bias", "expected true or false")),
    }
}

impl<B: Backend> EagleHead<B> {
    pub fn load(dir: &Path, base: &Llama<B>) -> Result<Self> {
        let config_path = dir.join("config.json");
        let json = read_json(&config_path)?;
        if let Some(kind) = declared_kind(&json).filter(|k| *k != "eagle") {
            return Err(Error::format(
                &config_path,
                "draft.kind",
                format!("this is a `{kind}` head, not an EAGLE-1 head"),
            ));
        }
        let config = ModelConfig::from_json(&json, &config_path)?;
        check_compatible(&config, &base.config, &config_path)?;
        let files = SafetensorsFiles::open_dir(dir)?;
        refuse_base_model(&files, dir)?;
        if config.num_layers != 1 {
            return Err(Error::format(
                &config_path,
                "num_hidden_layers",
                format!("{}: an EAGLE-1 head has one decoder layer", config.num_layers),
            ));
        }
        let head = Self::from_files(config, &files, base, fc_has_bias(&json, &config_path)?)?;
        refuse_unused_layers(&files, &config_path, "num_hidden_layers", 1)?;
        Ok(head)
    }

    /// `fc_bias`: the checkpoint has `fc.bias` (without it, fc adds nothing).
    pub fn from_files(config: ModelConfig, files: &SafetensorsFiles, base: &Llama<B>, fc_bias: bool) -> Result<Self> {
        let b = &base.backend;
        let h = config.hidden_size;
        let embed = if files.contains("embed_tokens.weight") {
            Some(b.weight(files.get("embed_tokens.weight", &[config.vocab_size, h])?)?)
        } else {
            None
        };
        let fc = files.get("fc.weight", &[h, 2 * h])?;
        let (fc_embed, fc_feature) = split_columns(&fc, h);
        let fc_bias = match fc_bias {
            true => b.weight(files.get("fc.bias", &[h])?)?,
            false if files.contains("fc.bias") => {
                return Err(Error::format(
                    files.path_of("fc.bias").unwrap_or(files.first_path()),
                    "fc.bias",
                    "the head's config.json says \"bias\": false, but the weights hold an fc bias",
                ))
            }
            false => b.weight(HostTensor::from_f32("fc.bias (none)", vec![h], &vec![0.0; h]))?,
        };
        let mut bytes = 0;
        let layer =
            DecoderLayer::load(b, files, "layers.0", config.layer_dims(), config.rms_norm_eps, false, &mut bytes)?;
        let layout = KvLayout {
            n_kv_heads: config.num_kv_heads,
            // One pair per committed base position, plus the tree being drafted: the base's
            // context bounds it, whatever the head's own config says.
            capacity: base.config.max_position_embeddings + TREE_SLOTS,
            head_dim: config.head_dim,
        };
        Ok(EagleHead {
            rope: Rope::plain(EAGLE_ROPE_THETA, config.head_dim),
            cache: KvCache::with_layout(b, 1, layout),
            embed,
            fc_embed: b.weight(fc_embed)?,
            fc_feature: b.weight(fc_feature)?,
            fc_bias,
            layer,
            lm_head: DraftLmHead::full(),
            config,
            pairs: 0,
            level_states: b.zeros(0),
            level_paths: Vec::new(),
            level: 0,
        })
    }

    /// Drafts through `lm_head` (a reduced draft vocabulary) instead of the full base lm_head.
    pub fn with_lm_head(self, lm_head: DraftLmHead<B>) -> Self {
        EagleHead { lm_head, ..self }
    }

    /// Every matrix the head drafts through (fc, the layer, its lm_head rows) stored as Q8_0
    /// (`--draft-weights q8_0`); norms and biases kept.
    pub fn quantize_q8_0(self, base: &Llama<B>) -> Result<Self> {
        let b = &base.backend;
        let q = |w: &B::Weight| b.quantize_q8_0(w);
        Ok(EagleHead {
            fc_embed: q(&self.fc_embed)?,
            fc_feature: q(&self.fc_feature)?,
            layer: self.layer.map_matrices(q)?,
            lm_head: self.lm_head.quantize_q8_0(base)?,
            ..self
        })
    }

    /// x = fc([E[tokens] ; features]) + b for `rows` rows.
    fn fuse(&self, base: &Llama<B>, features: &B::Buf, tokens: &[u32]) -> B::Buf {
        let b = &base.backend;
        let (rows, h) = (tokens.len(), self.config.hidden_size);
        let mut emb = b.zeros(rows * h);
        b.embedding(self.embed.as_ref().unwrap_or(base.embed_tokens()), tokens, &mut emb);
        let (mut x, mut y) = (b.zeros(rows * h), b.zeros(rows * h));
        b.matmul(&emb, rows, &self.fc_embed, &mut x);
        b.matmul(features, rows, &self.fc_feature, &mut y);
        b.add(&mut x, &y);
        b.add_bias(&mut x, rows, &self.fc_bias);
        x
    }
}

impl<B: Backend> DraftHead<B> for EagleHead<B> {
    fn kind(&self) -> DraftKind {
        DraftKind::Eagle
    }

    fn max_depth(&self) -> usize {
        EAGLE_MAX_DEPTH
    }

    fn draft_vocab(&self) -> Option<&[u32]> {
        self.lm_head.ids()
    }

    fn reset(&mut self) {
        self.cache.clear();
        self.pairs = 0;
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
        let h = self.config.hidden_size;
        if self.pairs + rows.len() + TREE_SLOTS > self.cache.capacity() {
            return Err(Error::input("EAGLE head: the draft cache is full (sequence longer than the context)"));
        }
        self.cache.truncate(self.pairs);
        let features = b.gather_rows(&base.postnorm, h, rows);
        let mut x = self.fuse(model, &features, next_tokens);
        let positions: Vec<u32> = (0..rows.len()).map(|i| (self.pairs + i) as u32).collect();
        let cos_sin = b.upload(&self.rope.cos_sin(&positions));
        self.layer.forward(b, &mut x, rows.len(), self.cache.layer(0), &cos_sin, AttnMask::Causal);
        self.cache.advance(rows.len());
        self.pairs += rows.len();
        self.level_states = b.slice_rows(&x, h, rows.len() - 1, 1);
        self.level_paths = vec![Vec::new()];
        self.level = 0;
        Ok(self.lm_head.project(model, &self.level_states, 1))
    }

    fn expand(&mut self, model: &Llama<B>, parents: &[usize], tokens: &[u32]) -> Result<Logits<B>> {
        let b = &model.backend;
        let (n, h) = (tokens.len(), self.config.hidden_size);
        if parents.iter().any(|&p| p >= self.level_paths.len()) || parents.len() != n || n == 0 {
            return Err(Error::input("EAGLE head: a node's parent is not in the previous level"));
        }
        if self.level + 1 > EAGLE_MAX_DEPTH || self.cache.len() + n > self.cache.capacity() {
            return Err(Error::input(format!(
                "EAGLE head: trees deeper than {EAGLE_MAX_DEPTH} levels are not supported"
            )));
        }
        let parent_states = b.gather_rows(&self.level_states, h, parents);
        let mut x = self.fuse(model, &parent_states, tokens);
        let tree_start = self.cache.len() - self.pairs;
        let width = tree_start + n;
        let mut bits = vec![0u8; n * width];
        let mut paths = Vec::with_capacity(n);
        for (i, &p) in parents.iter().enumerate() {
            let mut path = self.level_paths[p].clone();
            path.push(tree_start + i);
            for &slot in &path {
                bits[i * width + slot] = 1;
            }
            paths.push(path);
        }
        self.level += 1;
        let positions = vec![(self.pairs + self.level - 1) as u32; n];
        let cos_sin = b.upload(&self.rope.cos_sin(&positions));
        let mask = AttnMask::Tree { bits: &bits, first_key: self.pairs };
        self.layer.forward(b, &mut x, n, self.cache.layer(0), &cos_sin, mask);
        self.cache.advance(n);
        self.level_paths = paths;
        let logits = self.lm_head.project(model, &x, n);
        self.level_states = x;
        Ok(logits)
    }
}
