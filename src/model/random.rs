//! Models with random weights: tiny ones for fast tests, full-size ones for latency benchmarks
//! where the numbers, not the text, matter.

use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil::write_atomically;
use crate::model::config::ModelConfig;
use crate::rng::Rng;
use crate::weights::{write_f32_safetensors, write_safetensors, DType};

/// Every tensor name and shape a base model with this config has, in a stable order.
pub fn tensor_shapes(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, q, kv, i) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![c.vocab_size, h])];
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        let mut add = |name: &str, shape: Vec<usize>| shapes.push((format!("{p}.{name}"), shape));
        add("input_layernorm.weight", vec![h]);
        add("self_attn.q_proj.weight", vec![q, h]);
        add("self_attn.k_proj.weight", vec![kv, h]);
        add("self_attn.v_proj.weight", vec![kv, h]);
        if c.qkv_bias {
            add("self_attn.q_proj.bias", vec![q]);
            add("self_attn.k_proj.bias", vec![kv]);
            add("self_attn.v_proj.bias", vec![kv]);
        }
        add("self_attn.o_proj.weight", vec![h, q]);
        add("post_attention_layernorm.weight", vec![h]);
        add("mlp.gate_proj.weight", vec![i, h]);
        add("mlp.up_proj.weight", vec![i, h]);
        add("mlp.down_proj.weight", vec![h, i]);
    }
    shapes.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        shapes.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    shapes
}

/// Writes `dir/config.json` and `dir/model.safetensors` (f32): norms near 1, matrices uniform
/// with a scale that keeps activations O(1), embeddings larger so logits are peaked enough to
/// give varied greedy continuations.
pub fn write_random_model(dir: &Path, config: &serde_json::Value, seed: u64) -> Result<()> {
    write_random_model_scaled(dir, config, seed, 2.0)
}

/// `write_random_model` with the embedding (and so the logit) scale chosen: small scales give
/// flat next-token distributions, for tests that need many plausible continuations.
pub fn write_random_model_scaled(dir: &Path, config: &serde_json::Value, seed: u64, embed_scale: f32) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::input(e.to_string()))?;
    let parsed = ModelConfig::from_json(config, &config_path)?;
    let mut rng = Rng::new(seed);
    let mut tensors = Vec::new();
    for (name, shape) in tensor_shapes(&parsed) {
        let n: usize = shape.iter().product();
        let value = value_rule(&name, &shape, embed_scale);
        let values: Vec<f32> = (0..n).map(|_| value(rng.uniform_f32())).collect();
        tensors.push((name, shape, values));
    }
    write_f32_safetensors(&dir.join("model.safetensors"), &tensors)?;
    write_atomically(&config_path, text.as_bytes())
}

/// A full-size random model for latency benchmarks (`bench --random-weights`): bf16 weights,
/// one safetensors shard per decoder layer (plus one for the embedding, final norm and lm_head)
/// and `model.safetensors.index.json`, so a 7B model never needs more than one layer's values in
/// memory. Values come from `seed`, a tensor's index and a chunk of it (chunks generated in
/// parallel), with the scales of `write_random_model`.
pub fn write_random_model_bf16_sharded(dir: &Path, config: &serde_json::Value, seed: u64) -> Result<()> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 20;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::input(e.to_string()))?;
    let parsed = ModelConfig::from_json(config, &config_path)?;
    let shapes = tensor_shapes(&parsed);
    // Shard of each tensor: its layer + 1, or 0 outside the layers.
    let shard_of = |name: &str| -> usize {
        name.strip_prefix("model.layers.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|l| l.parse::<usize>().ok())
            .map_or(0, |l| l + 1)
    };
    let shards = parsed.num_layers + 1;
    let file = |s: usize| format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
    let mut weight_map = serde_json::Map::new();
    for s in 0..shards {
        let mut tensors = Vec::new();
        for (t, (name, shape)) in shapes.iter().enumerate().filter(|(_, (n, _))| shard_of(n) == s) {
            let value = value_rule(name, shape, 2.0);
            let mut values = vec![0f32; shape.iter().product()];
            values.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
                let mut rng = Rng::new(seed ^ ((t as u64) << 32) ^ c as u64);
                chunk.iter_mut().for_each(|v| *v = value(rng.uniform_f32()));
            });
            weight_map.insert(name.clone(), file(s).into());
            tensors.push((name.clone(), shape.clone(), values));
        }
        write_safetensors(&dir.join(file(s)), &tensors, DType::BF16)?;
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    let index_text = serde_json::to_string_pretty(&index).map_err(|e| Error::input(e.to_string()))?;
    write_atomically(&dir.join("model.safetensors.index.json"), index_text.as_bytes())?;
    write_atomically(&config_path, text.as_bytes())
}

/// A tensor's random values from uniform draws u ∈ [0, 1): norm gains near 1, matrices uniform
/// with a scale that keeps activations O(1), embeddings (and lm_head) at ±`embed_scale`.
fn value_rule(name: &str, shape: &[usize], embed_scale: f32) -> impl Fn(f32) -> f32 + Sync {
    let norm = name.ends_with("norm.weight");
    let scale = if name.contains("embed") || name.contains("lm_head") {
        embed_scale
    } else {
        1.7 / (*shape.last().unwrap_or(&1) as f32).sqrt()
    };
    move |u| if norm { 0.8 + 0.4 * u } else { (2.0 * u - 1.0) * scale }
}

/// A llama config small enough for unit tests to run many forwards in milliseconds.
pub fn tiny_llama_config(vocab: usize) -> serde_json::Value {
    serde_json::json!({
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::{Llama, LogitRows};

    #[test]
    fn sharded_bf16_model_loads_and_runs() {
        let dir = std::env::temp_dir().join(format!("clover-random-bf16-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = tiny_llama_config(64);
        config["tie_word_embeddings"] = false.into();
        write_random_model_bf16_sharded(&dir, &config, 3).unwrap();
        assert!(dir.join("model-00003-of-00003.safetensors").exists(), "one shard per layer and one more");
        let model = Llama::load(&dir, CpuBackend).unwrap();
        let mut cache = model.new_cache(8);
        let logits = model.prefill(&mut cache, &[1, 5, 9], LogitRows::Last).unwrap().logits;
        assert_eq!(logits.len(), 64);
        assert!(logits.iter().all(|v| v.is_finite()));
        assert!(logits.iter().any(|&v| v != logits[0]), "the weights are not all equal");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
