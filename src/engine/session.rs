//! One sequence running through a model and its own paged latent cache.

use crate::backend::{AttentionBatch, Backend, SeqChunk};
use crate::error::{Error, Result};
use crate::kv::cache_dtype::{CacheRows, KvCacheDtype};
use crate::kv::{slot, BlockManager, SeqBlocks};
use crate::model::Model;
use crate::model::{AttentionForm, LogitRows, Step};

pub struct Session<'m, B: Backend> {
    model: &'m Model<B>,
    backend: &'m B,
    cache: B::KvCache,
    blocks: BlockManager,
    seq: SeqBlocks,
    len: usize,
    block_size: usize,
    form: AttentionForm,
}

impl<'m, B: Backend> Session<'m, B> {
    /// A session with cache room for `max_tokens` tokens.
    pub fn new(
        model: &'m Model<B>,
        backend: &'m B,
        max_tokens: usize,
        block_size: usize,
        form: AttentionForm,
    ) -> Result<Self> {
        Self::with_cache_dtype(
            model,
            backend,
            max_tokens,
            block_size,
            form,
            KvCacheDtype::Auto,
        )
    }

    /// [`Self::new`] with a cache of `cache_dtype` (`--kv-cache-dtype`).
    pub fn with_cache_dtype(
        model: &'m Model<B>,
        backend: &'m B,
        max_tokens: usize,
        block_size: usize,
        form: AttentionForm,
        cache_dtype: KvCacheDtype,
    ) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::InvalidInput("block size must be at least 1".into()));
        }
        let num_blocks = max_tokens.max(1).div_ceil(block_size);
        let c = &model.config;
        let rows = CacheRows::resolve(cache_dtype, c, backend.cache_value_bytes())?;
        let cache =
            backend.alloc_cache_rows(c.num_hidden_layers(), num_blocks, block_size, rows)?;
        Ok(Session {
            model,
            backend,
            cache,
            blocks: BlockManager::new(num_blocks, block_size, false),
            seq: SeqBlocks::default(),
            len: 0,
            block_size,
            form,
        })
    }

    /// Tokens stored so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn block_table(&self) -> &[u32] {
        &self.seq.table
    }

    /// Every logit row `[tokens × vocab]` (row-major, on the host) of `token_ids`: the first
    /// `prefill` in one forward step, the rest one at a time through the cache (the decode path).
    pub fn logits(&mut self, token_ids: &[u32], prefill: usize) -> Result<Vec<f32>> {
        if prefill == 0 || prefill > token_ids.len() {
            return Err(Error::InvalidInput(format!(
                "the prefill must be between 1 and the {} tokens, found {prefill}",
                token_ids.len()
            )));
        }
        let first = self.feed(&token_ids[..prefill], LogitRows::All)?;
        let mut logits = self.backend.to_host(&first)?.data;
        for &t in &token_ids[prefill..] {
            let row = self.feed(&[t], LogitRows::All)?;
            logits.extend(self.backend.to_host(&row)?.data);
        }
        let vocab = self.model.config.vocab_size().max(1);
        if let Some(p) = logits
            .chunks(vocab)
            .position(|row| !crate::backend::row_is_finite(row))
        {
            return Err(Error::NonFinite(format!(
                "the logits at position {p} are not finite (NaN or infinity)"
            )));
        }
        Ok(logits)
    }

    /// Appends `tokens` in one forward step and returns their logits (`rows` chooses which).
    pub fn feed(&mut self, tokens: &[u32], rows: LogitRows) -> Result<B::Tensor> {
        if tokens.is_empty() {
            return Err(Error::InvalidInput("no tokens to run".into()));
        }
        let vocab = self.model.config.vocab_size();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        let max_pos = self.model.config.max_position_embeddings();
        if self.len + tokens.len() > max_pos {
            return Err(Error::InvalidInput(format!(
                "{} tokens exceed max_position_embeddings ({max_pos})",
                self.len + tokens.len()
            )));
        }
        let start = self.len;
        let end = start + tokens.len();
        let mut reserved = self.seq.clone();
        // One sequence that is never forked: no copy-on-write can come back.
        self.blocks.reserve(&mut reserved, start, end)?;
        let step = Step {
            token_ids: tokens.to_vec(),
            positions: (start as u32..end as u32).collect(),
            slots: (start..end)
                .map(|p| slot(&reserved.table, p, self.block_size))
                .collect(),
            batch: AttentionBatch {
                block_size: self.block_size,
                seqs: vec![SeqChunk {
                    block_table: reserved.table.clone(),
                    context_len: end,
                    query_len: tokens.len(),
                }],
            },
        };
        match self
            .model
            .forward(self.backend, &mut self.cache, &step, self.form, rows)
        {
            Ok(logits) => {
                self.seq = reserved;
                self.len = end;
                Ok(logits)
            }
            Err(e) => {
                // Give back the blocks this step took; the tokens are not part of the sequence.
                let mut added = SeqBlocks {
                    table: reserved.table.split_off(self.seq.table.len()),
                    hashes: Vec::new(),
                };
                self.blocks.free(&mut added);
                Err(e)
            }
        }
    }
}
