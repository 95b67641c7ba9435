//! Builds one step's candidate tree with a draft head: the static tree's rows level by level
//! (top-k at T = 0, draws without replacement at T > 0), or a dynamic tree grown from the head's
//! distributions.

use crate::backend::Backend;
use crate::draft::DraftHead;
use crate::error::{Error, Result};
use crate::model::{Llama, Logits};
use crate::rng::Rng;
use crate::sampling::{self, SamplingParams};
use crate::spec::tree::{CloverTreeExpander, CloverTreeParams, Eagle2Expander, Eagle2Params, StaticTree, TreeBuffers};
use crate::spec::verify::DETERMINISTIC_DRAFT;

/// How each step's tree is chosen.
// One per generation: boxing the static tree's buffers would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum TreeSpec {
    Static(StaticTree),
    Clover(CloverTreeParams),
    Eagle2(Eagle2Params),
}

impl TreeSpec {
    /// Levels below the root the tree can reach.
    pub fn max_depth(&self) -> usize {
        match self {
            TreeSpec::Static(t) => t.max_depth(),
            TreeSpec::Clover(p) => p.max_depth,
            TreeSpec::Eagle2(p) => p.max_depth,
        }
    }

    /// Nodes verified per step at most, root included.
    pub fn max_nodes(&self) -> usize {
        match self {
            TreeSpec::Static(t) => t.buffers().num_nodes(),
            TreeSpec::Clover(p) => p.budget + 1,
            TreeSpec::Eagle2(p) => p.total_tokens,
        }
    }
}

/// One step's tree: node tokens (root first) and, for the static sampler, what the draws kept.
pub struct DraftedTree {
    pub buffers: TreeBuffers,
    pub tokens: Vec<u32>,
    /// Static tree at T > 0: for each node with children, the draft distribution q of its row.
    pub q_rows: Vec<Option<Vec<f32>>>,
    /// Static tree at T > 0: q̃ of each node's draw (≤ 0 for padding).
    pub q_tilde: Vec<f32>,
    /// The id each node's statistics are counted under (`SpecStats::accepted_by_id`): for an
    /// EAGLE-2 tree the rerank's admission order, so the budget-B tree is the nodes of id ≤ B
    /// (`DynamicTree::budget_ranks`); for a static tree the node's index. None for the Clover tree.
    pub stat_ids: Option<Vec<usize>>,
}

/// The distribution a dynamic tree ranks candidates by: the processed draft distribution, or at
/// T = 0 the plain softmax (a one-hot would leave nothing to branch on).
pub(crate) fn draft_distribution(logits: &[f32], params: &SamplingParams) -> Vec<f32> {
    let p = if params.is_greedy() { SamplingParams::with_temperature(1.0) } else { *params };
    sampling::process(logits, &p)
}

/// What an EAGLE-2 tree ranks candidates by: the draft distribution at the sampling temperature,
/// without top-k or top-p. Its nodes are verified by the deterministic-draft rule, which needs no
/// draft probability, so the ranking only decides which tokens get verification slots; a row cut
/// to its top k or top p would fill the rest with q = 0 tokens in token-id order. On the
/// shipped EAGLE-1 head, budget 10, T = 0.7, six seeds of one chat: τ 1.94 against 1.83 with
/// `--top-k 1`, 1.945 against 1.862 with `--top-k 3`, 1.887 against 1.860 with `--top-p 0.9`.
/// (The Clover tree keeps the processed q: its top-p rule is defined on it, clover2.md §11.)
pub(crate) fn eagle2_ranking(params: &SamplingParams) -> SamplingParams {
    SamplingParams::with_temperature(params.temperature)
}

pub fn draft_tree<B: Backend, H: DraftHead<B> + ?Sized>(
    spec: &TreeSpec,
    model: &Llama<B>,
    head: &mut H,
    root: u32,
    first_row: Logits<B>,
    params: &SamplingParams,
    rng: &mut Rng,
) -> Result<DraftedTree> {
    let columns = Columns::of(head, model.config.vocab_size);
    match spec {
        TreeSpec::Static(tree) => draft_static(tree, model, head, &columns, root, first_row, params, rng),
        TreeSpec::Clover(p) => {
            let mut expander = CloverTreeExpander::new(root, columns.width(), *p)?;
            grow(model, head, &columns, first_row, params, |rows| expander.expand_level(rows))?;
            Ok(dynamic(expander.finish(), &columns))
        }
        TreeSpec::Eagle2(p) => {
            let mut expander = Eagle2Expander::new(root, *p)?;
            grow(model, head, &columns, first_row, &eagle2_ranking(params), |rows| expander.expand_level(rows))?;
            Ok(dynamic(expander.finish(), &columns))
        }
    }
}

/// What the columns of the head's logit rows are: the full vocabulary, or a draft vocabulary
/// whose column i is token `ids[i]`. Trees are grown over columns and mapped to token ids here.
struct Columns {
    vocab: usize,
    ids: Option<Vec<u32>>,
}

impl Columns {
    fn of<B: Backend, H: DraftHead<B> + ?Sized>(head: &H, vocab: usize) -> Self {
        Columns { vocab, ids: head.draft_vocab().map(<[u32]>::to_vec) }
    }

    fn width(&self) -> usize {
        self.ids.as_ref().map_or(self.vocab, Vec::len)
    }

    fn token(&self, column: u32) -> u32 {
        self.ids.as_ref().map_or(column, |ids| ids[column as usize])
    }

    /// A distribution over the columns as one over the full vocabulary (zero elsewhere), which
    /// is what the rejection sampler's residual p − q needs.
    fn to_full(&self, q: Vec<f32>) -> Vec<f32> {
        let Some(ids) = &self.ids else { return q };
        let mut full = vec![0.0; self.vocab];
        for (&id, &p) in ids.iter().zip(&q) {
            full[id as usize] = p;
        }
        full
    }
}

fn dynamic(tree: crate::spec::tree::DynamicTree, columns: &Columns) -> DraftedTree {
    let n = tree.buffers().num_nodes();
    let mut tokens = tree.tokens().to_vec();
    for t in &mut tokens[1..] {
        *t = columns.token(*t);
    }
    DraftedTree {
        tokens,
        buffers: tree.buffers().clone(),
        q_rows: vec![None; n],
        q_tilde: vec![0.0; n],
        stat_ids: tree.budget_ranks().map(<[usize]>::to_vec),
    }
}

/// Runs the head on each frontier the expander asks for until the tree is complete.
fn grow<B: Backend, H: DraftHead<B> + ?Sized>(
    model: &Llama<B>,
    head: &mut H,
    columns: &Columns,
    first_row: Logits<B>,
    params: &SamplingParams,
    mut expand: impl FnMut(&[Vec<f32>]) -> Result<crate::spec::tree::Frontier>,
) -> Result<()> {
    let mut rows = vec![draft_distribution(&first_row.to_host(&model.backend), params)];
    loop {
        let frontier = expand(&rows)?;
        if frontier.is_empty() {
            return Ok(());
        }
        let tokens: Vec<u32> = frontier.tokens.iter().map(|&c| columns.token(c)).collect();
        let logits = head.expand(model, &frontier.parent_slots, &tokens)?.to_host(&model.backend);
        rows = logits.chunks_exact(columns.width()).map(|r| draft_distribution(r, params)).collect();
    }
}

/// The candidates of one draft row: top-k at T = 0; else k draws without replacement from the
/// processed distribution, padded with q̃ = 0 when fewer tokens have probability.
struct RowDraws {
    tokens: Vec<u32>,
    q_tilde: Vec<f32>,
    q: Option<Vec<f32>>,
}

/// The draws of every row of `logits`: at T = 0 the backend picks each row's top-k, and the rows
/// stay where they are; at T > 0 row r draws `draws[r]` tokens (its node's children: a draw is
/// a pass over the vocabulary, and the first m draws of k are distributed alike whatever k),
/// padded to k.
fn draw_rows<B: Backend>(
    backend: &B,
    logits: &Logits<B>,
    k: usize,
    draws: &[usize],
    columns: &Columns,
    params: &SamplingParams,
    rng: &mut Rng,
) -> Vec<RowDraws> {
    if params.is_greedy() {
        return logits
            .top_k(backend, k)
            .into_iter()
            .map(|top| {
                let mut tokens: Vec<u32> = top.into_iter().map(|c| columns.token(c)).collect();
                // A draft vocabulary smaller than k: the padding is drafted, and verified, like any token.
                tokens.resize(k, 0);
                RowDraws { tokens, q_tilde: vec![1.0; k], q: None }
            })
            .collect();
    }
    let host = logits.to_host(backend);
    host.chunks_exact(logits.width()).zip(draws).map(|(row, &m)| draw_row(row, m, k, columns, params, rng)).collect()
}

/// One row's m draws without replacement from the processed distribution (T > 0), padded to k.
/// When that distribution keeps fewer than m tokens, the rest of the m are the head's next most
/// likely tokens, drafted deterministically (`verify::DETERMINISTIC_DRAFT`): a row padded with
/// nothing left its siblings unused, which at `--top-k 1` made a tree a chain.
fn draw_row(logits: &[f32], m: usize, k: usize, columns: &Columns, params: &SamplingParams, rng: &mut Rng) -> RowDraws {
    let q = sampling::process(logits, params);
    let n = m.min(k);
    let draws = sampling::sample_without_replacement(&q, n, rng);
    let mut tokens: Vec<u32> = draws.iter().map(|&(c, _)| columns.token(c as u32)).collect();
    let mut q_tilde: Vec<f32> = draws.iter().map(|&(_, qt)| qt).collect();
    if draws.len() < n {
        let drawn: Vec<usize> = draws.iter().map(|&(c, _)| c).collect();
        let next = sampling::top_k_indices(logits, n).into_iter().filter(|c| !drawn.contains(c));
        for c in next.take(n - draws.len()) {
            tokens.push(columns.token(c as u32));
            q_tilde.push(DETERMINISTIC_DRAFT);
        }
    }
    tokens.resize(k, 0);
    q_tilde.resize(k, 0.0);
    RowDraws { tokens, q_tilde, q: Some(columns.to_full(q)) }
}

#[allow(clippy::too_many_arguments)]
fn draft_static<B: Backend, H: DraftHead<B> + ?Sized>(
    tree: &StaticTree,
    model: &Llama<B>,
    head: &mut H,
    columns: &Columns,
    root: u32,
    first_row: Logits<B>,
    params: &SamplingParams,
    rng: &mut Rng,
) -> Result<DraftedTree> {
    let buffers = tree.buffers();
    let k = tree.top_k();
    // Draws per draft row (root first, then each level's nodes in order): its node's children.
    let draws: Vec<usize> = buffers.draft_rows().iter().map(|&node| buffers.children(node).len()).collect();
    let mut rows = draw_rows(&model.backend, &first_row, k, &draws[..1], columns, params, rng);
    let mut level_rows_start = 0;
    for level in buffers.levels() {
        let prev = &rows[level_rows_start..];
        let tokens: Vec<u32> = level.topk_indices.iter().map(|&i| prev[i / k].tokens[i % k]).collect();
        let logits = head.expand(model, &level.parent_slots, &tokens)?;
        level_rows_start = rows.len();
        // The level's rows take the draws that follow (a short list leaves rows out, caught below).
        let level_draws = draws.get(level_rows_start..).unwrap_or_default();
        rows.extend(draw_rows(&model.backend, &logits, k, level_draws, columns, params, rng));
    }
    if rows.len() != buffers.draft_rows().len() {
        return Err(Error::input("static tree: drafted rows do not match the tree's draft rows"));
    }
    let n = buffers.num_nodes();
    let mut tokens = vec![root; n];
    let mut q_tilde = vec![1.0; n];
    let mut q_rows = vec![None; n];
    for node in 1..n {
        let flat = buffers.tree_indices()[node] - 1;
        tokens[node] = rows[flat / k].tokens[flat % k];
        q_tilde[node] = rows[flat / k].q_tilde[flat % k];
    }
    for (row, &node) in rows.iter_mut().zip(buffers.draft_rows()) {
        q_rows[node] = row.q.take();
    }
    Ok(DraftedTree { buffers: buffers.clone(), tokens, q_rows, q_tilde, stat_ids: Some((0..n).collect()) })
}
