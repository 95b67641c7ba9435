//! Answer files in the reference format (EAGLE / Spec-Bench `gen_*_answer`): one JSON line per
//! question, with per-turn step counts, token counts, wall times and accept lengths that the
//! metrics are computed from.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::jsonl;
use crate::fsutil::write_atomically;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub question_id: u64,
    pub category: String,
    /// Absent from some older reference files; nothing is computed from it.
    #[serde(default)]
    pub answer_id: String,
    #[serde(default)]
    pub model_id: String,
    pub choices: Vec<Choice>,
    /// Unix time in seconds when the answer was finished.
    #[serde(default)]
    pub tstamp: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: usize,
    /// One answer text per turn.
    pub turns: Vec<String>,
    /// Per turn: verification (or decode) steps − 1, the reference's loop index at exit.
    pub idxs: Vec<usize>,
    /// Per turn: tokens generated, counted exactly.
    pub new_tokens: Vec<usize>,
    /// Per turn: seconds around the whole generate call, prefill included.
    pub wall_time: Vec<f64>,
    /// Per turn, per step: tokens committed (accepted drafts + 1). Baseline files made by the
    /// reference scripts lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_lengths: Option<Vec<Vec<usize>>>,
}

/// Every answer of `path`, checked: one choice at least, per-turn lists of equal length, finite
/// times with a positive sum, each question once.
pub fn read_answers(path: &Path) -> Result<Vec<Answer>> {
    let records: Vec<(usize, Answer)> = jsonl::read(path)?;
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut answers = Vec::with_capacity(records.len());
    for (line, a) in records {
        check(&a).map_err(|msg| jsonl::line_error(path, line, format!("question {}: {msg}", a.question_id)))?;
        if let Some(first) = seen.insert(a.question_id, line) {
            return Err(jsonl::line_error(
                path,
                line,
                format!("question {} was answered on line {first}", a.question_id),
            ));
        }
        answers.push(a);
    }
    Ok(answers)
}

fn check(a: &Answer) -> std::result::Result<(), String> {
    let c = a.choices.first().ok_or("`choices` is empty")?;
    let n = c.turns.len();
    if n == 0 {
        return Err("`turns` is empty".into());
    }
    let lens = [c.idxs.len(), c.new_tokens.len(), c.wall_time.len()];
    if lens.iter().any(|&l| l != n) || c.accept_lengths.as_ref().is_some_and(|al| al.len() != n) {
        return Err(format!(
            "`turns` has {n} entries but `idxs`, `new_tokens`, `wall_time` or `accept_lengths` differ"
        ));
    }
    if c.wall_time.iter().any(|t| !t.is_finite() || *t < 0.0) || c.wall_time.iter().sum::<f64>() <= 0.0 {
        return Err("`wall_time` must be finite, non-negative and not all zero".into());
    }
    Ok(())
}

/// Appends one answer. The whole file is rewritten under a temporary name and renamed, so an
/// interrupted run leaves the previous complete file, never a half line.
pub fn append_answer(path: &Path, answer: &Answer) -> Result<()> {
    let mut bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(path, e)),
    };
    if bytes.last().is_some_and(|&b| b != b'\n') {
        bytes.push(b'\n');
    }
    serde_json::to_writer(&mut bytes, answer).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    bytes.push(b'\n');
    write_atomically(path, &bytes)
}
