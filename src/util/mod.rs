//! Small helpers with no knowledge of models: the crate's RNG, input file checks, host memory
//! queries and latency summaries.

pub mod e4m3;
pub mod files;
pub mod host_memory;
pub mod rng;
pub mod summary;
