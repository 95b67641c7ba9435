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
use crate::model::{Llama, Logits};
use crate::spec::verify::BaseRows;

pub struct NodeLogits<'a, B: Backend> {
    model: &'a Llama<B>,
    /// `[nodes, hidden]` final-norm features of the verified tree, where the forward left them.
    features: &'a B::Buf,
    /// Each projection call's rows, left on the backend.
    groups: Vec<Logits<B>>,
    /// Per node: (group, row in it) once projected.
    at: Vec<Option<(usize, usize)>>,
    argmax: Vec<Option<usize>>,
    /// Per group: its rows on the host, brought there on the first `row` asked of it.
    host: Vec<Option<Vec<f32>>>,
    projected: usize,
}

impl<'a, B: Backend> NodeLogits<'a, B> {
    /// For a tree of `nodes` nodes whose final-norm features are `postnorm` (`[nodes, hidden]`).
    pub fn new(model: &'a Llama<B>, postnorm: &'a B::Buf, nodes: usize) -> Self {
        NodeLogits {
            model,
            features: postnorm,
            groups: Vec::new(),
            at: vec![None; nodes],
            argmax: vec![None; nodes],
            host: Vec::new(),
            projected: 0,
        }
    }

    /// Projects the rows of `nodes` not projected yet, in one call.
    pub fn project(&mut self, nodes: &[usize]) {
        let todo: Vec<usize> = nodes.iter().copied().filter(|&n| self.at[n].is_none()).collect();
        if todo.is_empty() {
            return;
        }
        let b = &self.model.backend;
        let x = b.gather_rows(self.features, self.model.config.hidden_size, &todo);
        for (i, &n) in todo.iter().enumerate() {
            self.at[n] = Some((self.groups.len(), i));
        }
        self.groups.push(self.model.project_rows(&x, todo.len()));
        self.host.push(None);
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
        let (g, i) = self.at[node].expect("projected above");
        let group = &self.groups[g];
        let vocab = group.width();
        let rows = self.host[g].get_or_insert_with(|| group.to_host(&self.model.backend));
        &rows[i * vocab..(i + 1) * vocab]
    }

    /// Picked on the backend for the whole group the node was projected in (the main chain's
    /// argmaxes come in one call); the row itself stays there.
    fn argmax(&mut self, node: usize) -> usize {
        if self.argmax[node].is_none() {
            self.project(&[node]);
            let (g, _) = self.at[node].expect("projected above");
            let picks = self.groups[g].argmax(&self.model.backend);
            for (n, at) in self.at.iter().enumerate() {
                if let Some((gn, i)) = at {
                    if *gn == g {
                        self.argmax[n] = Some(picks[*i] as usize);
                    }
                }
            }
        }
        self.argmax[node].expect("picked above")
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
