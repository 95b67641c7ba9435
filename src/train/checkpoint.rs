//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! ```text
//! OUT/checkpoints/step-00000120/
//!     state.json              the run's settings, step, noise generator state, data position
//!     config.json             the head's config
//!     model.safetensors       the f32 parameters under the head's tensor names
//!     optimizer.safetensors   AdamW's moments: exp_avg.{tensor}, exp_avg_sq.{tensor}
//! ```
//!
//! A checkpoint folder is written under a temporary name and renamed into place, so a folder that
//! exists is complete whenever the run was stopped; the older ones are removed after the rename.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::draft::vocab::DraftVocab;

use crate::draft::init::{write_head, Tensors};
use crate::error::{Error, Result};
use crate::fsutil::write_atomically;
use crate::train::batches::DataPosition;
use crate::train::optim::schedule::Schedule;
use crate::train::tensor_scale::TensorScale;

pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const STATE_FILE: &str = "state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const FORMAT: &str = "clover-engine distill checkpoint v1";
/// Name prefixes of the two moments in `optimizer.safetensors` (PyTorch's names).
pub const EXP_AVG: &str = "exp_avg.";
pub const EXP_AVG_SQ: &str = "exp_avg_sq.";

/// What a run was started with; a resumed run keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub head: String,
    pub schedule: Schedule,
    pub batch_tokens: usize,
    pub max_len: usize,
    pub seed: u64,
    pub data: DataId,
    /// Tokens of the reduced draft vocabulary the lm_head losses run over (None: the full one).
    /// Absent in checkpoints written before the option existed.
    #[serde(default)]
    pub draft_vocab: Option<usize>,
    /// The starting head's own draft vocabulary, kept (`--keep-draft-vocab`); absent: false, and in
    /// checkpoints written before the option existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draft_vocab_kept: bool,
    /// Training rows counted only where the tokens they consumed are plausible under the base
    /// model (`--label-mask`, clover2.md §8); absent: false, and in checkpoints written before
    /// the option existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub label_mask: bool,
    /// Per-parameter learning-rate factors (`--lr-scale`); absent when there are none, and in
    /// checkpoints written before the option existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lr_scales: Vec<TensorScale>,
    /// Factors the starting head's tensors were multiplied by (`--init-scale`), for the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_scales: Vec<TensorScale>,
    /// The weights of vloss and ploss before the per-head decay (`--loss-weights`); absent: the
    /// spec's, and in checkpoints written before the option existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_weights: Option<(f32, f32)>,
}

/// Enough of the data's index.json to tell another data set from this one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataId {
    pub model: String,
    pub hidden_size: usize,
    pub conversations: usize,
    pub tokens: usize,
}

impl std::fmt::Display for DataId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let DataId { model, hidden_size, conversations, tokens } = self;
        write!(f, "data of {model} (hidden size {hidden_size}): {conversations} conversations, {tokens} tokens")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken.
    pub step: u64,
    /// The input-noise generator (EAGLE-1).
    pub rng: [u64; 4],
    pub data: DataPosition,
    /// Training tokens (positions) seen.
    pub tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub format: String,
    pub run: RunConfig,
    pub state: TrainState,
}

/// What one checkpoint holds besides its state.
pub struct CheckpointFiles<'a> {
    pub config: &'a serde_json::Value,
    pub params: &'a Tensors,
    /// Both moments, names already prefixed.
    pub moments: &'a Tensors,
    /// Written beside the head, so a checkpoint folder is a complete head.
    pub draft_vocab: Option<&'a DraftVocab>,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The newest checkpoint folder in `out`, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let dir = out.join(CHECKPOINTS_DIR);
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            if best.as_ref().is_none_or(|(b, _)| step > *b) {
                best = Some((step, entry.path()));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Writes the checkpoint of `state.state.step`, then removes every other checkpoint folder (and
/// leftovers of interrupted writes).
pub fn save(out: &Path, state: &CheckpointState, files: &CheckpointFiles) -> Result<PathBuf> {
    let dir = out.join(CHECKPOINTS_DIR);
    let name = step_dir_name(state.state.step);
    let final_dir = dir.join(&name);
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    write_head(&tmp, files.params, files.config)?;
    if let Some(vocab) = files.draft_vocab {
        vocab.save(&tmp)?;
    }
    crate::weights::write_f32_safetensors(&tmp.join(OPTIMIZER_FILE), files.moments)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::input(format!("{STATE_FILE}: {e}")))?;
    write_atomically(&tmp.join(STATE_FILE), json.as_bytes())?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        if entry.file_name().to_string_lossy() != name {
            std::fs::remove_dir_all(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(final_dir)
}

pub fn load_state(dir: &Path) -> Result<CheckpointState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| Error::format(&path, "(json)", e.to_string()))?;
    if state.format != FORMAT {
        return Err(Error::format(&path, "format", format!("{:?}, expected {FORMAT:?}", state.format)));
    }
    Ok(state)
}
