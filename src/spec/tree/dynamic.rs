//! A tree chosen at run time: built node by node, breadth-first, and the frontier of nodes the
//! draft must run next.

use super::{check_row_width, NodeId, TreeBuffers};
use crate::error::{Error, Result};

/// A tree chosen at run time, with the token and draft probability of every node.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicTree {
    buffers: TreeBuffers,
    tokens: Vec<u32>,
    draft_probs: Vec<f32>,
    budget_ranks: Option<Vec<usize>>,
}

impl DynamicTree {
    pub fn buffers(&self) -> &TreeBuffers {
        &self.buffers
    }

    /// Node tokens in node order; node 0 is the root.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Each node's probability under the draft row of its parent (1 for the root), which the
    /// deterministic-draft acceptance rule needs (eagle.md §11.3).
    pub fn draft_probs(&self) -> &[f32] {
        &self.draft_probs
    }

    /// EAGLE-2 trees: the order in which the rerank admitted each node (root 0, then 1, 2, …), so
    /// the tree of a smaller budget B is exactly the nodes of rank ≤ B. `--tree-budget auto`
    /// counts accepted nodes by rank to predict τ at every smaller budget from one run.
    pub fn budget_ranks(&self) -> Option<&[usize]> {
        self.budget_ranks.as_deref()
    }

    /// The EAGLE-2 expander's admission order (see `budget_ranks`), one entry per node.
    pub(super) fn with_budget_ranks(self, ranks: Vec<usize>) -> Self {
        debug_assert_eq!(ranks.len(), self.tokens.len(), "one budget rank per node");
        DynamicTree { budget_ranks: Some(ranks), ..self }
    }
}

/// Builds a dynamic tree node by node, breadth-first.
#[derive(Debug, Clone)]
pub struct TreeBuilder {
    parents: Vec<Option<NodeId>>,
    ranks: Vec<usize>,
    depths: Vec<usize>,
    tokens: Vec<u32>,
    draft_probs: Vec<f32>,
    row_width: usize,
}

impl TreeBuilder {
    /// `row_width` bounds the ranks (the width of the rows they were taken from).
    pub fn new(root_token: u32, row_width: usize) -> Result<Self> {
        check_row_width("row width", row_width)?;
        Ok(Self::with_root(root_token, row_width))
    }

    pub(super) fn with_root(root_token: u32, row_width: usize) -> Self {
        TreeBuilder {
            parents: vec![None],
            ranks: vec![0],
            depths: vec![0],
            tokens: vec![root_token],
            draft_probs: vec![1.0],
            row_width,
        }
    }

    /// Nodes must come in node order: by depth, then parent, then rank (gaps in rank allowed).
    pub fn add(&mut self, parent: NodeId, token: u32, rank: usize, draft_prob: f32) -> Result<NodeId> {
        let Some(&parent_depth) = self.depths.get(parent) else {
            return Err(Error::input(format!("tree node parent {parent} does not exist yet")));
        };
        if rank >= self.row_width {
            let msg = format!("tree node rank {rank} is not below the row width {}", self.row_width);
            return Err(Error::input(msg));
        }
        let last = self.parents.len() - 1;
        let last_key = (self.depths[last], self.parents[last].unwrap_or(0), self.ranks[last]);
        if (parent_depth + 1, parent, rank) <= last_key {
            let msg = format!(
                "tree node (parent {parent}, rank {rank}) added out of breadth-first order \
                 (after parent {}, rank {})",
                last_key.1, last_key.2
            );
            return Err(Error::input(msg));
        }
        Ok(self.push(parent, token, rank, draft_prob))
    }

    pub(super) fn push(&mut self, parent: NodeId, token: u32, rank: usize, draft_prob: f32) -> NodeId {
        self.parents.push(Some(parent));
        self.ranks.push(rank);
        self.depths.push(self.depths[parent] + 1);
        self.tokens.push(token);
        self.draft_probs.push(draft_prob);
        self.parents.len() - 1
    }

    pub fn build(self) -> DynamicTree {
        DynamicTree {
            buffers: TreeBuffers::new(self.parents, self.ranks, self.row_width),
            tokens: self.tokens,
            draft_probs: self.draft_probs,
            budget_ranks: None,
        }
    }
}

/// What the draft must run next: one entry per node to expand, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Frontier {
    pub tokens: Vec<u32>,
    /// Index of each entry's parent in the previous frontier; 0 (the root) on the first level.
    pub parent_slots: Vec<usize>,
    /// `tokens.len() × mask_cols`, row-major: self and ancestors among every entry forwarded so far.
    pub mask: Vec<u8>,
    pub mask_cols: usize,
}

impl Frontier {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}
