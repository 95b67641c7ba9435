//! The EAGLE-2 tree (eagle.md §12): top-k by cumulative log-probability per level, every
//! candidate recorded, then all reranked into the final tree.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::candidates::{best_indices, check_rows, top_k_candidates};
use super::dynamic::{DynamicTree, Frontier, TreeBuilder};
use super::{check_row_width, DraftMask};
use crate::error::{Error, Result};

/// EAGLE-2 dynamic tree parameters (eagle.md §12).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eagle2Params {
    pub top_k: usize,
    /// Levels of draft nodes; the reference's `depth = 5` is 6 levels.
    pub max_depth: usize,
    /// Verified tokens, root included.
    pub total_tokens: usize,
}

impl Default for Eagle2Params {
    fn default() -> Self {
        Eagle2Params { top_k: 10, max_depth: 6, total_tokens: 60 }
    }
}

/// Expands the top-k by cumulative log-probability per level, records every candidate, then
/// reranks them all into the final tree.
#[derive(Debug)]
pub struct Eagle2Expander {
    params: Eagle2Params,
    /// Candidate 0 is the root.
    cands: Vec<Eagle2Candidate>,
    frontier: Vec<usize>,
    depth: usize,
    masks: DraftMask,
}

#[derive(Debug)]
struct Eagle2Candidate {
    children: Vec<usize>,
    token: u32,
    rank: usize,
    q: f32,
    score: f32,
    depth: usize,
}

impl Eagle2Expander {
    pub fn new(root_token: u32, params: Eagle2Params) -> Result<Self> {
        check_row_width("eagle-2 top_k", params.top_k)?;
        if params.max_depth == 0 || params.total_tokens == 0 {
            return Err(Error::input("eagle-2 tree: max_depth and total_tokens must be at least 1"));
        }
        let root = Eagle2Candidate { children: Vec::new(), token: root_token, rank: 0, q: 1.0, score: 0.0, depth: 0 };
        Ok(Eagle2Expander { params, cands: vec![root], frontier: vec![0], depth: 0, masks: DraftMask::default() })
    }

    pub fn is_done(&self) -> bool {
        self.frontier.is_empty()
    }

    /// `rows[i]` is the draft's distribution q for the i-th frontier entry (the root first).
    /// Returns the entries to forward next; empty once `max_depth` levels are recorded.
    pub fn expand_level<R: AsRef<[f32]>>(&mut self, rows: &[R]) -> Result<Frontier> {
        check_rows("eagle-2 tree", rows, self.frontier.len(), None)?;
        self.depth += 1;
        let mut level = Vec::new();
        for (slot, (&parent, row)) in self.frontier.iter().zip(rows).enumerate() {
            for (rank, (token, q)) in top_k_candidates(row.as_ref(), self.params.top_k).into_iter().enumerate() {
                let id = self.cands.len();
                let score = self.cands[parent].score + q.ln();
                self.cands[parent].children.push(id);
                self.cands.push(Eagle2Candidate { children: Vec::new(), token, rank, q, score, depth: self.depth });
                level.push((id, slot));
            }
        }
        if self.depth == self.params.max_depth {
            self.frontier.clear();
            return Ok(Frontier::default());
        }
        let kept = best_indices(level.iter().map(|&(id, _)| self.cands[id].score), self.params.top_k);
        let mut frontier = Frontier::default();
        self.frontier = kept.iter().map(|&i| level[i].0).collect();
        frontier.tokens = self.frontier.iter().map(|&id| self.cands[id].token).collect();
        frontier.parent_slots = kept.iter().map(|&i| level[i].1).collect();
        (frontier.mask, frontier.mask_cols) = self.masks.push_level(&frontier.parent_slots);
        Ok(frontier)
    }

    /// Keeps the `total_tokens − 1` best recorded candidates. Picking best-first among children
    /// of kept nodes keeps the set connected even when rounding lets a child outscore its parent.
    pub fn finish(self) -> DynamicTree {
        let mut kept = vec![false; self.cands.len()];
        kept[0] = true;
        let mut admitted = vec![0usize; self.cands.len()];
        let mut heap: BinaryHeap<Ranked> = self.ranked(&self.cands[0].children).collect();
        for rank in 1..self.params.total_tokens {
            let Some(best) = heap.pop() else { break };
            kept[best.id] = true;
            admitted[best.id] = rank;
            heap.extend(self.ranked(&self.cands[best.id].children));
        }
        self.build(&kept, &admitted)
    }

    fn ranked<'a>(&'a self, ids: &'a [usize]) -> impl Iterator<Item = Ranked> + 'a {
        ids.iter().map(|&id| Ranked { score: self.cands[id].score, depth: self.cands[id].depth, id })
    }

    /// Breadth-first over kept candidates gives node order; children lists are in rank order.
    fn build(&self, kept: &[bool], admitted: &[usize]) -> DynamicTree {
        let mut tree = TreeBuilder::with_root(self.cands[0].token, self.params.top_k);
        let mut ranks = vec![0];
        let mut queue = std::collections::VecDeque::from([(0, 0)]);
        while let Some((id, node)) = queue.pop_front() {
            for &child in self.cands[id].children.iter().filter(|&&c| kept[c]) {
                let c = &self.cands[child];
                queue.push_back((child, tree.push(node, c.token, c.rank, c.q)));
                ranks.push(admitted[child]);
            }
        }
        tree.build().with_budget_ranks(ranks)
    }
}

/// Heap order: higher score first, then shallower, then recorded earlier.
#[derive(Debug, PartialEq)]
struct Ranked {
    score: f32,
    depth: usize,
    id: usize,
}

impl Eq for Ranked {}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then(other.depth.cmp(&self.depth)).then(other.id.cmp(&self.id))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
