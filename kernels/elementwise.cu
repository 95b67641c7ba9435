#include "common.cuh"
// Mirrors Backend::add (src/backend/cpu/mod.rs), add_bias / bias_backward (cpu/linear.rs),
// swiglu / swiglu_backward (cpu/activation.rs), adamw / clip_by_value (cpu/optim.rs).
// Launch for every kernel: block 256, grid ceil(n/256) over the elements, except add_bias
// (ceil(rows·width/256)) and bias_backward (ceil(width/256)).

// x += y.
extern "C" __global__ void add(float* x, const float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// x[r, j] += bias[j].
extern "C" __global__ void add_bias(float* x, const float* bias, int rows, int width) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)rows * width) x[i] += bias[i % width];
}

// d_bias[j] += Σ_r dy[r, j]. One thread per column, adding the rows in order into the running
// value, as the CPU does: the same bits.
extern "C" __global__ void bias_backward(float* d_bias, const float* dy, int rows, int width) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= width) return;
    float acc = d_bias[j];
    for (int r = 0; r < rows; ++r) acc += dy[(size_t)r * width + j];
    d_bias[j] = acc;
}

// Clamp to [−limit, limit] with Rust's `f32::clamp` comparisons: NaN stays NaN, ±inf → ±limit.
extern "C" __global__ void clip_by_value(float* x, float limit, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    if (v < -limit) v = -limit;
    if (v > limit) v = limit;
    x[i] = v;
}

// σ(g) = 1/(1 + e^−g), 0 below g = −87 as the CPU's (cpu/activation.rs: its exponential clamps
// there, and silu of a huge negative g stays exactly 0).
__device__ __forceinline__ float sigmoid(float g) {
    return g < -87.0f ? 0.0f : 1.0f / (1.0f + expf(-g));
}

// out = silu(gate) · up = g·σ(g)·up, in the CPU's order.
extern "C" __global__ void swiglu(float* out, const float* gate, const float* up, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    out[i] = g * sigmoid(g) * up[i];
}

// ADDS the gradients: with σ = 1/(1 + e^−g), silu'(g) = σ·(1 + g·(1 − σ)).
extern "C" __global__ void swiglu_backward(float* d_gate, float* d_up, const float* gate, const float* up,
                                           const float* d_out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i], u = up[i], d = d_out[i];
    const float sig = sigmoid(g);
    d_gate[i] += d * u * sig * (1.0f + g * (1.0f - sig));
    d_up[i] += d * g * sig;
}

// One AdamW step, PyTorch's order, as cpu/optim.rs:
//   p ← p·(1 − lr·wd);  m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;
//   p ← p − step_size·m / (√v / bc2_sqrt + ε)
// HOST VALUES: step_size = lr / (1 − β₁ᵗ) and bc2_sqrt = √(1 − β₂ᵗ), each formed in f64 and
// rounded once to f32, exactly as the CPU forms them (so both backends use the same two scalars).
// The per-element arithmetic uses the _rn intrinsics so nvcc cannot fuse multiply-adds: Rust does
// not form FMAs, and with the same operations in the same order the step is bit-exact.
extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, float lr, float beta1, float beta2,
                                 float eps, float weight_decay, float step_size, float bc2_sqrt, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float decay = __fsub_rn(1.0f, __fmul_rn(lr, weight_decay));
    const float gi = g[i];
    const float mi = __fadd_rn(__fmul_rn(beta1, m[i]), __fmul_rn(__fsub_rn(1.0f, beta1), gi));
    const float vi = __fadd_rn(__fmul_rn(beta2, v[i]), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, beta2), gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
    const float pi = __fmul_rn(p[i], decay);
    p[i] = __fsub_rn(pi, __fdiv_rn(__fmul_rn(step_size, mi), denom));
    m[i] = mi;
    v[i] = vi;
}
