//! The reference backend: plain f32 loops over host memory, multithreaded with rayon where a
//! step has enough independent work. Every other backend is tested against this one.

pub mod activation;
pub mod attention;
pub mod kv;
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod rope;
pub mod weight;

#[cfg(test)]
pub mod gradcheck;

pub use weight::CpuWeight;

use super::{AttnMask, AttnShape, Backend, KvLayout};
use crate::error::Result;
use crate::weights::HostTensor;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn weight(&self, tensor: HostTensor) -> Result<CpuWeight> {
        CpuWeight::new(tensor)
    }

    fn zeros(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }

    fn upload(&self, data: &[f32]) -> Vec<f32> {
        data.to_vec()
    }

    fn download(&self, buf: &Vec<f32>) -> Vec<f32> {
        buf.clone()
    }

    fn slice_rows(&self, buf: &Vec<f32>, width: usize, start: usize, rows: usize) -> Vec<f32> {
        buf[start * width..(start + rows) * width].to_vec()
    }

    fn gather_rows(&self, buf: &Vec<f32>, width: usize, rows: &[usize]) -> Vec<f32> {
        rows.iter().flat_map(|&r| buf[r * width..(r + 1) * width].iter().copied()).collect()
    }

    fn embedding(&self, table: &CpuWeight, ids: &[u32], out: &mut Vec<f32>) {
        let (_, dim) = table.matrix_shape();
        for (row, &id) in out.chunks_exact_mut(dim).zip(ids) {
            table.row_to_f32(id as usize, row);
        }
    }

    fn matmul(&self, x: &Vec<f32>, rows: usize, w: &CpuWeight, out: &mut Vec<f32>) {
        matmul::matmul(x, rows, w, out);
    }

    fn add_bias(&self, x: &mut Vec<f32>, rows: usize, bias: &CpuWeight) {
        linear::add_bias(x, rows, &bias.to_f32());
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>) {
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    }

    fn rmsnorm(&self, x: &Vec<f32>, rows: usize, gain: &CpuWeight, eps: f32, out: &mut Vec<f32>) {
        let g = gain.to_f32();
        norm::rmsnorm(&x[..rows * g.len()], &g, eps, &mut out[..rows * g.len()]);
    }

    fn rope(&self, x: &mut Vec<f32>, rows: usize, n_heads: usize, head_dim: usize, cos_sin: &Vec<f32>) {
        rope::rope(x, rows, n_heads, head_dim, cos_sin);
    }

    fn swiglu(&self, gate: &Vec<f32>, up: &Vec<f32>, out: &mut Vec<f32>) {
        activation::swiglu(gate, up, out);
    }

    fn kv_write(&self, cache: &mut Vec<f32>, layout: KvLayout, new: &Vec<f32>, rows: usize, start: usize) {
        kv::kv_write(cache, layout, new, rows, start);
    }

    fn kv_move(&self, cache: &mut Vec<f32>, layout: KvLayout, moves: &[(usize, usize)]) {
        kv::kv_move(cache, layout, moves);
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k_cache: &Vec<f32>,
        v_cache: &Vec<f32>,
        layout: KvLayout,
        shape: AttnShape,
        rows: usize,
        past: usize,
        mask: AttnMask,
        out: &mut Vec<f32>,
    ) {
        attention::attention(q, k_cache, v_cache, layout, shape, rows, past, mask, out);
    }
}
