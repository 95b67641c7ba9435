//! Where the keys of a tree block sit in the sequence, for the chunks of `attention_partial`.
//!
//! The kernel splits a row's keys into chunks of `ATT_CHUNK` sequence positions and merges the
//! chunks' partial sums at the end, so the grouping is part of the result's bits. A tree node's
//! ancestors sit at slots `first_key + index` during verification but at their positions when
//! plain decoding commits them one by one; grouping by position gives both the same chunks, in
//! the same order, and with the kernel's in-order sums the same bits, which the lossless
//! speculative engine needs (speculative greedy output = plain greedy output).

/// Sequence positions per chunk of `attention_partial` (kernels/attention.cu, `ATT_CHUNK`).
pub const ATT_CHUNK: usize = 256;

/// The position of every key of a tree block, slots `first_key..past + rows` (`bits` is the
/// `rows × (past + rows − first_key)` mask of `AttnMask::Tree`): a key that is one of the call's
/// rows (slot ≥ `past`) sits at `first_key` plus the number of other tree keys its own mask row
/// marks, which is its depth when the mask marks a node's ancestors and itself; an earlier key
/// (tree drafting's previous levels, never verified against plain decoding) at its slot. Every
/// position lies in `first_key..past + rows`, so every key falls in one of the call's chunks.
pub fn tree_key_positions(bits: &[u8], rows: usize, past: usize, first_key: usize) -> Vec<i32> {
    let width = past + rows - first_key;
    assert!(bits.len() >= rows * width, "tree mask: {} entries for {rows} rows of {width}", bits.len());
    let position = |p: usize| i32::try_from(p).expect("CUDA attention: position beyond the 32-bit range");
    (0..width)
        .map(|j| {
            let slot = first_key + j;
            if slot < past {
                return position(slot);
            }
            let row = &bits[(slot - past) * width..][..width];
            let marked = row.iter().filter(|&&b| b != 0).count();
            position(first_key + marked.saturating_sub(1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys node `i` of a verified tree sees, as (chunk, position) in the order the kernel
    /// walks them: the committed slots of each chunk, then the tree block's keys of that chunk.
    fn verify_walk(parents: &[Option<usize>], base: usize, i: usize) -> Vec<(usize, usize)> {
        let n = parents.len();
        let mut bits = vec![0u8; n * n];
        for row in 0..n {
            let mut at = Some(row);
            while let Some(a) = at {
                bits[row * n + a] = 1;
                at = parents[a];
            }
        }
        let pos = tree_key_positions(&bits, n, base, base);
        let chunks = (base + n).div_ceil(ATT_CHUNK);
        let mut walk = Vec::new();
        for c in 0..chunks {
            let range = c * ATT_CHUNK..(c + 1) * ATT_CHUNK;
            walk.extend((range.start..range.end.min(base)).map(|t| (c, t)));
            for (j, &p) in pos.iter().enumerate() {
                let p = p as usize;
                if bits[i * n + j] != 0 && range.contains(&p) {
                    walk.push((c, p));
                }
            }
        }
        walk
    }

    #[test]
    fn a_verified_node_sees_the_chunks_plain_decoding_sees() {
        // Root, two children, grandchildren under both, a chain of depth 5 under the second child.
        let parents = [None, Some(0), Some(0), Some(1), Some(2), Some(2), Some(5), Some(6), Some(7)];
        let depth = |mut i: usize| {
            let mut d = 0;
            while let Some(p) = parents[i] {
                (i, d) = (p, d + 1);
            }
            d
        };
        // Bases that put a chunk edge before, inside and after the tree block.
        for base in [1, 200, 251, 253, 255, 256, 300, 509] {
            for i in 0..parents.len() {
                // Plain decoding committed the node's ancestors at positions base..base + depth.
                let last = base + depth(i);
                let plain: Vec<(usize, usize)> = (0..=last).map(|t| (t / ATT_CHUNK, t)).collect();
                assert_eq!(verify_walk(&parents, base, i), plain, "node {i} after {base} committed keys");
            }
        }
    }

    #[test]
    fn keys_of_earlier_levels_keep_their_slots() {
        // Two committed keys, then a tree level of 2 already cached, then 2 new rows (past = 4).
        let (first_key, past, rows) = (2, 4, 2);
        let width = past + rows - first_key;
        let bits = [1, 0, 1, 0, /* row 1 */ 0, 1, 0, 1];
        assert_eq!(bits.len(), rows * width);
        assert_eq!(tree_key_positions(&bits, rows, past, first_key), vec![2, 3, 3, 3]);
    }
}
