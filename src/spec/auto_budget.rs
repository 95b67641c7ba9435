//! `--tree-budget auto` for the EAGLE-2 tree: the draft budget that maximises expected tokens per
//! second on this machine, from two measurements taken at start-up.
//!
//! - Verify latency against tree size: the model itself timed on chains of 1..=N nodes after a
//!   prefix, sizes interleaved and repeated so that drifts of a shared machine spread evenly.
//! - The head's acceptance by rerank rank: speculative runs on calibration prompts with a
//!   budget count accepted drafts by the order the rerank admitted them. The tree of a
//!   smaller budget B is exactly the nodes of rank ≤ B (`DynamicTree::budget_ranks`), and a
//!   greedy node is accepted or not whatever else is in the tree, so τ(B) = 1 + Σ_{r ≤ B} a_r with
//!   a_r the accepted drafts of rank r per step — every smaller budget's τ from one run. The runs
//!   go at `PROBE_BUDGET` first, and at the largest budget only when an optimistic bound says a
//!   larger tree may still pay (`larger_budget_may_win`): on the CPUs measured it did not, and
//!   that run was most of the start-up time.
//!
//! Expected tokens/s at B = τ(B) / (draft(B) + verify(B + 1) + accept(B)). Verification projects
//! the tree's main chain to the vocabulary (`spec::node_logits`), so verify(n) is timed as the
//! forward of n nodes plus the projection of the min(n, 6) rows of an EAGLE-2 tree's main chain.
//! The accept phase is the argmax of the rows reached, KV compaction, and one projection call
//! for each accepted node off the main chain (`node_logits`). The calls are what depends on the
//! budget: a budget-B tree makes exactly the calibration run's calls made by nodes of rank ≤ B
//! (its main chains are the big tree's, cut at rank B), so accept(B) = the rest of accept's time
//! per step + calls(B) per step × the time of one call. A budget of B needs only
//! min(10, B) candidates per level and min(5, B) levels to find the same top-B tree
//! (`eagle2_tree`), so the draft time is the head's update on accepted tokens plus min(5, B) − 1
//! levels of min(10, B) rows each, a level timed alone for 1..=10 rows (`level_latency_ms`), plus
//! the tree's bookkeeping (the expander's top-k and rerank, the root's row): what the largest
//! budget's expansion took beyond its levels timed alone, charged per row. On a CPU a level of
//! one or two rows costs far more than its share of a ten-row level (the head's weights are read
//! whatever the rows), so scaling the largest budget's expansion by rows, as this did before, made
//! small trees look cheaper than they are.
//! Budget 0 stands for plain decoding: τ = 1 at verify(1).
//!
//! When sampling (T > 0) the same plan is made over another family of trees: static trees with
//! drafts drawn from the head and multi-round rejection sampling, which accepts far more than the
//! EAGLE-2 tree's deterministic drafts do at T > 0 (`sampled`).

mod sampled;
mod timing;

pub use timing::{level_latency_ms, sampler_latency_ms, verify_latency_ms};

use crate::backend::Backend;
use crate::draft::DraftHead;
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::spec::drafting::TreeSpec;
use crate::spec::engine::{generate_speculative, GenerationConfig, SpecStats};
use crate::spec::tree::{Eagle2Params, StaticTree};

/// Chat prompts the head is calibrated on: generic requests, none taken from a benchmark.
pub const CALIBRATION_CHATS: [&str; 4] = [
    "Explain how a refrigerator keeps food cold, in a few short paragraphs.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main differences between lists and tuples in Python? Give examples.",
    "Give me a three-day itinerary for a first visit to Rome.",
];

/// Tokens generated per calibration prompt.
pub const CALIBRATION_TOKENS: usize = 96;

/// The largest budget `auto` considers (and calibrates with, when a tree that large may pay).
pub const MAX_AUTO_BUDGET: usize = 32;

/// The budget `auto` calibrates with first. On a CPU, where a tree of 33 nodes costs several
/// plain steps, no budget above it is expected to pay and the calibration at `MAX_AUTO_BUDGET`
/// (most of the start-up time) is skipped; where verification grows slowly with the tree (a GPU)
/// the larger calibration follows.
pub const PROBE_BUDGET: usize = 8;

/// Budgets expected within this fraction of the best are ties, which go to the smallest (plain
/// decoding first). Each expectation rests on latencies timed once at start-up on a shared
/// machine, and a tree's verification inside the decoding loop has measured dearer than the
/// chain timed alone (docs/speed-history.md), more so the larger the tree: of two
/// near-equal plans the smaller one has less to lose.
pub const TIE: f64 = 0.02;

/// The EAGLE-2 tree for `budget` draft nodes: the reference's top-10 expansion over 5 levels of
/// drafts, narrowed for small budgets. A node of the top-B tree has at most B − 1 better
/// siblings and its parent is in the tree, so it is among the top-B children of a top-B frontier
/// node, at depth ≤ B: the narrowed expansion finds the same tree (up to ties) for less drafting.
pub fn eagle2_tree(budget: usize) -> Eagle2Params {
    Eagle2Params { top_k: budget.clamp(1, 10), max_depth: budget.clamp(1, 5), total_tokens: budget + 1 }
}

/// The main chain of the EAGLE-2 tree of n nodes (root included): its depth + 1.
pub fn chain_rows(nodes: usize) -> usize {
    if nodes <= 1 {
        1
    } else {
        eagle2_tree(nodes - 1).max_depth + 1
    }
}

/// Levels an EAGLE-2 expansion forwards through the head after the root's (top_k rows each):
/// every level but the last.
pub fn expansion_levels(p: Eagle2Params) -> usize {
    p.max_depth - 1
}

/// Which trees a plan weighs, budget by budget.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum TreeFamily {
    /// Greedy decoding: the EAGLE-2 tree of each budget (`eagle2_tree`).
    Eagle2,
    /// Sampling: static subtrees of the calibration tree, drafts drawn and accepted by rejection
    /// sampling (`sampled`); `paths[r - 1]` is the rank path of the node admitted r-th, and the
    /// budget-B tree is the first B.
    Sampled { paths: Vec<Vec<usize>> },
}

impl TreeFamily {
    /// Rows the head drafts per level below the root for the tree of `budget` draft nodes.
    fn level_rows(&self, budget: usize) -> Vec<usize> {
        match self {
            TreeFamily::Eagle2 => {
                let p = eagle2_tree(budget);
                vec![p.top_k; expansion_levels(p)]
            }
            TreeFamily::Sampled { paths } => sampled::level_rows(&paths[..budget.min(paths.len())]),
        }
    }

    /// The tree of `budget` draft nodes (0: the root alone, which decodes plainly).
    pub fn tree(&self, budget: usize) -> Result<TreeSpec> {
        match self {
            TreeFamily::Sampled { paths } if budget > 0 => {
                Ok(TreeSpec::Static(sampled::subtree(&paths[..budget.min(paths.len())])?))
            }
            _ => Ok(TreeSpec::Eagle2(eagle2_tree(budget))),
        }
    }

    /// How the table names a budget's tree.
    fn describe(&self, budget: usize) -> String {
        match self {
            TreeFamily::Eagle2 => format!("budget {budget}"),
            TreeFamily::Sampled { paths } => {
                format!("budget {budget}, the static tree {}", paths_json(&paths[..budget]))
            }
        }
    }
}

/// Rank paths as `--tree FILE.json` takes them.
pub fn paths_json(paths: &[Vec<usize>]) -> String {
    serde_json::to_string(paths).unwrap_or_default()
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BudgetRow {
    /// Draft nodes verified per step (0: plain decoding).
    pub budget: usize,
    pub tau: f64,
    pub draft_ms: f64,
    pub verify_ms: f64,
    pub accept_ms: f64,
    pub step_ms: f64,
    pub tokens_per_s: f64,
}

/// What a speculative run at the largest budget measured, per step where it is a time.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Calibration {
    pub family: TreeFamily,
    pub steps: usize,
    /// Accepted drafts by the rank the family admits their node at (index r ≥ 1): for EAGLE-2
    /// trees the rerank's.
    pub accepted_by_rank: Vec<usize>,
    /// Projection calls off the main chain by the rank of the node that made them.
    pub off_chain_calls_by_rank: Vec<usize>,
    /// The head's update on accepted tokens.
    pub begin_ms: f64,
    /// Growing the tree.
    pub expand_ms: f64,
    /// One tree level of r rows (`level_ms[r - 1]`, r = 1..=10) timed alone: the head's forward,
    /// its logits to the host and into draft distributions.
    pub level_ms: Vec<f64>,
    /// The rest of growing a tree, per row drafted (the root's included).
    pub bookkeeping_ms_per_row: f64,
    /// Accepting, without the off-chain projection calls.
    pub accept_ms: f64,
    /// One off-chain projection call (0 when none was made).
    pub off_chain_call_ms: f64,
    /// Sampled trees: the sampler's work per base row its walk reaches (the row processed into
    /// P) and per rejected draw (the residual), timed alone (`sampler_latency_ms`); the accept
    /// phase of a smaller tree does less of both (`sampled::expected_rejections`).
    pub walk_row_ms: f64,
    pub rejection_ms: f64,
}

impl Calibration {
    /// From the statistics of speculative runs with the EAGLE-2 tree of `max_budget`, summed, and
    /// the level latencies.
    pub fn eagle2(stats: &SpecStats, max_budget: usize, level_ms: Vec<f64>) -> Self {
        let (accepted, calls) = (stats.accepted_by_id.clone(), stats.off_chain_calls_by_id.clone());
        Self::new(TreeFamily::Eagle2, max_budget, accepted, calls, stats, level_ms)
    }

    /// From the statistics of sampled speculative runs with the static tree `tree`, summed, and
    /// the level latencies: its nodes put in admission order (`sampled::admission_order`).
    pub fn sampled(stats: &SpecStats, tree: &StaticTree, level_ms: Vec<f64>) -> Self {
        let order = sampled::admission_order(tree.paths(), &stats.accepted_by_id);
        let by_rank = |by_node: &[usize]| {
            [0].into_iter().chain(order.iter().map(|&node| by_node.get(node).copied().unwrap_or(0))).collect()
        };
        let paths = order.iter().map(|&node| tree.paths()[node].clone()).collect();
        let (accepted, calls) = (by_rank(&stats.accepted_by_id), by_rank(&stats.off_chain_calls_by_id));
        Self::new(TreeFamily::Sampled { paths }, order.len(), accepted, calls, stats, level_ms)
    }

    fn new(
        family: TreeFamily,
        max_budget: usize,
        accepted_by_rank: Vec<usize>,
        off_chain_calls_by_rank: Vec<usize>,
        stats: &SpecStats,
        level_ms: Vec<f64>,
    ) -> Self {
        let steps = stats.base.steps.max(1) as f64;
        let per_step = |secs: f64| 1000.0 * secs / steps;
        let mut c = Calibration {
            family,
            steps: stats.base.steps,
            accepted_by_rank,
            off_chain_calls_by_rank,
            begin_ms: per_step(stats.begin_secs),
            expand_ms: per_step(stats.draft_secs - stats.begin_secs),
            level_ms,
            accept_ms: per_step(stats.accept_secs - stats.off_chain_secs),
            off_chain_call_ms: 1000.0 * stats.off_chain_secs / stats.off_chain_calls.max(1) as f64,
            bookkeeping_ms_per_row: 0.0,
            walk_row_ms: 0.0,
            rejection_ms: 0.0,
        };
        let levels_alone = c.draft_ms_at(max_budget) - c.begin_ms;
        c.bookkeeping_ms_per_row = ((c.expand_ms - levels_alone) / c.drafted_rows(max_budget) as f64).max(0.0);
        c
    }

    /// Draft rows the tree of `budget` turns into candidates: the root's and its levels'.
    fn drafted_rows(&self, budget: usize) -> usize {
        1 + self.family.level_rows(budget).iter().sum::<usize>()
    }

    /// Drafting at `budget`: the head's update and the tree's levels.
    fn draft_ms_at(&self, budget: usize) -> f64 {
        let level = |rows: usize| self.level_ms.get(rows.max(1) - 1).or(self.level_ms.last()).copied().unwrap_or(0.0);
        let levels: f64 = self.family.level_rows(budget).into_iter().map(level).sum();
        self.begin_ms + levels + self.drafted_rows(budget) as f64 * self.bookkeeping_ms_per_row
    }

    /// Accepting at `budget`: what the calibration's accept phase took beyond its off-chain
    /// calls, less the sampler's work the smaller tree does not do, plus the budget's own calls.
    fn accept_ms_at(&self, budget: usize) -> f64 {
        let (_, calls) = self.per_step_at(budget);
        let walk = match &self.family {
            TreeFamily::Eagle2 => 0.0,
            TreeFamily::Sampled { paths } => self.walk_ms(budget) - self.walk_ms(paths.len()),
        };
        (self.accept_ms + walk).max(0.0) + calls * self.off_chain_call_ms
    }

    /// The sampler's work per step for the sampled tree of `budget`: a processed base row per
    /// node its walk reaches, a residual per rejected draw.
    fn walk_ms(&self, budget: usize) -> f64 {
        let TreeFamily::Sampled { paths } = &self.family else { return 0.0 };
        let budget = budget.min(paths.len());
        let rate: Vec<f64> = (1..=budget)
            .map(|r| self.accepted_by_rank.get(r).copied().unwrap_or(0) as f64 / self.steps.max(1) as f64)
            .collect();
        let accepted: f64 = rate.iter().sum();
        self.walk_row_ms * (1.0 + accepted) + self.rejection_ms * sampled::expected_rejections(&paths[..budget], &rate)
    }

    /// Per step at `budget`: (drafts accepted, off-chain projection calls).
    fn per_step_at(&self, budget: usize) -> (f64, f64) {
        let upto = |counts: &[usize]| counts.iter().take(budget + 1).sum::<usize>() as f64 / self.steps.max(1) as f64;
        (upto(&self.accepted_by_rank), upto(&self.off_chain_calls_by_rank))
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BudgetPlan {
    /// The chosen budget; 0 when plain decoding is expected to be fastest (the engine then decodes
    /// plainly: `generate_speculative` on a tree of the root alone). Its tree: `tree()`.
    pub budget: usize,
    pub calibration: Calibration,
    pub rows: Vec<BudgetRow>,
}

impl BudgetPlan {
    /// From per-size verify latencies (`verify_ms[n - 1]` for n nodes, n up to the largest
    /// budget + 1) and a calibration run at the largest budget.
    pub fn new(verify_ms: &[f64], calibration: Calibration) -> Self {
        let plain = BudgetRow {
            budget: 0,
            tau: 1.0,
            draft_ms: 0.0,
            verify_ms: verify_ms[0],
            accept_ms: 0.0,
            step_ms: verify_ms[0],
            tokens_per_s: 1000.0 / verify_ms[0],
        };
        let c = &calibration;
        let mut rows = vec![plain];
        for (budget, &verify_ms) in verify_ms.iter().enumerate().skip(1) {
            let (accepted, _) = c.per_step_at(budget);
            let tau = 1.0 + accepted;
            let draft_ms = c.draft_ms_at(budget);
            let accept_ms = c.accept_ms_at(budget);
            let step_ms = draft_ms + verify_ms + accept_ms;
            let tokens_per_s = 1000.0 * tau / step_ms;
            rows.push(BudgetRow { budget, tau, draft_ms, verify_ms, accept_ms, step_ms, tokens_per_s });
        }
        let best = rows.iter().map(|r| r.tokens_per_s).fold(0.0, f64::max);
        let budget = rows.iter().find(|r| r.tokens_per_s >= best * (1.0 - TIE)).map_or(0, |r| r.budget);
        BudgetPlan { budget, calibration, rows }
    }

    /// The chosen tree.
    pub fn tree(&self) -> Result<TreeSpec> {
        self.calibration.family.tree(self.budget)
    }

    /// The plan as a table, with the choice and why.
    pub fn table(&self) -> String {
        let c = &self.calibration;
        let max = self.rows.len() - 1;
        let (_, calls) = c.per_step_at(max);
        let levels: Vec<String> = c.level_ms.iter().map(|ms| format!("{ms:.2}")).collect();
        let calibrated = match &c.family {
            TreeFamily::Eagle2 => format!("at budget {max}"),
            TreeFamily::Sampled { paths } => format!(
                "with a static tree of {max} drafts drawn by sampling (T > 0), admitted in the order {} \
                 (the sampler: {:.3} ms a base row its walk reaches, {:.3} ms a rejected draw)",
                paths_json(paths),
                c.walk_row_ms,
                c.rejection_ms
            ),
        };
        let mut s = format!(
            "tree budget auto: {} calibration steps {calibrated}; per step: head update {:.2} ms, tree \
             expansion {:.2} ms (its levels timed alone: {:.2} ms, the rest {:.3} ms a row), accept {:.2} \
             ms + {calls:.2} projections off the main chain of {:.2} ms each; a level of 1, 2, … rows: {} \
             ms\n\
             {:>6} {:>7} {:>9} {:>10} {:>10} {:>9} {:>11}\n",
            c.steps,
            c.begin_ms,
            c.expand_ms,
            c.expand_ms - c.bookkeeping_ms_per_row * c.drafted_rows(max) as f64,
            c.bookkeeping_ms_per_row,
            c.accept_ms,
            c.off_chain_call_ms,
            levels.join(" "),
            "budget",
            "τ",
            "draft ms",
            "verify ms",
            "accept ms",
            "step ms",
            "exp. tok/s"
        );
        for r in &self.rows {
            let mark = if r.budget == self.budget { "  ← chosen" } else { "" };
            let name = if r.budget == 0 { "plain".to_string() } else { r.budget.to_string() };
            s += &format!(
                "{name:>6} {:>7.3} {:>9.2} {:>10.2} {:>10.2} {:>9.2} {:>11.2}{mark}\n",
                r.tau, r.draft_ms, r.verify_ms, r.accept_ms, r.step_ms, r.tokens_per_s
            );
        }
        let plain = self.rows[0].tokens_per_s;
        if self.budget == 0 {
            let tree = self.rows[1..].iter().max_by(|a, b| a.tokens_per_s.total_cmp(&b.tokens_per_s));
            s += &format!("chosen: plain decoding, expected {plain:.2} tok/s");
            if let Some(tree) = tree {
                s += &format!(
                    " (the best tree, {}, expected {:.2}× of it)",
                    c.family.describe(tree.budget),
                    tree.tokens_per_s / plain
                );
            }
            s += "\n";
        } else {
            let chosen = &self.rows[self.budget];
            s += &format!(
                "chosen {}: expected {:.2} tok/s, {:.2}× plain decoding's {plain:.2}\n",
                c.family.describe(self.budget),
                chosen.tokens_per_s,
                chosen.tokens_per_s / plain,
            );
        }
        let best = self.rows.iter().max_by(|a, b| a.tokens_per_s.total_cmp(&b.tokens_per_s)).expect("plain is a row");
        if best.budget != self.budget {
            s += &format!(
                "(budget {} was expected {:.1}% faster, within the {:.0}% that counts as a tie: ties go to the smaller)\n",
                best.budget,
                100.0 * (best.tokens_per_s / self.rows[self.budget].tokens_per_s - 1.0),
                100.0 * TIE
            );
        }
        s
    }
}

/// Times verification and the head's levels on this machine, calibrates `head` on `prompts` with
/// the probe tree (greedy: the EAGLE-2 tree of `PROBE_BUDGET`; sampling: `sampled::probe_tree`)
/// and, only when a larger tree may still pay (`larger_budget_may_win`), again with the largest
/// (greedy: the EAGLE-2 tree of `max_budget`; sampling: `mc_sim_7b_63`, 25 drafts); plans the
/// budget.
pub fn plan_budget<B: Backend, H: DraftHead<B> + ?Sized>(
    model: &Llama<B>,
    head: &mut H,
    max_budget: usize,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> Result<BudgetPlan> {
    let Some(first) = prompts.first() else {
        return Err(Error::input("tree budget auto: no calibration prompt"));
    };
    let greedy = cfg.sampling.is_greedy();
    let (probe, full) = if greedy {
        let probe = PROBE_BUDGET.min(max_budget);
        (Probe::Eagle2(probe), Probe::Eagle2(max_budget))
    } else {
        let (probe, full) = (Probe::Sampled(sampled::probe_tree()), Probe::Sampled(sampled::full_tree()));
        if probe.drafts() > max_budget {
            return Err(Error::input(format!(
                "tree budget auto: sampling plans over static trees of at least {} drafts; {max_budget} is too few",
                probe.drafts()
            )));
        }
        let full = if full.drafts() <= max_budget { full } else { Probe::Sampled(sampled::probe_tree()) };
        (probe, full)
    };
    let verify = verify_latency_ms(model, first, full.drafts() + 1, 5)?;
    let levels = level_latency_ms(model, head, first, eagle2_tree(max_budget).top_k, 5, &cfg.sampling)?;
    let sampler = if greedy { (0.0, 0.0) } else { sampler_latency_ms(model.config.vocab_size, &cfg.sampling, 9) };
    let plan = probe.plan(&verify, calibration_run(model, head, &probe, prompts, cfg)?, levels.clone(), sampler);
    if probe.drafts() == full.drafts() || !larger_budget_may_win(&plan, &verify) {
        return Ok(plan);
    }
    Ok(full.plan(&verify, calibration_run(model, head, &full, prompts, cfg)?, levels, sampler))
}

/// A tree a calibration runs with.
// Two per plan: boxing the static tree would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Probe {
    /// The EAGLE-2 tree of this budget.
    Eagle2(usize),
    /// A static tree, drafts drawn by sampling.
    Sampled(StaticTree),
}

impl Probe {
    fn drafts(&self) -> usize {
        match self {
            Probe::Eagle2(budget) => *budget,
            Probe::Sampled(tree) => tree.paths().len() - 1,
        }
    }

    fn spec(&self) -> TreeSpec {
        match self {
            Probe::Eagle2(budget) => TreeSpec::Eagle2(eagle2_tree(*budget)),
            Probe::Sampled(tree) => TreeSpec::Static(tree.clone()),
        }
    }

    /// The plan over budgets up to this tree's, from its calibration runs' statistics (and, for
    /// sampled trees, the sampler's `sampler_latency_ms`).
    fn plan(&self, verify_ms: &[f64], stats: SpecStats, level_ms: Vec<f64>, sampler_ms: (f64, f64)) -> BudgetPlan {
        let calibration = match self {
            Probe::Eagle2(budget) => Calibration::eagle2(&stats, *budget, level_ms),
            Probe::Sampled(tree) => Calibration {
                walk_row_ms: sampler_ms.0,
                rejection_ms: sampler_ms.1,
                ..Calibration::sampled(&stats, tree, level_ms)
            },
        };
        BudgetPlan::new(&verify_ms[..=self.drafts()], calibration)
    }
}

/// The speculative runs on every prompt with the probe's tree, their statistics summed.
fn calibration_run<B: Backend, H: DraftHead<B> + ?Sized>(
    model: &Llama<B>,
    head: &mut H,
    probe: &Probe,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> Result<SpecStats> {
    let tree = probe.spec();
    let mut total = SpecStats::default();
    for prompt in prompts {
        let (_, stats) = generate_speculative(model, head, &tree, prompt, cfg, |_| {})?;
        total.add(&stats);
    }
    Ok(total)
}

/// Whether a budget above the one `plan` was calibrated at could come within the tie of its best
/// row, judged optimistically: each further rank accepted as often as the most-accepted of the
/// last half of the calibrated ranks (acceptance falls with the rerank's rank), and such a step
/// costing no more than its draft, its verification (`verify_ms[n - 1]` for n nodes) and the
/// calibrated accept phase without any off-chain projection.
pub fn larger_budget_may_win(plan: &BudgetPlan, verify_ms: &[f64]) -> bool {
    let c = &plan.calibration;
    let calibrated = plan.rows.len() - 1;
    let steps = c.steps.max(1) as f64;
    let tail_rate = (calibrated.div_ceil(2)..=calibrated)
        .map(|r| c.accepted_by_rank.get(r).copied().unwrap_or(0) as f64 / steps)
        .fold(0.0, f64::max);
    let best = plan.rows.iter().map(|r| r.tokens_per_s).fold(0.0, f64::max);
    let tau_at_calibrated = plan.rows[calibrated].tau;
    (calibrated + 1..verify_ms.len()).any(|budget| {
        let tau = tau_at_calibrated + (budget - calibrated) as f64 * tail_rate;
        let step_ms = c.draft_ms_at(budget) + verify_ms[budget] + c.accept_ms;
        1000.0 * tau / step_ms >= best * (1.0 - TIE)
    })
}

#[cfg(test)]
mod tests;
