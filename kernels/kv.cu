#include "common.cuh"
// Mirrors src/backend/cpu/kv.rs. Cache layout [n_kv_heads, capacity, head_dim]; new rows are
// [rows, n_kv_heads·head_dim].

// cache[h, start + r, :] = fresh[r, h, :]. Launch: grid (rows, n_kv_heads) as (x, y), block 128
// looping over head_dim. Slots past the capacity (which the CPU rejects with a panic) are skipped
// rather than written out of bounds.
extern "C" __global__ void kv_write(float* cache, const float* fresh, int rows, int start, int n_kv_heads,
                                    int capacity, int head_dim) {
    const int r = blockIdx.x, h = blockIdx.y;
    if (r >= rows || h >= n_kv_heads || start + r >= capacity) return;
    const float* src = fresh + ((size_t)r * n_kv_heads + h) * head_dim;
    float* dst = cache + ((size_t)h * capacity + start + r) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) dst[d] = src[d];
}

// Applies the n_moves (from, to) pairs of `moves` IN ORDER to every head: slot `to` ← slot `from`.
// A later move may read a slot an earlier one wrote, so each (head, d) element stays with one
// thread that walks the whole list; elements never interact, so no barrier is needed. Moves with
// from == to are no-ops (as on the CPU); out-of-range slots (a CPU panic) are skipped.
// Launch: grid n_kv_heads, block 128 looping over head_dim.
extern "C" __global__ void kv_move(float* cache, const int* moves, int n_moves, int n_kv_heads, int capacity,
                                   int head_dim) {
    const int h = blockIdx.x;
    if (h >= n_kv_heads) return;
    float* base = cache + (size_t)h * capacity * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        for (int k = 0; k < n_moves; ++k) {
            const int from = moves[2 * k], to = moves[2 * k + 1];
            if (from == to || (unsigned)from >= (unsigned)capacity || (unsigned)to >= (unsigned)capacity) continue;
            base[(size_t)to * head_dim + d] = base[(size_t)from * head_dim + d];
        }
    }
}
