//! Where the engine keeps downloaded and imported models: outside any repository, in the user's
//! cache (`$CLOVER_ENGINE_HOME`, else `$XDG_CACHE_HOME/clover-engine`, else `~/.cache/clover-engine`).

use std::path::PathBuf;

pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct";

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CLOVER_ENGINE_HOME") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("clover-engine");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("clover-engine")
}

pub fn default_model_dir() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_NAME)
}

/// The GGUF file tools/fetch-default-model.sh imports the default model from.
pub fn default_gguf_file() -> PathBuf {
    cache_dir().join("gguf").join(format!("{DEFAULT_MODEL_NAME}.Q4_1.gguf"))
}

pub const SHAREGPT_FILE: &str = "ShareGPT_V3_unfiltered_cleaned_split.json";

/// Where tools/fetch-sharegpt.sh puts the ShareGPT conversations.
pub fn sharegpt_file() -> PathBuf {
    cache_dir().join("data").join(SHAREGPT_FILE)
}
