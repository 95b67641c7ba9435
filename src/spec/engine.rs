//! The decoding loops. Plain decoding lives here too: it is the baseline every speculative run
//! is compared with, so it shares the model, cache, sampler and stop rules.

use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::{Llama, LogitRows};
use crate::rng::Rng;
use crate::sampling::{self, SamplingParams};

#[derive(Clone, Debug)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// Generation stops after any of these ids (it is kept in the output).
    pub stop_ids: Vec<u32>,
}

#[derive(Clone, Debug, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    /// Base-model forwards after prefill (decode steps, or verification steps).
    pub steps: usize,
}

impl GenerationStats {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs.max(1e-9)
    }

    /// New tokens after the first (which comes from the prefill) per second of decoding.
    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.new_tokens.saturating_sub(1) as f64 / self.decode_secs.max(1e-9)
    }
}

/// The cache capacity a generation needs, or a clear error when the prompt cannot fit.
pub fn context_for(max_positions: usize, prompt_len: usize, max_new_tokens: usize, slack: usize) -> Result<usize> {
    if prompt_len == 0 {
        return Err(Error::input("the prompt is empty"));
    }
    if prompt_len + 1 > max_positions {
        return Err(Error::input(format!(
            "the prompt has {prompt_len} tokens; the model's context is {max_positions} tokens (max_position_embeddings)"
        )));
    }
    Ok((prompt_len + max_new_tokens + slack).min(max_positions))
}

/// Plain autoregressive decoding. `on_tokens` sees every newly committed token as it comes.
pub fn generate_plain<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    cfg: &GenerationConfig,
    mut on_tokens: impl FnMut(&[u32]),
) -> Result<(Vec<u32>, GenerationStats)> {
    let capacity = context_for(model.config.max_position_embeddings, prompt.len(), cfg.max_new_tokens, 0)?;
    let mut cache = model.new_cache(capacity);
    let mut rng = Rng::new(cfg.seed);
    let mut stats = GenerationStats { prompt_tokens: prompt.len(), ..Default::default() };
    let mut out = Vec::new();

    let t0 = Instant::now();
    let mut logits = model.prefill(&mut cache, prompt, LogitRows::Last)?.logits;
    stats.prefill_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    while out.len() < cfg.max_new_tokens {
        let next = pick(&logits, &cfg.sampling, &mut rng) as u32;
        out.push(next);
        on_tokens(&[next]);
        if cfg.stop_ids.contains(&next) || out.len() == cfg.max_new_tokens || cache.len() == cache.capacity() {
            break;
        }
        logits = model.decode(&mut cache, next)?.logits;
        stats.steps += 1;
    }
    stats.decode_secs = t1.elapsed().as_secs_f64();
    stats.new_tokens = out.len();
    Ok((out, stats))
}

/// Greedy argmax at temperature 0, else a draw from the processed distribution.
pub fn pick(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> usize {
    if params.is_greedy() {
        sampling::argmax(logits)
    } else {
        sampling::sample(&sampling::process(logits, params), rng)
    }
}
