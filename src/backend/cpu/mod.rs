//! The reference backend: plain f32 loops over host memory, multithreaded with rayon where a
//! step has enough independent work. Every other backend is tested against this one.

pub mod activation;
pub mod attention;
pub mod clover_cell;
pub mod kv;
pub mod linear;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod optim;
pub mod rope;
pub mod weight;

#[cfg(test)]
pub mod gradcheck;

pub use weight::CpuWeight;

use super::{AttnMask, AttnShape, Backend, CloverCellParams, KvLayout};
use crate::error::{Error, Result};
use crate::weights::HostTensor;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;

    fn name(&self) -> String {
        format!("cpu ({} threads, matmul {})", rayon::current_num_threads(), matmul::kernel_choice())
    }

    fn weight(&self, tensor: HostTensor) -> Result<CpuWeight> {
        CpuWeight::new(tensor)
    }

    fn gather_weight_rows(&self, w: &CpuWeight, ids: &[u32], name: &str) -> Result<CpuWeight> {
        w.gather_rows(ids, name)
    }

    fn quantize_q8_0(&self, w: &CpuWeight) -> Result<CpuWeight> {
        w.to_q8_0()
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

    fn matmul_group(&self, x: &Vec<f32>, rows: usize, parts: &mut [(&CpuWeight, &mut Vec<f32>)]) {
        let mut parts: Vec<(&CpuWeight, &mut [f32])> =
            parts.iter_mut().map(|(w, out)| (*w, out.as_mut_slice())).collect();
        matmul::matmul_group(x, rows, &mut parts);
    }

    fn add_bias(&self, x: &mut Vec<f32>, rows: usize, bias: &CpuWeight) {
        linear::add_bias(x, rows, &bias.to_f32());
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>) {
        assert_eq!(x.len(), y.len(), "add of buffers of different lengths");
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

    // ---- Training: backward ops, losses, optimiser -------------------------------------------

    fn zero(&self, x: &mut Vec<f32>) {
        x.fill(0.0);
    }

    fn weight_from_buf(&self, name: &str, shape: &[usize], buf: &Vec<f32>) -> Result<CpuWeight> {
        if shape.iter().product::<usize>() != buf.len() {
            return Err(Error::input(format!("{name}: {} values do not fill the shape {shape:?}", buf.len())));
        }
        CpuWeight::new(HostTensor::from_f32(name, shape.to_vec(), buf))
    }

    fn scatter_add_rows(&self, dst: &mut Vec<f32>, width: usize, rows: &[usize], src: &Vec<f32>) {
        for (&r, s) in rows.iter().zip(src.chunks_exact(width)) {
            for (d, v) in dst[r * width..(r + 1) * width].iter_mut().zip(s) {
                *d += v;
            }
        }
    }

    fn rmsnorm_backward(
        &self,
        x: &Vec<f32>,
        rows: usize,
        gain: &CpuWeight,
        eps: f32,
        d_out: &Vec<f32>,
        dx: &mut Vec<f32>,
        d_gain: &mut Vec<f32>,
    ) {
        let g = gain.to_f32();
        let n = rows * g.len();
        norm::rmsnorm_backward(&x[..n], &g, eps, &d_out[..n], &mut dx[..n], d_gain);
    }

    fn rope_backward(&self, dx: &mut Vec<f32>, rows: usize, n_heads: usize, head_dim: usize, cos_sin: &Vec<f32>) {
        rope::rope_backward(dx, rows, n_heads, head_dim, cos_sin);
    }

    fn swiglu_backward(
        &self,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        d_out: &Vec<f32>,
        d_gate: &mut Vec<f32>,
        d_up: &mut Vec<f32>,
    ) {
        activation::swiglu_backward(gate, up, d_out, d_gate, d_up);
    }

    fn matmul_backward(
        &self,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        rows: usize,
        w: &CpuWeight,
        dx: Option<&mut Vec<f32>>,
        dw: Option<&mut Vec<f32>>,
    ) {
        linear::matmul_backward(x, dy, rows, w, dx.map(|v| v.as_mut_slice()), dw.map(|v| v.as_mut_slice()));
    }

    fn bias_backward(&self, dy: &Vec<f32>, rows: usize, d_bias: &mut Vec<f32>) {
        linear::bias_backward(dy, rows, d_bias);
    }

    fn attention_backward(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        shape: AttnShape,
        rows: usize,
        d_out: &Vec<f32>,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
    ) {
        attention::attention_backward(q, k, v, shape, rows, d_out, dq, dk, dv);
    }

    fn soft_cross_entropy(
        &self,
        logits: &Vec<f32>,
        teacher_logits: &Vec<f32>,
        row_weight: &[f32],
        d_logits: &mut Vec<f32>,
    ) -> f32 {
        loss::soft_cross_entropy(logits, teacher_logits, row_weight, d_logits)
    }

    fn smooth_l1(&self, pred: &Vec<f32>, target: &Vec<f32>, row_weight: &[f32], d_pred: &mut Vec<f32>) -> f32 {
        loss::smooth_l1(pred, target, row_weight, d_pred)
    }

    fn clip_by_value(&self, x: &mut Vec<f32>, limit: f32) {
        optim::clip_by_value(x, limit);
    }

    fn adamw(
        &self,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        hp: &crate::backend::AdamW,
        step: u64,
    ) {
        optim::adamw(param, grad, m, v, hp, step);
    }

    // ---- end of the training block -------------------------------------------------------------

    fn kv_write(&self, cache: &mut Vec<f32>, layout: KvLayout, new: &Vec<f32>, rows: usize, start: usize) {
        kv::kv_write(cache, layout, new, rows, start);
    }

    fn top_k_rows(&self, x: &Vec<f32>, rows: usize, width: usize, k: usize) -> Vec<u32> {
        let rows = x[..rows * width].chunks_exact(width.max(1));
        if k == 1 && width > 0 {
            // One scan, no index list: the same pick (`argmax` ranks like `top_k_indices`).
            return rows.map(|row| crate::sampling::argmax(row) as u32).collect();
        }
        rows.flat_map(|row| crate::sampling::top_k_indices(row, k).into_iter().map(|c| c as u32)).collect()
    }

    fn sample_rows(
        &self,
        logits: &Vec<f32>,
        rows: usize,
        width: usize,
        temperature: f32,
        uniforms: &[f64],
    ) -> Vec<u32> {
        use crate::sampling::{process, sample_at, SamplingParams};
        let params = SamplingParams::with_temperature(temperature);
        logits[..rows * width]
            .chunks_exact(width.max(1))
            .zip(uniforms)
            .map(|(row, &u)| sample_at(&process(row, &params), u) as u32)
            .collect()
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

    fn clover_cell(
        &self,
        cell: &CloverCellParams<CpuWeight>,
        n_heads: usize,
        eps: f32,
        x: &Vec<f32>,
        y: &Vec<f32>,
        rows: usize,
        out: &mut Vec<f32>,
    ) {
        clover_cell::clover_cell(cell, n_heads, eps, x, y, rows, out);
    }

    fn clover_cell_backward(
        &self,
        cell: &CloverCellParams<CpuWeight>,
        n_heads: usize,
        eps: f32,
        x: &Vec<f32>,
        y: &Vec<f32>,
        rows: usize,
        d_out: &Vec<f32>,
        dx: &mut Vec<f32>,
        dy: Option<&mut Vec<f32>>,
        grads: &mut CloverCellParams<Vec<f32>>,
    ) {
        let dy = dy.map(|v| v.as_mut_slice());
        clover_cell::clover_cell_backward(cell, n_heads, eps, x, y, rows, d_out, dx, dy, grads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Embedding rows are the table's rows as f32, for every stored type: against the tensor's
    /// own expansion (`HostTensor::to_f32`), in id order, repeats included.
    #[test]
    fn embedding_gathers_the_rows_of_every_stored_type() {
        let (rows, dim) = (5, 64);
        let values: Vec<f32> = (0..rows * dim).map(|i| ((i * 37) % 101) as f32 / 16.0 - 3.0).collect();
        let f32_table = HostTensor::from_f32("e", vec![rows, dim], &values);
        let bf16_bits = values.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
        let tables = [
            f32_table.to_q8_0().unwrap(),
            HostTensor::from_bits("e", crate::weights::DType::BF16, vec![rows, dim], bf16_bits),
            f32_table,
        ];
        let ids = [3u32, 0, 3, 4];
        for table in tables {
            let expanded = table.to_f32();
            let dtype = table.dtype;
            let w = CpuBackend.weight(table).unwrap();
            let mut out = vec![0.0; ids.len() * dim];
            CpuBackend.embedding(&w, &ids, &mut out);
            for (r, &id) in ids.iter().enumerate() {
                let id = id as usize;
                assert_eq!(out[r * dim..][..dim], expanded[id * dim..][..dim], "{dtype:?} row {r} (id {id})");
            }
        }
    }

    /// scatter_add_rows is the adjoint of gather_rows: <gather(x), g> = <x, scatter(g)>, with a
    /// row gathered twice receiving both gradients.
    #[test]
    fn scatter_add_rows_is_the_backward_of_gather_rows() {
        let b = CpuBackend;
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let rows = [2, 0, 2];
        let g = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let gathered = b.gather_rows(&x, 2, &rows);
        let mut dx = vec![0.5; 12];
        b.scatter_add_rows(&mut dx, 2, &rows, &g);
        assert_eq!(dx, [3.5, 4.5, 0.5, 0.5, 6.5, 8.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]);
        let lhs: f32 = gathered.iter().zip(&g).map(|(a, b)| a * b).sum();
        let rhs: f32 = x.iter().zip(&dx).map(|(a, d)| a * (d - 0.5)).sum();
        assert_eq!(lhs, rhs);
    }

    /// Rows are selected independently, k is capped at the width, and the order is the one the
    /// samplers use (descending, ties to the lower column).
    #[test]
    fn top_k_rows_selects_per_row() {
        let x = vec![0.5, 2.0, 2.0, -1.0, /* row 1 */ 3.0, f32::NAN, 1.0, 3.0];
        assert_eq!(CpuBackend.top_k_rows(&x, 2, 4, 3), [1, 2, 0, 0, 3, 2]);
        assert_eq!(CpuBackend.top_k_rows(&x, 2, 4, 1), [1, 0]);
        assert_eq!(CpuBackend.top_k_rows(&x, 2, 4, 9).len(), 8);
        assert!(CpuBackend.top_k_rows(&x, 0, 4, 3).is_empty());
    }

    /// Each row is drawn with its own uniform, as `sample` would draw it from the processed row.
    #[test]
    fn sample_rows_draws_each_row_with_its_uniform() {
        use crate::sampling::{process, sample_at, SamplingParams};
        let x = vec![0.0, 1.0, 2.0, /* row 1 */ 5.0, f32::NAN, 5.0];
        let params = SamplingParams::with_temperature(0.7);
        for u in [0.0, 0.3, 0.5, 0.9, 0.999] {
            let got = CpuBackend.sample_rows(&x, 2, 3, 0.7, &[u, 1.0 - u]);
            let want = [sample_at(&process(&x[..3], &params), u), sample_at(&process(&x[3..], &params), 1.0 - u)];
            assert_eq!(got, want.map(|i| i as u32));
            assert_ne!(got[1], 1, "a NaN logit is never drawn");
        }
    }

    #[test]
    fn weight_from_buf_copies_the_values_and_checks_the_shape() {
        let b = CpuBackend;
        let w = b.weight_from_buf("w", &[2, 3], &vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!((w.matrix_shape(), w.to_f32()), ((2, 3), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let err = b.weight_from_buf("fc.weight", &[2, 3], &vec![0.0; 5]).expect_err("5 values for 6");
        assert!(err.to_string().contains("fc.weight"), "{err}");
    }
}
