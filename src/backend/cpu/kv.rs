//! Key/value cache writes and compaction on the `[n_kv_heads, capacity, head_dim]` layout.

use crate::backend::KvLayout;

pub fn kv_write(cache: &mut [f32], l: KvLayout, new: &[f32], rows: usize, start: usize) {
    assert!(start + rows <= l.capacity, "kv_write past the cache capacity");
    let d = l.head_dim;
    for r in 0..rows {
        for h in 0..l.n_kv_heads {
            let src = &new[(r * l.n_kv_heads + h) * d..][..d];
            cache[(h * l.capacity + start + r) * d..][..d].copy_from_slice(src);
        }
    }
}

pub fn kv_move(cache: &mut [f32], l: KvLayout, moves: &[(usize, usize)]) {
    let d = l.head_dim;
    for h in 0..l.n_kv_heads {
        for &(from, to) in moves {
            if from != to {
                let base = h * l.capacity;
                cache.copy_within((base + from) * d..(base + from + 1) * d, (base + to) * d);
            }
        }
    }
}
