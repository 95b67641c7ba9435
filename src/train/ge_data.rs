//! Importing the reference's `ge_data` dumps (clover2.md §7) into this engine's gen-data layout,
//! so conversations already rendered, masked and run through the base model by the PyTorch code
//! train here unchanged. A dump is one `torch.save` file per conversation holding `input_ids
//! [T]`, `hidden_state [T, H]` (post-norm h_t), `loss_mask [T]` and, in Clover-2's dumps,
//! `hidden_state_onnorm [T, H]` (pre-norm u_t); a leading batch axis of 1 is accepted.
//!
//! The base model given must be the dumps' own: the first record's features are compared with a
//! forward of it, and a dump without pre-norm features (EAGLE-1's) gets them from that forward,
//! record by record (its post-norm features checked the same way).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fsutil::write_atomically;
use crate::model::{KvCache, Llama, LogitRows};
use crate::train::data::weight_bytes;
use crate::train::layout::{write_shard_entry, DataIndex, ShardEntry, ShardRecord, FORMAT, INDEX_FILE};
use crate::weights::torch::{TensorRef, TorchFile};

/// Largest relative RMS difference allowed between a dump's features and the base model's own:
/// fp16 dumps and another forward's rounding stay far below it, another model far above.
pub const MAX_FEATURE_ERROR: f64 = 0.05;

pub struct GeDataOptions {
    pub from: PathBuf,
    pub model_dir: PathBuf,
    pub out: PathBuf,
    /// Conversations are cut to this many tokens; None: 2048 (the references' training cut) or
    /// the model's context if shorter.
    pub max_len: Option<usize>,
    pub shard_tokens: usize,
}

/// The references train on at most this many tokens of a conversation.
pub const DEFAULT_MAX_LEN: usize = 2048;

#[derive(Debug, Default)]
pub struct GeDataSummary {
    pub conversations: usize,
    pub tokens: usize,
    pub masked_tokens: usize,
    pub truncated: usize,
    /// Records whose pre-norm features came from a forward of the base model.
    pub computed_prenorm: usize,
    /// The largest relative difference found between a dump's features and the base model's.
    pub worst_feature_error: f64,
    /// The cut applied (`--max-len` or its default).
    pub max_len: usize,
}

/// The dump files under `dir` (any depth), ordered by their paths with numbers compared as
/// numbers (`data_2` before `data_10`), as the reference numbers them.
pub fn dump_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))? {
            let path = entry.map_err(|e| Error::io(&folder, e))?.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "ckpt" || e == "pt") {
                files.push(path);
            }
        }
    }
    // Ties (data_01 and data_1) fall back to the plain path, so the order never depends on the
    // folder listing.
    files.sort_by_cached_key(|p| (natural_key(&p.to_string_lossy()), p.clone()));
    Ok(files)
}

/// Text runs and number runs, so that numbers order by value.
fn natural_key(s: &str) -> Vec<(String, u128)> {
    let mut key = Vec::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let text: String = std::iter::from_fn(|| chars.next_if(|c| !c.is_ascii_digit())).collect();
        let digits: String = std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_digit())).collect();
        key.push((text, digits.parse().unwrap_or(u128::MAX)));
    }
    key
}

pub fn import_ge_data<B: Backend>(opts: &GeDataOptions, backend: B) -> Result<GeDataSummary> {
    let files = dump_files(&opts.from)?;
    if files.is_empty() {
        return Err(Error::format(&opts.from, "(folder)", "no .ckpt dump in the folder or below it"));
    }
    let model = Llama::load(&opts.model_dir, backend)?;
    let (hidden, context) = (model.config.hidden_size, model.config.max_position_embeddings);
    let max_len = opts.max_len.unwrap_or(DEFAULT_MAX_LEN.min(context));
    if max_len > context {
        return Err(Error::input(format!("--max-len {max_len} exceeds the model's context of {context} tokens")));
    }
    let mut cache = model.new_cache(max_len);
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let mut summary = GeDataSummary::default();
    let (mut shards, mut pending, mut pending_tokens) = (Vec::new(), Vec::new(), 0);
    let mut data_bytes = 0;
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{wide_bar} {pos}/{len} dumps  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for (index, path) in files.iter().enumerate() {
        bar.set_position(index as u64);
        data_bytes += std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        let mut dump = read_dump(path, hidden, model.config.vocab_size)?;
        if dump.ids.len() > max_len {
            dump.truncate(max_len, hidden);
            summary.truncated += 1;
        }
        for (field, values) in [("hidden_state", Some(&dump.postnorm)), ("hidden_state_onnorm", dump.prenorm.as_ref())]
        {
            if values.is_some_and(|v| v.iter().any(|x| !x.is_finite())) {
                return Err(Error::format(path, field, "holds values that are not finite (NaN or infinity)"));
            }
        }
        if index == 0 || dump.prenorm.is_none() {
            check_against_model(&model, &mut cache, path, &mut dump, &mut summary)?;
        }
        let record = ShardRecord {
            index,
            hidden_state: dump.postnorm.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect(),
            hidden_state_prenorm: dump
                .prenorm
                .unwrap_or_default()
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect(),
            loss_mask: dump.mask,
            input_ids: dump.ids,
        };
        summary.conversations += 1;
        summary.tokens += record.input_ids.len();
        summary.masked_tokens += record.loss_mask.iter().map(|&m| m as usize).sum::<usize>();
        pending_tokens += record.input_ids.len();
        // The path below --from names the dump (the reference writes data_0 in several folders).
        let id = path.strip_prefix(&opts.from).unwrap_or(path).with_extension("").to_string_lossy().into_owned();
        pending.push((record, id));
        if pending_tokens >= opts.shard_tokens || index + 1 == files.len() {
            shards.push(flush(&opts.out, shards.len(), hidden, &mut pending)?);
            pending_tokens = 0;
        }
    }
    let name =
        |p: &Path| std::fs::canonicalize(p).ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let index = DataIndex {
        format: FORMAT.to_string(),
        model: name(&opts.model_dir).unwrap_or_default(),
        model_weight_bytes: Some(weight_bytes(&opts.model_dir)?),
        hidden_size: hidden,
        data: format!("{} (reference ge_data dumps)", name(&opts.from).unwrap_or_default()),
        data_bytes,
        usable_conversations: files.len(),
        start: 0,
        end: files.len(),
        max_len,
        shard_tokens: opts.shard_tokens,
        chat_template: None,
        system: None,
        conversations: summary.conversations,
        tokens: summary.tokens,
        masked_tokens: summary.masked_tokens,
        truncated: summary.truncated,
        shards,
    };
    // Written last: a folder without it (an interrupted import) is not taken for data.
    write_atomically(&opts.out.join(INDEX_FILE), index.to_json()?.as_bytes())?;
    summary.max_len = max_len;
    Ok(summary)
}

fn flush(out: &Path, k: usize, hidden: usize, pending: &mut Vec<(ShardRecord, String)>) -> Result<ShardEntry> {
    let (records, ids): (Vec<ShardRecord>, Vec<String>) = std::mem::take(pending).into_iter().unzip();
    write_shard_entry(out, k, hidden, &records, ids)
}

/// One conversation of a dump, features as f32.
struct Dump {
    ids: Vec<u32>,
    mask: Vec<u8>,
    postnorm: Vec<f32>,
    prenorm: Option<Vec<f32>>,
}

impl Dump {
    fn truncate(&mut self, len: usize, hidden: usize) {
        self.ids.truncate(len);
        self.mask.truncate(len);
        self.postnorm.truncate(len * hidden);
        if let Some(u) = &mut self.prenorm {
            u.truncate(len * hidden);
        }
    }
}

fn read_dump(path: &Path, hidden: usize, vocab: usize) -> Result<Dump> {
    let file = TorchFile::open(path)?;
    let tensors: HashMap<String, TensorRef> = file.tensors()?.into_iter().collect();
    let get = |field: &str| tensors.get(field).ok_or_else(|| Error::format(path, field, "missing from the dump"));
    // Drops a leading batch axis of 1 and checks the rest of the shape.
    let shape = |field: &str, t: &TensorRef, want: &[Option<usize>]| -> Result<usize> {
        let dims: &[usize] = if t.shape.len() == want.len() + 1 && t.shape[0] == 1 { &t.shape[1..] } else { &t.shape };
        let fits = dims.len() == want.len() && dims.iter().zip(want).all(|(&d, w)| w.is_none_or(|w| w == d));
        if !fits {
            let expected: Vec<String> = want.iter().map(|w| w.map_or("T".to_string(), |w| w.to_string())).collect();
            return Err(Error::format(path, field, format!("shape {:?}, expected [{}]", t.shape, expected.join(", "))));
        }
        Ok(dims[0])
    };
    let ids_t = get("input_ids")?;
    let len = shape("input_ids", ids_t, &[None])?;
    if len == 0 {
        return Err(Error::format(path, "input_ids", "no tokens"));
    }
    let ids = file
        .integers("input_ids", ids_t)?
        .into_iter()
        .map(|v| u32::try_from(v).ok().filter(|&v| (v as usize) < vocab).ok_or(v))
        .collect::<std::result::Result<Vec<u32>, i64>>()
        .map_err(|v| {
            Error::format(path, "input_ids", format!("token id {v} is outside the model's vocabulary of {vocab}"))
        })?;
    let mask_t = get("loss_mask")?;
    if shape("loss_mask", mask_t, &[None])? != len {
        return Err(Error::format(path, "loss_mask", format!("{:?} positions for {len} tokens", mask_t.shape)));
    }
    let mask = if mask_t.storage.dtype.is_float() {
        file.floats("loss_mask", mask_t)?.iter().map(|&m| (m != 0.0) as u8).collect()
    } else {
        file.integers("loss_mask", mask_t)?.iter().map(|&m| (m != 0) as u8).collect()
    };
    let features = |field: &str| -> Result<Option<Vec<f32>>> {
        let Some(t) = tensors.get(field) else { return Ok(None) };
        if shape(field, t, &[Some(len), Some(hidden)]).is_err() {
            return Err(Error::format(
                path,
                field,
                format!("shape {:?}; the model has hidden_size {hidden} and the dump {len} tokens", t.shape),
            ));
        }
        file.floats(field, t).map(Some)
    };
    let postnorm =
        features("hidden_state")?.ok_or_else(|| Error::format(path, "hidden_state", "missing from the dump"))?;
    Ok(Dump { ids, mask, postnorm, prenorm: features("hidden_state_onnorm")? })
}

/// Runs the base model on the dump's tokens: its features must be the dump's (else the dump was
/// made with another model), and they fill in pre-norm features the dump lacks.
fn check_against_model<B: Backend>(
    model: &Llama<B>,
    cache: &mut KvCache<B>,
    path: &Path,
    dump: &mut Dump,
    summary: &mut GeDataSummary,
) -> Result<()> {
    cache.clear();
    let out = model
        .prefill(cache, &dump.ids, LogitRows::None)
        .map_err(|e| Error::format(path, "input_ids", format!("the base model's forward failed: {e}")))?;
    let ours = model.backend.download(&out.postnorm);
    let ours_prenorm = model.backend.download(&out.prenorm);
    let mut compared = vec![("hidden_state", relative_error(&dump.postnorm, &ours))];
    match &dump.prenorm {
        Some(u) => compared.push(("hidden_state_onnorm", relative_error(u, &ours_prenorm))),
        None => {
            dump.prenorm = Some(ours_prenorm);
            summary.computed_prenorm += 1;
        }
    }
    for (field, error) in compared {
        summary.worst_feature_error = summary.worst_feature_error.max(error);
        // A NaN error (non-finite model features) is refused too.
        if error.is_nan() || error > MAX_FEATURE_ERROR {
            return Err(Error::format(
                path,
                field,
                format!(
                    "differs from the base model's own features by {error:.3} (relative RMS, allowed {MAX_FEATURE_ERROR}): \
                     the dump was made with another model than the one given"
                ),
            ));
        }
    }
    Ok(())
}

/// ‖a − b‖ / ‖b‖ over all elements.
fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_names_order_by_value() {
        let mut names = ["d/data_10.ckpt", "d/data_2.ckpt", "c/data_11.ckpt", "d/data_1.ckpt"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["c/data_11.ckpt", "d/data_1.ckpt", "d/data_2.ckpt", "d/data_10.ckpt"]);
    }
}
