//! The trees `--tree-budget auto` chooses among when sampling (T > 0): static trees whose drafts
//! are drawn from the head and accepted by multi-round rejection sampling (eagle.md §11). The
//! EAGLE-2 tree's deterministic drafts are accepted at T > 0 with probability p(draft), where a
//! draw from q is accepted with Σ min(p, q); with the shipped heads at T = 1 a one-node chain
//! measured τ 1.37 sampled against 1.20 deterministic (EAGLE-1, 6 MT-bench questions).
//!
//! Why one calibration run predicts every subtree: take a subtree S of the calibration tree T
//! that keeps every node's parent and earlier siblings. At each node the sampler tries the
//! children in rank order, which are the parent's draws in order, so S's walk makes the same
//! draws and decisions as T's until T's walk leaves S, where S's walk stops. The drafts S accepts
//! are therefore T's accepted path cut where it leaves S, and τ(S) = 1 + Σ_{v ∈ S} P(v accepted
//! in T): a sum over nodes, like the EAGLE-2 ranks' (`auto_budget`). The family a plan weighs is
//! nested: nodes admitted one at a time, each the most-accepted one whose parent and earlier
//! sibling are in.

use std::collections::HashMap;

use crate::error::Result;
use crate::spec::tree::StaticTree;

/// The tree calibrated first: the three smallest trees' nodes, a sibling and a chain, so the plan
/// weighs both. Small on purpose: the prediction of a subtree's τ comes from the calibration
/// tree's steps, and a larger tree takes its steps at other places in the text (fewer where
/// drafts are easy), which on the default model lowered the first node's acceptance from ~0.35
/// (measured running it alone, and with this tree) to ~0.28 with an 8-node tree (four chat
/// prompts of 96 tokens at T = 1, three or four seeds each).
pub fn probe_tree() -> StaticTree {
    let paths = [&[0][..], &[1], &[0, 0]];
    // A constant known to be valid (a test builds it), not user input.
    StaticTree::from_paths(paths.iter().map(|p| p.to_vec()).collect(), 10)
        .unwrap_or_else(|e| unreachable!("the sampled probe tree: {e}"))
}

/// The tree calibrated when a larger one may pay: EAGLE-1's own.
pub fn full_tree() -> StaticTree {
    StaticTree::mc_sim_7b_63()
}

/// The draft nodes of `paths` (index 0 is the root's empty path) in the order a plan admits
/// them: each time, of the nodes whose parent and previous sibling are already in, the one
/// accepted most often (`accepted[node]`; ties to the lower index). Every prefix of the order
/// is a tree whose children are their parent's first draws.
pub fn admission_order(paths: &[Vec<usize>], accepted: &[usize]) -> Vec<usize> {
    let index: HashMap<&[usize], usize> = paths.iter().enumerate().map(|(i, p)| (p.as_slice(), i)).collect();
    let mut admitted = vec![false; paths.len()];
    admitted[0] = true;
    let mut order = Vec::with_capacity(paths.len().saturating_sub(1));
    let ready = |admitted: &[bool], node: usize| {
        let path = &paths[node];
        let Some((&rank, parent)) = path.split_last() else { return false };
        let in_tree = |p: &[usize]| index.get(p).is_some_and(|&i| admitted[i]);
        in_tree(parent) && (rank == 0 || in_tree(&[parent, &[rank - 1]].concat()))
    };
    loop {
        let next = (1..paths.len())
            .filter(|&v| !admitted[v] && ready(&admitted, v))
            .max_by_key(|&v| (accepted.get(v).copied().unwrap_or(0), std::cmp::Reverse(v)));
        let Some(next) = next else { return order };
        admitted[next] = true;
        order.push(next);
    }
}

/// Rows the head drafts at each level below the root for the tree of these draft-node paths
/// (parents before children): the nodes of depth 1, 2, … that have a child in the tree, as
/// `TreeBuffers::levels` forwards them.
pub fn level_rows(paths: &[Vec<usize>]) -> Vec<usize> {
    let mut rows: Vec<usize> = Vec::new();
    for parent in paths {
        let has_child = paths.iter().any(|p| p.len() == parent.len() + 1 && p.starts_with(parent));
        if has_child {
            let depth = parent.len();
            if rows.len() < depth {
                rows.resize(depth, 0);
            }
            rows[depth - 1] += 1;
        }
    }
    rows
}

/// Rejected draws per step expected of the tree of these draft-node paths (parents and earlier
/// siblings first), `rate[i]` the fraction of the calibration's steps that accepted node `paths[i]`.
/// By the coupling in the module docs, a step whose calibration walk accepted node w of this tree
/// made rank(w) rejections at w's parent here; one whose walk left this tree at node u (the next
/// node not in it, or none) rejected all of u's children here. So the expectation is
/// Σ_w rate(w)·rank(w) + Σ_u children(u)·(rate(u) − Σ_{w child of u} rate(w)), the root's rate 1.
pub fn expected_rejections(paths: &[Vec<usize>], rate: &[f64]) -> f64 {
    let rate_of = |path: &[usize]| {
        if path.is_empty() {
            return 1.0;
        }
        paths.iter().position(|p| p == path).map_or(0.0, |i| rate[i])
    };
    let at_accepted: f64 = paths.iter().zip(rate).map(|(p, r)| r * *p.last().unwrap_or(&0) as f64).sum();
    let nodes = std::iter::once(&[][..]).chain(paths.iter().map(Vec::as_slice));
    let at_exits: f64 = nodes
        .map(|u| {
            let children: Vec<&Vec<usize>> =
                paths.iter().filter(|p| p.len() == u.len() + 1 && p.starts_with(u)).collect();
            let onward: f64 = children.iter().map(|c| rate_of(c)).sum();
            children.len() as f64 * (rate_of(u) - onward).max(0.0)
        })
        .sum();
    at_accepted + at_exits
}

/// The static tree of these draft-node paths, its rows as wide as its widest sibling group (the
/// draws a row needs: earlier draws do not depend on how many follow).
pub fn subtree(paths: &[Vec<usize>]) -> Result<StaticTree> {
    let width = paths.iter().filter_map(|p| p.last()).max().map_or(1, |&rank| rank + 1);
    StaticTree::from_paths(paths.to_vec(), width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_tree_is_a_subtree_of_mc_sim_7b_63() {
        let full = full_tree();
        assert!(probe_tree().paths().iter().all(|p| full.paths().contains(p)));
        assert_eq!(probe_tree().paths().len(), 4, "root and 3 drafts");
    }

    #[test]
    fn nodes_are_admitted_by_acceptance_once_parent_and_earlier_sibling_are_in() {
        let paths = [&[0][..], &[1], &[2], &[0, 0], &[0, 1], &[1, 0], &[0, 0, 0], &[0, 0, 0, 0]];
        let tree = StaticTree::from_paths(paths.iter().map(|p| p.to_vec()).collect(), 10).unwrap();
        let paths = tree.paths();
        let at = |p: &[usize]| paths.iter().position(|q| q == p).unwrap();
        let mut accepted = vec![0; paths.len()];
        // [0,1] accepted more often than [0,0] and [1] more than [0]: neither may come first.
        for (p, n) in [(&[0][..], 50), (&[1], 60), (&[2], 5), (&[0, 0], 20), (&[0, 1], 30), (&[0, 0, 0], 8)] {
            accepted[at(p)] = n;
        }
        let order: Vec<&[usize]> = admission_order(paths, &accepted).iter().map(|&i| paths[i].as_slice()).collect();
        let want: [&[usize]; 8] = [&[0], &[1], &[0, 0], &[0, 1], &[0, 0, 0], &[2], &[1, 0], &[0, 0, 0, 0]];
        assert_eq!(order, want);
        // Every prefix builds as a static tree.
        for b in 1..=order.len() {
            let prefix: Vec<Vec<usize>> = order[..b].iter().map(|p| p.to_vec()).collect();
            subtree(&prefix).unwrap();
        }
    }

    #[test]
    fn rejections_follow_the_walk_of_the_calibration_tree() {
        let paths = |ps: &[&[usize]]| ps.iter().map(|p| p.to_vec()).collect::<Vec<_>>();
        // One node accepted 60% of steps: the other 40% reject it.
        assert!((expected_rejections(&paths(&[&[0]]), &[0.6]) - 0.4).abs() < 1e-12);
        // Two siblings, [0] accepted 50%, [1] 20% (after [0]'s rejection: 1 rejection), 30% both
        // rejected (2 rejections): 0.2 · 1 + 0.3 · 2.
        assert!((expected_rejections(&paths(&[&[0], &[1]]), &[0.5, 0.2]) - 0.8).abs() < 1e-12);
        // A chain [0], [0,0] at 50% / 30%: 0.5 reject at the root, 0.2 at [0].
        assert!((expected_rejections(&paths(&[&[0], &[0, 0]]), &[0.5, 0.3]) - 0.7).abs() < 1e-12);
    }

    #[test]
    fn level_rows_count_the_nodes_with_children_per_depth() {
        let paths = |ps: &[&[usize]]| ps.iter().map(|p| p.to_vec()).collect::<Vec<_>>();
        assert_eq!(level_rows(&paths(&[&[0]])), Vec::<usize>::new());
        assert_eq!(level_rows(&paths(&[&[0], &[1], &[0, 0], &[1, 0], &[0, 0, 0]])), vec![2, 1]);
        assert_eq!(subtree(&paths(&[&[0], &[1], &[2], &[0, 0]])).unwrap().top_k(), 3);
    }
}
