//! The launches of a tensor-core attention kernel (attention_kernels.rs picks it) and its combine
//! over a step's split-KV schedule (attention_schedule.rs), which lives on the device with the
//! buffers of its splits.

use super::attention::{check_segment, AttentionPlan, KeySegment};
use super::launch::param;
use super::layout::{AttentionLayout, Segment, Source};
use super::{CudaDevice, GpuFloat, GpuTensor};
use crate::backend::AttentionBatch;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut, LaunchConfig};
use std::cell::RefCell;

use super::attention_kernels::{kernel_choice, values_in_keys, wide_pays, LAST_CTA_MAX_SPLITS};
use super::attention_kernels::{NarrowAttention, SplitCombine, TcKernel, TcTuning, WideAttention};
use super::attention_schedule::{schedule, TcGroup, TcItem, NO_GROUP, NO_ROW, ROWS};
use super::tensor_map::{box_tokens, cache_rows_map, KvTensorMap};

/// Output columns per block of the combine and most warps in one (`COMBINE_COLUMNS`,
/// `COMBINE_MAX_WARPS` in attention_tc.cu).
const COMBINE_COLUMNS: usize = 128;
const COMBINE_MAX_WARPS: usize = 8;

/// Warps per combine block where a row group has at most `max_splits` splits: one per split
/// up to eight, so a few splits do not leave warps idle and hundreds are read eight at a time.
fn combine_warps(max_splits: usize) -> usize {
    max_splits.clamp(1, COMBINE_MAX_WARPS)
}

/// What a step's tensor-core schedule comes to: its kernel (and the 64-row and 16-row choices
/// it came from), work items, row groups and the most splits of one group.
#[derive(Debug, Clone, Copy)]
pub struct TcShape {
    kernel: TcKernel,
    wide: WideAttention,
    narrow: NarrowAttention,
    item_count: usize,
    group_count: usize,
    max_splits: usize,
    /// How the splits are merged (`Kernel` also where every group has one split and nothing is).
    combine: SplitCombine,
    /// CTAs of the launch: one per unit (runs_per_cta items), or for a persistent kernel at
    /// most the CTAs the GPU holds at once.
    ctas: usize,
}

/// A step's tensor-core schedule on the host: what benchmarks and tests report, without the
/// device work of [`TcSchedule`].
pub struct TcPlan {
    pub shape: TcShape,
    items: Vec<TcItem>,
    groups: Vec<TcGroup>,
}

/// A step's tensor-core schedule on the device.
pub struct TcSchedule {
    shape: TcShape,
    items: CudaSlice<TcItem>,
    groups: CudaSlice<TcGroup>,
    /// Values per query row (the layout's `v.len`) the partial buffers are sized for.
    value_len: usize,
    /// The splits' outputs and LSEs for the combine (None where it does not run), allocated
    /// with the schedule so that every layer of the step reuses them.
    partials: Option<RefCell<Partials>>,
}

/// Each item's ROWS rows of split output (`value_len` f32) and their LSEs (base 2); for the
/// in-kernel combine, a counter of finished splits per row group (zero between launches: the
/// CTA that merges a group resets it).
struct Partials {
    o: CudaSlice<f32>,
    lse: CudaSlice<f32>,
    split_counts: Option<CudaSlice<u32>>,
}

impl TcShape {
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

    /// How the splits are merged where some group has several (see [`SplitCombine`]).
    pub fn combine(&self) -> SplitCombine {
        self.combine
    }

    /// CTAs of the attention kernel's launch.
    pub fn ctas(&self) -> usize {
        self.ctas
    }

    /// The CTAs' units of work (runs_per_cta items each), served one per CTA, or several by
    /// each CTA of a persistent kernel.
    pub fn units(&self) -> usize {
        self.item_count / self.kernel.runs_per_cta
    }
}

impl CudaDevice {
    /// The kernel for layout `l` and the split-KV schedule of `batch` for it, as `tuning` asks,
    /// on the host.
    pub fn tc_plan(
        &self,
        batch: &AttentionBatch,
        l: &AttentionLayout,
        tuning: TcTuning,
    ) -> Result<TcPlan> {
        let wide = match tuning.wide {
            WideAttention::WherePays => {
                wide_pays(batch, l, self.info.multiprocessors, self.info.hopper())
            }
            wide if wide.needs_hopper() && !self.info.hopper() => {
                return Err(Error::Op {
                    op: "attention_tc",
                    message: format!(
                        "the wgmma kernels need a Hopper GPU, not {}",
                        self.info.name
                    ),
                })
            }
            forced => forced,
        };
        let narrow = tuning.narrow;
        let kernel =
            kernel_choice(l, self.info.max_shared_per_block, wide, narrow).ok_or_else(|| {
                Error::Op {
                    op: "attention_tc",
                    message: format!("no tensor-core kernel serves {l:?}"),
                }
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
            kernel.split_tokens(),
        );
        let units = items.len() / kernel.runs_per_cta;
        let max_splits = groups.iter().map(|g| g.items as usize).max().unwrap_or(0);
        let shape = TcShape {
            kernel,
            wide,
            narrow,
            item_count: items.len(),
            group_count: groups.len(),
            max_splits,
            combine: match tuning.combine {
                SplitCombine::LastCta if (2..=LAST_CTA_MAX_SPLITS).contains(&max_splits) => {
                    SplitCombine::LastCta
                }
                _ => SplitCombine::Kernel,
            },
            ctas: match kernel.persistent {
                true => units.min(wave),
                false => units,
            },
        };
        Ok(TcPlan {
            shape,
            items,
            groups,
        })
    }

    /// [`Self::tc_plan`] on the device, with the buffers of its splits.
    pub fn tc_schedule(
        &self,
        batch: &AttentionBatch,
        l: &AttentionLayout,
        tuning: TcTuning,
    ) -> Result<TcSchedule> {
        let TcPlan {
            shape,
            items,
            groups,
        } = self.tc_plan(batch, l, tuning)?;
        let err = |e| Error::Device(format!("attention_tc schedule: {e}"));
        let partials = match shape.direct() {
            false => Some(RefCell::new(Partials {
                o: self
                    .tensor::<f32>(shape.item_count * ROWS, l.v.len, None)?
                    .data,
                lse: self.tensor::<f32>(shape.item_count, ROWS, None)?.data,
                split_counts: match shape.combine {
                    SplitCombine::LastCta => Some(
                        self.stream
                            .clone_htod(&vec![0u32; groups.len()])
                            .map_err(err)?,
                    ),
                    SplitCombine::Kernel => None,
                },
            })),
            true => None,
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
            shape,
            items: self.stream.clone_htod(&items).map_err(err)?,
            groups: self.stream.clone_htod(&groups).map_err(err)?,
            value_len: l.v.len,
            partials,
        })
    }

    /// Attention for the step of `plan` with layout `l` on tensor cores: the output
    /// `[T, heads·v.len]` and, if `want_lse`, each (token, head) row's log-sum-exp of its scaled
    /// scores (natural log). `T` must be bf16 and `l` one that
    /// [`super::attention_kernels::supports`] accepts; `schedule` comes from
    /// [`Self::tc_schedule`] for the same step and layout.
    pub fn attention_tc<'a, T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        plan: &AttentionPlan,
        schedule: &TcSchedule,
        l: &AttentionLayout,
        want_lse: bool,
        buffer: impl Fn(Source) -> CudaView<'a, T>,
    ) -> Result<Option<CudaSlice<f32>>> {
        let t = plan.rows();
        let max_shared = self.info.max_shared_per_block;
        let kernel = kernel_choice(l, max_shared, schedule.shape.wide, schedule.shape.narrow)
            .filter(|&k| {
                k == schedule.shape.kernel
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

        let mut lse = match want_lse {
            true => Some(self.tensor::<f32>(1, t * l.heads, None)?.data),
            false => None,
        };
        if schedule.shape.item_count == 0 {
            return Ok(lse);
        }
        let smem = kernel.shared_bytes;
        let f = self.function_with_shared(kernel.module, kernel.function, smem)?;
        // Device addresses as the kernel takes them (see `param`): a segment's buffer, or its
        // first value.
        let st = &self.stream;
        let address = |s: &Segment| buffer(s.source).device_ptr(st).0;
        let start = |s: &Segment| address(s) + (s.offset * size_of::<T>()) as u64;
        let (q1, q2) = (start(&l.q1), start(&l.q2));
        let (k1, k2, v) = (address(&l.k1), address(&l.k2), address(&l.v));
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
        let items = schedule.items.device_ptr(st).0;
        let tables = block_tables.device_ptr(st).0;
        let starts = table_start.device_ptr(st).0;
        let positions = plan.positions().device_ptr(st).0;
        // Partial outputs for the combine, unless every row group has one split: then the
        // kernel writes the output (and the LSE, where wanted) itself and no combine runs.
        let mut partials = schedule.partials.as_ref().map(RefCell::borrow_mut);
        let null: u64 = 0;
        let out_ptr = out.data.device_ptr_mut(st).0;
        let lse_ptr = lse.as_mut().map_or(null, |l| l.device_ptr_mut(st).0);
        let groups = schedule.groups.device_ptr(st).0;
        // The kernel writes the output itself where there are no partials (one split per
        // group), or merges the splits itself where there are counters (the in-kernel combine).
        let (partial_o, partial_lse, split_counts) = match &mut partials {
            Some(p) => {
                let p = &mut **p;
                (
                    p.o.device_ptr_mut(st).0,
                    p.lse.device_ptr_mut(st).0,
                    p.split_counts
                        .as_mut()
                        .map_or(null, |c| c.device_ptr_mut(st).0),
                )
            }
            None => (null, null, null),
        };
        let units = i(schedule.shape.units());
        let map = match kernel.tensor_map {
            true => Some(self.cache_rows_map(
                l,
                plan,
                start(&l.k1),
                buffer(l.k1.source).len() / l.k1.width,
            )?),
            false => None,
        };
        let mut params = vec![
            param(&q1),
            param(&q1_stride),
            param(&q1_head),
            param(&q2),
            param(&q2_stride),
            param(&q2_head),
            param(&k1),
            param(&s1),
            param(&k2),
            param(&s2),
            param(&v),
            param(&sv),
            param(&v_in_k),
            param(&items),
            param(&tables),
            param(&starts),
            param(&block_size),
            param(&positions),
            param(&heads),
            param(&l.scale),
            param(&window),
            param(&partial_o),
            param(&partial_lse),
            param(&out_ptr),
            param(&lse_ptr),
            param(&groups),
            param(&split_counts),
            param(&units),
        ];
        if let Some(map) = &map {
            params.push(param(map));
        }
        let cfg = LaunchConfig {
            grid_dim: (schedule.shape.ctas() as u32, 1, 1),
            block_dim: (kernel.threads, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // SAFETY: the parameters point to values of the kernel's arguments in order and type
        // (every tensor-core entry point takes TC_ATTENTION_ARGS, kernels/attention_items.cuh,
        // device pointers as u64, then a tensor-map kernel its map) and T is bf16; the checks
        // above bound every query, key and value element by its buffer, the plan checked the
        // block tables against the cache, the schedule keeps rows within the step and tokens
        // within each row's context; the schedule's partial buffers (or null ones) hold ROWS
        // rows of v.len values per item (its value_len, checked above), and `out` and `lse` every
        // (token, head) row of the step (a null `lse`, where none is wanted, is never written);
        // the counters (or a null pointer) are one u32 per group of the same schedule, zero
        // before the launch, each item's group one of them; `units` is the number of units the
        // items hold, which a persistent kernel's CTAs share; a tensor map covers the key
        // buffer's whole rows (its boxes read pages of the block tables only). Every kernel
        // waits for the previous one (attention_prologue) before it reads or writes device
        // memory.
        unsafe { self.launch_dependent("attention_tc launch", &f, cfg, &mut params) }?;

        if let Some(p) = partials.filter(|p| p.split_counts.is_none()) {
            self.combine(&p, schedule, l.v.len, &mut out.data, lse.as_mut())?;
        }
        Ok(lse)
    }

    /// The tensor map of the `rows` key rows of `l` (k1 then k2: the latent cache) whose first
    /// row's keys start at `address`, in boxes for the plan's block size.
    fn cache_rows_map(
        &self,
        l: &AttentionLayout,
        plan: &AttentionPlan,
        address: u64,
        rows: usize,
    ) -> Result<KvTensorMap> {
        let block_size = plan.block_size();
        let box_rows = box_tokens(block_size)
            .filter(|_| l.window == 0)
            .ok_or_else(|| Error::Op {
                op: "attention_tc",
                message: format!(
                "the tensor-map kernel reads pages of 16, 32 or a multiple of 64 tokens without \
                 a window, not {block_size} (window {})",
                l.window
            ),
            })?;
        cache_rows_map(address, rows, l.k1.width, l.k1.len + l.k2.len, box_rows)
    }

    /// Launches attention_tc_combine_bf16 over the splits in `p` into `out` and `lse` (if any),
    /// as a dependent of the attention kernel just launched (see [`Self::launch_dependent`]).
    fn combine<T>(
        &self,
        p: &Partials,
        schedule: &TcSchedule,
        value_len: usize,
        out: &mut CudaSlice<T>,
        lse: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        let f = self.function("attention_tc", "attention_tc_combine_bf16")?;
        let cfg = LaunchConfig {
            grid_dim: (
                schedule.shape.group_count as u32,
                ROWS as u32,
                value_len.div_ceil(COMBINE_COLUMNS) as u32,
            ),
            block_dim: (32 * combine_warps(schedule.shape.max_splits) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let s = &self.stream;
        // Device addresses as the kernel takes them (see `param`).
        let o = p.o.device_ptr(s).0;
        let split_lse = p.lse.device_ptr(s).0;
        let groups = schedule.groups.device_ptr(s).0;
        let out_ptr = out.device_ptr_mut(s).0;
        let lse_ptr = lse.map_or(0, |lse| lse.device_ptr_mut(s).0);
        let dv = value_len as i32;
        let mut params = [
            param(&o),
            param(&split_lse),
            param(&groups),
            param(&out_ptr),
            param(&lse_ptr),
            param(&dv),
        ];
        // SAFETY: the parameters point to values of attention_tc_combine_bf16's arguments in
        // order and type (device pointers, then an int); each group's items and rows come from
        // the same schedule as the partial buffers, and `out`/`lse` hold every (token, head) row
        // of the step (a null `lse` is never written); the combine waits for the attention kernel
        // before it reads the splits.
        unsafe { self.launch_dependent("attention_tc combine", &f, cfg, &mut params) }
    }
}

const EMPTY_ITEM: TcItem = TcItem {
    seq: 0,
    kv_head: 0,
    kv_begin: 0,
    kv_end: 0,
    rows: [NO_ROW; ROWS],
    group: NO_GROUP,
};
const EMPTY_GROUP: TcGroup = TcGroup {
    item_first: 0,
    items: 0,
    item_stride: 1,
    rows: [NO_ROW; ROWS],
};
