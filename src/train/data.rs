//! gen-data: one base-model forward per conversation, storing what the draft heads learn from
//! (token ids, post- and pre-norm features, loss mask) in safetensors shards (layout: `layout.rs`).
//!
//! Everything written is a function of (model, data file, range, max-len, shard size): the shard
//! plan is fixed from token counts before any forward runs, each shard is written under a temporary
//! name and renamed, and a rerun skips the shards already there. An interrupted run, restarted,
//! therefore ends with the same bytes as an uninterrupted one.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fsutil::write_atomically;
use crate::model::{ChatMessage, Llama, LogitRows, ModelConfig, TextTokenizer};
use crate::train::conversations::{read_sharegpt, ReadReport};
use crate::train::layout::{
    shard_file, write_shard, ConversationEntry, DataIndex, ShardEntry, ShardRecord, FORMAT, INDEX_FILE,
};
use crate::train::loss_mask::{render_masked, MaskedTokens};

#[derive(Clone, Debug)]
pub struct GenDataOptions {
    pub model_dir: PathBuf,
    /// A ShareGPT JSON file.
    pub data: PathBuf,
    pub out: PathBuf,
    /// Usable conversations `[start, end)` in file order; `end` None (or past the end) = all.
    pub start: usize,
    pub end: Option<usize>,
    pub max_len: usize,
    /// A shard is closed before the conversation that would take it past this many tokens (a
    /// longer conversation gets a shard of its own).
    pub shard_tokens: usize,
    /// Render with this template file instead of the model's own (`--chat-template`).
    pub chat_template: Option<PathBuf>,
    /// Open every conversation with this system message, replacing the conversation's own.
    pub system: Option<String>,
}

pub struct GenDataSummary {
    pub report: ReadReport,
    pub index: DataIndex,
    pub shards_written: usize,
    pub shards_present: usize,
    /// Tokens run through the model by this call (finished shards are not redone).
    pub tokens_run: usize,
    pub seconds: f64,
}

/// A conversation ready for the forward.
struct Planned {
    index: usize,
    id: String,
    tokens: MaskedTokens,
    truncated: bool,
}

pub fn gen_data<B: Backend>(opts: &GenDataOptions, backend: B) -> Result<GenDataSummary> {
    let Plan { report, conversations: planned, shards: groups, index } = plan(opts)?;
    // Loaded before the output folder is touched, so a broken model folder leaves nothing behind.
    let model = Llama::load(&opts.model_dir, backend)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    claim_out_dir(&opts.out, &index)?;
    let pending: Vec<usize> = (0..groups.len()).filter(|&k| !opts.out.join(shard_file(k)).exists()).collect();
    let pending_tokens: usize = pending.iter().map(|&k| index.shards[k].tokens).sum();
    let mut summary = GenDataSummary {
        report,
        index,
        shards_written: 0,
        shards_present: groups.len() - pending.len(),
        tokens_run: pending_tokens,
        seconds: 0.0,
    };
    let longest = pending.iter().flat_map(|&k| &planned[groups[k].clone()]).map(|p| p.tokens.ids.len()).max();
    let Some(longest) = longest else {
        return Ok(summary);
    };
    let mut cache = model.new_cache(longest);
    let bar = progress_bar(pending_tokens as u64);
    let started = Instant::now();
    for (n, &k) in pending.iter().enumerate() {
        bar.set_message(format!("shard {}/{} ({} to do)", k + 1, groups.len(), pending.len() - n));
        let mut records = Vec::with_capacity(groups[k].len());
        for p in &planned[groups[k].clone()] {
            records.push(forward_record(&model, &mut cache, p)?);
            bar.inc(p.tokens.ids.len() as u64);
        }
        write_shard(&opts.out.join(shard_file(k)), model.config.hidden_size, &records)?;
        summary.shards_written += 1;
    }
    bar.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// What a run will write, fixed before any forward.
struct Plan {
    report: ReadReport,
    conversations: Vec<Planned>,
    /// Conversations (positions in `conversations`) of each shard.
    shards: Vec<Range<usize>>,
    index: DataIndex,
}

/// Checks the options, reads the conversations, renders and masks the range and fixes the shards;
/// no forward runs and nothing is written.
fn plan(opts: &GenDataOptions) -> Result<Plan> {
    if opts.max_len == 0 || opts.shard_tokens == 0 {
        return Err(Error::input("--max-len and --shard-tokens must be at least 1"));
    }
    let config = ModelConfig::from_file(&opts.model_dir.join("config.json"))?;
    if opts.max_len > config.max_position_embeddings {
        return Err(Error::input(format!(
            "--max-len {} exceeds the model's context of {} tokens",
            opts.max_len, config.max_position_embeddings
        )));
    }
    let tokenizer = TextTokenizer::for_model(&opts.model_dir, opts.chat_template.as_deref(), &config)?;
    if !tokenizer.has_chat_template() {
        return Err(Error::format(
            opts.model_dir.join("tokenizer_config.json"),
            "chat_template",
            "the model has no chat template, which gen-data needs to render conversations (give one with \
             --chat-template FILE, e.g. assets/chat-templates/vicuna.jinja for Vicuna)",
        ));
    }
    let (conversations, report) = read_sharegpt(&opts.data)?;
    let end = opts.end.unwrap_or(usize::MAX).min(conversations.len());
    if opts.start >= end {
        return Err(Error::input(format!(
            "--start {} --end {}: empty range ({}: {report})",
            opts.start,
            opts.end.map_or("(all)".to_string(), |e| e.to_string()),
            opts.data.display()
        )));
    }
    let planned = conversations[opts.start..end]
        .par_iter()
        .enumerate()
        .map(|(i, c)| {
            let messages = with_system(&c.messages, opts.system.as_deref());
            let mut tokens = render_masked(&tokenizer, &messages)
                .map_err(|e| Error::input(format!("{}: conversation {:?}: {e}", opts.data.display(), c.id)))?;
            let truncated = tokens.ids.len() > opts.max_len;
            tokens.truncate(opts.max_len);
            Ok(Planned { index: opts.start + i, id: c.id.clone(), tokens, truncated })
        })
        .collect::<Result<Vec<_>>>()?;
    let groups = plan_shards(&planned.iter().map(|p| p.tokens.ids.len()).collect::<Vec<_>>(), opts.shard_tokens);
    // The template given, by name and content (a path written another way is the same one).
    let template = opts.chat_template.as_ref().and(tokenizer.chat_template()).map(|t| t.identity());
    let index = build_index(opts, &config, &report, end, &planned, &groups, template)?;
    Ok(Plan { report, conversations: planned, shards: groups, index })
}

/// The conversation opened by `system` in place of its own system messages, when one is given.
fn with_system(messages: &[ChatMessage], system: Option<&str>) -> Vec<ChatMessage> {
    match system {
        Some(s) => std::iter::once(ChatMessage::new("system", s))
            .chain(messages.iter().filter(|m| m.role != "system").cloned())
            .collect(),
        None => messages.to_vec(),
    }
}

/// Consecutive conversations per shard: a shard is closed before the conversation that would take
/// it past `shard_tokens`, so shard k's range depends only on the token counts.
fn plan_shards(lengths: &[usize], shard_tokens: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut first, mut tokens) = (0, 0);
    for (i, &len) in lengths.iter().enumerate() {
        if i > first && tokens + len > shard_tokens {
            groups.push(first..i);
            (first, tokens) = (i, 0);
        }
        tokens += len;
    }
    if first < lengths.len() {
        groups.push(first..lengths.len());
    }
    groups
}

fn build_index(
    opts: &GenDataOptions,
    config: &ModelConfig,
    report: &ReadReport,
    end: usize,
    planned: &[Planned],
    groups: &[Range<usize>],
    chat_template: Option<String>,
) -> Result<DataIndex> {
    let name = |p: &Path| -> Result<String> {
        let full = std::fs::canonicalize(p).map_err(|e| Error::io(p, e))?;
        Ok(full.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
    };
    let data_bytes = std::fs::metadata(&opts.data).map_err(|e| Error::io(&opts.data, e))?.len();
    let shards: Vec<ShardEntry> = groups
        .iter()
        .enumerate()
        .map(|(k, g)| {
            let conversations: Vec<ConversationEntry> = planned[g.clone()]
                .iter()
                .map(|p| ConversationEntry {
                    index: p.index,
                    id: p.id.clone(),
                    tokens: p.tokens.ids.len(),
                    masked_tokens: p.tokens.masked_count(),
                })
                .collect();
            ShardEntry {
                file: shard_file(k),
                tokens: conversations.iter().map(|c| c.tokens).sum(),
                masked_tokens: conversations.iter().map(|c| c.masked_tokens).sum(),
                conversations,
            }
        })
        .collect();
    Ok(DataIndex {
        format: FORMAT.to_string(),
        model: name(&opts.model_dir)?,
        model_weight_bytes: Some(weight_bytes(&opts.model_dir)?),
        hidden_size: config.hidden_size,
        data: name(&opts.data)?,
        data_bytes,
        usable_conversations: report.usable,
        start: opts.start,
        end,
        max_len: opts.max_len,
        shard_tokens: opts.shard_tokens,
        chat_template,
        system: opts.system.clone(),
        conversations: planned.len(),
        tokens: shards.iter().map(|s| s.tokens).sum(),
        masked_tokens: shards.iter().map(|s| s.masked_tokens).sum(),
        truncated: planned.iter().filter(|p| p.truncated).count(),
        shards,
    })
}

/// Bytes of the model folder's safetensors files.
pub(crate) fn weight_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            total += std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
        }
    }
    Ok(total)
}

/// Writes index.json, or checks that the one already there (an earlier run into the same folder)
/// describes the same plan, so shards made with other parameters are never mixed in. Leftovers of
/// an interrupted run (temporary shard files) are removed.
fn claim_out_dir(out: &Path, index: &DataIndex) -> Result<()> {
    let path = out.join(INDEX_FILE);
    if path.exists() {
        let existing = DataIndex::read(out)?;
        if let Some((field, why)) = existing.plan_difference(index) {
            return Err(Error::format(&path, field, format!("{why}: use another --out")));
        }
    } else {
        write_atomically(&path, index.to_json()?.as_bytes())?;
    }
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let entry = entry.map_err(|e| Error::io(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".shard-") && name.contains(".partial-") {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

fn forward_record<B: Backend>(
    model: &Llama<B>,
    cache: &mut crate::model::KvCache<B>,
    p: &Planned,
) -> Result<ShardRecord> {
    cache.clear();
    let out = model.prefill(cache, &p.tokens.ids, LogitRows::None)?;
    let bf16 = |buf: &B::Buf| -> Vec<u16> {
        model.backend.download(buf).into_iter().map(|x| half::bf16::from_f32(x).to_bits()).collect()
    };
    Ok(ShardRecord {
        index: p.index,
        input_ids: p.tokens.ids.clone(),
        hidden_state: bf16(&out.postnorm),
        hidden_state_prenorm: bf16(&out.prenorm),
        loss_mask: p.tokens.loss_mask.clone(),
    })
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{wide_bar} {pos}/{len} tokens  {per_sec}  eta {eta}  {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

#[cfg(test)]
mod tests {
    use super::{plan_shards, with_system};
    use crate::model::ChatMessage;

    #[test]
    fn a_system_message_replaces_the_conversations_own() {
        let conv =
            [ChatMessage::new("system", "old"), ChatMessage::new("user", "q"), ChatMessage::new("assistant", "a")];
        let replaced = with_system(&conv, Some("new"));
        assert_eq!(replaced[0], ChatMessage::new("system", "new"));
        assert_eq!(&replaced[1..], &conv[1..]);
        assert_eq!(with_system(&conv[1..], Some("new")), replaced);
        assert_eq!(with_system(&conv, None), conv.to_vec());
    }

    #[test]
    fn shards_close_before_overflow_and_long_conversations_stand_alone() {
        assert_eq!(plan_shards(&[3, 3, 3, 3], 6), [0..2, 2..4]);
        assert_eq!(plan_shards(&[3, 3, 3, 3], 7), [0..2, 2..4]);
        assert_eq!(plan_shards(&[10, 2, 2, 10], 5), [0..1, 1..3, 3..4]);
        assert_eq!(plan_shards(&[1], 5), vec![0..1]);
        assert!(plan_shards(&[], 5).is_empty());
    }
}
