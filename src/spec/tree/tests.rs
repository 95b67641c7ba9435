//! Tests of the tree buffers, the static tree and both expanders.

use super::candidates::{by_descending_prob, top_k_candidates};
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
    // Tokens a top-k or top-p processor cut (q = 0) are no candidates, however many are asked for.
    assert_eq!(top_k_candidates(&[0.0, 0.7, 0.0, 0.3, 0.0], 4), [(1, 0.7), (3, 0.3)]);
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

    // Every candidate with q > 0: two a level (each row below depth 1 gives one token q = 1).
    let everything = eagle2_tie_tree(100);
    assert_eq!(everything.buffers().num_nodes(), 1 + 2 + 2 + 2);
}

/// A budget-B tree is the nodes of rank ≤ B of any larger tree grown from the same rows.
#[test]
fn eagle2_budget_ranks_give_every_smaller_tree() {
    let grow = |total_tokens: usize| {
        let params = Eagle2Params { top_k: 3, max_depth: 3, total_tokens };
        let mut e = Eagle2Expander::new(9, params).unwrap();
        e.expand_level(&[[0.5, 0.3, 0.15, 0.05, 0.0]]).unwrap();
        e.expand_level(&[[0.1, 0.6, 0.2, 0.05, 0.05], [0.7, 0.1, 0.1, 0.1, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]]).unwrap();
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
