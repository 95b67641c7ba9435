#include "common.cuh"
// Mirrors `Backend::top_k_rows` on the CPU (src/sampling.rs, `top_k_indices`): the k largest
// entries of each row as column indices, best first, ties to the lower index, NaN ranked as −inf.
// Greedy decoding, greedy verification and static-tree drafting need only these indices, so the
// logit rows never leave the device.

// One 64-bit key per entry whose unsigned order is the ranking: the high half is the f32 bits
// mapped so that unsigned order equals Rust's `total_cmp` (so −0 < +0, as on the CPU), the low
// half the inverted column, so that of two equal values the lower column ranks higher. Keys are
// distinct within a row, which lets round j look for the best key strictly below round j−1's.
__device__ __forceinline__ unsigned long long rank_key(float x, int column) {
    if (isnan(x)) x = -INFINITY;
    unsigned int u = __float_as_uint(x);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned long long)(0xffffffffu - (unsigned int)column);
}

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long v) {
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

// Maximum over the block (blockDim.x a multiple of 32); every thread gets the result.
__device__ __forceinline__ unsigned long long block_max_u64(unsigned long long v, unsigned long long* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max_u64(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0ull;
    return warp_max_u64(v);
}

// out[r·k + j] = the column of row r's (j+1)-th largest entry, for k ≤ width. k rounds of a
// block-wide maximum over the keys below the previous round's: k scans of a row that sits in L2,
// no per-thread lists and no sort. Every key is above 0 (−inf maps to 0x007fffff), so 0 is "none".
// Launch: grid rows, block 256.
extern "C" __global__ void top_k_rows(unsigned int* out, const float* x, int rows, int width, int k) {
    __shared__ unsigned long long scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* row = x + (size_t)r * width;
    unsigned long long below = ~0ull;
    for (int j = 0; j < k; ++j) {
        unsigned long long best = 0ull;
        for (int i = threadIdx.x; i < width; i += blockDim.x) {
            const unsigned long long key = rank_key(row[i], i);
            if (key < below && key > best) best = key;
        }
        best = block_max_u64(best, scratch);
        if (threadIdx.x == 0) out[(size_t)r * k + j] = 0xffffffffu - (unsigned int)(best & 0xffffffffull);
        below = best;
    }
}
