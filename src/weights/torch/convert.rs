//! Checkpoint files to safetensors (`import-torch`), and where a released checkpoint's files
//! are in its folder (`pytorch_model.bin`, or its sharded index).

use std::path::{Path, PathBuf};

use super::{TorchDType, TorchFile};
use crate::error::{Error, Result};

/// The checkpoint files of a folder: `pytorch_model.bin`, or the shards its
/// `pytorch_model.bin.index.json` names (each once, in the index's order).
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("pytorch_model.bin");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("pytorch_model.bin.index.json");
    if !index.exists() {
        return Err(Error::format(
            dir,
            "pytorch_model.bin",
            "no pytorch_model.bin nor pytorch_model.bin.index.json in the folder",
        ));
    }
    let json = crate::fsutil::read_json(&index)?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| Error::format(&index, "weight_map", "missing, or not an object of tensor name → file"))?;
    if map.is_empty() {
        return Err(Error::format(&index, "weight_map", "empty: it names no tensor and no file"));
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().filter(|f| !f.contains('/') && !f.contains('\\') && !f.is_empty());
        let file =
            file.ok_or_else(|| Error::format(&index, format!("weight_map.{name}"), "not a file name in the folder"))?;
        let path = dir.join(file);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    Ok(files)
}

/// Converts checkpoint `files` into one safetensors file at `out`, each tensor in its stored
/// element type and name; returns (tensors, bytes of tensor data). A name given twice is refused.
pub fn convert_to_safetensors(files: &[PathBuf], out: &Path) -> Result<(usize, usize)> {
    use ::safetensors::tensor::{Dtype, TensorView};
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for path in files {
        let file = TorchFile::open(path)?;
        for (name, t) in file.tensors()? {
            if !seen.insert(name.clone()) {
                return Err(Error::format(
                    path,
                    &name,
                    "a tensor of this name was already read (from this or an earlier shard)",
                ));
            }
            let dtype = match t.storage.dtype {
                TorchDType::F64 => Dtype::F64,
                TorchDType::F32 => Dtype::F32,
                TorchDType::F16 => Dtype::F16,
                TorchDType::BF16 => Dtype::BF16,
                TorchDType::I64 => Dtype::I64,
                TorchDType::I32 => Dtype::I32,
                TorchDType::I16 => Dtype::I16,
                TorchDType::I8 => Dtype::I8,
                TorchDType::U8 => Dtype::U8,
                TorchDType::Bool => Dtype::BOOL,
            };
            let bytes = file.bytes(&name, &t)?;
            tensors.push((name, dtype, t.shape.clone(), bytes));
        }
    }
    if tensors.is_empty() {
        let first = files.first().map_or(out, |f| f.as_path());
        return Err(Error::format(first, "data.pkl", "the checkpoint holds no tensor"));
    }
    let bad = |e: ::safetensors::SafeTensorError| Error::format(out, "(safetensors)", e.to_string());
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            Ok((name.as_str(), TensorView::new(*dtype, shape.clone(), bytes).map_err(bad)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let data: usize = tensors.iter().map(|t| t.3.len()).sum();
    let bytes = ::safetensors::serialize(views, &None).map_err(bad)?;
    crate::fsutil::write_atomically(out, &bytes)?;
    Ok((tensors.len(), data))
}
