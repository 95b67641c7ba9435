//! A draft head's `config.json`: the HF Llama fields of its own layers, plus a `draft` block
//! naming its kind and the base model it was built for.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::weights::safetensors::SafetensorsFiles;

/// Refuses a head built for another base model: the hidden size and the vocabulary must match,
/// since the head reads the base features and shares its lm_head.
pub fn check_compatible(head: &ModelConfig, base: &ModelConfig, path: &Path) -> Result<()> {
    if head.hidden_size != base.hidden_size {
        return Err(Error::format(
            path,
            "hidden_size",
            format!(
                "the head has {} but the base model has {}: the head was built for another base model",
                head.hidden_size, base.hidden_size
            ),
        ));
    }
    if head.vocab_size != base.vocab_size {
        return Err(Error::format(
            path,
            "vocab_size",
            format!(
                "the head has {} but the base model has {}: the head was built for another base model",
                head.vocab_size, base.vocab_size
            ),
        ));
    }
    Ok(())
}

pub use crate::fsutil::read_json;

/// Refuses to write a head into `out` when it holds a model that is not a draft head (a base
/// model, say): its config and weights would be replaced. Over a head, writing updates it.
pub fn check_head_out(out: &Path) -> Result<()> {
    let config = out.join("config.json");
    if config.exists() && declared_kind(&read_json(&config)?).is_none() {
        return Err(Error::format(
            &config,
            "draft.kind",
            "--out holds a model that is not a draft head: give an empty folder or a head's folder",
        ));
    }
    Ok(())
}

/// The head's kind from `draft.kind`, if the config names one.
pub fn declared_kind(json: &Value) -> Option<&str> {
    json.get("draft").and_then(|d| d.get("kind")).and_then(Value::as_str)
}

/// A head config from the base model's: same sizes, `num_hidden_layers` = the head's own layer
/// count, the drafter's RoPE base, and the `draft` block.
pub fn head_config_json(base: &Value, kind: &str, layers: usize, rope_theta: f64) -> Value {
    let mut c = base.clone();
    if let Some(o) = c.as_object_mut() {
        o.insert("num_hidden_layers".into(), layers.into());
        o.insert("rope_theta".into(), rope_theta.into());
        o.remove("rope_scaling");
        o.insert("draft".into(), serde_json::json!({ "kind": kind }));
    }
    c
}

/// The `clover` block of a Clover-2 head's config (clover2.md §6). Missing fields take the
/// reference defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CloverConfig {
    /// K: the number of draft heads, which is also the deepest tree level the head can draft.
    pub num_heads: usize,
    /// Decoder layers in the Augmenting Block.
    pub num_layers: usize,
    /// Training loss weights: head i's loss is scaled by `heads_coefficient · decay_coefficient^i`.
    pub heads_coefficient: f64,
    pub decay_coefficient: f64,
}

impl Default for CloverConfig {
    fn default() -> Self {
        CloverConfig { num_heads: 5, num_layers: 2, heads_coefficient: 1.0, decay_coefficient: 0.7 }
    }
}

impl CloverConfig {
    pub fn from_json(json: &Value, path: &Path) -> Result<Self> {
        let mut c = CloverConfig::default();
        let Some(block) = json.get("clover").filter(|v| !v.is_null()) else {
            return Ok(c);
        };
        let count =
            |key: &str, default: usize| -> Result<usize> {
                match block.get(key) {
                    None => Ok(default),
                    Some(v) => v.as_u64().filter(|&n| n >= 1).map(|n| n as usize).ok_or_else(|| {
                        Error::format(path, format!("clover.{key}"), "expected an integer of at least 1")
                    }),
                }
            };
        let number = |key: &str, default: f64| -> Result<f64> {
            match block.get(key) {
                None => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| Error::format(path, format!("clover.{key}"), "not a number")),
            }
        };
        c.num_heads = count("num_heads", c.num_heads)?;
        c.num_layers = count("num_layers", c.num_layers)?;
        c.heads_coefficient = number("heads_coefficient", c.heads_coefficient)?;
        c.decay_coefficient = number("decay_coefficient", c.decay_coefficient)?;
        Ok(c)
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "heads_coefficient": self.heads_coefficient,
            "decay_coefficient": self.decay_coefficient,
        })
    }
}

/// A base model's folder given as a head folder: its config reads like a reference head's (both
/// are Llama configs), so without this the error would be the first head tensor it lacks. A base
/// model's tensors are `model.*`, which no head's are.
pub fn refuse_base_model(files: &SafetensorsFiles, dir: &Path) -> Result<()> {
    if files.names().any(|n| n.starts_with("model.layers.") || n == "model.embed_tokens.weight") {
        return Err(Error::input(format!(
            "{}: this is a base model's folder (it holds model.layers.* tensors), not a draft head's; \
             a head folder is asked for (assets/, or the output of distill, export-head or init-head)",
            dir.display()
        )));
    }
    Ok(())
}

/// After a head has loaded: a `layers.N.*` tensor it did not take means the config counts fewer
/// layers (`field`) than the weights hold, and the head would run without them.
pub fn refuse_unused_layers(files: &SafetensorsFiles, config_path: &Path, field: &str, loaded: usize) -> Result<()> {
    match files.unused().into_iter().find(|n| n.starts_with("layers.")) {
        Some(name) => Err(Error::format(
            config_path,
            field,
            format!("{loaded} layers, but the weights also hold {name}: the config does not describe these weights"),
        )),
        None => Ok(()),
    }
}
