// Shared device helpers for clover-engine's kernels. Every kernel is `extern "C"` so the Rust side
// (src/backend/cuda/) finds it by name; sizes are `int`, activations f32, bf16 weights are passed
// as raw `unsigned short` bits and widened here (f16 weights are widened to f32 at upload).
#pragma once

// bf16 is the top half of an f32.
__device__ __forceinline__ float bf16_bits_to_f32(unsigned short b) {
    return __uint_as_float(((unsigned int)b) << 16);
}

// Round to nearest even (NaN kept quiet), like `half::bf16::from_f32`.
__device__ __forceinline__ unsigned short f32_to_bf16_bits(float x) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// Reduction operators: a sum, and a maximum (fmaxf skips NaN like Rust's f32::max; integer keys
// compare as unsigned).
struct SumOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
    __device__ __forceinline__ unsigned long long operator()(unsigned long long a, unsigned long long b) const {
        return a > b ? a : b;
    }
};

// Over the 32 lanes of a warp (all must call it), butterfly order; every lane gets the result.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 values of shared memory; the block must not reuse it until all threads
// return. `identity` fills the lanes past the block's warps.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T identity, T* scratch, Op op) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : identity;
    return warp_reduce(v, op);
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, SumOp()); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce(v, MaxOp()); }
__device__ __forceinline__ float block_sum(float v, float* scratch) { return block_reduce(v, 0.0f, scratch, SumOp()); }
__device__ __forceinline__ float block_max(float v, float* scratch) {
    return block_reduce(v, -INFINITY, scratch, MaxOp());
}
