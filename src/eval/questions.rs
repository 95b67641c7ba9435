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

/// The first `n` questions of each category, in file order: a sample of every category at a
/// fraction of the cost (Spec-Bench's categories are blocks of 80).
pub fn first_per_category(questions: Vec<Question>, n: usize) -> Vec<Question> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    questions
        .into_iter()
        .filter(|q| {
            let count = seen.entry(q.category.clone()).or_insert(0);
            *count += 1;
            *count <= n
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_per_category_keeps_file_order() {
        let q = |id: u64, c: &str| Question { question_id: id, category: c.into(), turns: vec!["t".into()] };
        let all = vec![q(1, "a"), q(2, "b"), q(3, "a"), q(4, "a"), q(5, "b"), q(6, "c")];
        let ids: Vec<u64> = first_per_category(all, 2).iter().map(|q| q.question_id).collect();
        assert_eq!(ids, [1, 2, 3, 5, 6]);
    }
}
