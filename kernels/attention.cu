// Attention over the KV cache (forward, inference) and causal self-attention backward (training).
// Mirrors src/backend/cpu/attention.rs; see the Backend trait docs in src/backend/mod.rs.
//
// Forward: split over the keys (flash-decoding, with many queries per block). A block owns one KV
// head, one chunk of ATT_CHUNK cache slots and up to ATT_QUERIES queries of that head's group
// (query = (row, query head); GQA groups n_heads / n_kv_heads query heads per KV head). It stages
// the chunk's K/V in shared memory tile by tile, for all its queries at once (a tree of 26 rows
// reads each slot's K/V once per 16 queries, not once per query): a first sweep finds each
// query's max score, a second sums its weights and weighted values in slot order. The chunks
// spread a long prefix over the whole GPU even for one row. `attention_combine` then merges the
// chunks' partial (max, sum, weighted values) per query.
//
// Backward: one block of ATT_THREADS threads per (row, query head), gridDim = (rows, n_heads).
// Keys in tiles of ATT_TILE = 32 = warp size, staged in shared memory. A score is computed by a
// quad of 4 adjacent threads (thread t handles key t/4 and dims c ≡ t (mod 4)), so the 128 threads
// cover the tile's 32 keys at once; lane j of every warp then owns key j of the tile.
// head_dim <= ATT_MAX_DIM everywhere (checked by the host).
#include "common.cuh"

#define ATT_THREADS 128
#define ATT_TILE 32
#define ATT_MAX_DIM 128
#define ATT_CHUNK 256
#define ATT_QUERIES 16
// Row stride of tiles read by the quads: 132 ≡ 4 (mod 32 banks), so the 8 keys × 4 dims a warp
// reads in one step land in 32 distinct banks.
#define ATT_PAD (ATT_MAX_DIM + 4)
// Row stride of the forward's key tile, read as (lane = key, same dim): 129 ≡ 1 (mod 32).
#define ATT_KPAD (ATT_MAX_DIM + 1)
#define FULL_MASK 0xffffffffu

// Sum over the 4 threads of a quad (all 32 lanes of the warp must call it).
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(FULL_MASK, v, 1);
    v += __shfl_xor_sync(FULL_MASK, v, 2);
    return v;
}

// Pass 1 of out[row, h] = Σ_t softmax_t(scale·<q, k_t>) v_t over the visible cache slots t.
// Causal (mask_bits == NULL): row i sees slots 0..=past+i. Tree: slots < first_key are visible,
// slot first_key+j is visible iff mask_bits[i*mask_width + j] != 0. Slots >= past+rows never are.
//
// Chunks are ranges of ATT_CHUNK sequence *positions*, not of slots: a committed slot t <
// first_key (every slot, under the causal mask) sits at position t, a tree slot first_key+j at
// key_pos[j] (the host derives it from the mask: first_key plus the key's depth). Within a chunk
// the max comes first and the sums then run key by key in slot order, zero weights adding
// nothing. So a row's output depends only on the sequence of keys it sees, not on where they sit:
// a tree node's ancestors in the tree block (verification) give the bits they give when committed
// one by one (plain decoding), which keeps speculative greedy output equal to plain greedy output.
// (An online softmax rescales at tile edges, and a warp reduction adds in lane order: both depend
// on the slots.) The price: each chunk's keys are read and scored twice.
//
// Writes, per query (row·n_heads + h) and chunk, the chunk's max m and sum l = Σ e^(s − m)
// (part_ml[2·slot], [2·slot+1]) and Σ e^(s − m)·v (part_acc[slot·head_dim ..]), with
// slot = query·n_chunks + chunk; a chunk with nothing visible leaves m = −inf, l = 0, acc = 0.
// Launch: grid (ceil(rows·group / ATT_QUERIES), n_chunks, n_kv_heads), block ATT_THREADS: the
// blocks that read the same chunk are launched one after another, so all but the first find it
// in L2.
struct AttKeys {
    const unsigned char* mask_bits;  // NULL: causal
    const int* key_pos;              // tree only: the position of slot first_key + j
    int past, first_key, mask_width, pos_begin;  // pos_begin: the chunk's first position
};

// Whether `row` sees slot t and the slot belongs to the chunk (the caller walks only slots whose
// position can lie in it: below first_key, its own range; from first_key on, the tree block).
__device__ __forceinline__ bool att_sees(const AttKeys& a, int row, int t) {
    if (!a.mask_bits) return t <= a.past + row;
    if (t < a.first_key) return true;
    const int j = t - a.first_key, pos = a.key_pos[j];
    return a.mask_bits[(size_t)row * a.mask_width + j] != 0 && pos >= a.pos_begin && pos < a.pos_begin + ATT_CHUNK;
}

// scale·<q, k> with the same bits wherever it is computed (no contraction of the product).
__device__ __forceinline__ float att_score(const float* q_row, const float* k_row, int d, float scale) {
    float dot = 0.0f;
    for (int c = 0; c < d; ++c) dot = fmaf(q_row[c], k_row[c], dot);
    return __fmul_rn(dot, scale);
}

extern "C" __global__ void attention_partial(float* part_acc, float* part_ml, const float* q, const float* k_cache,
                                             const float* v_cache, const unsigned char* mask_bits, const int* key_pos,
                                             int rows, int past, int n_heads, int n_kv_heads, int head_dim,
                                             int capacity, float scale, int first_key, int mask_width, int n_chunks) {
    __shared__ float q_s[ATT_QUERIES][ATT_MAX_DIM];
    __shared__ float k_s[ATT_TILE][ATT_KPAD];
    __shared__ float v_s[ATT_TILE][ATT_MAX_DIM];
    __shared__ float p_s[ATT_QUERIES][ATT_TILE];
    __shared__ float m_s[ATT_QUERIES], l_s[ATT_QUERIES];

    const int chunk = blockIdx.y, kvh = blockIdx.z, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warps = ATT_THREADS / 32;
    const int d = head_dim, group = n_heads / n_kv_heads;
    const int q0 = blockIdx.x * ATT_QUERIES;             // block query qq is group query q0 + qq
    const int nq = min(ATT_QUERIES, rows * group - q0);  // >= 1 by the grid's size
    const AttKeys keys{mask_bits, key_pos, past, first_key, mask_width, chunk * ATT_CHUNK};
    // The slots to walk, as two contiguous ranges: the chunk's own slots below first_key (causal:
    // up to the last slot the block's last row sees), then, for a tree, the whole tree block,
    // filtered by position (only chunks that reach first_key can hold a tree key).
    const int pos_end = keys.pos_begin + ATT_CHUNK;
    int range_begin[2], range_end[2];
    range_begin[0] = keys.pos_begin;
    if (mask_bits) {
        range_end[0] = min(pos_end, first_key);
        range_begin[1] = first_key;
        range_end[1] = pos_end > first_key ? past + rows : first_key;
    } else {
        range_end[0] = min(pos_end, past + (q0 + nq - 1) / group + 1);
        range_begin[1] = range_end[1] = 0;
    }

    for (int idx = tid; idx < nq * d; idx += ATT_THREADS) {
        const int qq = idx / d, c = idx - qq * d, qi = q0 + qq;
        const int row = qi / group, h = kvh * group + qi % group;
        q_s[qq][c] = q[(size_t)row * n_heads * d + (size_t)h * d + c];
    }
    if (tid < ATT_QUERIES) {
        m_s[tid] = -INFINITY;
        l_s[tid] = 0.0f;
    }
    float acc[ATT_QUERIES];  // thread tid < d owns dim tid of every query's weighted sum
#pragma unroll
    for (int qq = 0; qq < ATT_QUERIES; ++qq) acc[qq] = 0.0f;

    const float* kbase = k_cache + (size_t)kvh * capacity * d;  // slot t at kbase + t*d
    const float* vbase = v_cache + (size_t)kvh * capacity * d;
    // Sweep 0: each query's largest visible score in the chunk (a max is the same in any order).
    // Sweep 1: its weights e^(s − m), their sum and the weighted values, key by key in slot order.
    for (int sweep = 0; sweep < 2; ++sweep) {
#pragma unroll
        for (int range = 0; range < 2; ++range) {
            for (int t0 = range_begin[range]; t0 < range_end[range]; t0 += ATT_TILE) {
                const int cnt = min(ATT_TILE, range_end[range] - t0);
                // q_s, m_s published; the previous tile's k_s / v_s / p_s no longer read.
                __syncthreads();
                // The tile's cnt slots are contiguous in the cache: cnt*d floats from slot t0.
                for (int idx = tid; idx < cnt * d; idx += ATT_THREADS) {
                    const int j = idx / d, c = idx - j * d;
                    k_s[j][c] = kbase[(size_t)t0 * d + idx];
                    if (sweep == 1) v_s[j][c] = vbase[(size_t)t0 * d + idx];
                }
                __syncthreads();

                // Warp w owns queries w, w + 4, …; lane j scores key j of the tile. Only lane 0
                // of the owning warp writes m_s[qq] and l_s[qq].
                for (int qq = warp; qq < ATT_QUERIES; qq += warps) {
                    const bool sees = qq < nq && lane < cnt && att_sees(keys, (q0 + qq) / group, t0 + lane);
                    const float s = sees ? att_score(q_s[qq], k_s[lane], d, scale) : -INFINITY;
                    if (sweep == 0) {
                        const float m = warp_max(s);
                        if (lane == 0) m_s[qq] = fmaxf(m_s[qq], m);
                    } else {
                        // A seen key makes m_s finite, so no (−inf) − (−inf) here.
                        p_s[qq][lane] = sees ? expf(s - m_s[qq]) : 0.0f;
                        __syncwarp();  // the whole tile's weights are written before lane 0 adds them
                        if (lane == 0) {
                            float l = l_s[qq];
                            for (int j = 0; j < cnt; ++j) l += p_s[qq][j];
                            l_s[qq] = l;
                        }
                    }
                }
                if (sweep == 0) continue;
                __syncthreads();  // p_s complete

                if (tid < d) {
#pragma unroll
                    for (int qq = 0; qq < ATT_QUERIES; ++qq) {
                        float a = acc[qq];
                        for (int j = 0; j < cnt; ++j) {
                            const float pj = p_s[qq][j];
                            // Like the CPU, a zero weight skips its value (a non-finite value there stays unread).
                            if (pj != 0.0f) a = fmaf(pj, v_s[j][tid], a);
                        }
                        acc[qq] = a;
                    }
                }
            }
        }
    }
    __syncthreads();  // the last m_s / l_s (or their initial values) are visible to every thread

#pragma unroll
    for (int qq = 0; qq < ATT_QUERIES; ++qq) {
        if (qq < nq) {
            const int qi = q0 + qq, row = qi / group, h = kvh * group + qi % group;
            const size_t slot = ((size_t)row * n_heads + h) * n_chunks + chunk;
            if (tid < d) part_acc[slot * d + tid] = acc[qq];
            if (tid == 0) {
                part_ml[2 * slot] = m_s[qq];
                part_ml[2 * slot + 1] = l_s[qq];
            }
        }
    }
}

// Pass 2: out[row, h] = Σ_c e^(m_c − M)·acc_c / Σ_c e^(m_c − M)·l_c over the chunks, M = max m_c.
// A query that saw no key gets NaN, as the CPU reference does (its softmax computes (-inf)-(-inf)).
// Launch: grid (rows, n_heads), block ATT_THREADS (>= head_dim).
extern "C" __global__ void attention_combine(float* out, const float* part_acc, const float* part_ml, int n_heads,
                                             int head_dim, int n_chunks) {
    const int tid = threadIdx.x;
    if (tid >= head_dim) return;  // no barriers below
    const size_t query = (size_t)blockIdx.x * n_heads + blockIdx.y;
    const float* ml = part_ml + query * n_chunks * 2;
    float m = -INFINITY;
    for (int c = 0; c < n_chunks; ++c) m = fmaxf(m, ml[2 * c]);
    float l = 0.0f, a = 0.0f;
    if (m != -INFINITY)
        for (int c = 0; c < n_chunks; ++c) {
            const float mc = ml[2 * c];
            if (mc == -INFINITY) continue;  // that chunk saw nothing (its acc is 0)
            const float w = expf(mc - m);
            l = fmaf(ml[2 * c + 1], w, l);
            a = fmaf(part_acc[(query * n_chunks + c) * head_dim + tid], w, a);
        }
    out[query * head_dim + tid] = m == -INFINITY ? __int_as_float(0x7fc00000) : a / l;
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
