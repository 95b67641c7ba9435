//! A draft head's `config.json`: the HF Llama fields of its own layers, plus a `draft` block
//! naming its kind and the base model it was built for.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

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

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, "(json)", e.to_string()))
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
