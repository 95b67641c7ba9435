// Per-head parts of the Clover attention-decoder cell (src/backend/cpu/clover_cell.rs); the Rust
// side does the projections q = Wq·RMSNorm(x)+bq, k = Wk·y+bk, v = Wv·y+bv and the weight GEMMs.
// Both kernels: one block of 128 threads per (row, head), gridDim = (rows, n_heads); every tensor
// is [rows, hidden] with heads of head_dim = hidden / n_heads; any head_dim (threads loop over it).
#include "common.cuh"

#define CELL_THREADS 128

// out = x + concat_h(cos(q_h, k_h)·v_h), cos(q, k) = <q, k> / (max(|q|, eps)·max(|k|, eps)).
extern "C" __global__ void clover_combine(float* out, const float* x, const float* q, const float* k,
                                          const float* v, int rows, int hidden, int n_heads, float eps) {
    __shared__ float scratch[32];
    const int d = hidden / n_heads;
    const size_t base = (size_t)blockIdx.x * hidden + (size_t)blockIdx.y * d;
    (void)rows;

    float dot = 0.0f, qq = 0.0f, kk = 0.0f;
    for (int c = threadIdx.x; c < d; c += CELL_THREADS) {
        const float qc = q[base + c], kc = k[base + c];
        dot = fmaf(qc, kc, dot);
        qq = fmaf(qc, qc, qq);
        kk = fmaf(kc, kc, kk);
    }
    dot = block_sum(dot, scratch);
    qq = block_sum(qq, scratch);
    kk = block_sum(kk, scratch);
    const float a = dot / (fmaxf(sqrtf(qq), eps) * fmaxf(sqrtf(kk), eps));
    for (int c = threadIdx.x; c < d; c += CELL_THREADS) out[base + c] = x[base + c] + a * v[base + c];
}

// The gradients of the per-head part for g = d_out (WRITTEN, not added), as the CPU backward:
// a = <q,k>/(Q·K) with Q = max(|q|, eps), K = max(|k|, eps), da = <g, v>;
//   dq = da·(k/(Q·K) − q·a/Q²),  dk = da·(q/(Q·K) − k·a/K²),  dv = a·g,
// where the a/Q² (a/K²) term is dropped when |q| <= eps (|k| <= eps): the clamp makes Q constant.
extern "C" __global__ void clover_cell_grads(float* dq, float* dk, float* dv, const float* q, const float* k,
                                             const float* v, const float* d_out, int rows, int hidden,
                                             int n_heads, float eps) {
    __shared__ float scratch[32];
    const int d = hidden / n_heads;
    const size_t base = (size_t)blockIdx.x * hidden + (size_t)blockIdx.y * d;
    (void)rows;

    float dot = 0.0f, qq = 0.0f, kk = 0.0f, gv = 0.0f;
    for (int c = threadIdx.x; c < d; c += CELL_THREADS) {
        const float qc = q[base + c], kc = k[base + c];
        dot = fmaf(qc, kc, dot);
        qq = fmaf(qc, qc, qq);
        kk = fmaf(kc, kc, kk);
        gv = fmaf(d_out[base + c], v[base + c], gv);
    }
    dot = block_sum(dot, scratch);
    qq = block_sum(qq, scratch);
    kk = block_sum(kk, scratch);
    gv = block_sum(gv, scratch);
    const float qn = sqrtf(qq), kn = sqrtf(kk);
    const float qc = fmaxf(qn, eps), kc = fmaxf(kn, eps);
    const float a = dot / (qc * kc);
    const float q_self = qn > eps ? a / (qc * qc) : 0.0f;
    const float k_self = kn > eps ? a / (kc * kc) : 0.0f;
    const float cross = 1.0f / (qc * kc);
    for (int c = threadIdx.x; c < d; c += CELL_THREADS) {
        const float qv = q[base + c], kv = k[base + c];
        dq[base + c] = gv * (kv * cross - qv * q_self);
        dk[base + c] = gv * (qv * cross - kv * k_self);
        dv[base + c] = a * d_out[base + c];
    }
}
