//! One error type for the whole engine. Every variant that comes from user input names the file
//! and the field, so a message is enough to fix the input without reading the code.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but one of its fields is missing, malformed or inconsistent.
    #[error("{path}: field `{field}`: {msg}")]
    Format { path: PathBuf, field: String, msg: String },
    /// A command-line argument or API input that cannot be used (over-long prompt, bad option).
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    pub fn format(path: impl AsRef<Path>, field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), field: field.into(), msg: msg.into() }
    }

    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
}
