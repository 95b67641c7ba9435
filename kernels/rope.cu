#include "common.cuh"
// Mirrors src/backend/cpu/rope.rs: rotate-half RoPE (element i of a head pairs with
// i + head_dim/2), in place on rows × n_heads × head_dim. cos_sin is rows × head_dim: per row the
// head_dim/2 cosines, then the head_dim/2 sines. Launch for both: grid (rows, n_heads) as
// (gridDim.x, gridDim.y), block 64, each thread looping over the head_dim/2 pairs.

// Rotates every pair of the head (blockIdx.x, blockIdx.y) by θ (direction 1) or −θ (−1). Negating
// sin is exact, as on the CPU. An odd head_dim leaves its last element alone, as the CPU does.
__device__ __forceinline__ void rotate(float* x, const float* cos_sin, int rows, int n_heads, int head_dim,
                                       float direction) {
    const int r = blockIdx.x, h = blockIdx.y;
    if (r >= rows || h >= n_heads) return;
    const int half = head_dim / 2;
    const float* c = cos_sin + (size_t)r * head_dim;
    const float* s = c + half;
    float* a = x + ((size_t)r * n_heads + h) * head_dim;
    float* b = a + half;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float x0 = a[i], x1 = b[i], sn = direction * s[i];
        a[i] = x0 * c[i] - x1 * sn;
        b[i] = x1 * c[i] + x0 * sn;
    }
}

extern "C" __global__ void rope(float* x, const float* cos_sin, int rows, int n_heads, int head_dim) {
    rotate(x, cos_sin, rows, n_heads, head_dim, 1.0f);
}

// The gradient's map is the transpose of each orthogonal 2×2 rotation: the rotation by −θ.
extern "C" __global__ void rope_backward(float* dx, const float* cos_sin, int rows, int n_heads, int head_dim) {
    rotate(dx, cos_sin, rows, n_heads, head_dim, -1.0f);
}
