//! The one error type of the crate. Every variant renders as a single line that names what went
//! wrong and where, because the CLI prints exactly that line and exits non-zero.

use cudarc::cublas::result::CublasError;
use cudarc::cublas::sys::cublasStatus_t;
use cudarc::driver::sys::cudaError_enum;
use cudarc::driver::DriverError;
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

    #[error("unsupported dtype {dtype} in tensor {tensor} (supported: F32, BF16, F16, and block-scaled F8_E4M3)")]
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

    /// A CUDA driver, cuBLAS or kernel failure, or no usable GPU.
    #[error("device: {0}")]
    Device(#[from] CudaError),

    /// Standard output was closed by its reader (`mla info | head -1`): the program stops
    /// quietly.
    #[error("standard output was closed")]
    ClosedOutput,

    /// A model produced NaN or infinite values; the message names where (request and position,
    /// or the tensor).
    #[error("non-finite values: {0}")]
    NonFinite(String),

    /// SIGINT or SIGTERM stopped the work part-way; `what` says what was kept. The program exits
    /// with 128 + `signal`, as a shell reports a process the signal killed.
    #[error("{what}")]
    Interrupted { signal: i32, what: String },
}

/// What the CUDA backend reports: driver and cuBLAS failures with their sources, kernels missing
/// from a build or a GPU, and a device that is not there.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// A driver call failed while doing `what`.
    #[error("{what}: {source}")]
    Driver {
        what: String,
        #[source]
        source: DriverError,
    },

    /// A cuBLAS call failed while doing `what`.
    #[error("{what}: {source}")]
    Cublas {
        what: String,
        #[source]
        source: CublasError,
    },

    /// A kernel this build or this GPU does not have.
    #[error("kernel {kernel}: {reason}")]
    MissingKernel {
        kernel: &'static str,
        reason: String,
    },

    /// No usable device: no kernels in the build, no driver or cuBLAS library, no such GPU.
    #[error("{0}")]
    Unavailable(String),
}

impl CudaError {
    /// Whether the device ran out of memory (a caller may retry with less).
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            CudaError::Driver { source, .. } => {
                source.0 == cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY
            }
            CudaError::Cublas { source, .. } => {
                source.0 == cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED
            }
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether a device ran out of memory.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::Device(e) if e.is_out_of_memory())
    }

    /// A failed write to standard output: [`Error::ClosedOutput`] where its reader went away,
    /// else an I/O error naming it.
    pub fn stdout(source: std::io::Error) -> Self {
        match source.kind() {
            std::io::ErrorKind::BrokenPipe => Error::ClosedOutput,
            _ => Error::io("<stdout>", source),
        }
    }

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
    crate::util::files::require_regular_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(crate::util::files::without_bom(&text)).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}
