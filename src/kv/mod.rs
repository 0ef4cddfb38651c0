//! Paged latent KV cache bookkeeping on the host: which blocks are free, which blocks a
//! sequence owns, and where each of its tokens lives.

use crate::error::{Error, Result};

/// Default tokens per cache block (FlashMLA's page size).
pub const DEFAULT_BLOCK_SIZE: usize = 64;

/// A free list of cache blocks; O(1) allocate and free.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Vec<u32>,
    num_blocks: usize,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> Self {
        // Reversed so blocks come out in increasing order, which keeps dumps readable.
        BlockAllocator {
            free: (0..num_blocks as u32).rev().collect(),
            num_blocks,
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn allocate(&mut self) -> Option<u32> {
        self.free.pop()
    }

    pub fn free(&mut self, block: u32) {
        debug_assert!((block as usize) < self.num_blocks && !self.free.contains(&block));
        self.free.push(block);
    }
}

/// The cache blocks of one sequence and how many tokens it has stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SequenceBlocks {
    pub block_table: Vec<u32>,
    pub len: usize,
}

impl SequenceBlocks {
    /// Grows the block table so `new_tokens` more tokens fit; returns their cache slots.
    /// On failure nothing is allocated.
    pub fn reserve(
        &mut self,
        new_tokens: usize,
        block_size: usize,
        allocator: &mut BlockAllocator,
    ) -> Result<Vec<u32>> {
        let needed = (self.len + new_tokens)
            .div_ceil(block_size)
            .saturating_sub(self.block_table.len());
        if needed > allocator.num_free() {
            return Err(Error::CacheFull {
                needed,
                free: allocator.num_free(),
            });
        }
        for _ in 0..needed {
            self.block_table
                .push(allocator.allocate().expect("free count checked above"));
        }
        let slots = (self.len..self.len + new_tokens)
            .map(|p| self.block_table[p / block_size] * block_size as u32 + (p % block_size) as u32)
            .collect();
        self.len += new_tokens;
        Ok(slots)
    }

    pub fn release(&mut self, allocator: &mut BlockAllocator) {
        for b in self.block_table.drain(..) {
            allocator.free(b);
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_block_table() {
        let mut alloc = BlockAllocator::new(4);
        let mut other = SequenceBlocks::default();
        other.reserve(1, 4, &mut alloc).unwrap(); // takes block 0
        let mut seq = SequenceBlocks::default();
        let slots = seq.reserve(6, 4, &mut alloc).unwrap();
        assert_eq!(seq.block_table, vec![1, 2]);
        assert_eq!(slots, vec![4, 5, 6, 7, 8, 9]);
        assert_eq!(seq.reserve(1, 4, &mut alloc).unwrap(), vec![10]);
        assert_eq!(alloc.num_free(), 1);
    }

    #[test]
    fn full_cache_is_an_error_and_allocates_nothing() {
        let mut alloc = BlockAllocator::new(2);
        let mut seq = SequenceBlocks::default();
        let err = seq.reserve(9, 4, &mut alloc).unwrap_err();
        assert!(matches!(err, Error::CacheFull { needed: 3, free: 2 }));
        assert_eq!(alloc.num_free(), 2);
        assert!(seq.block_table.is_empty());
        seq.reserve(8, 4, &mut alloc).unwrap();
        seq.release(&mut alloc);
        assert_eq!(alloc.num_free(), 2);
    }
}
