//! Perplexity and logit dumps for comparison with other implementations.

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};
use crate::fsutil::write_atomically;

/// `log softmax(logits)[index]`, computed in f64.
pub fn log_softmax_at(logits: &[f32], index: usize) -> f64 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[index] as f64 - max - sum.ln()
}

/// Writes `logits` (f32 `[T, V]`) and `token_ids` (i64 `[T]`) as safetensors.
pub fn write_logits(path: &Path, logits: &[f32], vocab: usize, ids: &[u32]) -> Result<()> {
    let rows = logits.len() / vocab;
    let logit_bytes: &[u8] = bytemuck::cast_slice(logits);
    let ids64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let id_bytes: &[u8] = bytemuck::cast_slice(&ids64);
    let bad = |e: safetensors::SafeTensorError| Error::format(path, "(safetensors)", e.to_string());
    let tensors = vec![
        ("logits", TensorView::new(Dtype::F32, vec![rows, vocab], logit_bytes).map_err(bad)?),
        ("token_ids", TensorView::new(Dtype::I64, vec![ids.len()], id_bytes).map_err(bad)?),
    ];
    let bytes = safetensors::serialize(tensors, &None).map_err(bad)?;
    write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_of_uniform_is_minus_log_n() {
        assert!((log_softmax_at(&[1.0; 4], 2) + 4f64.ln()).abs() < 1e-12);
        assert!(log_softmax_at(&[1000.0, 0.0], 0).abs() < 1e-12);
    }
}
