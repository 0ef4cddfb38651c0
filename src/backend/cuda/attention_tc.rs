//! Rust side of the tensor-core attention kernels (`kernels/attention_wgmma.cu` for the MLA
//! latent with 64+ heads on Hopper, `kernels/attention_mma.cu` for the shapes it is built for,
//! `kernels/attention_tc.cu` for every other): which layouts they serve, and the launches of a
//! kernel and its combine over a split-KV schedule (attention_schedule.rs).

use super::attention::{check_segment, AttentionPlan, KeySegment};
use super::layout::{AttentionLayout, Segment, Source};
use super::{CudaDevice, GpuFloat, GpuTensor};
use crate::backend::AttentionBatch;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use std::cell::RefCell;

use super::attention_schedule::{schedule, TcGroup, TcItem, KV_TILE, NO_ROW, ROWS};

/// Output columns per block of the combine and most warps in one (`COMBINE_COLUMNS`,
/// `COMBINE_MAX_WARPS` in attention_tc.cu).
const COMBINE_COLUMNS: usize = 128;
const COMBINE_MAX_WARPS: usize = 8;

/// Warps per combine block where a row group has at most `max_splits` splits: one per split
/// up to eight, so a few splits do not leave warps idle and hundreds are read eight at a time.
fn combine_warps(max_splits: usize) -> usize {
    max_splits.clamp(1, COMBINE_MAX_WARPS)
}

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
}

/// How a step's tensor-core attention is run: which 64-row kernel (see [`WideAttention`]) and
/// how many CTAs the split-KV schedule aims for, in waves of the CTAs the GPU holds at once
/// (1, the default: one full wave; `mla bench attention --waves` tries others).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcTuning {
    pub wide: WideAttention,
    pub waves: f32,
}

impl Default for TcTuning {
    fn default() -> Self {
        TcTuning {
            wide: WideAttention::WherePays,
            waves: 1.0,
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
/// shared memory, 16-row runs served per CTA, and CTAs that fit one SM (for the schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcKernel {
    pub module: &'static str,
    pub function: &'static str,
    pub threads: u32,
    pub shared_bytes: usize,
    pub runs_per_cta: usize,
    pub ctas_per_sm: usize,
}

/// The shapes `kernels/attention_mma.cu` is built for: (key width, value width, values are the
/// keys' first columns, entry point).
const MMA_SHAPES: [(usize, usize, bool, &str); 3] = [
    (576, 512, true, "attention_mma_latent576_bf16"),
    (128, 128, false, "attention_mma_head128_bf16"),
    (192, 128, false, "attention_mma_head192_bf16"),
];
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
/// attention_wgmma.cu's `WG_TILE`: cached tokens per tile.
const WGMMA_TILE: usize = 64;

/// Dynamic shared memory of attention_mma.cu for one shape, as its `MmaShape::SHARED`.
fn mma_shared_bytes(dq: usize, dv: usize, v_in_k: bool) -> usize {
    let stage = KV_TILE * (dq + MMA_PAD) + if v_in_k { 0 } else { KV_TILE * (dv + MMA_PAD) };
    2 * stage * 2
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
/// capability 9.0), else the register-accumulator one where it is built for the shape, else the
/// WMMA one (16-wide tiles over the key and value widths); all need 16-byte row copies of every
/// key and value segment.
pub fn kernel_for(l: &AttentionLayout, max_shared: usize, hopper: bool) -> Option<TcKernel> {
    let wide = match hopper {
        true => WideAttention::Wgmma,
        false => WideAttention::Mma,
    };
    kernel_choice(l, max_shared, wide)
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
fn wide_pays(
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

/// [`kernel_for`], with the 64-row kernel `wide` (Mma or Wgmma) first, none if Off.
fn kernel_choice(l: &AttentionLayout, max_shared: usize, wide: WideAttention) -> Option<TcKernel> {
    let copies = |s: &Segment| {
        s.len == 0
            || (s.len % 8 == 0 && s.width % 8 == 0 && s.offset % 8 == 0 && s.head_stride % 8 == 0)
    };
    let v_in_k = values_in_keys(l);
    if !(copies(&l.k1) && copies(&l.k2) && (v_in_k || copies(&l.v)) && l.v.len > 0) {
        return None;
    }
    let (dq, dv) = (l.k1.len + l.k2.len, l.v.len);
    let wide_shape = (dq, dv, v_in_k) == (576, 512, true) && l.group >= WIDE_RUNS * ROWS;
    let wgmma = (wide_shape && wide == WideAttention::Wgmma).then_some(TcKernel {
        module: "attention_wgmma",
        function: "attention_wgmma_latent576_bf16",
        threads: MMA_THREADS,
        shared_bytes: wgmma_shared_bytes(),
        runs_per_cta: WIDE_RUNS,
        ctas_per_sm: 1,
    });
    let mma_wide = (wide_shape && wide == WideAttention::Mma).then_some(TcKernel {
        module: "attention_mma",
        function: "attention_mma_wide_latent576_bf16",
        threads: MMA_THREADS,
        shared_bytes: wide_shared_bytes(),
        runs_per_cta: WIDE_RUNS,
        ctas_per_sm: 1,
    });
    let mma = MMA_SHAPES
        .iter()
        .find(|&&(q, v, in_k, _)| (q, v) == (dq, dv) && (in_k == v_in_k || !in_k))
        .map(|&(_, _, in_k, function)| TcKernel {
            module: "attention_mma",
            function,
            threads: MMA_THREADS,
            shared_bytes: mma_shared_bytes(dq, dv, in_k),
            runs_per_cta: 1,
            ctas_per_sm: 2,
        });
    let wmma = (dq % 16 == 0 && dv % 16 == 0).then(|| TcKernel {
        module: "attention_tc",
        function: "attention_tc_bf16",
        threads: 128,
        shared_bytes: wmma_shared_bytes(l),
        runs_per_cta: 1,
        ctas_per_sm: 2,
    });
    [wgmma, mma_wide, mma, wmma]
        .into_iter()
        .flatten()
        .find(|k| k.shared_bytes <= max_shared)
}

/// Whether a tensor-core kernel serves `l` (see [`kernel_for`]).
pub fn supports(l: &AttentionLayout, max_shared: usize) -> bool {
    kernel_for(l, max_shared, false).is_some()
}

/// A step's tensor-core schedule on the device.
pub struct TcSchedule {
    kernel: TcKernel,
    wide: WideAttention,
    items: CudaSlice<TcItem>,
    groups: CudaSlice<TcGroup>,
    item_count: usize,
    group_count: usize,
    /// The most splits of one row group.
    max_splits: usize,
    /// Values per query row (the layout's `v.len`) the partial buffers are sized for.
    value_len: usize,
    /// The splits' outputs and LSEs for the combine (None where it does not run), allocated
    /// with the schedule so that every layer of the step reuses them.
    partials: Option<RefCell<Partials>>,
}

/// Each item's ROWS rows of split output (`value_len` f32) and their LSEs (base 2).
struct Partials {
    o: CudaSlice<f32>,
    lse: CudaSlice<f32>,
}

impl TcSchedule {
    /// The kernel the schedule is for.
    pub fn kernel(&self) -> TcKernel {
        self.kernel
    }

    /// Whether every row group has one split, so that the kernel writes the output itself.
    pub fn direct(&self) -> bool {
        self.max_splits <= 1
    }

    /// The most splits of one row group (what the combine merges).
    pub fn max_splits(&self) -> usize {
        self.max_splits
    }

    /// CTAs of the attention kernel's launch.
    pub fn ctas(&self) -> usize {
        self.item_count / self.kernel.runs_per_cta
    }
}

impl CudaDevice {
    /// The kernel for layout `l` and the split-KV schedule of `batch` for it, on the device, as
    /// `tuning` asks.
    pub fn tc_schedule(
        &self,
        batch: &AttentionBatch,
        l: &AttentionLayout,
        tuning: TcTuning,
    ) -> Result<TcSchedule> {
        let wide = match tuning.wide {
            WideAttention::WherePays => {
                wide_pays(batch, l, self.info.multiprocessors, self.info.hopper())
            }
            WideAttention::Wgmma if !self.info.hopper() => {
                return Err(Error::Op {
                    op: "attention_tc",
                    message: format!(
                        "the wgmma kernel needs a Hopper GPU, not {}",
                        self.info.name
                    ),
                })
            }
            forced => forced,
        };
        let kernel =
            kernel_choice(l, self.info.max_shared_per_block, wide).ok_or_else(|| Error::Op {
                op: "attention_tc",
                message: format!("no tensor-core kernel serves {l:?}"),
            })?;
        let wave = kernel.ctas_per_sm * self.info.multiprocessors;
        let target_ctas = (wave as f32 * tuning.waves).round().max(1.0) as usize;
        let (items, groups) = schedule(
            batch,
            l.heads,
            l.group,
            l.window,
            target_ctas,
            kernel.runs_per_cta,
        );
        let err = |e| Error::Device(format!("attention_tc schedule: {e}"));
        let (item_count, group_count) = (items.len(), groups.len());
        let max_splits = groups.iter().map(|g| g.items as usize).max().unwrap_or(0);
        let partials = match max_splits > 1 {
            true => Some(RefCell::new(Partials {
                o: self.tensor::<f32>(item_count * ROWS, l.v.len, None)?.data,
                lse: self.tensor::<f32>(item_count, ROWS, None)?.data,
            })),
            false => None,
        };
        // Never empty buffers: the kernel gets valid pointers even for an empty step.
        let items = if items.is_empty() {
            vec![EMPTY_ITEM]
        } else {
            items
        };
        let groups = if groups.is_empty() {
            vec![EMPTY_GROUP]
        } else {
            groups
        };
        Ok(TcSchedule {
            kernel,
            wide,
            items: self.stream.clone_htod(&items).map_err(err)?,
            groups: self.stream.clone_htod(&groups).map_err(err)?,
            item_count,
            group_count,
            max_splits,
            value_len: l.v.len,
            partials,
        })
    }

    /// Attention for the step of `plan` with layout `l` on tensor cores: the output
    /// `[T, heads·v.len]` and each (token, head) row's log-sum-exp of its scaled scores (natural
    /// log). `T` must be bf16 and `l` one that [`supports`] accepts; `schedule` comes from
    /// [`Self::tc_schedule`] for the same step and layout.
    pub fn attention_tc<'a, T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        plan: &AttentionPlan,
        schedule: &TcSchedule,
        l: &AttentionLayout,
        buffer: impl Fn(Source) -> CudaView<'a, T>,
    ) -> Result<CudaSlice<f32>> {
        let t = plan.rows();
        let max_shared = self.info.max_shared_per_block;
        let kernel = kernel_choice(l, max_shared, schedule.wide)
            .filter(|&k| {
                k == schedule.kernel
                    && l.v.len == schedule.value_len
                    && T::SUFFIX == "bf16"
                    && out.rows == t
                    && out.cols == l.heads * l.v.len
            })
            .ok_or_else(|| Error::Op {
                op: "attention_tc",
                message: format!(
                    "{} with {l:?} (shared memory up to {max_shared}) for {t} tokens into [{}, {}]",
                    T::SUFFIX,
                    out.rows,
                    out.cols
                ),
            })?;
        let kv_heads = l.heads / l.group.max(1);
        let check = |what, s: &Segment, rows, heads| {
            check_segment("attention_tc", what, s, buffer(s.source).len(), rows, heads)
        };
        check("q1", &l.q1, t, l.heads)?;
        check("q2", &l.q2, t, l.heads)?;
        check("k1", &l.k1, plan.rows_read(), kv_heads)?;
        check("k2", &l.k2, plan.rows_read(), kv_heads)?;
        check("v", &l.v, plan.rows_read(), kv_heads)?;

        let mut lse = self.tensor::<f32>(1, t * l.heads, None)?;
        if schedule.item_count == 0 {
            return Ok(lse.data);
        }
        let err = |what: &'static str| move |e| Error::Device(format!("attention_tc {what}: {e}"));
        // Partial outputs for the combine, unless every row group has one split: then the
        // kernel writes the output and its LSE itself and no combine runs.
        let mut partials = schedule.partials.as_ref().map(RefCell::borrow_mut);
        let null: u64 = 0;

        let smem = kernel.shared_bytes;
        let f = self.function_with_shared(kernel.module, kernel.function, smem)?;
        let (q1, q2) = (
            buffer(l.q1.source).slice(l.q1.offset..),
            buffer(l.q2.source).slice(l.q2.offset..),
        );
        let (k1, k2, v) = (buffer(l.k1.source), buffer(l.k2.source), buffer(l.v.source));
        let i = |x: usize| x as i32;
        let (q1_stride, q1_head, q2_stride, q2_head) = (
            i(l.q1.width),
            i(l.q1.head_stride),
            i(l.q2.width),
            i(l.q2.head_stride),
        );
        let (s1, s2, sv) = (
            KeySegment::from(&l.k1),
            KeySegment::from(&l.k2),
            KeySegment::from(&l.v),
        );
        let v_in_k = values_in_keys(l) as i32;
        let (block_size, heads, window) = (i(plan.block_size()), i(l.heads), i(l.window));
        let (block_tables, table_start) = plan.tables();
        let mut b = self.stream.launch_builder(&f);
        b.arg(&q1)
            .arg(&q1_stride)
            .arg(&q1_head)
            .arg(&q2)
            .arg(&q2_stride)
            .arg(&q2_head)
            .arg(&k1)
            .arg(&s1)
            .arg(&k2)
            .arg(&s2)
            .arg(&v)
            .arg(&sv)
            .arg(&v_in_k)
            .arg(&schedule.items)
            .arg(block_tables)
            .arg(table_start)
            .arg(&block_size)
            .arg(plan.positions())
            .arg(&heads)
            .arg(&l.scale)
            .arg(&window);
        match &mut partials {
            Some(p) => {
                let p = &mut **p;
                b.arg(&mut p.o).arg(&mut p.lse).arg(&null).arg(&null)
            }
            None => b
                .arg(&null)
                .arg(&null)
                .arg(&mut out.data)
                .arg(&mut lse.data),
        };
        let cfg = LaunchConfig {
            grid_dim: ((schedule.item_count / kernel.runs_per_cta) as u32, 1, 1),
            block_dim: (kernel.threads, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // SAFETY: the arguments match the kernel's (every tensor-core entry point takes
        // attention_tc_bf16's) in order and type and T is bf16; the
        // checks above bound every query, key and value element by its buffer, the plan checked
        // the block tables against the cache, the schedule keeps rows within the step and
        // tokens within each row's context; the schedule's partial buffers hold ROWS rows of
        // v.len values per item (its value_len, checked above), or
        // (direct: null partials) `out` and `lse` hold every (token, head) row of the step.
        unsafe { b.launch(cfg) }.map_err(err("launch"))?;

        let Some(p) = partials else {
            return Ok(lse.data);
        };
        let f = self.function("attention_tc", "attention_tc_combine_bf16")?;
        let dv = i(l.v.len);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&p.o)
            .arg(&p.lse)
            .arg(&schedule.groups)
            .arg(&mut out.data)
            .arg(&mut lse.data)
            .arg(&dv);
        let cfg = LaunchConfig {
            grid_dim: (
                schedule.group_count as u32,
                ROWS as u32,
                l.v.len.div_ceil(COMBINE_COLUMNS) as u32,
            ),
            block_dim: (32 * combine_warps(schedule.max_splits) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match attention_tc_combine_bf16; each group's items and rows
        // come from the same schedule as the partial buffers, and `out`/`lse` hold every
        // (token, head) row of the step.
        unsafe { b.launch(cfg) }.map_err(err("combine"))?;
        Ok(lse.data)
    }
}

const EMPTY_ITEM: TcItem = TcItem {
    seq: 0,
    kv_head: 0,
    kv_begin: 0,
    kv_end: 0,
    rows: [NO_ROW; ROWS],
};
const EMPTY_GROUP: TcGroup = TcGroup {
    item_first: 0,
    items: 0,
    item_stride: 1,
    rows: [NO_ROW; ROWS],
};

#[cfg(test)]
mod tests {
    use super::super::layout::{absorbed_layout, materialised_layout, mha_layout};
    use super::*;
    use crate::backend::{MhaDims, MlaDims};

    const H100_SHARED: usize = 232_448;

    fn deepseek(heads: usize) -> MlaDims {
        MlaDims::deepseek(heads, 0.07)
    }

    fn function(l: &AttentionLayout, max_shared: usize) -> Option<&'static str> {
        kernel_for(l, max_shared, false).map(|k| k.function)
    }

    #[test]
    fn the_decode_shapes_get_the_register_accumulator_kernel() {
        for heads in [1, 16, 63, 64, 128] {
            let absorbed = absorbed_layout(&deepseek(heads));
            let k = kernel_for(&absorbed, H100_SHARED, false).unwrap();
            let hopper = kernel_for(&absorbed, H100_SHARED, true).unwrap();
            if heads < 64 {
                assert_eq!(k.function, "attention_mma_latent576_bf16");
                assert_eq!(hopper, k);
            } else {
                // 64 heads of a token per CTA, one CTA per SM; wgmma on Hopper.
                assert_eq!(k.function, "attention_mma_wide_latent576_bf16");
                assert_eq!(hopper.function, "attention_wgmma_latent576_bf16");
                assert_eq!((k.runs_per_cta, k.ctas_per_sm), (4, 1));
                assert_eq!((hopper.runs_per_cta, hopper.ctas_per_sm), (4, 1));
            }
            // CTAs per SM that fit the shared memory of an SM of sm_80+ (228 KiB, 1 KiB of it
            // reserved per CTA).
            for k in [k, hopper] {
                assert!(
                    k.ctas_per_sm * (k.shared_bytes + 1024) <= 228 * 1024,
                    "{k:?}"
                );
            }
            let materialised = materialised_layout(&deepseek(heads));
            assert_eq!(
                function(&materialised, H100_SHARED),
                Some("attention_mma_head192_bf16")
            );
        }
        let mha = |head_dim, kv_heads| {
            let dims = MhaDims {
                heads: 32,
                kv_heads,
                head_dim,
                softmax_scale: 0.1,
                sliding_window: None,
            };
            let width = 2 * kv_heads * head_dim;
            mha_layout(&dims, 32 * head_dim + width, width)
        };
        assert_eq!(
            function(&mha(128, 8), H100_SHARED),
            Some("attention_mma_head128_bf16")
        );
        // Other widths: the WMMA kernel; too little shared memory: neither for the latent.
        assert_eq!(
            function(&mha(64, 8), H100_SHARED),
            Some("attention_tc_bf16")
        );
        assert_eq!(
            function(&mha(96, 4), H100_SHARED),
            Some("attention_tc_bf16")
        );
        assert_eq!(function(&absorbed_layout(&deepseek(16)), 48 * 1024), None);
    }

    #[test]
    fn the_wide_kernel_only_where_contexts_are_long_and_plenty() {
        let batch = |seqs: usize, context: usize| AttentionBatch {
            block_size: 64,
            seqs: (0..seqs)
                .map(|_| crate::backend::SeqChunk {
                    block_table: (0..context.div_ceil(64) as u32).collect(),
                    context_len: context,
                    query_len: 1,
                })
                .collect(),
        };
        let v3 = absorbed_layout(&deepseek(128));
        use WideAttention::{Mma, Off, Wgmma};
        // (sequences, context, elsewhere, on Hopper)
        for (seqs, context, mma, hopper) in [
            (128, 4096, Mma, Wgmma),
            (32, 16384, Mma, Wgmma),
            (32, 4096, Mma, Wgmma),
            (128, 1024, Off, Wgmma),
            (32, 1024, Off, Wgmma),
            (1, 16384, Off, Wgmma),
            (1, 4096, Off, Wgmma),
            (1, 1024, Off, Off),
            (1, 131_072, Mma, Wgmma),
        ] {
            for (on_hopper, want) in [(false, mma), (true, hopper)] {
                assert_eq!(
                    wide_pays(&batch(seqs, context), &v3, 132, on_hopper),
                    want,
                    "{seqs} × {context}, Hopper: {on_hopper}"
                );
            }
        }
    }
}
