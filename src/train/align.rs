//! Teacher-forcing alignment of a gen-data record (clover2.md §8, eagle.md §3), shared by both
//! head kinds. Position t pairs the base feature at t with the next token x_{t+1}; the regression
//! target at t is h_{t+1}, the post-norm feature of the next position. The last position has no
//! next token or target: its token is 0, its target a zero row and its mask 0.
//!
//! Head i (Clover-2 heads 0..K; EAGLE is head 0) has rows t = 0..T−i. Row t has consumed the true
//! tokens x_{t+1} ..= x_{t+1+i}, regresses onto target[t+i] = h_{t+1+i}, learns the teacher
//! softmax(lm_head(target[t+i])) and is weighted by mask[t+i]. Each head's last row lands on the
//! last position and is therefore masked.
//!
//! With a label mask (`label_mask.rs`), head i's row t also needs every token it consumed to be
//! plausible under the base model, so the heads' masks differ: they are no longer one mask read
//! at t + i.

use crate::train::shards::Record;

/// Keeps the first `max_len` positions of a record (the reference truncates to 2048).
pub fn truncate(rec: &mut Record, max_len: usize, hidden: usize) {
    rec.input_ids.truncate(max_len);
    rec.loss_mask.truncate(max_len);
    rec.hidden_state.truncate(max_len * hidden);
    rec.hidden_state_prenorm.truncate(max_len * hidden);
}

/// The loss mask as 0/1 with the last position forced to 0: it has no next token to learn.
pub fn aligned_loss_mask(loss_mask: &[u8]) -> Vec<u8> {
    let mut mask: Vec<u8> = loss_mask.iter().map(|&m| (m != 0) as u8).collect();
    if let Some(last) = mask.last_mut() {
        *last = 0;
    }
    mask
}

pub struct Aligned {
    pub len: usize,
    /// `ids'[t] = x_{t+1}`; `ids'[T−1] = 0`.
    pub next_ids: Vec<u32>,
    /// `[T, H]`: `target[t] = h_{t+1}`; the last row is zeros.
    pub target: Vec<f32>,
    /// The loss mask with the last position forced to 0.
    pub mask: Vec<u8>,
    /// Per position p, whether x_{p+1} is plausible under the base model (`label_mask.rs`);
    /// None: no label mask.
    plausible: Option<Vec<u8>>,
}

impl Aligned {
    pub fn new(rec: &Record, hidden: usize) -> Self {
        let len = rec.len();
        let mut next_ids: Vec<u32> = rec.input_ids.iter().skip(1).copied().collect();
        next_ids.push(0);
        let mut target = rec.hidden_state[hidden.min(rec.hidden_state.len())..].to_vec();
        target.resize(len * hidden, 0.0);
        Aligned { len, next_ids, target, mask: aligned_loss_mask(&rec.loss_mask), plausible: None }
    }

    /// The same alignment under the label mask: `plausible[p]` says whether x_{p+1} is plausible
    /// under the base model at p (`label_mask::plausible_positions`), one entry per position.
    pub fn with_label_mask(mut self, plausible: Vec<u8>) -> Self {
        assert_eq!(plausible.len(), self.len, "one plausibility per position");
        self.plausible = Some(plausible);
        self
    }

    /// Rows of head i.
    pub fn rows(&self, head: usize) -> usize {
        self.len.saturating_sub(head)
    }

    /// The tokens head i embeds, one per row: row t's newest token x_{t+1+i}. Row t of head i
    /// has consumed row t of heads 0..=i: x_{t+1} ..= x_{t+1+i}.
    pub fn head_tokens(&self, head: usize) -> &[u32] {
        &self.next_ids[head.min(self.len)..]
    }

    /// The row of `target` that row t of head i regresses onto (and whose teacher it learns).
    pub fn target_row(&self, head: usize, t: usize) -> usize {
        t + head
    }

    /// Row t's weight in head i's loss sums: the loss mask at t + i and, under a label mask,
    /// whether the row's consumed tokens x_{t+1} ..= x_{t+1+i} are all plausible.
    pub fn row_mask(&self, head: usize, t: usize) -> u8 {
        let consumed_plausible = self.plausible.as_ref().is_none_or(|p| p[t..=t + head].iter().all(|&ok| ok != 0));
        self.mask[t + head] * consumed_plausible as u8
    }

    /// `Σ_t mask_i[t]`: head i's term of its loss denominator.
    pub fn mask_sum(&self, head: usize) -> usize {
        (0..self.rows(head)).map(|t| self.row_mask(head, t) as usize).sum()
    }

    /// The rows of head i the loss mask alone counts: `mask_sum` without a label mask.
    pub fn loss_mask_sum(&self, head: usize) -> usize {
        self.mask.iter().skip(head).map(|&m| m as usize).sum()
    }

    /// Whether some head among the first `heads` has a masked-in row regressing onto target row
    /// j (and so learning its teacher distribution).
    pub fn target_used(&self, j: usize, heads: usize) -> bool {
        (0..heads.min(j + 1)).any(|i| self.row_mask(i, j - i) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clover2.md §17 test 3 on a toy record with T = 6: head i row t uses target t+i, mask
    /// loss_mask[t+i] and tokens x_{t+1} ..= x_{t+1+i}; each head's last row is masked.
    #[test]
    fn toy_record_alignment() {
        let h = 2;
        let rec = Record {
            index: 0,
            input_ids: vec![100, 101, 102, 103, 104, 105],
            // h_t = [t, −t]
            hidden_state: (0..6).flat_map(|t| [t as f32, -(t as f32)]).collect(),
            hidden_state_prenorm: vec![0.0; 12],
            loss_mask: vec![0, 1, 1, 0, 1, 1],
        };
        let a = Aligned::new(&rec, h);
        assert_eq!(a.next_ids, [101, 102, 103, 104, 105, 0]);
        assert_eq!(a.target, [1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 4.0, -4.0, 5.0, -5.0, 0.0, 0.0]);
        assert_eq!(a.mask, [0, 1, 1, 0, 1, 0]);
        for i in 0..5 {
            assert_eq!(a.rows(i), 6 - i);
            assert_eq!(a.head_tokens(i).len(), a.rows(i));
            for t in 0..a.rows(i) {
                let j = a.target_row(i, t);
                assert_eq!(j, t + i);
                // target[t+i] = h_{t+1+i}, the zero row past the end.
                let want = if t + i + 1 < 6 { (t + i + 1) as f32 } else { 0.0 };
                assert_eq!(a.target[j * h], want);
                assert_eq!(a.row_mask(i, t), if t + i == 5 { 0 } else { rec.loss_mask[t + i] });
                let consumed: Vec<u32> = (0..=i).map(|k| a.head_tokens(k)[t]).collect();
                if t + 1 + i < 6 {
                    assert_eq!(consumed, &rec.input_ids[t + 1..=t + 1 + i]);
                } else {
                    assert_eq!(consumed.last(), Some(&0), "past the end: the padding token");
                }
            }
            assert_eq!(a.row_mask(i, a.rows(i) - 1), 0, "head {i}: the last row is masked");
            assert_eq!(a.mask_sum(i), (0..a.rows(i)).map(|t| a.row_mask(i, t) as usize).sum::<usize>());
        }
        assert_eq!((a.mask_sum(0), a.mask_sum(2), a.mask_sum(4)), (3, 2, 1));
    }

    /// Under a label mask, head i's row t needs x_{t+1} ..= x_{t+1+i} plausible (positions
    /// t ..= t+i) as well as the loss mask at t + i; a head's denominator counts what is left.
    #[test]
    fn label_mask_is_a_cumulative_product_over_consumed_tokens() {
        let rec = Record {
            index: 0,
            input_ids: vec![100, 101, 102, 103, 104, 105, 106],
            hidden_state: vec![0.0; 7],
            hidden_state_prenorm: vec![0.0; 7],
            loss_mask: vec![0, 1, 1, 1, 1, 1, 1],
        };
        // x_2 (position 1) and x_5 (position 4) implausible.
        let plausible = vec![1, 0, 1, 1, 0, 1, 1];
        let a = Aligned::new(&rec, 1).with_label_mask(plausible.clone());
        let rows = |i: usize| (0..a.rows(i)).map(|t| a.row_mask(i, t)).collect::<Vec<_>>();
        // Head 0 row t: mask[t] · ok[t]; the last position is masked.
        assert_eq!(rows(0), [0, 0, 1, 1, 0, 1, 0]);
        // Head 1 row t: mask[t+1] · ok[t] · ok[t+1].
        assert_eq!(rows(1), [0, 0, 1, 0, 0, 0]);
        assert_eq!(rows(2), [0, 0, 0, 0, 0]);
        assert_eq!((0..3).map(|i| a.mask_sum(i)).collect::<Vec<_>>(), [3, 1, 0]);
        // Target row j is learnt by head 0 (row j) or head 1 (row j − 1).
        let used: Vec<usize> = (0..7).filter(|&j| a.target_used(j, 2)).collect();
        assert_eq!(used, [2, 3, 5]);
        // Everything plausible: the plain alignment.
        let all = Aligned::new(&rec, 1).with_label_mask(vec![1; 7]);
        let plain = Aligned::new(&rec, 1);
        for i in 0..5 {
            assert_eq!(all.mask_sum(i), plain.mask_sum(i));
            assert_eq!(a.loss_mask_sum(i), plain.mask_sum(i), "what the loss mask alone counts");
            assert!((0..plain.rows(i)).all(|t| all.row_mask(i, t) == plain.row_mask(i, t)));
        }
        assert!((0..7).all(|j| plain.target_used(j, 5) == (plain.mask[j] != 0)));
    }
}
