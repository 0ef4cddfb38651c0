//! Which tensor-core attention kernel serves a layout: the 64-row latent kernels where a token
//! has 64+ heads (wgmma on Hopper, mma.sync elsewhere, where they pay), the 16-row mma.sync
//! kernel for the shapes it is built for, the WMMA kernel for every other width; each kernel's
//! handle, threads, shared memory (from build.rs, or the WMMA plan placed here) and CTAs per SM.
//! Experimental kernels (`experimental-kernels`) are chosen only when asked for.
//! docs/kernels.md, "Kernel choice".

use super::layout::{AttentionLayout, Segment};
use super::params::WmmaShared;
use super::schedule::{KV_TILE, ROWS};
#[cfg(feature = "experimental-kernels")]
use super::tensor_map::{keys_are_rows, TILE_TOKENS};
use crate::backend::cuda::kernels::{self, Kernel};
use crate::backend::cuda::tuning;
use crate::backend::AttentionBatch;
use crate::kv::cache_dtype::Fp8RowParts;

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
    /// kept in registers.
    #[cfg(feature = "experimental-kernels")]
    WgmmaRs,
    /// attention_wgmma_latent576_bf16 with at most one CTA per SM, each serving several 64-row
    /// units and loading the next unit's queries and first tile while it finishes one.
    #[cfg(feature = "experimental-kernels")]
    WgmmaPersistent,
    /// attention_wgmma_seesaw_latent576_bf16 (Hopper only): the warpgroups score alternate
    /// tiles, one's softmax overlapping the other's wgmma; also for fewer than 64 heads.
    #[cfg(feature = "experimental-kernels")]
    WgmmaSeesaw,
    /// The seesaw kernel with its tiles brought by the tensor memory accelerator; pages of 16,
    /// 32 or a multiple of 64 tokens.
    #[cfg(feature = "experimental-kernels")]
    WgmmaSeesawTma,
}

impl WideAttention {
    /// Whether this choice needs a Hopper GPU (the sm_90a kernels).
    pub fn needs_hopper(self) -> bool {
        !matches!(
            self,
            WideAttention::WherePays | WideAttention::Off | WideAttention::Mma
        )
    }
}

/// Which build of the 16-row kernel serves the MLA latent (576/512): two CTAs per SM with two
/// stages of tiles, or (experimental) one CTA per SM with five stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NarrowAttention {
    #[default]
    Shallow,
    #[cfg(feature = "experimental-kernels")]
    Deep,
}

/// How the splits of a row group are merged where it has several: by attention_combine_bf16,
/// a second kernel, or (experimental) by the CTA that finishes a group's last split, for
/// schedules of at most [`LAST_CTA_MAX_SPLITS`] splits per group (more fall back to the kernel).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SplitCombine {
    #[default]
    Kernel,
    #[cfg(feature = "experimental-kernels")]
    LastCta,
}

/// The most splits of a row group the in-kernel combine merges: a warp's lanes, one per split.
pub const LAST_CTA_MAX_SPLITS: usize = 32;

/// How a step's tensor-core attention is run: which 64-row kernel and 16-row build, how many
/// CTAs the split-KV schedule aims for in waves of the CTAs the GPU holds at once (1: one full
/// wave), and how the splits are merged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionTuning {
    pub wide: WideAttention,
    pub narrow: NarrowAttention,
    pub waves: f32,
    pub combine: SplitCombine,
}

impl Default for AttentionTuning {
    fn default() -> Self {
        AttentionTuning {
            wide: WideAttention::WherePays,
            narrow: NarrowAttention::Shallow,
            waves: 1.0,
            combine: SplitCombine::Kernel,
        }
    }
}

impl From<WideAttention> for AttentionTuning {
    fn from(wide: WideAttention) -> Self {
        AttentionTuning {
            wide,
            ..AttentionTuning::default()
        }
    }
}

/// One tensor-core kernel for a layout: its handle, threads per CTA, dynamic shared memory,
/// 16-row runs per CTA unit, CTAs that fit one SM, whether it is launched with at most a wave
/// of CTAs that each serve several units, and which params it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionKernel {
    pub handle: Kernel,
    pub threads: u32,
    pub shared_bytes: usize,
    pub runs_per_cta: usize,
    pub ctas_per_sm: usize,
    pub persistent: bool,
    pub params: ParamsKind,
}

/// Which params struct a kernel takes (params.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamsKind {
    Attention,
    /// WmmaParams, with the shared-memory plan of the layout.
    Wmma(WmmaShared),
    /// Fp8AttentionParams: the cache's FP8 rows too.
    Fp8,
    /// TmaAttentionParams: the cache rows' tensor map too.
    #[cfg(feature = "experimental-kernels")]
    Tma,
}

impl AttentionKernel {
    /// The entry point without its dtype, and "persistent" where it is launched so.
    pub fn label(&self) -> String {
        let name = self.handle.name.trim_end_matches("_bf16");
        match self.persistent {
            true => format!("{name} persistent"),
            false => name.to_string(),
        }
    }

    /// What the kernel's KV splits must be a multiple of: a tile, or for the tensor-map build a
    /// 64-token tile, as its boxes start at one (and so never cross a page).
    pub(super) fn split_tokens(&self) -> usize {
        match self.params {
            #[cfg(feature = "experimental-kernels")]
            ParamsKind::Tma => TILE_TOKENS,
            _ => KV_TILE,
        }
    }

    /// A kernel of the shared shape: 256 threads, one CTA per SM unless said otherwise.
    fn of(handle: Kernel, runs_per_cta: usize, ctas_per_sm: usize) -> Self {
        AttentionKernel {
            handle,
            threads: MMA_THREADS,
            shared_bytes: handle.shared_bytes,
            runs_per_cta,
            ctas_per_sm,
            persistent: false,
            params: ParamsKind::Attention,
        }
    }
}

/// One build of mma.cu's 16-row kernel: key width, value width, whether the values are the
/// keys' first columns, its handle and CTAs per SM (its launch bounds).
struct MmaBuild {
    dq: usize,
    dv: usize,
    v_in_k: bool,
    deep: bool,
    handle: Kernel,
    ctas_per_sm: usize,
}

/// The builds of mma.cu's 16-row kernel.
const MMA_BUILDS: &[MmaBuild] = &[
    MmaBuild {
        dq: 576,
        dv: 512,
        v_in_k: true,
        deep: false,
        handle: kernels::ATTENTION_MMA_LATENT576_BF16,
        ctas_per_sm: 2,
    },
    #[cfg(feature = "experimental-kernels")]
    MmaBuild {
        dq: 576,
        dv: 512,
        v_in_k: true,
        deep: true,
        handle: kernels::ATTENTION_MMA_DEEP_LATENT576_BF16,
        ctas_per_sm: 1,
    },
    MmaBuild {
        dq: 128,
        dv: 128,
        v_in_k: false,
        deep: false,
        handle: kernels::ATTENTION_MMA_HEAD128_BF16,
        ctas_per_sm: 2,
    },
    MmaBuild {
        dq: 192,
        dv: 128,
        v_in_k: false,
        deep: false,
        handle: kernels::ATTENTION_MMA_HEAD192_BF16,
        ctas_per_sm: 2,
    },
];
/// Threads of the mma.sync and wgmma kernels (`MMA_WARPS`, `WG_THREADS`) and of the WMMA one.
const MMA_THREADS: u32 = 8 * 32;
const WMMA_THREADS: u32 = 4 * 32;
/// Runs of a 64-row unit (`WIDE_RUNS`, `WG_RUNS` in shared.cuh).
const WIDE_RUNS: usize = 4;

/// The WMMA kernel's shared-memory plan for `l` (wmma.cu): q [ROWS][dq], k [KV_TILE][dq] and,
/// unless the values are in the keys, v [KV_TILE][dv] bf16; two score tiles [ROWS][KV_TILE]
/// f32, P [ROWS][KV_TILE] bf16, O [ROWS][dv] f32; then the fixed part (build.rs's size). Every
/// part is a multiple of 32 bytes, as WMMA needs.
fn wmma_plan(l: &AttentionLayout) -> (WmmaShared, usize) {
    let (dq, dv) = (l.k1.len + l.k2.len, l.v.len);
    let v_tile = if values_in_keys(l) {
        0
    } else {
        KV_TILE * dv * 2
    };
    let k = ROWS * dq * 2;
    let v = k + KV_TILE * dq * 2;
    let s = v + v_tile;
    let p = s + 2 * ROWS * KV_TILE * 4;
    let o = p + ROWS * KV_TILE * 2;
    let stats = o + ROWS * dv * 4;
    let i = |x: usize| x as i32;
    let plan = WmmaShared {
        k: i(k),
        v: i(v),
        s: i(s),
        p: i(p),
        o: i(o),
        stats: i(stats),
    };
    (plan, stats + kernels::ATTENTION_WMMA_BF16.shared_bytes)
}

/// The kernel that serves `l` within `max_shared` bytes of shared memory per CTA: the 64-row
/// latent kernel where a token has 64+ heads (on warpgroup tensor cores if `hopper`: compute
/// capability 9.0), else the register-accumulator one where it is built for the shape (two
/// stages), else the WMMA one (16-wide tiles over the key and value widths); all need 16-byte
/// row copies of every key and value segment.
pub fn kernel_for(l: &AttentionLayout, max_shared: usize, hopper: bool) -> Option<AttentionKernel> {
    let wide = match hopper {
        true => WideAttention::Wgmma,
        false => WideAttention::Mma,
    };
    kernel_choice(l, max_shared, wide, NarrowAttention::Shallow)
}

/// Which 64-row kernel pays for `batch`, if any: wgmma on Hopper, mma.sync elsewhere
/// (thresholds in [`tuning`]).
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
        ctas += n * seq.context_len.div_ceil(tuning::WIDE_MIN_SPLIT);
    }
    let wgmma_pays = tokens >= units * tuning::WIDE_MIN_CONTEXT
        || (units >= tuning::WGMMA_MANY_UNITS && tokens >= units * tuning::WGMMA_MIN_CONTEXT);
    match units > 0 {
        true if hopper && wgmma_pays => WideAttention::Wgmma,
        true if !hopper
            && tokens >= units * tuning::WIDE_MIN_CONTEXT
            && ctas >= multiprocessors =>
        {
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
) -> Option<AttentionKernel> {
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
    // The 16-row builds read each query pair (values c, c + 1, c even) with one 4-byte load.
    let query_pairs = aligned(&l.q1, 2) && aligned(&l.q2, 2);
    if let Some(parts) = l.cache_fp8 {
        return fp8_kernel(
            parts,
            (dq, dv, v_in_k),
            wide_shape && wide != WideAttention::Off,
        )
        .filter(|k| query_pairs && k.shared_bytes <= max_shared);
    }
    let mut candidates: Vec<AttentionKernel> = Vec::with_capacity(3);
    if wide_shape && wide == WideAttention::Wgmma {
        candidates.push(AttentionKernel::of(
            kernels::ATTENTION_WGMMA_LATENT576_BF16,
            WIDE_RUNS,
            1,
        ));
    }
    if wide_shape && wide == WideAttention::Mma {
        candidates.push(AttentionKernel::of(
            kernels::ATTENTION_MMA_WIDE_LATENT576_BF16,
            WIDE_RUNS,
            1,
        ));
    }
    #[cfg(feature = "experimental-kernels")]
    candidates.extend(experimental_wide(l, latent, wide_shape, wide));
    let mma = |deep: bool| {
        MMA_BUILDS
            .iter()
            .find(|b| {
                (b.dq, b.dv, b.deep) == (dq, dv, deep)
                    && (b.v_in_k == v_in_k || !b.v_in_k)
                    && query_pairs
            })
            .map(|b| AttentionKernel::of(b.handle, 1, b.ctas_per_sm))
    };
    #[cfg(feature = "experimental-kernels")]
    if narrow == NarrowAttention::Deep {
        candidates.extend(mma(true));
    }
    #[cfg(not(feature = "experimental-kernels"))]
    let _ = narrow;
    candidates.extend(mma(false));
    if dq % 16 == 0 && dv % 16 == 0 {
        let (plan, shared_bytes) = wmma_plan(l);
        candidates.push(AttentionKernel {
            handle: kernels::ATTENTION_WMMA_BF16,
            threads: WMMA_THREADS,
            shared_bytes,
            runs_per_cta: 1,
            ctas_per_sm: 2,
            persistent: false,
            params: ParamsKind::Wmma(plan),
        });
    }
    candidates
        .into_iter()
        .find(|k| k.shared_bytes <= max_shared)
}

/// The FP8 build of the mma.sync kernel for keys and values of shape (dq, dv, v_in_k) over FP8
/// rows `parts`, the 64-row one if `wide`: the latent (576/512) and 128-wide heads, where each
/// piece of 8 values is one aligned load (fp8.cuh); other shapes take the exact kernel.
fn fp8_kernel(
    parts: Fp8RowParts,
    shape: (usize, usize, bool),
    wide: bool,
) -> Option<AttentionKernel> {
    let pieces = parts.codes % 8 == 0
        && parts.group % 8 == 0
        && parts.row_bytes % 16 == 0
        && parts.tail_at % 16 == 0;
    let fp8 = |handle, runs, ctas| AttentionKernel {
        params: ParamsKind::Fp8,
        ..AttentionKernel::of(handle, runs, ctas)
    };
    match shape {
        _ if !pieces => None,
        (576, 512, true) if wide => Some(fp8(
            kernels::ATTENTION_MMA_WIDE_FP8_LATENT576_BF16,
            WIDE_RUNS,
            1,
        )),
        (576, 512, true) => Some(fp8(kernels::ATTENTION_MMA_FP8_LATENT576_BF16, 1, 2)),
        (128, 128, false) => Some(fp8(kernels::ATTENTION_MMA_FP8_HEAD128_BF16, 1, 2)),
        _ => None,
    }
}

/// The experimental 64-row kernels `wide` asks for. The seesaw kernel also serves fewer heads
/// (the rows of a unit the token lacks are empty), as FlashMLA serves V2-Lite's 16.
#[cfg(feature = "experimental-kernels")]
fn experimental_wide(
    l: &AttentionLayout,
    latent: bool,
    wide_shape: bool,
    wide: WideAttention,
) -> Option<AttentionKernel> {
    match wide {
        WideAttention::WgmmaPersistent if wide_shape => Some(AttentionKernel {
            persistent: true,
            ..AttentionKernel::of(kernels::ATTENTION_WGMMA_LATENT576_BF16, WIDE_RUNS, 1)
        }),
        WideAttention::WgmmaRs if wide_shape => Some(AttentionKernel::of(
            kernels::ATTENTION_WGMMA_RS_LATENT576_BF16,
            WIDE_RUNS,
            1,
        )),
        WideAttention::WgmmaSeesawTma if latent && keys_are_rows(l) => Some(AttentionKernel {
            params: ParamsKind::Tma,
            ..AttentionKernel::of(
                kernels::ATTENTION_WGMMA_SEESAW_TMA_LATENT576_BF16,
                WIDE_RUNS,
                1,
            )
        }),
        WideAttention::WgmmaSeesaw if latent => Some(AttentionKernel::of(
            kernels::ATTENTION_WGMMA_SEESAW_LATENT576_BF16,
            WIDE_RUNS,
            1,
        )),
        _ => None,
    }
}

/// Whether a tensor-core kernel serves `l` (see [`kernel_for`]).
pub fn supports(l: &AttentionLayout, max_shared: usize) -> bool {
    kernel_for(l, max_shared, false).is_some()
}

#[cfg(test)]
#[path = "kernel_choice_tests.rs"]
mod tests;
