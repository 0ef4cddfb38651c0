//! Running requests: a single-sequence session over the paged cache, and sampling.

pub mod memory;
pub mod sampler;
pub mod session;
