#include "common.cuh"
// Mirrors Backend::embedding / gather_rows / scatter_add_rows in src/backend/cpu/mod.rs and
// CpuWeight::gather_rows (gather_weight_rows) in src/backend/cpu/weight.rs.
// Launch for every kernel here: grid = number of output (or source) rows, block 256, each block
// loops over the row's `width` elements. Offsets are size_t: vocab × width can pass 2³¹.

template <typename T, float (*widen)(T)>
__device__ __forceinline__ void embedding_row(float* out, const T* table, const unsigned int* ids, int rows, int width) {
    const int r = blockIdx.x;
    if (r >= rows) return;
    const T* src = table + (size_t)ids[r] * width;
    float* dst = out + (size_t)r * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) dst[i] = widen(src[i]);
}

__device__ __forceinline__ float f32_id(float v) { return v; }

extern "C" __global__ void embedding_f32(float* out, const float* table, const unsigned int* ids, int rows, int width) {
    embedding_row<float, f32_id>(out, table, ids, rows, width);
}

extern "C" __global__ void embedding_bf16(float* out, const unsigned short* table, const unsigned int* ids, int rows, int width) {
    embedding_row<unsigned short, bf16_bits_to_f32>(out, table, ids, rows, width);
}

// out[i] = src[idx[i]] for rows of `width`; T is copied bit for bit.
template <typename T>
__device__ __forceinline__ void gather_row(T* out, const T* src, const unsigned int* idx, int n, int width) {
    const int i = blockIdx.x;
    if (i >= n) return;
    const T* s = src + (size_t)idx[i] * width;
    T* d = out + (size_t)i * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) d[j] = s[j];
}

extern "C" __global__ void gather_rows(float* out, const float* src, const unsigned int* idx, int n, int width) {
    gather_row<float>(out, src, idx, n, width);
}

// gather_weight_rows of a bf16 weight: the stored bits, no rounding.
extern "C" __global__ void gather_rows_u16(unsigned short* out, const unsigned short* w, const unsigned int* idx, int n, int width) {
    gather_row<unsigned short>(out, w, idx, n, width);
}

// dst[idx[i]] += src[i]; an index may repeat (a row gathered twice gets both gradients), and the
// blocks of repeated indices run concurrently, hence the atomics.
extern "C" __global__ void scatter_add_rows(float* dst, const float* src, const unsigned int* idx, int n, int width) {
    const int i = blockIdx.x;
    if (i >= n) return;
    const float* s = src + (size_t)i * width;
    float* d = dst + (size_t)idx[i] * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) atomicAdd(d + j, s[j]);
}
