//! Host math shared by the model and both backends: RoPE tables, MoE routing and the row
//! reductions sampling needs. Depends on `config` only, so every layer above can use it.

pub mod fp8_matmul;
pub mod rope;
pub mod routing;
pub mod sampling;
