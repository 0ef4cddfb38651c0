//! The block pool of the paged latent cache: O(1) allocate and free, reference counts,
//! copy-on-write of a shared partially-filled block, and automatic prefix caching.
//!
//! Free blocks wait in one queue, least recently freed first. A full block keeps the hash of
//! its tokens (chained with the hash of everything before it) after its last user frees it, so
//! a later request with the same prefix can take it back; allocation takes the queue's head,
//! which evicts the least recently used cached block.

use super::BlockId;
use crate::error::{Error, Result};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

const NONE: BlockId = BlockId::MAX;

/// What a full, cached block holds, to confirm a hash hit is the same prefix.
#[derive(Debug, Clone, PartialEq)]
struct CachedContent {
    hash: u64,
    parent_hash: u64,
    tokens: Vec<u32>,
}

#[derive(Debug, Clone)]
struct Block {
    ref_count: u32,
    cached: Option<CachedContent>,
    prev: BlockId,
    next: BlockId,
    in_queue: bool,
}

/// The blocks one sequence holds, in order, and the chained hashes of its full blocks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeqBlocks {
    pub table: Vec<BlockId>,
    /// Chained hash of each full block so far (`hashes.len() <= table.len()`).
    pub hashes: Vec<u64>,
}

/// Prefix-cache counters, in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrefixCacheStats {
    pub queried_tokens: u64,
    pub hit_tokens: u64,
    pub evictions: u64,
}

impl PrefixCacheStats {
    pub fn hit_rate(&self) -> f64 {
        if self.queried_tokens == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / self.queried_tokens as f64
        }
    }
}

#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: usize,
    blocks: Vec<Block>,
    head: BlockId,
    tail: BlockId,
    num_free: usize,
    /// Full-block hash → the block holding it.
    cached: HashMap<u64, BlockId>,
    prefix_caching: bool,
    pub stats: PrefixCacheStats,
}

/// Hash of one full block given the hash of the prefix before it.
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        let mut m = BlockManager {
            block_size,
            blocks: vec![
                Block {
                    ref_count: 0,
                    cached: None,
                    prev: NONE,
                    next: NONE,
                    in_queue: false
                };
                num_blocks
            ],
            head: NONE,
            tail: NONE,
            num_free: 0,
            cached: HashMap::new(),
            prefix_caching,
            stats: PrefixCacheStats::default(),
        };
        for b in 0..num_blocks as BlockId {
            m.push_back(b);
        }
        m
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that an allocation can take (free, or cached with no user).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.blocks[block as usize].ref_count
    }

    fn push_back(&mut self, b: BlockId) {
        let block = &mut self.blocks[b as usize];
        debug_assert!(!block.in_queue);
        block.in_queue = true;
        block.prev = self.tail;
        block.next = NONE;
        if self.tail == NONE {
            self.head = b;
        } else {
            self.blocks[self.tail as usize].next = b;
        }
        self.tail = b;
        self.num_free += 1;
    }

    fn unlink(&mut self, b: BlockId) {
        let (prev, next) = {
            let block = &mut self.blocks[b as usize];
            debug_assert!(block.in_queue);
            block.in_queue = false;
            (block.prev, block.next)
        };
        if prev == NONE {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NONE {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        self.num_free -= 1;
    }

    /// Takes the least recently freed block, evicting its cached prefix if it has one.
    fn take_free(&mut self) -> Option<BlockId> {
        let b = self.head;
        if b == NONE {
            return None;
        }
        self.unlink(b);
        if let Some(content) = self.blocks[b as usize].cached.take() {
            self.cached.remove(&content.hash);
            self.stats.evictions += 1;
        }
        self.blocks[b as usize].ref_count = 1;
        Some(b)
    }

    /// One more user of `b`; takes it out of the free queue if it was unreferenced.
    fn acquire(&mut self, b: BlockId) {
        if self.blocks[b as usize].ref_count == 0 {
            self.unlink(b);
        }
        self.blocks[b as usize].ref_count += 1;
    }

    fn release(&mut self, b: BlockId) {
        let block = &mut self.blocks[b as usize];
        debug_assert!(block.ref_count > 0, "block {b} freed twice");
        block.ref_count -= 1;
        if block.ref_count == 0 {
            self.push_back(b);
        }
    }

    /// The longest run of cached full blocks that starts `tokens`, acquired for a new sequence.
    /// At least one token is always left to compute, so the last prompt token gets logits.
    pub fn match_prefix(&mut self, tokens: &[u32]) -> SeqBlocks {
        let mut seq = SeqBlocks::default();
        if !self.prefix_caching || tokens.is_empty() {
            return seq;
        }
        let max_blocks = (tokens.len() - 1) / self.block_size;
        self.stats.queried_tokens += tokens.len() as u64;
        let mut parent = 0u64;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let hash = block_hash(parent, chunk);
            let Some(&b) = self.cached.get(&hash) else {
                break;
            };
            let same = self.blocks[b as usize]
                .cached
                .as_ref()
                .is_some_and(|c| c.parent_hash == parent && c.tokens == chunk);
            if !same {
                break;
            }
            self.acquire(b);
            seq.table.push(b);
            seq.hashes.push(hash);
            parent = hash;
        }
        self.stats.hit_tokens += (seq.table.len() * self.block_size) as u64;
        seq
    }

    /// Makes room for `seq` to hold `new_len` tokens when it holds `old_len` now. Returns the
    /// `(from, to)` block copies the cache must do first: a shared, partially filled last block
    /// is copied before this sequence writes into it. On failure nothing changes.
    pub fn reserve(
        &mut self,
        seq: &mut SeqBlocks,
        old_len: usize,
        new_len: usize,
    ) -> Result<Vec<(BlockId, BlockId)>> {
        let needed_blocks = new_len.div_ceil(self.block_size);
        let grow = needed_blocks.saturating_sub(seq.table.len());
        let partial = old_len % self.block_size != 0 && new_len > old_len;
        let cow_block = if partial {
            let last = seq.table[old_len / self.block_size];
            (self.blocks[last as usize].ref_count > 1).then_some(last)
        } else {
            None
        };
        let needed = grow + usize::from(cow_block.is_some());
        if needed > self.num_free {
            return Err(Error::CacheFull {
                needed,
                free: self.num_free,
            });
        }
        let mut copies = Vec::new();
        if let Some(shared) = cow_block {
            let copy = self.take_free().expect("free count checked above");
            self.release(shared);
            seq.table[old_len / self.block_size] = copy;
            copies.push((shared, copy));
        }
        for _ in 0..grow {
            let b = self.take_free().expect("free count checked above");
            seq.table.push(b);
        }
        Ok(copies)
    }

    /// Registers the blocks of `seq` that `tokens[..computed]` filled completely, so later
    /// requests with the same prefix can reuse them.
    pub fn commit_full_blocks(&mut self, seq: &mut SeqBlocks, tokens: &[u32], computed: usize) {
        let full = computed / self.block_size;
        while seq.hashes.len() < full {
            let i = seq.hashes.len();
            let parent = seq.hashes.last().copied().unwrap_or(0);
            let chunk = &tokens[i * self.block_size..(i + 1) * self.block_size];
            let hash = block_hash(parent, chunk);
            seq.hashes.push(hash);
            if !self.prefix_caching {
                continue;
            }
            let b = seq.table[i];
            // A block another request already registered for this prefix stays the cached one.
            if self.blocks[b as usize].cached.is_none() && !self.cached.contains_key(&hash) {
                self.blocks[b as usize].cached = Some(CachedContent {
                    hash,
                    parent_hash: parent,
                    tokens: chunk.to_vec(),
                });
                self.cached.insert(hash, b);
            }
        }
    }

    /// A second sequence sharing every block of `seq` (for parallel sampling).
    pub fn fork(&mut self, seq: &SeqBlocks) -> SeqBlocks {
        for &b in &seq.table {
            self.acquire(b);
        }
        seq.clone()
    }

    /// Gives back every block of `seq`, last block first so that a prefix's tail is evicted
    /// before its head.
    pub fn free(&mut self, seq: &mut SeqBlocks) {
        for b in seq.table.drain(..).rev() {
            self.release(b);
        }
        seq.hashes.clear();
    }

    /// Checks the pool's internal bookkeeping; for tests.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut count = 0;
        let mut b = self.head;
        let mut prev = NONE;
        while b != NONE {
            let block = &self.blocks[b as usize];
            if !block.in_queue || block.ref_count != 0 || block.prev != prev {
                return Err(format!(
                    "block {b} in the free queue is inconsistent: {block:?}"
                ));
            }
            count += 1;
            prev = b;
            b = block.next;
        }
        if count != self.num_free || prev != self.tail {
            return Err(format!(
                "free queue holds {count} blocks, counter says {}",
                self.num_free
            ));
        }
        let unreferenced = self.blocks.iter().filter(|b| b.ref_count == 0).count();
        if unreferenced != count {
            return Err(format!(
                "{unreferenced} unreferenced blocks but {count} in the free queue"
            ));
        }
        for (hash, &b) in &self.cached {
            if self.blocks[b as usize].cached.as_ref().map(|c| c.hash) != Some(*hash) {
                return Err(format!(
                    "cache map points hash {hash} at block {b}, which holds another"
                ));
            }
        }
        Ok(())
    }
}
