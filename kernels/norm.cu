#include "common.cuh"
// Mirrors src/backend/cpu/norm.rs (RMSNorm and its backward). gain is f32 (the host widens 16-bit
// gains). Launch for both: grid rows, block 256 (a multiple of 32, as block_sum needs).

// 1 / √(mean(x²) + eps) of one row: eps inside the square root, mean = sum / width.
__device__ __forceinline__ float row_inv_rms(const float* x, int width, float eps, float* scratch) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) ss += x[i] * x[i];
    ss = block_sum(ss, scratch);
    return 1.0f / sqrtf(ss / (float)width + eps);
}

// out[r] = x[r] · inv_rms · gain.
extern "C" __global__ void rmsnorm(float* out, const float* x, const float* gain, int rows, int width, float eps) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;  // uniform over the block: no thread is left waiting at a barrier
    const float* xr = x + (size_t)r * width;
    float* yr = out + (size_t)r * width;
    const float inv = row_inv_rms(xr, width, eps, scratch);
    for (int i = threadIdx.x; i < width; i += blockDim.x) yr[i] = xr[i] * inv * gain[i];
}

// ADDS dL/dx = inv·(dy⊙g) − x·inv³·⟨x, dy⊙g⟩/width to dx (the second term because inv depends on
// every element of the row) and dL/dgain = dy⊙x·inv to d_gain, summed over rows with atomics
// (the blocks of all rows hit the same d_gain).
extern "C" __global__ void rmsnorm_backward(float* dx, float* d_gain, const float* x, const float* gain,
                                            const float* d_out, int rows, int width, float eps) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* xr = x + (size_t)r * width;
    const float* dyr = d_out + (size_t)r * width;
    float* dxr = dx + (size_t)r * width;
    const float inv = row_inv_rms(xr, width, eps, scratch);
    float proj = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) proj += xr[i] * dyr[i] * gain[i];
    // block_sum starts with a barrier, so reusing the scratch of the first sum is safe.
    proj = block_sum(proj, scratch);
    const float coef = inv * inv * inv * proj / (float)width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        const float v = xr[i], d = dyr[i];
        dxr[i] += inv * d * gain[i] - v * coef;
        atomicAdd(d_gain + i, d * v * inv);
    }
}
