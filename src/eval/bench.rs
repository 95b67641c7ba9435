//! Per-step latency of plain decoding and of each draft head, measured in one process with the
//! methods interleaved prompt by prompt, so that drifts of the machine (frequency, other load)
//! fall on every method alike. Steps are split into draft, verify, accept (+ KV compaction) and
//! the rest, reported as median and p90 over all steps.

use serde::Serialize;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::eval::decoder::{Decoded, Decoder};
use crate::model::Llama;
use crate::spec::engine::{GenerationConfig, StepRecord};

pub struct Method<B: Backend> {
    pub label: String,
    pub decoder: Decoder<B>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Quantiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepLatency {
    pub draft: Quantiles,
    pub verify: Quantiles,
    pub accept: Quantiles,
    pub rest: Quantiles,
    pub step: Quantiles,
}

#[derive(Clone, Debug, Serialize)]
pub struct MethodReport {
    pub method: String,
    pub prompts: usize,
    pub new_tokens: usize,
    pub steps: usize,
    /// Tokens committed per step (plain decoding: 1).
    pub tau: f64,
    /// Mean over prompts of new tokens / wall time (prefill included).
    pub tokens_per_sec: f64,
    /// tokens_per_sec / plain decoding's.
    pub speedup: f64,
    /// Greedy runs: prompts whose output differs from plain decoding's (must be 0). None when sampling.
    pub mismatched_prompts: Option<usize>,
    pub latency: StepLatency,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub methods: Vec<MethodReport>,
}

/// Runs every method on every prompt: one untimed warm-up generation per method first, then
/// prompt by prompt, plain decoding (the first method) before the heads. `on_prompt` sees each
/// finished prompt's index.
pub fn run<B: Backend>(
    model: &Llama<B>,
    methods: &mut [Method<B>],
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    mut on_prompt: impl FnMut(usize),
) -> Result<BenchReport> {
    if methods.is_empty() || prompts.is_empty() {
        return Err(Error::input("bench: nothing to measure (no method or no prompt)"));
    }
    let mut runs: Vec<Vec<Decoded>> = methods.iter().map(|_| Vec::with_capacity(prompts.len())).collect();
    // Which prompt failed (an over-long one, say) and under which method.
    let failed = |i: usize, m: &Method<B>, e: Error| Error::input(format!("prompt {} ({}): {e}", i + 1, m.label));
    for m in methods.iter_mut() {
        m.decoder.decode(model, &prompts[0], cfg).map_err(|e| failed(0, m, e))?;
    }
    for (i, prompt) in prompts.iter().enumerate() {
        for (m, out) in methods.iter_mut().zip(&mut runs) {
            out.push(m.decoder.decode(model, prompt, cfg).map_err(|e| failed(i, m, e))?);
        }
        on_prompt(i);
    }
    let speeds: Vec<f64> = runs.iter().map(|r| mean(r.iter().map(|d| d.ids.len() as f64 / d.wall_secs))).collect();
    let greedy = cfg.sampling.is_greedy();
    let reports = methods
        .iter()
        .zip(&runs)
        .zip(&speeds)
        .map(|((m, r), &speed)| {
            let steps: Vec<&StepRecord> = r.iter().flat_map(|d| &d.steps).collect();
            let committed: usize = steps.iter().map(|s| s.committed).sum();
            MethodReport {
                method: m.label.clone(),
                prompts: r.len(),
                new_tokens: r.iter().map(|d| d.ids.len()).sum(),
                steps: steps.len(),
                tau: committed as f64 / steps.len().max(1) as f64,
                tokens_per_sec: speed,
                speedup: speed / speeds[0],
                mismatched_prompts: greedy.then(|| r.iter().zip(&runs[0]).filter(|(d, p)| d.ids != p.ids).count()),
                latency: latency(&steps),
            }
        })
        .collect();
    Ok(BenchReport { methods: reports })
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (n, sum) = xs.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    sum / n.max(1) as f64
}

fn latency(steps: &[&StepRecord]) -> StepLatency {
    let q = |f: &dyn Fn(&StepRecord) -> f64| quantiles(steps.iter().map(|s| f(s)).collect());
    StepLatency {
        draft: q(&|s| s.draft_secs),
        verify: q(&|s| s.verify_secs),
        accept: q(&|s| s.accept_secs),
        rest: q(&|s| (s.total_secs - s.draft_secs - s.verify_secs - s.accept_secs).max(0.0)),
        step: q(&|s| s.total_secs),
    }
}

/// Median and p90 by nearest rank, in milliseconds (0 without steps).
fn quantiles(mut secs: Vec<f64>) -> Quantiles {
    secs.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let rank = ((p * secs.len() as f64).ceil() as usize).clamp(1, secs.len().max(1));
        secs.get(rank - 1).map_or(0.0, |s| s * 1e3)
    };
    Quantiles { p50_ms: at(0.5), p90_ms: at(0.9) }
}

impl BenchReport {
    /// One row per method: figures, then each phase's median / p90 in milliseconds.
    pub fn table(&self) -> String {
        let w = self.methods.iter().map(|m| m.method.chars().count()).max().unwrap_or(0).max(12);
        let mut s = format!(
            "{:<w$} {:>7} {:>7} {:>6} {:>9} {:>8} {:>15} {:>15} {:>15} {:>15} {:>15}\n",
            "method",
            "tokens",
            "steps",
            "τ",
            "tok/s",
            "speedup",
            "draft ms",
            "verify ms",
            "accept ms",
            "rest ms",
            "step ms"
        );
        for m in &self.methods {
            let l = &m.latency;
            let cell = |q: &Quantiles| format!("{:.3}/{:.3}", q.p50_ms, q.p90_ms);
            s += &format!(
                "{:<w$} {:>7} {:>7} {:>6.3} {:>9.2} {:>8.3} {:>15} {:>15} {:>15} {:>15} {:>15}\n",
                m.method,
                m.new_tokens,
                m.steps,
                m.tau,
                m.tokens_per_sec,
                m.speedup,
                cell(&l.draft),
                cell(&l.verify),
                cell(&l.accept),
                cell(&l.rest),
                cell(&l.step),
            );
        }
        s += "latency cells: median/p90 over steps\n";
        for m in &self.methods {
            if let Some(n) = m.mismatched_prompts.filter(|&n| n > 0) {
                s += &format!("warning: {}: {n} greedy outputs differ from plain decoding\n", m.method);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let q = quantiles((1..=10).map(|i| i as f64 / 1e3).collect());
        assert_eq!((q.p50_ms, q.p90_ms), (5.0, 9.0));
        let q = quantiles(vec![0.002]);
        assert_eq!((q.p50_ms, q.p90_ms), (2.0, 2.0));
        let q = quantiles(Vec::new());
        assert_eq!((q.p50_ms, q.p90_ms), (0.0, 0.0));
    }
}
