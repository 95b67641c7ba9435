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

/// The repository's copy of Spec-Bench's questions (data/spec_bench/, Apache-2.0), built into the
/// binary so that `bench` has real prompts wherever it runs (a GPU machine may hold only the binary).
const SPEC_BENCH: &str = include_str!("../../data/spec_bench/question.jsonl");

/// How the built-in questions are named in reports and errors.
pub const SPEC_BENCH_NAME: &str = "data/spec_bench/question.jsonl (built in)";

/// The 480 Spec-Bench questions (6 categories of 80), as `read_questions` would read the file.
pub fn spec_bench_questions() -> Result<Vec<Question>> {
    checked(jsonl::parse(SPEC_BENCH, Path::new(SPEC_BENCH_NAME))?, Path::new(SPEC_BENCH_NAME))
}

/// Every question of the file, in file order; a question without turns is an error.
pub fn read_questions(path: &Path) -> Result<Vec<Question>> {
    checked(jsonl::read(path)?, path)
}

fn checked(records: Vec<(usize, Question)>, path: &Path) -> Result<Vec<Question>> {
    if records.is_empty() {
        return Err(Error::input(format!("{}: no questions", path.display())));
    }
    let mut questions = Vec::with_capacity(records.len());
    // Answers are keyed by question_id (a resumed run skips the ids it has): two questions with
    // one id would both be answered under it, and the second skipped on resume.
    let mut first_line = std::collections::HashMap::new();
    for (line, q) in records {
        if q.turns.is_empty() {
            return Err(jsonl::line_error(path, line, format!("question {} has no turns", q.question_id)));
        }
        if let Some(first) = first_line.insert(q.question_id, line) {
            return Err(jsonl::line_error(
                path,
                line,
                format!("question_id {} again (first on line {first})", q.question_id),
            ));
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
    fn built_in_spec_bench_is_mt_bench_then_five_categories_of_80() {
        let questions = spec_bench_questions().unwrap();
        assert_eq!(questions.len(), 480);
        let count = |qs: &[Question]| {
            let mut counts = std::collections::BTreeMap::new();
            qs.iter().for_each(|q| *counts.entry(q.category.clone()).or_insert(0) += 1);
            counts
        };
        let (mt_bench, rest) = questions.split_at(80);
        let (mt_bench, rest) = (count(mt_bench), count(rest));
        assert!(mt_bench.len() == 8 && mt_bench.values().all(|&n| n == 10), "{mt_bench:?}");
        assert!(rest.len() == 5 && rest.values().all(|&n| n == 80), "{rest:?}");
    }

    #[test]
    fn a_repeated_question_id_is_refused_with_both_lines() {
        let q = |id: u64| Question { question_id: id, category: "c".into(), turns: vec!["t".into()] };
        let err = checked(vec![(1, q(81)), (2, q(82)), (3, q(81))], Path::new("q.jsonl")).unwrap_err().to_string();
        assert!(err.contains("q.jsonl") && err.contains("question_id 81 again (first on line 1)"), "{err}");
        assert!(checked(vec![(1, q(81)), (2, q(82))], Path::new("q.jsonl")).is_ok());
    }

    #[test]
    fn first_per_category_keeps_file_order() {
        let q = |id: u64, c: &str| Question { question_id: id, category: c.into(), turns: vec!["t".into()] };
        let all = vec![q(1, "a"), q(2, "b"), q(3, "a"), q(4, "a"), q(5, "b"), q(6, "c")];
        let ids: Vec<u64> = first_per_category(all, 2).iter().map(|q| q.question_id).collect();
        assert_eq!(ids, [1, 2, 3, 5, 6]);
    }
}
