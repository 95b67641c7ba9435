//! Writing the imported folder's files: `model.safetensors` streamed a tensor at a time, and JSON.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use half::bf16;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};

use super::tensor_plan::{unpermute_qk, PlannedTensor};
use super::ImportDType;
use crate::error::{Error, Result};
use crate::weights::gguf::{GgmlType, GgufFile};
use crate::weights::safetensors::QUANT_KEY_PREFIX;
use crate::weights::DType;

/// Streams one tensor at a time: only the current tensor's values are ever in memory.
pub(super) fn write_safetensors(
    g: &GgufFile,
    plan: &BTreeMap<String, PlannedTensor>,
    dtype: ImportDType,
    path: &Path,
) -> Result<u64> {
    let io_err = |e: io::Error| Error::io(path, e);
    let order = data_order(plan, dtype);
    let header = safetensors_header(&order, dtype);
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io_err)?);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io_err)?;
    w.write_all(&header).map_err(io_err)?;
    let mut written = 8 + header.len() as u64;
    // Tensors of the GGUF read so far, in bytes: a 7B file takes minutes (drawn only on a terminal).
    let bar = ProgressBar::new(order.iter().map(|(_, t)| t.info.n_bytes().unwrap_or(0)).sum());
    bar.set_style(
        ProgressStyle::with_template("{wide_bar} {bytes}/{total_bytes}  {bytes_per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for (_, t) in order {
        bar.inc(t.info.n_bytes().unwrap_or(0));
        let stored = dtype.stored(t.info.ggml_type, t.info.dims.len());
        // Kept as in the file, unless it is a quantized vector expanded to f32.
        let as_in_file = dtype == ImportDType::Keep && !(stored == DType::F32 && t.info.ggml_type != GgmlType::F32);
        written += if as_in_file {
            // Rows are whole blocks, so un-permuting moves bytes of rows.
            let mut bytes = g.tensor_bytes(t.info)?.to_vec();
            if let Some((n_head, row_len)) = t.unpermute {
                let row_bytes = bytes.len() / (t.info.n_elements() as usize / row_len);
                bytes = unpermute_qk(&bytes, n_head, row_bytes);
            }
            w.write_all(&bytes).map_err(io_err)?;
            bytes.len() as u64
        } else {
            let mut values = g.tensor_to_f32(t.info)?;
            if let Some((n_head, row_len)) = t.unpermute {
                values = unpermute_qk(&values, n_head, row_len);
            }
            write_values(&mut w, &values, stored).map_err(io_err)?
        };
    }
    bar.finish_and_clear();
    let file = w.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    Ok(written)
}

/// The order of the data section: 4-byte types first, then 2-byte ones and blocks, by name within
/// each, so every tensor starts aligned for its typed view (safetensors allows no gaps).
fn data_order<'p, 'a>(
    plan: &'p BTreeMap<String, PlannedTensor<'a>>,
    dtype: ImportDType,
) -> Vec<(&'p String, &'p PlannedTensor<'a>)> {
    let mut order: Vec<_> = plan.iter().collect();
    order.sort_by_key(|(name, t)| {
        (std::cmp::Reverse(dtype.stored(t.info.ggml_type, t.info.dims.len()).align()), name.as_str())
    });
    order
}

/// The header's JSON, padded with spaces to a multiple of 8 bytes. A quantized tensor is U8
/// `[rows, bytes per row]`, its type named in the metadata (`safetensors::QUANT_KEY_PREFIX`).
fn safetensors_header(order: &[(&String, &PlannedTensor)], dtype: ImportDType) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut metadata = serde_json::Map::new();
    metadata.insert("format".into(), json!("pt"));
    let mut offset = 0u64;
    for &(name, t) in order {
        let stored = dtype.stored(t.info.ggml_type, t.info.dims.len());
        let bytes = stored.bytes_for(t.info.n_elements() as usize).expect("GGUF tensors are whole blocks") as u64;
        let (st_dtype, shape) = if stored.is_quantized() {
            metadata.insert(format!("{QUANT_KEY_PREFIX}{name}"), json!(stored.name()));
            let mut shape = t.shape.clone();
            if let Some(last) = shape.last_mut() {
                *last = *last / stored.block().0 as u64 * stored.block().1 as u64;
            }
            ("U8", shape)
        } else {
            (stored.name(), t.shape.clone())
        };
        let end = offset + bytes;
        header.insert(name.clone(), json!({ "dtype": st_dtype, "shape": shape, "data_offsets": [offset, end] }));
        offset = end;
    }
    header.insert("__metadata__".into(), Value::Object(metadata));
    let mut bytes = Value::Object(header).to_string().into_bytes();
    // With the 8-byte length prefix this makes the data section start 8-aligned; each tensor then
    // starts aligned to its element size (`data_order`).
    bytes.resize(bytes.len().div_ceil(8) * 8, b' ');
    bytes
}

/// Values as bf16 when `dtype` is BF16, else as f32.
fn write_values(w: &mut impl Write, values: &[f32], dtype: DType) -> io::Result<u64> {
    const CHUNK: usize = 1 << 16;
    let mut buf = Vec::with_capacity(CHUNK * 4);
    for chunk in values.chunks(CHUNK) {
        buf.clear();
        match dtype {
            DType::BF16 => chunk.iter().for_each(|&v| buf.extend(bf16::from_f32(v).to_le_bytes())),
            _ => chunk.iter().for_each(|&v| buf.extend(v.to_le_bytes())),
        }
        w.write_all(&buf)?;
    }
    let size = if dtype == DType::BF16 { 2 } else { 4 };
    Ok(values.len() as u64 * size)
}

pub(super) fn write_json(path: &Path, value: &impl Serialize) -> Result<u64> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::io(path, e.into()))?;
    fs::write(path, &bytes).map_err(|e| Error::io(path, e))?;
    Ok(bytes.len() as u64)
}
