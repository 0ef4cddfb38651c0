//! The backend interface: the coarse ops the model is written against.
//!
//! The model code calls only these, so the CPU backend (the reference) and the CUDA backend run
//! the same forward pass. Activations are 2-D `[rows, cols]`, rows being tokens.

pub mod cpu;
pub mod cuda;

use crate::config::MoeConfig;
use crate::error::{Error, Result};
use crate::kv::cache_dtype::CacheRows;
use crate::ops::rope::RopeTable;
use crate::weights::fp8::Fp8Matrix;
use crate::weights::HostTensor;

/// Widths of one MLA layer, as the attention ops need them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlaDims {
    pub heads: usize,
    pub qk_nope: usize,
    pub qk_rope: usize,
    pub v_head: usize,
    pub kv_lora_rank: usize,
    pub softmax_scale: f32,
}

impl MlaDims {
    /// DeepSeek-V2/V3's published attention widths (128 nope + 64 rope per query/key head,
    /// 128 per value head, a 512 latent) with `heads` heads.
    pub fn deepseek(heads: usize, softmax_scale: f32) -> Self {
        MlaDims {
            heads,
            qk_nope: 128,
            qk_rope: 64,
            v_head: 128,
            kv_lora_rank: 512,
            softmax_scale,
        }
    }

    pub fn qk_head(&self) -> usize {
        self.qk_nope + self.qk_rope
    }

    /// Values per token in the latent cache: `kv_lora_rank` latent + `qk_rope` roped key.
    pub fn latent_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope
    }
}

/// Widths of one multi-head (or grouped-query) attention layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MhaDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub softmax_scale: f32,
    /// Attend to at most this many of the most recent tokens, the query's own included.
    pub sliding_window: Option<usize>,
}

/// The new tokens of one sequence in a step, and where its cached context lives.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqChunk {
    /// Cache blocks of the sequence in order: token `p` sits in block `block_table[p / block_size]`.
    pub block_table: Vec<u32>,
    /// Tokens in the cache after this step's tokens are written.
    pub context_len: usize,
    /// New tokens of this step: the last `query_len` positions of the context.
    pub query_len: usize,
}

/// Every sequence of a step; query rows are laid out sequence after sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionBatch {
    pub block_size: usize,
    pub seqs: Vec<SeqChunk>,
}

impl AttentionBatch {
    pub fn num_query_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.query_len).sum()
    }

    /// Checks that the batch uses a cache's block size and that every block it reads exists,
    /// before any kernel (or kernel-like loop) indexes one.
    pub fn check_blocks(&self, num_blocks: usize, block_size: usize) -> Result<()> {
        if self.block_size != block_size {
            return Err(crate::error::Error::InvalidInput(format!(
                "attention batch uses block size {}, the cache has {block_size}",
                self.block_size
            )));
        }
        for seq in &self.seqs {
            let needed = seq.context_len.div_ceil(block_size);
            if seq.query_len > seq.context_len {
                return Err(crate::error::Error::InvalidInput(format!(
                    "sequence of {} tokens has {} new ones: more than it holds",
                    seq.context_len, seq.query_len
                )));
            }
            if seq.block_table.len() < needed {
                return Err(crate::error::Error::InvalidInput(format!(
                    "sequence of {} tokens has {} blocks, needs {needed}",
                    seq.context_len,
                    seq.block_table.len()
                )));
            }
            if let Some(b) = seq.block_table[..needed]
                .iter()
                .find(|&&b| b as usize >= num_blocks)
            {
                return Err(crate::error::Error::InvalidInput(format!(
                    "block {b} is outside the cache ({num_blocks} blocks)"
                )));
            }
        }
        Ok(())
    }
}

/// Work a device backend has queued and waited for since it opened (see
/// [`Backend::counters`]); differences of two readings give a step's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Kernels launched one by one: the backend's own and each cuBLAS call.
    pub kernel_launches: u64,
    /// CUDA graphs launched (each replays many kernels).
    pub graph_launches: u64,
    /// Copies from host memory to the device (inputs, tables, schedules).
    pub uploads: u64,
    /// Times the host waited for the device to finish (to read results back).
    pub host_waits: u64,
}

impl DeviceCounters {
    /// What happened between `earlier` and this reading.
    pub fn since(&self, earlier: &DeviceCounters) -> DeviceCounters {
        DeviceCounters {
            kernel_launches: self.kernel_launches - earlier.kernel_launches,
            graph_launches: self.graph_launches - earlier.graph_launches,
            uploads: self.uploads - earlier.uploads,
            host_waits: self.host_waits - earlier.host_waits,
        }
    }

    pub fn add(&mut self, other: &DeviceCounters) {
        self.kernel_launches += other.kernel_launches;
        self.graph_launches += other.graph_launches;
        self.uploads += other.uploads;
        self.host_waits += other.host_waits;
    }

    /// `"1 graph launch, 0 kernel launches, 4 host→device copies, 1 device→host wait"` for the
    /// mean over `steps` (whole numbers where they are, else one decimal).
    pub fn per_step(&self, steps: usize) -> String {
        let mean = |n: u64, one: &str, many: &str| {
            let steps = steps.max(1) as u64;
            let value = if n % steps == 0 {
                (n / steps).to_string()
            } else {
                format!("{:.1}", n as f64 / steps as f64)
            };
            let noun = if value == "1" { one } else { many };
            format!("{value} {noun}")
        };
        format!(
            "{}, {}, {}, {}",
            mean(self.graph_launches, "graph launch", "graph launches"),
            mean(self.kernel_launches, "kernel launch", "kernel launches"),
            mean(self.uploads, "host→device copy", "host→device copies"),
            mean(self.host_waits, "device→host wait", "device→host waits")
        )
    }
}

/// What capturing decode steps ahead of time made ([`Backend::capture_decode_graphs`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphCapture {
    /// Graphs held after the capture.
    pub graphs: usize,
    /// The largest batch size captured.
    pub largest: usize,
    pub secs: f64,
    /// Device memory the capture took (free memory before less after).
    pub bytes: u64,
}

impl std::fmt::Display for GraphCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let batches = match self.largest {
            1 => "batches of 1 sequence".to_string(),
            n => format!("batches of 1 to {n} sequences"),
        };
        write!(
            f,
            "captured {} CUDA graph{} for decode {batches} in {:.1} s ({:.0} MiB)",
            self.graphs,
            if self.graphs == 1 { "" } else { "s" },
            self.secs,
            self.bytes as f64 / (1u64 << 20) as f64
        )
    }
}

/// The batch sizes decode steps are padded to where graphs replay them, up to the first that
/// holds `max_seqs` sequences: 1, 2, 4, then every multiple of 8 (vLLM's).
pub fn decode_batch_sizes(max_seqs: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut next = 1;
    loop {
        sizes.push(next);
        if next >= max_seqs {
            return sizes;
        }
        next = if next < 8 { next * 2 } else { next + 8 };
    }
}

/// A new owner id for [`Backend::forward_replayed`] (an engine, a benchmark run): unique in the
/// process.
pub fn graph_owner() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A SwiGLU MLP: `down(silu(gate(x)) ⊙ up(x))`.
pub struct MlpWeights<B: Backend + ?Sized> {
    pub gate: B::Weight,
    pub up: B::Weight,
    pub down: B::Weight,
    /// Biases of gate, up and down (Llama's `mlp_bias`; none in DeepSeek).
    pub biases: Option<[B::Weight; 3]>,
}

/// Router, routed experts and shared experts of one MoE layer.
pub struct MoeWeights<B: Backend + ?Sized> {
    /// `[n_routed_experts, hidden]`.
    pub router: B::Weight,
    /// V3's `e_score_correction_bias`, kept on the host with the routing math.
    pub score_bias: Option<Vec<f32>>,
    pub experts: B::RoutedExperts,
    pub shared: Option<MlpWeights<B>>,
}

/// Each row's best `(column, value)` candidates, largest first ([`Backend::top_k_rows`]).
pub type RowCandidates = Vec<Vec<(u32, f32)>>;

/// [`Backend::argmax_rows`] of rows already on the host.
pub fn host_argmax_rows(x: &HostTensor) -> Vec<u32> {
    let cols = x.shape.last().copied().unwrap_or(0).max(1);
    x.data
        .chunks_exact(cols)
        .map(|row| match row_is_finite(row) {
            true => crate::ops::sampling::argmax(row),
            false => NON_FINITE_ROW,
        })
        .collect()
}

/// [`Backend::argmax_rows`]'s id for a row of logits holding a NaN or +∞.
pub const NON_FINITE_ROW: u32 = u32::MAX;

/// Whether a row of logits holds no NaN and no +∞ (−∞ masks a token and is fine).
pub fn row_is_finite(row: &[f32]) -> bool {
    row.iter().all(|&x| x < f32::INFINITY)
}

/// [`Backend::top_k_rows`] of rows already on the host.
pub fn host_top_k_rows(x: &HostTensor, k: usize) -> Vec<Vec<(u32, f32)>> {
    let cols = x.shape.last().copied().unwrap_or(0).max(1);
    x.data
        .chunks_exact(cols)
        .map(|row| {
            let mut candidates = crate::ops::sampling::sorted_candidates(row, k);
            if let (false, Some(first)) = (row_is_finite(row), candidates.first_mut()) {
                first.1 = f32::NAN;
            }
            candidates
        })
        .collect()
}

/// The rows of `Backend::softmax_totals` need one positive temperature each.
pub fn check_temperatures(rows: usize, temperatures: &[f32]) -> Result<()> {
    if temperatures.len() != rows || temperatures.iter().any(|t| t.is_nan() || *t <= 0.0) {
        return Err(Error::Op {
            op: "softmax_totals",
            message: format!(
                "{rows} rows but {} temperatures (each must be positive)",
                temperatures.len()
            ),
        });
    }
    Ok(())
}

pub fn host_softmax_totals(x: &HostTensor, temperatures: &[f32]) -> Result<Vec<f64>> {
    let cols = x.shape.last().copied().unwrap_or(0).max(1);
    check_temperatures(x.data.len() / cols, temperatures)?;
    Ok(x.data
        .chunks_exact(cols)
        .zip(temperatures)
        .map(|(row, &t)| crate::ops::sampling::softmax_total(row, t))
        .collect())
}

pub trait Backend {
    /// Activations, `[rows, cols]`, f32 semantics.
    type Tensor;
    /// A weight matrix `[out, in]` (or a vector), resident on the device.
    type Weight;
    /// Per-head matrices `[heads][out, in]`.
    type HeadWeight;
    /// The paged latent KV cache of every layer.
    type KvCache;
    /// The routed experts of one MoE layer, as this backend's MoE runs them.
    type RoutedExperts;

    fn name(&self) -> String;
    /// Bytes free for a KV cache right now: host memory for the CPU, device memory for a GPU
    /// (`None` where it cannot be read).
    fn free_memory(&self) -> Option<u64>;
    /// Bytes of one cached value (4 for f32, 2 for bf16).
    fn cache_value_bytes(&self) -> u64;
    /// What waits for queued device work to finish, for timing ops (`None`: ops are
    /// synchronous, as on the CPU).
    fn sync_fn(&self) -> Option<crate::profile::SyncFn>;
    /// Whether this backend replays decode steps from CUDA graphs (the engine then pads a
    /// decode batch to a captured size: [`decode_batch_sizes`]).
    fn replays_decode_graphs(&self) -> bool {
        false
    }
    /// A decode step's `forward`, replayed from a CUDA graph captured from an earlier step alike
    /// of the same `owner` (an engine: its graphs read its model and cache) where the backend
    /// keeps them (inputs go to buffers the graph reads in place); the CPU runs it. The result
    /// is the first `rows` rows of the forward's (a padded batch's real ones).
    fn forward_replayed(
        &self,
        _owner: u64,
        _rows: usize,
        forward: &mut dyn FnMut() -> Result<Self::Tensor>,
    ) -> Result<Self::Tensor> {
        forward()
    }
    /// Captures the decode steps `forward(b)` of every batch size `b` of `batches` for
    /// [`Self::forward_replayed`] ahead of time, their block tables sized for `table_values`
    /// entries in all (None where the backend has no graphs).
    fn capture_decode_graphs(
        &self,
        _owner: u64,
        _batches: &[usize],
        _table_values: usize,
        _forward: &mut dyn FnMut(usize) -> Result<Self::Tensor>,
    ) -> Result<Option<GraphCapture>> {
        Ok(None)
    }
    /// Bytes per second of a large device-to-device copy (read plus written), measured now: the
    /// memory roofline's bandwidth (`None` on the CPU).
    fn copy_bandwidth(&self) -> Option<f64> {
        None
    }
    /// Launches and waits so far, on a device backend (`None` on the CPU).
    fn counters(&self) -> Option<DeviceCounters> {
        None
    }

    fn upload_weight(&self, host: HostTensor) -> Result<Self::Weight>;
    /// A block-scaled FP8 weight matrix: kept in FP8 where this backend multiplies by it so
    /// (the GPU's FP8 GEMM), else dequantized to its exact values and uploaded as any weight.
    fn upload_fp8_weight(&self, w: Fp8Matrix) -> Result<Self::Weight> {
        self.upload_weight(w.dequantize())
    }
    /// Whether [`Self::upload_fp8_weight`] keeps 128 × 128-block FP8 weights as FP8.
    fn keeps_fp8_weights(&self) -> bool {
        false
    }
    /// A generated weight made where it lives, or `None` when this backend takes it from the
    /// host ([`crate::weights::TensorSource::load`]) instead.
    fn generate_weight(
        &self,
        _shape: &[usize],
        _fill: &crate::weights::random::RandomFill,
    ) -> Result<Option<Self::Weight>> {
        Ok(None)
    }
    /// `data` holds `heads` row-major `[out, in]` matrices back to back.
    fn upload_head_weight(
        &self,
        heads: usize,
        out: usize,
        input: usize,
        data: Vec<f32>,
    ) -> Result<Self::HeadWeight>;
    /// The routed experts of one MoE layer (index = expert) and its routing bias, made ready
    /// once at load for [`Backend::moe`].
    fn routed_experts(
        &self,
        experts: Vec<MlpWeights<Self>>,
        score_bias: Option<&[f32]>,
    ) -> Result<Self::RoutedExperts>;
    fn to_host(&self, x: &Self::Tensor) -> Result<HostTensor>;
    /// Index of the largest value of each row (ties: the lowest index), as greedy sampling
    /// picks it; [`NON_FINITE_ROW`] for a row holding a NaN or +∞.
    fn argmax_rows(&self, x: &Self::Tensor) -> Result<Vec<u32>>;
    /// The `k` largest `(column, value)` of each row, largest first, ties by the lower column:
    /// what top-k sampling needs, without bringing whole rows of logits back. A row holding a
    /// NaN or +∞ has NaN as its first value.
    fn top_k_rows(&self, x: &Self::Tensor, k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        Ok(host_top_k_rows(&self.to_host(x)?, k))
    }
    /// Per row `r`, `Σ exp((x − max) / temperatures[r])` in f64: with the row's best candidates,
    /// what sampling without a top-k needs (see [`crate::ops::sampling::softmax_total`]).
    fn softmax_totals(&self, x: &Self::Tensor, temperatures: &[f32]) -> Result<Vec<f64>> {
        host_softmax_totals(&self.to_host(x)?, temperatures)
    }
    /// [`Self::top_k_rows`] and [`Self::softmax_totals`] of the same rows, with one wait for a
    /// device for both.
    fn top_k_and_totals(
        &self,
        x: &Self::Tensor,
        k: usize,
        temperatures: &[f32],
    ) -> Result<(RowCandidates, Vec<f64>)> {
        Ok((
            self.top_k_rows(x, k)?,
            self.softmax_totals(x, temperatures)?,
        ))
    }

    /// Rows of `table` `[vocab, hidden]` for each id.
    fn embedding(&self, table: &Self::Weight, ids: &[u32]) -> Result<Self::Tensor>;
    /// `x·wᵀ`: `[m, k] × [n, k] → [m, n]`.
    fn matmul(&self, x: &Self::Tensor, w: &Self::Weight) -> Result<Self::Tensor>;
    /// Per head `h`: columns `[offset, offset + in)` of head block `h` (of width `head_stride`)
    /// times `w[h]ᵀ` → `[rows, heads·out]`.
    fn head_matmul(
        &self,
        x: &Self::Tensor,
        head_stride: usize,
        offset: usize,
        w: &Self::HeadWeight,
    ) -> Result<Self::Tensor>;
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Weight, eps: f32) -> Result<Self::Tensor>;
    /// Adds `bias` (one value per column) to every row.
    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Weight) -> Result<()>;
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// `x += y`, then the RMSNorm of the new `x`: a residual add and the norm after it, which a
    /// backend may fuse into one pass over the rows.
    fn add_rms_norm(
        &self,
        x: &mut Self::Tensor,
        y: &Self::Tensor,
        weight: &Self::Weight,
        eps: f32,
    ) -> Result<Self::Tensor> {
        self.add_assign(x, y)?;
        self.rms_norm(x, weight, eps)
    }
    /// The given rows of `x`, in order.
    fn select_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;

    /// Rotates, in each of the first `heads` head blocks (width `head_stride`) of row `i`, the
    /// `2·table.half` columns from `offset` with row `i` of `table`.
    fn rope(
        &self,
        x: &mut Self::Tensor,
        table: &RopeTable,
        heads: usize,
        head_stride: usize,
        offset: usize,
    ) -> Result<()>;
    /// The latent compression epilogue on `kv_a_proj` output `[T, r_kv + d_rope]`: RMSNorm the
    /// first `r_kv` columns with `norm`, rope the last `d_rope` with `table`.
    fn latent_epilogue(
        &self,
        ckv: &mut Self::Tensor,
        norm: &Self::Weight,
        eps: f32,
        table: &RopeTable,
    ) -> Result<()>;

    fn alloc_kv_cache(
        &self,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        width: usize,
    ) -> Result<Self::KvCache>;
    /// A cache whose rows are `rows` (`--kv-cache-dtype`); [`CacheRows::Native`] is
    /// [`Self::alloc_kv_cache`]. A backend refuses the formats it cannot attend over yet.
    fn alloc_cache_rows(
        &self,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        rows: CacheRows,
    ) -> Result<Self::KvCache> {
        match rows {
            CacheRows::Native { width } => {
                self.alloc_kv_cache(layers, num_blocks, block_size, width)
            }
            other => Err(Error::InvalidInput(format!(
                "a {} KV cache is not supported on this device yet (it is on --device cpu)",
                other.describe(self.cache_value_bytes())
            ))),
        }
    }
    /// Copies whole cache blocks `(from, to)` in every layer (copy-on-write of shared blocks).
    fn copy_blocks(&self, cache: &mut Self::KvCache, pairs: &[(u32, u32)]) -> Result<()>;
    /// Stores columns `[offset, offset + cache width)` of row `i` of `x` at cache slot
    /// `slots[i]` of `layer`.
    fn write_kv_cache(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        x: &Self::Tensor,
        offset: usize,
        slots: &[u32],
    ) -> Result<()>;

    /// Standard causal attention (MHA, GQA, MQA) over a paged cache whose rows are
    /// `[K of every KV head | V of every KV head]`. `q` holds the query heads in its first
    /// `heads·head_dim` columns (it may be a fused qkv tensor). Returns `[T, heads·head_dim]`.
    fn mha_attention(
        &self,
        q: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        batch: &AttentionBatch,
        dims: &MhaDims,
    ) -> Result<Self::Tensor>;

    /// MLA in materialised form: expand each context latent to per-head K/V with `kv_b`
    /// (`[heads·(qk_nope + v_head), r_kv]`) and run causal attention. `q` is `[T, heads·qk_head]`
    /// with its RoPE part already rotated. Returns `[T, heads·v_head]`.
    fn mla_attention_materialised(
        &self,
        q: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        batch: &AttentionBatch,
        kv_b: &Self::Weight,
        dims: &MlaDims,
    ) -> Result<Self::Tensor>;

    /// MLA in absorbed form over the latent cache: `q_lat` `[T, heads·r_kv]` is `q_nope·W_UK`,
    /// the RoPE part comes from `q` (`[T, heads·qk_head]`). Returns the latent output
    /// `[T, heads·r_kv]`, to be multiplied by `W_UV`.
    fn mla_attention_absorbed(
        &self,
        q_lat: &Self::Tensor,
        q: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        batch: &AttentionBatch,
        dims: &MlaDims,
    ) -> Result<Self::Tensor>;

    fn mlp(&self, x: &Self::Tensor, w: &MlpWeights<Self>) -> Result<Self::Tensor>;
    fn moe(
        &self,
        x: &Self::Tensor,
        w: &MoeWeights<Self>,
        config: &MoeConfig,
    ) -> Result<Self::Tensor>;
}

#[cfg(test)]
mod tests {
    use super::{AttentionBatch, DeviceCounters, SeqChunk};

    #[test]
    fn counters_print_per_step_means() {
        let c = |kernel_launches, graph_launches, uploads, host_waits| DeviceCounters {
            kernel_launches,
            graph_launches,
            uploads,
            host_waits,
        };
        assert_eq!(
            c(0, 3, 3, 3).per_step(3),
            "1 graph launch, 0 kernel launches, 1 host→device copy, 1 device→host wait"
        );
        assert_eq!(
            c(250, 0, 8, 7).per_step(2),
            "0 graph launches, 125 kernel launches, 4 host→device copies, 3.5 device→host waits"
        );
        assert_eq!(c(9, 1, 5, 2).since(&c(4, 1, 2, 1)), c(5, 0, 3, 1));
    }

    #[test]
    fn a_batch_that_does_not_fit_its_cache_says_what_is_wrong() {
        let batch = |block_table: Vec<u32>, context_len, query_len| AttentionBatch {
            block_size: 16,
            seqs: vec![SeqChunk {
                block_table,
                context_len,
                query_len,
            }],
        };
        let message =
            |b: AttentionBatch, blocks| b.check_blocks(blocks, 16).unwrap_err().to_string();
        assert!(message(batch(vec![0], 2, 3), 4).contains("2 tokens has 3 new ones"));
        assert!(message(batch(vec![0], 20, 1), 4).contains("20 tokens has 1 blocks, needs 2"));
        assert!(message(batch(vec![0, 9], 20, 1), 4)
            .contains("block 9 is outside the cache (4 blocks)"));
        assert!(batch(vec![0], 2, 1).check_blocks(4, 16).is_ok());
    }
}
