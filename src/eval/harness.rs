//! Answers benchmark questions the way the reference evaluation does: each question's turns in
//! the chat template, turn t seeing the earlier turns and their generated answers; warm-up runs
//! first; one answer line per question appended as soon as it is done, so a run can be resumed.

use std::collections::HashSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::eval::answers::{append_answer, read_answers, AcceptLengths, Answer, Choice};
use crate::eval::decoder::Decoder;
use crate::eval::questions::Question;
use crate::model::{ChatMessage, Llama, TextTokenizer};
use crate::spec::engine::GenerationConfig;

pub struct EvalRun<'a, B: Backend> {
    pub model: &'a Llama<B>,
    pub tokenizer: &'a TextTokenizer,
    pub decoder: Decoder<B>,
    /// `seed` is the run's seed; each turn derives its own from it (`turn_seed`).
    pub cfg: GenerationConfig,
    /// A turn stops once prompt and answer hold this many tokens (at least one is generated).
    pub max_length: usize,
    pub model_id: String,
    /// `Answer::settings` of this run's answers.
    pub settings: String,
    /// Untimed runs of the first question before any answer is recorded.
    pub warmup: usize,
    /// A system message opening every conversation (`--system`).
    pub system: Option<String>,
}

impl<B: Backend> EvalRun<'_, B> {
    /// Answers every question not already in `out`; `on_answer` sees each new answer.
    pub fn run(&mut self, questions: &[Question], out: &Path, mut on_answer: impl FnMut(&Answer)) -> Result<()> {
        let existing = if out.exists() { read_answers(out)? } else { Vec::new() };
        // One file, one method and one set of settings: metrics would average them together.
        // (Answers without settings come from elsewhere or from before they were recorded.)
        if let Some(a) = existing
            .iter()
            .find(|a| a.model_id != self.model_id || !a.settings.is_empty() && a.settings != self.settings)
        {
            return Err(Error::input(format!(
                "{}: question {} was answered as `{}` ({}); this run answers as `{}` ({}): give another --out, \
                 or the same model, method and settings to resume",
                out.display(),
                a.question_id,
                a.model_id,
                if a.settings.is_empty() { "settings not recorded" } else { &a.settings },
                self.model_id,
                self.settings
            )));
        }
        let done: HashSet<u64> = existing.iter().map(|a| a.question_id).collect();
        let todo: Vec<&Question> = questions.iter().filter(|q| !done.contains(&q.question_id)).collect();
        if todo.is_empty() {
            return Ok(());
        }
        for _ in 0..self.warmup {
            self.answer(&questions[0])?;
        }
        for q in todo {
            let answer = self.answer(q)?;
            append_answer(out, &answer)?;
            on_answer(&answer);
        }
        Ok(())
    }

    pub fn answer(&mut self, q: &Question) -> Result<Answer> {
        let n = q.turns.len();
        let mut choice = Choice {
            index: 0,
            turns: Vec::with_capacity(n),
            idxs: Vec::with_capacity(n),
            new_tokens: Vec::with_capacity(n),
            wall_time: Vec::with_capacity(n),
            decoding_steps: None,
            accept_lengths: None,
        };
        let mut accept_lengths = Vec::with_capacity(n);
        let mut messages: Vec<ChatMessage> = self.system.iter().map(|s| ChatMessage::new("system", s)).collect();
        for (t, turn) in q.turns.iter().enumerate() {
            messages.push(ChatMessage::new("user", turn));
            // Which question failed (an over-long one, a template that refuses it) is what the
            // user needs to skip it.
            let at = |e: Error| {
                Error::input(format!(
                    "question {} (turn {}): {e}; the answers before it are kept, and --question-begin / \
                     --question-end (0-based positions in the file) can leave it out",
                    q.question_id,
                    t + 1
                ))
            };
            let prompt =
                self.tokenizer.render_chat(&messages, true).and_then(|text| self.tokenizer.encode(&text, false));
            let prompt = prompt.map_err(&at)?;
            // The reference stops a turn past its length limit; here the limit caps the new
            // tokens, so an answer ends exactly there (and a prompt already past it gets one).
            let room = self.max_length.saturating_sub(prompt.len()).max(1);
            let cfg = GenerationConfig {
                seed: turn_seed(self.cfg.seed, q.question_id, t),
                max_new_tokens: self.cfg.max_new_tokens.min(room),
                ..self.cfg.clone()
            };
            let d = self.decoder.decode(self.model, &prompt, &cfg).map_err(&at)?;
            let text_ids = match d.ids.split_last() {
                Some((last, rest)) if cfg.stop_ids.contains(last) => rest,
                _ => &d.ids[..],
            };
            let text = self.tokenizer.decode(text_ids)?.trim().to_string();
            messages.push(ChatMessage::new("assistant", &text));
            choice.turns.push(text);
            choice.idxs.push(d.steps.len().saturating_sub(1));
            choice.new_tokens.push(d.ids.len());
            choice.wall_time.push(d.wall_secs);
            accept_lengths.push(d.steps.iter().map(|s| s.committed).collect());
        }
        choice.accept_lengths = Some(AcceptLengths::PerTurn(accept_lengths));
        Ok(Answer {
            question_id: q.question_id,
            category: q.category.clone(),
            answer_id: answer_id(q.question_id),
            model_id: self.model_id.clone(),
            settings: self.settings.clone(),
            choices: vec![choice],
            tstamp: unix_time(),
        })
    }
}

/// Turn t of question q uses its own seed, so at T > 0 an answer does not depend on which
/// questions ran before it (a resumed run reproduces it).
fn turn_seed(seed: u64, question_id: u64, turn: usize) -> u64 {
    seed.wrapping_add(question_id.wrapping_mul(1000)).wrapping_add(turn as u64)
}

fn unix_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A random 16-hex-digit id (the reference uses a shortuuid); std's hasher keys are random per
/// process, which is all the uniqueness an answer id needs.
fn answer_id(question_id: u64) -> String {
    use std::hash::BuildHasher;
    let hash = std::collections::hash_map::RandomState::new().hash_one((question_id, unix_time().to_bits()));
    format!("{hash:016x}")
}
