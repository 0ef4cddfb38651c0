//! Every tuning threshold of the CUDA backend in one table, each with the measurement it came
//! from (docs/benchmarks.md names the card, date and commit of each).

/// Fewest cached tokens per 64-row unit, on average, for which the 64-row mma.sync kernel pays,
/// and fewest per CTA: each of its CTAs first loads 64 query rows (72 KiB), one CTA per SM.
/// From `mla bench attention --kernel mma` on V3 shapes (docs/benchmarks.md, "Kernel choice"):
/// 1.2–1.35× at 4K and 16K tokens, slower at 1K or for a single sequence.
pub const WIDE_MIN_CONTEXT: usize = 2048;
pub const WIDE_MIN_SPLIT: usize = 512;

/// The wgmma kernel pays from 1K tokens per 64-row unit where there are at least this many
/// units (32+ sequences of V3), else from [`WIDE_MIN_CONTEXT`]. From `mla bench attention` on
/// V3 shapes (docs/benchmarks.md, "Kernel choice"): 1.1–1.6× the 16-row kernel on every shape
/// but a single sequence of 1K tokens.
pub const WGMMA_MIN_CONTEXT: usize = 1024;
pub const WGMMA_MANY_UNITS: usize = 64;

/// Fewest cached tokens a split of the tensor-core schedule gets (four 32-token tiles): below
/// that, loading a split's queries costs more than the split saves.
pub const MIN_SPLIT_TOKENS: usize = 128;

/// Resident warps per SM the exact kernel's splits aim for.
pub const EXACT_WARPS_PER_SM: usize = 64;

/// Bound on the context the materialised MLA form expands at once (K and V of a group of
/// sequences), in bytes.
pub const MATERIALISED_BYTES: usize = 2 << 30;
