#include "common.cuh"
// Mirrors src/backend/cpu/loss.rs (the distillation losses with their backward fused in). Each
// block handles one row, WRITES that row's gradient and stores w_r·loss_r in row_loss[r]; the host
// sums row_loss (the CPU sums the rows in order, in f64).

// The CPU's exp (src/vexp.rs) clamps its argument to [−87, 88], so e.g. a −inf logit contributes
// exp(−87) ≈ 1.6e−38, not 0. Same clamp here (comparisons keep NaN, like Rust's clamp).
__device__ __forceinline__ float clamped_exp(float x) {
    if (x < -87.0f) x = -87.0f;
    if (x > 88.0f) x = 88.0f;
    return expf(x);
}

// Soft cross-entropy of student logits z against p = softmax(teacher t), row width `vocab`:
//   loss_r = logsumexp(z) − Σ_v p_v·z_v = zmax + ln Σe^(z−zmax) − Σ_v e^(t_v−tmax)·z_v / Σe^(t−tmax)
//   d_logits_r = w·e^(z−zmax)/zsum − w·e^(t−tmax)/tsum = w·(softmax(z) − p)
// in the CPU's form (the ⟨p, z⟩ term uses the unshifted z). Rows of weight 0 (masked) get a zero
// gradient and a zero loss without looking at their logits, so NaN/garbage there does not leak.
// fmaxf skips NaN like Rust's f32::max. Launch: grid rows, block 1024.
extern "C" __global__ void soft_cross_entropy(float* d_logits, float* row_loss, const float* logits,
                                              const float* teacher_logits, const float* row_weight, int rows,
                                              int vocab) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float w = row_weight[r];  // uniform over the block, so the early return is barrier-safe
    float* dz = d_logits + (size_t)r * vocab;
    if (w == 0.0f) {
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) dz[i] = 0.0f;
        if (threadIdx.x == 0) row_loss[r] = 0.0f;
        return;
    }
    const float* z = logits + (size_t)r * vocab;
    const float* t = teacher_logits + (size_t)r * vocab;

    float zmax = -INFINITY, tmax = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        zmax = fmaxf(zmax, z[i]);
        tmax = fmaxf(tmax, t[i]);
    }
    zmax = block_max(zmax, scratch);
    tmax = block_max(tmax, scratch);  // block_* open with a barrier: the scratch reuse is safe

    float zsum = 0.0f, tsum = 0.0f, tz = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float zi = z[i], te = clamped_exp(t[i] - tmax);
        zsum += clamped_exp(zi - zmax);
        tsum += te;
        tz += te * zi;
    }
    zsum = block_sum(zsum, scratch);
    tsum = block_sum(tsum, scratch);
    tz = block_sum(tz, scratch);

    // The exponentials are recomputed rather than parked in dz: same inputs, same bits.
    const float zscale = w / zsum, tscale = w / tsum;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        dz[i] = clamped_exp(z[i] - zmax) * zscale - clamped_exp(t[i] - tmax) * tscale;
    if (threadIdx.x == 0) row_loss[r] = w * (zmax + logf(zsum) - tz / tsum);
}

// SmoothL1 with β = 1 of d = pred − target, averaged over the row's `width` elements:
//   row_loss[r] = (Σ (|d| < 1 ? d²/2 : |d| − 1/2)) · w/width,  d_pred = clamp(d, −1, 1) · w/width.
// No special case for w = 0 (the CPU has none): the gradient is 0·clamp(d). The clamp keeps NaN
// like Rust's. Launch: grid rows, block 256.
extern "C" __global__ void smooth_l1(float* d_pred, float* row_loss, const float* pred, const float* target,
                                     const float* row_weight, int rows, int width) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float scale = row_weight[r] / (float)width;
    const float* p = pred + (size_t)r * width;
    const float* t = target + (size_t)r * width;
    float* g = d_pred + (size_t)r * width;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        const float d = p[i] - t[i], a = fabsf(d);
        sum += a < 1.0f ? 0.5f * d * d : a - 0.5f;
        float c = d;
        if (c < -1.0f) c = -1.0f;
        if (c > 1.0f) c = 1.0f;
        g[i] = c * scale;
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) row_loss[r] = sum * scale;
}
