//! Logit processing and sampling. `process` is the single place where temperature, top-k and top-p
//! are applied, so the verifiers (eagle.md §11) and the vanilla loop see the same distribution; the
//! reference's raw-logits bonus token (eagle.md §11.2, clover2.md P1) cannot happen when every
//! distribution comes from here.

use std::cmp::Ordering;

use crate::rng::Rng;
use crate::vexp::{exp_lanes, LANES};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest most-likely set whose mass reaches top_p; 1 = off.
    pub top_p: f32,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 }
    }

    /// Plain temperature sampling, the setting of the EAGLE and Clover evaluations.
    pub fn with_temperature(temperature: f32) -> Self {
        SamplingParams { temperature, top_k: 0, top_p: 1.0 }
    }

    /// A negative temperature has no meaning; treating it as greedy keeps `process` well defined.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// The processed next-token distribution over the whole vocabulary: temperature, then top-k, then
/// top-p, renormalised. Greedy parameters give the one-hot distribution of `argmax`, so a sampler
/// driven by it reproduces greedy decoding. NaN logits get probability 0.
pub fn process(logits: &[f32], params: &SamplingParams) -> Vec<f32> {
    if params.is_greedy() {
        let mut p = vec![0.0; logits.len()];
        if !p.is_empty() {
            p[argmax(logits)] = 1.0;
        }
        return p;
    }
    let (mut w, sum) = weights(logits, params.temperature as f64);
    if sum <= 0.0 {
        return vec![1.0 / logits.len() as f32; logits.len()];
    }
    if params.top_k == 0 && params.top_p >= 1.0 {
        let inv = 1.0 / sum;
        w.iter_mut().for_each(|x| *x = (*x as f64 * inv) as f32);
        return w;
    }
    let p: Vec<f64> = w.iter().map(|&x| x as f64 / sum).collect();
    let kept = truncation(&p, params.top_k, params.top_p);
    let mass: f64 = kept.iter().map(|&i| p[i]).sum();
    let mut out = vec![0.0; p.len()];
    for i in kept {
        out[i] = (p[i] / mass) as f32;
    }
    out
}

/// First index of the largest logit in `top_k_indices`' order (NaN ranks as −inf, −0 below +0),
/// so that it equals `top_k_indices(logits, 1)` and the backends' `top_k_rows` with k = 1.
/// 0 for an empty row.
pub fn argmax(logits: &[f32]) -> usize {
    // Two branch-free passes (the largest key, then its first position) vectorise; a running
    // "best so far" does not, and this runs on every greedy row of a 49k vocabulary.
    let Some(best) = logits.iter().map(|&x| rank_key(x)).max() else { return 0 };
    logits.iter().position(|&x| rank_key(x) == best).unwrap_or(0)
}

/// An integer whose order is `f32::total_cmp`'s (so −0 < +0), with NaN ranked as −inf: the
/// order `top_k_indices` and the backends' `top_k_rows` use.
fn rank_key(x: f32) -> i32 {
    let x = if x.is_nan() { f32::NEG_INFINITY } else { x };
    let bits = x.to_bits() as i32;
    // Negative floats order backwards as integers: flip their magnitude bits (as total_cmp does).
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// Inverse-CDF draw. Only indices with positive probability can come out, even when rounding makes
/// the cumulative sum fall short of the drawn value; the row need not be normalised.
pub fn sample(probs: &[f32], rng: &mut Rng) -> usize {
    sample_at(probs, rng.uniform())
}

/// `sample` with its uniform draw `uniform` ∈ [0, 1) given.
pub fn sample_at(probs: &[f32], uniform: f64) -> usize {
    let total: f64 = probs.iter().filter(|&&p| p > 0.0).map(|&p| p as f64).sum();
    let u = uniform * total;
    let mut cum = 0.0;
    let mut last_positive = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cum += p as f64;
            last_positive = i;
            if u < cum {
                return i;
            }
        }
    }
    last_positive
}

/// Up to k distinct draws from q without replacement (eagle.md §11.1), each with
/// q̃_j = q(x_j) / (1 − Σ_{l<j} q(x_l)) clamped to [0, 1]. The denominator is the mass actually left,
/// which equals the formula for a normalised q and matches the renormalised Q_j of the verifier
/// when q is off by rounding. Fewer than k come back when fewer tokens have positive probability.
pub fn sample_without_replacement(q: &[f32], k: usize, rng: &mut Rng) -> Vec<(usize, f32)> {
    let mut rest: Vec<f32> = q.iter().map(|&p| if p > 0.0 { p } else { 0.0 }).collect();
    let mut draws = Vec::with_capacity(k);
    while draws.len() < k {
        let mass: f64 = rest.iter().map(|&p| p as f64).sum();
        if mass <= 0.0 {
            break;
        }
        let x = sample(&rest, rng);
        draws.push((x, (rest[x] as f64 / mass).clamp(0.0, 1.0) as f32));
        rest[x] = 0.0;
    }
    draws
}

/// The k largest logits, best first; ties go to the lower index and NaN ranks last.
pub fn top_k_indices(logits: &[f32], k: usize) -> Vec<usize> {
    best_first(|i| logits[i] as f64, (0..logits.len()).collect(), k)
}

/// exp((x − max) / t) for every logit (the largest weighs 1) and their sum in f64. Sixteen lanes
/// at a time (`vexp`, relative error below 2.5e-7), the maximum and the sum in sixteen lanes: with
/// the scalar f64 `exp` and single running reductions a 49k vocabulary took ~0.39 ms, on every
/// sampled row; now ~0.13 ms (Zen 4 machine kind, medians of 200).
/// Weights below exp(−87) of the largest are 0 (vexp would clamp them to exp(−87)); NaN logits
/// weigh 0. Shifting by the maximum keeps huge logits finite, and the `== max` case keeps ±inf
/// rows from producing inf − inf. A sum of 0 (every logit NaN) is the caller's to handle.
pub(crate) fn weights(logits: &[f32], t: f64) -> (Vec<f32>, f64) {
    // NaN is never greater, so it is skipped; all NaN leaves −inf, and every weight 0.
    // Sixteen running maxima: one running maximum is a chain the compiler cannot reorder.
    let mut maxima = [f32::NEG_INFINITY; LANES];
    for xs in logits.chunks(LANES) {
        for (m, &x) in maxima.iter_mut().zip(xs) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = maxima.into_iter().fold(f32::NEG_INFINITY, |m, x| if x > m { x } else { m });
    let scale = (1.0 / t) as f32;
    // Two simple passes vectorise where one with the special cases did not: the exponentials,
    // then the special cases and the sum.
    let mut w = vec![0.0f32; logits.len()];
    let (mut xs, mut out) = (logits.chunks_exact(LANES), w.chunks_exact_mut(LANES));
    for (xs, out) in (&mut xs).zip(&mut out) {
        out.copy_from_slice(&exp_lanes(std::array::from_fn(|i| (xs[i] - max) * scale)));
    }
    let (tail, out) = (xs.remainder(), out.into_remainder());
    let e = exp_lanes(std::array::from_fn(|i| tail.get(i).map_or(0.0, |&x| (x - max) * scale)));
    out.copy_from_slice(&e[..tail.len()]);
    let mut sums = [0.0f64; LANES];
    for (xs, out) in logits.chunks(LANES).zip(w.chunks_mut(LANES)) {
        for (l, (o, &x)) in out.iter_mut().zip(xs).enumerate() {
            let arg = (x - max) * scale;
            *o = if x == max {
                1.0
            } else if x.is_nan() || arg < -87.0 {
                0.0
            } else {
                *o
            };
            sums[l] += *o as f64;
        }
    }
    (w, sums.iter().sum())
}

/// The tokens that survive top-k and then top-p (`process` calls it only when one is active).
fn truncation(p: &[f64], top_k: usize, top_p: f32) -> Vec<usize> {
    let top_p_on = top_p < 1.0;
    let (mut ranked, mass) = if top_k > 0 {
        let ranked = best_first(|i| p[i], (0..p.len()).collect(), top_k);
        let mass = ranked.iter().map(|&i| p[i]).sum();
        (ranked, mass)
    } else {
        // Tokens under this floor hold less than (1 − top_p) / 2 of the mass together, so the
        // nucleus lies above it; sorting only those keeps a 128k vocabulary cheap. The factor 2
        // leaves room for rounding, so the most likely token always passes.
        let floor = (1.0 - top_p.max(0.0) as f64) / (2 * p.len()) as f64;
        let candidates: Vec<usize> = (0..p.len()).filter(|&i| p[i] >= floor).collect();
        let n = candidates.len();
        (best_first(|i| p[i], candidates, n), 1.0)
    };
    if top_p_on {
        ranked.truncate(nucleus_len(p, &ranked, mass, top_p));
    }
    ranked
}

/// Length of the shortest prefix of `ranked` holding top_p of `mass` (at least 1).
fn nucleus_len(p: &[f64], ranked: &[usize], mass: f64, top_p: f32) -> usize {
    // Relative slack so that a top_p equal to a cumulative sum in exact arithmetic still stops there.
    let target = top_p as f64 * mass * (1.0 - 1e-6);
    let mut cum = 0.0;
    for (n, &i) in ranked.iter().enumerate() {
        cum += p[i];
        if cum >= target {
            return n + 1;
        }
    }
    ranked.len()
}

/// The k best of `candidates` by `key`, descending, ties to the lower index, NaN last. Selecting
/// before sorting makes this O(V + k log k).
fn best_first(key: impl Fn(usize) -> f64, mut candidates: Vec<usize>, k: usize) -> Vec<usize> {
    let key = |i: usize| {
        let x = key(i);
        if x.is_nan() {
            f64::NEG_INFINITY
        } else {
            x
        }
    };
    let order = |a: &usize, b: &usize| -> Ordering { key(*b).total_cmp(&key(*a)).then(a.cmp(b)) };
    let k = k.min(candidates.len());
    if k == 0 {
        return Vec::new();
    }
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, order);
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(order);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    fn ln(p: &[f32]) -> Vec<f32> {
        p.iter().map(|x| x.ln()).collect()
    }

    #[test]
    fn temperature_rescales_log_probabilities() {
        let logits = ln(&[0.5, 0.25, 0.25]);
        let p = process(&logits, &SamplingParams::with_temperature(0.5));
        // p^(1/T) = p² normalised: 0.25, 0.0625, 0.0625 over 0.375.
        assert!(close(&p, &[2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0]), "{p:?}");
        let p = process(&logits, &SamplingParams::with_temperature(1.0));
        assert!(close(&p, &[0.5, 0.25, 0.25]), "{p:?}");
    }

    #[test]
    fn top_k_then_top_p_on_hand_cases() {
        let logits = ln(&[0.1, 0.4, 0.2, 0.3]);
        let k2 = SamplingParams { temperature: 1.0, top_k: 2, top_p: 1.0 };
        assert!(close(&process(&logits, &k2), &[0.0, 4.0 / 7.0, 0.0, 3.0 / 7.0]));
        // Sorted 0.4, 0.3, 0.2, 0.1: cumulative 0.4, 0.7, 0.9 — 0.75 needs three tokens.
        let p75 = SamplingParams { temperature: 1.0, top_k: 0, top_p: 0.75 };
        assert!(close(&process(&logits, &p75), &[0.0, 4.0 / 9.0, 2.0 / 9.0, 3.0 / 9.0]));
        // The token that reaches top_p exactly is the last one kept.
        let p70 = SamplingParams { top_p: 0.7, ..p75 };
        assert!(close(&process(&logits, &p70), &[0.0, 4.0 / 7.0, 0.0, 3.0 / 7.0]));
        // top-p applies to the renormalised top-k set: 4/7 < 0.6, so both stay.
        let both = SamplingParams { temperature: 1.0, top_k: 2, top_p: 0.6 };
        assert!(close(&process(&logits, &both), &[0.0, 4.0 / 7.0, 0.0, 3.0 / 7.0]));
        let tiny = SamplingParams { top_p: 0.0, ..p75 };
        assert!(close(&process(&logits, &tiny), &[0.0, 1.0, 0.0, 0.0]));
    }

    #[test]
    fn temperature_applies_before_top_p() {
        // T = 0.5 turns 0.5/0.3/0.2 into 25/9/4 over 38; top-p 0.9 then drops the last (34/38 ≥ 0.85).
        let logits = ln(&[0.5, 0.3, 0.2]);
        let params = SamplingParams { temperature: 0.5, top_k: 0, top_p: 0.85 };
        assert!(close(&process(&logits, &params), &[25.0 / 34.0, 9.0 / 34.0, 0.0]));
    }

    #[test]
    fn large_and_infinite_logits_stay_finite() {
        let logits = [3.0e38, -3.0e38, 3.0e38, f32::NAN, f32::NEG_INFINITY];
        let p = process(&logits, &SamplingParams::with_temperature(0.01));
        assert!(close(&p, &[0.5, 0.0, 0.5, 0.0, 0.0]), "{p:?}");
        let p = process(&[f32::INFINITY, 1.0, f32::INFINITY], &SamplingParams::with_temperature(1.0));
        assert!(close(&p, &[0.5, 0.0, 0.5]), "{p:?}");
        let p = process(&[f32::NEG_INFINITY; 4], &SamplingParams::with_temperature(1.0));
        assert!(close(&p, &[0.25; 4]), "{p:?}");
    }

    #[test]
    fn greedy_is_one_hot_on_first_maximum() {
        let logits = [1.0, 3.0, f32::NAN, 3.0];
        assert_eq!(argmax(&logits), 1);
        assert_eq!(argmax(&[f32::NAN, 2.0]), 1);
        for row in [
            vec![f32::NAN, f32::NEG_INFINITY],
            vec![-0.0, 0.0],
            vec![0.0, -0.0],
            vec![1.0, f32::NAN, 1.0],
            vec![f32::NAN, f32::NAN],
            vec![-3.0, f32::INFINITY, f32::INFINITY],
        ] {
            assert_eq!(argmax(&row), top_k_indices(&row, 1)[0], "{row:?}");
        }
        assert!(close(&process(&logits, &SamplingParams::greedy()), &[0.0, 1.0, 0.0, 0.0]));
    }

    #[test]
    fn top_k_indices_descend_with_ties_to_lower_index() {
        let logits = [0.5, 2.0, f32::NAN, 2.0, -1.0, 0.5];
        assert_eq!(top_k_indices(&logits, 4), vec![1, 3, 0, 5]);
        assert_eq!(top_k_indices(&logits, 10), vec![1, 3, 0, 5, 4, 2]);
        assert!(top_k_indices(&logits, 0).is_empty());
    }

    #[test]
    fn sample_never_returns_a_zero_probability_index() {
        let mut rng = Rng::new(3);
        let probs = [0.0, 0.25, 0.0, 0.75, 0.0];
        let mut counts = [0usize; 5];
        for _ in 0..40_000 {
            counts[sample(&probs, &mut rng)] += 1;
        }
        assert_eq!(counts[0] + counts[2] + counts[4], 0);
        assert!((counts[1] as f64 / 40_000.0 - 0.25).abs() < 0.01, "{counts:?}");
        // A tiny unnormalised row is fine.
        assert_eq!(sample(&[0.0, 1e-30, 0.0], &mut rng), 1);
    }

    #[test]
    fn without_replacement_q_tilde_by_hand() {
        let q = [0.4, 0.3, 0.2, 0.1, 0.0];
        let mut rng = Rng::new(11);
        let mut seen_in_order = false;
        let mut seen_reversed = false;
        let mut first_counts = [0usize; 5];
        for _ in 0..20_000 {
            let draws = sample_without_replacement(&q, 5, &mut rng);
            let order: Vec<usize> = draws.iter().map(|d| d.0).collect();
            let q_tilde: Vec<f32> = draws.iter().map(|d| d.1).collect();
            assert_eq!(draws.len(), 4, "token 4 has probability 0");
            first_counts[order[0]] += 1;
            if order == [0, 1, 2, 3] {
                seen_in_order = true;
                assert!(close(&q_tilde, &[0.4, 0.3 / 0.6, 0.2 / 0.3, 1.0]), "{q_tilde:?}");
            }
            if order == [3, 2, 1, 0] {
                seen_reversed = true;
                assert!(close(&q_tilde, &[0.1, 0.2 / 0.9, 0.3 / 0.7, 1.0]), "{q_tilde:?}");
            }
            if order[..2] == [1, 0] {
                assert!(close(&q_tilde[..2], &[0.3, 0.4 / 0.7]), "{q_tilde:?}");
            }
        }
        assert!(seen_in_order && seen_reversed);
        for (c, p) in first_counts.iter().zip(q) {
            assert!((*c as f64 / 20_000.0 - p as f64).abs() < 0.015, "{first_counts:?}");
        }
        assert_eq!(sample_without_replacement(&q, 2, &mut rng).len(), 2);
    }
}
