//! Weight files: the safetensors loader (memory-mapped, dtype kept) and the GGUF importer.

pub mod gguf;
pub mod gguf_import;
mod gguf_tokenizer;
pub mod safetensors;

use std::sync::Arc;

use memmap2::Mmap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

/// Where a tensor's bytes live: in a shared memory map (no copy) or owned by the tensor.
#[derive(Clone, Debug)]
pub enum Bytes {
    Mapped { map: Arc<Mmap>, start: usize, len: usize },
    Owned(Arc<Vec<u8>>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
            Bytes::Owned(v) => v,
        }
    }
}

/// A tensor on the host as it was stored: name, dtype, shape and raw little-endian bytes.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

impl HostTensor {
    pub fn from_f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        HostTensor {
            name: name.to_string(),
            dtype: DType::F32,
            shape,
            bytes: Bytes::Owned(Arc::new(bytemuck::cast_slice(values).to_vec())),
        }
    }

    /// A tensor from raw 16-bit patterns (bf16 or f16).
    pub fn from_bits(name: &str, dtype: DType, shape: Vec<usize>, bits: Vec<u16>) -> Self {
        HostTensor {
            name: name.to_string(),
            dtype,
            shape,
            bytes: Bytes::Owned(Arc::new(bytemuck::cast_slice(&bits).to_vec())),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32, whatever the stored dtype (a copy).
    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes.as_slice();
        match self.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::BF16 => {
                b.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
            }
            DType::F16 => {
                b.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
            }
        }
    }
}

/// Writes f32 tensors as one safetensors file, atomically (temp name, then rename).
pub fn write_f32_safetensors(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> crate::Result<()> {
    write_safetensors(path, tensors, DType::F32)
}

/// Writes f32 values as one safetensors file of `dtype` (16-bit types rounded to nearest even),
/// atomically (temp name, then rename).
pub fn write_safetensors(
    path: &std::path::Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: DType,
) -> crate::Result<()> {
    use ::safetensors::tensor::{Dtype, TensorView};
    let bad = |e: ::safetensors::SafeTensorError| crate::Error::format(path, "(safetensors)", e.to_string());
    let encoded: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, values)| match dtype {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            DType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        })
        .collect();
    let st_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
    };
    let views = tensors
        .iter()
        .zip(&encoded)
        .map(|((name, shape, _), bytes)| {
            Ok((name.as_str(), TensorView::new(st_dtype, shape.clone(), bytes).map_err(bad)?))
        })
        .collect::<crate::Result<Vec<_>>>()?;
    let bytes = ::safetensors::serialize(views, &None).map_err(bad)?;
    crate::fsutil::write_atomically(path, &bytes)
}
