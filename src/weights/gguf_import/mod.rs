//! `import-gguf`: turns a GGUF file into an HF folder (`config.json`, `model.safetensors`,
//! `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`) that the normal loader
//! memory-maps, following `spec/gguf.md`.
//!
//! OUT_DIR must not exist or be an empty folder. Everything is written into a hidden sibling
//! folder that is renamed onto OUT_DIR only once complete, so a failed import leaves nothing behind.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::temp_sibling;
use crate::weights::gguf::{GgmlType, GgufFile};
use crate::weights::gguf_tokenizer::TokenizerMeta;
use crate::weights::DType;

mod hparams;
mod tensor_plan;
#[cfg(test)]
mod tests;
mod writer;

use hparams::{config_json, HParams};
use tensor_plan::plan_tensors;
use writer::{write_json, write_safetensors};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportDType {
    /// Every tensor expanded to bf16.
    Bf16,
    /// Every tensor expanded to f32 (the GGUF's values exactly).
    F32,
    /// Every tensor as the GGUF stores it: Q8_0 / Q4_0 / Q4_1 blocks stay quantized (the CPU
    /// backend multiplies them in place), float tensors keep their type.
    Keep,
}

impl ImportDType {
    fn torch_name(self) -> &'static str {
        match self {
            ImportDType::Bf16 => "bfloat16",
            // The quantized weights' values are computed in f32.
            ImportDType::F32 | ImportDType::Keep => "float32",
        }
    }

    /// How a tensor of `ty` with `n_dims` dimensions is written. Only matrices keep their blocks:
    /// llama.cpp never quantizes a vector, and a kept vector (a quantized bias) would be one row of
    /// blocks the loader and the Q/K un-permutation have no use for, so it is expanded to f32.
    fn stored(self, ty: GgmlType, n_dims: usize) -> DType {
        match (self, ty) {
            (ImportDType::Bf16, _) => DType::BF16,
            (ImportDType::F32, _) => DType::F32,
            (ImportDType::Keep, GgmlType::F32) => DType::F32,
            (ImportDType::Keep, GgmlType::F16) => DType::F16,
            (ImportDType::Keep, GgmlType::Bf16) => DType::BF16,
            (ImportDType::Keep, _) if n_dims < 2 => DType::F32,
            (ImportDType::Keep, GgmlType::Q8_0) => DType::Q8_0,
            (ImportDType::Keep, GgmlType::Q4_0) => DType::Q4_0,
            (ImportDType::Keep, GgmlType::Q4_1) => DType::Q4_1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// HF `model_type`: llama or qwen2.
    pub model_type: &'static str,
    pub tensors: usize,
    /// All files of the folder together.
    pub bytes_written: u64,
    pub tied_embeddings: bool,
}

/// `loads` is the check a finished folder must pass before it becomes `out_dir`: the model loader
/// (`Llama::load`), passed in by the caller, since weights/ sits below model/.
pub fn import_gguf(
    gguf: &Path,
    out_dir: &Path,
    dtype: ImportDType,
    loads: &dyn Fn(&Path) -> Result<()>,
) -> Result<ImportSummary> {
    let file = GgufFile::open(gguf)?;
    let tok = TokenizerMeta::read(&file)?;
    let hp = HParams::read(&file, tok.tokens.len())?;
    let plan = plan_tensors(&file, &hp)?;
    let tied = file.tensor("output.weight").is_none();
    let staging = Staging::new(out_dir)?;
    let dir = &staging.dir;
    let mut bytes = write_safetensors(&file, &plan, dtype, &dir.join("model.safetensors"))?;
    bytes += write_json(&dir.join("config.json"), &config_json(&hp, &tok, tied, dtype))?;
    bytes += write_json(&dir.join("tokenizer.json"), &tok.tokenizer_json())?;
    bytes += write_json(&dir.join("tokenizer_config.json"), &tok.tokenizer_config(hp.n_ctx))?;
    bytes += write_json(&dir.join("generation_config.json"), &tok.generation_config())?;
    check_loads(gguf, dir, loads)?;
    staging.commit()?;
    Ok(ImportSummary { model_type: hp.arch.name(), tensors: plan.len(), bytes_written: bytes, tied_embeddings: tied })
}

/// The staged folder loads as a model (every tensor present, of the shape its config asks for, none
/// left over): a GGUF whose tensors contradict its own hyperparameters is refused here, naming
/// the GGUF, instead of leaving a folder that fails later. Loading maps the weights, it reads none.
fn check_loads(gguf: &Path, staged: &Path, loads: &dyn Fn(&Path) -> Result<()>) -> Result<()> {
    match loads(staged) {
        Ok(()) => Ok(()),
        Err(e) => {
            let msg = e.to_string().replace(&format!("{}{}", staged.display(), std::path::MAIN_SEPARATOR), "");
            Err(Error::format(gguf, "(tensors)", format!("do not make the model its metadata describes: {msg}")))
        }
    }
}

/// `Ok(None)` when the key is absent; a present key of the wrong type is still an error.
pub(super) fn optional<'a, T>(
    g: &'a GgufFile,
    key: &str,
    get: impl Fn(&'a GgufFile, &str) -> Result<T>,
) -> Result<Option<T>> {
    if g.metadata.contains_key(key) {
        get(g, key).map(Some)
    } else {
        Ok(None)
    }
}

/// A hidden sibling of OUT_DIR that becomes OUT_DIR only on `commit`; dropped uncommitted, it is removed.
struct Staging {
    dir: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl Staging {
    fn new(out: &Path) -> Result<Self> {
        check_out_dir(out)?;
        if out.file_name().is_none() {
            return Err(Error::input(format!("{}: output folder needs a name", out.display())));
        }
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let dir = temp_sibling(out);
        remove_abandoned_stagings(out, parent);
        fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Staging { dir, out: out.to_path_buf(), committed: false })
    }

    fn commit(mut self) -> Result<()> {
        // check_out_dir allowed an empty folder; remove_dir refuses one that filled up since.
        match fs::remove_dir(&self.out) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(Error::io(&self.out, e)),
            _ => {}
        }
        fs::rename(&self.dir, &self.out).map_err(|e| Error::io(&self.out, e))?;
        self.committed = true;
        Ok(())
    }
}

/// Removes staging folders of `out` left by imports that were killed (a staging folder is removed
/// by its own run otherwise): those of processes no longer running, where /proc tells.
fn remove_abandoned_stagings(out: &Path, parent: &Path) {
    let Some(name) = out.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let prefix = format!(".{name}.partial-");
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name.strip_prefix(&prefix) else { continue };
        let alive = pid != std::process::id().to_string() && Path::new("/proc").join(pid).exists();
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn check_out_dir(out: &Path) -> Result<()> {
    match fs::read_dir(out).map(|mut entries| entries.next().is_some()) {
        Ok(true) => Err(Error::input(format!(
            "{}: output folder exists and is not empty; remove it or choose another",
            out.display()
        ))),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(out, e)),
    }
}
