//! Small helpers with no knowledge of models: the crate's RNG and host memory queries.

pub mod host_memory;
pub mod rng;
