//! Constructors of [`CudaError`] values for the backend's `map_err` calls.

use crate::error::CudaError;
use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

/// Maps a driver error to [`CudaError::Driver`] (inside the crate's error) naming `what`.
pub fn driver_err(what: impl Into<String>) -> impl FnOnce(DriverError) -> crate::Error {
    let what = what.into();
    move |source| CudaError::Driver { what, source }.into()
}

/// Maps a cuBLAS error to [`CudaError::Cublas`] (inside the crate's error) naming `what`.
pub(crate) fn cublas_err(what: impl Into<String>) -> impl FnOnce(CublasError) -> crate::Error {
    let what = what.into();
    move |source| CudaError::Cublas { what, source }.into()
}

/// A [`CudaError::Unavailable`] as the crate's error.
pub(crate) fn unavailable(message: impl Into<String>) -> crate::Error {
    CudaError::Unavailable(message.into()).into()
}
