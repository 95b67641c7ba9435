//! Prints generated text as tokens arrive without splitting multi-byte characters: a byte-level
//! token can end halfway through a UTF-8 sequence, which decodes to U+FFFD until the rest arrives.

use std::io::Write;

use clover_engine::model::TextTokenizer;

pub struct TextStream<'a> {
    tokenizer: &'a TextTokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a TextTokenizer) -> Self {
        TextStream { tokenizer, ids: Vec::new(), printed: 0 }
    }

    pub fn push(&mut self, ids: &[u32]) {
        self.ids.extend_from_slice(ids);
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
