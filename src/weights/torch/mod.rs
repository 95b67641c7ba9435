//! PyTorch checkpoints (`torch.save`'s zip format, PyTorch ≥ 1.6): `pytorch_model.bin` of the
//! released EAGLE-1 and Clover-2 heads, and the reference's `ge_data` dumps. Read without
//! Python: the archive's records (`zip`), its pickle (`pickle`, a stack machine that builds values
//! and runs no code, with `rebuild` for what torch pickles), and each tensor's bytes gathered from
//! its storage, in the stored element type.

pub mod convert;
mod names;
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

    /// Every tensor reachable through the top-level dicts, named by their keys joined with `.`
    /// (a state dict's own names; `{"state_dict": {...}}` gives `state_dict.…`), in file order.
    pub fn tensors(&self) -> Result<Vec<(String, TensorRef)>> {
        names::named_tensors(&self.root).map_err(|e| Error::format(&self.path, "data.pkl", e))
    }

    /// The tensor's elements as i64 (an integer or boolean element type; else an error naming it).
    pub fn integers(&self, name: &str, t: &TensorRef) -> Result<Vec<i64>> {
        let b = self.bytes(name, t)?;
        Ok(match t.storage.dtype {
            TorchDType::I64 => {
                b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect()
            }
            TorchDType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
            TorchDType::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            TorchDType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            TorchDType::U8 | TorchDType::Bool => b.iter().map(|&x| x as i64).collect(),
            other => return Err(Error::format(&self.path, name, format!("element type {other:?}, expected integers"))),
        })
    }

    /// The tensor's elements as f32 (a floating-point element type; else an error naming it).
    pub fn floats(&self, name: &str, t: &TensorRef) -> Result<Vec<f32>> {
        let b = self.bytes(name, t)?;
        Ok(match t.storage.dtype {
            TorchDType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            TorchDType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            TorchDType::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            TorchDType::F64 => {
                b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()) as f32).collect()
            }
            other => return Err(Error::format(&self.path, name, format!("element type {other:?}, expected floats"))),
        })
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
