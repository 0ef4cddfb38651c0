//! Model definitions, written once against [`crate::backend::Backend`].

pub mod deepseek;
pub mod moe;
pub mod params;
pub mod rope;

use crate::backend::AttentionBatch;

/// Which MLA form a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttentionForm {
    /// Materialised K/V for multi-token chunks (prefill), absorbed for single tokens (decode).
    #[default]
    Auto,
    /// Expand K and V from the latent with kv_b_proj and run standard attention.
    Materialised,
    /// Fold W_UK into the query and W_UV into the output; attend over the latent cache.
    Absorbed,
}

/// One forward step: the new tokens of every sequence and where they go in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub token_ids: Vec<u32>,
    pub positions: Vec<u32>,
    /// Cache slot of each new token.
    pub slots: Vec<u32>,
    pub batch: AttentionBatch,
}

/// Which rows of the step get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitRows {
    All,
    /// The last new token of each sequence (what sampling needs).
    LastPerSequence,
}
