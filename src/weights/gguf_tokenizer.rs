//! The tokenizer side of `import-gguf`: `tokenizer.json` (byte-level BPE), `tokenizer_config.json`
//! with the chat template, and `generation_config.json`, rebuilt from the GGUF metadata.

use std::collections::HashMap;

use serde::{Serialize, Serializer};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::weights::gguf::GgufFile;
use crate::weights::gguf_import::optional;

/// The pre-tokenizers `tokenizer.ggml.pre` may name, as the HF originals of those models define them.
#[derive(Debug, Clone, Copy)]
enum Pre {
    SmolLm,
    Qwen2,
}

pub(super) const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Pre {
    const KEY: &'static str = "tokenizer.ggml.pre";

    fn read(g: &GgufFile) -> Result<Self> {
        match g.get_str(Self::KEY)? {
            "smollm" => Ok(Pre::SmolLm),
            "qwen2" => Ok(Pre::Qwen2),
            other => Err(Error::format(
                &g.path,
                Self::KEY,
                format!("unsupported pre-tokenizer `{other}` (smollm, qwen2 are)"),
            )),
        }
    }

    fn normalizer(self) -> Value {
        match self {
            Pre::SmolLm => Value::Null,
            Pre::Qwen2 => json!({ "type": "NFC" }),
        }
    }

    fn pre_tokenizer(self) -> Value {
        let steps = match self {
            Pre::SmolLm => json!([
                { "type": "Digits", "individual_digits": true },
                { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true },
            ]),
            Pre::Qwen2 => json!([
                { "type": "Split", "pattern": { "Regex": QWEN2_REGEX }, "behavior": "Isolated", "invert": false },
                { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false },
            ]),
        };
        json!({ "type": "Sequence", "pretokenizers": steps })
    }

    /// The ByteLevel post-processor or decoder; the flags only affect offsets, kept as HF has them.
    fn byte_level(self, trim_offsets: bool) -> Value {
        let smollm = matches!(self, Pre::SmolLm);
        json!({ "type": "ByteLevel", "add_prefix_space": smollm, "trim_offsets": smollm && trim_offsets, "use_regex": smollm })
    }
}

/// llama.cpp token types that become HF added tokens.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

pub(super) struct TokenizerMeta<'a> {
    pub(super) tokens: Vec<&'a str>,
    merges: Vec<&'a str>,
    types: Vec<i32>,
    pre: Pre,
    pub(super) bos: Option<u32>,
    pub(super) eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<&'a str>,
}

impl<'a> TokenizerMeta<'a> {
    pub(super) fn read(g: &'a GgufFile) -> Result<Self> {
        const MODEL: &str = "tokenizer.ggml.model";
        let model = g.get_str(MODEL)?;
        if model != "gpt2" {
            return Err(Error::format(
                &g.path,
                MODEL,
                format!("only byte-level BPE (`gpt2`) is supported, found `{model}`"),
            ));
        }
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let types = g.get_i32_array("tokenizer.ggml.token_type")?;
        if types.len() != tokens.len() {
            let msg = format!("{} entries for {} tokens", types.len(), tokens.len());
            return Err(Error::format(&g.path, "tokenizer.ggml.token_type", msg));
        }
        let merges = g.get_str_array("tokenizer.ggml.merges")?;
        check_vocab(g, &tokens, &merges)?;
        let token_id = |key: &str| -> Result<Option<u32>> {
            match optional(g, key, GgufFile::get_u32)? {
                Some(id) if id as usize >= tokens.len() => Err(Error::format(
                    &g.path,
                    key,
                    format!("token id {id} is outside the vocabulary of {}", tokens.len()),
                )),
                id => Ok(id),
            }
        };
        Ok(TokenizerMeta {
            pre: Pre::read(g)?,
            bos: token_id("tokenizer.ggml.bos_token_id")?,
            eos: token_id("tokenizer.ggml.eos_token_id")?,
            unk: token_id("tokenizer.ggml.unknown_token_id")?,
            pad: token_id("tokenizer.ggml.padding_token_id")?,
            add_bos: optional(g, "tokenizer.ggml.add_bos_token", GgufFile::get_bool)?.unwrap_or(false),
            add_eos: optional(g, "tokenizer.ggml.add_eos_token", GgufFile::get_bool)?.unwrap_or(false),
            chat_template: optional(g, "tokenizer.chat_template", GgufFile::get_str)?,
            tokens,
            types,
            merges,
        })
    }

    fn token(&self, id: Option<u32>) -> Option<&str> {
        id.map(|id| self.tokens[id as usize])
    }

    pub(super) fn tokenizer_json(&self) -> TokenizerJson<'_> {
        let added_tokens = (self.types.iter().zip(&self.tokens).enumerate())
            .filter(|(_, (&ty, _))| ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(id, (&ty, &content))| AddedToken {
                id: id as u32,
                content,
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: false,
                special: ty == TOKEN_TYPE_CONTROL,
            })
            .collect();
        TokenizerJson {
            version: "1.0",
            truncation: Value::Null,
            padding: Value::Null,
            added_tokens,
            normalizer: self.pre.normalizer(),
            pre_tokenizer: self.pre.pre_tokenizer(),
            post_processor: self.pre.byte_level(false),
            decoder: self.pre.byte_level(true),
            model: BpeModel {
                kind: "BPE",
                dropout: None,
                unk_token: None,
                continuing_subword_prefix: None,
                end_of_word_suffix: None,
                fuse_unk: false,
                byte_fallback: false,
                ignore_merges: false,
                vocab: Vocab(&self.tokens),
                merges: &self.merges,
            },
        }
    }

    pub(super) fn tokenizer_config(&self, n_ctx: u32) -> Value {
        json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.add_bos,
            "add_eos_token": self.add_eos,
            "bos_token": self.token(self.bos),
            "eos_token": self.token(self.eos),
            "unk_token": self.token(self.unk),
            "pad_token": self.token(self.pad),
            "chat_template": self.chat_template,
            "model_max_length": n_ctx,
            "clean_up_tokenization_spaces": false,
        })
    }

    pub(super) fn generation_config(&self) -> Value {
        json!({ "bos_token_id": self.bos, "eos_token_id": self.eos })
    }
}

/// Rejects what HF `tokenizers` would refuse to load (duplicate tokens, merges naming unknown
/// tokens), so the error names the GGUF field instead of surfacing later in the loader.
fn check_vocab(g: &GgufFile, tokens: &[&str], merges: &[&str]) -> Result<()> {
    let mut ids = HashMap::with_capacity(tokens.len());
    for (id, &token) in tokens.iter().enumerate() {
        if let Some(first) = ids.insert(token, id) {
            return Err(Error::format(
                &g.path,
                "tokenizer.ggml.tokens",
                format!("token {token:?} appears as id {first} and {id}"),
            ));
        }
    }
    for (rank, merge) in merges.iter().enumerate() {
        let bad =
            |msg: &str| Error::format(&g.path, "tokenizer.ggml.merges", format!("merge #{rank} {merge:?}: {msg}"));
        let mut parts = merge.split(' ');
        let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected two tokens separated by one space"));
        };
        if !ids.contains_key(a) || !ids.contains_key(b) || !ids.contains_key(format!("{a}{b}").as_str()) {
            return Err(bad("a token or their concatenation is not in the vocabulary"));
        }
    }
    Ok(())
}

/// Field order and names of a HuggingFace `tokenizers` tokenizer.json.
#[derive(Serialize)]
pub(super) struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Value,
    padding: Value,
    added_tokens: Vec<AddedToken<'a>>,
    normalizer: Value,
    pre_tokenizer: Value,
    post_processor: Value,
    decoder: Value,
    model: BpeModel<'a>,
}

#[derive(Serialize)]
struct AddedToken<'a> {
    id: u32,
    content: &'a str,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}

#[derive(Serialize)]
struct BpeModel<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    dropout: Option<f32>,
    unk_token: Option<&'a str>,
    continuing_subword_prefix: Option<&'a str>,
    end_of_word_suffix: Option<&'a str>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: Vocab<'a>,
    merges: &'a [&'a str],
}

/// Token → id in id order, as HF files have it (a serde_json map would sort by token).
struct Vocab<'a>(&'a [&'a str]);

impl Serialize for Vocab<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().enumerate().map(|(id, token)| (token, id)))
    }
}
