//! Draft trees and the buffers one verification step needs (eagle.md §6–§8, clover2.md §10–§11).
//!
//! Every tree, static or dynamic, is reduced to the same `TreeBuffers`: node order is breadth-first
//! with the root as node 0 and the children of a node in rank order, and every node stores its parent
//! explicitly (clover2.md §16 P2) instead of inferring it from how many parents precede it.
//!
//! The trees themselves: `static_tree` (rank paths fixed ahead of time), `dynamic` (a tree built at
//! run time, node by node), and the two expanders that grow one level per draft forward,
//! `clover_expander` (top-p, clover2.md §11) and `eagle2_expander` (cumulative confidence, then a
//! rerank, eagle.md §12), which share the row checks and candidate orders of `candidates`.

mod candidates;
mod clover_expander;
mod dynamic;
mod eagle2_expander;
mod static_tree;
#[cfg(test)]
mod tests;

pub use clover_expander::{CloverTreeExpander, CloverTreeParams};
pub use dynamic::{DynamicTree, Frontier, TreeBuilder};
pub use eagle2_expander::{Eagle2Expander, Eagle2Params};
pub use static_tree::StaticTree;

use crate::error::{Error, Result};

/// Index of a node in node order; the root is node 0.
pub type NodeId = usize;

/// Token ids are u32 everywhere, so no draft row may be wider than that.
const MAX_ROW_WIDTH: usize = u32::MAX as usize;

/// The shape-derived buffers of one step's tree.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeBuffers {
    parents: Vec<Option<NodeId>>,
    ranks: Vec<usize>,
    depths: Vec<usize>,
    children: Vec<Vec<NodeId>>,
    row_width: usize,
    tree_indices: Vec<usize>,
    mask: Vec<u8>,
    retrieve: Vec<i64>,
    retrieve_width: usize,
    draft_rows: Vec<NodeId>,
    row_of: Vec<Option<usize>>,
    levels: Vec<DraftLevel>,
}

/// The nodes run through the draft at one depth (eagle.md §8): the nodes of that depth that have
/// children, each fed its parent's state.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftLevel {
    pub nodes: Vec<NodeId>,
    /// Index of each node's parent among the previous level's nodes; 0 (the root) on level 1.
    pub parent_slots: Vec<usize>,
    /// Index of each node's token in the previous forward's rows flattened at the row width.
    pub topk_indices: Vec<usize>,
    /// `nodes.len() × mask_cols`, row-major; columns are all nodes forwarded so far, level 1 first.
    pub mask: Vec<u8>,
    pub mask_cols: usize,
}

impl TreeBuffers {
    /// Callers guarantee: node 0 is the root, parents precede children, depths never decrease, and
    /// siblings appear in increasing rank below `row_width`.
    fn new(parents: Vec<Option<NodeId>>, ranks: Vec<usize>, row_width: usize) -> Self {
        let n = parents.len();
        let mut depths = vec![0; n];
        let mut children = vec![Vec::new(); n];
        for (node, parent) in parents.iter().enumerate() {
            if let Some(p) = *parent {
                depths[node] = depths[p] + 1;
                children[p].push(node);
            }
        }
        let draft_rows: Vec<NodeId> = (0..n).filter(|&v| !children[v].is_empty()).collect();
        let mut row_of = vec![None; n];
        let mut tree_indices = vec![0; n];
        for (row, &node) in draft_rows.iter().enumerate() {
            row_of[node] = Some(row);
            for &child in &children[node] {
                tree_indices[child] = 1 + row_width * row + ranks[child];
            }
        }
        let (retrieve, retrieve_width) = retrieve_indices(&parents, &depths, &children);
        let levels = draft_levels(&children, &ranks, row_width);
        TreeBuffers {
            mask: ancestor_mask(&parents),
            parents,
            ranks,
            depths,
            children,
            row_width,
            tree_indices,
            retrieve,
            retrieve_width,
            draft_rows,
            row_of,
            levels,
        }
    }

    /// N, root included.
    pub fn num_nodes(&self) -> usize {
        self.parents.len()
    }

    pub fn max_depth(&self) -> usize {
        self.retrieve_width - 1
    }

    pub fn parents(&self) -> &[Option<NodeId>] {
        &self.parents
    }

    /// Each node's rank among its parent's candidates (0 for the root).
    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }

    /// Position offsets (= depth); add the committed length to get position ids.
    pub fn positions(&self) -> &[usize] {
        &self.depths
    }

    /// Children in rank order; empty for a leaf or an unknown node.
    pub fn children(&self, node: NodeId) -> &[NodeId] {
        self.children.get(node).map_or(&[], Vec::as_slice)
    }

    /// Width of one draft row in the flat candidate layout (`top_k` for static trees).
    pub fn row_width(&self) -> usize {
        self.row_width
    }

    /// Index of each node's token in `[root_token] ++ rows.flatten()`, rows `row_width` wide.
    pub fn tree_indices(&self) -> &[usize] {
        &self.tree_indices
    }

    /// N×N row-major, row = query, column = key: 1 for self, root and ancestors.
    pub fn mask(&self) -> &[u8] {
        &self.mask
    }

    pub fn visible(&self, query: NodeId, key: NodeId) -> bool {
        let n = self.num_nodes();
        query < n && key < n && self.mask[query * n + key] == 1
    }

    /// `[leaves × (max_depth + 1)]` row-major: each leaf's path from the root, padded with −1,
    /// rows sorted with −1 as +∞.
    pub fn retrieve_indices(&self) -> &[i64] {
        &self.retrieve
    }

    pub fn retrieve_width(&self) -> usize {
        self.retrieve_width
    }

    pub fn retrieve_rows(&self) -> std::slice::Chunks<'_, i64> {
        self.retrieve.chunks(self.retrieve_width)
    }

    /// Nodes with children in node order; the i-th yields draft row i.
    pub fn draft_rows(&self) -> &[NodeId] {
        &self.draft_rows
    }

    pub fn draft_row(&self, node: NodeId) -> Option<usize> {
        self.row_of.get(node).copied().flatten()
    }

    /// Levels 1..max_depth−1 (the deepest nodes are leaves and are never forwarded). Static trees
    /// draft through these; a dynamic tree was drafted through its expander's frontiers instead.
    pub fn levels(&self) -> &[DraftLevel] {
        &self.levels
    }
}

fn ancestor_mask(parents: &[Option<NodeId>]) -> Vec<u8> {
    let n = parents.len();
    let mut mask = vec![0u8; n * n];
    for (node, parent) in parents.iter().enumerate() {
        if let Some(p) = *parent {
            mask.copy_within(p * n..(p + 1) * n, node * n);
        }
        mask[node * n + node] = 1;
    }
    mask
}

fn retrieve_indices(parents: &[Option<NodeId>], depths: &[usize], children: &[Vec<NodeId>]) -> (Vec<i64>, usize) {
    let width = depths.iter().max().map_or(1, |d| d + 1);
    let mut rows: Vec<Vec<i64>> = (0..parents.len())
        .filter(|&v| children[v].is_empty())
        .map(|leaf| {
            let mut row = vec![-1; width];
            let mut node = Some(leaf);
            while let Some(v) = node {
                row[depths[v]] = v as i64;
                node = parents[v];
            }
            row
        })
        .collect();
    let key = |x: &i64| if *x < 0 { i64::MAX } else { *x };
    rows.sort_by(|a, b| a.iter().map(key).cmp(b.iter().map(key)));
    (rows.concat(), width)
}

fn draft_levels(children: &[Vec<NodeId>], ranks: &[usize], row_width: usize) -> Vec<DraftLevel> {
    let mut masks = DraftMask::default();
    let mut levels: Vec<DraftLevel> = Vec::new();
    let mut previous = vec![0];
    loop {
        let (mut nodes, mut parent_slots, mut topk_indices) = (Vec::new(), Vec::new(), Vec::new());
        for (slot, &parent) in previous.iter().enumerate() {
            for &child in children[parent].iter().filter(|&&c| !children[c].is_empty()) {
                nodes.push(child);
                parent_slots.push(slot);
                topk_indices.push(slot * row_width + ranks[child]);
            }
        }
        if nodes.is_empty() {
            return levels;
        }
        let (mask, mask_cols) = masks.push_level(&parent_slots);
        previous.clone_from(&nodes);
        levels.push(DraftLevel { nodes, parent_slots, topk_indices, mask, mask_cols });
    }
}

/// Ancestry of everything forwarded through the draft so far, to build each level's tree mask.
#[derive(Debug, Default)]
struct DraftMask {
    /// Per forwarded entry: the columns of its forwarded ancestors and itself.
    ancestry: Vec<Vec<usize>>,
    previous_start: Option<usize>,
}

impl DraftMask {
    /// `parent_slots` index the previous level; on the first level they name the root, which has
    /// no column (it lives in the draft's stable cache).
    fn push_level(&mut self, parent_slots: &[usize]) -> (Vec<u8>, usize) {
        let start = self.ancestry.len();
        for &slot in parent_slots {
            let mut cols = match self.previous_start {
                Some(prev) => self.ancestry[prev + slot].clone(),
                None => Vec::new(),
            };
            cols.push(self.ancestry.len());
            self.ancestry.push(cols);
        }
        let width = self.ancestry.len();
        let mut mask = vec![0u8; parent_slots.len() * width];
        for (row, cols) in self.ancestry[start..].iter().enumerate() {
            for &col in cols {
                mask[row * width + col] = 1;
            }
        }
        self.previous_start = Some(start);
        (mask, width)
    }
}

fn check_row_width(name: &str, width: usize) -> Result<()> {
    if width == 0 || width > MAX_ROW_WIDTH {
        return Err(Error::input(format!("{name} must be in 1..={MAX_ROW_WIDTH}, got {width}")));
    }
    Ok(())
}
