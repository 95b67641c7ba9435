//! `init-head`: an untrained head for a base model, initialised as the reference implementations
//! do. It is the start of training and a head for tests (greedy output must not depend on it).

use std::path::Path;

use crate::draft::clover2::{self, cell_tensors, CLOVER_ROPE_THETA};
use crate::draft::config::{head_config_json, read_json, CloverConfig};
use crate::draft::{eagle, DraftKind};
use crate::error::{Error, Result};
use crate::model::random::tensor_shapes;
use crate::model::ModelConfig;
use crate::rng::Rng;
use crate::weights::safetensors::SafetensorsFiles;
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
    // Qwen2's layers (and any config with `attention_bias`) carry q/k/v biases, which the head's
    // loader then requires. Drawn last, so a bias-free head's draws are unchanged.
    if c.qkv_bias {
        let bound = 1.0 / (h as f32).sqrt();
        for (name, out) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            let values = (0..out).map(|_| (2.0 * rng.uniform_f32() - 1.0) * bound).collect();
            t.push((format!("{prefix}.self_attn.{name}.bias"), vec![out], values));
        }
    }
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

/// PyTorch's `uniform_(b=0.01)`: U[0, 0.01), non-negative (clover2.md §6).
fn small_uniform(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| 0.01 * rng.uniform_f32()).collect()
}

/// U[0, 0.01) on an `[rows, cols]` matrix plus the identity on its first `rows` columns.
fn eye_plus_uniform(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    let mut w = small_uniform(rng, rows * cols);
    for i in 0..rows {
        w[i * cols + i] += 1.0;
    }
    w
}

/// An AD cell near the identity: Wq, Wk = I + U, Wv = U, biases 0, gain 1. With Wv this small
/// the cell starts as `x + (tiny)`, so the state passes through.
fn clover_cell_tensors(rng: &mut Rng, h: usize, prefix: &str) -> Tensors {
    cell_tensors(h)
        .into_iter()
        .map(|(name, shape)| {
            let values = match name {
                "input_layernorm.weight" => vec![1.0; h],
                "q.weight" | "k.weight" => eye_plus_uniform(rng, h, h),
                "v.weight" => small_uniform(rng, h * h),
                _ => vec![0.0; h],
            };
            (format!("{prefix}.{name}"), shape, values)
        })
        .collect()
}

/// Clover-2 (clover2.md §6, §16 P4): the Augmenting Block's layers are copies of base decoder
/// layer `from_layer` (default: the last, as Clover-2's first commit and most likely the paper
/// did; the reference's HEAD copies layer 0) and both norms start from its final norm, so the
/// block starts out continuing the base model's computation; the FCs start near the identity on
/// the state.
pub fn clover2_tensors(
    rng: &mut Rng,
    c: &ModelConfig,
    base: &SafetensorsFiles,
    layers: usize,
    from_layer: usize,
) -> Result<Tensors> {
    let h = c.hidden_size;
    let prefix = format!("model.layers.{from_layer}.");
    let mut copied = Vec::new();
    for (name, shape) in tensor_shapes(c).into_iter().filter(|(n, _)| n.starts_with(&prefix)) {
        let values = base.get(&name, &shape)?.to_f32();
        copied.push((name[prefix.len()..].to_string(), shape, values));
    }
    let final_norm = base.get("model.norm.weight", &[h])?.to_f32();

    let mut t = clover_cell_tensors(rng, h, clover2::AD0);
    for l in 0..layers {
        t.extend(copied.iter().map(|(name, shape, v)| (format!("layers.{l}.{name}"), shape.clone(), v.clone())));
    }
    t.push((clover2::CLOVER_NORM.into(), vec![h], final_norm.clone()));
    t.push((format!("{}.weight", clover2::HEAD0_FC), vec![h, h], eye_plus_uniform(rng, h, h)));
    t.push((format!("{}.bias", clover2::HEAD0_FC), vec![h], vec![0.0; h]));
    t.extend(clover_cell_tensors(rng, h, clover2::AD1));
    t.push((format!("{}.weight", clover2::HEADS_FC), vec![h, 2 * h], eye_plus_uniform(rng, h, 2 * h)));
    t.push((format!("{}.bias", clover2::HEADS_FC), vec![h], vec![0.0; h]));
    t.push((clover2::HEAD_NORM.into(), vec![h], final_norm));
    Ok(t)
}

/// An untrained head for the base model in `base_dir`: its tensors and its `config.json`.
pub fn fresh_head(kind: DraftKind, base_dir: &Path, seed: u64) -> Result<(Tensors, serde_json::Value)> {
    fresh_head_from(kind, base_dir, seed, None)
}

/// `fresh_head`, with Clover-2's Augmenting Block copied from base layer `block_layer` instead of
/// the last (`None`).
pub fn fresh_head_from(
    kind: DraftKind,
    base_dir: &Path,
    seed: u64,
    block_layer: Option<usize>,
) -> Result<(Tensors, serde_json::Value)> {
    let base_path = base_dir.join("config.json");
    let base_json = read_json(&base_path)?;
    let base = ModelConfig::from_json(&base_json, &base_path)?;
    let from_layer = match block_layer {
        Some(l) if kind != DraftKind::Clover2 => {
            return Err(Error::input(format!(
                "--block-from-layer {l}: only a Clover-2 head copies base layers (EAGLE-1's layer starts random)"
            )))
        }
        Some(l) if l >= base.num_layers => {
            return Err(Error::input(format!(
                "--block-from-layer {l}: {} has {} decoder layers (0..={})",
                base_path.display(),
                base.num_layers,
                base.num_layers.saturating_sub(1)
            )))
        }
        Some(l) => l,
        None => base.num_layers.saturating_sub(1),
    };
    let mut rng = Rng::new(seed);
    Ok(match kind {
        DraftKind::Eagle => {
            (eagle_tensors(&mut rng, &base), head_config_json(&base_json, kind.name(), 1, eagle::EAGLE_ROPE_THETA))
        }
        DraftKind::Clover2 => {
            let files = SafetensorsFiles::open_dir(base_dir)?;
            let clover = CloverConfig::default();
            let mut config = head_config_json(&base_json, kind.name(), clover.num_layers, CLOVER_ROPE_THETA);
            if let Some(o) = config.as_object_mut() {
                o.insert("clover".into(), clover.to_json());
            }
            (clover2_tensors(&mut rng, &base, &files, clover.num_layers, from_layer)?, config)
        }
    })
}

/// Writes `out_dir/config.json` and `out_dir/model.safetensors` for an untrained head.
pub fn init_head(kind: DraftKind, base_dir: &Path, out_dir: &Path, seed: u64) -> Result<()> {
    init_head_from(kind, base_dir, out_dir, seed, None)
}

/// `init_head`, with Clover-2's Augmenting Block copied from base layer `block_layer`.
pub fn init_head_from(
    kind: DraftKind,
    base_dir: &Path,
    out_dir: &Path,
    seed: u64,
    block_layer: Option<usize>,
) -> Result<()> {
    let (tensors, config) = fresh_head_from(kind, base_dir, seed, block_layer)?;
    write_head(out_dir, &tensors, &config)
}

/// Writes a head folder: `config.json` and `model.safetensors` (f32), each atomically.
pub fn write_head(out_dir: &Path, tensors: &Tensors, config: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    write_f32_safetensors(&out_dir.join("model.safetensors"), tensors)?;
    let text = serde_json::to_string_pretty(config).map_err(|e| Error::input(e.to_string()))?;
    crate::fsutil::write_atomically(&out_dir.join("config.json"), text.as_bytes())
}
