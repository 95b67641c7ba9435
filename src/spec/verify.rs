//! Acceptance of a verified draft tree: greedy longest match (eagle.md §10) and the two lossless
//! samplers of eagle.md §11 (clover2.md §12). The tree is given as plain index lists so this module
//! depends on nothing but sampling; base rows are raw logits and every distribution, bonus token
//! included, goes through `sampling::process` with the same parameters (eagle.md §16 pitfall 2).
//!
//! Every rule walks down from the root and reads the base model's row of a node only once it has
//! reached that node, so rows are asked for one at a time (`BaseRows`): the engine projects to the
//! vocabulary only the rows a step reaches (about τ of them), not the whole tree's.

use crate::rng::Rng;
use crate::sampling::{self, SamplingParams};

/// Result of verifying one tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// First retrieve row that starts with `path_nodes`.
    pub best_row: usize,
    /// `a`: the step commits the root and a drafts.
    pub accepted_drafts: usize,
    /// Root and the a accepted nodes, in depth order: the KV slots to keep.
    pub path_nodes: Vec<usize>,
    /// The base model's token after the path; node 0 of the next tree.
    pub next_root: i64,
}

/// A draft tree as the samplers see it. Node 0 is the root.
pub struct Tree<'a> {
    /// Token of each node; `tokens_ext` (with its trailing −1) may be passed as is.
    pub tokens: &'a [i64],
    /// Children of each node in rank order, so child j carries draw j of its parent's row.
    pub children: &'a [Vec<usize>],
    /// Leaf paths, root first, −1 padded (eagle.md §7); only used to name `best_row`.
    pub retrieve: &'a [Vec<i64>],
}

/// The base model's next-token logits at tree nodes, asked for by node as verification reaches
/// them.
pub trait BaseRows {
    fn row(&mut self, node: usize) -> &[f32];

    /// The row's argmax (`sampling::argmax`); greedy verification needs nothing else, so a
    /// source that can pick it without handing out the row overrides this.
    fn argmax(&mut self, node: usize) -> usize {
        crate::sampling::argmax(self.row(node))
    }
}

/// Rows computed beforehand, one per node.
impl BaseRows for Vec<&[f32]> {
    fn row(&mut self, node: usize) -> &[f32] {
        self[node]
    }
}

impl Tree<'_> {
    fn token(&self, node: usize) -> usize {
        usize::try_from(self.tokens[node]).expect("a tree node carries a real token")
    }
}

/// What the drafter kept for the static-tree sampler (eagle.md §11.1).
pub struct SampledDrafts<'a> {
    /// For each node with children: the full draft distribution its children were drawn from
    /// (processed like the base rows). Entries of leaves are not read.
    pub q: &'a [&'a [f32]],
    /// For each node: q̃ of the draw it carries; 0 marks a padding child, `DETERMINISTIC_DRAFT` a
    /// child drafted without a draw. The root's is not read.
    pub q_tilde: &'a [f32],
}

/// `SampledDrafts::q_tilde` of a child that was not drawn: when the processed draft distribution
/// keeps fewer tokens than its node has children (a small top-k or top-p, a low temperature), the
/// drafter fills the rest with the head's next most likely tokens. Each is verified as a dynamic
/// tree's draft is (a proposal with q = 1, accepted with probability P(x), a rejection removing x
/// from P), after the drawn ones: every round is a valid speculative-sampling step on the P it is
/// given, so the output keeps P's distribution.
pub const DETERMINISTIC_DRAFT: f32 = -1.0;

/// eagle.md §10: the longest leading run of drafts equal to the base argmax of their parent; ties
/// and a = 0 go to the first row. `tokens_ext` ends with −1 so padding never matches.
/// `base_argmax(node)` is only called for the root and for nodes whose whole path matched.
pub fn verify_greedy(
    retrieve: &[Vec<i64>],
    tokens_ext: &[i64],
    mut base_argmax: impl FnMut(usize) -> usize,
) -> Accepted {
    let mut argmax: Vec<Option<usize>> = vec![None; tokens_ext.len()];
    let mut argmax_of = |node: usize| *argmax[node].get_or_insert_with(|| base_argmax(node));
    let (mut best_row, mut a) = (0, 0);
    for (r, row) in retrieve.iter().enumerate() {
        let acc = row
            .windows(2)
            .take_while(|w| w[1] >= 0 && tokens_ext[w[1] as usize] == argmax_of(w[0] as usize) as i64)
            .count();
        if acc > a {
            (best_row, a) = (r, acc);
        }
    }
    let path_nodes: Vec<usize> = retrieve[best_row][..=a].iter().map(|&n| n as usize).collect();
    let next_root = argmax_of(path_nodes[a]) as i64;
    Accepted { best_row, accepted_drafts: a, path_nodes, next_root }
}

/// eagle.md §11.2, multi-round rejection sampling for the static tree, whose drafts were drawn
/// WITHOUT replacement: sibling j is a proposal from Q_j = q with the earlier draws removed, so it
/// is accepted with probability min(1, P(x_j) / q̃_j) and a rejection leaves the residual
/// normalise(max(P − Q_j, 0)) as the target for the next sibling or the bonus token.
pub fn verify_sampled_drafts<R: BaseRows + ?Sized>(
    tree: &Tree,
    drafts: &SampledDrafts,
    base_logits: &mut R,
    params: &SamplingParams,
    rng: &mut Rng,
) -> Accepted {
    walk(tree, base_logits, params, rng, |node, p, rng| {
        let mut drawn = Vec::new();
        for &child in &tree.children[node] {
            let q_tilde = drafts.q_tilde[child];
            if q_tilde == DETERMINISTIC_DRAFT {
                let x = tree.token(child);
                if rng.uniform() < p[x] as f64 {
                    return Some(child);
                }
                reject_deterministic_draft(p, x);
                continue;
            }
            if q_tilde <= 0.0 {
                continue;
            }
            let x = tree.token(child);
            if rng.uniform() < p[x] as f64 / q_tilde as f64 {
                return Some(child);
            }
            reject_sampled_draft(p, drafts.q[node], &drawn);
            drawn.push(x);
        }
        None
    })
}

/// What a rejected draw leaves of the target P: normalise(max(P − Q_j, 0)), Q_j the draft
/// distribution `q` without the earlier draws `drawn` (renormalised). An empty residual means the
/// rejection had probability 0: P is kept. Two passes over the vocabulary and no allocation: it
/// runs for every rejected draw of a sampled tree. (Public so that `--tree-budget auto` can time it.)
pub fn reject_sampled_draft(p: &mut [f32], q: &[f32], drawn: &[usize]) {
    let removed: f64 = drawn.iter().map(|&x| q[x] as f64).sum();
    let mass = q.iter().map(|&x| x as f64).sum::<f64>() - removed;
    if mass <= 0.0 {
        return;
    }
    let inv = (1.0 / mass) as f32;
    // Q_j is q · inv except at the earlier draws, where it is 0 and the excess is all of P.
    let excess = |pi: f32, qi: f32| (pi - qi * inv).max(0.0);
    let at_drawn: f64 = drawn.iter().map(|&x| p[x] as f64 - excess(p[x], q[x]) as f64).sum();
    let total = p.iter().zip(q).map(|(&pi, &qi)| excess(pi, qi) as f64).sum::<f64>() + at_drawn;
    if total <= 0.0 {
        return;
    }
    let scale = 1.0 / total;
    let kept: Vec<f32> = drawn.iter().map(|&x| p[x]).collect();
    for (pi, &qi) in p.iter_mut().zip(q) {
        *pi = (excess(*pi, qi) as f64 * scale) as f32;
    }
    for (&x, &px) in drawn.iter().zip(&kept) {
        p[x] = (px as f64 * scale) as f32;
    }
}

/// eagle.md §11.3, for top-k (dynamic-tree) drafts: each draft is a proposal with q = 1, accepted
/// with probability P(x); a rejection removes x from P.
pub fn verify_deterministic_drafts<R: BaseRows + ?Sized>(
    tree: &Tree,
    base_logits: &mut R,
    params: &SamplingParams,
    rng: &mut Rng,
) -> Accepted {
    walk(tree, base_logits, params, rng, |node, p, rng| {
        for &child in &tree.children[node] {
            let x = tree.token(child);
            if rng.uniform() < p[x] as f64 {
                return Some(child);
            }
            reject_deterministic_draft(p, x);
        }
        None
    })
}

/// What a rejected deterministic draft x leaves of P: P without x, renormalised (P kept when x
/// held all of it, a rejection of probability 0).
fn reject_deterministic_draft(p: &mut Vec<f32>, x: usize) {
    let mut rest = p.clone();
    rest[x] = 0.0;
    if let Some(rest) = normalised(rest) {
        *p = rest;
    }
}

/// Descends from the root while `choose` accepts a child of the node (given the processed base
/// distribution P there, which it may turn into a residual); the bonus token is drawn from what P
/// is left when it does not, which at a leaf is the untouched processed P.
fn walk<R: BaseRows + ?Sized>(
    tree: &Tree,
    base_logits: &mut R,
    params: &SamplingParams,
    rng: &mut Rng,
    mut choose: impl FnMut(usize, &mut Vec<f32>, &mut Rng) -> Option<usize>,
) -> Accepted {
    let mut node = 0;
    let mut path_nodes = vec![0];
    loop {
        let mut p = sampling::process(base_logits.row(node), params);
        match choose(node, &mut p, rng) {
            Some(child) => {
                path_nodes.push(child);
                node = child;
            }
            None => {
                let next_root = sampling::sample(&p, rng) as i64;
                return accepted(tree.retrieve, path_nodes, next_root);
            }
        }
    }
}

fn accepted(retrieve: &[Vec<i64>], path_nodes: Vec<usize>, next_root: i64) -> Accepted {
    let starts_with_path =
        |row: &Vec<i64>| row.len() >= path_nodes.len() && path_nodes.iter().zip(row).all(|(&n, &r)| r == n as i64);
    let best_row = retrieve.iter().position(starts_with_path).expect("every tree node lies on a retrieve row");
    Accepted { best_row, accepted_drafts: path_nodes.len() - 1, path_nodes, next_root }
}

/// v / Σv, or `None` when nothing is left.
fn normalised(v: Vec<f32>) -> Option<Vec<f32>> {
    let sum: f64 = v.iter().map(|&x| x as f64).sum();
    (sum > 0.0).then(|| v.into_iter().map(|x| (x as f64 / sum) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{process, sample, sample_without_replacement, top_k_indices};

    /// The residual of a rejected draw against eagle.md §11.2 computed directly in f64:
    /// normalise(max(P − Q_j, 0)), Q_j = q without the earlier draws, renormalised; and P kept
    /// when nothing is left of either.
    #[test]
    fn a_rejection_leaves_the_normalised_excess_over_q_without_earlier_draws() {
        let mut rng = Rng::new(9);
        for drawn in [vec![], vec![3], vec![3, 0, 17]] {
            let row = |rng: &mut Rng| {
                process(
                    &(0..40).map(|_| 4.0 * rng.uniform_f32()).collect::<Vec<_>>(),
                    &SamplingParams::with_temperature(1.0),
                )
            };
            let (p, q) = (row(&mut rng), row(&mut rng));
            let mut got = p.clone();
            reject_sampled_draft(&mut got, &q, &drawn);
            let mass: f64 = (0..40).filter(|i| !drawn.contains(i)).map(|i| q[i] as f64).sum();
            let excess: Vec<f64> = (0..40)
                .map(|i| {
                    let qj = if drawn.contains(&i) { 0.0 } else { q[i] as f64 / mass };
                    (p[i] as f64 - qj).max(0.0)
                })
                .collect();
            let total: f64 = excess.iter().sum();
            for i in 0..40 {
                assert!(
                    (got[i] as f64 - excess[i] / total).abs() < 1e-6,
                    "drawn {drawn:?} [{i}]: {} vs {}",
                    got[i],
                    excess[i] / total
                );
            }
        }
        // P below Q_j everywhere (P = Q): the rejection had probability 0, P is kept.
        let p = vec![0.25f32; 4];
        let mut got = p.clone();
        reject_sampled_draft(&mut got, &p, &[]);
        assert_eq!(got, p);
        // Nothing left of q once its draws are removed: P is kept.
        let mut got = p.clone();
        reject_sampled_draft(&mut got, &[0.0, 1.0, 0.0, 0.0], &[1]);
        assert_eq!(got, p);
    }

    /// eagle.md §7, `mc_sim_7b_63`.
    fn golden_retrieve() -> Vec<Vec<i64>> {
        [
            [0, 1, 5, 13, 21, 24],
            [0, 1, 5, 13, 21, 25],
            [0, 1, 5, 13, 22, -1],
            [0, 1, 5, 13, 23, -1],
            [0, 1, 5, 14, -1, -1],
            [0, 1, 5, 15, -1, -1],
            [0, 1, 6, 16, -1, -1],
            [0, 1, 6, 17, -1, -1],
            [0, 1, 7, 18, -1, -1],
            [0, 1, 7, 19, -1, -1],
            [0, 2, 8, 20, -1, -1],
            [0, 2, 9, -1, -1, -1],
            [0, 3, 10, -1, -1, -1],
            [0, 3, 11, -1, -1, -1],
            [0, 4, 12, -1, -1, -1],
        ]
        .iter()
        .map(|r| r.to_vec())
        .collect()
    }

    /// Node n carries token 100 + n; the base argmax is 7 (no node's token) except along `chain`,
    /// where each node predicts the next one's token.
    fn greedy_case(chain: &[usize]) -> Accepted {
        let mut tokens_ext: Vec<i64> = (0..26).map(|n| 100 + n).collect();
        tokens_ext.push(-1);
        let mut argmax = vec![7; 26];
        for w in chain.windows(2) {
            argmax[w[0]] = 100 + w[1];
        }
        verify_greedy(&golden_retrieve(), &tokens_ext, |n| argmax[n])
    }

    /// The greedy rule reads the argmax of the root and of matched nodes only: what lets the
    /// engine project just those rows.
    #[test]
    fn greedy_reads_only_rows_on_matched_paths() {
        let mut tokens_ext: Vec<i64> = (0..26).map(|n| 100 + n).collect();
        tokens_ext.push(-1);
        let mut argmax = vec![7; 26];
        argmax[0] = 101;
        argmax[1] = 105;
        let mut read = Vec::new();
        let a = verify_greedy(&golden_retrieve(), &tokens_ext, |n| {
            read.push(n);
            argmax[n]
        });
        assert_eq!(a.path_nodes, vec![0, 1, 5]);
        read.sort_unstable();
        assert_eq!(read, vec![0, 1, 5], "each reached node once, no other");
    }

    #[test]
    fn greedy_no_match_takes_row_zero() {
        let a = greedy_case(&[]);
        assert_eq!((a.best_row, a.accepted_drafts, a.path_nodes, a.next_root), (0, 0, vec![0], 7));
    }

    #[test]
    fn greedy_ties_take_the_first_row() {
        // Rows 0–5 all match [0, 1, 5]; rows 6–7 match [0, 1, 6].
        let a = greedy_case(&[0, 1, 5]);
        assert_eq!((a.best_row, a.accepted_drafts, a.path_nodes, a.next_root), (0, 2, vec![0, 1, 5], 7));
        let a = greedy_case(&[0, 1, 6]);
        assert_eq!((a.best_row, a.path_nodes), (6, vec![0, 1, 6]));
    }

    #[test]
    fn greedy_full_depth_and_padded_rows() {
        let a = greedy_case(&[0, 1, 5, 13, 21, 25, 3]);
        assert_eq!(a.best_row, 1);
        assert_eq!(a.accepted_drafts, 5);
        assert_eq!(a.path_nodes, vec![0, 1, 5, 13, 21, 25]);
        assert_eq!(a.next_root, 103);
        // A full accept of a short row stops at its padding; the bonus is node 9's argmax.
        let a = greedy_case(&[0, 2, 9, 4]);
        assert_eq!((a.best_row, a.accepted_drafts, a.next_root), (11, 2, 104));
    }

    // ---- Losslessness: the committed tokens must follow the base model exactly. ----

    const VOCAB: usize = 6;
    const ROOT: usize = 0;
    /// Committed tokens compared per step: three reach the bonus token after the depth-1 and
    /// depth-2 leaves, where the reference's raw-logits bug lives.
    const WINDOW: usize = 3;
    const RUNS: usize = 30_000;

    /// Next-token logits of a made-up model: a fixed pseudo-random function of the prefix.
    fn toy_logits(prefix: &[usize], salt: u64) -> Vec<f32> {
        let seed = prefix.iter().fold(salt, |h, &t| h.wrapping_mul(0x1000_0000_01B3) ^ (t as u64 + 1));
        let mut rng = Rng::new(seed);
        (0..VOCAB).map(|_| 4.0 * rng.uniform() as f32 - 2.0).collect()
    }

    fn base_logits(prefix: &[usize]) -> Vec<f32> {
        toy_logits(prefix, 1)
    }

    /// Correlated with the base, as a trained drafter is, but different.
    fn draft_logits(prefix: &[usize]) -> Vec<f32> {
        let noise = toy_logits(prefix, 2);
        base_logits(prefix).iter().zip(noise).map(|(b, n)| 0.5 * b + n).collect()
    }

    /// Root with ranks 0..3, [0] with ranks 0..2, [0, 0] with one child: contiguous ranks, leaves at
    /// depths 1, 2 and 3.
    fn fan_out(ranks: &[usize]) -> usize {
        match ranks {
            [] => 3,
            [0] => 2,
            [0, 0] => 1,
            _ => 0,
        }
    }

    /// One drafted tree with everything the verifiers and the checks need, nodes in BFS order.
    struct Drafted {
        tokens: Vec<i64>,
        children: Vec<Vec<usize>>,
        retrieve: Vec<Vec<i64>>,
        prefixes: Vec<Vec<usize>>,
        q: Vec<Vec<f32>>,
        q_tilde: Vec<f32>,
    }

    impl Drafted {
        fn tree(&self) -> Tree<'_> {
            Tree { tokens: &self.tokens, children: &self.children, retrieve: &self.retrieve }
        }

        fn base_rows(&self) -> Vec<Vec<f32>> {
            self.prefixes.iter().map(|p| base_logits(p)).collect()
        }
    }

    /// Drafts by sampling without replacement from the processed draft q, or by top-k.
    fn draft(params: &SamplingParams, sampled: bool, rng: &mut Rng) -> Drafted {
        let mut d = Drafted {
            tokens: vec![ROOT as i64],
            children: vec![Vec::new()],
            retrieve: Vec::new(),
            prefixes: vec![vec![ROOT]],
            q: Vec::new(),
            q_tilde: vec![0.0],
        };
        let mut ranks = vec![Vec::new()];
        let mut parent = vec![0];
        let mut node = 0;
        while node < d.tokens.len() {
            let logits = draft_logits(&d.prefixes[node]);
            let q = process(&logits, params);
            let fan = fan_out(&ranks[node]);
            let draws = if sampled {
                sample_without_replacement(&q, fan, rng)
            } else {
                top_k_indices(&logits, fan).into_iter().map(|x| (x, 1.0)).collect()
            };
            for (rank, (x, q_tilde)) in draws.into_iter().enumerate() {
                d.children[node].push(d.tokens.len());
                d.tokens.push(x as i64);
                d.children.push(Vec::new());
                d.prefixes.push([d.prefixes[node].as_slice(), &[x]].concat());
                d.q_tilde.push(q_tilde);
                ranks.push([ranks[node].as_slice(), &[rank]].concat());
                parent.push(node);
            }
            d.q.push(q);
            node += 1;
        }
        for leaf in (0..d.tokens.len()).filter(|&n| d.children[n].is_empty()) {
            let mut row = vec![leaf as i64];
            while let Some(&n) = row.last().filter(|&&n| n != 0) {
                row.push(parent[n as usize] as i64);
            }
            row.reverse();
            d.retrieve.push(row);
        }
        d
    }

    #[derive(Clone, Copy, Debug)]
    enum Rule {
        Sampled,
        Deterministic,
        /// Negative control: the reference's bonus from unprocessed logits after a full accept.
        RawBonus {
            sampled: bool,
        },
        /// Negative control: q(x_j) where the conditional q̃_j belongs.
        SampledUnconditionalQ,
        /// Negative control: take the rank-0 chain to its leaf without checking.
        AcceptAlways,
    }

    fn verify(rule: Rule, d: &Drafted, params: &SamplingParams, rng: &mut Rng) -> Accepted {
        let rows = d.base_rows();
        let mut rows: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let q: Vec<&[f32]> = d.q.iter().map(|r| r.as_slice()).collect();
        let drafts = SampledDrafts { q: &q, q_tilde: &d.q_tilde };
        match rule {
            Rule::Sampled => verify_sampled_drafts(&d.tree(), &drafts, &mut rows, params, rng),
            Rule::Deterministic => verify_deterministic_drafts(&d.tree(), &mut rows, params, rng),
            Rule::RawBonus { sampled } => {
                let correct = if sampled { Rule::Sampled } else { Rule::Deterministic };
                let mut a = verify(correct, d, params, rng);
                let last = a.path_nodes[a.accepted_drafts];
                if d.children[last].is_empty() {
                    let raw = process(rows[last], &SamplingParams::with_temperature(1.0));
                    a.next_root = sample(&raw, rng) as i64;
                }
                a
            }
            Rule::SampledUnconditionalQ => {
                let mut q_tilde = d.q_tilde.clone();
                for (node, children) in d.children.iter().enumerate() {
                    for &c in children {
                        q_tilde[c] = d.q[node][d.tokens[c] as usize];
                    }
                }
                let drafts = SampledDrafts { q: &q, q_tilde: &q_tilde };
                verify_sampled_drafts(&d.tree(), &drafts, &mut rows, params, rng)
            }
            Rule::AcceptAlways => {
                let mut path_nodes = vec![0];
                while let Some(&c) = d.children[path_nodes[path_nodes.len() - 1]].first() {
                    path_nodes.push(c);
                }
                let bonus = sample(&process(rows[path_nodes[path_nodes.len() - 1]], params), rng);
                accepted(&d.retrieve, path_nodes, bonus as i64)
            }
        }
    }

    /// Counts of the first WINDOW tokens committed after the root, one cell per sequence; a step
    /// that commits fewer is continued by sampling the base model.
    fn simulate(rule: Rule, params: &SamplingParams, seed: u64) -> Vec<usize> {
        let sampled = !matches!(rule, Rule::Deterministic | Rule::RawBonus { sampled: false });
        let mut rng = Rng::new(seed);
        let mut counts = vec![0; VOCAB.pow(WINDOW as u32)];
        for _ in 0..RUNS {
            let d = draft(params, sampled, &mut rng);
            let a = verify(rule, &d, params, &mut rng);
            assert!(d.retrieve[a.best_row].starts_with(&a.path_nodes.iter().map(|&n| n as i64).collect::<Vec<_>>()));
            let mut seq = vec![ROOT];
            seq.extend(a.path_nodes[1..].iter().map(|&n| d.tokens[n] as usize));
            seq.push(a.next_root as usize);
            while seq.len() <= WINDOW {
                seq.push(sample(&process(&base_logits(&seq), params), &mut rng));
            }
            counts[seq[1..=WINDOW].iter().fold(0, |cell, &t| cell * VOCAB + t)] += 1;
        }
        counts
    }

    /// Probability of every WINDOW-token continuation of the root, cells as in `simulate`.
    fn exact_distribution(params: &SamplingParams) -> Vec<f64> {
        let mut seqs = vec![(vec![ROOT], 1.0)];
        for _ in 0..WINDOW {
            seqs = seqs
                .into_iter()
                .flat_map(|(seq, p)| {
                    let next = process(&base_logits(&seq), params);
                    (0..VOCAB).map(move |t| ([seq.as_slice(), &[t]].concat(), p * next[t] as f64))
                })
                .collect();
        }
        seqs.into_iter().map(|(_, p)| p).collect()
    }

    /// Pearson statistic and degrees of freedom; cells expected below 5 are pooled into one (and
    /// dropped if the pool is still below 5). Counts in zero-probability cells make it infinite.
    fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, usize) {
        let n: usize = counts.iter().sum();
        let (mut stat, mut bins) = (0.0, 0);
        let (mut pooled_obs, mut pooled_exp) = (0.0, 0.0);
        for (&c, &p) in counts.iter().zip(probs) {
            let e = p * n as f64;
            if p == 0.0 && c > 0 {
                return (f64::INFINITY, 1);
            }
            if e >= 5.0 {
                stat += (c as f64 - e).powi(2) / e;
                bins += 1;
            } else {
                pooled_obs += c as f64;
                pooled_exp += e;
            }
        }
        if pooled_exp >= 5.0 {
            stat += (pooled_obs - pooled_exp).powi(2) / pooled_exp;
            bins += 1;
        }
        (stat, bins - 1)
    }

    /// Upper 0.1 % point of χ²(df), Wilson–Hilferty approximation (within 2 % for df ≥ 3).
    fn chi_square_critical_001(df: usize) -> f64 {
        const Z_999: f64 = 3.090_232;
        let k = df as f64;
        let h = 2.0 / (9.0 * k);
        k * (1.0 - h + Z_999 * h.sqrt()).powi(3)
    }

    fn matches_base(rule: Rule, params: &SamplingParams, seed: u64) -> bool {
        let (stat, df) = chi_square(&simulate(rule, params, seed), &exact_distribution(params));
        let critical = chi_square_critical_001(df);
        eprintln!("{rule:?} {params:?}: χ² = {stat:.1}, df = {df}, critical {critical:.1}");
        stat < critical
    }

    fn t1() -> SamplingParams {
        SamplingParams::with_temperature(1.0)
    }

    fn t07_top_p09() -> SamplingParams {
        SamplingParams { temperature: 0.7, top_k: 0, top_p: 0.9 }
    }

    #[test]
    fn chi_square_critical_values() {
        // Tables: 16.27 (3), 29.59 (10), 59.70 (30), 86.66 (50).
        for (df, table) in [(3, 16.27), (10, 29.59), (30, 59.70), (50, 86.66)] {
            assert!((chi_square_critical_001(df) / table - 1.0).abs() < 0.02, "df {df}");
        }
    }

    #[test]
    fn static_tree_sampler_is_lossless() {
        assert!(matches_base(Rule::Sampled, &t1(), 1));
        assert!(matches_base(Rule::Sampled, &t07_top_p09(), 2));
        assert!(!matches_base(Rule::SampledUnconditionalQ, &t1(), 3), "control not detected");
        assert!(!matches_base(Rule::RawBonus { sampled: true }, &t07_top_p09(), 4), "control not detected");
        // Without top-p the bug cannot show up as impossible tokens; the χ² itself must catch it.
        let t07 = SamplingParams::with_temperature(0.7);
        assert!(!matches_base(Rule::RawBonus { sampled: true }, &t07, 9), "control not detected");
    }

    #[test]
    fn deterministic_sampler_is_lossless() {
        assert!(matches_base(Rule::Deterministic, &t1(), 5));
        assert!(matches_base(Rule::Deterministic, &t07_top_p09(), 6));
        assert!(!matches_base(Rule::AcceptAlways, &t1(), 7), "control not detected");
        assert!(!matches_base(Rule::RawBonus { sampled: false }, &t07_top_p09(), 8), "control not detected");
    }
}
