//! PyTorch checkpoints (`torch.save`'s zip format, PyTorch ≥ 1.6): `pytorch_model.bin` of the
//! released EAGLE-1 and Clover-2 heads, and the reference's `ge_data` dumps. Read without
//! Python: the archive's records (`zip`), its pickle (`pickle`, a stack machine that builds values
//! and runs no code, with `rebuild` for what torch pickles), and each tensor's bytes gathered from
//! its storage, in the stored element type.

pub mod pickle;
pub mod rebuild;
pub mod zip;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};
pub use pickle::Value;
pub use rebuild::{StorageRef, TensorRef, TorchDType};

/// An opened checkpoint: its top-level object and where each storage's bytes lie.
pub struct TorchFile {
    path: PathBuf,
    map: Mmap,
    storages: HashMap<String, zip::Entry>,
    pub root: Value,
}

impl TorchFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map of a file nothing here writes; a checkpoint changed underneath is
        // the same hazard as for the safetensors loader.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        if !map.starts_with(b"PK\x03\x04") {
            let legacy = map.len() > 10 && map[0] == 0x80;
            let what = if legacy {
                "a PyTorch file in the legacy format (before PyTorch 1.6): load and save it again with a recent torch"
            } else {
                "not a PyTorch zip archive"
            };
            return Err(Error::format(path, "(file)", what));
        }
        let entries = zip::entries(&map).map_err(|e| Error::format(path, "(zip)", e))?;
        // Records sit under one folder named after the archive (`archive/`, `data_0/`, …).
        let record =
            |suffix: &str| entries.iter().find(|e| e.name.ends_with(suffix) && e.name.matches('/').count() == 1);
        let pickle =
            record("/data.pkl").ok_or_else(|| Error::format(path, "data.pkl", "the archive has no data.pkl"))?;
        stored(path, pickle)?;
        if let Some(order) = record("/byteorder") {
            stored(path, order)?;
            if &map[order.data.clone()] != b"little" {
                return Err(Error::format(
                    path,
                    "byteorder",
                    "written on a big-endian machine; only little-endian is read",
                ));
            }
        }
        let root = pickle::load(&map[pickle.data.clone()]).map_err(|e| Error::format(path, "data.pkl", e))?;
        let storages = entries
            .iter()
            .filter_map(|e| {
                let (folder, key) = e.name.rsplit_once("/data/")?;
                (!folder.contains('/')).then(|| (key.to_string(), e.clone()))
            })
            .collect();
        Ok(TorchFile { path: path.to_path_buf(), map, storages, root })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor reachable through the top-level dicts, named by their keys joined with `.`
    /// (a state dict's own names; `{"state_dict": {...}}` gives `state_dict.…`), in file order.
    pub fn tensors(&self) -> Result<Vec<(String, TensorRef)>> {
        let mut walk = Collector { path: Vec::new(), out: Vec::new(), visits: 0 };
        walk.visit(&self.root).map_err(|e| Error::format(&self.path, "data.pkl", e))?;
        Ok(walk.out)
    }

    /// The tensor's elements in row-major order, as little-endian bytes of its element type
    /// (a view of a larger storage, or a transposed one, is gathered).
    pub fn bytes(&self, name: &str, t: &TensorRef) -> Result<Vec<u8>> {
        let bad = |msg: String| Error::format(&self.path, name, msg);
        let size = t.storage.dtype.size();
        let entry = self
            .storages
            .get(&t.storage.key)
            .ok_or_else(|| bad(format!("its storage data/{} is not in the archive", t.storage.key)))?;
        stored(&self.path, entry)?;
        let storage = &self.map[entry.data.clone()];
        if storage.len() < t.storage.numel.saturating_mul(size) {
            return Err(bad(format!(
                "storage data/{} holds {} bytes, fewer than its {} elements",
                t.storage.key,
                storage.len(),
                t.storage.numel
            )));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad("its size overflows".into()))?;
        if numel == 0 {
            return Ok(Vec::new());
        }
        // A view never holds more elements than its storage, except a broadcast one (stride 0),
        // whose copy could be any size: refused, as a hostile size would be.
        if numel > t.storage.numel {
            return Err(bad(format!(
                "a view of {numel} elements over a storage of {} (a broadcast tensor; save it with .contiguous())",
                t.storage.numel
            )));
        }
        // The last element it reaches must lie inside the storage.
        let last =
            t.shape.iter().zip(&t.stride).try_fold(t.offset, |at, (&d, &s)| at.checked_add((d - 1).checked_mul(s)?));
        if last.is_none_or(|l| l >= t.storage.numel) {
            return Err(bad(format!(
                "its view (offset {}, size {:?}, stride {:?}) reaches past its storage of {} elements",
                t.offset, t.shape, t.stride, t.storage.numel
            )));
        }
        let contiguous = t
            .shape
            .iter()
            .zip(&t.stride)
            .rev()
            .try_fold(1usize, |expect, (&d, &s)| (d == 1 || s == expect).then(|| expect * d))
            .is_some();
        if contiguous {
            return Ok(storage[t.offset * size..(t.offset + numel) * size].to_vec());
        }
        let mut out = Vec::with_capacity(numel * size);
        let mut index = vec![0usize; t.shape.len()];
        for _ in 0..numel {
            let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&storage[at * size..(at + 1) * size]);
            for axis in (0..index.len()).rev() {
                index[axis] += 1;
                if index[axis] < t.shape[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
        Ok(out)
    }
}

/// A record this reader needs must be stored as it is: torch.save never compresses one.
fn stored(path: &Path, entry: &zip::Entry) -> Result<()> {
    match entry.compressed {
        None => Ok(()),
        Some(method) => Err(Error::format(
            path,
            &entry.name,
            format!("compressed (method {method}); torch.save stores its records uncompressed"),
        )),
    }
}

/// Nested dicts, lists and tuples deeper than this are refused when collecting (a dict can hold
/// itself; the machine caps how deeply values nest, not cycles).
const MAX_NAME_DEPTH: usize = 64;
/// Containers visited when collecting, at most: the memo can make a small pickle a graph with
/// exponentially many paths (tuples of the same tuple), each of which a walk would visit.
const MAX_VISITS: usize = 1_000_000;

/// A walk over the containers, naming tensors by the keys and positions on the way.
struct Collector {
    path: Vec<String>,
    out: Vec<(String, TensorRef)>,
    visits: usize,
}

impl Collector {
    fn visit(&mut self, v: &Value) -> std::result::Result<(), String> {
        let children: Vec<(String, Value)> = match v {
            Value::Tensor(t) => {
                self.out.push((self.path.join("."), t.clone()));
                return Ok(());
            }
            Value::Dict(items) => {
                // Python keeps a dict's last value of a key: so do the names here.
                let items = items.borrow();
                let mut named: Vec<(String, Value)> = Vec::with_capacity(items.len());
                let mut slot: HashMap<String, usize> = HashMap::new();
                for (k, v) in items.iter() {
                    let key = match k {
                        Value::Str(s) => s.to_string(),
                        Value::Int(i) => i.to_string(),
                        // Keys of other kinds (tuples, in some training dumps) name nothing here.
                        _ if !self.holds_tensor(v, 0) => continue,
                        other => {
                            return Err(format!("a tensor under a dict key that is not a name: {}", other.brief()))
                        }
                    };
                    match slot.get(&key) {
                        Some(&i) => named[i].1 = v.clone(),
                        None => {
                            slot.insert(key.clone(), named.len());
                            named.push((key, v.clone()));
                        }
                    }
                }
                named
            }
            // Tensors in a list or tuple (an EMA copy, a list of layers) are named by position.
            Value::List(items) => items.borrow().iter().cloned().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
            Value::Tuple(items) => items.iter().cloned().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
            // Numbers, strings and other leaves (an epoch counter beside a state dict) hold no tensor.
            _ => return Ok(()),
        };
        self.count()?;
        if self.path.len() >= MAX_NAME_DEPTH {
            return Err(format!("tensors nested more than {MAX_NAME_DEPTH} containers deep"));
        }
        for (key, child) in children {
            self.path.push(key);
            self.visit(&child)?;
            self.path.pop();
        }
        Ok(())
    }

    fn count(&mut self) -> std::result::Result<(), String> {
        self.visits += 1;
        if self.visits > MAX_VISITS {
            return Err(format!("more than {MAX_VISITS} containers to walk: not a checkpoint's shape"));
        }
        Ok(())
    }

    /// Whether a tensor is reachable from `v` (within the depth and visit limits; past them, yes,
    /// so that the caller's error names the key).
    fn holds_tensor(&mut self, v: &Value, depth: usize) -> bool {
        match v {
            Value::Tensor(_) => true,
            Value::Dict(_) | Value::List(_) | Value::Tuple(_) if depth >= MAX_NAME_DEPTH || self.count().is_err() => {
                true
            }
            Value::Dict(items) => items.borrow().iter().any(|(_, v)| self.holds_tensor(v, depth + 1)),
            Value::List(items) => items.borrow().iter().any(|v| self.holds_tensor(v, depth + 1)),
            Value::Tuple(items) => items.iter().any(|v| self.holds_tensor(v, depth + 1)),
            _ => false,
        }
    }
}

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
