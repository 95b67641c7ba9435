//! The decoding loops. Plain decoding lives here too: it is the baseline every speculative run
//! is compared with, so it shares the model, cache, sampler and stop rules.

use std::time::Instant;

use crate::backend::Backend;
use crate::draft::DraftHead;
use crate::error::{Error, Result};
use crate::model::{KvCache, Llama, LogitRows, Logits};
use crate::nvtx;
use crate::rng::Rng;
use crate::sampling::{self, SamplingParams};
use crate::spec::drafting::{draft_tree, DraftedTree, TreeSpec};
use crate::spec::node_logits::NodeLogits;
use crate::spec::verify::{self, Accepted, BaseRows};

#[derive(Clone, Debug)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Generation stops after any of these ids (it is kept in the output).
    pub stop_ids: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    /// Base-model forwards after prefill (decode steps, or verification steps).
    pub steps: usize,
    /// One record per step, in order: `bench` reports phase latencies and `eval` the accept lengths.
    pub step_log: Vec<StepRecord>,
}

/// One base forward after prefill, timed by phase.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepRecord {
    /// Tokens the step committed: accepted drafts + 1, before any cut at a stop id or the token
    /// limit (plain decoding: 1).
    pub committed: usize,
    /// Draft head work: the step's tree, then the head's update on what the step accepted.
    pub draft_secs: f64,
    /// The base forward (tree verification; plain decoding: the decode forward).
    pub verify_secs: f64,
    /// Choosing the accepted path and compacting the KV cache (plain decoding: picking the token);
    /// projections of accepted nodes off the tree's main chain count under `verify_secs`.
    pub accept_secs: f64,
    /// The whole step, bookkeeping included.
    pub total_secs: f64,
}

impl GenerationStats {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }

    /// New tokens after the first (which comes from the prefill) per second of decoding.
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.new_tokens.saturating_sub(1) as f64 / self.decode_secs.max(1e-9)
    }
}

/// The cache capacity a generation needs, or a clear error when the prompt cannot fit.
pub fn context_for(max_positions: usize, prompt_len: usize, max_new_tokens: usize, slack: usize) -> Result<usize> {
    if prompt_len == 0 {
        return Err(Error::input("the prompt is empty"));
    }
    if prompt_len + 1 > max_positions {
        return Err(Error::input(format!(
            "the prompt has {prompt_len} tokens; the model's context is {max_positions} tokens (max_position_embeddings)"
        )));
    }
    Ok((prompt_len + max_new_tokens + slack).min(max_positions))
}

/// Plain autoregressive decoding. `on_tokens` sees every newly committed token as it comes.
pub fn generate_plain<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    cfg: &GenerationConfig,
    mut on_tokens: impl FnMut(&[u32]),
) -> Result<(Vec<u32>, GenerationStats)> {
    let capacity = context_for(model.config.max_position_embeddings, prompt.len(), cfg.max_new_tokens, 0)?;
    let mut cache = model.new_cache(capacity);
    let mut rng = Rng::new(cfg.seed);
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut out = Vec::new();

    let t0 = Instant::now();
    let prefill = model.prefill(&mut cache, prompt, LogitRows::None)?;
    let mut logits = model.last_logits(&prefill.postnorm, prompt.len());
    model.backend.synchronize();
    stats.prefill_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    // A step is a decode forward and the pick from its logits, which the next iteration makes.
    let mut running: Option<(Instant, f64)> = None;
    while out.len() < cfg.max_new_tokens {
        let t = Instant::now();
        let next = pick(model, &logits, &cfg.sampling, &mut rng);
        let accept_secs = t.elapsed().as_secs_f64();
        out.push(next);
        on_tokens(&[next]);
        if let Some((start, verify_secs)) = running.take() {
            let total_secs = start.elapsed().as_secs_f64();
            stats.step_log.push(StepRecord { committed: 1, draft_secs: 0.0, verify_secs, accept_secs, total_secs });
        }
        if cfg.stop_ids.contains(&next) || out.len() == cfg.max_new_tokens || cache.len() == cache.capacity() {
            break;
        }
        let start = Instant::now();
        logits = plain_step(model, &mut cache, next)?;
        model.backend.synchronize();
        running = Some((start, start.elapsed().as_secs_f64()));
        stats.steps += 1;
    }
    stats.decode_secs = t1.elapsed().as_secs_f64();
    stats.new_tokens = out.len();
    Ok((out, stats))
}

/// One plain decoding step: `token` into the cache, the logits of the next. No logits from the
/// forward itself: `last_logits` projects the row (projecting in both places cost a second
/// lm_head per token, a fifth of the default model's step).
fn plain_step<B: Backend>(model: &Llama<B>, cache: &mut KvCache<B>, token: u32) -> Result<Logits<B>> {
    nvtx::scoped(c"verify", || {
        model.prefill(cache, &[token], LogitRows::None).map(|o| model.last_logits(&o.postnorm, 1))
    })
}

/// From a one-row `logits`: the argmax at temperature 0, a draw at a temperature alone (both on
/// the backend), else a draw from the processed distribution on the host (top-k / top-p).
pub fn pick<B: Backend>(model: &Llama<B>, logits: &Logits<B>, params: &SamplingParams, rng: &mut Rng) -> u32 {
    let b = &model.backend;
    if params.is_greedy() {
        logits.argmax(b)[0]
    } else if params.top_k == 0 && params.top_p >= 1.0 {
        b.sample_rows(logits.buf(), 1, logits.width(), params.temperature, &[rng.uniform()])[0]
    } else {
        sampling::sample(&sampling::process(&logits.to_host(b), params), rng) as u32
    }
}

/// What a speculative run measured beyond the plain figures.
#[derive(Clone, Debug, Default)]
pub struct SpecStats {
    pub base: GenerationStats,
    /// `accepted_hist[a]`: steps that accepted `a` drafts.
    pub accepted_hist: Vec<usize>,
    pub draft_secs: f64,
    /// The part of `draft_secs` spent in the head's update on accepted tokens (`begin`), not
    /// growing trees.
    pub begin_secs: f64,
    pub verify_secs: f64,
    pub accept_secs: f64,
    /// Accepted drafts counted by node id (`DraftedTree::stat_ids`, ids ≥ 1): for EAGLE-2 trees
    /// the rank the rerank admitted them at, which predicts τ at every smaller budget; for static
    /// trees the node index, which predicts τ of every subtree (`auto_budget`).
    pub accepted_by_id: Vec<usize>,
    /// Tree nodes projected to the vocabulary, all steps together (`node_logits`), and those of
    /// them projected off the main chain, when verification left it.
    pub logit_rows: usize,
    pub off_chain_rows: usize,
    /// Projection calls made off the main chain (each a node and its first-child chain), their
    /// time (part of `accept_secs`), and the calls counted by the id of the node that made them
    /// (for EAGLE-2 trees its rank: a budget-B tree makes exactly the calls of rank ≤ B).
    pub off_chain_calls: usize,
    pub off_chain_secs: f64,
    pub off_chain_calls_by_id: Vec<usize>,
}

/// `counts[at] += n`, growing `counts` as needed.
fn add_at(counts: &mut Vec<usize>, at: usize, n: usize) {
    if counts.len() <= at {
        counts.resize(at + 1, 0);
    }
    counts[at] += n;
}

impl SpecStats {
    /// Adds another run's counts and times (runs of the same tree: `plan_budget` sums its
    /// calibration prompts). The step log is not kept.
    pub fn add(&mut self, o: &SpecStats) {
        let sum = |a: &mut Vec<usize>, b: &[usize]| b.iter().enumerate().for_each(|(i, &n)| add_at(a, i, n));
        self.base.prompt_tokens += o.base.prompt_tokens;
        self.base.new_tokens += o.base.new_tokens;
        self.base.prefill_secs += o.base.prefill_secs;
        self.base.decode_secs += o.base.decode_secs;
        self.base.steps += o.base.steps;
        sum(&mut self.accepted_hist, &o.accepted_hist);
        self.draft_secs += o.draft_secs;
        self.begin_secs += o.begin_secs;
        self.verify_secs += o.verify_secs;
        self.accept_secs += o.accept_secs;
        sum(&mut self.accepted_by_id, &o.accepted_by_id);
        self.logit_rows += o.logit_rows;
        self.off_chain_rows += o.off_chain_rows;
        self.off_chain_calls += o.off_chain_calls;
        self.off_chain_secs += o.off_chain_secs;
        sum(&mut self.off_chain_calls_by_id, &o.off_chain_calls_by_id);
    }

    /// τ: tokens committed per verification step, bonus included.
    pub fn tau(&self) -> f64 {
        let steps: usize = self.accepted_hist.iter().sum();
        let committed: usize = self.accepted_hist.iter().enumerate().map(|(a, n)| (a + 1) * n).sum();
        committed as f64 / steps.max(1) as f64
    }

    /// Per depth d ≥ 1: the fraction of steps whose d-th draft was accepted.
    pub fn acceptance_per_depth(&self) -> Vec<f64> {
        let steps: usize = self.accepted_hist.iter().sum();
        (1..self.accepted_hist.len())
            .map(|d| self.accepted_hist[d..].iter().sum::<usize>() as f64 / steps.max(1) as f64)
            .collect()
    }
}

/// Speculative decoding: draft a tree with `head`, verify it in one base forward, keep the
/// longest accepted path and the base model's next token. Greedy output equals `generate_plain`
/// token for token; sampled output follows the same distribution.
pub fn generate_speculative<B: Backend, H: DraftHead<B> + ?Sized>(
    model: &Llama<B>,
    head: &mut H,
    tree: &TreeSpec,
    prompt: &[u32],
    cfg: &GenerationConfig,
    on_tokens: impl FnMut(&[u32]),
) -> Result<(Vec<u32>, SpecStats)> {
    generate_speculative_with(model, head, tree, prompt, cfg, accept_lossless, on_tokens)
}

/// How a verified tree is accepted: `(tree, the base logits of its nodes, params, rng)`.
/// Only `accept_lossless` is correct; tests pass deliberately wrong rules as negative controls.
pub type AcceptRule = fn(&DraftedTree, &mut dyn BaseRows, &SamplingParams, &mut Rng) -> Accepted;

/// `generate_speculative` with the acceptance rule as a parameter.
pub fn generate_speculative_with<B: Backend, H: DraftHead<B> + ?Sized>(
    model: &Llama<B>,
    head: &mut H,
    tree: &TreeSpec,
    prompt: &[u32],
    cfg: &GenerationConfig,
    accept: AcceptRule,
    mut on_tokens: impl FnMut(&[u32]),
) -> Result<(Vec<u32>, SpecStats)> {
    if tree.max_depth() > head.max_depth() {
        return Err(Error::input(format!(
            "the tree is {} levels deep but the {} head drafts at most {} levels",
            tree.max_depth(),
            head.kind().name(),
            head.max_depth()
        )));
    }
    if let Some(limit) = model.backend.row_exact_matmul_rows().filter(|&limit| tree.max_nodes() > limit) {
        let fix = match tree {
            TreeSpec::Static(_) => "a static tree of fewer nodes",
            _ => "a smaller --tree-budget",
        };
        return Err(Error::input(format!(
            "the tree verifies up to {} nodes a step, but {} multiplies at most {limit} rows with the bits \
             each row gets alone (beyond that speculative output could differ from plain decoding): use {fix}",
            tree.max_nodes(),
            model.backend.name()
        )));
    }
    if tree.max_nodes() >= model.config.max_position_embeddings {
        return Err(Error::input(format!(
            "the tree verifies up to {} nodes a step, more than the model's context of {} positions holds",
            tree.max_nodes(),
            model.config.max_position_embeddings
        )));
    }
    if tree.max_nodes() <= 1 {
        // Nothing to draft (`--tree-budget auto` chose plain decoding): decode plainly, without the
        // head's update, which would cost time and change nothing.
        let (out, base) = generate_plain(model, prompt, cfg, on_tokens)?;
        let stats =
            SpecStats { accepted_hist: vec![base.steps], verify_secs: base.decode_secs, base, ..Default::default() };
        return Ok((out, stats));
    }
    let capacity =
        context_for(model.config.max_position_embeddings, prompt.len(), cfg.max_new_tokens, tree.max_nodes())?;
    let mut cache = model.new_cache(capacity);
    let mut rng = Rng::new(cfg.seed);
    let mut stats = SpecStats { accepted_hist: vec![0; tree.max_depth() + 1], ..Default::default() };
    stats.base.prompt_tokens = prompt.len();
    let mut out: Vec<u32> = Vec::new();

    let t0 = Instant::now();
    let prefill = model.prefill(&mut cache, prompt, LogitRows::None)?;
    let mut root = pick(model, &model.last_logits(&prefill.postnorm, prompt.len()), &cfg.sampling, &mut rng);
    stats.base.prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    out.push(root);
    on_tokens(&[root]);
    if cfg.stop_ids.contains(&root) || cfg.max_new_tokens <= 1 {
        stats.base.new_tokens = out.len();
        return Ok((out, stats));
    }
    head.reset();
    let rows: Vec<usize> = (0..prompt.len()).collect();
    let next: Vec<u32> = prompt[1..].iter().copied().chain([root]).collect();
    let mut first_row = Some(head.begin(model, &prefill, &rows, &next)?);
    stats.draft_secs += t0.elapsed().as_secs_f64() - stats.base.prefill_secs;

    let mut finished = false;
    while cache.len() + tree.max_nodes() <= cache.capacity() {
        let t = Instant::now();
        let row = first_row.take().expect("the head drafts after every step that goes on");
        let drafted = nvtx::scoped(c"draft", || draft_tree(tree, model, head, root, row, &cfg.sampling, &mut rng))?;
        let mut t_draft = t.elapsed().as_secs_f64();

        let base_len = cache.len();
        let bufs = &drafted.buffers;
        let verified =
            nvtx::scoped(c"verify", || model.verify_tree(&mut cache, &drafted.tokens, bufs.positions(), bufs.mask()))?;
        let first_child = (0..bufs.num_nodes()).map(|n| bufs.children(n).first().copied()).collect();
        let mut logits = NodeLogits::new(model, &verified.postnorm, first_child);
        nvtx::scoped(c"verify", || logits.project(&logits.chain_from(0, usize::MAX)));
        // A device runs what was issued after the call returns: each phase waits for its own.
        model.backend.synchronize();
        let t_verify = t.elapsed().as_secs_f64() - t_draft;
        let chain_rows = logits.projected();

        let accepted = nvtx::scoped(c"accept", || {
            let accepted = accept(&drafted, &mut logits, &cfg.sampling, &mut rng);
            cache.compact(&model.backend, base_len, &accepted.path_nodes);
            model.backend.synchronize();
            accepted
        });
        stats.logit_rows += logits.projected();
        stats.off_chain_rows += logits.projected() - chain_rows;
        let (on_demand, on_demand_secs) = logits.on_demand();
        stats.off_chain_calls += on_demand.len();
        stats.off_chain_secs += on_demand_secs;
        let a = accepted.accepted_drafts;
        stats.accepted_hist[a] += 1;
        if let Some(ids) = &drafted.stat_ids {
            for &node in &accepted.path_nodes[1..] {
                add_at(&mut stats.accepted_by_id, ids[node], 1);
            }
            for &node in on_demand {
                add_at(&mut stats.off_chain_calls_by_id, ids[node], 1);
            }
        }
        stats.base.steps += 1;
        root = accepted.next_root as u32;
        let new: Vec<u32> = accepted.path_nodes[1..].iter().map(|&n| drafted.tokens[n]).chain([root]).collect();
        let t_accept = t.elapsed().as_secs_f64() - t_draft - t_verify;

        let room = cfg.max_new_tokens - out.len();
        let stop_at = new.iter().position(|t| cfg.stop_ids.contains(t)).map(|i| i + 1);
        let keep = stop_at.unwrap_or(new.len()).min(room);
        out.extend_from_slice(&new[..keep]);
        on_tokens(&new[..keep]);
        let done = keep < new.len() || stop_at.is_some() || out.len() >= cfg.max_new_tokens;
        if !done {
            let tb = Instant::now();
            first_row = Some(nvtx::scoped(c"draft", || head.begin(model, &verified, &accepted.path_nodes, &new))?);
            model.backend.synchronize();
            t_draft += tb.elapsed().as_secs_f64();
            stats.begin_secs += tb.elapsed().as_secs_f64();
        }
        stats.draft_secs += t_draft;
        stats.verify_secs += t_verify;
        stats.accept_secs += t_accept;
        // Per step, the lm_head projections of accepted nodes off the main chain (made on demand
        // inside the accept phase) count as verification, the base model's work.
        stats.base.step_log.push(StepRecord {
            committed: a + 1,
            draft_secs: t_draft,
            verify_secs: t_verify + on_demand_secs,
            accept_secs: (t_accept - on_demand_secs).max(0.0),
            total_secs: t.elapsed().as_secs_f64(),
        });
        if done {
            finished = true;
            break;
        }
    }
    if !finished {
        let plain_capacity = context_for(model.config.max_position_embeddings, prompt.len(), cfg.max_new_tokens, 0)?;
        plain_tail(model, &mut cache, plain_capacity, root, cfg, &mut rng, &mut out, &mut stats, &mut on_tokens)?;
    }
    stats.base.decode_secs = t1.elapsed().as_secs_f64();
    stats.base.new_tokens = out.len();
    Ok((out, stats))
}

/// Plain steps once no tree fits the context any more, until plain decoding would stop too (its
/// cache of `plain_capacity` full, `max_new_tokens`, a stop token): near the end of the context the
/// output still ends where plain decoding's does. `root` is the last committed token, not yet in
/// the cache.
#[allow(clippy::too_many_arguments)]
fn plain_tail<B: Backend>(
    model: &Llama<B>,
    cache: &mut KvCache<B>,
    plain_capacity: usize,
    mut root: u32,
    cfg: &GenerationConfig,
    rng: &mut Rng,
    out: &mut Vec<u32>,
    stats: &mut SpecStats,
    on_tokens: &mut impl FnMut(&[u32]),
) -> Result<()> {
    while out.len() < cfg.max_new_tokens && cache.len() < plain_capacity.min(cache.capacity()) {
        let t = Instant::now();
        let logits = plain_step(model, cache, root)?;
        model.backend.synchronize();
        let t_verify = t.elapsed().as_secs_f64();
        root = nvtx::scoped(c"accept", || pick(model, &logits, &cfg.sampling, rng));
        out.push(root);
        on_tokens(&[root]);
        let t_accept = t.elapsed().as_secs_f64() - t_verify;
        stats.accepted_hist[0] += 1;
        stats.base.steps += 1;
        stats.verify_secs += t_verify;
        stats.accept_secs += t_accept;
        let total_secs = t.elapsed().as_secs_f64();
        stats.base.step_log.push(StepRecord {
            committed: 1,
            draft_secs: 0.0,
            verify_secs: t_verify,
            accept_secs: t_accept,
            total_secs,
        });
        if cfg.stop_ids.contains(&root) {
            break;
        }
    }
    Ok(())
}

/// Greedy longest match at T = 0; at T > 0 the static tree's multi-round rejection sampler or,
/// for dynamic (deterministic) trees, the deterministic-draft rule.
pub fn accept_lossless(
    tree: &DraftedTree,
    base: &mut dyn BaseRows,
    params: &SamplingParams,
    rng: &mut Rng,
) -> Accepted {
    let bufs = &tree.buffers;
    let retrieve: Vec<Vec<i64>> = bufs.retrieve_rows().map(|r| r.to_vec()).collect();
    let mut tokens_ext: Vec<i64> = tree.tokens.iter().map(|&t| t as i64).collect();
    tokens_ext.push(-1);
    if params.is_greedy() {
        return verify::verify_greedy(&retrieve, &tokens_ext, |node| base.argmax(node));
    }
    let children: Vec<Vec<usize>> = (0..bufs.num_nodes()).map(|n| bufs.children(n).to_vec()).collect();
    let view = verify::Tree { tokens: &tokens_ext, children: &children, retrieve: &retrieve };
    if tree.q_rows.iter().all(Option::is_none) {
        return verify::verify_deterministic_drafts(&view, base, params, rng);
    }
    let empty: Vec<f32> = Vec::new();
    let q: Vec<&[f32]> = tree.q_rows.iter().map(|q| q.as_deref().unwrap_or(&empty)).collect();
    let drafts = verify::SampledDrafts { q: &q, q_tilde: &tree.q_tilde };
    verify::verify_sampled_drafts(&view, &drafts, base, params, rng)
}
