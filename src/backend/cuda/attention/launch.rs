//! The launches of a tensor-core attention kernel (kernel_choice.rs picks it) and its combine
//! over a step's split-KV schedule (schedule.rs), which lives on the device with the buffers of
//! its splits.

use super::exact::{check_keys, check_segment, AttentionPlan};
use super::kernel_choice::WideAttention;
#[cfg(feature = "experimental-kernels")]
use super::kernel_choice::LAST_CTA_MAX_SPLITS;
use super::kernel_choice::{kernel_choice, values_in_keys, wide_pays, ParamsKind};
use super::kernel_choice::{AttentionKernel, AttentionTuning, NarrowAttention, SplitCombine};
use super::layout::{AttentionLayout, Segment, Source};
use super::params::{AttentionParams, CombineParams, KeySegment, WmmaParams};
use super::params::{Fp8AttentionParams, Fp8RowFormat};
use super::schedule::{decode_split_bound, is_decode, schedule, RowGroup, WorkItem, ROWS};
use crate::backend::cuda::kernels;
use crate::backend::cuda::launch::Order;
use crate::backend::cuda::StepValues;
use crate::backend::cuda::{CudaDevice, GpuFloat, GpuTensor};
use crate::backend::AttentionBatch;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig};

/// Output columns per block of the combine and most warps in one (`COMBINE_COLUMNS`,
/// `COMBINE_MAX_WARPS` in combine.cu).
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
pub struct ScheduleShape {
    kernel: AttentionKernel,
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
/// device work of [`SplitSchedule`].
pub struct SplitPlan {
    pub shape: ScheduleShape,
    items: Vec<WorkItem>,
    groups: Vec<RowGroup>,
}

/// A step's tensor-core schedule on the device (in step buffers).
pub struct SplitSchedule {
    pub shape: ScheduleShape,
    items: StepValues<WorkItem>,
    groups: StepValues<RowGroup>,
    /// Values per query row (the layout's `v.len`) the partial buffers are sized for.
    value_len: usize,
}

/// Each item's ROWS rows of split output (`value_len` f32) and their LSEs (base 2); for the
/// in-kernel combine, a counter of finished splits per row group (zero between launches: the
/// CTA that merges a group resets it).
struct Partials {
    o: CudaSlice<f32>,
    lse: CudaSlice<f32>,
    split_counts: Option<CudaSlice<u32>>,
}

impl ScheduleShape {
    /// The kernel the schedule is for.
    pub fn kernel(&self) -> AttentionKernel {
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
    pub fn split_plan(
        &self,
        batch: &AttentionBatch,
        l: &AttentionLayout,
        tuning: AttentionTuning,
    ) -> Result<SplitPlan> {
        let wide = match tuning.wide {
            WideAttention::WherePays => {
                wide_pays(batch, l, self.info.multiprocessors, self.info.hopper())
            }
            wide if wide.needs_hopper() && !self.info.hopper() => {
                return Err(Error::Op {
                    op: "tensor_core_attention",
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
                    op: "tensor_core_attention",
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
        // A decode step's shape should not depend on its contexts (schedule's doc): where some
        // group has several splits, its combine is sized for the most a group can have, so the
        // step has one of two shapes (one split everywhere, written by the kernel, or not).
        let max_splits = match groups.iter().map(|g| g.items as usize).max().unwrap_or(0) {
            n if n > 1 && is_decode(batch) => decode_split_bound(target_ctas).max(n),
            n => n,
        };
        let shape = ScheduleShape {
            kernel,
            wide,
            narrow,
            item_count: items.len(),
            group_count: groups.len(),
            max_splits,
            combine: match tuning.combine {
                #[cfg(feature = "experimental-kernels")]
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
        Ok(SplitPlan {
            shape,
            items,
            groups,
        })
    }

    /// [`Self::split_plan`] on the device, in the step buffers of entry `entry`.
    pub fn split_schedule(
        &self,
        batch: &AttentionBatch,
        l: &AttentionLayout,
        tuning: AttentionTuning,
        entry: usize,
    ) -> Result<SplitSchedule> {
        let SplitPlan {
            shape,
            items,
            groups,
        } = self.split_plan(batch, l, tuning)?;
        Ok(SplitSchedule {
            shape,
            items: self.step_values(("work items", entry), &items)?,
            groups: self.step_values(("row groups", entry), &groups)?,
            value_len: l.v.len,
        })
    }

    /// Each item's split outputs for the combine (None where every group has one split), made
    /// per launch: memory a captured launch allocates belongs to its graph.
    fn partials(&self, schedule: &SplitSchedule) -> Result<Option<Partials>> {
        let shape = &schedule.shape;
        if shape.direct() {
            return Ok(None);
        }
        Ok(Some(Partials {
            o: self
                .tensor::<f32>(shape.item_count * ROWS, schedule.value_len, None)?
                .data,
            lse: self.tensor::<f32>(shape.item_count, ROWS, None)?.data,
            split_counts: match shape.combine {
                #[cfg(feature = "experimental-kernels")]
                SplitCombine::LastCta => Some(
                    self.stream
                        .alloc_zeros::<u32>(shape.group_count.max(1))
                        .map_err(crate::backend::cuda::driver_err("zeroing split counters"))?,
                ),
                SplitCombine::Kernel => None,
            },
        }))
    }

    /// Attention for the step of `plan` with layout `l` on tensor cores: the output
    /// `[T, heads·v.len]` and, if `want_lse`, each (token, head) row's log-sum-exp of its scaled
    /// scores (natural log). `T` must be bf16 and `l` one that
    /// [`super::kernel_choice::supports`] accepts; `schedule` comes from
    /// [`Self::split_schedule`] for the same step and layout.
    pub fn tensor_core_attention<'a, T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        plan: &AttentionPlan,
        schedule: &SplitSchedule,
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
                    && T::BF16
                    && out.rows == t
                    && out.cols == l.heads * l.v.len
            })
            .ok_or_else(|| Error::Op {
                op: "tensor_core_attention",
                message: format!(
                    "{} with {l:?} (shared memory up to {max_shared}) for {t} tokens into [{}, {}]",
                    T::SUFFIX,
                    out.rows,
                    out.cols
                ),
            })?;
        let kv_heads = l.heads / l.group.max(1);
        let check = |what, s: &Segment, rows, heads| {
            check_segment(
                "tensor_core_attention",
                what,
                s,
                buffer(s.source).len(),
                rows,
                heads,
            )
        };
        check("q1", &l.q1, t, l.heads)?;
        check("q2", &l.q2, t, l.heads)?;
        check_keys::<T>(
            "tensor_core_attention",
            l,
            plan.rows_read(),
            kv_heads,
            |source| buffer(source).len(),
        )?;

        let lse = match want_lse {
            true => Some(self.tensor::<f32>(1, t * l.heads, None)?.data),
            false => None,
        };
        if schedule.shape.item_count == 0 {
            return Ok(lse);
        }
        // A segment's buffer, or its first value (the queries).
        let address = |s: &Segment| self.address(&buffer(s.source));
        let start = |s: &Segment| address(s) + (s.offset * size_of::<T>()) as u64;
        let i = |x: usize| x as i32;
        let (block_tables, table_start) = plan.tables();
        // Partial outputs for the combine, unless every row group has one split: then the
        // kernel writes the output (and the LSE, where wanted) itself and no combine runs.
        let partials = self.partials(schedule)?;
        let partials = partials.as_ref();
        let params = AttentionParams {
            q1: start(&l.q1),
            q2: start(&l.q2),
            k1: address(&l.k1),
            k2: address(&l.k2),
            v: address(&l.v),
            items: schedule.items.address,
            block_tables: block_tables.address,
            table_start: table_start.address,
            token_pos: plan.positions().address,
            partial_o: partials.map_or(0, |p| self.address(&p.o)),
            partial_lse: partials.map_or(0, |p| self.address(&p.lse)),
            out: self.address(&out.data),
            lse_out: lse.as_ref().map_or(0, |l| self.address(l)),
            groups: schedule.groups.address,
            split_counts: partials
                .and_then(|p| p.split_counts.as_ref())
                .map_or(0, |c| self.address(c)),
            s1: KeySegment::from(&l.k1),
            s2: KeySegment::from(&l.k2),
            sv: KeySegment::from(&l.v),
            q1_stride: i(l.q1.width),
            q1_head_stride: i(l.q1.head_stride),
            q2_stride: i(l.q2.width),
            q2_head_stride: i(l.q2.head_stride),
            v_in_k: values_in_keys(l) as i32,
            block_size: i(plan.block_size()),
            heads: i(l.heads),
            scale: l.scale,
            window: i(l.window),
            units: i(schedule.shape.units()),
        };
        let cfg = LaunchConfig {
            grid_dim: (schedule.shape.ctas() as u32, 1, 1),
            block_dim: (kernel.threads, 1, 1),
            shared_mem_bytes: kernel.shared_bytes as u32,
        };
        let (handle, dependent) = (kernel.handle, Order::Dependent);
        // SAFETY: launch's contract. The checks above bound every query, key and value element
        // by its buffer, the plan checked the block tables against the cache, the schedule keeps
        // rows within the step and tokens within each row's context; the partial buffers (or
        // none) hold ROWS rows of v.len values per item, `out` and `lse` every (token, head) row
        // of the step; the counters (or none) one u32 per group, zero before the launch; a tensor
        // map covers the key buffer's whole rows. Every kernel waits for the previous one
        // (attention_prologue) before it touches memory.
        match kernel.params {
            ParamsKind::Attention => unsafe { self.launch_params(handle, cfg, dependent, &params) },
            ParamsKind::Wmma(shared) => {
                let params = WmmaParams {
                    attention: params,
                    shared,
                };
                // SAFETY: as above; `shared` is the layout's plan, within `shared_bytes`.
                unsafe { self.launch_params(handle, cfg, dependent, &params) }
            }
            ParamsKind::Fp8 => {
                let parts = l.cache_fp8.ok_or_else(|| Error::Op {
                    op: "tensor_core_attention",
                    message: format!("{} reads FP8 rows, but {l:?} has none", kernel.handle.name),
                })?;
                let params = Fp8AttentionParams {
                    attention: params,
                    rows: address(&l.k1),
                    format: Fp8RowFormat::from(parts),
                };
                // SAFETY: as above; the checks bound every FP8 row it reads by the cache buffer.
                unsafe { self.launch_params(handle, cfg, dependent, &params) }
            }
            #[cfg(feature = "experimental-kernels")]
            ParamsKind::Tma => {
                let rows = buffer(l.k1.source).len() / l.k1.width;
                let params = super::params::TmaAttentionParams {
                    attention: params,
                    kv_map: self.cache_rows_map(l, plan, start(&l.k1), rows)?,
                };
                // SAFETY: as above.
                unsafe { self.launch_params(handle, cfg, dependent, &params) }
            }
        }?;
        if let Some(p) = partials.filter(|p| p.split_counts.is_none()) {
            let params = CombineParams {
                partial_o: self.address(&p.o),
                partial_lse: self.address(&p.lse),
                groups: params.groups,
                out: params.out,
                lse_out: params.lse_out,
                dv: i(l.v.len),
            };
            self.combine(&params, &schedule.shape)?;
        }
        Ok(lse)
    }

    /// The tensor map of the `rows` key rows of `l` (k1 then k2: the latent cache) whose first
    /// row's keys start at `address`, in boxes for the plan's block size.
    #[cfg(feature = "experimental-kernels")]
    fn cache_rows_map(
        &self,
        l: &AttentionLayout,
        plan: &AttentionPlan,
        address: u64,
        rows: usize,
    ) -> Result<super::tensor_map::KvTensorMap> {
        use super::tensor_map::{box_tokens, cache_rows_map};
        let block_size = plan.block_size();
        let box_rows = box_tokens(block_size)
            .filter(|_| l.window == 0)
            .ok_or_else(|| Error::Op {
                op: "tensor_core_attention",
                message: format!(
                    "the tensor-map kernel reads pages of 16, 32 or a multiple of 64 tokens \
                     without a window, not {block_size} (window {})",
                    l.window
                ),
            })?;
        cache_rows_map(address, rows, l.k1.width, l.k1.len + l.k2.len, box_rows)
    }

    /// Launches attention_combine_bf16 with `params` over the splits of a schedule of `shape`,
    /// as a dependent of the attention kernel just launched.
    fn combine(&self, params: &CombineParams, shape: &ScheduleShape) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (
                shape.group_count as u32,
                ROWS as u32,
                (params.dv as usize).div_ceil(COMBINE_COLUMNS) as u32,
            ),
            block_dim: (32 * combine_warps(shape.max_splits) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let kernel = kernels::ATTENTION_COMBINE_BF16;
        // SAFETY: launch's contract. Each group's items and rows come from the same schedule as
        // the partial buffers, and `out`/`lse_out` hold every (token, head) row of the step (a
        // null `lse_out` is never written); the combine waits for the attention kernel before it
        // reads the splits.
        unsafe { self.launch_params(kernel, cfg, Order::Dependent, params) }
    }
}
