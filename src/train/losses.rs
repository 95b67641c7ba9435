//! The distillation losses of every head of a record (clover2.md §8, eagle.md §5): SmoothL1 of the
//! head output against the post-norm target, and soft cross-entropy of lm_head(head output)
//! against the teacher softmax(lm_head(target)), masked sums over the batch divided by
//! (Σ mask + offset), weighted per head.
//!
//! The lm_head projections dominate a training step (T × V × H multiply-adds per head for the
//! student, as many again for its input gradient, V = 49152 against H = 576), so:
//! - only masked-in rows are projected (gathered; their gradients scattered back);
//! - rows go through in chunks of `LM_HEAD_ROWS`, bounding the `[chunk, V]` logits buffers;
//! - the teacher logits are computed once per target row and shared by every head: the teacher of
//!   head i at row t is lm_head(target[t+i]), so for a given target row j the heads' rows
//!   t = j − i all learn the same distribution.

use crate::backend::Backend;
use crate::draft::vocab::DraftLmHead;
use crate::model::Llama;
use crate::sampling::{argmax, top_k_indices};
use crate::train::align::Aligned;
use crate::train::rollout::{rollout_counts, MAX_TOP, ROLLOUT_TOPS};

/// Target rows per lm_head pass: three `[rows, V]` buffers (teacher, student, gradient) of 50 MB
/// each at V = 49152, and 256 rows keep the GEMMs' row tiles busy on every core.
pub const LM_HEAD_ROWS: usize = 256;

/// How a head kind weighs its loss terms.
#[derive(Clone, Debug, PartialEq)]
pub struct LossSpec {
    /// Per head, the weights of its vloss and ploss in the total (decay included).
    pub vloss: Vec<f32>,
    pub ploss: Vec<f32>,
    /// Added to Σ mask in the denominators.
    pub offset: f32,
    /// The weights of vloss and ploss before the per-head decay (clover2.md: 10 and 1; eagle.md:
    /// 1 and 0.1), which `with_terms` replaces.
    pub terms: (f32, f32),
}

/// Row weights of one head's two loss terms: mask × scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadScale {
    pub vloss: f32,
    pub ploss: f32,
}

/// One head's masked sums over some rows: Σ m·vloss_row and Σ m·ploss_row, each times its scale,
/// the masked-in rows and, when asked, how many of them have the base model's top-1 token on top.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeadSums {
    pub vloss: f64,
    pub ploss: f64,
    pub rows: usize,
    /// Held-out rows whose base-model argmax is the head's first choice, among its first two,
    /// among its first three (clover2.md §8's logged top-1/2/3 accuracy).
    pub top1: usize,
    pub top2: usize,
    pub top3: usize,
    /// clover2.md §8's rollout on held-out data, per `ROLLOUT_TOPS[j]` = k: the rows t where heads
    /// 0..=i each have the base model's argmax among their first k choices (head i's row t
    /// continues head 0's row t by i tokens), i.e. a chain of top-k drafts from position t accepted
    /// through depth i. Each head consumes the data's tokens; on text that follows the base
    /// model's greedy choices (`--eval-data` made from its own answers) those are the tokens an
    /// accepted draft continues with, so the teacher-forced chain is the free-running one.
    pub rollout: [usize; ROLLOUT_TOPS.len()],
}

impl HeadSums {
    pub fn add(&mut self, o: &HeadSums) {
        self.vloss += o.vloss;
        self.ploss += o.ploss;
        self.rows += o.rows;
        self.top1 += o.top1;
        self.top2 += o.top2;
        self.top3 += o.top3;
        self.rollout.iter_mut().zip(&o.rollout).for_each(|(a, b)| *a += b);
    }
}

impl LossSpec {
    /// eagle.md §5: 1.0·vloss + 0.1·ploss, denominators Σ mask + 1e-5.
    pub fn eagle() -> Self {
        LossSpec { vloss: vec![1.0], ploss: vec![0.1], offset: 1e-5, terms: (1.0, 0.1) }
    }

    /// clover2.md §8: head i weighs (10·vloss_i + 1·ploss_i)·coefficient·decay^i, denominators
    /// Σ mask_i + 1.
    pub fn clover(heads: usize, coefficient: f64, decay: f64) -> Self {
        let w: Vec<f64> = (0..heads).map(|i| coefficient * decay.powi(i as i32)).collect();
        LossSpec {
            vloss: w.iter().map(|w| (10.0 * w) as f32).collect(),
            ploss: w.iter().map(|&w| w as f32).collect(),
            offset: 1.0,
            terms: (10.0, 1.0),
        }
    }

    /// The same heads and decay with vloss and ploss weighed `vloss` and `ploss` instead of the
    /// spec's terms (a training experiment: `distill --loss-weights`).
    pub fn with_terms(mut self, vloss: f32, ploss: f32) -> Self {
        let (v0, p0) = self.terms;
        self.vloss.iter_mut().for_each(|w| *w *= vloss / v0);
        self.ploss.iter_mut().for_each(|w| *w *= ploss / p0);
        self.terms = (vloss, ploss);
        self
    }

    pub fn heads(&self) -> usize {
        self.vloss.len()
    }

    /// Training scales for a batch whose heads have `mask_sums` masked-in rows: the returned sums
    /// are then the heads' terms of the total loss, and their gradients the loss's.
    pub fn batch_scales(&self, mask_sums: &[usize]) -> Vec<HeadScale> {
        (0..self.heads())
            .map(|i| {
                let denom = mask_sums[i] as f32 + self.offset;
                HeadScale { vloss: self.vloss[i] / denom, ploss: self.ploss[i] / denom }
            })
            .collect()
    }

    /// Scales 1: plain masked sums, for evaluation over many records (`total` combines them).
    pub fn unit_scales(&self) -> Vec<HeadScale> {
        vec![HeadScale { vloss: 1.0, ploss: 1.0 }; self.heads()]
    }

    /// Per head (vloss_i, ploss_i) as the spec defines them: masked mean over the rows, from
    /// sums taken with `batch_scales` (`unit = false`) or `unit_scales` (`unit = true`).
    pub fn per_head(&self, sums: &[HeadSums], unit: bool) -> Vec<(f64, f64)> {
        sums.iter()
            .enumerate()
            .map(|(i, s)| {
                if unit {
                    let denom = s.rows as f64 + self.offset as f64;
                    (s.vloss / denom, s.ploss / denom)
                } else {
                    (s.vloss / self.vloss[i] as f64, s.ploss / self.ploss[i] as f64)
                }
            })
            .collect()
    }

    /// The total loss from per-head (vloss_i, ploss_i).
    pub fn total(&self, losses: &[(f64, f64)]) -> f64 {
        losses.iter().enumerate().map(|(i, (v, p))| self.vloss[i] as f64 * v + self.ploss[i] as f64 * p).sum()
    }
}

/// What to compute besides the loss sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wants {
    /// dL/df for every head.
    pub grads: bool,
    /// Top-k agreement with the base model and the rollout (downloads the logits).
    pub agreement: bool,
}

/// The losses of heads 0..n of one record, head i's output `f[i]` being `[rows(i), H]`, over
/// the vocabulary of `lm` (the base lm_head, or its rows for a draft vocabulary: the teacher is
/// then the base distribution renormalised over those tokens, the only ones the head can draft).
/// Top-1 agreement is always against the base model's argmax over the full vocabulary. Returns
/// the sums per head and, with `wants.grads`, `dL/df[i]` for each.
#[allow(clippy::too_many_arguments)]
pub fn head_losses<B: Backend>(
    b: &B,
    base: &Llama<B>,
    lm: &DraftLmHead<B>,
    a: &Aligned,
    target: &B::Buf,
    f: &[B::Buf],
    scales: &[HeadScale],
    wants: Wants,
) -> (Vec<HeadSums>, Vec<B::Buf>) {
    let hidden = base.config.hidden_size;
    let (lm_head, vocab) = (lm.weight(base), lm.width(base));
    let mut sums = vec![HeadSums::default(); f.len()];
    let mut grads = Vec::with_capacity(f.len());
    // Per head and row, the rank of the base model's argmax among the head's choices, when it is
    // among the first `MAX_TOP` (held-out passes only).
    let mut rank: Vec<Vec<Option<usize>>> =
        if wants.agreement { (0..f.len()).map(|i| vec![None; a.rows(i)]).collect() } else { Vec::new() };
    // SmoothL1 over every row (masked rows get weight 0): cheap, H wide. It writes its gradient,
    // so it goes first and the cross-entropy's is added to it.
    for (i, fi) in f.iter().enumerate() {
        let rows = a.rows(i);
        let target_i = b.slice_rows(target, hidden, a.target_row(i, 0), rows);
        let weights: Vec<f32> = (0..rows).map(|t| a.row_mask(i, t) as f32 * scales[i].vloss).collect();
        let mut d = b.zeros(rows * hidden);
        sums[i].vloss = b.smooth_l1(fi, &target_i, &weights, &mut d) as f64;
        sums[i].rows = a.mask_sum(i);
        grads.push(d);
    }
    let active: Vec<usize> = (0..a.len).filter(|&j| a.target_used(j, f.len())).collect();
    for chunk in active.chunks(LM_HEAD_ROWS) {
        let teacher_in = b.gather_rows(target, hidden, chunk);
        let mut teacher = b.zeros(chunk.len() * vocab);
        b.matmul(&teacher_in, chunk.len(), lm_head, &mut teacher);
        let teacher_top1 = wants.agreement.then(|| match lm.ids() {
            None => argmax_rows(&b.download(&teacher), vocab),
            Some(_) => argmax_rows(&base.project(&teacher_in, chunk.len()), base.config.vocab_size),
        });
        for (i, fi) in f.iter().enumerate() {
            // Head i learns the chunk's teacher rows j ≥ i (target rows j < i have no row in it)
            // whose row j − i is masked in; without a label mask that is a tail of the chunk.
            let learnt: Vec<usize> =
                (0..chunk.len()).filter(|&k| chunk[k] >= i && a.row_mask(i, chunk[k] - i) != 0).collect();
            let rows: Vec<usize> = learnt.iter().map(|&k| chunk[k] - i).collect();
            let n = rows.len();
            if n == 0 {
                continue;
            }
            let x = b.gather_rows(fi, hidden, &rows);
            let mut logits = b.zeros(n * vocab);
            b.matmul(&x, n, lm_head, &mut logits);
            let first = learnt[0];
            let teacher_i = if learnt[n - 1] - first + 1 == n {
                (first > 0 || n < chunk.len()).then(|| b.slice_rows(&teacher, vocab, first, n))
            } else {
                Some(b.gather_rows(&teacher, vocab, &learnt))
            };
            let mut d_logits = b.zeros(n * vocab);
            let weights = vec![scales[i].ploss; n];
            sums[i].ploss +=
                b.soft_cross_entropy(&logits, teacher_i.as_ref().unwrap_or(&teacher), &weights, &mut d_logits) as f64;
            if let Some(want) = &teacher_top1 {
                let token = |column: usize| lm.ids().map_or(column, |ids| ids[column] as usize);
                let want = learnt.iter().map(|&k| want[k]);
                let logits = b.download(&logits);
                let got = logits.chunks_exact(vocab).map(|row| top_k_indices(row, MAX_TOP));
                for ((got, w), &t) in got.zip(want).zip(&rows) {
                    let r = got.iter().position(|&g| token(g) == w);
                    rank[i][t] = r;
                    sums[i].top1 += usize::from(r == Some(0));
                    sums[i].top2 += usize::from(r.is_some_and(|r| r < 2));
                    sums[i].top3 += usize::from(r.is_some_and(|r| r < 3));
                }
            }
            if wants.grads {
                let mut dx = b.zeros(n * hidden);
                b.matmul_backward(&x, &d_logits, n, lm_head, Some(&mut dx), None);
                b.scatter_add_rows(&mut grads[i], hidden, &rows, &dx);
            }
        }
    }
    for (s, counts) in sums.iter_mut().zip(rollout_counts(&rank, |i, t| (0..=i).all(|h| a.row_mask(h, t) != 0))) {
        s.rollout = counts;
    }
    if !wants.grads {
        grads.clear();
    }
    (sums, grads)
}

/// The index of each row's largest value: the base model's greedy choice (`sampling::argmax`).
fn argmax_rows(values: &[f32], width: usize) -> Vec<usize> {
    values.chunks_exact(width).map(argmax).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clover2.md §17 test 4 (the loss ops themselves are checked by hand in backend/cpu/loss.rs):
    /// head 1 of a record whose two positions have masks 1 and 0 weighs its terms
    /// 10·0.7/(1 + 1) and 0.7/(1 + 1); EAGLE's denominators add 1e-5 and weigh ploss 0.1.
    #[test]
    fn spec_weights_and_denominators() {
        let clover = LossSpec::clover(5, 1.0, 0.7);
        let s = clover.batch_scales(&[2, 1, 0, 0, 0]);
        assert!((s[1].vloss - 3.5).abs() < 1e-6 && (s[1].ploss - 0.35).abs() < 1e-7, "{:?}", s[1]);
        assert!((s[0].vloss - 10.0 / 3.0).abs() < 1e-6 && (s[4].ploss - 0.7f32.powi(4)).abs() < 1e-7);
        let eagle = LossSpec::eagle().batch_scales(&[4]);
        assert!((eagle[0].vloss - 1.0 / 4.00001).abs() < 1e-9 && (eagle[0].ploss - 0.1 / 4.00001).abs() < 1e-9);
        // One masked-in row with SmoothL1 0.65625 and cross-entropy 1.4582 sums to 3.5·0.65625 and
        // 0.35·1.4582 under these scales; they read back as the spec's vloss_1 = 0.65625/(1 + 1)
        // and ploss_1 = 1.4582/2, the same as plain sums divided by (Σ mask + 1); the total
        // weighs them back.
        let spec = LossSpec::clover(2, 1.0, 0.7);
        let scaled = vec![
            HeadSums::default(),
            HeadSums { vloss: 3.5 * 0.65625, ploss: 0.35 * 1.4582, rows: 1, ..Default::default() },
        ];
        let plain =
            vec![HeadSums::default(), HeadSums { vloss: 0.65625, ploss: 1.4582, rows: 1, ..Default::default() }];
        for per_head in [spec.per_head(&scaled, false), spec.per_head(&plain, true)] {
            assert!((per_head[1].0 - 0.328125).abs() < 1e-6 && (per_head[1].1 - 0.7291).abs() < 1e-6, "{per_head:?}");
            assert!((spec.total(&per_head) - 0.7 * (10.0 * 0.328125 + 0.7291)).abs() < 1e-5);
        }
    }

    /// `--loss-weights 1,1` on Clover-2 keeps the decay and replaces the terms 10 and 1.
    #[test]
    fn other_term_weights_keep_the_decay() {
        let spec = LossSpec::clover(3, 1.0, 0.7).with_terms(1.0, 2.0);
        assert_eq!(spec.terms, (1.0, 2.0));
        for (i, d) in [1.0f32, 0.7, 0.49].into_iter().enumerate() {
            assert!((spec.vloss[i] - d).abs() < 1e-6 && (spec.ploss[i] - 2.0 * d).abs() < 1e-6, "{spec:?}");
        }
        let eagle = LossSpec::eagle().with_terms(0.5, 0.5);
        assert_eq!((eagle.vloss[0], eagle.ploss[0]), (0.5, 0.5));
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax_rows(&[1.0, 3.0, 3.0, -1.0, -2.0, -1.0], 3), [1, 0]);
    }
}
