// Attention over the KV cache (forward, inference) and causal self-attention backward (training).
// Mirrors src/backend/cpu/attention.rs; see the Backend trait docs in src/backend/mod.rs.
//
// Both kernels: one block of ATT_THREADS threads per (query row, query head),
// gridDim = (rows, n_heads), head_dim <= ATT_MAX_DIM (checked by the host).
// Keys are processed in tiles of ATT_TILE = 32 = warp size, staged in shared memory. A score is
// computed by a quad of 4 adjacent threads (thread t handles key t/4 and dims c ≡ t (mod 4)), so
// the 128 threads cover the tile's 32 keys at once; lane j of every warp then owns key j of the
// tile for the softmax bookkeeping, and the output dims are owned by thread c = threadIdx.x.
#include "common.cuh"

#define ATT_THREADS 128
#define ATT_TILE 32
#define ATT_MAX_DIM 128
// Row stride of tiles read by the quads: 132 ≡ 4 (mod 32 banks), so the 8 keys × 4 dims a warp
// reads in one step land in 32 distinct banks.
#define ATT_PAD (ATT_MAX_DIM + 4)
#define FULL_MASK 0xffffffffu

// Sum over the 4 threads of a quad (all 32 lanes of the warp must call it).
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(FULL_MASK, v, 1);
    v += __shfl_xor_sync(FULL_MASK, v, 2);
    return v;
}

// out[row, h] = Σ_t softmax_t(scale·<q, k_t>) v_t over the visible cache slots t.
// Causal (mask_bits == NULL): row i sees slots 0..=past+i. Tree: slots < first_key are visible,
// slot first_key+j is visible iff mask_bits[i*mask_width + j] != 0. Slots >= past+rows never are.
// A row that sees no key gets NaN, as the CPU reference does (its softmax computes (-inf)-(-inf)).
extern "C" __global__ void attention(float* out, const float* q, const float* k_cache, const float* v_cache,
                                     const unsigned char* mask_bits, int rows, int past, int n_heads,
                                     int n_kv_heads, int head_dim, int capacity, float scale, int first_key,
                                     int mask_width) {
    __shared__ float q_s[ATT_MAX_DIM];
    __shared__ float k_s[ATT_TILE][ATT_PAD];
    __shared__ float v_s[ATT_TILE][ATT_MAX_DIM];
    __shared__ float s_s[ATT_TILE];

    const int row = blockIdx.x, h = blockIdx.y, tid = threadIdx.x, lane = tid & 31;
    const int d = head_dim;
    const int kvh = h / (n_heads / n_kv_heads);
    const size_t q_off = (size_t)row * n_heads * d + (size_t)h * d;
    const float* kbase = k_cache + (size_t)kvh * capacity * d;  // slot t at kbase + t*d
    const float* vbase = v_cache + (size_t)kvh * capacity * d;
    const unsigned char* bits = mask_bits ? mask_bits + (size_t)row * mask_width : nullptr;
    // Keys are scanned up to the last one that can be visible; n_keys >= 1, so the loop below runs
    // and its first barrier publishes q_s.
    const int n_keys = mask_bits ? past + rows : past + row + 1;

    for (int c = tid; c < d; c += ATT_THREADS) q_s[c] = q[q_off + c];

    const int key = tid >> 2, part = tid & 3;
    float m = -INFINITY;  // running max of the visible scores (identical in every thread)
    float l = 0.0f;       // running Σ exp(s - m)
    float acc = 0.0f;     // running Σ exp(s - m)·v[tid]
    for (int t0 = 0; t0 < n_keys; t0 += ATT_TILE) {
        const int cnt = min(ATT_TILE, n_keys - t0);
        __syncthreads();  // the previous tile's k_s / v_s / s_s are no longer read
        // The tile's cnt slots are contiguous in the cache: cnt*d floats from slot t0.
        const float* kt = kbase + (size_t)t0 * d;
        const float* vt = vbase + (size_t)t0 * d;
        for (int idx = tid; idx < cnt * d; idx += ATT_THREADS) {
            const int j = idx / d, c = idx - j * d;
            k_s[j][c] = kt[idx];
            v_s[j][c] = vt[idx];
        }
        __syncthreads();

        // Scores; invisible slots (and the tile's padding) are -inf without reading their dot.
        float dot = 0.0f;
        if (key < cnt)
            for (int c = part; c < d; c += 4) dot = fmaf(q_s[c], k_s[key][c], dot);
        dot = quad_sum(dot);
        if (part == 0) {
            const int t = t0 + key;
            const bool seen = key < cnt && (bits == nullptr || t < first_key || bits[t - first_key] != 0);
            s_s[key] = seen ? dot * scale : -INFINITY;
        }
        __syncthreads();

        // Online softmax. Every warp redoes this (lane j ↔ key j), so all threads keep the same m, l.
        // While everything seen so far is masked (m_new = -inf) both p and alpha are 0, not NaN.
        const float s = s_s[lane];
        const float m_new = fmaxf(m, warp_max(s));
        const float p = s == -INFINITY ? 0.0f : expf(s - m_new);
        const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
        l = l * alpha + warp_sum(p);
        acc *= alpha;
        m = m_new;
        for (int j = 0; j < cnt; ++j) {
            const float pj = __shfl_sync(FULL_MASK, p, j);
            // Like the CPU, a zero weight skips its value (a non-finite value there stays unread).
            if (tid < d && pj != 0.0f) acc = fmaf(pj, v_s[j][tid], acc);
        }
    }
    if (tid < d) out[q_off + tid] = m == -INFINITY ? __int_as_float(0x7fc00000) : acc / l;
}

// One tile of the backward's scan: waits until the previous tile's shared data is no longer read,
// stages keys t0..t0+cnt of the block's KV head (rows kw floats apart) in k_s / v_s, and gives
// every thread of key `threadIdx.x / 4`'s quad <q, k_key> and <dO, v_key> (0 past cnt). Called
// by all threads of the block alike (it holds barriers).
__device__ __forceinline__ void backward_tile_dots(float (*k_s)[ATT_PAD], float (*v_s)[ATT_PAD], const float* kb,
                                                   const float* vb, size_t kw, int t0, int cnt, int d,
                                                   const float* q_s, const float* do_s, float* sqk, float* sdv) {
    const int tid = threadIdx.x, key = tid >> 2, part = tid & 3;
    __syncthreads();
    for (int idx = tid; idx < cnt * d; idx += ATT_THREADS) {
        const int j = idx / d, c = idx - j * d;
        k_s[j][c] = kb[(size_t)(t0 + j) * kw + c];
        v_s[j][c] = vb[(size_t)(t0 + j) * kw + c];
    }
    __syncthreads();
    float qk = 0.0f, dv = 0.0f;
    if (key < cnt)
        for (int c = part; c < d; c += 4) {
            qk = fmaf(q_s[c], k_s[key][c], qk);
            dv = fmaf(do_s[c], v_s[key][c], dv);
        }
    *sqk = quad_sum(qk);
    *sdv = quad_sum(dv);
}

// Backward of causal self-attention over one sequence without a cache: q, d_out [rows, n_heads*d],
// k, v [rows, n_kv_heads*d]; row i sees rows 0..=i. With p = softmax(scale·<q_i, k_j>),
// dp_j = <dO_i, v_j> and D = Σ_j p_j dp_j, ds_j = scale·p_j·(dp_j − D):
//   dq_i += Σ_j ds_j k_j,   dk_j += ds_j q_i,   dv_j += p_j dO_i   (dk, dv by atomicAdd).
// Pass 1 finds the softmax max m, sum l and D online; pass 2 recomputes the scores per tile.
extern "C" __global__ void attention_backward(float* dq, float* dk, float* dv, const float* q, const float* k,
                                              const float* v, const float* d_out, int rows, int n_heads,
                                              int n_kv_heads, int head_dim, float scale) {
    __shared__ float q_s[ATT_MAX_DIM];
    __shared__ float do_s[ATT_MAX_DIM];
    __shared__ float k_s[ATT_TILE][ATT_PAD];
    __shared__ float v_s[ATT_TILE][ATT_PAD];
    __shared__ float a_s[ATT_TILE];  // pass 1: scores s_j;          pass 2: p_j
    __shared__ float b_s[ATT_TILE];  // pass 1: dp_j (0 for padding); pass 2: ds_j

    const int i = blockIdx.x, h = blockIdx.y, tid = threadIdx.x, lane = tid & 31;
    const int d = head_dim;
    const int g = h / (n_heads / n_kv_heads);
    const size_t qw = (size_t)n_heads * d, kw = (size_t)n_kv_heads * d;
    const size_t q_off = (size_t)i * qw + (size_t)h * d;
    const float* kb = k + (size_t)g * d;  // key row j at kb + j*kw
    const float* vb = v + (size_t)g * d;
    const int n_keys = i + 1;
    (void)rows;

    for (int c = tid; c < d; c += ATT_THREADS) {
        q_s[c] = q[q_off + c];
        do_s[c] = d_out[q_off + c];
    }

    const int key = tid >> 2, part = tid & 3;

    // ---- Pass 1: m = max_j s_j, l = Σ exp(s_j − m), Dn = Σ exp(s_j − m)·dp_j (online) ----
    float m = -INFINITY, l = 0.0f, dn = 0.0f;
    for (int t0 = 0; t0 < n_keys; t0 += ATT_TILE) {
        const int cnt = min(ATT_TILE, n_keys - t0);
        // The first barrier also publishes q_s / do_s, the first time.
        float sqk, sdv;
        backward_tile_dots(k_s, v_s, kb, vb, kw, t0, cnt, d, q_s, do_s, &sqk, &sdv);
        if (part == 0) {
            a_s[key] = key < cnt ? sqk * scale : -INFINITY;
            b_s[key] = key < cnt ? sdv : 0.0f;  // 0, not garbage: p = 0 must not meet a NaN
        }
        __syncthreads();
        const float s = a_s[lane], dp = b_s[lane];
        const float m_new = fmaxf(m, warp_max(s));
        const float p = s == -INFINITY ? 0.0f : expf(s - m_new);
        const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
        l = l * alpha + warp_sum(p);
        dn = dn * alpha + warp_sum(p * dp);
        m = m_new;
    }
    const float D = dn / l;  // key 0 is always visible, so l > 0

    // ---- Pass 2: per tile recompute s_j, dp_j; p_j = exp(s_j − m)/l; accumulate the gradients ----
    float acc = 0.0f;  // dq_i[tid]
    for (int t0 = 0; t0 < n_keys; t0 += ATT_TILE) {
        const int cnt = min(ATT_TILE, n_keys - t0);
        // The first barrier waits for the previous tile's k_s / a_s / b_s reads (pass 1's included).
        float sqk, sdv;
        backward_tile_dots(k_s, v_s, kb, vb, kw, t0, cnt, d, q_s, do_s, &sqk, &sdv);
        if (part == 0) {
            float p = 0.0f, ds = 0.0f;
            if (key < cnt) {
                p = expf(sqk * scale - m) / l;
                ds = scale * p * (sdv - D);
            }
            a_s[key] = p;
            b_s[key] = ds;
        }
        __syncthreads();
        if (tid < d)
            for (int j = 0; j < cnt; ++j) acc = fmaf(b_s[j], k_s[j][tid], acc);
        for (int idx = tid; idx < cnt * d; idx += ATT_THREADS) {
            const int j = idx / d, c = idx - j * d;
            const size_t o = (size_t)(t0 + j) * kw + (size_t)g * d + c;
            atomicAdd(dk + o, b_s[j] * q_s[c]);
            atomicAdd(dv + o, a_s[j] * do_s[c]);
        }
    }
    if (tid < d) dq[q_off + tid] += acc;
}
