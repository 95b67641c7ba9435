//! clover2.md §8's rollout (eagle.md §5: "chain acceptance over 5 steps"): from each position of
//! evaluation data, a chain of drafts, each depth's base-model token looked up among the head's
//! first k choices, accepted up to the first miss. `losses` counts it teacher-forced during
//! distill's held-out evaluation (Clover-2's heads); `eval::rollout` runs it free, through the
//! drafting path, for either head kind.

use serde::{Deserialize, Serialize};

/// The k of the rollout's top-k acceptance (clover2.md §8: top-1, 2, 3, 5 and 10).
pub const ROLLOUT_TOPS: [usize; 5] = [1, 2, 3, 5, 10];
pub const MAX_TOP: usize = ROLLOUT_TOPS[ROLLOUT_TOPS.len() - 1];

/// clover2.md §8's rollout at one k: per depth i, the fraction of held-out positions whose chain
/// of top-k drafts the base model accepts through head i.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub top: usize,
    pub accepted: Vec<f64>,
}

impl Rollout {
    /// Per k of `ROLLOUT_TOPS`, the fractions of `positions` accepted through each depth, from
    /// the counts per depth (`rollout_counts`' rows).
    pub fn fractions<'a>(
        counts: impl Iterator<Item = &'a [usize; ROLLOUT_TOPS.len()]> + Clone,
        positions: usize,
    ) -> Vec<Rollout> {
        ROLLOUT_TOPS
            .iter()
            .enumerate()
            .map(|(j, &top)| Rollout {
                top,
                accepted: counts.clone().map(|c| c[j] as f64 / positions.max(1) as f64).collect(),
            })
            .collect()
    }

    /// Tokens per step of decoding with this chain: the root plus the expected accepted drafts.
    pub fn tau(&self) -> f64 {
        1.0 + self.accepted.iter().sum::<f64>()
    }
}

/// Per head i and k of `ROLLOUT_TOPS`, the rows t counted by `counted(i, t)` where heads 0..=i
/// each rank the base model's token below k (`rank[h][t]`; head i has rows `0..rank[i].len()`,
/// each a row of every earlier head too). Both callers count a chain through depth i only where
/// the loss mask holds at every depth up to i: a chain that stays in the assistant's answer.
pub fn rollout_counts(
    rank: &[Vec<Option<usize>>],
    counted: impl Fn(usize, usize) -> bool,
) -> Vec<[usize; ROLLOUT_TOPS.len()]> {
    (0..rank.len())
        .map(|i| {
            ROLLOUT_TOPS.map(|k| {
                (0..rank[i].len())
                    .filter(|&t| counted(i, t) && (0..=i).all(|h| rank[h][t].is_some_and(|r| r < k)))
                    .count()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three heads over rows 0..4, 0..3, 0..2: a chain from row t is accepted through depth i at k
    /// when every head up to i ranks its token below k; head 1's row 2 is masked out.
    #[test]
    fn rollout_counts_chains_by_hand() {
        let rank = vec![vec![Some(0), Some(1), Some(4), None], vec![Some(0), Some(0), Some(2)], vec![Some(9), Some(0)]];
        let counts = rollout_counts(&rank, |i, t| !(i == 1 && t == 2));
        // k:                     1  2  3  5 10
        assert_eq!(counts[0], [1, 2, 2, 3, 3]);
        assert_eq!(counts[1], [1, 2, 2, 2, 2]); // row 2 (ranks 4, 2) masked out
        assert_eq!(counts[2], [0, 1, 1, 1, 2]); // row 0 needs k > 9; row 1 needs k > 1
    }
}
