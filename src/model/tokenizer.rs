//! Text ↔ token ids (HF `tokenizer.json`) and the model's own chat template
//! (`chat_template.jinja`, or `tokenizer_config.json`'s `chat_template`), rendered by
//! `chat_template.rs` as transformers renders it.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::chat_template::ChatTemplate;
use crate::model::config::ModelConfig;

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
    chat_template: Option<ChatTemplate>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos: bool,
    config_path: PathBuf,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with_template(dir, None)
    }

    /// The tokenizer of the model folder `dir` for the model `config` describes (a tokenizer
    /// larger than its vocabulary is refused), with the chat template of the file `template`
    /// instead of the folder's own when one is given (`--chat-template FILE`).
    pub fn for_model(dir: &Path, template: Option<&Path>, config: &ModelConfig) -> Result<Self> {
        let tokenizer = Self::load_with_template(dir, template)?;
        tokenizer.check_model_vocab(config.vocab_size, &dir.join("config.json"))?;
        Ok(tokenizer)
    }

    /// `load`, with the chat template of the file `template` when one is given: the folder's own
    /// is then not read, so a folder whose template cannot be used still works with another.
    pub fn load_with_template(dir: &Path, template: Option<&Path>) -> Result<Self> {
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
            chat_template: match template {
                Some(file) => Some(ChatTemplate::from_file(file)?),
                None => chat_template(dir, &config, &config_path)?,
            },
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            add_bos: config.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false),
            config_path,
        })
    }

    /// Ids of raw text; special tokens written in the text are matched as specials. With
    /// `add_special_tokens`, the text is encoded as transformers' `tokenizer(text)` encodes it: through
    /// tokenizer.json's post-processor (Llama 3's adds `<|begin_of_text|>` there), and with a BOS
    /// prepended when tokenizer_config.json asks for one (`add_bos_token`) and none is there yet.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| Error::input(format!("tokenizer: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_special_tokens && self.add_bos {
            let bos = self.bos_token.as_deref().and_then(|t| self.inner.token_to_id(t));
            if let Some(bos) = bos.filter(|&bos| enc.get_ids().first() != Some(&bos)) {
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

    /// Refuses a tokenizer whose base vocabulary is larger than the model's (`vocab_size` of
    /// `config_path`): the two come from different models, and the first out-of-range id would
    /// fail mid-run. Added tokens are not counted: some models list a few beyond `vocab_size`
    /// that ordinary text never produces.
    fn check_model_vocab(&self, vocab_size: usize, config_path: &Path) -> Result<()> {
        let base = self.inner.get_vocab_size(false);
        if base > vocab_size {
            return Err(Error::format(
                config_path,
                "vocab_size",
                format!(
                    "{vocab_size}, but the folder's tokenizer.json has {base} tokens: they come from different models"
                ),
            ));
        }
        Ok(())
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

    /// The template chats are rendered with, if any.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Renders a conversation with the model's chat template. The template's BOS handling is
    /// its own (it writes `bos_token` where the model wants one).
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            let why = if self.config_path.exists() { "the model has no chat template" } else { "the file is missing" };
            Error::format(
                &self.config_path,
                "chat_template",
                format!(
                    "{why}, so chat messages cannot be rendered: give a template with --chat-template FILE \
                     (e.g. assets/chat-templates/vicuna.jinja for Vicuna), or raw text with generate --prompt"
                ),
            )
        })?;
        template.render(
            messages,
            add_generation_prompt,
            self.bos_token.as_deref().unwrap_or_default(),
            self.eos_token.as_deref().unwrap_or_default(),
        )
    }
}

/// The folder's chat template: `chat_template.jinja` when there is one (newer transformers
/// versions save it there, and read it first), else `tokenizer_config.json`'s `chat_template`, a string
/// or a list of named templates (the one named "default").
fn chat_template(dir: &Path, config: &Value, config_path: &Path) -> Result<Option<ChatTemplate>> {
    let file = dir.join("chat_template.jinja");
    if file.exists() {
        return ChatTemplate::from_file(&file).map(Some);
    }
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(source)) => Ok(Some(ChatTemplate::new(source.clone(), config_path, "chat_template"))),
        Some(Value::Array(named)) => {
            let default = named.iter().find(|t| t.get("name").and_then(Value::as_str) == Some("default"));
            let source = default.and_then(|t| t.get("template")).and_then(Value::as_str).ok_or_else(|| {
                Error::format(config_path, "chat_template", "a list of templates without one named \"default\"")
            })?;
            Ok(Some(ChatTemplate::new(source, config_path, "chat_template")))
        }
        Some(_) => Err(Error::format(config_path, "chat_template", "expected a template string or a list of them")),
    }
}
