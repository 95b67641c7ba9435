//! Metrics over an answer file, per category and overall (clover2.md §14, eagle.md §14):
//!
//! - τ: Σ committed tokens / Σ verification steps, from `accept_lengths` (plain decoding: 1);
//! - τ_ref: Σ new_tokens / Σ idxs, the reference script's variant (divides by steps − 1);
//! - speed: the mean over questions of Σ_turns new_tokens / Σ_turns wall_time (a mean of rates);
//! - total speed: Σ new_tokens / Σ wall_time;
//! - speedup: mean speed / the baseline's mean speed, over the questions both files answer;
//! - acceptance per depth d: the fraction of steps that accepted at least d drafts.
//!
//! MT-bench's eight categories count as one, `mt_bench`, as in Spec-Bench's reports.

use std::collections::HashMap;

use serde::Serialize;

use crate::eval::answers::{AcceptLengths, Answer};

const MT_BENCH_CATEGORIES: [&str; 8] =
    ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"];

/// The category a question is reported under.
pub fn report_category(category: &str) -> &str {
    if MT_BENCH_CATEGORIES.contains(&category) {
        "mt_bench"
    } else {
        category
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupMetrics {
    pub category: String,
    pub questions: usize,
    pub turns: usize,
    pub new_tokens: usize,
    pub wall_time: f64,
    /// Verification steps; None when some answer has no `accept_lengths`.
    pub steps: Option<usize>,
    pub tau: Option<f64>,
    /// None when Σ idxs is 0, or some answer has no `idxs`.
    pub tau_ref: Option<f64>,
    /// Mean of per-question tokens/s.
    pub speed: f64,
    /// Σ tokens / Σ time.
    pub total_speed: f64,
    /// None without a baseline or without a question in common with it.
    pub speedup: Option<f64>,
    /// Index d−1 holds depth d; empty without `accept_lengths`.
    pub acceptance_per_depth: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    pub categories: Vec<GroupMetrics>,
    pub overall: GroupMetrics,
    /// With a baseline: how many questions both files answer (the speedups' question set).
    pub compared_questions: Option<usize>,
}

/// Per-question speed; answers are checked on reading to have a positive total time.
fn speed(a: &Answer) -> f64 {
    let c = &a.choices[0];
    c.new_tokens.iter().sum::<usize>() as f64 / c.wall_time.iter().sum::<f64>()
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, sum) = xs.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    (n > 0).then(|| sum / n as f64)
}

fn group(category: &str, answers: &[&Answer], baseline: Option<&HashMap<u64, &Answer>>) -> GroupMetrics {
    let choices: Vec<_> = answers.iter().map(|a| &a.choices[0]).collect();
    let new_tokens: usize = choices.iter().flat_map(|c| &c.new_tokens).sum();
    let wall_time: f64 = choices.iter().flat_map(|c| &c.wall_time).sum();
    // τ_ref needs every answer's `idxs` (Spec-Bench's files have none).
    let idxs: Option<usize> =
        choices.iter().all(|c| !c.idxs.is_empty()).then(|| choices.iter().flat_map(|c| &c.idxs).sum());
    let lengths: Option<Vec<usize>> = choices
        .iter()
        .map(|c| c.accept_lengths.as_ref().map(AcceptLengths::steps))
        .collect::<Option<Vec<_>>>()
        .map(|per_answer| per_answer.concat());
    let steps = lengths.as_ref().map(Vec::len);
    let tau = lengths.as_ref().filter(|l| !l.is_empty()).map(|l| l.iter().sum::<usize>() as f64 / l.len() as f64);
    let acceptance_per_depth = lengths.as_deref().map(acceptance_per_depth).unwrap_or_default();
    let speedup = baseline.and_then(|base| {
        let common: Vec<(&Answer, &Answer)> =
            answers.iter().filter_map(|a| base.get(&a.question_id).map(|b| (*a, *b))).collect();
        Some(mean(common.iter().map(|(a, _)| speed(a)))? / mean(common.iter().map(|(_, b)| speed(b)))?)
    });
    GroupMetrics {
        category: category.to_string(),
        questions: answers.len(),
        turns: choices.iter().map(|c| c.turns.len()).sum(),
        new_tokens,
        wall_time,
        steps,
        tau,
        tau_ref: idxs.filter(|&i| i > 0).map(|i| new_tokens as f64 / i as f64),
        speed: mean(answers.iter().map(|a| speed(a))).unwrap_or(0.0),
        total_speed: new_tokens as f64 / wall_time.max(f64::MIN_POSITIVE),
        speedup,
        acceptance_per_depth,
    }
}

/// For each depth d from 1 to the deepest seen, the fraction of steps with accept length > d.
fn acceptance_per_depth(lengths: &[usize]) -> Vec<f64> {
    let deepest = lengths.iter().copied().max().unwrap_or(0);
    (1..deepest).map(|d| lengths.iter().filter(|&&l| l > d).count() as f64 / lengths.len() as f64).collect()
}

/// Categories in order of their first question id.
pub fn compute(answers: &[Answer], baseline: Option<&[Answer]>) -> Metrics {
    let mut sorted: Vec<&Answer> = answers.iter().collect();
    sorted.sort_by_key(|a| a.question_id);
    let base: Option<HashMap<u64, &Answer>> = baseline.map(|b| b.iter().map(|a| (a.question_id, a)).collect());
    let mut order: Vec<&str> = Vec::new();
    let mut by_category: HashMap<&str, Vec<&Answer>> = HashMap::new();
    for a in &sorted {
        let c = report_category(&a.category);
        if !by_category.contains_key(c) {
            order.push(c);
        }
        by_category.entry(c).or_default().push(a);
    }
    let categories = order.iter().map(|c| group(c, &by_category[c], base.as_ref())).collect();
    Metrics {
        categories,
        overall: group("overall", &sorted, base.as_ref()),
        compared_questions: base.map(|b| sorted.iter().filter(|a| b.contains_key(&a.question_id)).count()),
    }
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

impl Metrics {
    /// An aligned text table, one row per category and the overall row last.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<16} {:>9} {:>6} {:>9} {:>8} {:>6} {:>6} {:>10} {:>10} {:>8}\n",
            "category", "questions", "turns", "tokens", "steps", "τ", "τ_ref", "tok/s", "total t/s", "speedup"
        );
        for g in self.categories.iter().chain([&self.overall]) {
            s += &format!(
                "{:<16} {:>9} {:>6} {:>9} {:>8} {:>6} {:>6} {:>10.2} {:>10.2} {:>8}\n",
                g.category,
                g.questions,
                g.turns,
                g.new_tokens,
                g.steps.map_or_else(|| "-".to_string(), |n| n.to_string()),
                opt(g.tau, 3),
                opt(g.tau_ref, 3),
                g.speed,
                g.total_speed,
                opt(g.speedup, 3),
            );
        }
        if !self.overall.acceptance_per_depth.is_empty() {
            let per_depth: Vec<String> = self.overall.acceptance_per_depth.iter().map(|r| format!("{r:.3}")).collect();
            s += &format!("acceptance per depth (overall): [{}]\n", per_depth.join(", "));
        }
        s
    }
}
