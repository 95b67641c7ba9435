//! Training batches by token budget: consecutive records of a seeded permutation per epoch
//! (`shards::epoch_order`), at least one record per batch, an epoch's last batch possibly smaller.
//! The position (epoch, cursor) is what a checkpoint saves to continue the data order exactly.

use serde::{Deserialize, Serialize};

use crate::train::shards::epoch_order;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    /// Records of this epoch's order already served.
    pub cursor: usize,
}

pub struct Batcher {
    train: Vec<usize>,
    seed: u64,
    batch_tokens: usize,
    order: Vec<usize>,
    pub pos: DataPosition,
}

impl Batcher {
    /// Batches over the record positions `train`, continuing from `pos`.
    pub fn new(train: Vec<usize>, seed: u64, batch_tokens: usize, pos: DataPosition) -> Self {
        let order = epoch_order(&train, seed, pos.epoch);
        Batcher { train, seed, batch_tokens, order, pos }
    }

    /// The next batch's record positions; `tokens(i)` is record i's length as trained.
    pub fn next_batch(&mut self, tokens: impl Fn(usize) -> usize) -> Vec<usize> {
        if self.pos.cursor >= self.order.len() {
            self.pos = DataPosition { epoch: self.pos.epoch + 1, cursor: 0 };
            self.order = epoch_order(&self.train, self.seed, self.pos.epoch);
        }
        let mut batch = Vec::new();
        let mut total = 0;
        for &i in &self.order[self.pos.cursor..] {
            if !batch.is_empty() && total + tokens(i) > self.batch_tokens {
                break;
            }
            total += tokens(i);
            batch.push(i);
        }
        self.pos.cursor += batch.len();
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_fill_the_budget_cover_each_epoch_and_resume_from_a_position() {
        let len = |i: usize| 10 + i;
        let train: Vec<usize> = (0..9).collect();
        let mut a = Batcher::new(train.clone(), 3, 35, DataPosition::default());
        let mut epoch = Vec::new();
        while a.pos.epoch == 0 && a.pos.cursor < train.len() {
            let batch = a.next_batch(len);
            let tokens: usize = batch.iter().map(|&i| len(i)).sum();
            assert!(!batch.is_empty() && (tokens <= 35 || batch.len() == 1), "{batch:?}");
            epoch.extend(batch);
        }
        epoch.sort_unstable();
        assert_eq!(epoch, train, "an epoch serves every record once");
        a.next_batch(len);
        assert_eq!(a.pos.epoch, 1);
        let mut b = Batcher::new(train, 3, 35, a.pos);
        for _ in 0..6 {
            assert_eq!(a.next_batch(len), b.next_batch(len), "a batcher rebuilt from a position continues the order");
        }
    }
}
