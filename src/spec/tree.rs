//! Draft trees and the buffers one verification step needs (eagle.md §6–§8, clover2.md §10–§11).
//!
//! Every tree, static or dynamic, is reduced to the same `TreeBuffers`: node order is breadth-first
//! with the root as node 0 and the children of a node in rank order, and every node stores its parent
//! explicitly (clover2.md §16 P2) instead of inferring it from how many parents precede it.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Index of a node in node order; the root is node 0.
pub type NodeId = usize;

/// Token ids are u32 everywhere, so no draft row may be wider than that.
const MAX_ROW_WIDTH: usize = u32::MAX as usize;

/// Probabilities that sum to `top_p` exactly on paper can fall just short after rounding.
const TOP_P_SLACK: f64 = 1e-6;

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

/// A tree fixed ahead of time as rank paths (eagle.md §6).
#[derive(Debug, Clone, PartialEq)]
pub struct StaticTree {
    paths: Vec<Vec<usize>>,
    top_k: usize,
    buffers: TreeBuffers,
}

/// Why a list of paths is not a tree: `field` locates the offending entry in the caller's input.
struct Invalid {
    field: String,
    msg: String,
}

impl Invalid {
    fn new(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Invalid { field: field.into(), msg: msg.into() }
    }
}

impl StaticTree {
    /// `paths` lists the draft nodes (the root is implicit); `top_k` is the draft row width.
    pub fn from_paths(paths: Vec<Vec<usize>>, top_k: usize) -> Result<Self> {
        check_row_width("top_k", top_k)?;
        Self::build(paths, top_k).map_err(|e| Error::input(format!("static tree: {}: {}", e.field, e.msg)))
    }

    /// A JSON list of rank paths, e.g. `[[0],[1],[0,0]]`.
    pub fn from_json_file(path: impl AsRef<Path>, top_k: usize) -> Result<Self> {
        let path = path.as_ref();
        check_row_width("top_k", top_k)?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| Error::format(path, "paths", format!("malformed JSON: {e}")))?;
        parse_paths(&value).and_then(|paths| Self::build(paths, top_k)).map_err(|e| Error::format(path, e.field, e.msg))
    }

    /// The EAGLE-1 / Clover-2 default: 25 draft nodes, depth 5, top-10 rows.
    #[rustfmt::skip]
    pub fn mc_sim_7b_63() -> Self {
        let paths = [
            &[0][..], &[1], &[2], &[3],
            &[0, 0], &[0, 1], &[0, 2], &[1, 0], &[1, 1], &[2, 0], &[2, 1], &[3, 0],
            &[0, 0, 0], &[0, 0, 1], &[0, 0, 2], &[0, 1, 0], &[0, 1, 1], &[0, 2, 0], &[0, 2, 1],
            &[1, 0, 0],
            &[0, 0, 0, 0], &[0, 0, 0, 1], &[0, 0, 0, 2],
            &[0, 0, 0, 0, 0], &[0, 0, 0, 0, 1],
        ];
        let paths = paths.iter().map(|p| p.to_vec()).collect();
        // A constant known to be valid (the golden-vector test builds it), not user input.
        Self::build(paths, 10).unwrap_or_else(|e| unreachable!("mc_sim_7b_63: {}", e.msg))
    }

    /// Rank paths in node order; `paths()[0]` is the root's empty path.
    pub fn paths(&self) -> &[Vec<usize>] {
        &self.paths
    }

    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Draft depth the tree needs; a head with fewer levels cannot run it.
    pub fn max_depth(&self) -> usize {
        self.buffers.max_depth()
    }

    pub fn buffers(&self) -> &TreeBuffers {
        &self.buffers
    }

    fn build(paths: Vec<Vec<usize>>, top_k: usize) -> Result<Self, Invalid> {
        validate_paths(&paths, top_k)?;
        let mut paths = paths;
        paths.push(Vec::new());
        paths.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        let index: HashMap<&[usize], NodeId> = paths.iter().enumerate().map(|(i, p)| (p.as_slice(), i)).collect();
        let parents = paths.iter().map(|p| p.split_last().map(|(_, pre)| index[pre])).collect();
        let ranks = paths.iter().map(|p| p.last().copied().unwrap_or(0)).collect();
        let buffers = TreeBuffers::new(parents, ranks, top_k);
        Ok(StaticTree { paths, top_k, buffers })
    }
}

fn check_row_width(name: &str, width: usize) -> Result<()> {
    if width == 0 || width > MAX_ROW_WIDTH {
        return Err(Error::input(format!("{name} must be in 1..={MAX_ROW_WIDTH}, got {width}")));
    }
    Ok(())
}

fn parse_paths(value: &Value) -> Result<Vec<Vec<usize>>, Invalid> {
    let list = value.as_array().ok_or_else(|| {
        Invalid::new("paths", format!("expected a list of rank paths such as [[0],[1],[0,0]], got {value}"))
    })?;
    list.iter().enumerate().map(|(i, path)| parse_path(i, path)).collect()
}

fn parse_path(i: usize, path: &Value) -> Result<Vec<usize>, Invalid> {
    let ranks = path.as_array().ok_or_else(|| {
        Invalid::new(format!("paths[{i}]"), format!("expected a list of non-negative integers, got {path}"))
    })?;
    ranks
        .iter()
        .enumerate()
        .map(|(j, rank)| {
            rank.as_u64().and_then(|r| usize::try_from(r).ok()).ok_or_else(|| {
                Invalid::new(format!("paths[{i}][{j}]"), format!("expected a non-negative integer rank, got {rank}"))
            })
        })
        .collect()
}

/// Children must be ranks 0..m−1 of their parent's row: the T > 0 verifier relies on earlier
/// siblings being earlier draws (eagle.md §6, clover2.md §16).
fn validate_paths(paths: &[Vec<usize>], top_k: usize) -> Result<(), Invalid> {
    if paths.is_empty() {
        return Err(Invalid::new("paths", "the tree has no draft nodes"));
    }
    let mut seen = HashSet::new();
    for (i, path) in paths.iter().enumerate() {
        if path.is_empty() {
            return Err(Invalid::new(format!("paths[{i}]"), "empty path (the root is implicit)"));
        }
        if let Some(j) = path.iter().position(|&r| r >= top_k) {
            let msg = format!("rank {} is not below top_k = {top_k}", path[j]);
            return Err(Invalid::new(format!("paths[{i}][{j}]"), msg));
        }
        if !seen.insert(path.as_slice()) {
            return Err(Invalid::new(format!("paths[{i}]"), format!("duplicate path {path:?}")));
        }
    }
    for (i, path) in paths.iter().enumerate() {
        let Some((&last, prefix)) = path.split_last() else {
            continue;
        };
        if !prefix.is_empty() && !seen.contains(prefix) {
            let msg = format!("path {path:?} lacks its prefix {prefix:?}");
            return Err(Invalid::new(format!("paths[{i}]"), msg));
        }
        if last == 0 {
            continue;
        }
        let sibling = [prefix, &[last - 1]].concat();
        if !seen.contains(sibling.as_slice()) {
            let msg = format!(
                "path {path:?} has rank {last} but its sibling {sibling:?} is missing \
                 (children must be ranks 0..m-1)"
            );
            return Err(Invalid::new(format!("paths[{i}]"), msg));
        }
    }
    Ok(())
}

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

    fn with_root(root_token: u32, row_width: usize) -> Self {
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

    fn push(&mut self, parent: NodeId, token: u32, rank: usize, draft_prob: f32) -> NodeId {
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

/// Descending q until the cumulative mass reaches `top_p` (the token reaching it included), minus
/// tokens below `ratio · max q`. Both rules keep a prefix of the descending order, so filtering by
/// ratio first only saves sorting the tail.
fn top_p_candidates(row: &[f32], top_p: f32, ratio: f32) -> Vec<(u32, f32)> {
    let floor = ratio * row.iter().copied().fold(0.0, f32::max);
    let mut cands: Vec<(u32, f32)> =
        row.iter().enumerate().filter(|&(_, &q)| q > 0.0 && q >= floor).map(|(token, &q)| (token as u32, q)).collect();
    cands.sort_by(by_descending_prob);
    let mut mass = 0.0f64;
    let reached = cands.iter().position(|&(_, q)| {
        mass += f64::from(q);
        mass >= f64::from(top_p) - TOP_P_SLACK
    });
    cands.truncate(reached.map_or(cands.len(), |i| i + 1));
    cands
}

/// The `k` most probable tokens of a row, most probable first. A size-k heap over the row keeps
/// this O(V log k) without copying the vocabulary, which matters at k = 10 over ~50k tokens.
fn top_k_candidates(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut heap: BinaryHeap<Reverse<BestFirst>> = BinaryHeap::with_capacity(k + 1);
    for (token, &q) in row.iter().enumerate() {
        let cand = BestFirst(token as u32, q);
        if heap.len() < k {
            heap.push(Reverse(cand));
        } else if let Some(mut worst) = heap.peek_mut() {
            if cand > worst.0 {
                *worst = Reverse(cand);
            }
        }
    }
    heap.into_sorted_vec().into_iter().map(|Reverse(BestFirst(t, q))| (t, q)).collect()
}

fn by_descending_prob(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    BestFirst(b.0, b.1).cmp(&BestFirst(a.0, a.1))
}

/// (token, q) ordered so that greater is better: higher q, then the lower token id, so that ties
/// resolve the same way on every run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct BestFirst(u32, f32);

impl Eq for BestFirst {}

impl Ord for BestFirst {
    fn cmp(&self, other: &Self) -> Ordering {
        self.1.total_cmp(&other.1).then(other.0.cmp(&self.0))
    }
}

impl PartialOrd for BestFirst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Indices of the `k` highest scores (ties to the earlier index), in increasing index order.
fn best_indices(scores: impl Iterator<Item = f32>, k: usize) -> Vec<usize> {
    let mut order: Vec<(usize, f32)> = scores.enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept: Vec<usize> = order.into_iter().take(k).map(|(i, _)| i).collect();
    kept.sort_unstable();
    kept
}

/// Rows come from the caller's draft head: refuse a count, width or value that would silently
/// build a wrong tree.
fn check_rows<R: AsRef<[f32]>>(what: &str, rows: &[R], count: usize, width: Option<usize>) -> Result<()> {
    if count == 0 {
        return Err(Error::input(format!("{what}: the tree is complete, nothing left to expand")));
    }
    if rows.len() != count {
        let msg = format!("{what}: expected {count} probability rows (one per frontier node), got {}", rows.len());
        return Err(Error::input(msg));
    }
    for (i, row) in rows.iter().enumerate() {
        let row = row.as_ref();
        if row.is_empty() || row.len() > MAX_ROW_WIDTH || width.is_some_and(|w| w != row.len()) {
            return Err(Error::input(format!("{what}: row {i} has {} entries", row.len())));
        }
        if let Some(t) = row.iter().position(|q| !q.is_finite() || *q < 0.0) {
            let msg = format!("{what}: row {i} holds {} at token {t}; probabilities must be finite and >= 0", row[t]);
            return Err(Error::input(msg));
        }
    }
    Ok(())
}

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
        DynamicTree { budget_ranks: Some(ranks), ..tree.build() }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(bytes: &[u8]) -> String {
        bytes.iter().map(|&b| if b == 1 { '1' } else { '0' }).collect()
    }

    fn mask_rows(mask: &[u8], width: usize) -> Vec<String> {
        mask.chunks(width).map(bits).collect()
    }

    #[test]
    #[rustfmt::skip]
    fn mc_sim_7b_63_matches_the_golden_buffers() {
        let tree = StaticTree::mc_sim_7b_63();
        let b = tree.buffers();
        assert_eq!(b.num_nodes(), 26);
        assert_eq!(tree.max_depth(), 5);
        let order: Vec<&[usize]> = vec![
            &[], &[0], &[1], &[2], &[3], &[0, 0], &[0, 1], &[0, 2], &[1, 0], &[1, 1], &[2, 0], &[2, 1],
            &[3, 0], &[0, 0, 0], &[0, 0, 1], &[0, 0, 2], &[0, 1, 0], &[0, 1, 1], &[0, 2, 0], &[0, 2, 1],
            &[1, 0, 0], &[0, 0, 0, 0], &[0, 0, 0, 1], &[0, 0, 0, 2], &[0, 0, 0, 0, 0], &[0, 0, 0, 0, 1],
        ];
        assert_eq!(tree.paths(), order);
        assert_eq!(
            b.tree_indices(),
            [0, 1, 2, 3, 4, 11, 12, 13, 21, 22, 31, 32, 41, 51, 52, 53, 61, 62, 71, 72, 81, 91, 92, 93, 101, 102]
        );
        assert_eq!(
            b.positions(),
            [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 5, 5]
        );
        let golden_mask = [
            "10000000000000000000000000", "11000000000000000000000000", "10100000000000000000000000",
            "10010000000000000000000000", "10001000000000000000000000", "11000100000000000000000000",
            "11000010000000000000000000", "11000001000000000000000000", "10100000100000000000000000",
            "10100000010000000000000000", "10010000001000000000000000", "10010000000100000000000000",
            "10001000000010000000000000", "11000100000001000000000000", "11000100000000100000000000",
            "11000100000000010000000000", "11000010000000001000000000", "11000010000000000100000000",
            "11000001000000000010000000", "11000001000000000001000000", "10100000100000000000100000",
            "11000100000001000000010000", "11000100000001000000001000", "11000100000001000000000100",
            "11000100000001000000010010", "11000100000001000000010001",
        ];
        assert_eq!(mask_rows(b.mask(), 26), golden_mask);
        assert!(b.visible(24, 21) && !b.visible(24, 22) && !b.visible(26, 0));
        let golden_retrieve: Vec<[i64; 6]> = vec![
            [0, 1, 5, 13, 21, 24], [0, 1, 5, 13, 21, 25], [0, 1, 5, 13, 22, -1], [0, 1, 5, 13, 23, -1],
            [0, 1, 5, 14, -1, -1], [0, 1, 5, 15, -1, -1], [0, 1, 6, 16, -1, -1], [0, 1, 6, 17, -1, -1],
            [0, 1, 7, 18, -1, -1], [0, 1, 7, 19, -1, -1], [0, 2, 8, 20, -1, -1], [0, 2, 9, -1, -1, -1],
            [0, 3, 10, -1, -1, -1], [0, 3, 11, -1, -1, -1], [0, 4, 12, -1, -1, -1],
        ];
        assert_eq!(b.retrieve_width(), 6);
        assert_eq!(b.retrieve_rows().collect::<Vec<_>>(), golden_retrieve.iter().map(|r| &r[..]).collect::<Vec<_>>());
        assert_eq!(b.draft_rows(), [0, 1, 2, 3, 4, 5, 6, 7, 8, 13, 21]);
        assert_eq!(b.draft_row(21), Some(10));
        assert_eq!(b.draft_row(24), None);
        assert_eq!(b.children(13), [21, 22, 23]);
        assert_eq!(b.parents()[20], Some(8));
        assert_eq!(b.ranks()[23], 2);
    }

    #[test]
    fn mc_sim_7b_63_matches_the_per_level_draft_table() {
        let tree = StaticTree::mc_sim_7b_63();
        let levels = tree.buffers().levels();
        let nodes: Vec<&[NodeId]> = levels.iter().map(|l| l.nodes.as_slice()).collect();
        assert_eq!(nodes, [&[1, 2, 3, 4][..], &[5, 6, 7, 8], &[13], &[21]]);
        let topk: Vec<&[usize]> = levels.iter().map(|l| l.topk_indices.as_slice()).collect();
        assert_eq!(topk, [&[0, 1, 2, 3][..], &[0, 1, 2, 10], &[0], &[0]]);
        let slots: Vec<&[usize]> = levels.iter().map(|l| l.parent_slots.as_slice()).collect();
        assert_eq!(slots, [&[0, 0, 0, 0][..], &[0, 0, 0, 1], &[0], &[0]]);
        let masks: Vec<Vec<String>> = levels.iter().map(|l| mask_rows(&l.mask, l.mask_cols)).collect();
        assert_eq!(masks[0], ["1000", "0100", "0010", "0001"]);
        assert_eq!(masks[1], ["10001000", "10000100", "10000010", "01000001"]);
        assert_eq!(masks[2], ["100010001"]);
        assert_eq!(masks[3], ["1000100011"]);
        let rows: Vec<Option<usize>> = levels[1].nodes.iter().map(|&n| tree.buffers().draft_row(n)).collect();
        assert_eq!(rows, [Some(5), Some(6), Some(7), Some(8)]);
    }

    #[test]
    fn parents_are_explicit_when_forwarded_parents_are_not_a_prefix() {
        let tree = StaticTree::from_paths(vec![vec![0], vec![1], vec![1, 0]], 10).unwrap();
        let b = tree.buffers();
        assert_eq!(b.parents(), [None, Some(0), Some(0), Some(2)]);
        assert_eq!(b.tree_indices(), [0, 1, 2, 11]);
        assert_eq!(b.draft_rows(), [0, 2]);
        assert_eq!(b.retrieve_indices(), [0, 1, -1, 0, 2, 3]);
        assert_eq!(mask_rows(b.mask(), 4), ["1000", "1100", "1010", "1011"]);
        assert_eq!(b.levels().len(), 1);
        assert_eq!((b.levels()[0].nodes.as_slice(), b.levels()[0].topk_indices.as_slice()), (&[2][..], &[1][..]));

        let paths = vec![vec![0], vec![1], vec![2], vec![1, 0], vec![2, 0], vec![2, 0, 0]];
        let tree = StaticTree::from_paths(paths, 10).unwrap();
        let b = tree.buffers();
        assert_eq!(b.parents(), [None, Some(0), Some(0), Some(0), Some(2), Some(3), Some(5)]);
        assert_eq!(b.tree_indices(), [0, 1, 2, 3, 11, 21, 31]);
        let level = &b.levels()[1];
        assert_eq!(level.nodes, [5]);
        assert_eq!(level.parent_slots, [1]);
        assert_eq!(level.topk_indices, [10]);
        assert_eq!(mask_rows(&level.mask, level.mask_cols), ["011"]);
    }

    #[test]
    fn invalid_path_lists_are_refused() {
        let cases: Vec<(Vec<Vec<usize>>, usize, &str)> = vec![
            (vec![], 10, "no draft nodes"),
            (vec![vec![0], vec![]], 10, "empty path"),
            (vec![vec![0], vec![1, 0, 0]], 10, "lacks its prefix"),
            (vec![vec![0], vec![2]], 10, "sibling [1] is missing"),
            (vec![vec![0], vec![0]], 10, "duplicate"),
            (vec![vec![0], vec![1]], 1, "not below top_k"),
            (vec![vec![0]], 0, "top_k"),
        ];
        for (paths, top_k, expected) in cases {
            let err = StaticTree::from_paths(paths.clone(), top_k).unwrap_err().to_string();
            assert!(err.contains(expected), "{paths:?}: {err}");
        }
    }

    fn temp_json(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("clover-tree-{}-{name}.json", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn json_trees_load_and_malformed_ones_name_the_file() {
        let good = temp_json("good", "[[0], [1], [0, 0]]");
        let tree = StaticTree::from_json_file(&good, 10).unwrap();
        assert_eq!(tree, StaticTree::from_paths(vec![vec![0], vec![1], vec![0, 0]], 10).unwrap());
        std::fs::remove_file(&good).unwrap();

        let cases = [
            ("syntax", "[[0], [1]", "malformed JSON"),
            ("object", "{\"paths\": [[0]]}", "expected a list of rank paths"),
            ("scalar-path", "[[0], 1]", "paths[1]"),
            ("negative", "[[0], [-1]]", "paths[1][0]"),
            ("fraction", "[[0], [0.5]]", "non-negative integer"),
            ("missing-prefix", "[[0], [1, 0]]", "lacks its prefix"),
            ("non-contiguous", "[[0], [0, 1]]", "children must be ranks 0..m-1"),
            ("too-wide", "[[0], [10]]", "not below top_k"),
            ("empty", "[]", "no draft nodes"),
        ];
        for (name, text, expected) in cases {
            let path = temp_json(name, text);
            let err = StaticTree::from_json_file(&path, 10).unwrap_err().to_string();
            std::fs::remove_file(&path).unwrap();
            assert!(err.contains(&path.display().to_string()), "{name}: {err}");
            assert!(err.contains(expected), "{name}: {err}");
        }
        let missing = std::env::temp_dir().join("clover-tree-no-such-file.json");
        let err = StaticTree::from_json_file(&missing, 10).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn builder_matches_the_static_buffers_and_enforces_order() {
        let mut builder = TreeBuilder::new(7, 10).unwrap();
        let a = builder.add(0, 11, 0, 0.6).unwrap();
        let b = builder.add(0, 12, 1, 0.3).unwrap();
        assert!(builder.add(0, 13, 1, 0.1).is_err(), "same rank twice");
        assert!(builder.add(a, 13, 10, 0.1).is_err(), "rank beyond the row width");
        assert!(builder.add(9, 13, 0, 0.1).is_err(), "unknown parent");
        builder.add(b, 14, 0, 0.9).unwrap();
        assert!(builder.add(a, 15, 0, 0.5).is_err(), "parent order broken");
        let tree = builder.build();
        let static_tree = StaticTree::from_paths(vec![vec![0], vec![1], vec![1, 0]], 10).unwrap();
        assert_eq!(tree.buffers(), static_tree.buffers());
        assert_eq!(tree.tokens(), [7, 11, 12, 14]);
        assert_eq!(tree.draft_probs(), [1.0, 0.6, 0.3, 0.9]);
    }

    /// The README example of clover2.md §11, with the unspecified mass spread thinly.
    #[test]
    fn clover_tree_reproduces_the_readme_example() {
        let (a, b, c) = (0u32, 1u32, 2u32);
        let (a1, b1) = (1u32, 2u32);
        let mut root = vec![0.0; 16];
        root[..5].copy_from_slice(&[0.5, 0.3, 0.1, 0.05, 0.05]);
        let mut under_a = vec![0.0; 16];
        under_a[..4].copy_from_slice(&[0.1, 0.8, 0.05, 0.05]);
        let mut under_b = vec![0.05; 16];
        under_b[..4].copy_from_slice(&[0.0, 0.1, 0.3, 0.0]);
        let params = CloverTreeParams { budget: 4, top_p: 0.8, ..CloverTreeParams::default() };
        let mut expander = CloverTreeExpander::new(99, 16, params).unwrap();

        let frontier = expander.expand_level(&[root]).unwrap();
        assert_eq!(frontier.tokens, [a, b]);
        assert_eq!(frontier.parent_slots, [0, 0]);
        assert_eq!(mask_rows(&frontier.mask, frontier.mask_cols), ["10", "01"]);

        let frontier = expander.expand_level(&[under_a, under_b]).unwrap();
        assert!(frontier.is_empty() && expander.is_done());
        assert!(expander.expand_level(&[vec![1.0; 16]]).is_err());

        let tree = expander.finish();
        assert_eq!(tree.tokens(), [99, a, b, a1, b1]);
        assert!(!tree.buffers().children(0).iter().any(|&n| tree.tokens()[n] == c));
        assert_eq!(tree.buffers().parents(), [None, Some(0), Some(0), Some(1), Some(2)]);
        assert_eq!(tree.buffers().ranks(), [0, 0, 1, 0, 0]);
        assert_eq!(tree.draft_probs(), [1.0, 0.5, 0.3, 0.8, 0.3]);
        assert_eq!(tree.buffers().retrieve_indices(), [0, 1, 3, 0, 2, 4]);
    }

    #[test]
    fn clover_tree_stops_at_max_depth_and_refuses_bad_rows() {
        let params = CloverTreeParams { budget: 10, top_p: 0.5, ratio: 0.25, max_depth: 2 };
        let mut expander = CloverTreeExpander::new(0, 3, params).unwrap();
        assert!(expander.expand_level(&[vec![0.9, 0.1]]).is_err(), "wrong width");
        assert!(expander.expand_level(&[vec![0.9, f32::NAN, 0.0]]).is_err(), "NaN");
        assert!(expander.expand_level(&[vec![0.9, 0.1, 0.0], vec![1.0, 0.0, 0.0]]).is_err(), "row count");
        let frontier = expander.expand_level(&[vec![0.2, 0.7, 0.1]]).unwrap();
        assert_eq!(frontier.tokens, [1]);
        assert!(expander.expand_level(&[vec![0.2, 0.7, 0.1]]).unwrap().is_empty());
        let tree = expander.finish();
        assert_eq!(tree.tokens(), [0, 1, 1]);
        assert_eq!(tree.buffers().max_depth(), 2);
        assert!(CloverTreeExpander::new(0, 3, CloverTreeParams { top_p: 0.0, ..params }).is_err());
    }

    #[test]
    fn top_k_matches_a_full_sort_with_ties_to_lower_tokens() {
        let row: Vec<f32> = (0..1000u32).map(|t| ((t * 7919) % 97) as f32 / 97.0).collect();
        let mut sorted: Vec<(u32, f32)> = row.iter().enumerate().map(|(t, &q)| (t as u32, q)).collect();
        sorted.sort_by(by_descending_prob);
        assert_eq!(top_k_candidates(&row, 10), sorted[..10]);
        assert_eq!(top_k_candidates(&[0.25, 0.5, 0.25], 10), [(1, 0.5), (0, 0.25), (2, 0.25)]);
    }

    /// Rows over a 4-token vocabulary with q = 1 children, so that scores tie exactly.
    fn eagle2_tie_tree(total_tokens: usize) -> DynamicTree {
        let params = Eagle2Params { top_k: 2, max_depth: 3, total_tokens };
        let mut expander = Eagle2Expander::new(9, params).unwrap();
        let level1 = expander.expand_level(&[[0.5, 0.5, 0.0, 0.0]]).unwrap();
        assert_eq!(level1.tokens, [0, 1]);
        let level2 = expander.expand_level(&[[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]).unwrap();
        assert_eq!(level2.tokens, [2, 3]);
        assert_eq!(level2.parent_slots, [0, 1]);
        assert_eq!(mask_rows(&level2.mask, level2.mask_cols), ["1010", "0101"]);
        let level3 = expander.expand_level(&[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]).unwrap();
        assert!(level3.is_empty() && expander.is_done());
        expander.finish()
    }

    #[test]
    fn eagle2_rerank_respects_the_budget_and_prefers_shallower_ties() {
        let tree = eagle2_tie_tree(4);
        assert_eq!(tree.tokens(), [9, 0, 1, 2]);
        assert_eq!(tree.buffers().parents(), [None, Some(0), Some(0), Some(1)]);

        let tree = eagle2_tie_tree(6);
        assert_eq!(tree.tokens(), [9, 0, 1, 2, 3, 0]);
        assert_eq!(tree.buffers().parents(), [None, Some(0), Some(0), Some(1), Some(2), Some(3)]);
        assert_eq!(tree.buffers().row_width(), 2);

        let everything = eagle2_tie_tree(100);
        assert_eq!(everything.buffers().num_nodes(), 1 + 2 + 4 + 4);
    }

    /// A budget-B tree is the nodes of rank ≤ B of any larger tree grown from the same rows.
    #[test]
    fn eagle2_budget_ranks_give_every_smaller_tree() {
        let grow = |total_tokens: usize| {
            let params = Eagle2Params { top_k: 3, max_depth: 3, total_tokens };
            let mut e = Eagle2Expander::new(9, params).unwrap();
            e.expand_level(&[[0.5, 0.3, 0.15, 0.05, 0.0]]).unwrap();
            e.expand_level(&[[0.1, 0.6, 0.2, 0.05, 0.05], [0.7, 0.1, 0.1, 0.1, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
                .unwrap();
            e.expand_level(&[[0.9, 0.1, 0.0, 0.0, 0.0], [0.3, 0.3, 0.4, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0, 0.0]]).unwrap();
            e.finish()
        };
        let big = grow(12);
        let ranks = big.budget_ranks().unwrap();
        let mut sorted = ranks.to_vec();
        sorted.sort();
        assert_eq!(sorted, (0..12).collect::<Vec<_>>());
        // (parent token path, token) of every node: the tree's content regardless of node order.
        let content = |t: &DynamicTree, keep: &dyn Fn(usize) -> bool| {
            let mut nodes: Vec<Vec<u32>> = (0..t.buffers().num_nodes())
                .filter(|&n| keep(n))
                .map(|n| {
                    let mut path = vec![t.tokens()[n]];
                    let mut p = t.buffers().parents()[n];
                    while let Some(q) = p {
                        path.push(t.tokens()[q]);
                        p = t.buffers().parents()[q];
                    }
                    path
                })
                .collect();
            nodes.sort();
            nodes
        };
        for budget in 1..12 {
            let small = grow(budget + 1);
            assert_eq!(content(&small, &|_| true), content(&big, &|n| ranks[n] <= budget), "budget {budget}");
        }
    }

    #[test]
    fn eagle2_rerank_keeps_a_connected_tree_when_a_child_outscores_its_parent() {
        let params = Eagle2Params { top_k: 2, max_depth: 2, total_tokens: 3 };
        let mut expander = Eagle2Expander::new(9, params).unwrap();
        expander.expand_level(&[[0.6, 0.4]]).unwrap();
        // A softmax can round to just above 1, lifting the child of the weaker root child above it.
        expander.expand_level(&[[0.5, 0.5], [0.0, 1.0001]]).unwrap();
        let tree = expander.finish();
        assert_eq!(tree.tokens(), [9, 0, 1]);
        for (node, parent) in tree.buffers().parents().iter().enumerate().skip(1) {
            assert!(parent.is_some_and(|p| p < node));
        }
    }
}
