//! Tree attention against plain decoding's, bit for bit: the property the lossless speculative
//! engine rests on (a verified node must get the bits plain decoding gives the same token), for
//! any backend.

use clover_engine::backend::{AttnMask, AttnShape, Backend, KvLayout};
use clover_engine::rng::Rng;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.uniform_f32() * 2.0 - 1.0).collect()
}

/// A 26-node tree (node i's parent (i − 1) / 2, depths 0–4) verified after `past` committed
/// slots, each node's output against plain decoding's for the same token: its ancestors committed
/// one by one at the slots after the prefix, the node a causal row of one. The error names the
/// first node whose bits differ.
pub fn tree_rows_equal_plain_rows<B: Backend>(b: &B, past: usize) -> Result<(), String> {
    let shape = AttnShape { n_heads: 9, n_kv_heads: 3, head_dim: 64 };
    let rows = 26;
    let layout = KvLayout { n_kv_heads: 3, capacity: past + rows, head_dim: 64 };
    let (kv_width, q_width) = (shape.n_kv_heads * shape.head_dim, shape.n_heads * shape.head_dim);
    let (prefix_k, prefix_v) = (values(past * kv_width, 1), values(past * kv_width, 2));
    let (node_k, node_v) = (values(rows * kv_width, 3), values(rows * kv_width, 4));
    let q = values(rows * q_width, 5);
    // Root first, ending at node i.
    let chain = |i: usize| {
        let mut chain = vec![i];
        while let Some(&n) = chain.last().filter(|&&n| n > 0) {
            chain.push((n - 1) / 2);
        }
        chain.reverse();
        chain
    };
    // The prefix, then `nodes`' keys and values at the slots after it.
    let cache = |nodes: &[usize]| {
        let len = layout.n_kv_heads * layout.capacity * layout.head_dim;
        let (mut k, mut v) = (b.zeros(len), b.zeros(len));
        let pick = |all: &[f32]| -> Vec<f32> {
            nodes.iter().flat_map(|&n| all[n * kv_width..][..kv_width].to_vec()).collect()
        };
        b.kv_write(&mut k, layout, &b.upload(&prefix_k), past, 0);
        b.kv_write(&mut v, layout, &b.upload(&prefix_v), past, 0);
        b.kv_write(&mut k, layout, &b.upload(&pick(&node_k)), nodes.len(), past);
        b.kv_write(&mut v, layout, &b.upload(&pick(&node_v)), nodes.len(), past);
        (k, v)
    };

    let mut bits = vec![0u8; rows * rows];
    for i in 0..rows {
        for a in chain(i) {
            bits[i * rows + a] = 1;
        }
    }
    let all: Vec<usize> = (0..rows).collect();
    let (k, v) = cache(&all);
    let mut out = b.zeros(rows * q_width);
    let tree = AttnMask::Tree { bits: &bits, first_key: past };
    b.attention(&b.upload(&q), &k, &v, layout, shape, rows, past, tree, &mut out);
    let verified = b.download(&out);

    for i in 0..rows {
        let ancestors = chain(i);
        let (k, v) = cache(&ancestors);
        let mut out = b.zeros(q_width);
        let row = b.upload(&q[i * q_width..][..q_width]);
        b.attention(&row, &k, &v, layout, shape, 1, past + ancestors.len() - 1, AttnMask::Causal, &mut out);
        let plain = b.download(&out);
        let tree_row = &verified[i * q_width..][..q_width];
        if let Some(j) = (0..q_width).find(|&j| plain[j].to_bits() != tree_row[j].to_bits()) {
            return Err(format!(
                "node {i} (depth {}) after {past} slots: output {j} is {} verified, {} decoded plainly",
                ancestors.len() - 1,
                tree_row[j],
                plain[j]
            ));
        }
    }
    Ok(())
}
