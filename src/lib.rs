//! mla-rt: an inference runtime for Multi-head Latent Attention (DeepSeek-V2/V3) models.
//!
//! transformers is the oracle for the CPU backend; the CPU backend is the oracle for the GPU.

pub mod backend;
pub mod chat;
pub mod config;
pub mod engine;
pub mod error;
pub mod fuzz_targets;
pub mod kv;
pub mod model;
pub mod openai_request;
pub mod ops;
pub mod profile;
pub mod template_limits;
pub mod tokenizer;
pub mod util;
pub mod weights;

pub use error::{Error, Result};
