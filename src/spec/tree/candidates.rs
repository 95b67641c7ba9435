//! What both expanders take from a draft row: its top-p or top-k candidates in a fixed order, the
//! best of a level's scores, and checks on the rows a caller hands in.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::MAX_ROW_WIDTH;
use crate::error::{Error, Result};

/// Probabilities that sum to `top_p` exactly on paper can fall just short after rounding.
const TOP_P_SLACK: f64 = 1e-6;

/// Descending q until the cumulative mass reaches `top_p` (the token reaching it included), minus
/// tokens below `ratio · max q`. Both rules keep a prefix of the descending order, so filtering by
/// ratio first only saves sorting the tail.
pub(super) fn top_p_candidates(row: &[f32], top_p: f32, ratio: f32) -> Vec<(u32, f32)> {
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

/// The `k` most probable tokens of a row, most probable first, and only tokens with q > 0: at
/// T > 0 a top-k or top-p processor zeroes most of the row, and a token it cut would enter the tree
/// at a score of −inf, in token-id order, taking a verification slot from a token the base's own
/// cut almost always rejects. A size-k heap over the row keeps this O(V log k) without copying
/// the vocabulary, which matters at k = 10 over ~50k tokens.
pub(super) fn top_k_candidates(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut heap: BinaryHeap<Reverse<BestFirst>> = BinaryHeap::with_capacity(k + 1);
    for (token, &q) in row.iter().enumerate().filter(|&(_, &q)| q > 0.0) {
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

pub(super) fn by_descending_prob(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
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
pub(super) fn best_indices(scores: impl Iterator<Item = f32>, k: usize) -> Vec<usize> {
    let mut order: Vec<(usize, f32)> = scores.enumerate().collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept: Vec<usize> = order.into_iter().take(k).map(|(i, _)| i).collect();
    kept.sort_unstable();
    kept
}

/// Rows come from the caller's draft head: refuse a count, width or value that would silently
/// build a wrong tree.
pub(super) fn check_rows<R: AsRef<[f32]>>(what: &str, rows: &[R], count: usize, width: Option<usize>) -> Result<()> {
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
