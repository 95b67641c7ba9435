//! The Llama-family base model: prefill, decode and tree verification are one forward over a
//! block of new tokens at given positions with a causal or tree mask. Besides logits it returns,
//! per position, the last layer's output before the final RMSNorm (Clover-2's input) and after
//! it (EAGLE-1's input and the lm_head input).

use std::path::Path;

use crate::backend::{AttnMask, Backend};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::kv_cache::KvCache;
use crate::model::layer::{DecoderLayer, Rope};
use crate::model::logits::Logits;
use crate::weights::safetensors::SafetensorsFiles;

pub struct Llama<B: Backend> {
    pub config: ModelConfig,
    pub backend: B,
    embed: B::Weight,
    layers: Vec<DecoderLayer<B>>,
    norm: B::Weight,
    /// None when the embedding is tied.
    lm_head: Option<B::Weight>,
    rope: Rope,
    weight_bytes: usize,
}

/// Which rows of a forward need logits: projecting to a 49k vocabulary costs as much as a few
/// layers, so prefill asks only for the last row unless the caller scores the whole text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    All,
    Last,
    None,
}

pub struct ForwardOutput<B: Backend> {
    /// `[n_logit_rows, vocab]`.
    pub logits: Vec<f32>,
    /// `[rows, hidden]`: last decoder layer output, before the final RMSNorm.
    pub prenorm: B::Buf,
    /// `[rows, hidden]`: after the final RMSNorm.
    pub postnorm: B::Buf,
}

impl<B: Backend> Llama<B> {
    /// Loads `dir/config.json` and its safetensors, keeping weights in their stored dtype.
    pub fn load(dir: &Path, backend: B) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?.with_generation_config(dir)?;
        let files = SafetensorsFiles::open_dir(dir)?;
        Self::from_files(config, &files, backend)
    }

    pub fn from_files(config: ModelConfig, files: &SafetensorsFiles, backend: B) -> Result<Self> {
        let c = &config;
        if let Some(limit) = backend.max_head_dim().filter(|&limit| c.head_dim > limit) {
            return Err(Error::input(format!(
                "config.json: head_dim {} is above the {limit} that the {} backend's attention takes",
                c.head_dim,
                backend.name()
            )));
        }
        let h = c.hidden_size;
        let mut weight_bytes = 0;
        let mut get = |name: &str, shape: &[usize]| -> Result<B::Weight> {
            let t = files.get(name, shape)?;
            weight_bytes += t.bytes.as_slice().len();
            backend.weight(t)
        };
        let embed = get("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let norm = get("model.norm.weight", &[h])?;
        let lm_head = if c.tie_word_embeddings && !files.contains("lm_head.weight") {
            None
        } else {
            Some(get("lm_head.weight", &[c.vocab_size, h])?)
        };
        let dims = config.layer_dims();
        let layers = (0..c.num_layers)
            .map(|l| {
                DecoderLayer::load(
                    &backend,
                    files,
                    &format!("model.layers.{l}"),
                    dims,
                    c.rms_norm_eps,
                    true,
                    &mut weight_bytes,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // Everything under `model.` is the model's own: a tensor left over means the config
        // describes another model than the weights, which would otherwise run silently wrong.
        let unused: Vec<&str> = files.unused().into_iter().filter(|n| n.starts_with("model.")).collect();
        if let Some(first) = unused.first() {
            return Err(Error::format(
                files.path_of(first).unwrap_or(files.first_path()),
                *first,
                format!(
                    "not used by the config ({} tensors are not; it has num_hidden_layers {}, q/k/v biases only \
                     with attention_bias: true, no MLP or output biases): the config does not describe these weights",
                    unused.len(),
                    c.num_layers
                ),
            ));
        }
        let rope = Rope { inv_freq: config.rope_inv_freq() };
        Ok(Llama { config, backend, embed, layers, norm, lm_head, rope, weight_bytes })
    }
    /// Bytes of weights one decode step streams (every matrix once; the embedding rows read are
    /// negligible, the lm_head is counted even when tied).
    pub fn weight_bytes_per_token(&self) -> usize {
        self.weight_bytes
    }

    pub fn lm_head(&self) -> &B::Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    pub fn embed_tokens(&self) -> &B::Weight {
        &self.embed
    }

    pub fn new_cache(&self, capacity: usize) -> KvCache<B> {
        KvCache::new(&self.backend, &self.config, capacity.min(self.config.max_position_embeddings))
    }

    /// Plain causal forward of `tokens` appended after the cache.
    pub fn prefill(&self, cache: &mut KvCache<B>, tokens: &[u32], logits: LogitRows) -> Result<ForwardOutput<B>> {
        let start = cache.len() as u32;
        let positions: Vec<u32> = (0..tokens.len() as u32).map(|i| start + i).collect();
        self.forward(cache, tokens, &positions, AttnMask::Causal, logits)
    }

    pub fn decode(&self, cache: &mut KvCache<B>, token: u32) -> Result<ForwardOutput<B>> {
        self.prefill(cache, &[token], LogitRows::Last)
    }

    /// One forward over a candidate tree written after the cache: node i (root first) sits at
    /// position `len + depths[i]` and attends to the whole prefix and to the nodes marked in row
    /// i of the `N × N` ancestor mask. Returns both features for every node and no logits: the
    /// caller projects the rows verification reaches (`spec::node_logits`), then keeps the
    /// accepted path with `KvCache::compact`.
    pub fn verify_tree(
        &self,
        cache: &mut KvCache<B>,
        tokens: &[u32],
        depths: &[usize],
        ancestor_mask: &[u8],
    ) -> Result<ForwardOutput<B>> {
        let n = tokens.len();
        if depths.len() != n || ancestor_mask.len() != n * n {
            return Err(Error::input(format!("verify_tree: {n} tokens need {n} depths and an {n}×{n} mask")));
        }
        let base = cache.len();
        let positions: Vec<u32> = depths.iter().map(|&d| (base + d) as u32).collect();
        let mask = AttnMask::Tree { bits: ancestor_mask, first_key: base };
        self.forward(cache, tokens, &positions, mask, LogitRows::None)
    }

    /// One forward over new tokens written at cache slots `len..len + rows`, at `positions`,
    /// attending to the whole cached prefix and to each other through `mask`.
    pub fn forward(
        &self,
        cache: &mut KvCache<B>,
        tokens: &[u32],
        positions: &[u32],
        mask: AttnMask,
        logit_rows: LogitRows,
    ) -> Result<ForwardOutput<B>> {
        self.check_input(cache, tokens, positions)?;
        let (c, b) = (&self.config, &self.backend);
        let rows = tokens.len();
        let h = c.hidden_size;
        let cos_sin = b.upload(&self.rope.cos_sin(positions));
        let mut x = b.zeros(rows * h);
        b.embedding(&self.embed, tokens, &mut x);
        for (l, layer) in self.layers.iter().enumerate() {
            layer.forward(b, &mut x, rows, cache.layer(l), &cos_sin, mask);
        }
        cache.advance(rows);
        let mut postnorm = b.zeros(rows * h);
        b.rmsnorm(&x, rows, &self.norm, c.rms_norm_eps, &mut postnorm);
        let logits = self.logits(&postnorm, rows, logit_rows);
        Ok(ForwardOutput { logits, prenorm: x, postnorm })
    }

    /// lm_head(x) for `rows` rows of already-normalised features: `[rows, vocab]`.
    pub fn project(&self, x: &B::Buf, rows: usize) -> Vec<f32> {
        self.project_rows(x, rows).to_host(&self.backend)
    }

    /// lm_head(x) for `rows` rows of already-normalised features, left on the backend.
    pub fn project_rows(&self, x: &B::Buf, rows: usize) -> Logits<B> {
        Logits::project(&self.backend, x, rows, self.lm_head(), self.config.vocab_size)
    }

    /// The next-token logits of the last of `rows` rows of post-norm features, left on the
    /// backend (a forward run with `LogitRows::None`, then this: the decoding loops pick from it).
    pub fn last_logits(&self, postnorm: &B::Buf, rows: usize) -> Logits<B> {
        let last = self.backend.slice_rows(postnorm, self.config.hidden_size, rows - 1, 1);
        self.project_rows(&last, 1)
    }

    /// Projects the chosen rows of post-norm features to the vocabulary.
    pub fn logits(&self, postnorm: &B::Buf, rows: usize, which: LogitRows) -> Vec<f32> {
        let b = &self.backend;
        let h = self.config.hidden_size;
        let (first, n) = match which {
            LogitRows::All => (0, rows),
            LogitRows::Last => (rows - 1, 1),
            LogitRows::None => return Vec::new(),
        };
        let selected = if n == rows { None } else { Some(b.slice_rows(postnorm, h, first, n)) };
        self.project(selected.as_ref().unwrap_or(postnorm), n)
    }

    fn check_input(&self, cache: &KvCache<B>, tokens: &[u32], positions: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::input("forward: no tokens"));
        }
        if positions.len() != tokens.len() {
            return Err(Error::input("forward: one position per token is required"));
        }
        if cache.len() + tokens.len() > cache.capacity() {
            return Err(Error::input(format!(
                "context full: {} cached + {} new tokens exceed the context of {} tokens",
                cache.len(),
                tokens.len(),
                cache.capacity()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(Error::input(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        Ok(())
    }
}
