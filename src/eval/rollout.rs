//! The rollout of a draft head run free through the drafting path (clover2.md §8; eagle.md §5's
//! "chain acceptance over 5 steps"), for either head kind, on gen-data records. For each position
//! t the head consumes the pair (feature_t, x_{t+1}) as decoding commits it (`DraftHead::begin`),
//! then drafts a chain: depth i's logits are looked up for the base model's argmax at position
//! t + 1 + i, and depth i + 1 expands the node of the data's token x_{t+2+i}. On the base model's
//! own greedy answers that token is the argmax, the one an accepted draft continues with, so the
//! chain is the one decoding would accept; EAGLE-1's deeper depths then read its own predicted
//! features, which distill's teacher-forced evaluation does not run.
//!
//! Features, rows and masks are those of distill's held-out evaluation: the record's stored
//! features (bf16, where decoding computes them in f32), depth i from position t counted where
//! the loss mask is set at t ..= t + i (`train::align`: a chain that stays in the answer), as
//! fractions of depth 0's rows. So for Clover-2, whose heads consume the data's tokens in training
//! too, both give the same figures up to the two paths' rounding.

use crate::backend::Backend;
use crate::draft::DraftHead;
use crate::error::{Error, Result};
use crate::model::{ForwardOutput, Llama};
use crate::sampling::{argmax, top_k_indices};
use crate::train::align::aligned_loss_mask;
use crate::train::losses::LM_HEAD_ROWS;
use crate::train::rollout::{rollout_counts, Rollout, MAX_TOP, ROLLOUT_TOPS};
use crate::train::shards::Record;

/// The spec's chain length: five draft depths (Clover-2's five heads).
pub const ROLLOUT_DEPTH: usize = 5;

/// Counts over conversations: per depth and k of `ROLLOUT_TOPS`, the chains accepted through it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutCounts {
    /// Depth 0's counted rows: the positions a chain starts from.
    pub positions: usize,
    pub accepted: Vec<[usize; ROLLOUT_TOPS.len()]>,
    pub tokens: usize,
    pub conversations: usize,
}

impl RolloutCounts {
    /// Per k, the accepted fractions per depth.
    pub fn rollouts(&self) -> Vec<Rollout> {
        Rollout::fractions(self.accepted.iter(), self.positions)
    }

    fn add(&mut self, depth_counts: &[[usize; ROLLOUT_TOPS.len()]], positions: usize, tokens: usize) {
        if self.accepted.len() < depth_counts.len() {
            self.accepted.resize(depth_counts.len(), [0; ROLLOUT_TOPS.len()]);
        }
        for (total, counts) in self.accepted.iter_mut().zip(depth_counts) {
            total.iter_mut().zip(counts).for_each(|(a, b)| *a += b);
        }
        self.positions += positions;
        self.tokens += tokens;
        self.conversations += 1;
    }
}

/// Runs the rollout of `head` over one gen-data record to `depth` drafts, adding to `totals`.
pub fn rollout_record<B: Backend>(
    model: &Llama<B>,
    head: &mut dyn DraftHead<B>,
    rec: &Record,
    depth: usize,
    totals: &mut RolloutCounts,
) -> Result<()> {
    let (n, hidden) = (rec.len(), model.config.hidden_size);
    if rec.hidden_state.len() != n * hidden || rec.hidden_state_prenorm.len() != n * hidden {
        return Err(Error::input(format!("rollout: record {} has features of another width than {hidden}", rec.index)));
    }
    let ids = &rec.input_ids;
    let depth = depth.min(head.max_depth());
    let mask: Vec<bool> = aligned_loss_mask(&rec.loss_mask).iter().map(|&m| m != 0).collect();
    let mut rank: Vec<Vec<Option<usize>>> = (0..depth).map(|i| vec![None; n.saturating_sub(i)]).collect();
    if n >= 2 && depth > 0 {
        let b = &model.backend;
        let base = ForwardOutput {
            logits: Vec::new(),
            prenorm: b.upload(&rec.hidden_state_prenorm),
            postnorm: b.upload(&rec.hidden_state),
        };
        let base_argmax = base_argmax(model, &base.postnorm, n);
        head.reset();
        for t in 0..n - 1 {
            let mut logits = head.begin(model, &base, &[t], &[ids[t + 1]])?;
            // Depth i from t predicts x_{t+2+i}: a chain runs while the mask at t + i is set.
            let Some(deepest) = (0..depth).take_while(|&i| t + i < n && mask[t + i]).last() else { continue };
            for i in 0..=deepest {
                let row = logits.to_host(b);
                let column_token = |c: usize| head.draft_vocab().map_or(c, |ids| ids[c] as usize);
                let want = base_argmax[t + 1 + i];
                let found = top_k_indices(&row, MAX_TOP).iter().position(|&c| column_token(c) == want);
                rank[i][t] = found;
                if found.is_none() || i == deepest {
                    break;
                }
                logits = head.expand(model, &[0], &[ids[t + 2 + i]])?;
            }
        }
    }
    let counts = rollout_counts(&rank, |i, t| (t..=t + i).all(|p| mask[p]));
    totals.add(&counts, mask.iter().filter(|&&m| m).count(), n);
    Ok(())
}

/// The base model's greedy choice after each of `n` positions, from their post-norm features,
/// projected in chunks (a whole conversation's `[n, vocab]` logits would take gigabytes).
fn base_argmax<B: Backend>(model: &Llama<B>, postnorm: &B::Buf, n: usize) -> Vec<usize> {
    let (b, hidden, vocab) = (&model.backend, model.config.hidden_size, model.config.vocab_size);
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(LM_HEAD_ROWS) {
        let rows = LM_HEAD_ROWS.min(n - start);
        let logits = model.project(&b.slice_rows(postnorm, hidden, start, rows), rows);
        out.extend(logits.chunks_exact(vocab).map(argmax));
    }
    out
}
