//! The model's hyperparameters from GGUF metadata, and the HF `config.json` they become.

use serde_json::{json, Value};

use super::{optional, ImportDType};
use crate::error::{Error, Result};
use crate::weights::gguf::GgufFile;
use crate::weights::gguf_tokenizer::TokenizerMeta;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    fn read(g: &GgufFile) -> Result<Self> {
        const KEY: &str = "general.architecture";
        match g.get_str(KEY)? {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            // llama.cpp writes Mistral models as `llama` (permuted Q/K rows); a file that says
            // `mistral` comes from some other converter, whose Q/K row order is not known here.
            other => Err(Error::format(
                &g.path,
                KEY,
                format!(
                    "unsupported architecture `{other}` (llama and qwen2 are; llama.cpp writes Mistral models as llama)"
                ),
            )),
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }

    fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

pub(super) struct HParams {
    pub(super) arch: Arch,
    pub(super) n_layer: u32,
    pub(super) n_embd: u32,
    pub(super) n_ff: u32,
    pub(super) n_head: u32,
    pub(super) n_head_kv: u32,
    pub(super) head_dim: Option<u32>,
    pub(super) rms_eps: f32,
    pub(super) rope_theta: f32,
    pub(super) n_ctx: u32,
    pub(super) vocab_size: u32,
    pub(super) attention_bias: bool,
}

impl HParams {
    pub(super) fn read(g: &GgufFile, n_tokens: usize) -> Result<Self> {
        let arch = Arch::read(g)?;
        let key = |k: &str| format!("{}.{k}", arch.name());
        let nonzero = |k: String, v: u32| match v {
            0 => Err(Error::format(&g.path, k, "must be > 0")),
            v => Ok(v),
        };
        // Scaled RoPE (linear, YaRN, …) is not imported: dropping it would run the model with
        // other rotations past its original context, silently.
        let scaling = key("rope.scaling.type");
        if let Some(kind) = optional(g, &scaling, GgufFile::get_str)?.filter(|&k| k != "none") {
            return Err(Error::format(&g.path, scaling, format!("`{kind}`: scaled RoPE is not supported")));
        }
        let n_head = nonzero(key("attention.head_count"), g.get_u32(&key("attention.head_count"))?)?;
        let n_head_kv = optional(g, &key("attention.head_count_kv"), GgufFile::get_u32)?.unwrap_or(n_head);
        let n_tokens = u32::try_from(n_tokens)
            .map_err(|_| Error::format(&g.path, "tokenizer.ggml.tokens", "more than 2^32 tokens"))?;
        Ok(HParams {
            arch,
            n_layer: g.get_u32(&key("block_count"))?,
            n_embd: g.get_u32(&key("embedding_length"))?,
            n_ff: g.get_u32(&key("feed_forward_length"))?,
            n_head,
            n_head_kv: nonzero(key("attention.head_count_kv"), n_head_kv)?,
            head_dim: optional(g, &key("attention.key_length"), GgufFile::get_u32)?,
            rms_eps: g.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            // llama.cpp's default when the converter did not write it.
            rope_theta: optional(g, &key("rope.freq_base"), GgufFile::get_f32)?.unwrap_or(10_000.0),
            n_ctx: g.get_u32(&key("context_length"))?,
            vocab_size: optional(g, &key("vocab_size"), GgufFile::get_u32)?.unwrap_or(n_tokens),
            attention_bias: g.tensor("blk.0.attn_q.bias").is_some(),
        })
    }
}

/// f32 metadata printed as its shortest decimal, so 1e-5 stored as f32 reads 1e-05 in config.json
/// rather than 9.999999747378752e-06.
fn shortest(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

pub(super) fn config_json(hp: &HParams, tok: &TokenizerMeta, tied: bool, dtype: ImportDType) -> Value {
    let mut config = json!({
        "architectures": [hp.arch.hf_class()],
        "model_type": hp.arch.name(),
        "hidden_size": hp.n_embd,
        "intermediate_size": hp.n_ff,
        "num_hidden_layers": hp.n_layer,
        "num_attention_heads": hp.n_head,
        "num_key_value_heads": hp.n_head_kv,
        "hidden_act": "silu",
        "rms_norm_eps": shortest(hp.rms_eps),
        "rope_theta": shortest(hp.rope_theta),
        "rope_scaling": null,
        "max_position_embeddings": hp.n_ctx,
        "vocab_size": hp.vocab_size,
        "attention_bias": hp.attention_bias,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.eos,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype.torch_name(),
    });
    if let Some(head_dim) = hp.head_dim {
        config["head_dim"] = json!(head_dim);
    }
    config
}
