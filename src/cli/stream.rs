//! Prints generated text as tokens arrive without splitting multi-byte characters: a byte-level
//! token can end halfway through a UTF-8 sequence, which decodes to U+FFFD until the rest arrives.
//! The stop token that ends a generation (e.g. `<|im_end|>`) is part of the output ids but not of
//! the answer, so it is not printed.

use std::io::Write;

use clover_engine::model::TextTokenizer;

pub struct TextStream<'a> {
    tokenizer: &'a TextTokenizer,
    ids: Vec<u32>,
    printed: usize,
    stop_ids: Vec<u32>,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a TextTokenizer, stop_ids: &[u32]) -> Self {
        TextStream { tokenizer, ids: Vec::new(), printed: 0, stop_ids: stop_ids.to_vec() }
    }

    pub fn push(&mut self, ids: &[u32]) {
        self.ids.extend(ids.iter().filter(|id| !self.stop_ids.contains(id)));
        let Ok(text) = self.tokenizer.decode(&self.ids) else {
            return;
        };
        if text.ends_with('\u{FFFD}') || text.len() < self.printed || !text.is_char_boundary(self.printed) {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&text.as_bytes()[self.printed..]);
        let _ = out.flush();
        self.printed = text.len();
    }
}
