//! `init-head`: an untrained head for a base model, initialised as the reference implementations
//! do. It is the start of training and a head for tests (greedy output must not depend on it).

use std::path::Path;

use crate::draft::config::{head_config_json, read_json};
use crate::draft::DraftKind;
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::rng::Rng;
use crate::weights::write_f32_safetensors;

pub type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// PyTorch's `nn.Linear` default: weight and bias uniform in ±1/sqrt(fan_in).
pub fn linear_default(rng: &mut Rng, out: usize, fan_in: usize) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    (0..out * fan_in).map(|_| (2.0 * rng.uniform_f32() - 1.0) * bound).collect()
}

/// The Llama decoder-layer tensors under `prefix`, nn.Linear-initialised, norms at 1.
pub fn decoder_layer(rng: &mut Rng, c: &ModelConfig, prefix: &str, input_norm: bool) -> Tensors {
    let (h, q, kv, i) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let mut t: Tensors = Vec::new();
    if input_norm {
        t.push((format!("{prefix}.input_layernorm.weight"), vec![h], vec![1.0; h]));
    }
    for (name, out, fan_in) in [
        ("self_attn.q_proj", q, h),
        ("self_attn.k_proj", kv, h),
        ("self_attn.v_proj", kv, h),
        ("self_attn.o_proj", h, q),
        ("mlp.gate_proj", i, h),
        ("mlp.up_proj", i, h),
        ("mlp.down_proj", h, i),
    ] {
        t.push((format!("{prefix}.{name}.weight"), vec![out, fan_in], linear_default(rng, out, fan_in)));
    }
    t.push((format!("{prefix}.post_attention_layernorm.weight"), vec![h], vec![1.0; h]));
    t
}

/// EAGLE-1 (eagle.md §2): fc [H, 2H] with bias, one decoder layer without input norm. The
/// embedding is the base model's and is not stored.
pub fn eagle_tensors(rng: &mut Rng, c: &ModelConfig) -> Tensors {
    let h = c.hidden_size;
    let mut t: Tensors = vec![("fc.weight".into(), vec![h, 2 * h], linear_default(rng, h, 2 * h))];
    let bound = 1.0 / (2.0 * h as f32).sqrt();
    t.push(("fc.bias".into(), vec![h], (0..h).map(|_| (2.0 * rng.uniform_f32() - 1.0) * bound).collect()));
    t.extend(decoder_layer(rng, c, "layers.0", false));
    t
}

/// Writes `out_dir/config.json` and `out_dir/model.safetensors` for an untrained head.
pub fn init_head(kind: DraftKind, base_dir: &Path, out_dir: &Path, seed: u64) -> Result<()> {
    let base_path = base_dir.join("config.json");
    let base_json = read_json(&base_path)?;
    let base = ModelConfig::from_json(&base_json, &base_path)?;
    let mut rng = Rng::new(seed);
    let (tensors, layers) = match kind {
        DraftKind::Eagle => (eagle_tensors(&mut rng, &base), 1),
        DraftKind::Clover2 => return Err(Error::input("init-head --kind clover2 is not available yet")),
    };
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    write_f32_safetensors(&out_dir.join("model.safetensors"), &tensors)?;
    let config = head_config_json(&base_json, kind.name(), layers, 10000.0);
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::input(e.to_string()))?;
    crate::fsutil::write_atomically(&out_dir.join("config.json"), text.as_bytes())
}
