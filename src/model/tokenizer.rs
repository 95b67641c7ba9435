//! Text ↔ token ids (HF `tokenizer.json`) and the model's own chat template
//! (`tokenizer_config.json`), rendered with a Jinja engine exactly as the model ships it.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage { role: role.to_string(), content: content.to_string() }
    }
}

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos: bool,
    config_path: PathBuf,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::format(dir, "tokenizer.json", "file is missing from the model folder"));
        }
        let inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::format(&path, "(tokenizer)", e.to_string()))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.exists() {
            let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            serde_json::from_str(&text).map_err(|e| Error::format(&config_path, "(json)", e.to_string()))?
        } else {
            Value::Null
        };
        let token = |key: &str| match config.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        Ok(TextTokenizer {
            inner,
            chat_template: config.get("chat_template").and_then(Value::as_str).map(str::to_string),
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            add_bos: config.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false),
            config_path,
        })
    }

    /// Ids of raw text; special tokens written in the text are matched as specials. A BOS is
    /// prepended when the model asks for one (`add_bos_token`).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::input(format!("tokenizer: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            if let Some(bos) = self.bos_token.as_deref().and_then(|t| self.inner.token_to_id(t)) {
                ids.push(bos);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Ids of raw text (no BOS: chat templates write their own) with each token's byte range in
    /// the text, so callers can tell which tokens came from which part of a rendered template.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<Range<usize>>)> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::input(format!("tokenizer: {e}")))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().iter().map(|&(start, end)| start..end).collect()))
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::input(format!("tokenizer: {e}")))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id of the end-of-sequence token named in tokenizer_config.json, if any.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.inner.token_to_id(t))
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders a conversation with the model's chat template. The template's BOS handling is
    /// its own (it writes `bos_token` where the model wants one).
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            let why = if self.config_path.exists() { "the model has no chat template" } else { "the file is missing" };
            Error::format(
                &self.config_path,
                "chat_template",
                format!("{why}, so chat messages cannot be rendered (generate takes raw text with --prompt)"),
            )
        })?;
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template)
            .map_err(|e| Error::format(&self.config_path, "chat_template", e.to_string()))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| Error::format(&self.config_path, "chat_template", e.to_string()))
    }
}
