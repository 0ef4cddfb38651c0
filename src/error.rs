//! The one error type of the crate. Every variant renders as a single line that names what went
//! wrong and where, because the CLI prints exactly that line and exits non-zero.

use std::path::PathBuf;

/// Every failure the runtime reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: malformed JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: key `{key}`: {message}", path.display())]
    Config {
        path: PathBuf,
        key: String,
        message: String,
    },

    #[error("{}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    #[error("unsupported dtype {dtype} in tensor {tensor} (supported: F32, BF16, F16)")]
    UnsupportedDtype { dtype: String, tensor: String },

    #[error("tensor {name} is missing from the checkpoint in {}", dir.display())]
    MissingTensor { name: String, dir: PathBuf },

    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    /// Bad request-level input: out-of-range token ids, too-long prompts, bad sampling values.
    #[error("{0}")]
    InvalidInput(String),

    /// The paged cache has no free block left for a sequence.
    #[error("KV cache is full: {needed} more blocks needed, {free} free")]
    CacheFull { needed: usize, free: usize },

    /// An op was handed operands of shapes it cannot combine.
    #[error("{op}: {message}")]
    Op { op: &'static str, message: String },

    #[error("device: {0}")]
    Device(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(path: impl Into<PathBuf>, key: &str, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Reads and parses a JSON file, with errors that name the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}
