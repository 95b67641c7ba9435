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
        best = block_reduce(best, 0ull, scratch, MaxOp());
        if (threadIdx.x == 0) out[(size_t)r * k + j] = 0xffffffffu - (unsigned int)(best & 0xffffffffull);
        below = best;
    }
}

// The softmax weight of one logit, as src/sampling.rs `weights` computes it: the maximum weighs
// exactly 1 (so ±inf rows never make inf − inf), NaN and anything below e^−87 of the maximum 0,
// the rest exp((x − max)·(1/t)) in f32. The CPU takes its exponentials from `vexp` (relative error
// below 2.5e−7), this from `expf`: the weights differ by a few ulp.
__device__ __forceinline__ float softmax_weight(float x, float max, float scale) {
    if (x == max) return 1.0f;
    const float arg = __fmul_rn(x - max, scale);
    if (isnan(x) || arg < -87.0f) return 0.0f;
    return expf(arg);
}

// Mirrors `Backend::sample_rows` on the CPU: `sampling::process` with a temperature only (f32
// weights, their f64 sum, probabilities w·(1/sum) rounded to f32) then `sampling::sample`
// (inverse CDF over the positive probabilities in f64, u scaled by their total, falling back to
// the last positive one). Row r is drawn with uniforms[r]. Each thread owns a contiguous chunk of
// the row; thread 0 adds the chunk sums in order. The sums differ from the CPU's by rounding and
// the weights by the exponentials' few ulp, so a draw can differ only when u falls within about
// 1e−7 (relative) of a boundary between two tokens.
// Launch: grid rows, block 256 (the chunk arrays below hold 256 entries).
extern "C" __global__ void sample_rows(unsigned int* out, const float* logits, const double* uniforms, int rows,
                                       int width, float temperature) {
    __shared__ float scratch[32];
    __shared__ double chunk[256];
    __shared__ double total;
    __shared__ int first_hit, last_positive;
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* x = logits + (size_t)r * width;
    const float scale = (float)(1.0 / (double)temperature);  // as the CPU's (1.0 / t) as f32

    float max = -INFINITY;
    for (int i = threadIdx.x; i < width; i += blockDim.x) max = fmaxf(max, x[i]);  // fmaxf skips NaN
    max = block_max(max, scratch);

    const int per = (width + blockDim.x - 1) / blockDim.x;
    const int lo = min(width, (int)threadIdx.x * per), hi = min(width, lo + per);
    double s = 0.0;
    for (int i = lo; i < hi; ++i) s += (double)softmax_weight(x[i], max, scale);
    chunk[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double sum = 0.0;
        for (int j = 0; j < blockDim.x; ++j) sum += chunk[j];
        total = sum;
        first_hit = width;
        last_positive = -1;
    }
    __syncthreads();
    const double weight_sum = total, inv = 1.0 / weight_sum;
    // p_i, as the f32 the CPU's `process` returns.
#define PROB(i) (weight_sum > 0.0 ? (float)((double)softmax_weight(x[i], max, scale) * inv) : 1.0f / (float)width)

    double mass = 0.0;
    for (int i = lo; i < hi; ++i) {
        const float p = PROB(i);
        if (p > 0.0f) mass += (double)p;
    }
    __syncthreads();  // every thread has read `total` before thread 0 reuses it
    chunk[threadIdx.x] = mass;
    __syncthreads();
    if (threadIdx.x == 0) {  // exclusive prefix sums of the chunk masses, and their total
        double run = 0.0;
        for (int j = 0; j < blockDim.x; ++j) {
            const double m = chunk[j];
            chunk[j] = run;
            run += m;
        }
        total = run;
    }
    __syncthreads();
    const double u = uniforms[r] * total;
    double cum = chunk[threadIdx.x];
    int last = -1;
    for (int i = lo; i < hi; ++i) {
        const float p = PROB(i);
        if (p > 0.0f) {
            cum += (double)p;
            last = i;
            if (u < cum) {
                atomicMin(&first_hit, i);
                break;
            }
        }
    }
#undef PROB
    if (last >= 0) atomicMax(&last_positive, last);
    __syncthreads();
    if (threadIdx.x == 0) out[r] = first_hit < width ? first_hit : (last_positive >= 0 ? last_positive : 0);
}
