//! Weight files: the safetensors loader (memory-mapped, dtype kept), the GGUF importer and the
//! PyTorch checkpoint reader (`torch`).

pub mod gguf;
pub mod gguf_import;
mod gguf_tokenizer;
pub mod quant;
pub mod safetensors;
mod safetensors_header;
pub mod torch;

use std::sync::Arc;

use memmap2::Mmap;

/// How a tensor's values are stored: plain floats, or GGUF's blocks of 32 (`quant.rs`), which
/// only `import-gguf --dtype keep` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl DType {
    /// The quantized types, as `name()` spells them.
    pub const QUANTIZED: [DType; 3] = [DType::Q8_0, DType::Q4_0, DType::Q4_1];

    /// (values per block, bytes per block); a plain type is a block of one value.
    pub fn block(self) -> (usize, usize) {
        match self {
            DType::F32 => (1, 4),
            DType::BF16 | DType::F16 => (1, 2),
            DType::Q8_0 => (quant::QK, 34),
            DType::Q4_0 => (quant::QK, 18),
            DType::Q4_1 => (quant::QK, 20),
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block().0 > 1
    }

    /// The alignment typed views of the data need (blocks start with 16-bit scales).
    pub fn align(self) -> usize {
        match self {
            DType::F32 => 4,
            _ => 2,
        }
    }

    /// Bytes holding `values` values, `None` when they are not whole blocks.
    pub fn bytes_for(self, values: usize) -> Option<usize> {
        let (per_block, bytes) = self.block();
        values.is_multiple_of(per_block).then_some(values / per_block * bytes)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
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

    /// This matrix's values as Q8_0 blocks (`quant::quantize_q8_0`), row by row: what
    /// `--draft-weights q8_0` reads instead of the stored type.
    pub fn to_q8_0(&self) -> crate::Result<Self> {
        let [_, cols] = self.shape[..] else {
            return Err(crate::Error::input(format!("tensor {}: only a matrix can be stored as Q8_0", self.name)));
        };
        if cols % quant::QK != 0 {
            return Err(crate::Error::input(format!(
                "tensor {}: rows of {cols} values are not whole Q8_0 blocks of {}",
                self.name,
                quant::QK
            )));
        }
        let blocks = quant::quantize_q8_0(&self.to_f32());
        Ok(HostTensor {
            name: self.name.clone(),
            dtype: DType::Q8_0,
            shape: self.shape.clone(),
            bytes: Bytes::Owned(Arc::new(bytemuck::cast_slice(&blocks).to_vec())),
        })
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
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => {
                let mut out = vec![0.0; self.numel()];
                quant::dequantize(self.dtype, b, &mut out);
                out
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
    if dtype.is_quantized() {
        return Err(crate::Error::input(format!(
            "{}: writing {} tensors is not supported (f32, bf16, f16 are)",
            path.display(),
            dtype.name()
        )));
    }
    let encoded: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, values)| match dtype {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            DType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => unreachable!("refused above"),
        })
        .collect();
    let st_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => unreachable!("refused above"),
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
