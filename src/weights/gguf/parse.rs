//! Parsing a GGUF header: magic, version, metadata and tensor infos, through a bounds-checked
//! cursor that names the field it was reading in every error.

use std::collections::BTreeMap;
use std::path::Path;

use super::{GgmlType, GgufTensorInfo, GgufValue, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::error::{Error, Result};

pub(super) struct Header {
    pub(super) version: u32,
    pub(super) metadata: BTreeMap<String, GgufValue>,
    pub(super) tensors: Vec<GgufTensorInfo>,
    pub(super) data_start: u64,
}

pub(super) fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let mut r = Reader { bytes, pos: 0, path };
    if r.take(4, "magic")? != MAGIC {
        return Err(Error::format(path, "magic", "not a GGUF file (missing `GGUF` magic)"));
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        // A big-endian file (llama.cpp can write one for s390x) reads as a byte-swapped version.
        let note = if (2..=3).contains(&version.swap_bytes()) { ": a big-endian GGUF, not supported" } else { "" };
        return Err(Error::format(path, "version", format!("unsupported GGUF version {version} (2 and 3 are){note}")));
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
