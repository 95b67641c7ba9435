//! Which HF tensor each GGUF tensor becomes, and the Q/K row order llama.cpp changed.

use std::collections::BTreeMap;

use super::hparams::{Arch, HParams};
use crate::error::{Error, Result};
use crate::weights::gguf::{GgufFile, GgufTensorInfo};

/// GGUF name → HF name per `spec/gguf.md`; `None` for tensors HF llama/qwen2 have no place for.
fn hf_name(gguf_name: &str) -> Option<String> {
    let (stem, kind) = gguf_name.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let hf = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let (layer, part) = stem.strip_prefix("blk.")?.split_once('.')?;
            let layer: u32 = layer.parse().ok()?;
            let sub = match part {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{sub}")
        }
    };
    Some(format!("{hf}.{kind}"))
}

/// How many heads llama.cpp permuted this tensor's rows over: only llama's Q (n_head) and K
/// (n_head_kv), weights and biases alike.
fn permuted_heads(hp: &HParams, gguf_name: &str) -> Option<u32> {
    if hp.arch != Arch::Llama {
        return None;
    }
    let stem = gguf_name.rsplit_once('.')?.0;
    if stem.ends_with(".attn_q") {
        Some(hp.n_head)
    } else if stem.ends_with(".attn_k") {
        Some(hp.n_head_kv)
    } else {
        None
    }
}

pub(super) struct PlannedTensor<'a> {
    pub(super) info: &'a GgufTensorInfo,
    /// HF order: the GGUF dims reversed.
    pub(super) shape: Vec<u64>,
    /// `(n_head, row_len)` when the rows must be un-permuted.
    pub(super) unpermute: Option<(usize, usize)>,
}

/// Sorted by HF name: the safetensors header lists tensors in that order and the data follows it.
pub(super) fn plan_tensors<'a>(g: &'a GgufFile, hp: &HParams) -> Result<BTreeMap<String, PlannedTensor<'a>>> {
    let mut plan = BTreeMap::new();
    for info in &g.tensors {
        let name = hf_name(&info.name)
            .ok_or_else(|| Error::format(&g.path, &info.name, "tensor has no HF llama/qwen2 equivalent"))?;
        let unpermute = match permuted_heads(hp, &info.name) {
            Some(n_head) => Some(unpermute_params(g, info, n_head)?),
            None => None,
        };
        let planned = PlannedTensor { info, shape: info.dims.iter().rev().copied().collect(), unpermute };
        if plan.insert(name.clone(), planned).is_some() {
            return Err(Error::format(&g.path, &info.name, format!("second tensor mapping to `{name}`")));
        }
    }
    Ok(plan)
}

fn unpermute_params(g: &GgufFile, info: &GgufTensorInfo, n_head: u32) -> Result<(usize, usize)> {
    let row_len = if info.dims.len() == 1 { 1 } else { info.dims[0] };
    let rows = info.n_elements().checked_div(row_len).unwrap_or(0);
    if rows == 0 || rows % (2 * u64::from(n_head)) != 0 {
        return Err(Error::format(
            &g.path,
            &info.name,
            format!("{rows} rows cannot be split into {n_head} heads of an even head size"),
        ));
    }
    let too_big = || Error::format(&g.path, &info.name, "tensor too large for this machine");
    Ok((n_head as usize, usize::try_from(row_len).map_err(|_| too_big())?))
}

/// Undoes llama.cpp's Q/K row permutation: per head, GGUF row `2j + i` holds HF row
/// `i·hd/2 + j` (rows viewed as [n_head, hd/2, 2] are transposed back to [n_head, 2, hd/2]).
/// `data` holds whole rows of `row_len` values and the row count is a multiple of 2·n_head.
pub(super) fn unpermute_qk<T: Copy>(data: &[T], n_head: usize, row_len: usize) -> Vec<T> {
    let head_dim = data.len() / row_len / n_head;
    let mut out = Vec::with_capacity(data.len());
    for head in 0..n_head {
        for i in 0..2 {
            for j in 0..head_dim / 2 {
                let src = head * head_dim + 2 * j + i;
                out.extend_from_slice(&data[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}
