//! Flags that shape the batching engine: budgets, cache size, prefix caching.

use clap::Args;
use mla_rt::backend::Backend;
use mla_rt::config::ModelConfig;
use mla_rt::engine::batch_engine::EngineConfig;
use mla_rt::engine::memory::{parse_bytes, KvCachePlan};
use mla_rt::engine::scheduler::SchedulerConfig;
use mla_rt::error::{Error, Result};
use mla_rt::model::AttentionForm;

#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Most sequences batched in one step.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_num_seqs: usize,

    /// Most tokens (prefill chunks plus decode tokens) in one step; longer prompts are prefilled
    /// in chunks of this size.
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub max_batched_tokens: usize,

    /// KV cache size, e.g. 4GiB or 512MB (overrides --gpu-memory-utilization).
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES")]
    pub kv_cache_memory: Option<u64>,

    /// Fraction of the memory left after loading the weights to give the KV cache (on the CPU
    /// backend: of the available host memory). Never more than the requests can use.
    #[arg(long, default_value_t = 0.9, value_name = "F")]
    pub gpu_memory_utilization: f64,

    /// Do not reuse cache blocks of identical prompt prefixes across requests.
    #[arg(long)]
    pub no_prefix_caching: bool,

    /// Launch every kernel of every step (on a GPU, decode steps are otherwise captured as CUDA
    /// graphs, one per batch shape, and replayed).
    #[arg(long)]
    pub enforce_eager: bool,
}

impl EngineArgs {
    /// The engine configuration for a batch whose longest sequence has `longest_tokens` tokens.
    pub fn engine_config<B: Backend>(
        &self,
        backend: &B,
        config: &ModelConfig,
        block_size: usize,
        attention: AttentionForm,
        longest_tokens: usize,
    ) -> Result<(EngineConfig, KvCachePlan)> {
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            return Err(Error::InvalidInput(format!(
                "--gpu-memory-utilization must be in (0, 1], found {}",
                self.gpu_memory_utilization
            )));
        }
        if block_size == 0 {
            return Err(Error::InvalidInput(
                "--block-size must be at least 1".into(),
            ));
        }
        let budget = match self.kv_cache_memory {
            Some(bytes) => bytes,
            None => {
                let free = backend.free_memory().ok_or_else(|| {
                    Error::InvalidInput(
                        "cannot read the available memory; give --kv-cache-memory".into(),
                    )
                })?;
                (free as f64 * self.gpu_memory_utilization) as u64
            }
        };
        // Every sequence at its longest: more blocks than that would never be used.
        let useful = self
            .max_num_seqs
            .saturating_mul(longest_tokens.div_ceil(block_size))
            .max(1);
        let plan = KvCachePlan::new(
            config,
            block_size,
            backend.cache_value_bytes(),
            budget,
            useful,
        )?;
        let engine = EngineConfig {
            block_size,
            num_blocks: plan.num_blocks,
            prefix_caching: !self.no_prefix_caching,
            scheduler: SchedulerConfig {
                max_num_seqs: self.max_num_seqs,
                max_batched_tokens: self.max_batched_tokens,
            },
            attention,
            cuda_graphs: !self.enforce_eager,
        };
        Ok((engine, plan))
    }
}
