//! GGUF (v2/v3) reader: header, metadata, tensor infos and dequantization of the block formats in
//! `spec/gguf.md`. The file is memory-mapped; every offset read from it is bounds-checked so a
//! truncated or corrupt file gives an error naming the field or tensor, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{Error, Result};
use parse::parse_header;

mod parse;
#[cfg(test)]
pub(crate) mod test_writer;
#[cfg(test)]
mod tests;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Real files nest arrays at most once; the limit keeps a hostile file from overflowing the stack.
const MAX_ARRAY_DEPTH: usize = 4;
/// Values per quantization block for every block type supported here.
const QK: usize = 32;

/// One metadata value, with the type it was stored as.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }

    /// Any integer type, so that a writer choosing u64 over u32 (or i32) does not break a reader.
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// The tensor data types this reader can dequantize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Bf16,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }

    /// (values per block, bytes per block); plain types are blocks of one value.
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (QK, 18),
            GgmlType::Q4_1 => (QK, 20),
            GgmlType::Q8_0 => (QK, 34),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the fastest (contiguous) axis; the HF shape is the reverse.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Relative to the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Checked at open, so it cannot overflow for infos read from a file.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The tensor's bytes in the file (None only for dims that overflow, refused at open).
    pub fn n_bytes(&self) -> Option<u64> {
        let (values, bytes) = self.ggml_type.block();
        let n = self.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
        (n / values as u64).checked_mul(bytes as u64)
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    data_start: u64,
    mmap: Mmap,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the mapping is read-only; like every mmap-based model loader we accept that
        // another process truncating the file while we read it is outside our control.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let header = parse_header(&path, &mmap)?;
        let gguf = GgufFile {
            path,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            data_start: header.data_start,
            mmap,
        };
        for info in &gguf.tensors {
            gguf.tensor_bytes(info)?;
        }
        Ok(gguf)
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw (possibly quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        let out_of_file = || {
            Error::format(
                &self.path,
                &info.name,
                format!(
                    "tensor data (offset {}, {:?} {:?}) extends beyond the end of the file ({} bytes): truncated file?",
                    info.offset,
                    info.ggml_type,
                    info.dims,
                    self.mmap.len()
                ),
            )
        };
        let n_bytes = info.n_bytes().ok_or_else(out_of_file)?;
        let start = self.data_start.checked_add(info.offset).ok_or_else(out_of_file)?;
        let end = start.checked_add(n_bytes).ok_or_else(out_of_file)?;
        let (start, end) = (usize::try_from(start), usize::try_from(end));
        match (start, end) {
            (Ok(start), Ok(end)) if end <= self.mmap.len() => Ok(&self.mmap[start..end]),
            _ => Err(out_of_file()),
        }
    }

    pub fn tensor_to_f32(&self, info: &GgufTensorInfo) -> Result<Vec<f32>> {
        Ok(dequantize(info.ggml_type, self.tensor_bytes(info)?))
    }

    pub fn value(&self, key: &str) -> Result<&GgufValue> {
        self.metadata.get(key).ok_or_else(|| Error::format(&self.path, key, "missing metadata key"))
    }

    fn wrong_type(&self, key: &str, want: &str, found: &GgufValue) -> Error {
        Error::format(&self.path, key, format!("expected {want}, found {}", found.type_name()))
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.value(key)?;
        v.as_integer().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| self.wrong_type(key, "u32", v))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        match *self.value(key)? {
            GgufValue::F32(x) => Ok(x),
            GgufValue::F64(x) => Ok(x as f32),
            ref v => Err(self.wrong_type(key, "f32", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match *self.value(key)? {
            GgufValue::Bool(b) => Ok(b),
            ref v => Err(self.wrong_type(key, "bool", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.value(key)? {
            GgufValue::String(s) => Ok(s),
            v => Err(self.wrong_type(key, "string", v)),
        }
    }

    fn get_array(&self, key: &str) -> Result<&[GgufValue]> {
        match self.value(key)? {
            GgufValue::Array(a) => Ok(a),
            v => Err(self.wrong_type(key, "array", v)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                GgufValue::String(s) => Ok(s.as_str()),
                v => Err(self.wrong_type(key, "array of strings", v)),
            })
            .collect()
    }

    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.get_array(key)?
            .iter()
            .map(|v| {
                v.as_integer()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| self.wrong_type(key, "array of i32", v))
            })
            .collect()
    }
}

/// Dequantizes whole blocks of `bytes`; callers pass exactly the tensor's bytes.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    match ty {
        GgmlType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(|b| f16_at(b, 0)).collect(),
        GgmlType::Bf16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        GgmlType::Q8_0 => bytes
            .chunks_exact(34)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                b[2..].iter().map(move |&q| d * f32::from(q as i8))
            })
            .collect(),
        GgmlType::Q4_0 => bytes
            .chunks_exact(18)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                nibbles(&b[2..]).map(move |q| d * (f32::from(q) - 8.0))
            })
            .collect(),
        GgmlType::Q4_1 => bytes
            .chunks_exact(20)
            .flat_map(|b| {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                nibbles(&b[4..]).map(move |q| d * f32::from(q) + m)
            })
            .collect(),
    }
}

/// The 32 4-bit quants of a block: all low nibbles first, then all high nibbles.
fn nibbles(qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    qs.iter().map(|q| q & 15).chain(qs.iter().map(|q| q >> 4))
}
