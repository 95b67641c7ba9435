//! The Clover top-p tree (clover2.md §11), grown one depth at a time.

use super::candidates::{best_indices, check_rows, top_p_candidates};
use super::dynamic::{DynamicTree, Frontier, TreeBuilder};
use super::{DraftMask, NodeId};
use crate::error::{Error, Result};

/// Clover top-p tree parameters (clover2.md §11).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CloverTreeParams {
    /// Draft nodes, root excluded.
    pub budget: usize,
    pub top_p: f32,
    /// Drop a candidate whose probability is below `ratio · max q` of its row.
    pub ratio: f32,
    pub max_depth: usize,
}

impl Default for CloverTreeParams {
    /// Budget and top_p are the reference defaults; ratio and depth follow clover2.md §11.
    fn default() -> Self {
        CloverTreeParams { budget: 20, top_p: 0.95, ratio: 0.25, max_depth: 5 }
    }
}

/// Grows a Clover top-p tree one depth at a time; the caller runs the draft head between levels.
#[derive(Debug)]
pub struct CloverTreeExpander {
    params: CloverTreeParams,
    vocab_size: usize,
    tree: TreeBuilder,
    joint: Vec<f32>,
    frontier: Vec<NodeId>,
    remaining: usize,
    depth: usize,
    masks: DraftMask,
}

struct CloverCandidate {
    slot: usize,
    token: u32,
    rank: usize,
    q: f32,
    joint: f32,
}

impl CloverTreeExpander {
    /// Ranks index the full-vocabulary descending order, so the row width is `vocab_size`.
    pub fn new(root_token: u32, vocab_size: usize, params: CloverTreeParams) -> Result<Self> {
        let CloverTreeParams { budget, top_p, ratio, max_depth } = params;
        if budget == 0 || max_depth == 0 {
            return Err(Error::input("clover tree: budget and max_depth must be at least 1"));
        }
        let valid_top_p = top_p > 0.0 && top_p <= 1.0;
        if !valid_top_p || !(0.0..=1.0).contains(&ratio) {
            let msg = format!("clover tree: need 0 < top_p <= 1 and 0 <= ratio <= 1, got {top_p}, {ratio}");
            return Err(Error::input(msg));
        }
        Ok(CloverTreeExpander {
            params,
            vocab_size,
            tree: TreeBuilder::new(root_token, vocab_size)?,
            joint: vec![1.0],
            frontier: vec![0],
            remaining: budget,
            depth: 0,
            masks: DraftMask::default(),
        })
    }

    pub fn is_done(&self) -> bool {
        self.frontier.is_empty()
    }

    /// `rows[i]` is the draft's full-vocabulary distribution q for the i-th frontier node (the
    /// root first). Returns the nodes to run the next head on; empty once the tree is complete.
    pub fn expand_level<R: AsRef<[f32]>>(&mut self, rows: &[R]) -> Result<Frontier> {
        check_rows("clover tree", rows, self.frontier.len(), Some(self.vocab_size))?;
        let mut cands = Vec::new();
        for (slot, (&parent, row)) in self.frontier.iter().zip(rows).enumerate() {
            let top = top_p_candidates(row.as_ref(), self.params.top_p, self.params.ratio);
            for (rank, (token, q)) in top.into_iter().enumerate() {
                cands.push(CloverCandidate { slot, token, rank, q, joint: self.joint[parent] * q });
            }
        }
        let kept = best_indices(cands.iter().map(|c| c.joint), self.remaining);
        let mut frontier = Frontier::default();
        let mut nodes = Vec::with_capacity(kept.len());
        for c in kept.iter().map(|&i| &cands[i]) {
            nodes.push(self.tree.push(self.frontier[c.slot], c.token, c.rank, c.q));
            self.joint.push(c.joint);
            frontier.tokens.push(c.token);
            frontier.parent_slots.push(c.slot);
        }
        self.depth += 1;
        self.remaining -= nodes.len();
        if self.remaining == 0 || self.depth == self.params.max_depth || nodes.is_empty() {
            self.frontier.clear();
            return Ok(Frontier::default());
        }
        self.frontier = nodes;
        (frontier.mask, frontier.mask_cols) = self.masks.push_level(&frontier.parent_slots);
        Ok(frontier)
    }

    pub fn finish(self) -> DynamicTree {
        self.tree.build()
    }
}
