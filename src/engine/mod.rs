//! Running requests: the batching engine (scheduler + block pool + model), a single-sequence
//! session for logits, and sampling.

pub mod batch_engine;
pub mod logits;
pub mod memory;
pub mod perplexity;
pub mod request;
pub mod request_line;
pub mod sampler;
pub mod scheduler;
pub mod session;
