//! JSON Lines files (benchmark questions, answers): one record per line, blank lines ignored, and
//! every error names the file and the line, since these files are long and edited by hand.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The records of `path` with their 1-based line numbers.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<(usize, T)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text, path)
}

/// As `read`, from text already in memory; `path` names it in errors.
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<Vec<(usize, T)>> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line).map_err(|e| line_error(path, i + 1, e))?;
        records.push((i + 1, record));
    }
    Ok(records)
}

pub fn line_error(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::input(format!("{}: line {line}: {msg}", path.display()))
}
