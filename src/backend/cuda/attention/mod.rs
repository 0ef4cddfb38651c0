//! The three attention forms of the CUDA backend (MHA/GQA, MLA absorbed, MLA materialised):
//! plans and layouts for the kernels, the tensor-core kernel where it serves the form (bf16), the
//! exact kernel otherwise, and the materialised form's gathered and expanded context, in bounded
//! groups of sequences. docs/kernels.md has each kernel's design.
//!
//! The split-KV schedule's nouns (schedule.rs; the kernels' `WorkItem` and `RowGroup`):
//! - **row**: one (query token, head) pair, `token · heads + head`;
//! - **run**: up to 16 rows of one sequence and KV head, an mma M tile (`ROWS`);
//! - **unit**: what one CTA serves: one run for the 16-row kernels, four (64 rows) for the
//!   64-row kernels;
//! - **split**: a contiguous range of a sequence's cached tokens;
//! - **item**: one run over one split (`WorkItem`);
//! - **group**: the splits of one run (`RowGroup`), merged by their log-sum-exp (the combine);
//!   where every group has one split the kernel writes the output itself.

pub mod exact;
pub mod kernel_choice;
pub mod launch;
pub mod layout;
pub mod params;
pub mod schedule;
#[cfg(feature = "experimental-kernels")]
pub mod tensor_map;

use super::backend::{op_err, CudaBackend};
use super::blas::Layout;
use super::CudaKvCache;
use super::{GpuFloat, GpuTensor};
use crate::backend::{AttentionBatch, MhaDims, MlaDims};
use crate::error::Result;
use crate::kv::cache_dtype::Fp8RowParts;
use cudarc::cublas::{CudaBlas, Gemm};
use exact::AttentionPlan;
use kernel_choice::AttentionTuning;
use launch::SplitSchedule;
use layout::{absorbed_layout, materialised_layout, mha_layout, AttentionLayout, HostPlan, Source};
use std::rc::Rc;

/// How a step's keys are addressed: through the paged cache, or gathered sequence after
/// sequence into one buffer (the materialised form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlanKind {
    Paged,
    Contiguous,
}

/// What one step's attention needs, for one plan kind and layout shape.
pub(super) struct Prepared {
    host: HostPlan,
    /// The cache slot of each gathered context row (contiguous plans only).
    slots: Vec<u32>,
    plan: AttentionPlan,
    schedule: Option<SplitSchedule>,
}

/// What, besides the step's batch, a preparation depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PreparedKey {
    kind: PlanKind,
    num_blocks: usize,
    block_size: usize,
    heads: usize,
    group: usize,
    window: usize,
    tensor_cores: bool,
    tuning: AttentionTuning,
    /// The cache's FP8 rows (their kernels differ from bf16 rows').
    cache_fp8: Option<Fp8RowParts>,
}

/// The step the cached preparations belong to.
pub(super) struct PreparedStep {
    batch: AttentionBatch,
    entries: Vec<(PreparedKey, Rc<Prepared>)>,
}

impl<T: GpuFloat> CudaBackend<T>
where
    CudaBlas: Gemm<T>,
{
    pub(super) fn mha(
        &self,
        q: &GpuTensor<T>,
        cache: &CudaKvCache<T>,
        layer: usize,
        batch: &AttentionBatch,
        dims: &MhaDims,
    ) -> Result<GpuTensor<T>> {
        cache.check_layer(layer)?;
        let (d, kvh) = (dims.head_dim, dims.kv_heads);
        if kvh == 0 || dims.heads % kvh != 0 || cache.width != 2 * kvh * d {
            return Err(op_err(
                "mha_attention",
                format!("{dims:?} with cache width {}", cache.width),
            ));
        }
        let layout = mha_layout(dims, q.cols, cache.width).with_cache_rows(cache.fp8);
        let prepared = self.prepared(batch, PlanKind::Paged, cache, &layout)?;
        let mut out = self.output(prepared.host.rows(), dims.heads * d)?;
        self.attend(&mut out, &prepared, &layout, false, |source| match source {
            Source::Q => q.data.slice(..),
            _ => layer_view(cache, layer),
        })?;
        Ok(out)
    }

    pub(super) fn materialised(
        &self,
        q: &GpuTensor<T>,
        cache: &CudaKvCache<T>,
        layer: usize,
        batch: &AttentionBatch,
        kv_b: &super::CudaWeight<T>,
        dims: &MlaDims,
    ) -> Result<GpuTensor<T>> {
        cache.check_layer(layer)?;
        let (n, r, dn, dv, dr) = (
            dims.heads,
            dims.kv_lora_rank,
            dims.qk_nope,
            dims.v_head,
            dims.qk_rope,
        );
        if cache.width != r + dr || kv_b.rows() != n * (dn + dv) || kv_b.cols() != r {
            return Err(op_err(
                "mla_attention_materialised",
                format!(
                    "{dims:?} with cache width {} and kv_b [{}, {}]",
                    cache.width,
                    kv_b.rows(),
                    kv_b.cols()
                ),
            ));
        }
        let t = batch.num_query_tokens();
        if q.rows != t || q.cols != n * dims.qk_head() {
            return Err(op_err(
                "mla_attention_materialised",
                format!("q [{}, {}] for {t} rows of {dims:?}", q.rows, q.cols),
            ));
        }
        // Sequences in groups whose expanded K/V stay within a bound, so that a big batch over
        // long contexts does not need every context expanded at once.
        let per_token = (n * (dn + dv) + cache.width) * std::mem::size_of::<T>();
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        let mut bytes = 0;
        for (i, seq) in batch.seqs.iter().enumerate() {
            let need = seq.context_len * per_token;
            match groups.last_mut() {
                Some(g) if bytes + need <= self.materialised_bytes.get() => g.end = i + 1,
                _ => {
                    groups.push(i..i + 1);
                    bytes = 0;
                }
            }
            bytes += need;
        }
        if groups.len() <= 1 {
            return self.materialise_group(q.data.slice(..), cache, layer, batch, kv_b, dims);
        }
        let mut out = self.output(t, n * dv)?;
        let mut row = 0;
        for g in groups {
            let part = AttentionBatch {
                block_size: batch.block_size,
                seqs: batch.seqs[g].to_vec(),
            };
            let rows = part.num_query_tokens();
            let q_part = q.data.slice(row * q.cols..(row + rows) * q.cols);
            let y = self.materialise_group(q_part, cache, layer, &part, kv_b, dims)?;
            let mut dst = out.data.slice_mut(row * n * dv..(row + rows) * n * dv);
            self.device
                .copy_on_device(&y.data.slice(..rows * n * dv), &mut dst)?;
            row += rows;
        }
        Ok(out)
    }

    /// [`crate::backend::Backend::mla_attention_absorbed`] and, where the tensor-core kernels
    /// serve the step (bf16), each (token, head) row's log-sum-exp of its scaled scores, natural
    /// log, `[T, heads]`; None on the exact kernel's path (f32), which does not compute it.
    pub fn mla_attention_absorbed_lse(
        &self,
        q_lat: &GpuTensor<T>,
        q: &GpuTensor<T>,
        cache: &CudaKvCache<T>,
        layer: usize,
        batch: &AttentionBatch,
        dims: &MlaDims,
    ) -> Result<(GpuTensor<T>, Option<GpuTensor<f32>>)> {
        self.absorbed(q_lat, q, cache, layer, batch, dims, true)
    }

    /// The absorbed form, with the rows' LSE where `want_lse` and the tensor-core kernels serve
    /// the step (the model's steps want none: neither the buffer nor its writes).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn absorbed(
        &self,
        q_lat: &GpuTensor<T>,
        q: &GpuTensor<T>,
        cache: &CudaKvCache<T>,
        layer: usize,
        batch: &AttentionBatch,
        dims: &MlaDims,
        want_lse: bool,
    ) -> Result<(GpuTensor<T>, Option<GpuTensor<f32>>)> {
        cache.check_layer(layer)?;
        let (n, r, dr) = (dims.heads, dims.kv_lora_rank, dims.qk_rope);
        let dq = dims.qk_head();
        if cache.width != r + dr || q_lat.cols != n * r || q.cols != n * dq {
            return Err(op_err(
                "mla_attention_absorbed",
                format!(
                    "{dims:?} with cache width {}, q_lat {} and q {} columns",
                    cache.width, q_lat.cols, q.cols
                ),
            ));
        }
        let layout = absorbed_layout(dims).with_cache_rows(cache.fp8);
        let prepared = self.prepared(batch, PlanKind::Paged, cache, &layout)?;
        let rows = prepared.host.rows();
        let mut out = self.output(rows, n * r)?;
        let lse = self.attend(
            &mut out,
            &prepared,
            &layout,
            want_lse,
            |source| match source {
                Source::QLat => q_lat.data.slice(..),
                Source::Q => q.data.slice(..),
                _ => layer_view(cache, layer),
            },
        )?;
        let lse = lse.map(|data| GpuTensor {
            data,
            rows,
            cols: n,
        });
        Ok((out, lse))
    }

    /// Attention with `layout`: on tensor cores where the kernel serves it (bf16), which also
    /// gives the rows' log-sum-exp if `want_lse`, else with the exact warp-per-head kernel.
    fn attend<'a>(
        &self,
        out: &mut GpuTensor<T>,
        prepared: &Prepared,
        layout: &AttentionLayout,
        want_lse: bool,
        buffer: impl Fn(Source) -> cudarc::driver::CudaView<'a, T>,
    ) -> Result<Option<cudarc::driver::CudaSlice<f32>>> {
        match &prepared.schedule {
            Some(schedule) => self.device.tensor_core_attention(
                out,
                &prepared.plan,
                schedule,
                layout,
                want_lse,
                &buffer,
            ),
            None => self
                .device
                .paged_attention(out, &prepared.plan, layout, &buffer)
                .map(|()| None),
        }
    }

    /// The step's plan (and tensor-core schedule), on the host and the device: built at the
    /// first layer of a step and reused by the others, which see the same batch.
    fn prepared(
        &self,
        batch: &AttentionBatch,
        kind: PlanKind,
        cache: &CudaKvCache<T>,
        layout: &AttentionLayout,
    ) -> Result<Rc<Prepared>> {
        let tensor_cores = T::SUFFIX == "bf16"
            && kernel_choice::supports(layout, self.device.info.max_shared_per_block);
        let key = PreparedKey {
            kind,
            num_blocks: cache.num_blocks,
            block_size: cache.block_size,
            heads: layout.heads,
            group: layout.group,
            window: layout.window,
            tensor_cores,
            tuning: self.tc_tuning.get(),
            cache_fp8: layout.cache_fp8,
        };
        let mut cached = self.prepared.borrow_mut();
        if cached.as_ref().is_none_or(|c| c.batch != *batch) {
            *cached = Some(PreparedStep {
                batch: batch.clone(),
                entries: Vec::new(),
            });
        }
        let step = cached.as_mut().expect("just set");
        if let Some((_, p)) = step.entries.iter().find(|(k, _)| *k == key) {
            return Ok(p.clone());
        }
        let (host, slots) = match kind {
            PlanKind::Paged => (
                HostPlan::paged(batch, cache.num_blocks, cache.block_size)?,
                Vec::new(),
            ),
            PlanKind::Contiguous => {
                HostPlan::contiguous(batch, cache.num_blocks, cache.block_size)?
            }
        };
        let entry = step.entries.len();
        let schedule = match tensor_cores {
            true => Some(
                self.device
                    .split_schedule(batch, layout, self.tc_tuning.get(), entry)?,
            ),
            false => None,
        };
        let prepared = Rc::new(Prepared {
            plan: self.device.upload_plan(
                &host,
                layout.heads,
                cache.num_blocks * cache.block_size,
                entry,
            )?,
            host,
            slots,
            schedule,
        });
        step.entries.push((key, prepared.clone()));
        Ok(prepared)
    }

    /// What the current step's attention launches take by value besides the step buffers they
    /// read (each plan's key, rows, exact-kernel splits and tensor-core schedule shape): a graph
    /// captured over one step replays another with the same signature.
    pub(super) fn step_signature(&self) -> String {
        let cached = self.prepared.borrow();
        let Some(step) = cached.as_ref() else {
            return String::new();
        };
        step.entries
            .iter()
            .map(|(key, p)| match &p.schedule {
                Some(s) => format!("{key:?} rows {} schedule {:?}", p.plan.rows(), s.shape),
                None => format!(
                    "{key:?} rows {} exact splits {:?}",
                    p.plan.rows(),
                    p.plan.exact_splits()
                ),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Materialised MLA for one group of sequences whose query rows are `q` (from its first
    /// row): every context gathered from its pages and expanded to K_nope and V with cuBLAS.
    fn materialise_group(
        &self,
        q: cudarc::driver::CudaView<'_, T>,
        cache: &CudaKvCache<T>,
        layer: usize,
        batch: &AttentionBatch,
        kv_b: &super::CudaWeight<T>,
        dims: &MlaDims,
    ) -> Result<GpuTensor<T>> {
        let layout = materialised_layout(dims);
        let prepared = self.prepared(batch, PlanKind::Contiguous, cache, &layout)?;
        let slots = &prepared.slots;
        let mut context = self.output(slots.len(), cache.width)?;
        let rows = layer_view(cache, layer);
        match cache.fp8 {
            None => {
                self.device
                    .gather_rows(&mut context, &rows, cache.width, slots, "context slots")?
            }
            Some(fp8) => {
                self.device
                    .gather_fp8_rows(&mut context, &rows, fp8, slots, "context slots")?
            }
        }
        let latent = Layout {
            rows: context.rows,
            cols: dims.kv_lora_rank,
            ld: cache.width,
        };
        let expanded = self.matmul_layout(&context.data.slice(..), latent, kv_b)?;
        let mut out = self.output(prepared.host.rows(), dims.heads * dims.v_head)?;
        self.attend(&mut out, &prepared, &layout, false, |source| match source {
            Source::Context => context.data.slice(..),
            Source::Expanded => expanded.data.slice(..),
            _ => q.slice(..),
        })?;
        Ok(out)
    }
}

/// Layer `layer` of the cache as one `[num_blocks · block_size, stride]` buffer.
pub(super) fn layer_view<T>(
    cache: &CudaKvCache<T>,
    layer: usize,
) -> cudarc::driver::CudaView<'_, T> {
    let len = cache.layer_len();
    cache.data.slice(layer * len..(layer + 1) * len)
}
