//! Logit rows left on the backend. Greedy decoding, greedy verification and static-tree drafting
//! only need each row's argmax or top-k, which the backend picks where the rows are; the rows
//! themselves (a 49k-wide f32 row is 192 KiB) come to the host only for sampling at T > 0 and
//! for the dynamic trees, which rank by probability.

use crate::backend::Backend;

pub struct Logits<B: Backend> {
    /// `[rows, width]`.
    buf: B::Buf,
    rows: usize,
    width: usize,
}

impl<B: Backend> Logits<B> {
    /// `x · wᵀ` for `rows` rows of features: one logit per row of `w` (`width` of them).
    pub fn project(backend: &B, x: &B::Buf, rows: usize, w: &B::Weight, width: usize) -> Self {
        let mut buf = backend.zeros(rows * width);
        backend.matmul(x, rows, w, &mut buf);
        Logits { buf, rows, width }
    }

    /// Host rows made into backend rows (tests, and heads that compute logits on the host).
    pub fn from_host(backend: &B, host: &[f32], width: usize) -> Self {
        assert!(
            width > 0 && host.len().is_multiple_of(width),
            "logit rows: {} values are not rows of {width}",
            host.len()
        );
        Logits { buf: backend.upload(host), rows: host.len() / width, width }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn buf(&self) -> &B::Buf {
        &self.buf
    }

    /// Each row's k best columns, best first (`sampling::top_k_indices` order), `min(k, width)`
    /// per row.
    pub fn top_k(&self, backend: &B, k: usize) -> Vec<Vec<u32>> {
        let k = k.min(self.width);
        if k == 0 {
            return vec![Vec::new(); self.rows];
        }
        backend.top_k_rows(&self.buf, self.rows, self.width, k).chunks_exact(k).map(<[u32]>::to_vec).collect()
    }

    /// Each row's argmax (`sampling::argmax`).
    pub fn argmax(&self, backend: &B) -> Vec<u32> {
        backend.top_k_rows(&self.buf, self.rows, self.width, 1)
    }

    /// The rows on the host, `[rows, width]`.
    pub fn to_host(&self, backend: &B) -> Vec<f32> {
        let mut host = backend.download(&self.buf);
        host.truncate(self.rows * self.width);
        host
    }
}
