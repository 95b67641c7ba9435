//! The HF `config.json` of a base model: llama (Llama 2/3, Vicuna, SmolLM2), mistral, qwen2.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::fsutil::read_json;
use crate::model::layer::LayerDims;

/// Bounds on a config's sizes, far above any released model's (Llama-3-405B: hidden 16,384,
/// Gemma's vocabulary 256,000, Qwen2.5-1M's context 1,010,000), so that a corrupt file is refused
/// by name instead of aborting in the allocator.
const MAX_HIDDEN: usize = 1 << 16;
const MAX_LAYERS: usize = 1 << 10;
const MAX_VOCAB: usize = 1 << 24;
const MAX_POSITIONS: usize = 1 << 24;
const MAX_HEAD_DIM: usize = 1 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

/// Llama-3 "rope_type: llama3" frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (qwen2).
    pub qkv_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_json(&read_json(path)?, path)
    }

    pub fn from_json(json: &Value, path: &Path) -> Result<Self> {
        let f = Fields { json, path: path.to_path_buf(), prefix: "" };
        let model_type = f.str("model_type")?;
        let architecture = match model_type.as_str() {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(Error::format(
                    path,
                    "model_type",
                    format!("`{other}` is not supported (llama, mistral, qwen2)"),
                ))
            }
        };
        let hidden_size = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads == 0 || hidden_size % num_heads != 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(Error::format(
                path,
                "num_attention_heads",
                format!("{num_heads} heads / {num_kv_heads} KV heads do not divide hidden_size {hidden_size}"),
            ));
        }
        let head_dim = f.opt_usize("head_dim")?.unwrap_or(hidden_size / num_heads);
        let eos_token_ids = token_ids(json, "eos_token_id", path)?;
        // What the engine runs is fixed; a config asking for something else is refused rather
        // than run as if it had not asked.
        if let Some(act) = json.get("hidden_act").filter(|v| !v.is_null()) {
            // swish is silu under another name.
            if !matches!(act.as_str(), Some("silu" | "swish")) {
                return Err(Error::format(path, "hidden_act", format!("{act} is not supported (silu)")));
            }
        }
        if json.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
            return Err(Error::format(path, "mlp_bias", "MLP biases are not supported"));
        }
        let rms_norm_eps = f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
        let rope_theta = f.opt_f64("rope_theta")?.unwrap_or(10000.0);
        for (field, value) in [("rms_norm_eps", rms_norm_eps), ("rope_theta", rope_theta)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(Error::format(path, field, format!("{value}: expected a positive number")));
            }
        }
        // Sliding-window attention is not implemented. Within the window it is full attention,
        // so a Mistral model's context stops at its window (Mistral-7B-v0.1: 4,096 of 32,768);
        // Qwen2's per-layer windows are refused.
        let mut max_position_embeddings = f.usize("max_position_embeddings")?;
        if architecture == Architecture::Qwen2 && json.get("use_sliding_window").and_then(Value::as_bool) == Some(true)
        {
            return Err(Error::format(path, "use_sliding_window", "sliding-window attention is not supported"));
        }
        if architecture == Architecture::Mistral {
            if let Some(window) = f.opt_usize("sliding_window")? {
                max_position_embeddings = max_position_embeddings.min(window);
            }
        }
        let vocab_size = f.usize("vocab_size")?;
        let intermediate_size = f.usize("intermediate_size")?;
        let num_layers = f.usize("num_hidden_layers")?;
        // Sizes are checked before anything is allocated from them: a zero would divide by zero
        // or chunk by zero deep in a kernel, an absurd one would abort in the allocator.
        let sizes = [
            ("hidden_size", hidden_size, MAX_HIDDEN),
            ("intermediate_size", intermediate_size, MAX_HIDDEN * 16),
            ("num_hidden_layers", num_layers, MAX_LAYERS),
            ("vocab_size", vocab_size, MAX_VOCAB),
            ("max_position_embeddings", max_position_embeddings, MAX_POSITIONS),
        ];
        for (field, value, max) in sizes {
            if value == 0 || value > max {
                return Err(Error::format(path, field, format!("{value}: expected a size from 1 to {max}")));
            }
        }
        // RoPE rotates pairs of lanes: an odd head size has no rotation to apply.
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(Error::format(
                path,
                "head_dim",
                format!(
                    "{head_dim}{}: expected an even number from 2 to {MAX_HEAD_DIM}",
                    if json.get("head_dim").is_none() { " (hidden_size / num_attention_heads)" } else { "" }
                ),
            ));
        }
        let bos_token_id = f.opt_usize("bos_token_id")?;
        let special = bos_token_id
            .iter()
            .map(|&id| ("bos_token_id", id as u64))
            .chain(eos_token_ids.iter().map(|&id| ("eos_token_id", id)));
        for (field, id) in special {
            check_in_vocab(id, vocab_size, path, field)?;
        }
        Ok(ModelConfig {
            architecture,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta,
            rope_scaling: rope_scaling(json, path)?,
            max_position_embeddings,
            vocab_size,
            tie_word_embeddings: json.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            qkv_bias: architecture == Architecture::Qwen2
                || json.get("attention_bias").and_then(Value::as_bool).unwrap_or(false),
            // In range of the vocabulary, so of u32.
            bos_token_id: bos_token_id.map(|id| id as u32),
            eos_token_ids: eos_token_ids.into_iter().map(|id| id as u32).collect(),
        })
    }

    /// Adds the stop tokens of `dir/generation_config.json`, when there is one: transformers
    /// stops at those, and some models list only there the end of a turn (Llama-3-Instruct's
    /// `<|eot_id|>`, 128009).
    pub fn with_generation_config(mut self, dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(self);
        }
        let ids = token_ids(&read_json(&path)?, "eos_token_id", &path)?;
        for &id in &ids {
            check_in_vocab(id, self.vocab_size, &path, "eos_token_id")?;
        }
        for id in ids {
            if !self.eos_token_ids.contains(&(id as u32)) {
                self.eos_token_ids.push(id as u32);
            }
        }
        Ok(self)
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    pub fn layer_dims(&self) -> LayerDims {
        LayerDims {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            n_heads: self.num_heads,
            n_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            qkv_bias: self.qkv_bias,
        }
    }

    /// RoPE inverse frequencies (head_dim/2 of them), with Llama-3 scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        let base: Vec<f64> =
            (0..half).map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64)).collect();
        match &self.rope_scaling {
            None => base,
            Some(s) => base.into_iter().map(|f| llama3_scale(f, s)).collect(),
        }
    }
}

/// Refuses a special token's id outside the vocabulary (named by `field` of `path`).
fn check_in_vocab(id: u64, vocab_size: usize, path: &Path, field: &str) -> Result<()> {
    if id >= vocab_size as u64 {
        return Err(Error::format(path, field, format!("token {id} is outside the vocabulary of {vocab_size}")));
    }
    Ok(())
}

/// A field holding a token id or a list of them (`eos_token_id`); absent or null: none.
fn token_ids(json: &Value, field: &str, path: &Path) -> Result<Vec<u64>> {
    let not_an_id = || Error::format(path, field, "expected a token id or a list of them");
    match json.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(|v| v.as_u64().ok_or_else(not_an_id)).collect(),
        Some(v) => Ok(vec![v.as_u64().ok_or_else(not_an_id)?]),
    }
}

/// The Llama-3 rule: long wavelengths are slowed by `factor`, short ones kept, and the band in
/// between interpolated smoothly.
fn llama3_scale(freq: f64, s: &Llama3RopeScaling) -> f64 {
    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / s.factor
    } else {
        let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * freq / s.factor + smooth * freq
    }
}

fn rope_scaling(json: &Value, path: &Path) -> Result<Option<Llama3RopeScaling>> {
    let Some(scaling) = json.get("rope_scaling").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let f = Fields { json: scaling, path: path.to_path_buf(), prefix: "rope_scaling." };
    let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(Value::as_str).unwrap_or("");
    if kind != "llama3" {
        return Err(Error::format(path, "rope_scaling.rope_type", format!("`{kind}` is not supported (llama3)")));
    }
    let s = Llama3RopeScaling {
        factor: f.f64("factor")?,
        low_freq_factor: f.f64("low_freq_factor")?,
        high_freq_factor: f.f64("high_freq_factor")?,
        original_max_position_embeddings: f.f64("original_max_position_embeddings")?,
    };
    // `llama3_scale` divides by each of these (and by their difference): a zero would turn every
    // rotation into NaN, and the model would run on silently.
    let fields = [
        ("factor", s.factor),
        ("low_freq_factor", s.low_freq_factor),
        ("high_freq_factor", s.high_freq_factor),
        ("original_max_position_embeddings", s.original_max_position_embeddings),
    ];
    for (field, value) in fields {
        if !(value.is_finite() && value > 0.0) {
            return Err(f.error(field, &format!("{value}: expected a positive number")));
        }
    }
    if s.high_freq_factor <= s.low_freq_factor {
        return Err(f.error(
            "high_freq_factor",
            &format!("{}: must be above low_freq_factor ({})", s.high_freq_factor, s.low_freq_factor),
        ));
    }
    Ok(Some(s))
}

struct Fields<'a> {
    json: &'a Value,
    path: PathBuf,
    /// Where `json` sits in the file, for the field names of errors (`rope_scaling.`).
    prefix: &'static str,
}

impl Fields<'_> {
    fn error(&self, key: &str, msg: &str) -> Error {
        Error::format(&self.path, format!("{}{key}", self.prefix), msg)
    }

    fn missing(&self, key: &str) -> Error {
        self.error(key, "required field is missing")
    }

    fn str(&self, key: &str) -> Result<String> {
        let v = self.json.get(key).ok_or_else(|| self.missing(key))?;
        v.as_str().map(str::to_string).ok_or_else(|| self.error(key, "not a string"))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                v.as_u64().map(|v| Some(v as usize)).ok_or_else(|| self.error(key, "not a non-negative integer"))
            }
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.error(key, "not a number")),
        }
    }

    fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
            "vocab_size": 100, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "eos_token_id": [2, 3]
        })
    }

    #[test]
    fn parses_llama_and_reports_missing_field_by_name() {
        let c = ModelConfig::from_json(&base(), Path::new("config.json")).unwrap();
        assert_eq!((c.head_dim, c.num_kv_heads, c.eos_token_ids.clone()), (16, 2, vec![2, 3]));
        let mut j = base();
        j.as_object_mut().unwrap().remove("hidden_size");
        let err = ModelConfig::from_json(&j, Path::new("m/config.json")).unwrap_err().to_string();
        assert!(err.contains("m/config.json") && err.contains("hidden_size"), "{err}");
    }

    /// Sliding windows: Mistral's caps the context (full attention within it is exact), Qwen2's
    /// per-layer ones are refused, a null window changes nothing.
    #[test]
    fn sliding_windows_cap_the_context_or_are_refused() {
        let mut j = base();
        j["model_type"] = "mistral".into();
        j["sliding_window"] = 128.into();
        assert_eq!(ModelConfig::from_json(&j, Path::new("c")).unwrap().max_position_embeddings, 128);
        j["sliding_window"] = Value::Null;
        assert_eq!(ModelConfig::from_json(&j, Path::new("c")).unwrap().max_position_embeddings, 256);
        j["model_type"] = "qwen2".into();
        j["use_sliding_window"] = true.into();
        let err = ModelConfig::from_json(&j, Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("use_sliding_window"), "{err}");
        j["use_sliding_window"] = false.into();
        j["sliding_window"] = 64.into();
        assert_eq!(ModelConfig::from_json(&j, Path::new("c")).unwrap().max_position_embeddings, 256);
    }

    #[test]
    fn qwen2_has_qkv_bias_and_unknown_arch_is_refused() {
        let mut j = base();
        j["model_type"] = "qwen2".into();
        assert!(ModelConfig::from_json(&j, Path::new("c")).unwrap().qkv_bias);
        j["model_type"] = "gpt2".into();
        let err = ModelConfig::from_json(&j, Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("model_type") && err.contains("gpt2"));
    }

    /// Settings the engine cannot honour are refused by name, not run as if absent.
    #[test]
    fn unsupported_or_impossible_values_are_named() {
        let cases: [(&str, Value, &str); 16] = [
            ("hidden_act", "gelu".into(), "hidden_act"),
            ("head_dim", 9.into(), "head_dim"),
            ("head_dim", 0.into(), "head_dim"),
            ("vocab_size", 0.into(), "vocab_size"),
            ("intermediate_size", 0.into(), "intermediate_size"),
            ("num_hidden_layers", 0.into(), "num_hidden_layers"),
            ("max_position_embeddings", 1_000_000_000_000_000u64.into(), "max_position_embeddings"),
            ("eos_token_id", serde_json::json!([2, "x"]), "eos_token_id"),
            ("bos_token_id", (u32::MAX as u64 + 2).into(), "bos_token_id"),
            ("mlp_bias", true.into(), "mlp_bias"),
            ("rms_norm_eps", (-1.0).into(), "rms_norm_eps"),
            ("rope_theta", 0.0.into(), "rope_theta"),
            ("eos_token_id", 100.into(), "eos_token_id"),
            ("bos_token_id", 999.into(), "bos_token_id"),
            ("rope_scaling", serde_json::json!({"rope_type": "llama3"}), "rope_scaling.factor"),
            (
                "rope_scaling",
                serde_json::json!({"rope_type": "llama3", "factor": 0.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
                "rope_scaling.factor",
            ),
        ];
        for (key, value, field) in cases {
            let mut j = base();
            j[key] = value;
            let err = ModelConfig::from_json(&j, Path::new("c")).unwrap_err().to_string();
            assert!(err.contains(&format!("field `{field}`")), "{key}: {err}");
        }
        let mut j = base();
        j["hidden_act"] = "silu".into();
        j["mlp_bias"] = false.into();
        assert!(ModelConfig::from_json(&j, Path::new("c")).is_ok());
    }

    /// generation_config.json's stop tokens join config.json's; one outside the vocabulary is
    /// named by its file.
    #[test]
    fn generation_config_adds_its_stop_tokens() {
        let dir = std::env::temp_dir().join(format!("clover-generation-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = ModelConfig::from_json(&base(), Path::new("c")).unwrap();
        assert_eq!(c.clone().with_generation_config(&dir).unwrap().eos_token_ids, vec![2, 3]);
        std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [3, 9]}"#).unwrap();
        assert_eq!(c.clone().with_generation_config(&dir).unwrap().eos_token_ids, vec![2, 3, 9]);
        std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": 100}"#).unwrap();
        let err = c.with_generation_config(&dir).unwrap_err().to_string();
        assert!(err.contains("generation_config.json") && err.contains("eos_token_id"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn llama3_scaling_matches_the_published_rule() {
        let mut j = base();
        j["head_dim"] = 128.into();
        j["rope_theta"] = 500000.0.into();
        j["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = ModelConfig::from_json(&j, Path::new("c")).unwrap();
        let f = c.rope_inv_freq();
        // Highest frequency: wavelength 2π < 2048, kept. Lowest: wavelength far above 8192, divided by 8.
        assert_eq!(f[0], 1.0);
        let raw_last = 1.0 / 500000f64.powf(126.0 / 128.0);
        assert!((f[63] - raw_last / 8.0).abs() < 1e-15);
    }
}
