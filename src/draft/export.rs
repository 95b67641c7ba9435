//! Re-encodes a head folder (a distill output or one of its checkpoints) in another dtype: the
//! heads ship as bf16 (half the bytes of the f32 that training writes; the engine widens to f32
//! in its kernels either way).

use std::path::Path;

use crate::draft::config::{check_head_out, declared_kind, read_json};
use crate::draft::vocab::{DraftVocab, DRAFT_VOCAB_FILE};
use crate::error::{Error, Result};
use crate::weights::safetensors::SafetensorsFiles;
use crate::weights::{write_safetensors, DType};

/// Writes `out/config.json` and `out/draft_vocab.json` if there is one (copied), and
/// `out/model.safetensors` (every tensor of `from`, in `dtype`); returns the number of tensors. Each file is written under a temporary name and
/// renamed, so a failure leaves no half-written file.
pub fn export_head(from: &Path, out: &Path, dtype: DType) -> Result<usize> {
    let config_path = from.join("config.json");
    let config = read_json(&config_path)?;
    if declared_kind(&config).is_none() {
        return Err(Error::format(&config_path, "draft.kind", "not a draft head's config (no draft.kind)"));
    }
    let files = SafetensorsFiles::open_dir(from)?;
    let mut names: Vec<String> = files.names().map(String::from).collect();
    names.sort();
    let tensors = names
        .into_iter()
        .map(|name| {
            let shape = files.shape(&name).expect("listed by the same files").to_vec();
            let values = files.get(&name, &shape)?.to_f32();
            Ok((name, shape, values))
        })
        .collect::<Result<Vec<_>>>()?;
    if out.canonicalize().ok().is_some_and(|o| from.canonicalize().ok() == Some(o)) {
        return Err(Error::input(format!("--out {} is the folder being exported", out.display())));
    }
    check_head_out(out)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_safetensors(&out.join("model.safetensors"), &tensors, dtype)?;
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::input(e.to_string()))?;
    crate::fsutil::write_atomically(&out.join("config.json"), text.as_bytes())?;
    let vocab_path = from.join(DRAFT_VOCAB_FILE);
    if vocab_path.exists() {
        let bytes = std::fs::read(&vocab_path).map_err(|e| Error::io(&vocab_path, e))?;
        crate::fsutil::write_atomically(&out.join(DRAFT_VOCAB_FILE), &bytes)?;
    } else {
        DraftVocab::remove(out)?;
    }
    Ok(tensors.len())
}
