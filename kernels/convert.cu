#include "common.cuh"
// f32 activations as two bf16 parts for cuBLAS products with bf16 weights: hi is x rounded to
// nearest even (as the host's `half::bf16::from_f32`), lo the remainder x − hi rounded again, so
// hi + lo carries x to about 2⁻¹⁶ of its size where hi alone carries 2⁻⁹ (the CPU multiplies the
// f32 activations themselves). A non-finite hi takes lo = 0: inf − inf would make the sum NaN.

// Launch: grid ceil(n/256), block 256.
extern "C" __global__ void f32_split_bf16(unsigned short* hi, unsigned short* lo, const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned short h = f32_to_bf16_bits(x[i]);
    const float hf = bf16_bits_to_f32(h);
    hi[i] = h;
    lo[i] = isfinite(hf) ? f32_to_bf16_bits(x[i] - hf) : (unsigned short)0;
}
