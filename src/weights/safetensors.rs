//! Memory-mapped safetensors: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Tensors stay in the file's dtype and in the page cache.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensorError, SafeTensors};

use super::{Bytes, DType, HostTensor};
use crate::error::{Error, Result};

struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: usize,
    len: usize,
}

pub struct SafetensorsFiles {
    paths: Vec<PathBuf>,
    maps: Vec<Arc<Mmap>>,
    entries: HashMap<String, Entry>,
    /// Names `get` has handed out, for `unused`.
    taken: Mutex<HashSet<String>>,
}

impl SafetensorsFiles {
    /// Opens `dir/model.safetensors`, or every shard named by `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.exists() {
            return Self::open(&[single]);
        }
        if !index.exists() {
            // Released EAGLE-1 heads (and older models) ship PyTorch pickles: say so, since the
            // folder is not empty and "no file" would puzzle.
            let pickle = ["pytorch_model.bin", "pytorch_model.bin.index.json"].iter().any(|f| dir.join(f).exists());
            let hint = if pickle {
                ": the folder holds pytorch_model.bin, a PyTorch checkpoint; convert it first with \
                 `clover-engine import-torch --from DIR --out NEW_DIR`"
            } else {
                ""
            };
            return Err(Error::format(
                dir,
                "model.safetensors",
                format!("no model.safetensors nor model.safetensors.index.json in the model folder{hint}"),
            ));
        }
        Self::open(&shard_paths(&index)?)
    }

    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = SafetensorsFiles {
            paths: Vec::new(),
            maps: Vec::new(),
            entries: HashMap::new(),
            taken: Mutex::new(HashSet::new()),
        };
        for path in paths {
            files.add_file(path)?;
        }
        Ok(files)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; like every mmap-based loader we assume nobody
        // truncates model files while the engine runs.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| match e {
            // The crate does not say which tensor (or names the one after a gap): find it.
            SafeTensorError::TensorInvalidInfo | SafeTensorError::InvalidOffset(_) => {
                match super::safetensors_header::locate_problem(&map) {
                    Some((name, why)) => Error::format(path, name, why),
                    None => Error::format(path, "header", header_problem(&e)),
                }
            }
            _ => Error::format(path, "header", header_problem(&e)),
        })?;
        let data_start = 8 + header_len;
        let file_index = self.maps.len();
        let quantized = quantized_tensors(path, meta.metadata())?;
        for (name, info) in meta.tensors() {
            let stored = match info.dtype {
                StDtype::F32 => DType::F32,
                StDtype::BF16 => DType::BF16,
                StDtype::F16 => DType::F16,
                StDtype::U8 if quantized.contains_key(&name) => quantized[&name],
                other => {
                    return Err(Error::format(path, name, format!("dtype {other:?} is not supported (f32, bf16, f16)")))
                }
            };
            let (begin, end) = info.data_offsets;
            if end > map.len() - data_start || begin > end {
                return Err(Error::format(path, name, "data offsets point past the end of the file (truncated?)"));
            }
            let (dtype, shape) = logical_shape(stored, &info.shape).map_err(|e| Error::format(path, &name, e))?;
            let numel: usize = shape.iter().product();
            if dtype.bytes_for(numel) != Some(end - begin) {
                return Err(Error::format(path, name, "shape and byte length disagree"));
            }
            let entry = Entry { file: file_index, dtype, shape, start: data_start + begin, len: end - begin };
            self.entries.insert(name.clone(), entry);
        }
        self.paths.push(path.to_path_buf());
        self.maps.push(Arc::new(map));
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The stored shape of `name`, if the files have it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The tensors `get` has not handed out, sorted: after a model has loaded, weights its
    /// config does not describe (a layer beyond `num_hidden_layers`, a bias it does not use).
    /// RoPE's `inv_freq` buffers, which some checkpoints store and the engine computes, never count.
    pub fn unused(&self) -> Vec<&str> {
        let taken = self.taken.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let wanted = |n: &&str| !taken.contains(*n) && !n.ends_with("rotary_emb.inv_freq");
        let mut unused: Vec<&str> = self.names().filter(wanted).collect();
        unused.sort_unstable();
        unused
    }

    /// The file that holds `name`.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.entries.get(name).map(|e| self.paths[e.file].as_path())
    }

    /// The first file (the one errors about the set as a whole name).
    pub fn first_path(&self) -> &Path {
        self.paths.first().map(PathBuf::as_path).unwrap_or(Path::new("model.safetensors"))
    }

    /// The tensor `name`, checked against the expected shape. Misaligned data (legal in
    /// safetensors, rare in practice) is copied so typed views stay sound.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let entry =
            self.entries.get(name).ok_or_else(|| Error::format(self.first_path(), name, "tensor is missing"))?;
        let path = &self.paths[entry.file];
        if entry.shape != shape {
            return Err(Error::format(path, name, format!("shape {:?}, expected {:?}", entry.shape, shape)));
        }
        let map = &self.maps[entry.file];
        let bytes = if (map.as_ptr() as usize + entry.start).is_multiple_of(entry.dtype.align()) {
            Bytes::Mapped { map: map.clone(), start: entry.start, len: entry.len }
        } else {
            Bytes::Owned(Arc::new(map[entry.start..entry.start + entry.len].to_vec()))
        };
        self.taken.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(name.to_string());
        Ok(HostTensor { name: name.to_string(), dtype: entry.dtype, shape: entry.shape.clone(), bytes })
    }
}

/// Metadata key naming the GGUF type of a tensor stored as raw blocks (`import-gguf --dtype
/// keep`): `clover.quant.<tensor name>` = `Q8_0`, `Q4_0` or `Q4_1`. Such a tensor is stored as
/// U8 `[rows, bytes per row]`; other readers see bytes, this one the blocks.
pub const QUANT_KEY_PREFIX: &str = "clover.quant.";

/// The quantized tensors the header's metadata names, with their types.
/// What a reader of the error needs to hear about an unreadable safetensors header: the
/// library's variant names (`MetadataIncompleteBuffer`) do not say "truncated".
pub(crate) fn header_problem(e: &SafeTensorError) -> String {
    use SafeTensorError as E;
    let what = match e {
        E::MetadataIncompleteBuffer => {
            "the tensors it lists need more bytes than the file holds (truncated or partly written?)"
        }
        E::HeaderTooSmall | E::InvalidHeaderLength => "the file is too short for a safetensors header (truncated?)",
        E::HeaderTooLarge => "the header length is implausibly large (not a safetensors file?)",
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
            "the header is not the JSON a safetensors file starts with (not a safetensors file?)"
        }
        _ => return e.to_string(),
    };
    format!("{what} ({e:?})")
}

fn quantized_tensors(path: &Path, metadata: &Option<HashMap<String, String>>) -> Result<HashMap<String, DType>> {
    let mut out = HashMap::new();
    for (key, value) in metadata.iter().flatten() {
        if let Some(name) = key.strip_prefix(QUANT_KEY_PREFIX) {
            let dtype = DType::QUANTIZED.into_iter().find(|d| d.name() == value).ok_or_else(|| {
                Error::format(path, key, format!("unknown quantized type `{value}` (Q8_0, Q4_0, Q4_1 are)"))
            })?;
            out.insert(name.to_string(), dtype);
        }
    }
    Ok(out)
}

/// The shape a stored tensor stands for: a quantized one's last axis counts bytes of whole blocks
/// and becomes a count of values.
fn logical_shape(dtype: DType, stored: &[usize]) -> std::result::Result<(DType, Vec<usize>), String> {
    if !dtype.is_quantized() {
        return Ok((dtype, stored.to_vec()));
    }
    let (values, bytes) = dtype.block();
    match stored.split_last() {
        Some((&row_bytes, rows)) if row_bytes % bytes == 0 => {
            let mut shape = rows.to_vec();
            shape.push(row_bytes / bytes * values);
            Ok((dtype, shape))
        }
        _ => Err(format!("{} rows of {stored:?} bytes are not whole blocks of {bytes}", dtype.name())),
    }
}

fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(index, "(json)", e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index, "weight_map", "missing or not an object"))?;
    let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::tensor::{Dtype, TensorView};

    use super::*;
    use crate::weights::gguf::test_writer::scratch_dir;

    /// A safetensors file holding one U8 tensor `w` of `shape` and the given metadata.
    fn write(test: &str, shape: &[usize], metadata: &[(&str, &str)]) -> PathBuf {
        let bytes = vec![0u8; shape.iter().product()];
        let view = TensorView::new(Dtype::U8, shape.to_vec(), &bytes).unwrap();
        let meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let path = scratch_dir(test).join("model.safetensors");
        std::fs::write(&path, safetensors::serialize([("w", view)], &Some(meta)).unwrap()).unwrap();
        path
    }

    /// Blocks kept by `import-gguf --dtype keep` load with their type and the shape in values.
    #[test]
    fn quantized_tensor_loads_with_its_value_shape() {
        let path = write("st_q4_1", &[3, 40], &[("clover.quant.w", "Q4_1")]);
        let files = SafetensorsFiles::open(std::slice::from_ref(&path)).unwrap();
        let t = files.get("w", &[3, 64]).unwrap();
        assert_eq!((t.dtype, t.bytes.as_slice().len()), (DType::Q4_1, 120));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    /// Bad quantized tensors are errors naming the file and the tensor or key, never a panic.
    #[test]
    fn bad_quantized_tensors_are_named() {
        // (test, U8 shape, metadata, a word the error must contain)
        type Case = (&'static str, &'static [usize], &'static [(&'static str, &'static str)], &'static str);
        let cases: [Case; 3] = [
            ("st_unknown", &[2, 34], &[("clover.quant.w", "Q5_K")], "clover.quant.w"),
            ("st_misfit", &[2, 30], &[("clover.quant.w", "Q8_0")], "whole blocks"),
            ("st_no_type", &[2, 34], &[], "U8"),
        ];
        for (test, shape, metadata, needle) in cases {
            let path = write(test, shape, metadata);
            let err = SafetensorsFiles::open(std::slice::from_ref(&path)).err().expect(test).to_string();
            assert!(err.contains(&path.display().to_string()) && err.contains(needle), "{test}: {err}");
            std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        }
    }
}
