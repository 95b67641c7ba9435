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
    /// Absent from EAGLE's own answer files (its MT-bench scripts write none): one category,
    /// `mt_bench`, the only benchmark they answer.
    #[serde(default = "unnamed_category")]
    pub category: String,
    /// Absent from some older reference files; nothing is computed from it.
    #[serde(default)]
    pub answer_id: String,
    #[serde(default)]
    pub model_id: String,
    /// The generation settings that produced it (this engine's answers only): a resumed run
    /// refuses to add answers made with other settings to the same file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub settings: String,
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
    /// Per turn: verification (or decode) steps − 1, the reference's loop index at exit. Absent
    /// (empty) from Spec-Bench's files, which have `decoding_steps` instead.
    #[serde(default)]
    pub idxs: Vec<usize>,
    /// Spec-Bench's per-turn step figure. What it counts depends on the method's script (EAGLE's:
    /// steps − 1, its baseline's: new tokens, PLD's: new tokens − 1), so it is kept but not
    /// computed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoding_steps: Option<Vec<usize>>,
    /// Per turn: tokens generated, counted exactly.
    pub new_tokens: Vec<usize>,
    /// Per turn: seconds around the whole generate call, prefill included.
    pub wall_time: Vec<f64>,
    /// Per step: tokens committed (accepted drafts + 1). Baseline files made by the reference
    /// scripts lack it.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "accept_lengths")]
    pub accept_lengths: Option<AcceptLengths>,
}

/// This engine's files list each turn's steps apart; Spec-Bench's list every step of the question
/// in one list.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AcceptLengths {
    PerTurn(Vec<Vec<usize>>),
    AllTurns(Vec<usize>),
}

impl AcceptLengths {
    /// Every step's accept length, turn after turn.
    pub fn steps(&self) -> Vec<usize> {
        match self {
            AcceptLengths::PerTurn(turns) => turns.concat(),
            AcceptLengths::AllTurns(steps) => steps.clone(),
        }
    }
}

/// Either shape of `accept_lengths`, with an error that says what was expected (serde's own for an
/// untagged enum names neither the field nor the shapes).
fn accept_lengths<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<AcceptLengths>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let expected = "`accept_lengths`: expected a list of step lengths per turn, or one list of step lengths \
                    (non-negative integers)";
    if let Ok(turns) = serde_json::from_value::<Vec<Vec<usize>>>(value.clone()) {
        return Ok(Some(AcceptLengths::PerTurn(turns)));
    }
    serde_json::from_value::<Vec<usize>>(value)
        .map(|steps| Some(AcceptLengths::AllTurns(steps)))
        .map_err(|_| serde::de::Error::custom(expected))
}

/// Bounds far above any real answer, so that a corrupt file is refused instead of making
/// `metrics` allocate per depth or overflow its sums.
const MAX_ACCEPT_LENGTH: usize = 1 << 10;
const MAX_TURN_TOKENS: usize = u32::MAX as usize;

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

fn unnamed_category() -> String {
    "mt_bench".into()
}

fn check(a: &Answer) -> std::result::Result<(), String> {
    let c = a.choices.first().ok_or("`choices` is empty")?;
    let n = c.turns.len();
    if n == 0 {
        return Err("`turns` is empty".into());
    }
    if c.idxs.is_empty() && c.decoding_steps.is_none() {
        return Err("`idxs` is missing (Spec-Bench's files have `decoding_steps` in its place)".into());
    }
    let idxs_len = if c.idxs.is_empty() { n } else { c.idxs.len() };
    let steps_len = c.decoding_steps.as_ref().map_or(n, Vec::len);
    let lens = [idxs_len, steps_len, c.new_tokens.len(), c.wall_time.len()];
    // An empty list reads as per-turn lists, but says only that no step was recorded.
    let per_turn = match &c.accept_lengths {
        Some(AcceptLengths::PerTurn(turns)) if !turns.is_empty() => Some(turns),
        _ => None,
    };
    if lens.iter().any(|&l| l != n) || per_turn.is_some_and(|al| al.len() != n) {
        return Err(format!(
            "`turns` has {n} entries but `idxs`, `decoding_steps`, `new_tokens`, `wall_time` or `accept_lengths` differ"
        ));
    }
    if let Some(&many) = c.new_tokens.iter().chain(&c.idxs).find(|&&v| v > MAX_TURN_TOKENS) {
        return Err(format!("`new_tokens` or `idxs` holds {many}: more than any context (at most {MAX_TURN_TOKENS})"));
    }
    if c.wall_time.iter().any(|t| !t.is_finite() || *t < 0.0) || c.wall_time.iter().sum::<f64>() <= 0.0 {
        return Err("`wall_time` must be finite, non-negative and not all zero".into());
    }
    if let Some(turns) = per_turn {
        for (t, (steps, &tokens)) in turns.iter().zip(&c.new_tokens).enumerate() {
            check_steps(steps, tokens).map_err(|e| format!("turn {}: {e}", t + 1))?;
        }
    }
    // Spec-Bench's turns cannot be told apart (and its `new_tokens` count Σ (a + 1)): each length
    // is checked alone.
    if let Some(AcceptLengths::AllTurns(steps)) = &c.accept_lengths {
        check_lengths(steps)?;
    }
    Ok(())
}

/// A turn's `accept_lengths` against its `new_tokens`: the first token comes from the prompt's
/// forward, every step commits at least one, and only the last step may be cut short (by the
/// token limit or a stop token), so the last step kept between 1 and all of its tokens.
fn check_steps(steps: &[usize], new_tokens: usize) -> std::result::Result<(), String> {
    check_lengths(steps)?;
    let Some((&last, before)) = steps.split_last() else {
        return match new_tokens {
            0 | 1 => Ok(()),
            _ => Err(format!("no steps in `accept_lengths` but {new_tokens} `new_tokens`")),
        };
    };
    let kept_last = new_tokens as i64 - 1 - before.iter().sum::<usize>() as i64;
    if kept_last < 1 || kept_last > last as i64 {
        return Err(format!(
            "`accept_lengths` (sum {}) do not add up to {new_tokens} `new_tokens` (the first token, then each step's)",
            steps.iter().sum::<usize>()
        ));
    }
    Ok(())
}

/// Each step commits at least one token, and no more than any tree is deep.
fn check_lengths(steps: &[usize]) -> std::result::Result<(), String> {
    if steps.contains(&0) {
        return Err("an `accept_lengths` entry is 0 (a step commits at least one token)".into());
    }
    if let Some(&long) = steps.iter().find(|&&l| l > MAX_ACCEPT_LENGTH) {
        return Err(format!(
            "an `accept_lengths` entry is {long}: no draft tree is that deep (at most {MAX_ACCEPT_LENGTH})"
        ));
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

#[cfg(test)]
mod tests {
    use super::check_steps;

    #[test]
    fn accept_lengths_must_add_up_to_the_new_tokens() {
        // 1 + 3 + 1 + 2 = 7 tokens; a last step cut to 1 of its 2 tokens makes 6.
        assert!(check_steps(&[3, 1, 2], 7).is_ok());
        assert!(check_steps(&[3, 1, 2], 6).is_ok());
        assert!(check_steps(&[], 1).is_ok());
        // The last step may hold more than it kept, but not more than any tree's depth.
        assert!(check_steps(&[1, 1024], 3).is_ok());
        let huge = [1, 1 << 60];
        for (steps, tokens) in [(&[3, 1, 2][..], 8), (&[3, 1, 2], 5), (&[3, 0, 2], 6), (&[], 4), (&huge, 3)] {
            assert!(check_steps(steps, tokens).is_err(), "{steps:?} for {tokens} tokens");
        }
    }
}
