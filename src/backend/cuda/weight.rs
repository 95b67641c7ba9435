//! A weight on the GPU. Matrices keep their stored dtype where cuBLAS multiplies it directly (f32,
//! bf16); f16 matrices are widened to f32 once at upload (cuBLAS wants both operands in one type,
//! and the engine's activations are f32 or bf16). Vectors (norm gains, biases) are kept as f32,
//! which is what the kernels read.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use crate::error::{Error, Result};
use crate::weights::{DType, HostTensor};

pub enum WeightData {
    F32(CudaSlice<f32>),
    /// Raw bf16 bits.
    Bf16(CudaSlice<u16>),
}

pub struct CudaWeight {
    pub name: String,
    pub data: WeightData,
    /// `(rows, cols)`; a vector is one row.
    pub rows: usize,
    pub cols: usize,
}

impl CudaWeight {
    pub fn upload(stream: &Arc<CudaStream>, tensor: &HostTensor) -> Result<CudaWeight> {
        let (rows, cols) = match tensor.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => return Err(Error::input(format!("tensor {}: expected 1 or 2 dims, got {other:?}", tensor.name))),
        };
        let fail =
            |e: cudarc::driver::DriverError| Error::input(format!("CUDA backend: uploading {}: {e}", tensor.name));
        let data = match tensor.dtype {
            DType::BF16 if rows > 1 => {
                let bits: Vec<u16> =
                    tensor.bytes.as_slice().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                WeightData::Bf16(stream.clone_htod(&bits).map_err(fail)?)
            }
            _ => WeightData::F32(stream.clone_htod(&tensor.to_f32()).map_err(fail)?),
        };
        Ok(CudaWeight { name: tensor.name.clone(), data, rows, cols })
    }

    /// The f32 values of a vector weight (gains, biases) or an f32 matrix.
    pub fn f32(&self) -> &CudaSlice<f32> {
        match &self.data {
            WeightData::F32(d) => d,
            WeightData::Bf16(_) => panic!("CUDA backend: {} is a bf16 matrix where f32 values are needed", self.name),
        }
    }
}
