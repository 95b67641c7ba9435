//! A draft head that asks the base model itself (with a fresh forward per node) and then blurs
//! its answer with seeded noise: drafts are often right and sometimes wrong, so tests exercise
//! acceptance at every depth, rejections, and KV compaction of long paths.

use clover_engine::backend::Backend;
use clover_engine::draft::{DraftHead, DraftKind};
use clover_engine::model::{ForwardOutput, Llama, LogitRows, Logits};
use clover_engine::rng::Rng;
use clover_engine::Result;

pub struct OracleHead {
    /// The committed sequence as the head has seen it.
    committed: Vec<u32>,
    /// Token path (after `committed`) of each node of the last drafted level.
    level_paths: Vec<Vec<u32>>,
    noise: f32,
    rng: Rng,
    first_token: u32,
    /// Draft only these tokens (columns of the rows returned), like a reduced draft vocabulary.
    draft_vocab: Option<Vec<u32>>,
}

impl OracleHead {
    /// `first_token`: the prompt's first token (the head is told only about later ones).
    pub fn new(first_token: u32, noise: f32, seed: u64) -> Self {
        OracleHead {
            committed: Vec::new(),
            level_paths: Vec::new(),
            noise,
            rng: Rng::new(seed),
            first_token,
            draft_vocab: None,
        }
    }

    /// Returns logits for `ids` only, as a head with that draft vocabulary does.
    #[allow(dead_code)]
    pub fn with_draft_vocab(self, ids: Vec<u32>) -> Self {
        OracleHead { draft_vocab: Some(ids), ..self }
    }

    fn row<B: Backend>(&mut self, model: &Llama<B>, path: &[u32]) -> Result<Vec<f32>> {
        let seq: Vec<u32> = self.committed.iter().chain(path).copied().collect();
        let mut cache = model.new_cache(seq.len());
        let mut logits = model.prefill(&mut cache, &seq, LogitRows::Last)?.logits;
        for l in logits.iter_mut() {
            *l += self.noise * (2.0 * self.rng.uniform_f32() - 1.0);
        }
        Ok(match &self.draft_vocab {
            Some(ids) => ids.iter().map(|&t| logits[t as usize]).collect(),
            None => logits,
        })
    }

    /// Columns of the rows this head returns.
    fn width<B: Backend>(&self, model: &Llama<B>) -> usize {
        self.draft_vocab.as_ref().map_or(model.config.vocab_size, Vec::len)
    }
}

impl<B: Backend> DraftHead<B> for OracleHead {
    fn kind(&self) -> DraftKind {
        DraftKind::Eagle
    }

    fn max_depth(&self) -> usize {
        8
    }

    fn draft_vocab(&self) -> Option<&[u32]> {
        self.draft_vocab.as_deref()
    }

    fn reset(&mut self) {
        self.committed = vec![self.first_token];
    }

    fn begin(
        &mut self,
        model: &Llama<B>,
        _base: &ForwardOutput<B>,
        _rows: &[usize],
        next_tokens: &[u32],
    ) -> Result<Logits<B>> {
        self.committed.extend_from_slice(next_tokens);
        self.level_paths = vec![Vec::new()];
        let row = self.row(model, &[])?;
        Ok(Logits::from_host(&model.backend, &row, self.width(model)))
    }

    fn expand(&mut self, model: &Llama<B>, parents: &[usize], tokens: &[u32]) -> Result<Logits<B>> {
        let mut rows = Vec::new();
        let mut paths = Vec::new();
        for (&p, &t) in parents.iter().zip(tokens) {
            let mut path = self.level_paths[p].clone();
            path.push(t);
            rows.extend(self.row(model, &path)?);
            paths.push(path);
        }
        self.level_paths = paths;
        Ok(Logits::from_host(&model.backend, &rows, self.width(model)))
    }
}
