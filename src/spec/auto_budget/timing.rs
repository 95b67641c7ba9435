//! Start-up timings `--tree-budget auto` plans with: verification by tree size, a head level by
//! rows, and the sampled-tree sampler's two steps. Medians of interleaved repetitions, after one
//! untimed pass, so that drifts of a shared machine spread evenly.

use std::time::Instant;

use crate::backend::Backend;
use crate::draft::DraftHead;
use crate::error::{Error, Result};
use crate::model::{Llama, LogitRows};
use crate::sampling::SamplingParams;
use crate::spec::drafting::{draft_distribution, eagle2_ranking};
use crate::spec::node_logits::NodeLogits;

use super::chain_rows;

/// Median time in ms of verifying n nodes after `prefix`, for n = 1..=max_nodes, after one
/// untimed pass over every size (first touches of weights and buffers): the forward of a chain of
/// n nodes, and the projection of the main chain an EAGLE-2 tree of n nodes has
/// (`chain_rows(n)`).
pub fn verify_latency_ms<B: Backend>(
    model: &Llama<B>,
    prefix: &[u32],
    max_nodes: usize,
    reps: usize,
) -> Result<Vec<f64>> {
    if prefix.is_empty() || max_nodes == 0 || reps == 0 {
        return Err(Error::input("verify latency: needs a prefix, at least one node and one repetition"));
    }
    let mut cache = model.new_cache(prefix.len() + max_nodes);
    model.prefill(&mut cache, prefix, LogitRows::None)?;
    let base = cache.len();
    let mut times = vec![Vec::with_capacity(reps); max_nodes];
    for rep in 0..=reps {
        for n in 1..=max_nodes {
            let tokens: Vec<u32> = (0..n).map(|i| prefix[i % prefix.len()]).collect();
            let depths: Vec<usize> = (0..n).collect();
            let mask: Vec<u8> = (0..n * n).map(|k| (k % n <= k / n) as u8).collect();
            let t = Instant::now();
            let verified = model.verify_tree(&mut cache, &tokens, &depths, &mask)?;
            NodeLogits::new(model, &verified.postnorm, (1..=n).map(|c| (c < n).then_some(c)).collect())
                .project(&(0..chain_rows(n)).collect::<Vec<_>>());
            if rep > 0 {
                times[n - 1].push(t.elapsed().as_secs_f64() * 1000.0);
            }
            cache.truncate(base);
        }
    }
    Ok(medians(times))
}

/// The median of each list of timings (each non-empty).
fn medians(times: Vec<Vec<f64>>) -> Vec<f64> {
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

/// Median times in ms of the sampled-tree sampler's two steps on rows of `vocab` tokens (after
/// one untimed pass): processing a base row into P, and the residual a rejected draw leaves
/// (`verify::reject_sampled_draft`), on pseudo-random logits.
pub fn sampler_latency_ms(vocab: usize, params: &SamplingParams, reps: usize) -> (f64, f64) {
    let mut rng = crate::rng::Rng::new(7);
    let mut logits = || (0..vocab).map(|_| 8.0 * rng.uniform_f32()).collect::<Vec<f32>>();
    let (base, draft) = (logits(), crate::sampling::process(&logits(), params));
    let mut times = vec![Vec::new(); 2];
    for rep in 0..=reps {
        let t = Instant::now();
        let mut p = crate::sampling::process(&base, params);
        let processed = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        crate::spec::verify::reject_sampled_draft(&mut p, &draft, &[0]);
        let rejected = t.elapsed().as_secs_f64() * 1000.0;
        std::hint::black_box(&p);
        if rep > 0 {
            times[0].push(processed);
            times[1].push(rejected);
        }
    }
    let m = medians(times);
    (m[0], m[1])
}

/// Median time in ms of one tree level of r rows drafted by `head`, r = 1..=max_rows, after one
/// untimed pass: r children of the root after the head's update on `prompt`, each repetition
/// from a fresh update; the head's forward, its logits brought to the host and made into draft
/// distributions, as `drafting::grow` does per level. Leaves the head mid-sequence (decoding
/// resets it).
pub fn level_latency_ms<B: Backend, H: DraftHead<B> + ?Sized>(
    model: &Llama<B>,
    head: &mut H,
    prompt: &[u32],
    max_rows: usize,
    reps: usize,
    params: &SamplingParams,
) -> Result<Vec<f64>> {
    if prompt.is_empty() || max_rows == 0 || reps == 0 {
        return Err(Error::input("level latency: needs a prompt, at least one row and one repetition"));
    }
    let mut cache = model.new_cache(prompt.len());
    let prefill = model.prefill(&mut cache, prompt, LogitRows::None)?;
    let positions: Vec<usize> = (0..prompt.len()).collect();
    let next: Vec<u32> = prompt[1..].iter().copied().chain([prompt[0]]).collect();
    let mut times = vec![Vec::with_capacity(reps); max_rows];
    for rep in 0..=reps {
        for r in 1..=max_rows {
            head.reset();
            head.begin(model, &prefill, &positions, &next)?;
            let tokens: Vec<u32> = (0..r).map(|i| prompt[i % prompt.len()]).collect();
            let t = Instant::now();
            let logits = head.expand(model, &vec![0; r], &tokens)?.to_host(&model.backend);
            for row in logits.chunks_exact(logits.len() / r) {
                std::hint::black_box(draft_distribution(row, &eagle2_ranking(params)));
            }
            if rep > 0 {
                times[r - 1].push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    Ok(medians(times))
}
