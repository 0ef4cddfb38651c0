//! The CUDA implementation of [`Backend`]: the model code of the CPU reference, run on one GPU
//! with activations and weights in one element type `T` (f32 or bf16; arithmetic in f32).

use super::attention::kernel_choice::AttentionTuning;
use super::blas::{Blas, Layout};
use super::fp8_gemm::CudaWeight;
use super::kv_cache::CudaKvCache;
use super::moe_grouped::{CudaExperts, MoePath};
use super::{CudaDevice, GpuFloat, GpuTensor};
use crate::backend::{AttentionBatch, Backend, MhaDims, MlaDims, MlpWeights, MoeWeights};
use crate::config::quantization::Fp8Activations;
use crate::config::MoeConfig;
use crate::error::{Error, Result};
use crate::kv::cache_dtype::CacheRows;
use crate::ops::rope::RopeTable;
use crate::weights::fp8::Fp8Matrix;
use crate::weights::HostTensor;
use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::CudaSlice;
use std::cell::RefCell;
use std::marker::PhantomData;

pub struct CudaBackend<T> {
    /// Decode steps captured as CUDA graphs (decode_graphs.rs). Declared first, so dropped
    /// first: a graph goes before the modules its kernels belong to are unloaded.
    pub(super) decode_graphs: RefCell<super::decode_graphs::DecodeGraphs<T>>,
    pub device: CudaDevice,
    blas: Blas,
    /// Fill every output with NaN before its kernel runs, so that an element a kernel forgets
    /// to write shows up in the tests instead of passing with stale memory.
    pub(super) poison_outputs: bool,
    /// Most bytes of gathered and expanded context the materialised form holds at once.
    pub(super) materialised_bytes: std::cell::Cell<usize>,
    /// Which 64-row kernel MLA decode with 64+ heads per token takes (the one that pays, by
    /// default, or one forced on or off) and how many CTAs the split-KV schedule aims for.
    pub(super) tc_tuning: std::cell::Cell<AttentionTuning>,
    /// The current step's attention plans and schedules (see `attention`).
    pub(super) prepared: RefCell<Option<super::attention::PreparedStep>>,
    /// Which kernels run the routed experts.
    pub(super) moe_path: std::cell::Cell<MoePath>,
    /// Whether FP8 weights uploaded now stay FP8 (see `set_fp8_activations`).
    pub(super) fp8_activations: std::cell::Cell<bool>,
    /// Whether 64-row FP8 GEMMs may take the wgmma builds (see `set_fp8_wgmma`).
    pub(super) fp8_wgmma: std::cell::Cell<bool>,
    _element: PhantomData<T>,
}

/// `heads` row-major `[out, input]` matrices back to back.
pub struct CudaHeadWeight<T> {
    pub heads: usize,
    pub out: usize,
    pub input: usize,
    pub data: CudaSlice<T>,
}

pub(super) fn op_err(op: &'static str, message: String) -> Error {
    Error::Op { op, message }
}

/// `x·wᵀ` needs as many columns in `x` as in `w` (`[w_rows, w_cols]`).
fn check_matmul<T>(op: &'static str, x: &GpuTensor<T>, w_rows: usize, w_cols: usize) -> Result<()> {
    if x.cols == w_cols {
        return Ok(());
    }
    Err(op_err(
        op,
        format!(
            "x is [{}, {}] but w is [{w_rows}, {w_cols}]",
            x.rows, x.cols
        ),
    ))
}

/// `x`'s rows, packed.
pub(super) fn rows_layout<T>(x: &GpuTensor<T>) -> Layout {
    Layout {
        rows: x.rows,
        cols: x.cols,
        ld: x.cols,
    }
}

impl<T: GpuFloat> CudaBackend<T>
where
    CudaBlas: Gemm<T>,
{
    /// Opens GPU `ordinal` with its kernels and cuBLAS.
    pub fn open(ordinal: usize) -> Result<Self> {
        let device = CudaDevice::open(ordinal)?;
        let blas = Blas::new(
            device.stream.clone(),
            device.counters.clone(),
            device.recording.clone(),
        )?;
        // Ranges cost next to nothing unless a tool such as nsys is attached.
        crate::profile::enable_nvtx();
        let backend = CudaBackend {
            device,
            blas,
            poison_outputs: false,
            materialised_bytes: std::cell::Cell::new(super::tuning::MATERIALISED_BYTES),
            tc_tuning: std::cell::Cell::new(AttentionTuning::default()),
            prepared: RefCell::new(None),
            moe_path: std::cell::Cell::new(MoePath::default()),
            fp8_activations: std::cell::Cell::new(false),
            fp8_wgmma: std::cell::Cell::new(true),
            decode_graphs: RefCell::default(),
            _element: PhantomData,
        };
        backend.set_fp8_activations(Fp8Activations::Auto)?;
        Ok(backend)
    }

    /// Poisons every op output with NaN before it is written (for tests).
    pub fn with_poisoned_outputs(mut self) -> Self {
        self.poison_outputs = true;
        self
    }

    /// Bounds the context the materialised form expands at once (tests use a tiny bound to
    /// exercise the grouping).
    pub fn set_materialised_bytes(&self, bytes: usize) {
        self.materialised_bytes.set(bytes);
    }

    /// How the tensor-core attention runs from the next call on (see [`AttentionTuning`]): tests force
    /// each kernel on shapes of any size, `mla bench attention` compares kernels and splits.
    pub fn set_attention_tuning(&self, tuning: AttentionTuning) {
        self.tc_tuning.set(tuning);
    }

    /// Which kernels run the routed experts from the next MoE layer on (tests and `mla bench
    /// moe` compare the grouped path with the per-expert one).
    pub fn set_moe_path(&self, path: MoePath) {
        self.moe_path.set(path);
    }

    pub(super) fn output(&self, rows: usize, cols: usize) -> Result<GpuTensor<T>> {
        self.device
            .tensor(rows, cols, self.poison_outputs.then_some(f32::NAN))
    }

    /// `x · wᵀ` in f32 (the MoE router's logits).
    pub(super) fn router_logits(
        &self,
        x: &GpuTensor<T>,
        w: &GpuTensor<T>,
    ) -> Result<GpuTensor<f32>> {
        check_matmul("router", x, w.rows, w.cols)?;
        let mut out =
            self.device
                .tensor(x.rows, w.rows, self.poison_outputs.then_some(f32::NAN))?;
        if x.rows > 0 && w.rows > 0 {
            self.blas.matmul_nt_f32_out(
                &x.data,
                rows_layout(x),
                &w.data,
                rows_layout(w),
                &mut out.data,
                w.rows,
            )?;
        }
        Ok(out)
    }

    /// `x · wᵀ` for an `x` given as a buffer and its layout: cuBLAS, or the FP8 GEMM.
    pub(super) fn matmul_layout(
        &self,
        x: &cudarc::driver::CudaView<'_, T>,
        x_layout: Layout,
        w: &CudaWeight<T>,
    ) -> Result<GpuTensor<T>> {
        let w = match w {
            CudaWeight::Dense(w) => w,
            CudaWeight::Fp8(w) => return self.fp8_matmul(x, x_layout, w, None),
        };
        let mut out = self.output(x_layout.rows, w.rows)?;
        if x_layout.rows > 0 && w.rows > 0 {
            self.blas
                .matmul_nt(x, x_layout, &w.data, rows_layout(w), &mut out.data, w.rows)?;
        }
        Ok(out)
    }
}

impl<T: GpuFloat> Backend for CudaBackend<T>
where
    CudaBlas: Gemm<T>,
{
    type Tensor = GpuTensor<T>;
    type Weight = CudaWeight<T>;
    type HeadWeight = CudaHeadWeight<T>;
    type KvCache = CudaKvCache<T>;
    type RoutedExperts = CudaExperts<T>;

    fn name(&self) -> String {
        format!(
            "cuda:{} ({}, {})",
            self.device.info.ordinal,
            self.device.info.name,
            T::SUFFIX
        )
    }

    fn free_memory(&self) -> Option<u64> {
        self.device.free_memory().ok().map(|b| b as u64)
    }

    fn cache_value_bytes(&self) -> u64 {
        std::mem::size_of::<T>() as u64
    }

    fn sync_fn(&self) -> Option<crate::profile::SyncFn> {
        let stream = self.device.stream.clone();
        let recording = self.device.recording.clone();
        // A failed wait shows up again at the next checked call, which reports it. Nothing is
        // waited for while work is recorded into a graph (a wait would invalidate it): spans
        // then time the host's side only.
        Some(Box::new(move || {
            if !recording.capturing() {
                let _ = stream.synchronize();
            }
        }))
    }

    fn routed_experts(
        &self,
        experts: Vec<MlpWeights<Self>>,
        score_bias: Option<&[f32]>,
    ) -> Result<CudaExperts<T>> {
        self.experts_on_device(experts, score_bias)
    }

    fn replays_decode_graphs(&self) -> bool {
        true
    }

    fn forward_replayed(
        &self,
        owner: u64,
        rows: usize,
        forward: &mut dyn FnMut() -> Result<GpuTensor<T>>,
    ) -> Result<GpuTensor<T>> {
        self.replay_decode(owner, rows, forward)
    }

    fn capture_decode_graphs(
        &self,
        owner: u64,
        batches: &[usize],
        table_values: usize,
        forward: &mut dyn FnMut(usize) -> Result<GpuTensor<T>>,
    ) -> Result<Option<crate::backend::GraphCapture>> {
        self.capture_decode(owner, batches, table_values, forward)
            .map(Some)
    }

    fn copy_bandwidth(&self) -> Option<f64> {
        // 512 MiB: past any L2; 10 copies after one.
        self.device.copy_bandwidth(512 << 20, 10).ok()
    }

    fn counters(&self) -> Option<crate::backend::DeviceCounters> {
        Some(self.device.counters.snapshot())
    }

    fn upload_weight(&self, host: HostTensor) -> Result<CudaWeight<T>> {
        self.device.upload(&host).map(CudaWeight::Dense)
    }

    fn upload_fp8_weight(&self, w: Fp8Matrix) -> Result<CudaWeight<T>> {
        self.fp8_weight(w)
    }

    fn keeps_fp8_weights(&self) -> bool {
        self.multiplies_fp8()
    }

    fn generate_weight(
        &self,
        shape: &[usize],
        fill: &crate::weights::random::RandomFill,
    ) -> Result<Option<CudaWeight<T>>> {
        let (rows, cols) = match *shape {
            [n] => (1, n),
            [r, c] => (r, c),
            _ => return Ok(None),
        };
        let t = self.device.random_tensor(rows, cols, fill)?;
        Ok(Some(CudaWeight::Dense(t)))
    }

    fn upload_head_weight(
        &self,
        heads: usize,
        out: usize,
        input: usize,
        data: Vec<f32>,
    ) -> Result<CudaHeadWeight<T>> {
        if data.len() != heads * out * input {
            return Err(op_err(
                "upload_head_weight",
                format!("{} values for {heads}×{out}×{input}", data.len()),
            ));
        }
        let t = self
            .device
            .upload::<T>(&HostTensor::new(vec![heads * out, input], data))?;
        Ok(CudaHeadWeight {
            heads,
            out,
            input,
            data: t.data,
        })
    }

    fn to_host(&self, x: &GpuTensor<T>) -> Result<HostTensor> {
        self.device.download(x)
    }

    fn argmax_rows(&self, x: &GpuTensor<T>) -> Result<Vec<u32>> {
        self.device.argmax_rows(x)
    }

    fn softmax_totals(&self, x: &GpuTensor<T>, temperatures: &[f32]) -> Result<Vec<f64>> {
        self.device.softmax_totals(x, temperatures)
    }

    fn top_k_rows(&self, x: &GpuTensor<T>, k: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        if (1..=super::rows::MAX_TOP_K).contains(&k) && k <= x.cols {
            return self.device.top_k_rows(x, k);
        }
        Ok(crate::backend::host_top_k_rows(&self.to_host(x)?, k))
    }

    fn top_k_and_totals(
        &self,
        x: &GpuTensor<T>,
        k: usize,
        temperatures: &[f32],
    ) -> Result<(crate::backend::RowCandidates, Vec<f64>)> {
        if (1..=super::rows::MAX_TOP_K).contains(&k) && k <= x.cols {
            return self.device.top_k_and_totals(x, k, temperatures);
        }
        Ok((
            self.top_k_rows(x, k)?,
            self.softmax_totals(x, temperatures)?,
        ))
    }

    fn embedding(&self, table: &CudaWeight<T>, ids: &[u32]) -> Result<GpuTensor<T>> {
        let table = table.dense("embedding")?;
        let mut out = self.output(ids.len(), table.cols)?;
        if !ids.is_empty() {
            self.device.embedding(&mut out, table, ids)?;
        }
        Ok(out)
    }

    fn matmul(&self, x: &GpuTensor<T>, w: &CudaWeight<T>) -> Result<GpuTensor<T>> {
        check_matmul("matmul", x, w.rows(), w.cols())?;
        self.matmul_layout(&x.data.slice(..), rows_layout(x), w)
    }

    fn head_matmul(
        &self,
        x: &GpuTensor<T>,
        head_stride: usize,
        offset: usize,
        w: &CudaHeadWeight<T>,
    ) -> Result<GpuTensor<T>> {
        if x.cols != w.heads * head_stride || offset + w.input > head_stride {
            return Err(op_err(
                "head_matmul",
                format!(
                    "x has {} columns; {} heads of stride {head_stride} reading [{offset}, {})",
                    x.cols,
                    w.heads,
                    offset + w.input
                ),
            ));
        }
        let ld_out = w.heads * w.out;
        let mut out = self.output(x.rows, ld_out)?;
        if x.rows == 0 {
            return Ok(out);
        }
        let x_view = x.data.slice(offset..);
        let x_layout = Layout {
            rows: x.rows,
            cols: w.input,
            ld: x.cols,
        };
        let w_layout = Layout {
            rows: w.out,
            cols: w.input,
            ld: w.input,
        };
        self.blas.batched_matmul_nt(
            w.heads,
            &x_view,
            x_layout,
            head_stride,
            &w.data,
            w_layout,
            &mut out.data,
            ld_out,
            w.out,
        )?;
        Ok(out)
    }

    fn rms_norm(&self, x: &GpuTensor<T>, weight: &CudaWeight<T>, eps: f32) -> Result<GpuTensor<T>> {
        let weight = weight.dense("rms_norm")?;
        let mut out = self.output(x.rows, x.cols)?;
        if x.rows > 0 {
            self.device.rms_norm(&mut out, x, weight, eps)?;
        }
        Ok(out)
    }

    fn add_bias(&self, x: &mut GpuTensor<T>, bias: &CudaWeight<T>) -> Result<()> {
        self.device.add_bias(x, bias.dense("add_bias")?)
    }

    fn add_assign(&self, x: &mut GpuTensor<T>, y: &GpuTensor<T>) -> Result<()> {
        self.device.add_assign(x, y)
    }

    fn add_rms_norm(
        &self,
        x: &mut GpuTensor<T>,
        y: &GpuTensor<T>,
        weight: &CudaWeight<T>,
        eps: f32,
    ) -> Result<GpuTensor<T>> {
        let weight = weight.dense("add_rms_norm")?;
        let mut out = self.output(x.rows, x.cols)?;
        self.device.add_rms_norm(x, y, &mut out, weight, eps)?;
        Ok(out)
    }

    fn select_rows(&self, x: &GpuTensor<T>, rows: &[usize]) -> Result<GpuTensor<T>> {
        let mut out = self.output(rows.len(), x.cols)?;
        let rows: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        if rows.iter().any(|&r| r as usize >= x.rows) {
            return Err(op_err(
                "select_rows",
                format!("rows {rows:?} of {}", x.rows),
            ));
        }
        let src = x.data.slice(..x.rows * x.cols);
        self.device
            .gather_rows(&mut out, &src, x.cols, &rows, "selected rows")?;
        Ok(out)
    }

    fn rope(
        &self,
        x: &mut GpuTensor<T>,
        table: &RopeTable,
        heads: usize,
        head_stride: usize,
        offset: usize,
    ) -> Result<()> {
        if x.rows == 0 {
            return Ok(());
        }
        // Every layer rotates with the step's one table: its step buffers copy it once.
        let cos_sin = self.device.rope_table(table)?;
        self.device
            .rope(x, table, &cos_sin, heads, head_stride, offset)
    }

    fn latent_epilogue(
        &self,
        ckv: &mut GpuTensor<T>,
        norm: &CudaWeight<T>,
        eps: f32,
        table: &RopeTable,
    ) -> Result<()> {
        let norm = norm.dense("latent_epilogue")?;
        if ckv.rows == 0 {
            return Ok(());
        }
        let cos_sin = self.device.rope_table(table)?;
        self.device.latent_epilogue(ckv, norm, eps, table, &cos_sin)
    }

    fn alloc_kv_cache(
        &self,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        width: usize,
    ) -> Result<CudaKvCache<T>> {
        let rows = CacheRows::Native { width };
        self.new_kv_cache(layers, num_blocks, block_size, rows)
    }

    fn alloc_cache_rows(
        &self,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        rows: CacheRows,
    ) -> Result<CudaKvCache<T>> {
        self.new_kv_cache(layers, num_blocks, block_size, rows)
    }

    fn copy_blocks(&self, cache: &mut CudaKvCache<T>, pairs: &[(u32, u32)]) -> Result<()> {
        let block_elems = cache.block_size * cache.stride;
        self.device
            .copy_blocks(&mut cache.data, cache.layers, block_elems, pairs)
    }

    fn write_kv_cache(
        &self,
        cache: &mut CudaKvCache<T>,
        layer: usize,
        x: &GpuTensor<T>,
        offset: usize,
        slots: &[u32],
    ) -> Result<()> {
        self.write_cache_rows(cache, layer, x, offset, slots)
    }

    fn mha_attention(
        &self,
        q: &GpuTensor<T>,
        cache: &CudaKvCache<T>,
        layer: usize,
        batch: &AttentionBatch,
        dims: &MhaDims,
    ) -> Result<GpuTensor<T>> {
        self.mha(q, cache, layer, batch, dims)
    }

    fn mla_attention_materialised(
        &self,
        q: &GpuTensor<T>,
        cache: &CudaKvCache<T>,
        layer: usize,
        batch: &AttentionBatch,
        kv_b: &CudaWeight<T>,
        dims: &MlaDims,
    ) -> Result<GpuTensor<T>> {
        self.materialised(q, cache, layer, batch, kv_b, dims)
    }

    fn mla_attention_absorbed(
        &self,
        q_lat: &GpuTensor<T>,
        q: &GpuTensor<T>,
        cache: &CudaKvCache<T>,
        layer: usize,
        batch: &AttentionBatch,
        dims: &MlaDims,
    ) -> Result<GpuTensor<T>> {
        self.absorbed(q_lat, q, cache, layer, batch, dims, false)
            .map(|(out, _)| out)
    }

    fn mlp(&self, x: &GpuTensor<T>, w: &MlpWeights<Self>) -> Result<GpuTensor<T>> {
        if let (CudaWeight::Fp8(gate), CudaWeight::Fp8(up), None) = (&w.gate, &w.up, &w.biases) {
            check_matmul("mlp", x, gate.rows, gate.cols)?;
            let h = self.fp8_matmul(&x.data.slice(..), rows_layout(x), gate, Some(up))?;
            return self.matmul(&h, &w.down);
        }
        let mut gate = self.matmul(x, &w.gate)?;
        let mut up = self.matmul(x, &w.up)?;
        if let Some([g, u, _]) = &w.biases {
            self.add_bias(&mut gate, g)?;
            self.add_bias(&mut up, u)?;
        }
        if gate.rows > 0 {
            self.device.silu_mul(&mut gate, &up)?;
        }
        let mut down = self.matmul(&gate, &w.down)?;
        if let Some([_, _, d]) = &w.biases {
            self.add_bias(&mut down, d)?;
        }
        Ok(down)
    }

    fn moe(
        &self,
        x: &GpuTensor<T>,
        w: &MoeWeights<Self>,
        config: &MoeConfig,
    ) -> Result<GpuTensor<T>> {
        self.moe_layer(x, w, config)
    }
}
