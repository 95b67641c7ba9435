//! The CUDA backend: the op set of `Backend` on one NVIDIA GPU, with the engine's own kernels
//! (`kernels/*.cu`, compiled and embedded by build.rs) and cuBLAS for every GEMM (`gemm.rs`).
//! It is checked op by op against the CPU backend (`tests/cuda_parity.rs`).
//!
//! Everything runs in order on one stream; `download` waits for it. The trait's ops cannot
//! return errors, so a failing CUDA call (out of memory, a faulted kernel) panics with the call's
//! name: those are device failures, not bad input, which `CudaBackend::new` and the loaders
//! report as errors before any op runs.

mod device;
mod gemm;
mod reused;
mod tree_keys;
mod weight;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{AdamW, AttnMask, AttnShape, Backend, CloverCellParams, KvLayout};
use crate::error::Result;
use crate::nvtx;
use crate::weights::HostTensor;
use device::Device;
pub use device::{built_with_kernels, check as check_device};
use reused::Reused;
pub use weight::CudaWeight;
use weight::WeightData;

pub struct CudaBackend {
    dev: Device,
    tree_mask: Reused<u8>,
    tree_key_pos: Reused<i32>,
    kv_moves: Reused<i32>,
}

impl CudaBackend {
    /// GPU `ordinal` (`cuda:N`), or an error naming what is missing: kernels in this build, the
    /// driver or cuBLAS library, the device.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(CudaBackend {
            dev: Device::open(ordinal)?,
            tree_mask: Reused::new(),
            tree_key_pos: Reused::new(),
            kv_moves: Reused::new(),
        })
    }

    /// dst ← src on the device (the copy-bandwidth reference of the kernel benchmarks).
    pub fn copy(&self, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) {
        self.dev.stream.memcpy_dtod(src, dst).expect("CUDA backend: copy");
    }
}

fn int(n: usize) -> i32 {
    i32::try_from(n).unwrap_or_else(|_| panic!("CUDA backend: size {n} exceeds the 32-bit range of the kernels"))
}

/// 256 threads per block, enough blocks for `n` items.
fn linear(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// An `x × y` grid of blocks of `threads`.
fn grid(x: usize, y: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (x as u32, y as u32, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Launches kernel `$name` with `$cfg` and the arguments in the kernel's order; an empty grid
/// (no rows) launches nothing.
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let dev: &Device = $dev;
        let cfg: cudarc::driver::LaunchConfig = $cfg;
        if cfg.grid_dim.0 > 0 && cfg.grid_dim.1 > 0 {
            let mut builder = dev.stream.launch_builder(dev.function($name));
            $( builder.arg($arg); )*
            // SAFETY: each call site passes buffers at least as long as the sizes it passes, in
            // the order and types of the kernel's signature in kernels/*.cu.
            unsafe { builder.launch(cfg) }.unwrap_or_else(|e| panic!("CUDA backend: kernel {}: {e}", $name));
        }
    }};
}

// After `launch!`: the op families below use it.
mod attention;
mod clover_cell;
mod loss;

impl CudaBackend {
    fn upload_u32(&self, v: &[u32]) -> CudaSlice<u32> {
        // A zero-byte allocation is an error to the driver; an empty list gets one unused slot.
        let v = if v.is_empty() { &[0][..] } else { v };
        self.dev.stream.clone_htod(v).expect("CUDA backend: upload")
    }

    /// Row indices for a gather or scatter over `limit` rows, checked (`check_rows`) and uploaded.
    fn row_indices(&self, op: &str, rows: &[usize], limit: usize) -> CudaSlice<u32> {
        check_rows(op, rows.iter().copied(), limit);
        self.upload_u32(&rows.iter().map(|&r| r as u32).collect::<Vec<_>>())
    }

    fn alloc(&self, len: usize) -> CudaSlice<f32> {
        self.dev.stream.alloc_zeros::<f32>(len.max(1)).expect("CUDA backend: allocation")
    }
}

/// Row indices a kernel will follow, checked on the host first: on the CPU an index past the end
/// panics at the slice, on the GPU it would read (or, scattering, write) another allocation.
fn check_rows(op: &str, rows: impl IntoIterator<Item = usize>, limit: usize) {
    if let Some(bad) = rows.into_iter().find(|&r| r >= limit) {
        panic!("CUDA backend: {op}: row {bad} of {limit}");
    }
}

impl Backend for CudaBackend {
    type Buf = CudaSlice<f32>;
    type Weight = CudaWeight;

    fn name(&self) -> String {
        format!("cuda:{}", self.dev.ordinal)
    }

    fn row_exact_matmul_rows(&self) -> Option<usize> {
        Some(gemm::GEMV_MAX_ROWS)
    }

    fn max_head_dim(&self) -> Option<usize> {
        Some(attention::MAX_HEAD_DIM)
    }

    fn synchronize(&self) {
        self.dev.stream.synchronize().expect("CUDA backend: synchronize");
    }

    fn weight(&self, tensor: HostTensor) -> Result<CudaWeight> {
        CudaWeight::upload(&self.dev.stream, &tensor)
    }

    fn zeros(&self, len: usize) -> CudaSlice<f32> {
        self.alloc(len)
    }

    fn upload(&self, data: &[f32]) -> CudaSlice<f32> {
        if data.is_empty() {
            return self.alloc(0);
        }
        self.dev.stream.clone_htod(data).expect("CUDA backend: upload")
    }

    fn download(&self, buf: &CudaSlice<f32>) -> Vec<f32> {
        self.dev.stream.clone_dtoh(buf).expect("CUDA backend: download")
    }

    fn slice_rows(&self, buf: &CudaSlice<f32>, width: usize, start: usize, rows: usize) -> CudaSlice<f32> {
        let mut out = self.alloc(rows * width);
        if rows * width > 0 {
            let src = buf.slice(start * width..(start + rows) * width);
            self.dev.stream.memcpy_dtod(&src, &mut out).expect("CUDA backend: copy");
        }
        out
    }

    fn gather_rows(&self, buf: &CudaSlice<f32>, width: usize, rows: &[usize]) -> CudaSlice<f32> {
        let idx = self.row_indices("gather_rows", rows, buf.len() / width.max(1));
        let mut out = self.alloc(rows.len() * width);
        let (n, w) = (int(rows.len()), int(width));
        launch!(&self.dev, "gather_rows", grid(rows.len(), 1, 256); &mut out, buf, &idx, &n, &w);
        out
    }

    fn embedding(&self, table: &CudaWeight, ids: &[u32], out: &mut CudaSlice<f32>) {
        check_rows("embedding", ids.iter().map(|&id| id as usize), table.rows);
        assert!(out.len() >= ids.len() * table.cols, "CUDA backend: embedding: output smaller than {} rows", ids.len());
        let idx = self.upload_u32(ids);
        let (rows, width) = (int(ids.len()), int(table.cols));
        let cfg = grid(ids.len(), 1, 256);
        match &table.data {
            WeightData::F32(t) => launch!(&self.dev, "embedding_f32", cfg; out, t, &idx, &rows, &width),
            WeightData::Bf16(t) => launch!(&self.dev, "embedding_bf16", cfg; out, t, &idx, &rows, &width),
        }
    }

    fn quantize_q8_0(&self, w: &CudaWeight) -> Result<CudaWeight> {
        Err(crate::error::Error::input(format!(
            "CUDA backend: {} cannot be kept as Q8_0 (no Q8_0 GEMM here; drop --draft-weights q8_0)",
            w.name
        )))
    }

    fn gather_weight_rows(&self, w: &CudaWeight, ids: &[u32], name: &str) -> Result<CudaWeight> {
        // An error, as the CPU backend's (cpu/weight.rs): the ids come from a head's files.
        if let Some(&r) = ids.iter().find(|&&r| r as usize >= w.rows) {
            return Err(crate::error::Error::input(format!(
                "{name}: row {r} of {} is past its {} rows",
                w.name, w.rows
            )));
        }
        let idx = self.upload_u32(ids);
        let (n, width) = (int(ids.len()), int(w.cols));
        let cfg = grid(ids.len(), 1, 256);
        let data = match &w.data {
            WeightData::F32(t) => {
                let mut out = self.alloc(ids.len() * w.cols);
                launch!(&self.dev, "gather_rows", cfg; &mut out, t, &idx, &n, &width);
                WeightData::F32(out)
            }
            WeightData::Bf16(t) => {
                let mut out =
                    self.dev.stream.alloc_zeros::<u16>((ids.len() * w.cols).max(1)).expect("CUDA backend: allocation");
                launch!(&self.dev, "gather_rows_u16", cfg; &mut out, t, &idx, &n, &width);
                WeightData::Bf16(out)
            }
        };
        Ok(CudaWeight { name: name.to_string(), data, rows: ids.len(), cols: w.cols })
    }

    fn matmul(&self, x: &CudaSlice<f32>, rows: usize, w: &CudaWeight, out: &mut CudaSlice<f32>) {
        nvtx::scoped(c"gemm", || gemm::matmul(&self.dev, x, rows, w, out));
    }

    fn add_bias(&self, x: &mut CudaSlice<f32>, rows: usize, bias: &CudaWeight) {
        let (r, w) = (int(rows), int(bias.cols));
        launch!(&self.dev, "add_bias", linear(rows * bias.cols); x, bias.f32(), &r, &w);
    }

    fn add(&self, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>) {
        assert_eq!(x.len(), y.len(), "CUDA backend: add of buffers of different lengths");
        let n = int(x.len());
        launch!(&self.dev, "add", linear(x.len()); x, y, &n);
    }

    fn rmsnorm(&self, x: &CudaSlice<f32>, rows: usize, gain: &CudaWeight, eps: f32, out: &mut CudaSlice<f32>) {
        let (r, w) = (int(rows), int(gain.cols));
        launch!(&self.dev, "rmsnorm", grid(rows, 1, 256); out, x, gain.f32(), &r, &w, &eps);
    }

    fn rope(&self, x: &mut CudaSlice<f32>, rows: usize, n_heads: usize, head_dim: usize, cos_sin: &CudaSlice<f32>) {
        let (r, h, d) = (int(rows), int(n_heads), int(head_dim));
        launch!(&self.dev, "rope", grid(rows, n_heads, 64); x, cos_sin, &r, &h, &d);
    }

    fn swiglu(&self, gate: &CudaSlice<f32>, up: &CudaSlice<f32>, out: &mut CudaSlice<f32>) {
        assert!(
            gate.len() == up.len() && up.len() == out.len(),
            "CUDA backend: swiglu of buffers of different lengths"
        );
        let n = int(gate.len());
        launch!(&self.dev, "swiglu", linear(gate.len()); out, gate, up, &n);
    }

    fn zero(&self, x: &mut CudaSlice<f32>) {
        self.dev.stream.memset_zeros(x).expect("CUDA backend: memset");
    }

    fn weight_from_buf(&self, name: &str, shape: &[usize], buf: &CudaSlice<f32>) -> Result<CudaWeight> {
        let (rows, cols) = match shape {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => {
                return Err(crate::error::Error::input(format!("weight {name}: expected 1 or 2 dims, got {other:?}")))
            }
        };
        if rows * cols != buf.len() {
            return Err(crate::error::Error::input(format!(
                "weight {name}: shape {shape:?} does not match a buffer of {} values",
                buf.len()
            )));
        }
        let mut copy = self.alloc(buf.len());
        self.dev.stream.memcpy_dtod(buf, &mut copy).expect("CUDA backend: copy");
        Ok(CudaWeight { name: name.to_string(), data: WeightData::F32(copy), rows, cols })
    }

    fn scatter_add_rows(&self, dst: &mut CudaSlice<f32>, width: usize, rows: &[usize], src: &CudaSlice<f32>) {
        let idx = self.row_indices("scatter_add_rows", rows, dst.len() / width.max(1));
        assert!(
            src.len() >= rows.len() * width,
            "CUDA backend: scatter_add_rows: source smaller than {} rows",
            rows.len()
        );
        let (n, w) = (int(rows.len()), int(width));
        launch!(&self.dev, "scatter_add_rows", grid(rows.len(), 1, 256); dst, src, &idx, &n, &w);
    }

    fn rmsnorm_backward(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        gain: &CudaWeight,
        eps: f32,
        d_out: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        d_gain: &mut CudaSlice<f32>,
    ) {
        let (r, w) = (int(rows), int(gain.cols));
        launch!(&self.dev, "rmsnorm_backward", grid(rows, 1, 256); dx, d_gain, x, gain.f32(), d_out, &r, &w, &eps);
    }

    fn rope_backward(
        &self,
        dx: &mut CudaSlice<f32>,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        cos_sin: &CudaSlice<f32>,
    ) {
        let (r, h, d) = (int(rows), int(n_heads), int(head_dim));
        launch!(&self.dev, "rope_backward", grid(rows, n_heads, 64); dx, cos_sin, &r, &h, &d);
    }

    fn swiglu_backward(
        &self,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        d_out: &CudaSlice<f32>,
        d_gate: &mut CudaSlice<f32>,
        d_up: &mut CudaSlice<f32>,
    ) {
        let n = gate.len();
        assert!(
            [up.len(), d_out.len(), d_gate.len(), d_up.len()].iter().all(|&len| len == n),
            "CUDA backend: swiglu_backward of buffers of different lengths"
        );
        let n = int(n);
        launch!(&self.dev, "swiglu_backward", linear(gate.len()); d_gate, d_up, gate, up, d_out, &n);
    }

    fn matmul_backward(
        &self,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        rows: usize,
        w: &CudaWeight,
        dx: Option<&mut CudaSlice<f32>>,
        dw: Option<&mut CudaSlice<f32>>,
    ) {
        nvtx::scoped(c"gemm backward", || {
            if let Some(dx) = dx {
                gemm::matmul_input_grad(&self.dev, dy, rows, w, dx);
            }
            if let Some(dw) = dw {
                gemm::matmul_weight_grad(&self.dev, x, dy, rows, w.rows, w.cols, dw);
            }
        });
    }

    fn bias_backward(&self, dy: &CudaSlice<f32>, rows: usize, d_bias: &mut CudaSlice<f32>) {
        let width = d_bias.len();
        let (r, w) = (int(rows), int(width));
        launch!(&self.dev, "bias_backward", linear(width); d_bias, dy, &r, &w);
    }

    fn attention_backward(
        &self,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        shape: AttnShape,
        rows: usize,
        d_out: &CudaSlice<f32>,
        dq: &mut CudaSlice<f32>,
        dk: &mut CudaSlice<f32>,
        dv: &mut CudaSlice<f32>,
    ) {
        attention::backward(self, q, k, v, shape, rows, d_out, dq, dk, dv);
    }

    fn soft_cross_entropy(
        &self,
        logits: &CudaSlice<f32>,
        teacher_logits: &CudaSlice<f32>,
        row_weight: &[f32],
        d_logits: &mut CudaSlice<f32>,
    ) -> f32 {
        loss::soft_cross_entropy(self, logits, teacher_logits, row_weight, d_logits)
    }

    fn smooth_l1(
        &self,
        pred: &CudaSlice<f32>,
        target: &CudaSlice<f32>,
        row_weight: &[f32],
        d_pred: &mut CudaSlice<f32>,
    ) -> f32 {
        loss::smooth_l1(self, pred, target, row_weight, d_pred)
    }

    fn clip_by_value(&self, x: &mut CudaSlice<f32>, limit: f32) {
        loss::clip_by_value(self, x, limit);
    }

    fn adamw(
        &self,
        param: &mut CudaSlice<f32>,
        grad: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        hp: &AdamW,
        step: u64,
    ) {
        loss::adamw(self, param, grad, m, v, hp, step);
    }

    fn kv_write(&self, cache: &mut CudaSlice<f32>, layout: KvLayout, new: &CudaSlice<f32>, rows: usize, start: usize) {
        assert!(start + rows <= layout.capacity, "kv_write past the cache capacity");
        let (r, s) = (int(rows), int(start));
        let (h, cap, d) = (int(layout.n_kv_heads), int(layout.capacity), int(layout.head_dim));
        launch!(&self.dev, "kv_write", grid(rows, layout.n_kv_heads, 128); cache, new, &r, &s, &h, &cap, &d);
    }

    fn top_k_rows(&self, x: &CudaSlice<f32>, rows: usize, width: usize, k: usize) -> Vec<u32> {
        let k = k.min(width);
        if rows == 0 || k == 0 {
            return Vec::new();
        }
        assert!(x.len() >= rows * width, "CUDA backend: top_k_rows: {rows} rows of {width} in {} values", x.len());
        let mut out = self.dev.stream.alloc_zeros::<u32>(rows * k).expect("CUDA backend: allocation");
        let (r, w, kk) = (int(rows), int(width), int(k));
        launch!(&self.dev, "top_k_rows", grid(rows, 1, 256); &mut out, x, &r, &w, &kk);
        self.dev.stream.clone_dtoh(&out).expect("CUDA backend: download")
    }

    fn sample_rows(
        &self,
        logits: &CudaSlice<f32>,
        rows: usize,
        width: usize,
        temperature: f32,
        uniforms: &[f64],
    ) -> Vec<u32> {
        assert!(uniforms.len() >= rows, "sample_rows: one uniform per row");
        // The kernel scales by 1 / temperature; greedy rows are `top_k_rows` with k = 1.
        assert!(temperature > 0.0, "sample_rows: temperature {temperature} is not above 0");
        if rows == 0 || width == 0 {
            return vec![0; rows];
        }
        let u = self.dev.stream.clone_htod(&uniforms[..rows]).expect("CUDA backend: upload");
        let mut out = self.dev.stream.alloc_zeros::<u32>(rows).expect("CUDA backend: allocation");
        let (r, w) = (int(rows), int(width));
        // 256 threads: the kernel's chunk arrays are sized for it.
        launch!(&self.dev, "sample_rows", grid(rows, 1, 256); &mut out, logits, &u, &r, &w, &temperature);
        self.dev.stream.clone_dtoh(&out).expect("CUDA backend: download")
    }

    fn kv_move(&self, cache: &mut CudaSlice<f32>, layout: KvLayout, moves: &[(usize, usize)]) {
        if moves.is_empty() {
            return;
        }
        check_rows("kv_move", moves.iter().flat_map(|&(from, to)| [from, to]), layout.capacity);
        let pairs: Vec<i32> = moves.iter().flat_map(|&(from, to)| [int(from), int(to)]).collect();
        let pairs = self.kv_moves.get(&self.dev.stream, &pairs);
        let n = int(moves.len());
        let (h, cap, d) = (int(layout.n_kv_heads), int(layout.capacity), int(layout.head_dim));
        launch!(&self.dev, "kv_move", grid(layout.n_kv_heads, 1, 128); cache, &*pairs, &n, &h, &cap, &d);
    }

    fn attention(
        &self,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<f32>,
        v_cache: &CudaSlice<f32>,
        layout: KvLayout,
        shape: AttnShape,
        rows: usize,
        past: usize,
        mask: AttnMask,
        out: &mut CudaSlice<f32>,
    ) {
        attention::forward(self, q, k_cache, v_cache, layout, shape, rows, past, mask, out);
    }

    fn clover_cell(
        &self,
        cell: &CloverCellParams<CudaWeight>,
        n_heads: usize,
        eps: f32,
        x: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        rows: usize,
        out: &mut CudaSlice<f32>,
    ) {
        clover_cell::forward(self, cell, n_heads, eps, x, y, rows, out);
    }

    fn clover_cell_backward(
        &self,
        cell: &CloverCellParams<CudaWeight>,
        n_heads: usize,
        eps: f32,
        x: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        rows: usize,
        d_out: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        dy: Option<&mut CudaSlice<f32>>,
        grads: &mut CloverCellParams<CudaSlice<f32>>,
    ) {
        clover_cell::backward(self, cell, n_heads, eps, x, y, rows, d_out, dx, dy, grads);
    }
}
