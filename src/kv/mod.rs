//! Paged latent KV cache bookkeeping on the host: which blocks are free or shared, which blocks
//! a sequence owns, and where each of its tokens lives.

pub mod block_manager;
pub mod cache_dtype;
pub mod fp8_layout;

pub use block_manager::{BlockManager, PrefixCacheStats, SeqBlocks};

/// Index of a cache block.
pub type BlockId = u32;

/// Default tokens per cache block (FlashMLA's page size).
pub const DEFAULT_BLOCK_SIZE: usize = 64;

/// Most tokens per cache block: a block is the unit the cache is allocated in, so a larger one
/// would mostly sit empty.
pub const MAX_BLOCK_SIZE: usize = 1024;

/// The cache slot of the token at `position` of a sequence with `table`.
pub fn slot(table: &[BlockId], position: usize, block_size: usize) -> u32 {
    table[position / block_size] * block_size as u32 + (position % block_size) as u32
}

#[cfg(test)]
mod tests;
