//! The base model's logits of verified tree nodes, projected to the vocabulary only when needed.
//!
//! Verification reads the rows of the nodes it walks through: the root and each accepted node,
//! about τ rows, whatever the tree's size. On the default model the lm_head is 49k × 576, so
//! projecting all 26 rows of a static tree costs about as much as 10 one-row projections: almost
//! all of it wasted. The step projects the tree's main chain (the root, its first child, that
//! child's first child, …: the likeliest accepted path, as children come in rank order) in one
//! call, and any other node on first use. The matmul gives a row the same bits whatever else is
//! in the call, so these logits are exactly the ones a whole-tree projection would have given.

use crate::backend::Backend;
use crate::model::Llama;
use crate::spec::verify::BaseRows;

pub struct NodeLogits<'a, B: Backend> {
    model: &'a Llama<B>,
    /// `[nodes, hidden]` final-norm features of the verified tree, on the host.
    features: Vec<f32>,
    rows: Vec<Option<Vec<f32>>>,
    projected: usize,
}

impl<'a, B: Backend> NodeLogits<'a, B> {
    /// For a tree of `nodes` nodes whose final-norm features are `postnorm` (`[nodes, hidden]`).
    pub fn new(model: &'a Llama<B>, postnorm: &B::Buf, nodes: usize) -> Self {
        let features = model.backend.download(postnorm);
        debug_assert_eq!(features.len(), nodes * model.config.hidden_size);
        NodeLogits { model, features, rows: vec![None; nodes], projected: 0 }
    }

    /// Projects the rows of `nodes` not projected yet, in one call.
    pub fn project(&mut self, nodes: &[usize]) {
        let h = self.model.config.hidden_size;
        let todo: Vec<usize> = nodes.iter().copied().filter(|&n| self.rows[n].is_none()).collect();
        if todo.is_empty() {
            return;
        }
        let x: Vec<f32> = todo.iter().flat_map(|&n| &self.features[n * h..(n + 1) * h]).copied().collect();
        let logits = self.model.project(&self.model.backend.upload(&x), todo.len());
        let vocab = self.model.config.vocab_size;
        for (&n, row) in todo.iter().zip(logits.chunks_exact(vocab)) {
            self.rows[n] = Some(row.to_vec());
        }
        self.projected += todo.len();
    }

    /// Rows projected so far.
    pub fn projected(&self) -> usize {
        self.projected
    }
}

impl<B: Backend> BaseRows for NodeLogits<'_, B> {
    fn row(&mut self, node: usize) -> &[f32] {
        self.project(&[node]);
        self.rows[node].as_deref().expect("projected above")
    }
}

/// The root and, from each node, its first child, down to a leaf.
pub fn main_chain(children: impl Fn(usize) -> Option<usize>) -> Vec<usize> {
    let mut chain = vec![0];
    while let Some(c) = children(chain[chain.len() - 1]) {
        chain.push(c);
    }
    chain
}
