//! clover2.md §8's label mask (the reference's `--label_mask`, off by default there and here:
//! `distill --label-mask`). Training is teacher-forced on the data's tokens, written by whoever
//! wrote the conversation, while at inference a head only ever reads tokens the base model would
//! produce: the root is the base's own choice, and a draft token deeper in the tree only matters
//! if the base accepts it. A row whose consumed tokens the base would hardly write teaches the
//! head a context it will not meet. The mask drops those rows: head i's row t counts only if
//! every token it consumed, x_{t+1} ..= x_{t+1+i}, is *plausible* under the base model, i.e.
//! among its `TOP_K` most likely tokens at the position before it and inside its `TOP_P` nucleus
//! (the cumulative product over depths of the spec's "true token ∈ base top-8 ∩ top-p 0.8").
//!
//! Which tokens are tested is this engine's reading of the spec's one line (*inferred*; the
//! reference code was not at hand): the tokens a row consumes, the root included, since those
//! are what inference conditions on; the distribution a head learns is the base's own anyway
//! (soft labels). The option's name would also fit the tokens a row predicts, x_{t+2} ..=
//! x_{t+2+i}: the same test one position later, which trained no differently in a paired trial
//! (docs/clover2-head0.md).

use crate::backend::Backend;
use crate::model::Llama;
use crate::sampling::weights;
use crate::train::losses::LM_HEAD_ROWS;
use crate::train::shards::Record;

/// The spec's thresholds: the true token must be among the base model's 8 most likely...
pub const TOP_K: usize = 8;
/// ...and inside its top-p 0.8 nucleus (the smallest set of most likely tokens whose mass reaches
/// 0.8, the token that reaches it included: clover2.md §11's boundary, compared exactly here).
pub const TOP_P: f64 = 0.8;

/// Whether `token` is among the `TOP_K` largest of `logits` (the earlier index first on ties, as
/// the base model's greedy choice) and the softmax mass of the tokens ranked before it is below
/// `TOP_P`. The rank comes first, by comparisons alone; only a token in the top `TOP_K` pays for
/// the row's exponentials (`sampling::weights`: NaN logits weigh 0).
pub fn plausible(logits: &[f32], token: usize) -> bool {
    let Some(&x) = logits.get(token) else { return false };
    if x.is_nan() {
        return false;
    }
    let mut ahead = Vec::with_capacity(TOP_K);
    for (k, &v) in logits.iter().enumerate() {
        if v > x || (v == x && k < token) {
            if ahead.len() + 1 == TOP_K {
                return false;
            }
            ahead.push(k);
        }
    }
    let (weights, total) = weights(logits, 1.0);
    let before: f64 = ahead.iter().map(|&k| weights[k] as f64).sum();
    before < TOP_P * total
}

/// Per position p of `rec`, 1 where the next token x_{p+1} is plausible under the base model at
/// p (its post-norm feature h_p projected through the full lm_head), else 0. Only positions a
/// masked-in row of one of `heads` heads can read are projected: p within `heads − 1` positions
/// before a position whose loss mask is set (so user turns cost nothing). The others, and the
/// last position (no next token), are 0.
pub fn plausible_positions<B: Backend>(base: &Llama<B>, rec: &Record, heads: usize) -> Vec<u8> {
    let (len, hidden, vocab) = (rec.len(), base.config.hidden_size, base.config.vocab_size);
    let b = &base.backend;
    let read = |p: usize| (p..(p + heads).min(len)).any(|q| rec.loss_mask[q] != 0);
    let wanted: Vec<usize> = (0..len.saturating_sub(1)).filter(|&p| read(p)).collect();
    let mut out = vec![0u8; len];
    if wanted.is_empty() {
        return out;
    }
    for chunk in wanted.chunks(LM_HEAD_ROWS) {
        // Only the wanted rows go to the backend, not the whole record.
        let features: Vec<f32> =
            chunk.iter().flat_map(|&p| &rec.hidden_state[p * hidden..(p + 1) * hidden]).copied().collect();
        let logits = base.project(&b.upload(&features), chunk.len());
        for (&p, row) in chunk.iter().zip(logits.chunks_exact(vocab)) {
            out[p] = plausible(row, rec.input_ids[p + 1] as usize) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::random::{tiny_llama_config, write_random_model};
    use crate::rng::Rng;

    /// Each position against a projection of its own feature row alone: entry p tests x_{p+1}
    /// against lm_head(h_p); positions no masked-in row reads, and the last, are 0; records
    /// shorter than the heads, of one position and of none work.
    #[test]
    fn positions_pair_each_feature_with_the_next_token() {
        let dir = std::env::temp_dir().join(format!("clover-label-mask-{}", std::process::id()));
        write_random_model(&dir, &tiny_llama_config(24), 5).unwrap();
        let base = Llama::load(&dir, CpuBackend).unwrap();
        let h = base.config.hidden_size;
        let mut rng = Rng::new(9);
        let record = |len: usize, loss_mask: Vec<u8>, rng: &mut Rng| Record {
            index: 0,
            input_ids: (0..len).map(|_| (rng.next_u64() % 24) as u32).collect(),
            hidden_state: (0..len * h).map(|_| 3.0 * (2.0 * rng.uniform_f32() - 1.0)).collect(),
            hidden_state_prenorm: vec![0.0; len * h],
            loss_mask,
        };
        let (mut seen_plausible, mut seen_not) = (false, false);
        for (len, heads, loss_mask) in [
            (40, 3, (0..40).map(|p| u8::from(p >= 12 && p % 9 != 0)).collect::<Vec<_>>()),
            (3, 5, vec![0, 1, 1]),
            (1, 2, vec![1]),
            (0, 2, vec![]),
        ] {
            let rec = record(len, loss_mask, &mut rng);
            let got = plausible_positions(&base, &rec, heads);
            assert_eq!(got.len(), len);
            for (p, &entry) in got.iter().enumerate() {
                let read = (p..(p + heads).min(len)).any(|q| rec.loss_mask[q] != 0);
                let want = if p + 1 < len && read {
                    let row = base.backend.upload(&rec.hidden_state[p * h..(p + 1) * h]);
                    plausible(&base.project(&row, 1), rec.input_ids[p + 1] as usize)
                } else {
                    false
                };
                assert_eq!(entry, want as u8, "length {len}, position {p}");
                seen_plausible |= want;
                seen_not |= p + 1 < len && read && !want;
            }
        }
        assert!(seen_plausible && seen_not, "the record tests both outcomes");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Logits whose softmax is `probs` (up to rounding).
    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    #[test]
    fn top_p_includes_the_token_that_reaches_it() {
        // 0.5, 0.25, 0.15, 0.1: mass before each 0, 0.5, 0.75, 0.9.
        let l = logits_of(&[0.15, 0.5, 0.1, 0.25]);
        assert!(plausible(&l, 1), "the first choice always");
        assert!(plausible(&l, 3), "0.5 before it");
        assert!(plausible(&l, 0), "0.75 before it: this token reaches 0.8");
        assert!(!plausible(&l, 2), "0.9 before it");
    }

    #[test]
    fn top_k_cuts_a_flat_distribution() {
        // Twenty equal tokens: mass before rank r is r/20, under 0.8 up to rank 15, but only
        // ranks 0..8 are in the top 8 (ties ranked by index).
        let l = vec![1.5f32; 20];
        let kept: Vec<usize> = (0..20).filter(|&k| plausible(&l, k)).collect();
        assert_eq!(kept, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn nan_and_out_of_range_tokens_are_not_plausible() {
        let l = vec![0.0, f32::NAN, 1.0];
        assert!(!plausible(&l, 1));
        assert!(!plausible(&l, 3));
        assert!(plausible(&l, 2) && plausible(&l, 0), "a NaN elsewhere is skipped");
    }
}
