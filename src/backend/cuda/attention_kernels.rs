//! Which tensor-core attention kernel serves a layout (`kernels/attention_wgmma.cu` for the MLA
//! latent with 64+ heads on Hopper, `kernels/attention_seesaw.cu` (two builds) for it where
//! asked for,
//! `kernels/attention_mma.cu` for the shapes it is built for,
//! `kernels/attention_tc.cu` for every other): each kernel's shapes, shared memory and CTAs per
//! SM, and where the 64-row kernels pay.

use super::layout::{AttentionLayout, Segment};
use super::tensor_map::{keys_are_rows, TILE_TOKENS};
use crate::backend::AttentionBatch;

use super::attention_schedule::{KV_TILE, ROWS};

/// Whether the values are the first `v.len` columns of the key tile (MLA absorbed).
pub(super) fn values_in_keys(l: &AttentionLayout) -> bool {
    l.v.source == l.k1.source
        && l.v.width == l.k1.width
        && l.v.offset == l.k1.offset
        && l.v.head_stride == l.k1.head_stride
        && l.v.len <= l.k1.len
}

/// Which kernel serves MLA latent steps with 64+ heads per token: the 64-row kernels where they
/// pay (the default: wgmma on Hopper, mma.sync elsewhere), or one forced on or off (tests run
/// them on shapes of any size).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WideAttention {
    #[default]
    WherePays,
    Off,
    /// attention_mma_wide_latent576_bf16 (sm_80+).
    Mma,
    /// attention_wgmma_latent576_bf16 (Hopper only).
    Wgmma,
    /// attention_wgmma_rs_latent576_bf16 (Hopper only): scores computed by both warpgroups, P
    /// kept in registers; an alternative to Wgmma that `mla bench attention` compares.
    WgmmaRs,
    /// attention_wgmma_latent576_bf16 with one CTA per SM, each serving several 64-row units
    /// (where there are more than SMs) and loading the next unit's queries and first tile while
    /// it finishes one; an alternative to Wgmma (a CTA per unit) that `mla bench attention`
    /// compares.
    WgmmaPersistent,
    /// attention_wgmma_seesaw_latent576_bf16 (Hopper only): each warpgroup scores every other
    /// tile, the two offset so that one's softmax overlaps the other's wgmma; an alternative to
    /// Wgmma that `mla bench attention` compares, and, for fewer than 64 heads (empty rows
    /// filling the unit), to the 16-row kernel.
    WgmmaSeesaw,
    /// attention_wgmma_seesaw_tma_latent576_bf16: WgmmaSeesaw with the tiles brought by the
    /// tensor memory accelerator (bulk copies of a tensor map over the cache rows, issued by
    /// one thread) instead of cp.async by every thread; for block sizes of 16, 32 or a
    /// multiple of 64 tokens.
    WgmmaSeesawTma,
}

impl WideAttention {
    /// Whether this choice needs a Hopper GPU (the sm_90a kernels).
    pub fn needs_hopper(self) -> bool {
        matches!(
            self,
            WideAttention::Wgmma
                | WideAttention::WgmmaRs
                | WideAttention::WgmmaPersistent
                | WideAttention::WgmmaSeesaw
                | WideAttention::WgmmaSeesawTma
        )
    }
}

/// Which build of the 16-row kernel serves the MLA latent (576/512): two CTAs per SM with two
/// stages of tiles (the default), or one CTA per SM with five (`Deep`: twice the bytes in
/// flight per SM from half the CTAs, so fewer splits and less to combine), which
/// `mla bench attention` compares. Other shapes have the two-stage build only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NarrowAttention {
    #[default]
    Shallow,
    Deep,
}

/// How the splits of a row group are merged where it has several: by attention_tc_combine, a
/// second kernel that starts once the whole attention grid has finished (the default), or
/// (`LastCta`) inside the attention kernel by the CTA that finishes a group's last split, while
/// the others still work — one launch instead of two, for schedules of at most
/// [`LAST_CTA_MAX_SPLITS`] splits per group (more fall back to the kernel), which
/// `mla bench attention --combine` compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SplitCombine {
    #[default]
    Kernel,
    LastCta,
}

/// The most splits of a row group the in-kernel combine merges: a warp's lanes, one per split.
pub const LAST_CTA_MAX_SPLITS: usize = 32;

/// How a step's tensor-core attention is run: which 64-row kernel (see [`WideAttention`]) and
/// 16-row build (see [`NarrowAttention`]), how many CTAs the split-KV schedule aims for, in
/// waves of the CTAs the GPU holds at once (1, the default: one full wave;
/// `mla bench attention --waves` tries others), and how the splits are merged (see
/// [`SplitCombine`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcTuning {
    pub wide: WideAttention,
    pub narrow: NarrowAttention,
    pub waves: f32,
    pub combine: SplitCombine,
}

impl Default for TcTuning {
    fn default() -> Self {
        TcTuning {
            wide: WideAttention::WherePays,
            narrow: NarrowAttention::Shallow,
            waves: 1.0,
            combine: SplitCombine::Kernel,
        }
    }
}

impl From<WideAttention> for TcTuning {
    fn from(wide: WideAttention) -> Self {
        TcTuning {
            wide,
            ..TcTuning::default()
        }
    }
}

/// One tensor-core kernel for a layout: its module, entry point, threads per CTA, dynamic
/// shared memory, 16-row runs served per CTA's unit, CTAs that fit one SM (for the schedule),
/// whether it is launched with at most a wave of CTAs that each serve several units, and
/// whether it takes a tensor map of the cache rows after the common arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcKernel {
    pub module: &'static str,
    pub function: &'static str,
    pub threads: u32,
    pub shared_bytes: usize,
    pub runs_per_cta: usize,
    pub ctas_per_sm: usize,
    pub persistent: bool,
    pub tensor_map: bool,
}

impl TcKernel {
    /// The entry point without its dtype, and "persistent" where it is launched so.
    pub fn label(&self) -> String {
        let name = self.function.trim_end_matches("_bf16");
        match self.persistent {
            true => format!("{name} persistent"),
            false => name.to_string(),
        }
    }

    /// What the kernel's KV splits must be a multiple of: a tile, or for the tensor-map build a
    /// 64-token tile, as its boxes start at one (and so never cross a page).
    pub(super) fn split_tokens(&self) -> usize {
        match self.tensor_map {
            true => TILE_TOKENS,
            false => KV_TILE,
        }
    }
}

/// One build of `kernels/attention_mma.cu`'s 16-row kernel.
struct MmaBuild {
    /// Key width, value width, and whether the values are the keys' first columns.
    dq: usize,
    dv: usize,
    v_in_k: bool,
    /// Tiles in shared memory (STAGES − 1 in flight while one is used) and CTAs per SM.
    stages: usize,
    ctas_per_sm: usize,
    function: &'static str,
}

/// The builds of attention_mma.cu's 16-row kernel (its `MLA_ATTENTION_MMA` lines).
const MMA_BUILDS: [MmaBuild; 4] = [
    MmaBuild {
        dq: 576,
        dv: 512,
        v_in_k: true,
        stages: 2,
        ctas_per_sm: 2,
        function: "attention_mma_latent576_bf16",
    },
    MmaBuild {
        dq: 576,
        dv: 512,
        v_in_k: true,
        stages: DEEP_STAGES,
        ctas_per_sm: 1,
        function: "attention_mma_deep_latent576_bf16",
    },
    MmaBuild {
        dq: 128,
        dv: 128,
        v_in_k: false,
        stages: 2,
        ctas_per_sm: 2,
        function: "attention_mma_head128_bf16",
    },
    MmaBuild {
        dq: 192,
        dv: 128,
        v_in_k: false,
        stages: 2,
        ctas_per_sm: 2,
        function: "attention_mma_head192_bf16",
    },
];
/// Stages of the deep latent build ([`NarrowAttention::Deep`]).
const DEEP_STAGES: usize = 5;
/// attention_mma.cu's `PAD` (bf16 per shared K/V/P row), `S_LD` (f32 per partial-score row),
/// `K_PARTS` and `MMA_WARPS`.
const MMA_PAD: usize = 8;
const MMA_S_LD: usize = KV_TILE + 8;
const MMA_K_PARTS: usize = 4;
const MMA_THREADS: u32 = 8 * 32;
/// attention_mma.cu's `WIDE_RUNS` and `WIDE_STAGES`: the 64-row latent kernel, used where a
/// token has at least that many heads.
const WIDE_RUNS: usize = 4;
const WIDE_STAGES: usize = 3;

/// Dynamic shared memory of attention_mma_wide_latent576_bf16.
fn wide_shared_bytes() -> usize {
    let k_ld = 576 + MMA_PAD;
    (WIDE_RUNS * ROWS * k_ld
        + WIDE_STAGES * KV_TILE * k_ld
        + WIDE_RUNS * ROWS * (KV_TILE + MMA_PAD))
        * 2
        + 4 * WIDE_RUNS * ROWS * 4
        + WIDE_RUNS * ROWS * 4
}

/// Dynamic shared memory of attention_wgmma_latent576_bf16: the queries and two 64-token tiles of
/// the latent, P [64 × 64] bf16, two halves' row maxima and sums, the rows' positions.
fn wgmma_shared_bytes() -> usize {
    let rows = WIDE_RUNS * ROWS;
    (rows * 576 + 2 * WGMMA_TILE * 576 + rows * WGMMA_TILE) * 2 + 4 * rows * 4 + rows * 4
}
/// Dynamic shared memory of attention_wgmma_rs_latent576_bf16: the queries, two 64-token tiles
/// and the rows' positions.
fn wgmma_rs_shared_bytes() -> usize {
    let rows = WIDE_RUNS * ROWS;
    (rows * 576 + 2 * WGMMA_TILE * 576) * 2 + rows * 4
}
/// Dynamic shared memory of attention_wgmma_seesaw_latent576_bf16: the queries, two 64-token
/// tiles, four mbarriers, the rows' running max, two factors and two sums per row, positions.
fn wgmma_seesaw_shared_bytes() -> usize {
    let rows = WIDE_RUNS * ROWS;
    (rows * 576 + 2 * WGMMA_TILE * 576) * 2 + 4 * 8 + 5 * rows * 4 + rows * 4
}
/// attention_wgmma.cu's `WG_TILE`: cached tokens per tile.
const WGMMA_TILE: usize = 64;

/// Dynamic shared memory of attention_mma.cu for one build, as its `MmaShape::SHARED`.
fn mma_shared_bytes(b: &MmaBuild) -> usize {
    let stage = KV_TILE * (b.dq + MMA_PAD)
        + if b.v_in_k {
            0
        } else {
            KV_TILE * (b.dv + MMA_PAD)
        };
    b.stages * stage * 2
        + MMA_K_PARTS * ROWS * MMA_S_LD * 4
        + ROWS * (KV_TILE + MMA_PAD) * 2
        + 4 * ROWS * 4
}

/// Dynamic shared memory of attention_tc.cu (WMMA) for `l`.
fn wmma_shared_bytes(l: &AttentionLayout) -> usize {
    let (dq, dv) = (l.k1.len + l.k2.len, l.v.len);
    let v_tile = if values_in_keys(l) {
        0
    } else {
        KV_TILE * dv * 2
    };
    ROWS * dq * 2
        + KV_TILE * dq * 2
        + v_tile
        + 2 * ROWS * KV_TILE * 4
        + ROWS * KV_TILE * 2
        + ROWS * dv * 4
        + 4 * ROWS * 4
}

/// The kernel that serves `l` within `max_shared` bytes of shared memory per CTA: the 64-row
/// latent kernel where a token has 64+ heads (on warpgroup tensor cores if `hopper`: compute
/// capability 9.0), else the register-accumulator one where it is built for the shape (two
/// stages), else the WMMA one (16-wide tiles over the key and value widths); all need 16-byte
/// row copies of every key and value segment.
pub fn kernel_for(l: &AttentionLayout, max_shared: usize, hopper: bool) -> Option<TcKernel> {
    let wide = match hopper {
        true => WideAttention::Wgmma,
        false => WideAttention::Mma,
    };
    kernel_choice(l, max_shared, wide, NarrowAttention::Shallow)
}

/// Fewest cached tokens per 64-row unit, on average, and per CTA for which the 64-row kernel
/// pays: each of its CTAs first loads 64 query rows (72 KiB), and there is one CTA per SM.
/// Measured on an H200 (docs/gpu-runs.md, run 5): V3's 128 heads at 4K and 16K tokens gain
/// 1.2–1.35×, at 1K or with a single sequence the 16-row kernel is faster.
const WIDE_MIN_CONTEXT: usize = 2048;
const WIDE_MIN_SPLIT: usize = 512;

/// The wgmma kernel pays from 1K tokens per 64-row unit on average where there are many units
/// (32+ sequences of V3), else from 2K: measured on an H200 (docs/gpu-runs.md, run 8), it is
/// 1.1–1.6× faster than the 16-row kernel on every V3 shape but a single sequence of 1K tokens.
const WGMMA_MIN_CONTEXT: usize = 1024;
const WGMMA_MANY_UNITS: usize = 64;

/// Which 64-row kernel pays for `batch`, if any: wgmma on Hopper, mma.sync elsewhere.
pub(super) fn wide_pays(
    batch: &AttentionBatch,
    l: &AttentionLayout,
    multiprocessors: usize,
    hopper: bool,
) -> WideAttention {
    let (mut units, mut tokens, mut ctas) = (0, 0, 0);
    for seq in &batch.seqs {
        let kv_heads = l.heads / l.group.max(1);
        let n = kv_heads * (l.group * seq.query_len).div_ceil(WIDE_RUNS * ROWS);
        units += n;
        tokens += n * seq.context_len;
        ctas += n * seq.context_len.div_ceil(WIDE_MIN_SPLIT);
    }
    let wgmma_pays = tokens >= units * WIDE_MIN_CONTEXT
        || (units >= WGMMA_MANY_UNITS && tokens >= units * WGMMA_MIN_CONTEXT);
    match units > 0 {
        true if hopper && wgmma_pays => WideAttention::Wgmma,
        true if !hopper && tokens >= units * WIDE_MIN_CONTEXT && ctas >= multiprocessors => {
            WideAttention::Mma
        }
        _ => WideAttention::Off,
    }
}

/// [`kernel_for`], with the 64-row kernel `wide` (Mma or one of the Wgmma variants)
/// first, none if Off, and the 16-row build `narrow` before the two-stage one where the shape
/// has it.
pub(super) fn kernel_choice(
    l: &AttentionLayout,
    max_shared: usize,
    wide: WideAttention,
    narrow: NarrowAttention,
) -> Option<TcKernel> {
    // Whether every row of a segment (an empty one trivially) starts and ends on a multiple of
    // `n` values.
    let aligned = |s: &Segment, n: usize| {
        s.len == 0
            || [s.len, s.width, s.offset, s.head_stride]
                .iter()
                .all(|x| x % n == 0)
    };
    // 16-byte row copies (8 bf16) of every key and value segment.
    let copies = |s: &Segment| aligned(s, 8);
    let v_in_k = values_in_keys(l);
    if !(copies(&l.k1) && copies(&l.k2) && (v_in_k || copies(&l.v)) && l.v.len > 0) {
        return None;
    }
    let (dq, dv) = (l.k1.len + l.k2.len, l.v.len);
    let latent = (dq, dv, v_in_k) == (576, 512, true);
    let wide_shape = latent && l.group >= WIDE_RUNS * ROWS;
    let persistent = wide == WideAttention::WgmmaPersistent;
    let wgmma = (wide_shape && (wide == WideAttention::Wgmma || persistent)).then_some(TcKernel {
        module: "attention_wgmma",
        function: "attention_wgmma_latent576_bf16",
        threads: MMA_THREADS,
        shared_bytes: wgmma_shared_bytes(),
        runs_per_cta: WIDE_RUNS,
        ctas_per_sm: 1,
        persistent,
        tensor_map: false,
    });
    let wgmma_rs = (wide_shape && wide == WideAttention::WgmmaRs).then_some(TcKernel {
        module: "attention_wgmma",
        function: "attention_wgmma_rs_latent576_bf16",
        threads: MMA_THREADS,
        shared_bytes: wgmma_rs_shared_bytes(),
        runs_per_cta: WIDE_RUNS,
        ctas_per_sm: 1,
        persistent: false,
        tensor_map: false,
    });
    // Also for fewer heads (rows of a unit the token lacks are empty), as FlashMLA serves
    // V2-Lite's 16: memory-bound there, a 64-token tile's wasted tensor work may cost less than
    // the 16-row kernel's smaller tiles, twice the CTAs and their partial outputs.
    let tma = wide == WideAttention::WgmmaSeesawTma && keys_are_rows(l);
    let wgmma_seesaw =
        (latent && (wide == WideAttention::WgmmaSeesaw || tma)).then_some(TcKernel {
            module: "attention_seesaw",
            function: match tma {
                true => "attention_wgmma_seesaw_tma_latent576_bf16",
                false => "attention_wgmma_seesaw_latent576_bf16",
            },
            threads: MMA_THREADS,
            shared_bytes: wgmma_seesaw_shared_bytes(),
            runs_per_cta: WIDE_RUNS,
            ctas_per_sm: 1,
            persistent: false,
            tensor_map: tma,
        });
    let mma_wide = (wide_shape && wide == WideAttention::Mma).then_some(TcKernel {
        module: "attention_mma",
        function: "attention_mma_wide_latent576_bf16",
        threads: MMA_THREADS,
        shared_bytes: wide_shared_bytes(),
        runs_per_cta: WIDE_RUNS,
        ctas_per_sm: 1,
        persistent: false,
        tensor_map: false,
    });
    // The 16-row builds read each query pair (values c, c + 1, c even) with one 4-byte load.
    let query_pairs = aligned(&l.q1, 2) && aligned(&l.q2, 2);
    let mma = |stages: usize| {
        MMA_BUILDS
            .iter()
            .find(|b| {
                (b.dq, b.dv, b.stages) == (dq, dv, stages)
                    && (b.v_in_k == v_in_k || !b.v_in_k)
                    && query_pairs
            })
            .map(|b| TcKernel {
                module: "attention_mma",
                function: b.function,
                threads: MMA_THREADS,
                shared_bytes: mma_shared_bytes(b),
                runs_per_cta: 1,
                ctas_per_sm: b.ctas_per_sm,
                persistent: false,
                tensor_map: false,
            })
    };
    let mma_deep = (narrow == NarrowAttention::Deep)
        .then(|| mma(DEEP_STAGES))
        .flatten();
    let wmma = (dq % 16 == 0 && dv % 16 == 0).then(|| TcKernel {
        module: "attention_tc",
        function: "attention_tc_bf16",
        threads: 128,
        shared_bytes: wmma_shared_bytes(l),
        runs_per_cta: 1,
        ctas_per_sm: 2,
        persistent: false,
        tensor_map: false,
    });
    [
        wgmma,
        wgmma_rs,
        wgmma_seesaw,
        mma_wide,
        mma_deep,
        mma(2),
        wmma,
    ]
    .into_iter()
    .flatten()
    .find(|k| k.shared_bytes <= max_shared)
}

/// Whether a tensor-core kernel serves `l` (see [`kernel_for`]).
pub fn supports(l: &AttentionLayout, max_shared: usize) -> bool {
    kernel_for(l, max_shared, false).is_some()
}

#[cfg(test)]
#[path = "attention_kernels_tests.rs"]
mod tests;
