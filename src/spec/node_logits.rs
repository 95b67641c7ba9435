//! The base model's logits of verified tree nodes, projected to the vocabulary only when needed.
//!
//! Verification reads the rows of the nodes it walks through: the root and each accepted node,
//! about τ rows, whatever the tree's size. On the default model the lm_head is 49k × 576, so
//! projecting all 26 rows of a static tree costs about as much as 10 one-row projections: almost
//! all of it wasted. The step projects the tree's main chain (the root, its first child, that
//! child's first child, …: the likeliest accepted path, as children come in rank order) in one
//! call. A node reached off it is projected on first use together with its own first-child chain
//! (up to `OFF_CHAIN_ROWS` rows): a call that streams the lm_head once costs about the same for
//! one row as for three, and the next accepted node is likeliest that chain's next. The matmul
//! gives a row the same bits whatever else is in the call, so these logits are exactly the ones a
//! whole-tree projection would have given.

use std::time::Instant;

use crate::backend::Backend;
use crate::model::{Llama, Logits};
use crate::spec::verify::BaseRows;

/// Rows of an on-demand projection: the node reached and its first-child chain below it. The CPU
/// matmul streams each weight row once for up to three activation rows (`matmul::kernel`), so a
/// call of three costs little more than a call of one.
pub const OFF_CHAIN_ROWS: usize = 3;

pub struct NodeLogits<'a, B: Backend> {
    model: &'a Llama<B>,
    /// `[nodes, hidden]` final-norm features of the verified tree, where the forward left them.
    features: &'a B::Buf,
    /// Per node: its first child (the likeliest), if any.
    first_child: Vec<Option<usize>>,
    /// Each projection call's rows, left on the backend.
    groups: Vec<Logits<B>>,
    /// Per node: (group, row in it) once projected.
    at: Vec<Option<(usize, usize)>>,
    argmax: Vec<Option<usize>>,
    /// Per group: its rows on the host, brought there on the first `row` asked of it.
    host: Vec<Option<Vec<f32>>>,
    projected: usize,
    /// The nodes whose first use projected them (and their chains) on demand, and the time those
    /// calls took: what leaving the main chain costs, which `--tree-budget auto` charges per
    /// budget.
    on_demand: Vec<usize>,
    on_demand_secs: f64,
}

impl<'a, B: Backend> NodeLogits<'a, B> {
    /// For a tree whose node n has first child `first_child[n]` and whose final-norm features
    /// are `postnorm` (`[nodes, hidden]`).
    pub fn new(model: &'a Llama<B>, postnorm: &'a B::Buf, first_child: Vec<Option<usize>>) -> Self {
        let nodes = first_child.len();
        NodeLogits {
            model,
            features: postnorm,
            first_child,
            groups: Vec::new(),
            at: vec![None; nodes],
            argmax: vec![None; nodes],
            host: Vec::new(),
            projected: 0,
            on_demand: Vec::new(),
            on_demand_secs: 0.0,
        }
    }

    /// Projects the rows of `nodes` not projected yet, in one call.
    pub fn project(&mut self, nodes: &[usize]) {
        let todo: Vec<usize> = nodes.iter().copied().filter(|&n| self.at[n].is_none()).collect();
        if todo.is_empty() {
            return;
        }
        let b = &self.model.backend;
        let x = b.gather_rows(self.features, self.model.config.hidden_size, &todo);
        for (i, &n) in todo.iter().enumerate() {
            self.at[n] = Some((self.groups.len(), i));
        }
        self.groups.push(self.model.project_rows(&x, todo.len()));
        self.host.push(None);
        self.projected += todo.len();
    }

    /// The main chain from `node`: it, its first child, that child's first child, … (at most
    /// `max` nodes).
    pub fn chain_from(&self, node: usize, max: usize) -> Vec<usize> {
        let mut chain = vec![node];
        while chain.len() < max {
            match self.first_child[chain[chain.len() - 1]] {
                Some(c) => chain.push(c),
                None => break,
            }
        }
        chain
    }

    /// Makes sure `node` is projected: if not yet, with its first-child chain, timed.
    fn ensure(&mut self, node: usize) -> (usize, usize) {
        if let Some(at) = self.at[node] {
            return at;
        }
        let t = Instant::now();
        self.project(&self.chain_from(node, OFF_CHAIN_ROWS));
        self.on_demand.push(node);
        self.on_demand_secs += t.elapsed().as_secs_f64();
        self.at[node].expect("projected above")
    }

    /// Rows projected so far.
    pub fn projected(&self) -> usize {
        self.projected
    }

    /// The nodes projected on first use (one projection call each), and those calls' time in
    /// seconds.
    pub fn on_demand(&self) -> (&[usize], f64) {
        (&self.on_demand, self.on_demand_secs)
    }
}

impl<B: Backend> BaseRows for NodeLogits<'_, B> {
    fn row(&mut self, node: usize) -> &[f32] {
        let (g, i) = self.ensure(node);
        let group = &self.groups[g];
        let vocab = group.width();
        let rows = self.host[g].get_or_insert_with(|| group.to_host(&self.model.backend));
        &rows[i * vocab..(i + 1) * vocab]
    }

    /// Picked on the backend for the whole group the node was projected in (the main chain's
    /// argmaxes come in one call); the row itself stays there.
    fn argmax(&mut self, node: usize) -> usize {
        if self.argmax[node].is_none() {
            let (g, _) = self.ensure(node);
            let picks = self.groups[g].argmax(&self.model.backend);
            for (n, at) in self.at.iter().enumerate() {
                if let Some((gn, i)) = at {
                    if *gn == g {
                        self.argmax[n] = Some(picks[*i] as usize);
                    }
                }
            }
        }
        self.argmax[node].expect("picked above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::random::{tiny_llama_config, write_random_model};
    use crate::model::LogitRows;

    #[test]
    fn off_chain_nodes_come_with_their_first_child_chain_and_the_bits_of_a_whole_projection() {
        let dir = std::env::temp_dir().join(format!("clover-node-logits-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_random_model(&dir, &tiny_llama_config(96), 11).unwrap();
        let model = Llama::load(&dir, CpuBackend).unwrap();
        let mut cache = model.new_cache(32);
        model.prefill(&mut cache, &[1, 7, 30, 4], LogitRows::None).unwrap();
        // root 0 → 1, 2; 1 → 3; 2 → 4, 6; 4 → 5, 7 (node order: by depth, then parent).
        let parents = [None, Some(0), Some(0), Some(1), Some(2), Some(4), Some(2), Some(4)];
        let n = parents.len();
        let depth = |mut i: usize| {
            let mut d = 0;
            while let Some(p) = parents[i] {
                (i, d) = (p, d + 1);
            }
            d
        };
        let is_ancestor = |a: usize, mut i: usize| loop {
            if i == a {
                break true;
            }
            match parents[i] {
                Some(p) => i = p,
                None => break false,
            }
        };
        let mask: Vec<u8> = (0..n * n).map(|k| is_ancestor(k % n, k / n) as u8).collect();
        let depths: Vec<usize> = (0..n).map(depth).collect();
        let tokens: Vec<u32> = (0..n as u32).map(|t| 10 + 3 * t).collect();
        let verified = model.verify_tree(&mut cache, &tokens, &depths, &mask).unwrap();
        let whole = model.project(&verified.postnorm, n);
        let first_child: Vec<Option<usize>> = (0..n).map(|p| (0..n).find(|&c| parents[c] == Some(p))).collect();

        let mut logits = NodeLogits::new(&model, &verified.postnorm, first_child);
        let chain = logits.chain_from(0, usize::MAX);
        assert_eq!(chain, [0, 1, 3]);
        logits.project(&chain);
        assert_eq!((logits.projected(), logits.on_demand().0.len()), (3, 0));
        // Leaving the main chain at node 2 projects 2 and its first-child chain 4, 5 in one call.
        let argmax2 = logits.argmax(2);
        assert_eq!((logits.projected(), logits.on_demand().0), (6, &[2][..]));
        // Node 5 came with that call; node 6 (2's second child, a leaf) needs its own.
        logits.row(5);
        assert_eq!(logits.on_demand().0, [2]);
        logits.row(6);
        assert_eq!((logits.projected(), logits.on_demand().0), (7, &[2, 6][..]));
        for node in 0..n {
            let row = logits.row(node).to_vec();
            let want = &whole[node * 96..(node + 1) * 96];
            assert!(row.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "node {node}");
        }
        let first_max = |r: &[f32]| (0..r.len()).fold(0, |m, i| if r[i] > r[m] { i } else { m });
        assert_eq!(argmax2, first_max(&whole[2 * 96..3 * 96]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
