// out[m, n] = x[m, k] · wᵀ for the few rows of decoding and tree verification (host: m ≤
// GEMV_MAX_ROWS in src/backend/cuda/gemm.rs; cuBLAS takes larger calls).
//
// Why not cuBLAS here: speculative greedy output must equal plain greedy output token for token,
// and plain decoding multiplies one row where verification multiplies a whole tree's. cuBLAS picks
// its kernel (tile shape, split-K) by the call's shape and promises the same bits only for the
// same parameters, so a row's logits could differ in their last bits between the two, and a
// near-tie flip the token. Here every output is summed in one order that depends on k alone:
// lane l of the warp that owns weight row j takes the eight consecutive elements l·8 + 256·t + i
// (t = 0, 1, …; i = 0..7 in order, one fused multiply-add each), then the 32 lane sums are added
// by a fixed butterfly; a warp owns four weight rows and walks the input rows eight at a time,
// and each (row, weight row) pair's arithmetic is the same wherever it sits. So a row's bits do
// not depend on how many rows the call has.
//
// The activations stay f32 (bf16 weights are widened exactly), like the CPU backend, rather than
// being rounded to bf16 for a tensor-core GEMM. Few rows are bound by reading the weights.

#include "common.cuh"

constexpr int GEMV_WARPS = 8;  // warps per block
constexpr int GEMV_COLS = 4;   // weight rows per warp: each input value loaded serves four of them
constexpr int GEMV_ROWS = 8;   // input rows per pass over the warp's weight rows

// Eight weights from w[e..e + 8): one 16- or 32-byte load when `vec` (k % 8 == 0 and aligned
// buffers), else one by one. Values past k are never used (the caller's per-element guard).
__device__ __forceinline__ void load8(float out[8], const unsigned short* w, int e, int k, bool vec) {
    if (vec) {
        const uint4 raw = *reinterpret_cast<const uint4*>(w + e);
        const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            out[2 * i] = __uint_as_float(words[i] << 16);
            out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
        }
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) out[i] = e + i < k ? bf16_bits_to_f32(w[e + i]) : 0.0f;
    }
}

__device__ __forceinline__ void load8(float out[8], const float* w, int e, int k, bool vec) {
    if (vec) {
        const float4 a = *reinterpret_cast<const float4*>(w + e);
        const float4 b = *reinterpret_cast<const float4*>(w + e + 4);
        out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
        out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) out[i] = e + i < k ? w[e + i] : 0.0f;
    }
}

template <typename W>
__device__ __forceinline__ void gemv_rows(float* out, const float* x, const W* w, int m, int n, int k) {
    const int lane = threadIdx.x & 31;
    const int col0 = (blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5)) * GEMV_COLS;
    if (col0 >= n) return;  // whole warps only: no barrier below
    const int ncols = min(GEMV_COLS, n - col0);
    const bool vec = k % 8 == 0 && (((size_t)w | (size_t)x) & 31) == 0;
    for (int r0 = 0; r0 < m; r0 += GEMV_ROWS) {
        const int nr = min(GEMV_ROWS, m - r0);
        float acc[GEMV_ROWS][GEMV_COLS];
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) {
#pragma unroll
            for (int c = 0; c < GEMV_COLS; c++) acc[r][c] = 0.0f;
        }
        for (int e = lane * 8; e < k; e += 256) {
            float wv[GEMV_COLS][8];
#pragma unroll
            for (int c = 0; c < GEMV_COLS; c++) {
                if (c < ncols) {
                    load8(wv[c], w + (size_t)(col0 + c) * k, e, k, vec);
                } else {
#pragma unroll
                    for (int i = 0; i < 8; i++) wv[c][i] = 0.0f;
                }
            }
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++) {
                if (r < nr) {
                    float xv[8];
                    load8(xv, x + (size_t)(r0 + r) * k, e, k, vec);
#pragma unroll
                    for (int c = 0; c < GEMV_COLS; c++) {
#pragma unroll
                        for (int i = 0; i < 8; i++) {
                            if (e + i < k) acc[r][c] = __fmaf_rn(wv[c][i], xv[i], acc[r][c]);
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) {
#pragma unroll
            for (int c = 0; c < GEMV_COLS; c++) {
                const float sum = warp_sum(acc[r][c]);
                if (lane == 0 && r < nr && c < ncols) out[(size_t)(r0 + r) * n + col0 + c] = sum;
            }
        }
    }
}

// w: [n, k] raw bf16 bits. Grid: ceil(n / (GEMV_WARPS·GEMV_COLS)) blocks of 32·GEMV_WARPS threads.
extern "C" __global__ void gemv_rows_bf16(float* out, const float* x, const unsigned short* w, int m, int n, int k) {
    gemv_rows(out, x, w, m, n, k);
}

// w: [n, k] f32. Grid as gemv_rows_bf16.
extern "C" __global__ void gemv_rows_f32(float* out, const float* x, const float* w, int m, int n, int k) {
    gemv_rows(out, x, w, m, n, k);
}
