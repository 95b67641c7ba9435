#include "common.cuh"
// Mirrors the host's f32 → bf16 rounding (`half::bf16::from_f32`, round to nearest even).

// Launch: grid ceil(n/256), block 256.
extern "C" __global__ void f32_to_bf16(unsigned short* out, const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16_bits(x[i]);
}
