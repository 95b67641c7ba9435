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
use tree_keys::{tree_key_positions, ATT_CHUNK};
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
        let cfg: LaunchConfig = $cfg;
        if cfg.grid_dim.0 > 0 && cfg.grid_dim.1 > 0 {
            let mut builder = dev.stream.launch_builder(dev.function($name));
            $( builder.arg($arg); )*
            // SAFETY: each call site passes buffers at least as long as the sizes it passes, in
            // the order and types of the kernel's signature in kernels/*.cu.
            unsafe { builder.launch(cfg) }.unwrap_or_else(|e| panic!("CUDA backend: kernel {}: {e}", $name));
        }
    }};
}

impl CudaBackend {
    fn upload_u32(&self, v: &[u32]) -> CudaSlice<u32> {
        // A zero-byte allocation is an error to the driver; an empty list gets one unused slot.
        let v = if v.is_empty() { &[0][..] } else { v };
        self.dev.stream.clone_htod(v).expect("CUDA backend: upload")
    }

    fn alloc(&self, len: usize) -> CudaSlice<f32> {
        self.dev.stream.alloc_zeros::<f32>(len.max(1)).expect("CUDA backend: allocation")
    }

    /// A loss kernel of `(grad, row_loss, input, target, row_weight, rows, width)` (loss.cu): one
    /// block of `threads` per row of `row_weight`, each writing its row's gradient and weighted
    /// loss; returns the rows' sum.
    fn weighted_row_loss(
        &self,
        kernel: &'static str,
        threads: u32,
        input: &CudaSlice<f32>,
        target: &CudaSlice<f32>,
        row_weight: &[f32],
        grad: &mut CudaSlice<f32>,
    ) -> f32 {
        let rows = row_weight.len();
        if rows == 0 {
            return 0.0;
        }
        let width = input.len() / rows;
        assert!(
            width > 0 && input.len() == rows * width && target.len() == input.len() && grad.len() == input.len(),
            "{kernel}: input, target and gradient are not all {rows} rows of one width"
        );
        let weights = self.upload(row_weight);
        let mut row_loss = self.alloc(rows);
        let (r, width) = (int(rows), int(width));
        launch!(&self.dev, kernel, grid(rows, 1, threads); grad, &mut row_loss, input, target, &weights, &r, &width);
        let host = self.dev.stream.clone_dtoh(&row_loss).expect("CUDA backend: download");
        // Summed in f64 and rounded once, as cpu/loss.rs sums its rows.
        host[..rows].iter().map(|&l| f64::from(l)).sum::<f64>() as f32
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
        let mut out = self.alloc(rows.len() * width);
        let idx = self.upload_u32(&rows.iter().map(|&r| r as u32).collect::<Vec<_>>());
        let (n, w) = (int(rows.len()), int(width));
        launch!(&self.dev, "gather_rows", grid(rows.len(), 1, 256); &mut out, buf, &idx, &n, &w);
        out
    }

    fn embedding(&self, table: &CudaWeight, ids: &[u32], out: &mut CudaSlice<f32>) {
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
        let idx = self.upload_u32(&rows.iter().map(|&r| r as u32).collect::<Vec<_>>());
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
        let n = int(gate.len());
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
        // The kernel stages a row of q and dO in shared arrays of 128 (ATT_MAX_DIM), as the forward.
        assert!(shape.head_dim <= 128, "CUDA attention backward: head_dim {} > 128", shape.head_dim);
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let (r, h, kvh, d) = (int(rows), int(shape.n_heads), int(shape.n_kv_heads), int(shape.head_dim));
        launch!(&self.dev, "attention_backward", grid(rows, shape.n_heads, 128);
            dq, dk, dv, q, k, v, d_out, &r, &h, &kvh, &d, &scale);
    }

    fn soft_cross_entropy(
        &self,
        logits: &CudaSlice<f32>,
        teacher_logits: &CudaSlice<f32>,
        row_weight: &[f32],
        d_logits: &mut CudaSlice<f32>,
    ) -> f32 {
        self.weighted_row_loss("soft_cross_entropy", 1024, logits, teacher_logits, row_weight, d_logits)
    }

    fn smooth_l1(
        &self,
        pred: &CudaSlice<f32>,
        target: &CudaSlice<f32>,
        row_weight: &[f32],
        d_pred: &mut CudaSlice<f32>,
    ) -> f32 {
        self.weighted_row_loss("smooth_l1", 256, pred, target, row_weight, d_pred)
    }

    fn clip_by_value(&self, x: &mut CudaSlice<f32>, limit: f32) {
        let n = int(x.len());
        launch!(&self.dev, "clip_by_value", linear(x.len()); x, &limit, &n);
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
        assert!(step >= 1, "adamw: steps count from 1");
        // The two bias-corrected scalars formed in f64 and rounded once, as cpu/optim.rs does.
        let t = step as f64;
        let step_size = (hp.lr as f64 / (1.0 - (hp.beta1 as f64).powf(t))) as f32;
        let bc2_sqrt = (1.0 - (hp.beta2 as f64).powf(t)).sqrt() as f32;
        let n = int(param.len());
        launch!(&self.dev, "adamw", linear(param.len());
            param, grad, m, v, &hp.lr, &hp.beta1, &hp.beta2, &hp.eps, &hp.weight_decay, &step_size, &bc2_sqrt, &n);
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
        assert!(shape.head_dim <= 128, "CUDA attention: head_dim {} > 128", shape.head_dim);
        // As the CPU backend (which panics on these too): the kernel would read out of bounds.
        assert!(
            past + rows <= layout.capacity,
            "CUDA attention: {past} + {rows} rows beyond the cache's {}",
            layout.capacity
        );
        assert!(
            shape.n_kv_heads > 0 && shape.n_heads.is_multiple_of(shape.n_kv_heads),
            "CUDA attention: {} query heads in groups of {} KV heads",
            shape.n_heads,
            shape.n_kv_heads
        );
        if rows == 0 {
            return;
        }
        let _range = nvtx::Range::new(c"attention");
        // attention.cu: ATT_CHUNK positions and ATT_QUERIES queries per block of the first pass.
        const QUERIES: usize = 16;
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let n_chunks = (past + rows).div_ceil(ATT_CHUNK);
        let group = shape.n_heads / shape.n_kv_heads;
        let queries = rows * shape.n_heads;
        // SAFETY: attention_partial writes every (query, chunk) slot of both before the combine
        // pass reads them, so they need no zeroing (a memset of megabytes per layer otherwise).
        let (mut part_acc, mut part_ml) = unsafe {
            let stream = &self.dev.stream;
            let alloc = |n: usize| stream.alloc::<f32>(n.max(1)).expect("CUDA backend: allocation");
            (alloc(queries * n_chunks * shape.head_dim), alloc(queries * n_chunks * 2))
        };
        let cfg = LaunchConfig {
            grid_dim: ((rows * group).div_ceil(QUERIES) as u32, n_chunks as u32, shape.n_kv_heads as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (r, p, nc) = (int(rows), int(past), int(n_chunks));
        let (h, kvh, d, cap) = (int(shape.n_heads), int(shape.n_kv_heads), int(shape.head_dim), int(layout.capacity));
        match mask {
            AttnMask::Causal => {
                let (null, first, width) = (0u64, 0i32, 0i32);
                launch!(&self.dev, "attention_partial", cfg; &mut part_acc, &mut part_ml, q, k_cache, v_cache,
                    &null, &null, &r, &p, &h, &kvh, &d, &cap, &scale, &first, &width, &nc);
            }
            AttnMask::Tree { bits, first_key } => {
                let width = past + rows - first_key;
                let bits = &bits[..rows * width];
                let key_pos = self.tree_key_pos.get(&self.dev.stream, &tree_key_positions(bits, rows, past, first_key));
                let bits = self.tree_mask.get(&self.dev.stream, bits);
                let (first, w) = (int(first_key), int(width));
                launch!(&self.dev, "attention_partial", cfg; &mut part_acc, &mut part_ml, q, k_cache, v_cache,
                    &*bits, &*key_pos, &r, &p, &h, &kvh, &d, &cap, &scale, &first, &w, &nc);
            }
        }
        launch!(&self.dev, "attention_combine", grid(rows, shape.n_heads, 128); out, &part_acc, &part_ml, &h, &d, &nc);
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
        let _range = nvtx::Range::new(c"clover cell");
        assert!(
            n_heads > 0 && cell.gain.cols.is_multiple_of(n_heads),
            "Clover cell: width {} in {n_heads} heads",
            cell.gain.cols
        );
        let p = self.cell_projections(cell, eps, x, y, rows);
        let (r, hid, heads) = (int(rows), int(cell.gain.cols), int(n_heads));
        launch!(&self.dev, "clover_combine", grid(rows, n_heads, 128); out, x, &p.q, &p.k, &p.v, &r, &hid, &heads, &eps);
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
        let _range = nvtx::Range::new(c"clover cell backward");
        assert!(
            n_heads > 0 && cell.gain.cols.is_multiple_of(n_heads),
            "Clover cell: width {} in {n_heads} heads",
            cell.gain.cols
        );
        let h = cell.gain.cols;
        let p = self.cell_projections(cell, eps, x, y, rows);
        let (mut dq, mut dk, mut dv) = (self.alloc(rows * h), self.alloc(rows * h), self.alloc(rows * h));
        let (r, hid, heads) = (int(rows), int(h), int(n_heads));
        launch!(&self.dev, "clover_cell_grads", grid(rows, n_heads, 128);
            &mut dq, &mut dk, &mut dv, &p.q, &p.k, &p.v, d_out, &r, &hid, &heads, &eps);
        // The residual.
        let n = int(rows * h);
        launch!(&self.dev, "add", linear(rows * h); &mut *dx, d_out, &n);
        self.bias_backward(&dq, rows, &mut grads.bq);
        self.bias_backward(&dk, rows, &mut grads.bk);
        self.bias_backward(&dv, rows, &mut grads.bv);
        gemm::matmul_weight_grad(&self.dev, &p.normed, &dq, rows, h, h, &mut grads.wq);
        gemm::matmul_weight_grad(&self.dev, y, &dk, rows, h, h, &mut grads.wk);
        gemm::matmul_weight_grad(&self.dev, y, &dv, rows, h, h, &mut grads.wv);
        if let Some(dy) = dy {
            gemm::matmul_input_grad(&self.dev, &dk, rows, &cell.wk, dy);
            gemm::matmul_input_grad(&self.dev, &dv, rows, &cell.wv, dy);
        }
        let mut d_normed = self.alloc(rows * h);
        gemm::matmul_input_grad(&self.dev, &dq, rows, &cell.wq, &mut d_normed);
        self.rmsnorm_backward(x, rows, &cell.gain, eps, &d_normed, dx, &mut grads.gain);
    }
}

/// What both directions of the Clover cell compute from its inputs (clover2.md §3).
struct CellProjections {
    normed: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
}

impl CudaBackend {
    fn cell_projections(
        &self,
        cell: &CloverCellParams<CudaWeight>,
        eps: f32,
        x: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        rows: usize,
    ) -> CellProjections {
        let h = cell.gain.cols;
        let mut normed = self.alloc(rows * h);
        self.rmsnorm(x, rows, &cell.gain, eps, &mut normed);
        let project = |input: &CudaSlice<f32>, w: &CudaWeight, b: &CudaWeight| {
            let mut out = self.alloc(rows * h);
            self.matmul(input, rows, w, &mut out);
            self.add_bias(&mut out, rows, b);
            out
        };
        let q = project(&normed, &cell.wq, &cell.bq);
        let k = project(y, &cell.wk, &cell.bk);
        let v = project(y, &cell.wv, &cell.bv);
        CellProjections { normed, q, k, v }
    }
}
