//! Rust side of `kernels/attention.cu`: the per-step plan (block tables, each query row's
//! sequence and position) and the checked launch of the paged attention kernel.

use super::{CudaDevice, GpuFloat, GpuTensor};
use crate::backend::AttentionBatch;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};

/// Query heads one block serves (one warp each); matches `WARPS_PER_BLOCK` in attention.cu.
const WARPS_PER_BLOCK: usize = 4;
/// Limits of the kernel's per-warp buffers (`MAX_VALUE_PER_LANE · 32`, `MAX_QUERY`).
const MAX_VALUE: usize = 16 * 32;
const MAX_QUERY: usize = 1024;

/// Where a key segment lives in its buffer; mirrors `struct KeySegment` in attention.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct KeySegment {
    /// Values per row of the buffer.
    pub width: i32,
    /// Column of KV head 0's segment.
    pub offset: i32,
    /// Columns between consecutive KV heads' segments.
    pub head_stride: i32,
    /// Values in the segment.
    pub len: i32,
}

// SAFETY: a #[repr(C)] struct of four i32, laid out exactly as the kernel's `KeySegment`.
unsafe impl DeviceRepr for KeySegment {}

/// A step's sequences as the kernel reads them: flattened block tables and one
/// `(sequence, position)` per query row.
pub struct AttentionPlan {
    block_tables: CudaSlice<u32>,
    table_start: CudaSlice<u32>,
    row_seq: CudaSlice<u32>,
    row_pos: CudaSlice<u32>,
    rows: usize,
    block_size: usize,
    /// Highest buffer row any query row reads (+1), for the bounds checks.
    rows_read: usize,
}

impl AttentionPlan {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The flattened block tables and where each sequence's table starts.
    pub fn tables(&self) -> (&CudaSlice<u32>, &CudaSlice<u32>) {
        (&self.block_tables, &self.table_start)
    }
}

/// One operand of the kernel: a buffer, its row width and where the current head's part starts.
pub struct Operand<'a, T> {
    pub data: CudaView<'a, T>,
    pub width: usize,
    pub offset: usize,
    pub head_stride: usize,
    pub len: usize,
}

impl<'a, T> Operand<'a, T> {
    pub fn new(
        data: CudaView<'a, T>,
        width: usize,
        offset: usize,
        head_stride: usize,
        len: usize,
    ) -> Self {
        Operand {
            data,
            width,
            offset,
            head_stride,
            len,
        }
    }

    /// Rows of `data` and whether `heads` head parts fit in a row.
    fn check(&self, what: &str, rows: usize, heads: usize) -> Result<()> {
        let last = self.offset + heads.saturating_sub(1) * self.head_stride + self.len;
        if (self.len > 0 && last > self.width) || rows * self.width > self.data.len() {
            return Err(Error::Op {
                op: "paged_attention",
                message: format!(
                    "{what}: {heads} heads of {} from column {} (stride {}) in rows of {} × {rows} rows, buffer of {}",
                    self.len, self.offset, self.head_stride, self.width, self.data.len()
                ),
            });
        }
        Ok(())
    }

    fn segment(&self) -> KeySegment {
        KeySegment {
            width: self.width as i32,
            offset: self.offset as i32,
            head_stride: self.head_stride as i32,
            len: self.len as i32,
        }
    }
}

/// Everything but the plan: two query segments scored against two key segments, the value, and
/// the head grouping (`group` query heads share KV head `h / group`).
pub struct AttentionOperands<'a, T> {
    pub q1: Operand<'a, T>,
    pub q2: Operand<'a, T>,
    pub k1: Operand<'a, T>,
    pub k2: Operand<'a, T>,
    pub v: Operand<'a, T>,
    pub heads: usize,
    pub group: usize,
    /// Attend to at most this many of the most recent tokens (0: all).
    pub window: usize,
    pub scale: f32,
}

impl CudaDevice {
    /// The plan for a batch whose keys sit in the paged cache.
    pub fn paged_plan(
        &self,
        batch: &AttentionBatch,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<AttentionPlan> {
        batch.check_blocks(num_blocks, block_size)?;
        let tables: Vec<Vec<u32>> = batch
            .seqs
            .iter()
            .map(|s| s.block_table[..s.context_len.div_ceil(batch.block_size)].to_vec())
            .collect();
        let rows_read =
            tables.iter().flatten().max().map_or(0, |&b| b as usize + 1) * batch.block_size;
        self.plan(batch, &tables, batch.block_size, rows_read)
    }

    /// The plan for keys gathered sequence after sequence into one contiguous buffer (row `p`
    /// of sequence `s` at `start_s + p`), with the cache slot of each gathered row.
    pub fn contiguous_plan(
        &self,
        batch: &AttentionBatch,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<(AttentionPlan, Vec<u32>)> {
        batch.check_blocks(num_blocks, block_size)?;
        let mut tables = Vec::with_capacity(batch.seqs.len());
        let mut slots = Vec::new();
        for seq in &batch.seqs {
            let start = slots.len() as u32;
            tables.push((start..start + seq.context_len as u32).collect());
            slots.extend((0..seq.context_len).map(|p| {
                seq.block_table[p / batch.block_size] * batch.block_size as u32
                    + (p % batch.block_size) as u32
            }));
        }
        let plan = self.plan(batch, &tables, 1, slots.len())?;
        Ok((plan, slots))
    }

    fn plan(
        &self,
        batch: &AttentionBatch,
        tables: &[Vec<u32>],
        block_size: usize,
        rows_read: usize,
    ) -> Result<AttentionPlan> {
        let mut table_start = Vec::with_capacity(tables.len());
        let mut flat = Vec::new();
        for t in tables {
            table_start.push(flat.len() as u32);
            flat.extend_from_slice(t);
        }
        let (mut row_seq, mut row_pos) = (Vec::new(), Vec::new());
        for (s, seq) in batch.seqs.iter().enumerate() {
            for p in seq.context_len - seq.query_len..seq.context_len {
                row_seq.push(s as u32);
                row_pos.push(p as u32);
            }
        }
        // The kernel indexes these even for an empty step; keep every buffer non-empty.
        flat.push(0);
        table_start.push(0);
        Ok(AttentionPlan {
            rows: row_seq.len(),
            block_tables: self.upload_u32(&flat)?,
            table_start: self.upload_u32(&table_start)?,
            row_seq: self.upload_u32(&row_seq_or_zero(&row_seq))?,
            row_pos: self.upload_u32(&row_seq_or_zero(&row_pos))?,
            block_size,
            rows_read,
        })
    }

    /// `out[row, h·dv..] = softmax(scale · q·k) · v` over each row's causal (windowed) context.
    pub fn paged_attention<T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        plan: &AttentionPlan,
        a: &AttentionOperands<'_, T>,
    ) -> Result<()> {
        let kv_heads = a.heads / a.group.max(1);
        a.q1.check("q1", plan.rows, a.heads)?;
        a.q2.check("q2", plan.rows, a.heads)?;
        a.k1.check("k1", plan.rows_read, kv_heads)?;
        a.k2.check("k2", plan.rows_read, kv_heads)?;
        a.v.check("v", plan.rows_read, kv_heads)?;
        let ok = a.group > 0
            && a.heads % a.group == 0
            && a.q1.len == a.k1.len
            && a.q2.len == a.k2.len
            && a.q1.len + a.q2.len <= MAX_QUERY
            && a.v.len <= MAX_VALUE
            && out.rows == plan.rows
            && out.cols == a.heads * a.v.len;
        if !ok {
            return Err(Error::Op {
                op: "paged_attention",
                message: format!(
                    "{} heads in groups of {}, query {}+{} (keys {}+{}, at most {MAX_QUERY}), value {} (at most {MAX_VALUE}), out [{}, {}] for {} rows",
                    a.heads, a.group, a.q1.len, a.q2.len, a.k1.len, a.k2.len, a.v.len,
                    out.rows, out.cols, plan.rows
                ),
            });
        }
        if plan.rows == 0 {
            return Ok(());
        }
        let i = |v: usize| v as i32;
        let (out_stride, dv, heads, group) = (i(out.cols), i(a.v.len), i(a.heads), i(a.group));
        let (q1_stride, q1_head, q2_stride, q2_head) = (
            i(a.q1.width),
            i(a.q1.head_stride),
            i(a.q2.width),
            i(a.q2.head_stride),
        );
        let (s1, s2) = (a.k1.segment(), a.k2.segment());
        let (v_width, v_offset, v_head) = (i(a.v.width), i(a.v.offset), i(a.v.head_stride));
        let (block_size, window) = (i(plan.block_size), i(a.window));
        let (q1, q2) = (
            a.q1.data.slice(a.q1.offset..),
            a.q2.data.slice(a.q2.offset..),
        );
        let name = format!("paged_attention_{}", T::SUFFIX);
        let f = self.function("attention", &name)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(&mut out.data)
            .arg(&out_stride)
            .arg(&q1)
            .arg(&q1_stride)
            .arg(&q1_head)
            .arg(&q2)
            .arg(&q2_stride)
            .arg(&q2_head)
            .arg(&a.k1.data)
            .arg(&s1)
            .arg(&a.k2.data)
            .arg(&s2)
            .arg(&a.v.data)
            .arg(&v_width)
            .arg(&v_offset)
            .arg(&v_head)
            .arg(&dv)
            .arg(&heads)
            .arg(&group)
            .arg(&plan.block_tables)
            .arg(&plan.table_start)
            .arg(&block_size)
            .arg(&plan.row_seq)
            .arg(&plan.row_pos)
            .arg(&window)
            .arg(&a.scale);
        let cfg = LaunchConfig {
            grid_dim: (
                plan.rows as u32,
                a.heads.div_ceil(WARPS_PER_BLOCK) as u32,
                1,
            ),
            block_dim: (32 * WARPS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match paged_attention in attention.cu in order and type; the
        // checks above bound every query, key and value element it reads by its buffer, and the
        // plan's tables only name rows below `rows_read`.
        unsafe { b.launch(cfg) }.map_err(|e| Error::Device(format!("kernel {name}: {e}")))?;
        Ok(())
    }
}

fn row_seq_or_zero(v: &[u32]) -> Vec<u32> {
    if v.is_empty() {
        vec![0]
    } else {
        v.to_vec()
    }
}
