//! A conversation rendered with the model's own chat template, with the loss mask of the draft
//! heads: 1 on the tokens the assistant produces, 0 on everything the template or the user wrote.
//!
//! Wrong masks are a frequent cause of failed draft training (EAGLE issues #78, #125), and the
//! reference's fixed per-template offsets break as soon as the template changes. So nothing here
//! knows any template: for each assistant turn the conversation is rendered up to that turn with
//! the generation prompt (where the assistant starts writing) and up to the end of that turn; the
//! text in between, trailing whitespace excluded, is what the assistant produced. Tokens of the
//! full rendering whose byte offset starts inside such a span are masked in.
//!
//! What falls in a span: the reply and the template's end-of-turn marker (`<|im_end|>` in ChatML,
//! `</s>` in Vicuna, `<|eot_id|>` in Llama 3), as the references mask it. With the alignment of
//! clover2.md §8 the bit at position t weighs the row that reads token t+1 and predicts t+2, so
//! the marker's own prediction is weighed by the reply's last bit, the marker's bit weighs a row
//! that inference never drafts (it stops at the marker), and the row that reads the reply's first
//! token (the header's last position, the first draft of every answer) gets no weight: the
//! references' choice, kept for comparable heads. What does not: the assistant header (`<|im_start|>assistant\n`), the
//! newline some templates put after the end-of-turn marker, and all system and user turns. A token
//! that merges the end of the header with the start of the reply (byte-level BPE joins "\n" and a
//! leading space) starts in the header and stays out: at inference the header is part of the
//! prompt, so the model never emits such a token.

use crate::error::{Error, Result};
use crate::model::{ChatMessage, TextTokenizer};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedTokens {
    pub ids: Vec<u32>,
    /// One per id: 1 where the token was written by the assistant.
    pub loss_mask: Vec<u8>,
}

impl MaskedTokens {
    /// Keeps the first `max_len` tokens (training truncates to 2048 anyway; see clover2.md §8).
    pub fn truncate(&mut self, max_len: usize) {
        self.ids.truncate(max_len);
        self.loss_mask.truncate(max_len);
    }

    pub fn masked_count(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m != 0).count()
    }
}

/// Renders `messages` (no generation prompt) and masks in the assistant's tokens.
pub fn render_masked(tokenizer: &TextTokenizer, messages: &[ChatMessage]) -> Result<MaskedTokens> {
    let full = tokenizer.render_chat(messages, false)?;
    let spans = assistant_spans(tokenizer, messages, &full)?;
    let (ids, offsets) = tokenizer.encode_with_offsets(&full)?;
    let loss_mask = offsets.iter().map(|token| spans.iter().any(|s| s.contains(&token.start)) as u8).collect();
    Ok(MaskedTokens { ids, loss_mask })
}

/// Byte ranges of `full` written by the assistant, one per assistant turn.
fn assistant_spans(
    tokenizer: &TextTokenizer,
    messages: &[ChatMessage],
    full: &str,
) -> Result<Vec<std::ops::Range<usize>>> {
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
        let prompt = tokenizer.render_chat(&messages[..i], true)?;
        let through = tokenizer.render_chat(&messages[..=i], false)?;
        if !through.starts_with(&prompt) || !full.starts_with(&through) {
            return Err(Error::input(format!(
                "chat template: rendering the conversation up to turn {i} ({}) is not a prefix of the whole \
                 rendering, so the assistant's tokens cannot be located",
                m.role
            )));
        }
        let end = through.trim_end().len().max(prompt.len());
        spans.push(prompt.len()..end);
    }
    Ok(spans)
}
