//! GEMMs. Products of at most `GEMV_MAX_ROWS` rows with a weight (decoding, tree verification)
//! run on the engine's own kernel (kernels/gemv.cu): each output is summed in an order that
//! depends on k alone, so a row's bits do not depend on how many rows the call has, which keeps
//! speculative greedy output equal to plain greedy output (cuBLAS picks its kernel by shape).
//!
//! Every other GEMM on cuBLAS (`cublasGemmEx`, f32 accumulation). Row-major `[r, c]` buffers are
//! column-major `c × r` matrices to cuBLAS, so `y = x · wᵀ` (x `[rows, k]`, w `[n, k]`) is the
//! column-major `Y (n × rows) = Wᵀ · X` with W the `k × n` view of w: op(A) = T on w, op(B) = N on x.
//! cuBLAS multiplies bf16 weights only by bf16 inputs, so the f32 activations go in as two bf16
//! parts, x ≈ hi + lo (`f32_split_bf16`), in two products summed in the output: about 2⁻¹⁶ of
//! each input's size is lost instead of the 2⁻⁹ of one rounding, for twice the (prefill and
//! training) GEMM time; the CPU multiplies the f32 activations themselves. f32 weights multiply
//! f32 inputs; the output is f32 either way.

use std::ffi::c_void;

use cudarc::cublas::result::gemm_ex;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::device::Device;
use super::weight::{CudaWeight, WeightData};
use super::{int, linear};

/// One column-major `C = α·op(A)·op(B) + β·C` with f32 α, β and accumulation.
struct Gemm {
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    beta: f32,
    dtype: cudaDataType,
}

fn op(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl Gemm {
    /// # Safety
    /// `a`, `b`, `c` are device pointers to matrices of the shapes and leading dimensions given,
    /// `a` and `b` of `self.dtype`, `c` f32, all valid until the stream has run the call.
    unsafe fn run(&self, dev: &Device, a: u64, b: u64, c: u64) {
        // The raw cuBLAS call does not make the context current as cudarc's safe calls do; on
        // another thread, or for cuda:N with N > 0, it would otherwise run in the wrong one.
        dev.stream.context().bind_to_thread().expect("CUDA backend: binding the context");
        let (alpha, beta) = (1.0f32, self.beta);
        gemm_ex(
            *dev.blas.handle(),
            op(self.trans_a),
            op(self.trans_b),
            int(self.m),
            int(self.n),
            int(self.k),
            (&alpha as *const f32).cast::<c_void>(),
            a as *const c_void,
            self.dtype,
            int(self.lda),
            b as *const c_void,
            self.dtype,
            int(self.ldb),
            (&beta as *const f32).cast::<c_void>(),
            c as *mut c_void,
            cudaDataType::CUDA_R_32F,
            int(self.ldc),
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .unwrap_or_else(|e| panic!("CUDA backend: cublasGemmEx {}×{}×{}: {e}", self.m, self.n, self.k));
    }
}

/// x as two bf16 parts (raw bits), hi + lo ≈ x, for products with bf16 weights.
fn split_bf16(dev: &Device, x: &CudaSlice<f32>, len: usize) -> (CudaSlice<u16>, CudaSlice<u16>) {
    // SAFETY: the kernel below writes all `len` values of both before any GEMM reads them.
    let alloc = || unsafe { dev.stream.alloc::<u16>(len.max(1)) }.expect("CUDA backend: allocating a bf16 copy");
    let (mut hi, mut lo) = (alloc(), alloc());
    let n = int(len);
    let mut b = dev.stream.launch_builder(dev.function("f32_split_bf16"));
    b.arg(&mut hi).arg(&mut lo).arg(x).arg(&n);
    // SAFETY: the kernel reads n floats of x and writes n values of hi and lo, all at least that long.
    // len ≥ 1 where called (an empty grid would be a launch error).
    unsafe { b.launch(linear(len)) }.expect("CUDA backend: f32_split_bf16");
    (hi, lo)
}

/// `g` with A = the weight and B = `input` (`len` values): in the weight's type, so bf16 weights
/// take the input's two bf16 parts, the second product added to the first.
fn with_weight(
    dev: &Device,
    g: impl Fn(cudaDataType) -> Gemm,
    w: &CudaWeight,
    input: &CudaSlice<f32>,
    len: usize,
    out: &mut CudaSlice<f32>,
) {
    let stream = &dev.stream;
    let (c, _rc) = out.device_ptr_mut(stream);
    match &w.data {
        WeightData::F32(wd) => {
            let (a, _ra) = wd.device_ptr(stream);
            let (b, _rb) = input.device_ptr(stream);
            // SAFETY: the callers check the shapes; the guards keep the buffers' events in order.
            unsafe { g(cudaDataType::CUDA_R_32F).run(dev, a, b, c) }
        }
        WeightData::Bf16(wd) => {
            let (hi, lo) = split_bf16(dev, input, len);
            let (a, _ra) = wd.device_ptr(stream);
            let (b_hi, _rh) = hi.device_ptr(stream);
            let (b_lo, _rl) = lo.device_ptr(stream);
            let first = g(cudaDataType::CUDA_R_16BF);
            let second = Gemm { beta: 1.0, ..g(cudaDataType::CUDA_R_16BF) };
            // SAFETY: as above; both parts have the input's shape.
            unsafe {
                first.run(dev, a, b_hi, c);
                second.run(dev, a, b_lo, c);
            }
        }
    }
}

/// Products of at most this many rows go through `gemv_rows` (a 64-node tree verifies 64 rows);
/// longer ones (prefill of longer prompts, training) through cuBLAS. Plain and speculative
/// decoding prefill a prompt with the same call, so only the per-step products need the rule.
pub const GEMV_MAX_ROWS: usize = 64;

/// Weight rows per block of `gemv_rows_*`: its GEMV_WARPS (8) warps of GEMV_COLS (4) rows each.
const GEMV_COLS_PER_BLOCK: usize = 32;

/// out[rows, n] = x[rows, k] · wᵀ on kernels/gemv.cu, f32 inputs.
fn gemv_rows(dev: &Device, x: &CudaSlice<f32>, rows: usize, w: &CudaWeight, out: &mut CudaSlice<f32>) {
    let (m, n, k) = (int(rows), int(w.rows), int(w.cols));
    let cfg = LaunchConfig {
        grid_dim: (w.rows.div_ceil(GEMV_COLS_PER_BLOCK) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let name = match &w.data {
        WeightData::F32(_) => "gemv_rows_f32",
        WeightData::Bf16(_) => "gemv_rows_bf16",
    };
    let mut b = dev.stream.launch_builder(dev.function(name));
    b.arg(&mut *out).arg(x);
    match &w.data {
        WeightData::F32(wd) => b.arg(wd),
        WeightData::Bf16(wd) => b.arg(wd),
    };
    b.arg(&m).arg(&n).arg(&k);
    // SAFETY: x holds rows·k values, out rows·n (checked by `matmul`), w n·k.
    unsafe { b.launch(cfg) }.unwrap_or_else(|e| panic!("CUDA backend: kernel {name}: {e}"));
}

/// out[rows, n] = x[rows, k] · wᵀ.
pub fn matmul(dev: &Device, x: &CudaSlice<f32>, rows: usize, w: &CudaWeight, out: &mut CudaSlice<f32>) {
    let (n, k) = (w.rows, w.cols);
    assert!(x.len() >= rows * k && out.len() >= rows * n, "matmul: buffers shorter than [{rows}, {k}] / [{rows}, {n}]");
    if rows == 0 || n == 0 {
        return;
    }
    if rows <= GEMV_MAX_ROWS {
        return gemv_rows(dev, x, rows, w, out);
    }
    let g = |dtype| Gemm { trans_a: true, trans_b: false, m: n, n: rows, k, lda: k, ldb: k, ldc: n, beta: 0.0, dtype };
    with_weight(dev, g, w, x, rows * k, out);
}

/// dx[rows, k] += dy[rows, n] · w: column-major DX (k × rows) += W (k × n) · DY (n × rows).
pub fn matmul_input_grad(dev: &Device, dy: &CudaSlice<f32>, rows: usize, w: &CudaWeight, dx: &mut CudaSlice<f32>) {
    let (n, k) = (w.rows, w.cols);
    assert!(
        dy.len() >= rows * n && dx.len() >= rows * k,
        "matmul backward: buffers shorter than [{rows}, {n}] / [{rows}, {k}]"
    );
    if rows == 0 || n == 0 || k == 0 {
        return;
    }
    let g =
        |dtype| Gemm { trans_a: false, trans_b: false, m: k, n: rows, k: n, lda: k, ldb: n, ldc: k, beta: 1.0, dtype };
    with_weight(dev, g, w, dy, rows * n, dx);
}

/// dw[n, k] += dyᵀ · x (f32): column-major DW (k × n) += X (k × rows) · DYᵀ (rows × n).
pub fn matmul_weight_grad(
    dev: &Device,
    x: &CudaSlice<f32>,
    dy: &CudaSlice<f32>,
    rows: usize,
    n: usize,
    k: usize,
    dw: &mut CudaSlice<f32>,
) {
    assert!(
        x.len() >= rows * k && dy.len() >= rows * n && dw.len() >= n * k,
        "matmul weight gradient: buffers shorter than [{rows}, {k}] / [{rows}, {n}] / [{n}, {k}]"
    );
    if rows == 0 || n == 0 || k == 0 {
        return;
    }
    let g = Gemm {
        trans_a: false,
        trans_b: true,
        m: k,
        n,
        k: rows,
        lda: k,
        ldb: n,
        ldc: k,
        beta: 1.0,
        dtype: cudaDataType::CUDA_R_32F,
    };
    let stream = &dev.stream;
    let (a, _ra) = x.device_ptr(stream);
    let (b, _rb) = dy.device_ptr(stream);
    let (c, _rc) = dw.device_ptr_mut(stream);
    // SAFETY: x is [rows, k], dy [rows, n], dw [n, k].
    unsafe { g.run(dev, a, b, c) }
}
