//! A weight on the CPU: the stored bytes (memory-mapped when possible) viewed as typed rows.

use bytemuck::Pod;
use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::weights::{quant, DType, HostTensor};

#[derive(Clone, Debug)]
pub struct CpuWeight {
    tensor: HostTensor,
    rows: usize,
    cols: usize,
    /// A bf16 weight in the order the AMX tiles read it, made on its first AMX matmul and
    /// shared by clones.
    #[cfg(target_arch = "x86_64")]
    packed: std::sync::Arc<std::sync::OnceLock<super::matmul::PackedBf16>>,
}

impl CpuWeight {
    pub fn new(tensor: HostTensor) -> Result<Self> {
        let (rows, cols) = match tensor.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => return Err(Error::input(format!("tensor {}: expected 1 or 2 dims, got {other:?}", tensor.name))),
        };
        if !(tensor.bytes.as_slice().as_ptr() as usize).is_multiple_of(tensor.dtype.align()) {
            return Err(Error::input(format!("tensor {}: data is not aligned to its dtype", tensor.name)));
        }
        if tensor.dtype.bytes_for(cols).map(|b| b * rows) != Some(tensor.bytes.as_slice().len()) {
            return Err(Error::input(format!(
                "tensor {}: {} bytes do not hold {rows} rows of {cols} {} values",
                tensor.name,
                tensor.bytes.as_slice().len(),
                tensor.dtype.name()
            )));
        }
        Ok(CpuWeight {
            tensor,
            rows,
            cols,
            #[cfg(target_arch = "x86_64")]
            packed: Default::default(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.tensor.dtype
    }

    /// `(rows, cols)`; a vector is one row.
    pub fn matrix_shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn bytes(&self) -> usize {
        self.tensor.bytes.as_slice().len()
    }

    pub fn f32_row(&self, r: usize) -> &[f32] {
        &bytemuck::cast_slice::<u8, f32>(self.tensor.bytes.as_slice())[r * self.cols..(r + 1) * self.cols]
    }

    pub fn bf16_row(&self, r: usize) -> &[bf16] {
        &bytemuck::cast_slice::<u8, bf16>(self.tensor.bytes.as_slice())[r * self.cols..(r + 1) * self.cols]
    }

    pub fn f16_row(&self, r: usize) -> &[f16] {
        &bytemuck::cast_slice::<u8, f16>(self.tensor.bytes.as_slice())[r * self.cols..(r + 1) * self.cols]
    }

    /// Bytes of one stored row (whole blocks for a quantized weight).
    fn row_bytes(&self) -> usize {
        self.dtype().bytes_for(self.cols).expect("checked in new")
    }

    /// Every row's blocks of a quantized weight, rows one after another.
    pub fn blocks<B: Pod>(&self) -> &[B] {
        bytemuck::cast_slice(self.tensor.bytes.as_slice())
    }

    /// The tile-order copy of a bf16 weight (packed on first use).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn packed_bf16(&self) -> &super::matmul::PackedBf16 {
        self.packed.get_or_init(|| {
            let (n, k) = self.matrix_shape();
            super::matmul::PackedBf16::new(bytemuck::cast_slice(self.tensor.bytes.as_slice()), n, k)
        })
    }

    /// Row `r` converted to f32 into `out`.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        match self.dtype() {
            DType::F32 => out.copy_from_slice(self.f32_row(r)),
            DType::BF16 => super::matmul::bf16_to_f32(self.bf16_row(r), out),
            DType::F16 => super::matmul::f16_to_f32(self.f16_row(r), out),
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => {
                let row = self.row_bytes();
                quant::dequantize(self.dtype(), &self.tensor.bytes.as_slice()[r * row..(r + 1) * row], out)
            }
        }
    }

    /// A copy stored as Q8_0 blocks (`HostTensor::to_q8_0`).
    pub fn to_q8_0(&self) -> Result<CpuWeight> {
        CpuWeight::new(self.tensor.to_q8_0()?)
    }

    /// Rows `ids` copied as they are stored (no rounding), as a new `[ids.len(), cols]` weight.
    pub fn gather_rows(&self, ids: &[u32], name: &str) -> Result<CpuWeight> {
        let row_bytes = self.row_bytes();
        let bytes = self.tensor.bytes.as_slice();
        let mut out = Vec::with_capacity(ids.len() * row_bytes);
        for &id in ids {
            let r = id as usize;
            if r >= self.rows {
                return Err(Error::input(format!(
                    "{name}: row {r} of {} is past its {} rows",
                    self.tensor.name, self.rows
                )));
            }
            out.extend_from_slice(&bytes[r * row_bytes..(r + 1) * row_bytes]);
        }
        CpuWeight::new(HostTensor {
            name: name.to_string(),
            dtype: self.dtype(),
            shape: vec![ids.len(), self.cols],
            bytes: crate::weights::Bytes::Owned(std::sync::Arc::new(out)),
        })
    }

    /// The whole tensor as f32 (small tensors: norms, biases).
    pub fn to_f32(&self) -> Vec<f32> {
        self.tensor.to_f32()
    }
}
