//! A reduced draft vocabulary (the N most frequent tokens of the training data, saved beside a
//! head as `draft_vocab.json`): the head projects its rows onto those N rows of the base lm_head
//! only, so a draft level costs N/V of the full projection. Verification still runs the base
//! model over the full vocabulary, so output stays exact; a token outside the list can simply
//! never be drafted.

use std::path::Path;

use serde_json::{json, Value};

use crate::backend::Backend;
use crate::draft::config::read_json;
use crate::error::{Error, Result};
use crate::model::{Llama, Logits};

pub const DRAFT_VOCAB_FILE: &str = "draft_vocab.json";

/// Which vocabulary a head drafts over when it is loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DraftVocabChoice {
    /// The head's `draft_vocab.json` if it has one, else the full vocabulary.
    #[default]
    FromHead,
    /// The full vocabulary, even if the head has a list.
    Full,
    /// The first N tokens (the N most frequent) of the head's list.
    Top(usize),
}

impl std::str::FromStr for DraftVocabChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "head" => Ok(DraftVocabChoice::FromHead),
            "full" => Ok(DraftVocabChoice::Full),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .map(DraftVocabChoice::Top)
                .ok_or_else(|| format!("expected `head`, `full` or a positive token count, got `{s}`")),
        }
    }
}

/// Token ids, most frequent first (so any prefix is the top-N list), and where they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct DraftVocab {
    pub ids: Vec<u32>,
    /// Free-form provenance written into the file (data folder, counted tokens, coverage).
    pub meta: Value,
}

impl DraftVocab {
    /// The `size` most frequent token ids by `counts[id]` (ties to the lower id), and the fraction
    /// of all counted tokens they cover.
    pub fn most_frequent(counts: &[u64], size: usize) -> (Vec<u32>, f64) {
        let mut order: Vec<u32> = (0..counts.len() as u32).collect();
        order.sort_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(a.cmp(&b)));
        order.truncate(size.min(counts.len()));
        let total: u64 = counts.iter().sum();
        let covered: u64 = order.iter().map(|&t| counts[t as usize]).sum();
        (order, if total == 0 { 0.0 } else { covered as f64 / total as f64 })
    }

    /// Reads `dir/draft_vocab.json` if present, checking every id against `vocab_size`.
    pub fn load(dir: &Path, vocab_size: usize) -> Result<Option<Self>> {
        let path = dir.join(DRAFT_VOCAB_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let json = read_json(&path)?;
        let Some(list) = json.get("token_ids").and_then(Value::as_array) else {
            return Err(Error::format(&path, "token_ids", "missing, or not a list of token ids"));
        };
        if list.is_empty() {
            return Err(Error::format(&path, "token_ids", "the list is empty"));
        }
        let mut seen = vec![false; vocab_size];
        let mut ids = Vec::with_capacity(list.len());
        for (i, v) in list.iter().enumerate() {
            let id = v.as_u64().filter(|&id| (id as usize) < vocab_size).ok_or_else(|| {
                Error::format(&path, "token_ids", format!("entry {i} ({v}) is not a token id below {vocab_size}"))
            })? as usize;
            if std::mem::replace(&mut seen[id], true) {
                return Err(Error::format(&path, "token_ids", format!("token {id} is listed twice")));
            }
            ids.push(id as u32);
        }
        let meta = json.get("meta").cloned().unwrap_or(Value::Null);
        Ok(Some(DraftVocab { ids, meta }))
    }

    /// Writes `dir/draft_vocab.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string(&json!({ "meta": self.meta, "token_ids": self.ids }))
            .map_err(|e| Error::input(e.to_string()))?;
        crate::fsutil::write_atomically(&dir.join(DRAFT_VOCAB_FILE), text.as_bytes())
    }

    /// Removes `dir/draft_vocab.json` if there is one: a head written into `dir` without a list
    /// must not draft over the list an earlier head left there.
    pub fn remove(dir: &Path) -> Result<()> {
        let path = dir.join(DRAFT_VOCAB_FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }
}

/// The projection a head drafts through: the base lm_head, or its rows for a draft vocabulary.
pub struct DraftLmHead<B: Backend> {
    /// `[N, H]` rows of the base lm_head; `None` = the full lm_head.
    rows: Option<B::Weight>,
    ids: Option<Vec<u32>>,
}

impl<B: Backend> DraftLmHead<B> {
    pub fn full() -> Self {
        DraftLmHead { rows: None, ids: None }
    }

    /// Resolves `choice` against the head folder `dir` and gathers the lm_head rows it needs.
    pub fn load(dir: &Path, base: &Llama<B>, choice: DraftVocabChoice) -> Result<Self> {
        let vocab = match choice {
            DraftVocabChoice::Full => return Ok(Self::full()),
            _ => DraftVocab::load(dir, base.config.vocab_size)?,
        };
        let Some(mut vocab) = vocab else {
            return match choice {
                DraftVocabChoice::Top(_) => Err(Error::input(format!(
                    "{}: no {DRAFT_VOCAB_FILE}, so there is no draft vocabulary to take the top tokens of \
                     (write one with `clover-engine draft-vocab`)",
                    dir.display()
                ))),
                _ => Ok(Self::full()),
            };
        };
        if let DraftVocabChoice::Top(n) = choice {
            if n > vocab.ids.len() {
                return Err(Error::input(format!(
                    "--draft-vocab {n}: {} lists {} tokens; give at most that many, `head` or `full`",
                    dir.join(DRAFT_VOCAB_FILE).display(),
                    vocab.ids.len()
                )));
            }
            vocab.ids.truncate(n);
        }
        Self::from_ids(base, vocab.ids)
    }

    pub fn from_ids(base: &Llama<B>, ids: Vec<u32>) -> Result<Self> {
        let rows = base.backend.gather_weight_rows(base.lm_head(), &ids, "draft_lm_head")?;
        Ok(DraftLmHead { rows: Some(rows), ids: Some(ids) })
    }

    /// The same projection through a Q8_0 copy of its rows (of the whole base lm_head when
    /// drafting over the full vocabulary). Logits then differ slightly from the base's, which
    /// only drafting sees.
    pub fn quantize_q8_0(self, base: &Llama<B>) -> Result<Self> {
        let rows = base.backend.quantize_q8_0(self.weight(base))?;
        Ok(DraftLmHead { rows: Some(rows), ids: self.ids })
    }

    /// The projection weight: the gathered rows, or the base lm_head.
    pub fn weight<'a>(&'a self, base: &'a Llama<B>) -> &'a B::Weight {
        self.rows.as_ref().unwrap_or(base.lm_head())
    }

    /// Logit columns: the draft vocabulary's size, or the base vocabulary's.
    pub fn width(&self, base: &Llama<B>) -> usize {
        self.ids.as_ref().map_or(base.config.vocab_size, Vec::len)
    }

    /// The token id of each logit column, or `None` for the full vocabulary.
    pub fn ids(&self) -> Option<&[u32]> {
        self.ids.as_deref()
    }

    /// Logits of `rows` rows of normalised features over the draft vocabulary: `[rows, N]`.
    /// Each column is computed exactly as the full projection computes it (same kernel, same
    /// summation order), so it equals the full logit of its token (unless quantized by
    /// `quantize_q8_0`).
    pub fn project(&self, model: &Llama<B>, x: &B::Buf, rows: usize) -> Logits<B> {
        Logits::project(&model.backend, x, rows, self.weight(model), self.width(model))
    }
}
