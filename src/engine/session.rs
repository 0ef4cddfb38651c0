//! One sequence running through a model and its own paged latent cache.

use crate::backend::{AttentionBatch, Backend, SeqChunk};
use crate::error::{Error, Result};
use crate::kv::{BlockAllocator, SequenceBlocks};
use crate::model::deepseek::DeepSeek;
use crate::model::{AttentionForm, LogitRows, Step};

pub struct Session<'m, B: Backend> {
    model: &'m DeepSeek<B>,
    backend: &'m B,
    cache: B::LatentCache,
    allocator: BlockAllocator,
    seq: SequenceBlocks,
    block_size: usize,
    form: AttentionForm,
}

impl<'m, B: Backend> Session<'m, B> {
    /// A session with cache room for `max_tokens` tokens.
    pub fn new(
        model: &'m DeepSeek<B>,
        backend: &'m B,
        max_tokens: usize,
        block_size: usize,
        form: AttentionForm,
    ) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::InvalidInput("block size must be at least 1".into()));
        }
        let num_blocks = max_tokens.max(1).div_ceil(block_size);
        let c = &model.config;
        let cache = backend.alloc_latent_cache(
            c.num_hidden_layers,
            num_blocks,
            block_size,
            c.latent_cache_width(),
        )?;
        Ok(Session {
            model,
            backend,
            cache,
            allocator: BlockAllocator::new(num_blocks),
            seq: SequenceBlocks::default(),
            block_size,
            form,
        })
    }

    /// Tokens stored so far.
    pub fn len(&self) -> usize {
        self.seq.len
    }

    pub fn is_empty(&self) -> bool {
        self.seq.len == 0
    }

    pub fn block_table(&self) -> &[u32] {
        &self.seq.block_table
    }

    /// Appends `tokens` in one forward step and returns their logits (`rows` chooses which).
    pub fn feed(&mut self, tokens: &[u32], rows: LogitRows) -> Result<B::Tensor> {
        if tokens.is_empty() {
            return Err(Error::InvalidInput("no tokens to run".into()));
        }
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        let max_pos = self.model.config.max_position_embeddings;
        if self.seq.len + tokens.len() > max_pos {
            return Err(Error::InvalidInput(format!(
                "{} tokens exceed max_position_embeddings ({max_pos})",
                self.seq.len + tokens.len()
            )));
        }
        let start = self.seq.len;
        let mut reserved = self.seq.clone();
        let slots = reserved.reserve(tokens.len(), self.block_size, &mut self.allocator)?;
        let step = Step {
            token_ids: tokens.to_vec(),
            positions: (start as u32..(start + tokens.len()) as u32).collect(),
            slots,
            batch: AttentionBatch {
                block_size: self.block_size,
                seqs: vec![SeqChunk {
                    block_table: reserved.block_table.clone(),
                    context_len: reserved.len,
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
                Ok(logits)
            }
            Err(e) => {
                // Give back the blocks this step took; the tokens are not part of the sequence.
                for &b in &reserved.block_table[self.seq.block_table.len()..] {
                    self.allocator.free(b);
                }
                Err(e)
            }
        }
    }
}
