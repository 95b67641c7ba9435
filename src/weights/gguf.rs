//! GGUF (v2/v3) reader: header, metadata, tensor infos and dequantization of the block formats in
//! `spec/gguf.md`. The file is memory-mapped; every offset read from it is bounds-checked so a
//! truncated or corrupt file gives an error naming the field or tensor, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{Error, Result};

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

    fn n_bytes(&self) -> Option<u64> {
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

struct Header {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    data_start: u64,
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let mut r = Reader { bytes, pos: 0, path };
    if r.take(4, "magic")? != MAGIC {
        return Err(Error::format(path, "magic", "not a GGUF file (missing `GGUF` magic)"));
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(Error::format(path, "version", format!("unsupported GGUF version {version} (2 and 3 are)")));
    }
    let tensor_count = r.count("tensor_count")?;
    let kv_count = r.count("metadata_kv_count")?;
    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r.string(&format!("metadata key #{i}"))?;
        let ty = r.u32(&key)?;
        let value = r.value(ty, &key, 0)?;
        metadata.insert(key, value);
    }
    let tensors = (0..tensor_count).map(|i| r.tensor_info(i)).collect::<Result<Vec<_>>>()?;
    let alignment = alignment(path, &metadata)?;
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    Ok(Header { version, metadata, tensors, data_start })
}

fn alignment(path: &Path, metadata: &BTreeMap<String, GgufValue>) -> Result<u64> {
    const KEY: &str = "general.alignment";
    let Some(value) = metadata.get(KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value.as_integer().and_then(|a| u64::try_from(a).ok()) {
        Some(a) if a.is_power_of_two() => Ok(a),
        _ => Err(Error::format(path, KEY, format!("must be a power of two, found {value:?}"))),
    }
}

/// A bounds-checked little-endian cursor; `field` names what is being read, for errors.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let remaining = self.bytes.len() - self.pos;
        if n > remaining {
            return Err(Error::format(
                self.path,
                field,
                format!("file ends at byte {} but {n} more bytes are needed: truncated file?", self.bytes.len()),
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A count of items that each take at least one byte, so anything above the bytes left is
    /// corrupt; checking here keeps a bad count from driving a huge loop or allocation.
    fn count(&mut self, field: &str) -> Result<usize> {
        let n = self.u64(field)?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n > remaining {
            return Err(Error::format(
                self.path,
                field,
                format!("count {n} exceeds the {remaining} bytes left in the file"),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let len = self.count(field)?;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| Error::format(self.path, field, format!("string is not valid UTF-8: {e}")))
    }

    fn value(&mut self, ty: u32, field: &str, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(field)?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(field)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(field)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(field)?)),
            4 => GgufValue::U32(self.u32(field)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(field)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(field)?)),
            7 => GgufValue::Bool(self.bool(field)?),
            8 => GgufValue::String(self.string(field)?),
            9 => GgufValue::Array(self.array_value(field, depth)?),
            10 => GgufValue::U64(self.u64(field)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(field)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(field)?)),
            _ => return Err(Error::format(self.path, field, format!("unknown metadata value type {ty}"))),
        })
    }

    fn bool(&mut self, field: &str) -> Result<bool> {
        match self.array::<1>(field)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(Error::format(self.path, field, format!("bool byte must be 0 or 1, found {b}"))),
        }
    }

    fn array_value(&mut self, field: &str, depth: usize) -> Result<Vec<GgufValue>> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(Error::format(self.path, field, "arrays nested too deeply"));
        }
        let ty = self.u32(field)?;
        let n = self.count(field)?;
        (0..n).map(|_| self.value(ty, field, depth + 1)).collect()
    }

    fn tensor_info(&mut self, index: usize) -> Result<GgufTensorInfo> {
        let name = self.string(&format!("tensor info #{index}"))?;
        let n_dims = self.u32(&name)?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(Error::format(self.path, &name, format!("{n_dims} dimensions (1 to {MAX_DIMS} supported)")));
        }
        let dims = (0..n_dims).map(|_| self.u64(&name)).collect::<Result<Vec<_>>>()?;
        let type_id = self.u32(&name)?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
            Error::format(
                self.path,
                &name,
                format!("unsupported tensor type id {type_id} (F32, F16, BF16, Q8_0, Q4_0, Q4_1 are)"),
            )
        })?;
        let offset = self.u64(&name)?;
        let info = GgufTensorInfo { name, dims, ggml_type, offset };
        self.check_shape(&info)?;
        Ok(info)
    }

    fn check_shape(&self, info: &GgufTensorInfo) -> Result<()> {
        let (block, _) = info.ggml_type.block();
        if info.n_bytes().is_none() {
            return Err(Error::format(self.path, &info.name, format!("dims {:?} overflow", info.dims)));
        }
        if !info.dims[0].is_multiple_of(block as u64) {
            return Err(Error::format(
                self.path,
                &info.name,
                format!("row length {} is not a multiple of the {:?} block size {block}", info.dims[0], info.ggml_type),
            ));
        }
        Ok(())
    }
}

/// Builds GGUF files in memory for tests of this module and of the importer.
#[cfg(test)]
pub(crate) mod test_writer {
    use super::{GgufValue, DEFAULT_ALIGNMENT};

    struct TestTensor {
        name: String,
        dims: Vec<u64>,
        type_id: u32,
        data: Vec<u8>,
    }

    #[derive(Default)]
    pub struct GgufBuilder {
        kv: Vec<(String, GgufValue)>,
        tensors: Vec<TestTensor>,
        alignment: Option<usize>,
    }

    impl GgufBuilder {
        pub fn alignment(&mut self, alignment: u32) -> &mut Self {
            self.alignment = Some(alignment as usize);
            self.kv("general.alignment", GgufValue::U32(alignment))
        }

        pub fn kv(&mut self, key: &str, value: GgufValue) -> &mut Self {
            self.kv.push((key.to_string(), value));
            self
        }

        /// Adds a tensor, or replaces the one of that name.
        pub fn tensor(&mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> &mut Self {
            self.tensors.retain(|t| t.name != name);
            self.tensors.push(TestTensor { name: name.into(), dims: dims.to_vec(), type_id, data });
            self
        }

        pub fn f32_tensor(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
            self.tensor(name, dims, 0, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        }

        pub fn build(&self) -> Vec<u8> {
            let alignment = self.alignment.unwrap_or(DEFAULT_ALIGNMENT as usize);
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend((self.tensors.len() as u64).to_le_bytes());
            out.extend((self.kv.len() as u64).to_le_bytes());
            for (k, v) in &self.kv {
                write_str(&mut out, k);
                out.extend(type_id(v).to_le_bytes());
                write_value(&mut out, v);
            }
            let mut offset = 0usize;
            for t in &self.tensors {
                write_str(&mut out, &t.name);
                out.extend((t.dims.len() as u32).to_le_bytes());
                t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
                out.extend(t.type_id.to_le_bytes());
                out.extend((offset as u64).to_le_bytes());
                offset += t.data.len().div_ceil(alignment) * alignment;
            }
            for t in &self.tensors {
                out.resize(out.len().div_ceil(alignment) * alignment, 0);
                out.extend(&t.data);
            }
            out
        }
    }

    fn write_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn write_value(out: &mut Vec<u8>, v: &GgufValue) {
        match v {
            GgufValue::U8(x) => out.push(*x),
            GgufValue::I8(x) => out.extend(x.to_le_bytes()),
            GgufValue::U16(x) => out.extend(x.to_le_bytes()),
            GgufValue::I16(x) => out.extend(x.to_le_bytes()),
            GgufValue::U32(x) => out.extend(x.to_le_bytes()),
            GgufValue::I32(x) => out.extend(x.to_le_bytes()),
            GgufValue::U64(x) => out.extend(x.to_le_bytes()),
            GgufValue::I64(x) => out.extend(x.to_le_bytes()),
            GgufValue::F32(x) => out.extend(x.to_le_bytes()),
            GgufValue::F64(x) => out.extend(x.to_le_bytes()),
            GgufValue::Bool(x) => out.push(u8::from(*x)),
            GgufValue::String(s) => write_str(out, s),
            GgufValue::Array(items) => {
                out.extend(items.first().map_or(4, type_id).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|item| write_value(out, item));
            }
        }
    }

    fn type_id(v: &GgufValue) -> u32 {
        match v {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    pub fn strings(items: &[&str]) -> GgufValue {
        GgufValue::Array(items.iter().map(|s| GgufValue::String(s.to_string())).collect())
    }

    /// A fresh, empty scratch folder per test.
    pub fn scratch_dir(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("clover-gguf-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::test_writer::{scratch_dir, strings, GgufBuilder};
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn open_bytes(test: &str, bytes: &[u8]) -> Result<GgufFile> {
        let path = scratch_dir(test).join("model.gguf");
        std::fs::write(&path, bytes).expect("write test file");
        GgufFile::open(path)
    }

    /// Q8_0: d = 0.5, q[i] = i − 16.
    fn q8_0_block() -> Vec<u8> {
        let mut b = f16_bytes(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        b
    }

    /// Q4_0: d = 2, qs[j] = j (low nibble) | (15 − j) << 4.
    fn q4_0_block() -> Vec<u8> {
        let mut b = f16_bytes(2.0).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        b
    }

    /// Q4_1: d = 0.5, m = −1, same nibbles as Q4_0.
    fn q4_1_block() -> Vec<u8> {
        let mut b = f16_bytes(0.5).to_vec();
        b.extend(f16_bytes(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        b
    }

    fn all_types_file() -> Vec<u8> {
        let mut b = GgufBuilder::default();
        b.alignment(64)
            .kv("general.architecture", GgufValue::String("llama".into()))
            .kv("test.f32", GgufValue::F32(1.5))
            .kv("test.u64", GgufValue::U64(7))
            .kv("test.tokens", strings(&["a", "b c", "ü"]))
            .kv("test.types", GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-3)]))
            .f32_tensor("f32", &[2], &[1.25, -3.0])
            .tensor("f16", &[2], 1, [f16_bytes(0.5), f16_bytes(-2.0)].concat())
            .tensor(
                "bf16",
                &[2],
                30,
                [bf16::from_f32(3.0).to_le_bytes(), bf16::from_f32(-0.125).to_le_bytes()].concat(),
            )
            .tensor("q8_0", &[32], 8, q8_0_block())
            .tensor("q4_0", &[32], 2, q4_0_block())
            .tensor("q4_1", &[32, 2], 3, [q4_1_block(), q4_1_block()].concat());
        b.build()
    }

    fn dequant(g: &GgufFile, name: &str) -> Vec<f32> {
        g.tensor_to_f32(g.tensor(name).expect("tensor present")).expect("dequantize")
    }

    #[test]
    fn dequantizes_every_block_type() {
        let g = open_bytes("dequant", &all_types_file()).expect("open");
        assert_eq!(g.version, 3);
        assert_eq!(g.data_start % 64, 0);
        assert_eq!(dequant(&g, "f32"), [1.25, -3.0]);
        assert_eq!(dequant(&g, "f16"), [0.5, -2.0]);
        assert_eq!(dequant(&g, "bf16"), [3.0, -0.125]);

        let q8 = dequant(&g, "q8_0");
        assert_eq!((q8.len(), q8[0], q8[1], q8[16], q8[31]), (32, -8.0, -7.5, 0.0, 7.5));

        // x[j] = 2·(j − 8), x[j+16] = 2·((15 − j) − 8)
        let q4 = dequant(&g, "q4_0");
        assert_eq!((q4.len(), q4[0], q4[3], q4[15], q4[16], q4[31]), (32, -16.0, -10.0, 14.0, 14.0, -16.0));

        // x[j] = 0.5·j − 1, x[j+16] = 0.5·(15 − j) − 1, for both blocks
        let q41 = dequant(&g, "q4_1");
        assert_eq!(q41.len(), 64);
        assert_eq!((q41[0], q41[5], q41[15], q41[16], q41[31]), (-1.0, 1.5, 6.5, 6.5, -1.0));
        assert_eq!(q41[32..], q41[..32]);
    }

    #[test]
    fn typed_metadata_getters() {
        let g = open_bytes("getters", &all_types_file()).expect("open");
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_f32("test.f32").unwrap(), 1.5);
        assert_eq!(g.get_u32("test.u64").unwrap(), 7);
        assert_eq!(g.get_str_array("test.tokens").unwrap(), ["a", "b c", "ü"]);
        assert_eq!(g.get_i32_array("test.types").unwrap(), [1, -3]);
        let missing = g.get_u32("llama.block_count").unwrap_err().to_string();
        assert!(missing.contains("llama.block_count") && missing.contains("missing"), "{missing}");
        let wrong = g.get_u32("general.architecture").unwrap_err().to_string();
        assert!(wrong.contains("general.architecture") && wrong.contains("string"), "{wrong}");
        assert!(g.get_str_array("test.types").is_err());
    }

    #[test]
    fn unknown_type_id_names_tensor_and_id() {
        let mut b = GgufBuilder::default();
        b.tensor("blk.0.attn_q.weight", &[256], 12, vec![0; 144]);
        let err = open_bytes("unknown_type", &b.build()).err().expect("must fail").to_string();
        assert!(err.contains("blk.0.attn_q.weight") && err.contains("12"), "{err}");
    }

    #[test]
    fn every_truncation_is_a_clean_error() {
        let full = all_types_file();
        assert!(open_bytes("truncated", &full).is_ok());
        for len in 0..full.len() {
            assert!(open_bytes("truncated", &full[..len]).is_err(), "prefix of {len} bytes opened");
        }
        let err = open_bytes("truncated", &full[..full.len() - 1]).err().expect("must fail").to_string();
        assert!(err.contains("q4_1") && err.contains("beyond the end"), "{err}");
    }

    #[test]
    fn rejects_bad_magic_version_and_block_misfit() {
        let mut bytes = all_types_file();
        bytes[4] = 1;
        let err = open_bytes("version", &bytes).err().expect("v1").to_string();
        assert!(err.contains("version"), "{err}");
        bytes[0] = b'X';
        assert!(open_bytes("magic", &bytes).is_err());

        let mut b = GgufBuilder::default();
        b.tensor("q8", &[16, 2], 8, vec![0; 34]);
        let err = open_bytes("misfit", &b.build()).err().expect("row of 16 in Q8_0").to_string();
        assert!(err.contains("q8") && err.contains("block size"), "{err}");
    }
}
