//! Flags that shape the batching engine: budgets, cache size, prefix caching.

use clap::Args;
use mla_rt::backend::Backend;
use mla_rt::config::ModelConfig;
use mla_rt::engine::batch_engine::EngineConfig;
use mla_rt::engine::memory::{parse_bytes, KvCachePlan};
use mla_rt::engine::scheduler::SchedulerConfig;
use mla_rt::error::{Error, Result};
use mla_rt::kv::cache_dtype::{CacheRows, KvCacheDtype};
use mla_rt::model::AttentionForm;

#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Most sequences batched in one step.
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = super::at_least_one)]
    pub max_num_seqs: usize,

    /// Most tokens (prefill chunks plus decode tokens) in one step; longer prompts are prefilled
    /// in chunks of this size.
    #[arg(long, default_value_t = 2048, value_name = "N", value_parser = super::at_least_one)]
    pub max_batched_tokens: usize,

    /// KV cache size, e.g. 4GiB or 512MB (overrides --gpu-memory-utilization).
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES")]
    pub kv_cache_memory: Option<u64>,

    /// Fraction of the memory left after loading the weights to give the KV cache (on the CPU
    /// backend: of the available host memory). Never more than the requests can use.
    #[arg(long, default_value_t = 0.9, value_name = "F", value_parser = fraction)]
    pub gpu_memory_utilization: f64,

    /// Do not reuse cache blocks of identical prompt prefixes across requests.
    #[arg(long)]
    pub no_prefix_caching: bool,

    /// Launch every kernel of every step (on a GPU, decode steps are otherwise captured as CUDA
    /// graphs, one per batch shape, and replayed).
    #[arg(long)]
    pub enforce_eager: bool,
}

/// `--gpu-memory-utilization`: a fraction in (0, 1].
fn fraction(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        Ok(f) => Err(format!("{f} is not in (0, 1]")),
        Err(e) => Err(e.to_string()),
    }
}

/// What the cache must hold: the most blocks worth allocating.
#[derive(Debug, Clone, Copy)]
pub enum CacheDemand<'a> {
    /// Requests not known yet (a server), each up to this many tokens.
    AnyUpTo(usize),
    /// These requests, each up to this many tokens (batch mode, one prompt).
    Requests(&'a [usize]),
}

impl CacheDemand<'_> {
    /// Blocks that could ever be in use at once with at most `max_num_seqs` sequences running.
    fn useful_blocks(self, block_size: usize, max_num_seqs: usize) -> usize {
        let blocks = |tokens: usize| tokens.div_ceil(block_size);
        let useful = match self {
            CacheDemand::AnyUpTo(tokens) => max_num_seqs.saturating_mul(blocks(tokens)),
            CacheDemand::Requests(lengths) => {
                let mut per_request: Vec<usize> = lengths.iter().map(|&t| blocks(t)).collect();
                per_request.sort_unstable_by(|a, b| b.cmp(a));
                per_request
                    .iter()
                    .take(max_num_seqs)
                    .fold(0usize, |sum, &b| sum.saturating_add(b))
            }
        };
        useful.max(1)
    }
}

impl EngineArgs {
    /// The engine configuration for `demand`.
    pub fn engine_config<B: Backend>(
        &self,
        backend: &B,
        config: &ModelConfig,
        block_size: usize,
        attention: AttentionForm,
        cache_dtype: KvCacheDtype,
        demand: CacheDemand<'_>,
    ) -> Result<(EngineConfig, KvCachePlan)> {
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
        // More blocks than the running sequences can hold at their longest are never used.
        let useful = demand.useful_blocks(block_size, self.max_num_seqs);
        let native = backend.cache_value_bytes();
        let rows = CacheRows::resolve(cache_dtype, config, native)?;
        let plan = KvCachePlan::new(config, block_size, &rows, native, budget, useful)?;
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
            cache_dtype,
        };
        Ok((engine, plan))
    }
}
