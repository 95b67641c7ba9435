//! The base model's KV cache: one preallocated key and value buffer per layer and one committed
//! length. Tree verification appends a whole tree; compaction then keeps the accepted path only.

use crate::backend::{Backend, KvLayout};
use crate::model::config::ModelConfig;
use crate::model::layer::LayerCache;

pub struct KvCache<B: Backend> {
    pub keys: Vec<B::Buf>,
    pub values: Vec<B::Buf>,
    pub layout: KvLayout,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(backend: &B, config: &ModelConfig, capacity: usize) -> Self {
        let layout = KvLayout { n_kv_heads: config.num_kv_heads, capacity, head_dim: config.head_dim };
        Self::with_layout(backend, config.num_layers, layout)
    }

    pub fn with_layout(backend: &B, layers: usize, layout: KvLayout) -> Self {
        let size = layout.n_kv_heads * layout.capacity * layout.head_dim;
        KvCache {
            keys: (0..layers).map(|_| backend.zeros(size)).collect(),
            values: (0..layers).map(|_| backend.zeros(size)).collect(),
            layout,
            len: 0,
        }
    }

    /// The cache of layer `l`, with new rows going after the current length.
    pub fn layer(&mut self, l: usize) -> LayerCache<'_, B> {
        LayerCache { keys: &mut self.keys[l], values: &mut self.values[l], layout: self.layout, past: self.len }
    }

    /// Slots holding committed (or just-appended) positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.layout.capacity
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets every slot from `len` on (a draft head's per-step tree entries).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Records that `rows` entries were written after the current length.
    pub fn advance(&mut self, rows: usize) {
        self.len += rows;
    }

    /// Keeps `base + keep[j]` at slot `base + j` for every j and sets the length to
    /// `base + keep.len()`: the accepted path of a verified tree written at `base`. `keep` must
    /// be increasing (true for any root-to-leaf path), so no move overwrites a slot still needed.
    pub fn compact(&mut self, backend: &B, base: usize, keep: &[usize]) {
        let moves: Vec<(usize, usize)> = keep.iter().enumerate().map(|(j, &k)| (base + k, base + j)).collect();
        for l in 0..self.keys.len() {
            backend.kv_move(&mut self.keys[l], self.layout, &moves);
            backend.kv_move(&mut self.values[l], self.layout, &moves);
        }
        self.len = base + keep.len();
    }
}
