//! Rust side of `kernels/attention/exact.cu`: a step plan on the device and the checked launch of the
//! paged attention kernel for any [`AttentionLayout`].

use super::layout::{exact_splits, AttentionLayout, HostPlan, Segment, Source};
use super::params::{ExactCombineParams, ExactFp8Params, ExactParams, Fp8RowFormat, KeySegment};
use crate::backend::cuda::launch::Order;
use crate::backend::cuda::StepValues;
use crate::backend::cuda::{kernels, tuning};
use crate::backend::cuda::{CudaDevice, GpuFloat, GpuTensor};
use crate::error::{Error, Result};
use cudarc::driver::{CudaView, LaunchConfig};

/// Query heads one block serves (one warp each); matches `WARPS_PER_BLOCK` in exact.cu.
const WARPS_PER_BLOCK: usize = 4;
/// Limits of the kernel's per-warp buffers (`MAX_VALUE_PER_LANE · 32`, `MAX_QUERY`).
const MAX_VALUE: usize = 16 * 32;
const MAX_QUERY: usize = 1024;

/// A [`HostPlan`] in device memory.
pub struct AttentionPlan {
    /// Tokens per KV split (one value, read by the kernel).
    split_len: StepValues<u32>,
    /// Splits of the exact kernel's grid (the longest row's, or more).
    splits: usize,
    block_tables: StepValues<u32>,
    table_start: StepValues<u32>,
    row_seq: StepValues<u32>,
    row_pos: StepValues<u32>,
    rows: usize,
    block_size: usize,
    rows_read: usize,
}

impl AttentionPlan {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The flattened block tables and where each sequence's table starts.
    pub fn tables(&self) -> (StepValues<u32>, StepValues<u32>) {
        (self.block_tables, self.table_start)
    }

    /// Each query row's (token's) position.
    pub fn positions(&self) -> StepValues<u32> {
        self.row_pos
    }

    /// Splits of the exact kernel's grid.
    pub fn exact_splits(&self) -> usize {
        self.splits
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// One past the highest buffer row any query row reads.
    pub fn rows_read(&self) -> usize {
        self.rows_read
    }
}

/// Checks, for kernel `op`, that `heads` head parts of `rows` rows of `s` lie inside a buffer
/// of `len` values.
pub(super) fn check_segment(
    op: &'static str,
    what: &str,
    s: &Segment,
    len: usize,
    rows: usize,
    heads: usize,
) -> Result<()> {
    let last = s.offset + heads.saturating_sub(1) * s.head_stride + s.len;
    if (s.len > 0 && last > s.width) || rows * s.width > len {
        return Err(Error::Op {
            op,
            message: format!(
                "{what}: {heads} heads of {} from column {} (stride {}) in rows of {} × {rows} rows, buffer of {len}",
                s.len, s.offset, s.head_stride, s.width
            ),
        });
    }
    Ok(())
}

/// Checks, for kernel `op`, the key and value segments of `l` over `rows` buffer rows of
/// `kv_heads` heads, in buffers of `len(source)` values of `T`; segments of an FP8 cache are
/// counted in its rows' values, and its rows in bytes.
pub(super) fn check_keys<T>(
    op: &'static str,
    l: &AttentionLayout,
    rows: usize,
    kv_heads: usize,
    len: impl Fn(Source) -> usize,
) -> Result<()> {
    for (what, s) in [("k1", &l.k1), ("k2", &l.k2), ("v", &l.v)] {
        let Some(p) = l.cache_fp8.filter(|_| s.source == Source::Cache) else {
            check_segment(op, what, s, len(s.source), rows, kv_heads)?;
            continue;
        };
        let values = p.codes + (p.row_bytes - p.tail_at) / 2;
        let last = s.offset + kv_heads.saturating_sub(1) * s.head_stride + s.len;
        let bytes = len(s.source) * size_of::<T>();
        if (s.len > 0 && last > values) || rows * p.row_bytes > bytes {
            return Err(Error::Op {
                op,
                message: format!(
                    "{what}: {kv_heads} heads of {} from value {} (stride {}) in FP8 rows of {values} values × {rows} rows of {} bytes, buffer of {bytes} bytes",
                    s.len, s.offset, s.head_stride, p.row_bytes
                ),
            });
        }
    }
    Ok(())
}

impl CudaDevice {
    /// The plan on the device (in the step buffers of entry `entry`), with KV splits for `heads`
    /// query heads sized to fill this GPU over contexts of up to `capacity` tokens.
    pub fn upload_plan(
        &self,
        plan: &HostPlan,
        heads: usize,
        capacity: usize,
        entry: usize,
    ) -> Result<AttentionPlan> {
        let (split_len, splits) = exact_splits(
            plan,
            heads,
            tuning::EXACT_WARPS_PER_SM * self.info.multiprocessors,
            capacity,
        );
        Ok(AttentionPlan {
            split_len: self.step_values(("exact split length", entry), &[split_len as u32])?,
            splits,
            block_tables: self.step_values(("block tables", entry), &plan.block_tables)?,
            table_start: self.step_values(("table starts", entry), &plan.table_start)?,
            row_seq: self.step_values(("row sequences", entry), &plan.row_seq)?,
            row_pos: self.step_values(("row positions", entry), &plan.row_pos)?,
            rows: plan.rows(),
            block_size: plan.block_size,
            rows_read: plan.rows_read,
        })
    }

    /// `out[row, h·dv..] = softmax(scale · (q1·k1 + q2·k2)) · v` over each row's causal
    /// (windowed) context, with every segment read from the buffer `buffer` names for it.
    pub fn paged_attention<'a, T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        plan: &AttentionPlan,
        l: &AttentionLayout,
        buffer: impl Fn(Source) -> CudaView<'a, T>,
    ) -> Result<()> {
        let kv_heads = l.heads / l.group.max(1);
        let (q1, q2, k1, k2, v) = (
            buffer(l.q1.source),
            buffer(l.q2.source),
            buffer(l.k1.source),
            buffer(l.k2.source),
            buffer(l.v.source),
        );
        check_segment("paged_attention", "q1", &l.q1, q1.len(), plan.rows, l.heads)?;
        check_segment("paged_attention", "q2", &l.q2, q2.len(), plan.rows, l.heads)?;
        check_keys::<T>("paged_attention", l, plan.rows_read, kv_heads, |source| {
            buffer(source).len()
        })?;
        let ok = l.group > 0
            && l.heads % l.group == 0
            && l.q1.len == l.k1.len
            && l.q2.len == l.k2.len
            && l.q1.len + l.q2.len <= MAX_QUERY
            && l.v.len <= MAX_VALUE
            && out.rows == plan.rows
            && out.cols == l.heads * l.v.len;
        if !ok {
            return Err(Error::Op {
                op: "paged_attention",
                message: format!(
                    "{} heads in groups of {}, query {}+{} (keys {}+{}, at most {MAX_QUERY}), value {} (at most {MAX_VALUE}), out [{}, {}] for {} rows",
                    l.heads, l.group, l.q1.len, l.q2.len, l.k1.len, l.k2.len, l.v.len,
                    out.rows, out.cols, plan.rows
                ),
            });
        }
        if plan.rows == 0 {
            return Ok(());
        }
        let i = |v: usize| v as i32;
        let jobs = plan.rows * l.heads;
        let partial_o = self.tensor::<f32>(plan.splits * jobs, l.v.len, None)?.data;
        let partial_lse = self.tensor::<f32>(plan.splits, jobs, None)?.data;
        // The kernel adds the query offsets itself through the pointer; keys add theirs.
        let (q1, q2) = (q1.slice(l.q1.offset..), q2.slice(l.q2.offset..));
        let params = ExactParams {
            partial_o: self.address(&partial_o),
            partial_lse: self.address(&partial_lse),
            q1: self.address(&q1),
            q2: self.address(&q2),
            k1: self.address(&k1),
            k2: self.address(&k2),
            v: self.address(&v),
            block_tables: plan.block_tables.address,
            table_start: plan.table_start.address,
            row_seq: plan.row_seq.address,
            row_pos: plan.row_pos.address,
            split_len: plan.split_len.address,
            s1: KeySegment::from(&l.k1),
            s2: KeySegment::from(&l.k2),
            sv: KeySegment::from(&l.v),
            q1_stride: i(l.q1.width),
            q1_head_stride: i(l.q1.head_stride),
            q2_stride: i(l.q2.width),
            q2_head_stride: i(l.q2.head_stride),
            heads: i(l.heads),
            group: i(l.group),
            block_size: i(plan.block_size),
            window: i(l.window),
            scale: l.scale,
        };
        let cfg = LaunchConfig {
            grid_dim: (
                plan.rows as u32,
                l.heads.div_ceil(WARPS_PER_BLOCK) as u32,
                plan.splits as u32,
            ),
            block_dim: (32 * WARPS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: launch's contract. The checks above bound every query, key and value element
        // the kernel reads by its buffer (FP8 rows too), the plan's tables only name rows below
        // `rows_read`, and the partial buffers hold one entry per (split, row, head).
        match l.cache_fp8 {
            None => {
                let kernel = kernels::PAGED_ATTENTION.of::<T>();
                unsafe { self.launch_params(kernel, cfg, Order::Serial, &params) }
            }
            Some(parts) => {
                let params = ExactFp8Params {
                    exact: params,
                    rows: self.address(&buffer(Source::Cache)),
                    format: Fp8RowFormat::from(parts),
                };
                let kernel = kernels::PAGED_ATTENTION_FP8.of::<T>();
                // SAFETY: as above; `rows` is the cache buffer the checks measured in bytes.
                unsafe { self.launch_params(kernel, cfg, Order::Serial, &params) }
            }
        }?;

        let params = ExactCombineParams {
            out: self.address(&out.data),
            partial_o: params.partial_o,
            partial_lse: params.partial_lse,
            jobs: i(jobs),
            splits: i(plan.splits),
            dv: i(l.v.len),
        };
        let cfg = LaunchConfig {
            grid_dim: (jobs.div_ceil(WARPS_PER_BLOCK) as u32, 1, 1),
            block_dim: (32 * WARPS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: launch's contract. Warp `j` reads entry `j` of every split and writes row `j`
        // (of `dv` values) of `out`, which holds rows·heads of them (checked above); the partial
        // buffers live until the stream has run the kernel (freed in stream order).
        let kernel = kernels::COMBINE_SPLITS.of::<T>();
        unsafe { self.launch_params(kernel, cfg, Order::Serial, &params) }?;
        Ok(())
    }
}
