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

#[cfg(test)]
mod tests {
    use super::*;

    const L: KvLayout = KvLayout { n_kv_heads: 2, capacity: 5, head_dim: 3 };

    /// Value of head h, slot s, lane i in a cache filled by hand: distinct everywhere.
    fn value(h: usize, s: usize, i: usize) -> f32 {
        (100 * h + 10 * s + i) as f32
    }

    fn filled() -> Vec<f32> {
        let mut c = vec![0.0; L.n_kv_heads * L.capacity * L.head_dim];
        for h in 0..L.n_kv_heads {
            for s in 0..L.capacity {
                for i in 0..L.head_dim {
                    c[(h * L.capacity + s) * L.head_dim + i] = value(h, s, i);
                }
            }
        }
        c
    }

    /// Rows come in `[row, head, lane]` order and land in `[head, slot, lane]`, nothing else moves.
    #[test]
    fn write_puts_each_rows_heads_at_their_slots() {
        let mut cache = filled();
        let new: Vec<f32> = (0..2 * L.n_kv_heads * L.head_dim).map(|x| -(x as f32) - 1.0).collect();
        kv_write(&mut cache, L, &new, 2, 3);
        for h in 0..L.n_kv_heads {
            for s in 0..L.capacity {
                for i in 0..L.head_dim {
                    let want = if s >= 3 { new[((s - 3) * L.n_kv_heads + h) * L.head_dim + i] } else { value(h, s, i) };
                    assert_eq!(cache[(h * L.capacity + s) * L.head_dim + i], want, "head {h} slot {s} lane {i}");
                }
            }
        }
    }

    /// Moves run in order, each a copy of one slot of every head (an accepted path compacted to
    /// the slots after the prefix: sources after their targets, as the engine makes them).
    #[test]
    fn moves_copy_slots_of_every_head_in_order() {
        let mut cache = filled();
        kv_move(&mut cache, L, &[(1, 1), (3, 2), (4, 3)]);
        for h in 0..L.n_kv_heads {
            let slot = |s: usize| &cache[(h * L.capacity + s) * L.head_dim..][..L.head_dim];
            for (s, from) in [(0, 0), (1, 1), (2, 3), (3, 4), (4, 4)] {
                let want: Vec<f32> = (0..L.head_dim).map(|i| value(h, from, i)).collect();
                assert_eq!(slot(s), want.as_slice(), "head {h} slot {s}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "capacity")]
    fn write_past_the_capacity_is_refused() {
        let mut cache = filled();
        kv_write(&mut cache, L, &[0.0; L.n_kv_heads * L.head_dim * 2], 2, 4);
    }
}
