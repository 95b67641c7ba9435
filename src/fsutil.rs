//! Output files are written under a temporary name and renamed into place, so an interrupted or
//! failed run never leaves a half-written file where a finished one is expected; JSON inputs are
//! read with errors that name the file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A JSON file, parsed; an unreadable or malformed file is named.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, "(json)", e.to_string()))
}

pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Writes `path` under a temporary name, then renames it into place. A missing parent folder is
/// created first, as gen-data, export-head and import-gguf create their output folders: an
/// output named in a new folder must not fail after the run's work is done.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = temp_sibling(path);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
