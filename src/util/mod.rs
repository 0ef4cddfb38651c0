//! Small helpers with no knowledge of models: the crate's RNG, host memory queries and latency
//! summaries.

pub mod host_memory;
pub mod rng;
pub mod summary;
