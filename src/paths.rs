//! Where the engine keeps downloaded and imported models: outside any repository, in the user's
//! cache (`$CLOVER_ENGINE_HOME`, else `$XDG_CACHE_HOME/clover-engine`, else `~/.cache/clover-engine`).

use std::ffi::OsString;
use std::path::PathBuf;

pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct";

pub fn cache_dir() -> PathBuf {
    let var = |name| std::env::var_os(name);
    cache_dir_from(var("CLOVER_ENGINE_HOME"), var("XDG_CACHE_HOME"), var("HOME"))
}

/// `cache_dir` from the three variables' values. A variable set but empty counts as unset, as
/// the XDG base directory spec says and as the tools' shell scripts (`${VAR:-default}`) read them.
fn cache_dir_from(engine_home: Option<OsString>, xdg_cache: Option<OsString>, home: Option<OsString>) -> PathBuf {
    let given = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = given(engine_home) {
        return dir;
    }
    if let Some(dir) = given(xdg_cache) {
        return dir.join("clover-engine");
    }
    given(home).unwrap_or_else(|| PathBuf::from(".")).join(".cache").join("clover-engine")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_variables_count_as_unset() {
        let v = |s: &str| Some(OsString::from(s));
        assert_eq!(cache_dir_from(v("/e"), v("/x"), v("/h")), PathBuf::from("/e"));
        assert_eq!(cache_dir_from(v(""), v("/x"), v("/h")), PathBuf::from("/x/clover-engine"));
        assert_eq!(cache_dir_from(None, v(""), v("/h")), PathBuf::from("/h/.cache/clover-engine"));
        assert_eq!(cache_dir_from(None, None, None), PathBuf::from("./.cache/clover-engine"));
    }
}
