//! Every tuning threshold of the CUDA backend in one table, each with the measurement it came
//! from (docs/benchmarks.md, "Kernel choice thresholds", gives the tables).

/// Fewest cached tokens per 64-row unit, on average, for which the 64-row mma.sync kernel pays,
/// and fewest per CTA (each CTA first loads 64 query rows, one CTA per SM). H200, 2026-11-28,
/// build addfb2c, `mla bench attention` at 128 heads: faster than the 16-row kernel from 4K
/// tokens at batch 32 and 128, slower at 1K tokens and at batch 1.
pub const WIDE_MIN_CONTEXT: usize = 2048;
pub const WIDE_MIN_SPLIT: usize = 512;

/// The wgmma kernel pays from this many cached tokens per 64-row unit where there are at least
/// [`WGMMA_MANY_UNITS`] units (32+ sequences of V3), else from [`WIDE_MIN_CONTEXT`]. H200,
/// 2026-11-28, build cfe213d, each kernel forced on every V3 shape: wgmma faster than the 16-row
/// kernel everywhere but one sequence of 1K tokens.
pub const WGMMA_MIN_CONTEXT: usize = 1024;
pub const WGMMA_MANY_UNITS: usize = 64;

/// Fewest cached tokens a split of the tensor-core schedule gets (four 32-token tiles): below
/// that, loading a split's queries costs more than the split saves.
pub const MIN_SPLIT_TOKENS: usize = 128;

/// Resident warps per SM the exact kernel's splits aim for, and the fewest tokens of one of its
/// splits.
pub const EXACT_WARPS_PER_SM: usize = 64;
pub const EXACT_MIN_SPLIT_TOKENS: usize = 64;
/// Split lengths of the exact kernel are whole multiples of this many tokens (not a speed
/// setting: a decode step's split length changes once every 64 tokens at most).
pub const EXACT_SPLIT_GRANULE: usize = 64;

/// Bound on the context the materialised MLA form expands at once (K and V of a group of
/// sequences), in bytes.
pub const MATERIALISED_BYTES: usize = 2 << 30;

/// CTAs per SM a dense FP8 GEMM aims for by splitting k where its tiles are fewer than the SMs
/// (decode's few rows): an estimate, awaiting `mla bench gemm` on a GPU.
pub const FP8_SPLIT_CTAS_PER_SM: usize = 2;
