//! The CUDA backend: the device (device.rs), typed kernel handles (kernels.rs) and the one launch
//! helper (launch.rs) under every op; cuBLAS for the GEMMs (blas.rs); elementwise and row
//! kernels; MoE routing; the three attention forms (attention/). `CudaBackend` implements
//! [`crate::backend::Backend`] with them.

pub mod attention;
mod backend;
mod blas;
mod counters;
mod decode_graphs;
mod device;
mod elementwise;
mod error;
mod fp8_cache;
mod fp8_gemm;
mod graph;
pub mod kernels;
mod kv_cache;
mod launch;
mod moe;
mod moe_grouped;
mod rows;
mod step_buffers;
mod transfer;
mod tuning;

pub use crate::error::CudaError;
pub use attention::kernel_choice::{AttentionTuning, NarrowAttention, SplitCombine, WideAttention};
pub use backend::{CudaBackend, CudaHeadWeight};
pub use device::{CudaDevice, DeviceInfo};
pub use elementwise::{GpuFloat, GpuTensor, RopeOnDevice};
pub use error::driver_err;
pub use fp8_gemm::{CudaWeight, Fp8Weight};
pub use graph::DeviceGraph;
pub use kv_cache::CudaKvCache;
pub use moe_grouped::{CudaExperts, MoePath};
pub use step_buffers::StepValues;
