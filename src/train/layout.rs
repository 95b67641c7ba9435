//! The on-disk layout of distillation data, shared by the writer (`gen-data`) and `ShardReader`.
//!
//! ```text
//! OUT/index.json                  DataIndex: parameters, per-shard conversations and token counts
//! OUT/shard-00000.safetensors     conversations of shard 0, for each conversation index i:
//!     c{i}.input_ids              i64  [T]     token ids of the rendered conversation
//!     c{i}.hidden_state           bf16 [T, H]  base features after the final RMSNorm (h_t)
//!     c{i}.hidden_state_prenorm   bf16 [T, H]  last decoder layer output before it (u_t)
//!     c{i}.loss_mask              u8   [T]     1 on assistant tokens
//! ```
//!
//! `i` is the conversation's position among the usable conversations of the data file (file order),
//! so a record can be traced back to its source. index.json is written before the first shard; a
//! shard listed there but missing means gen-data has not finished.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::write_atomically;

pub const INDEX_FILE: &str = "index.json";
pub const FORMAT: &str = "clover-engine distillation data v1";

pub const INPUT_IDS: &str = "input_ids";
pub const HIDDEN_STATE: &str = "hidden_state";
pub const HIDDEN_STATE_PRENORM: &str = "hidden_state_prenorm";
pub const LOSS_MASK: &str = "loss_mask";

pub fn shard_file(k: usize) -> String {
    format!("shard-{k:05}.safetensors")
}

pub fn tensor_name(conversation: usize, field: &str) -> String {
    format!("c{conversation}.{field}")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataIndex {
    pub format: String,
    /// Folder name of the base model and the shape of its features.
    pub model: String,
    /// Bytes of the model's weight files: with the name, what tells two models apart on resume
    /// (absent from folders written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_weight_bytes: Option<u64>,
    pub hidden_size: usize,
    /// File name and size of the conversations file and how many usable conversations it holds.
    pub data: String,
    pub data_bytes: u64,
    pub usable_conversations: usize,
    /// Conversations `[start, end)` of the usable ones, in file order.
    pub start: usize,
    pub end: usize,
    pub max_len: usize,
    pub shard_tokens: usize,
    /// The `--chat-template` file the conversations were rendered with, by name and content hash
    /// (`ChatTemplate::identity`; none: the model's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// The `--system` message that opened every conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub conversations: usize,
    pub tokens: usize,
    pub masked_tokens: usize,
    /// Conversations cut at `max_len`.
    pub truncated: usize,
    pub shards: Vec<ShardEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub tokens: usize,
    pub masked_tokens: usize,
    pub conversations: Vec<ConversationEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationEntry {
    pub index: usize,
    pub id: String,
    pub tokens: usize,
    pub masked_tokens: usize,
}

impl DataIndex {
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map(|s| s + "\n").map_err(|e| Error::input(format!("index.json: {e}")))
    }

    /// The first setting in which `self`, a folder's plan, differs from `other`, this run's, and
    /// how: (field, message). The weight bytes count only where both were recorded; shards and
    /// counts follow from the settings, so they are compared last.
    pub fn plan_difference(&self, other: &DataIndex) -> Option<(&'static str, String)> {
        let differ = |field, theirs: String, ours: String| {
            (field, format!("the folder's data was made with {theirs}, this run's with {ours}"))
        };
        let pairs = [
            ("model", self.model.clone(), other.model.clone()),
            ("hidden_size", self.hidden_size.to_string(), other.hidden_size.to_string()),
            ("data", self.data.clone(), other.data.clone()),
            ("data_bytes", self.data_bytes.to_string(), other.data_bytes.to_string()),
            ("start", self.start.to_string(), other.start.to_string()),
            ("end", self.end.to_string(), other.end.to_string()),
            ("max_len", self.max_len.to_string(), other.max_len.to_string()),
            ("shard_tokens", self.shard_tokens.to_string(), other.shard_tokens.to_string()),
            (
                "chat_template",
                described(&self.chat_template, "the model's"),
                described(&other.chat_template, "the model's"),
            ),
            ("system", described(&self.system, "none"), described(&other.system, "none")),
        ];
        if let Some((field, theirs, ours)) = pairs.into_iter().find(|(_, a, b)| a != b) {
            return Some(differ(field, theirs, ours));
        }
        if self.usable_conversations != other.usable_conversations {
            let why = format!(
                "the folder's run found {} usable conversations in the data file, this run {} (before \
                 2026-12-07 gen-data skipped a conversation that opens with an assistant turn; it now drops \
                 that turn and keeps the rest, and skips turns that do not alternate)",
                self.usable_conversations, other.usable_conversations
            );
            return Some(("usable_conversations", why));
        }
        if let (Some(a), Some(b)) = (self.model_weight_bytes, other.model_weight_bytes) {
            if a != b {
                return Some(differ("model_weight_bytes", a.to_string(), b.to_string()));
            }
        }
        let same_plan = DataIndex { model_weight_bytes: other.model_weight_bytes, ..self.clone() } == *other;
        (!same_plan).then(|| {
            let why =
                "the same settings split the conversations into other tokens (another tokenizer or chat template?)";
            ("shards", why.to_string())
        })
    }

    /// Both folders hold features of one base model (its name and hidden size agree).
    pub fn same_base_model(&self, other: &DataIndex) -> bool {
        self.model == other.model && self.hidden_size == other.hidden_size
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(INDEX_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let index: DataIndex =
            serde_json::from_str(&text).map_err(|e| Error::format(&path, "(json)", e.to_string()))?;
        if index.format != FORMAT {
            return Err(Error::format(&path, "format", format!("{:?}, expected {FORMAT:?}", index.format)));
        }
        Ok(index)
    }
}

/// One conversation's record as it is written: features already rounded to bf16 bits.
pub struct ShardRecord {
    pub index: usize,
    pub input_ids: Vec<u32>,
    pub hidden_state: Vec<u16>,
    pub hidden_state_prenorm: Vec<u16>,
    pub loss_mask: Vec<u8>,
}

/// Writes one shard atomically. The bytes depend only on the records: safetensors orders the
/// tensors itself and the single metadata entry leaves no map order to vary.
pub fn write_shard(path: &Path, hidden: usize, records: &[ShardRecord]) -> Result<()> {
    let bad = |e: safetensors::SafeTensorError| Error::format(path, "(safetensors)", e.to_string());
    let ids: Vec<Vec<u8>> =
        records.iter().map(|r| r.input_ids.iter().flat_map(|&t| i64::from(t).to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(records.len() * 4);
    for (r, ids) in records.iter().zip(&ids) {
        let t = r.input_ids.len();
        let fields: [(&str, Dtype, Vec<usize>, &[u8]); 4] = [
            (INPUT_IDS, Dtype::I64, vec![t], ids),
            (HIDDEN_STATE, Dtype::BF16, vec![t, hidden], bytemuck::cast_slice(&r.hidden_state)),
            (HIDDEN_STATE_PRENORM, Dtype::BF16, vec![t, hidden], bytemuck::cast_slice(&r.hidden_state_prenorm)),
            (LOSS_MASK, Dtype::U8, vec![t], &r.loss_mask),
        ];
        for (field, dtype, shape, bytes) in fields {
            views.push((tensor_name(r.index, field), TensorView::new(dtype, shape, bytes).map_err(bad)?));
        }
    }
    let metadata = HashMap::from([("format".to_string(), FORMAT.to_string())]);
    let bytes = safetensors::serialize(views, &Some(metadata)).map_err(bad)?;
    write_atomically(path, &bytes)
}

/// Writes `records` as a complete gen-data folder: shards of `per_shard` conversations and an
/// index.json naming `model` as the base model (data made without running gen-data: tests,
/// synthetic sets). Returns the index written.
/// Writes shard `k` of `records` into `dir` and returns its index entry, conversation `i` named
/// `ids[i]`.
pub fn write_shard_entry(
    dir: &Path,
    k: usize,
    hidden: usize,
    records: &[ShardRecord],
    ids: Vec<String>,
) -> Result<ShardEntry> {
    write_shard(&dir.join(shard_file(k)), hidden, records)?;
    let conversations: Vec<ConversationEntry> = records
        .iter()
        .zip(ids)
        .map(|(r, id)| ConversationEntry {
            index: r.index,
            id,
            tokens: r.input_ids.len(),
            masked_tokens: r.loss_mask.iter().map(|&m| m as usize).sum(),
        })
        .collect();
    Ok(ShardEntry {
        file: shard_file(k),
        tokens: conversations.iter().map(|c| c.tokens).sum(),
        masked_tokens: conversations.iter().map(|c| c.masked_tokens).sum(),
        conversations,
    })
}

pub fn write_data_folder(
    dir: &Path,
    model: &str,
    hidden: usize,
    records: &[ShardRecord],
    per_shard: usize,
) -> Result<DataIndex> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut shards = Vec::new();
    for (k, chunk) in records.chunks(per_shard.max(1)).enumerate() {
        let ids = chunk.iter().map(|r| format!("record-{}", r.index)).collect();
        shards.push(write_shard_entry(dir, k, hidden, chunk, ids)?);
    }
    let n = records.len();
    let index = DataIndex {
        format: FORMAT.to_string(),
        model: model.to_string(),
        model_weight_bytes: None,
        hidden_size: hidden,
        data: "(records written directly)".to_string(),
        data_bytes: 0,
        usable_conversations: n,
        start: 0,
        end: n,
        max_len: records.iter().map(|r| r.input_ids.len()).max().unwrap_or(0),
        shard_tokens: 0,
        chat_template: None,
        system: None,
        conversations: n,
        tokens: shards.iter().map(|s| s.tokens).sum(),
        masked_tokens: shards.iter().map(|s| s.masked_tokens).sum(),
        truncated: 0,
        shards,
    };
    write_atomically(&dir.join(INDEX_FILE), index.to_json()?.as_bytes())?;
    Ok(index)
}

/// An optional setting as `plan_difference` names it: quoted, or `absent` when not given.
fn described(value: &Option<String>, absent: &str) -> String {
    value.as_ref().map_or(absent.to_string(), |v| format!("{v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> DataIndex {
        DataIndex {
            format: FORMAT.to_string(),
            model: "M".into(),
            model_weight_bytes: Some(1000),
            hidden_size: 8,
            data: "conv.json".into(),
            data_bytes: 50,
            usable_conversations: 3,
            start: 0,
            end: 3,
            max_len: 64,
            shard_tokens: 100,
            chat_template: None,
            system: None,
            conversations: 3,
            tokens: 90,
            masked_tokens: 40,
            truncated: 0,
            shards: Vec::new(),
        }
    }

    #[test]
    fn a_plan_difference_names_the_setting_and_both_values() {
        assert_eq!(plan().plan_difference(&plan()), None);
        let other = DataIndex { max_len: 40, ..plan() };
        let (field, why) = plan().plan_difference(&other).unwrap();
        assert_eq!((field, why.as_str()), ("max_len", "the folder's data was made with 64, this run's with 40"));
        // The same folder name, other weights (another import of the model): refused.
        let other = DataIndex { model_weight_bytes: Some(999), ..plan() };
        assert_eq!(plan().plan_difference(&other).map(|d| d.0), Some("model_weight_bytes"));
        // A folder written before the weights were recorded still resumes.
        let old = DataIndex { model_weight_bytes: None, ..plan() };
        assert_eq!(old.plan_difference(&plan()), None);
        let other = DataIndex { tokens: 91, ..plan() };
        assert_eq!(plan().plan_difference(&other).map(|d| d.0), Some("shards"));
    }
}
