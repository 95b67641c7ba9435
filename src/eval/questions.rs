//! Benchmark questions in the MT-bench / Spec-Bench format: `question_id`, `category`, `turns`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::eval::jsonl;

#[derive(Clone, Debug, Deserialize)]
pub struct Question {
    pub question_id: u64,
    pub category: String,
    /// User messages; turn t is asked after the answers to turns 0..t.
    pub turns: Vec<String>,
}

/// Every question of the file, in file order; a question without turns is an error.
pub fn read_questions(path: &Path) -> Result<Vec<Question>> {
    let records: Vec<(usize, Question)> = jsonl::read(path)?;
    if records.is_empty() {
        return Err(Error::input(format!("{}: no questions", path.display())));
    }
    let mut questions = Vec::with_capacity(records.len());
    for (line, q) in records {
        if q.turns.is_empty() {
            return Err(jsonl::line_error(path, line, format!("question {} has no turns", q.question_id)));
        }
        questions.push(q);
    }
    Ok(questions)
}

/// Questions `begin..end` (0-based, end exclusive, as the reference's `--question-begin/-end`).
pub fn select(
    questions: Vec<Question>,
    begin: Option<usize>,
    end: Option<usize>,
    path: &Path,
) -> Result<Vec<Question>> {
    let n = questions.len();
    let (begin, end) = (begin.unwrap_or(0), end.unwrap_or(n));
    if end > n || begin >= end {
        return Err(Error::input(format!(
            "question range {begin}..{end} is empty or outside the {n} questions of {}",
            path.display()
        )));
    }
    Ok(questions.into_iter().skip(begin).take(end - begin).collect())
}
