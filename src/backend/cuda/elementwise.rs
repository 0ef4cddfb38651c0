//! Rust side of `kernels/elementwise.cu`: device tensors, transfers, and one checked launch per
//! kernel. Shapes are validated on the host before anything is launched.

use super::error::driver_err;
use super::kernels;
use super::launch::Order;
use super::step_buffers::StepValues;
use super::CudaDevice;
use crate::error::{Error, Result};
use crate::ops::rope::RopeTable;
use crate::weights::HostTensor;
use cudarc::driver::{CudaSlice, CudaViewMut, DeviceRepr, LaunchConfig, ValidAsZeroBits};
use rayon::prelude::*;

/// Element types the kernels are instantiated for; arithmetic is always f32.
pub trait GpuFloat:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + Unpin + 'static
{
    /// The type's name, as the kernels' suffix (`f32`, `bf16`).
    const SUFFIX: &'static str;
    /// Whether this is bf16 (picks a kernel's build: [`super::kernels::ByDtype::of`]).
    const BF16: bool;
    /// The type's cuBLAS name.
    const BLAS_TYPE: cudarc::cublas::sys::cudaDataType;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl GpuFloat for f32 {
    const SUFFIX: &'static str = "f32";
    const BF16: bool = false;
    const BLAS_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_32F;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl GpuFloat for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    const BF16: bool = true;
    const BLAS_TYPE: cudarc::cublas::sys::cudaDataType =
        cudarc::cublas::sys::cudaDataType::CUDA_R_16BF;
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// A row-major `[rows, cols]` tensor in device memory.
pub struct GpuTensor<T> {
    pub data: CudaSlice<T>,
    pub rows: usize,
    pub cols: usize,
}

const THREADS: u32 = 256;

fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn grid_stride_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 4096) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A RoPE table's cos and sin values on the device.
#[derive(Debug, Clone, Copy)]
pub struct RopeOnDevice {
    pub cos: StepValues<f32>,
    pub sin: StepValues<f32>,
}

fn shape_err(op: &'static str, message: String) -> Error {
    Error::Op { op, message }
}

impl CudaDevice {
    pub fn upload<T: GpuFloat>(&self, host: &HostTensor) -> Result<GpuTensor<T>> {
        let (rows, cols) = match host.shape[..] {
            [n] => (1, n),
            [r, c] => (r, c),
            _ => {
                return Err(shape_err(
                    "upload",
                    format!("expected 1-D or 2-D, found {:?}", host.shape),
                ))
            }
        };
        // Converting billions of weights is the slow part of loading: spread it over the cores.
        let values: Vec<T> = host.data.par_iter().map(|&v| T::from_f32(v)).collect();
        let data = self.upload_values(&values)?;
        Ok(GpuTensor { data, rows, cols })
    }

    /// Plain values (ids, f32 tables, device addresses) copied to a new device buffer.
    pub fn upload_values<V: DeviceRepr>(&self, values: &[V]) -> Result<CudaSlice<V>> {
        self.counters.upload();
        self.stream
            .clone_htod(values)
            .map_err(driver_err("copying to the device"))
    }

    /// A buffer of `len` values (at least one) left as allocated, for values a kernel writes
    /// before anything reads them; `what` names it in an error.
    pub(super) fn uninit<V: DeviceRepr>(&self, len: usize, what: &str) -> Result<CudaSlice<V>> {
        // SAFETY: the caller's kernel writes every element it or a later kernel reads.
        unsafe { self.stream.alloc::<V>(len.max(1)) }.map_err(driver_err(format!(
            "allocating {what} ({len} values) on {}",
            self.info.name
        )))
    }

    pub fn download<T: GpuFloat>(&self, x: &GpuTensor<T>) -> Result<HostTensor> {
        let values = self.fetch(&x.data, "a tensor")?;
        Ok(HostTensor::new(
            vec![x.rows, x.cols],
            values.into_iter().map(T::to_f32).collect(),
        ))
    }

    /// A tensor full of NaN, so that any element a kernel fails to write shows.
    pub fn poisoned<T: GpuFloat>(&self, rows: usize, cols: usize) -> Result<GpuTensor<T>> {
        self.tensor(rows, cols, Some(f32::NAN))
    }

    /// Rows of `table` for each id (ids are checked against the vocabulary first).
    pub fn embedding<T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        table: &GpuTensor<T>,
        ids: &[u32],
    ) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= table.rows) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {})",
                table.rows
            )));
        }
        if out.rows != ids.len() || out.cols != table.cols {
            return Err(shape_err(
                "embedding",
                format!(
                    "out [{}, {}] for {} ids of width {}",
                    out.rows,
                    out.cols,
                    ids.len(),
                    table.cols
                ),
            ));
        }
        let ids = self.step_values(("token ids", 0), ids)?;
        let hidden = table.cols as i32;
        let args = self.args(&[&out.data, &table.data, &ids, &hidden]);
        // SAFETY: launch's contract. The shape checks above bound every index it computes.
        unsafe {
            self.launch(
                kernels::EMBEDDING.of::<T>(),
                rows_config(out.rows),
                Order::Serial,
                &args,
            )
        }?;
        Ok(())
    }

    pub fn rms_norm<T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        x: &GpuTensor<T>,
        weight: &GpuTensor<T>,
        eps: f32,
    ) -> Result<()> {
        if out.rows != x.rows || out.cols != x.cols || weight.rows * weight.cols != x.cols {
            return Err(shape_err(
                "rms_norm",
                format!(
                    "[{}, {}] with a weight of {}",
                    x.rows,
                    x.cols,
                    weight.rows * weight.cols
                ),
            ));
        }
        let cols = x.cols as i32;
        let args = self.args(&[&out.data, &x.data, &weight.data, &cols, &eps]);
        // SAFETY: launch's contract. The shape checks above bound every index it computes.
        unsafe {
            self.launch(
                kernels::RMS_NORM.of::<T>(),
                rows_config(x.rows),
                Order::Serial,
                &args,
            )
        }?;
        Ok(())
    }

    /// `x += y`, then `out = RMSNorm(x)` in one pass.
    pub fn add_rms_norm<T: GpuFloat>(
        &self,
        x: &mut GpuTensor<T>,
        y: &GpuTensor<T>,
        out: &mut GpuTensor<T>,
        weight: &GpuTensor<T>,
        eps: f32,
    ) -> Result<()> {
        let same = |t: &GpuTensor<T>| t.rows == x.rows && t.cols == x.cols;
        if !same(y) || !same(out) || weight.rows * weight.cols != x.cols {
            return Err(shape_err(
                "add_rms_norm",
                format!(
                    "[{}, {}] += [{}, {}] into [{}, {}] with a weight of {}",
                    x.rows,
                    x.cols,
                    y.rows,
                    y.cols,
                    out.rows,
                    out.cols,
                    weight.rows * weight.cols
                ),
            ));
        }
        if x.rows == 0 {
            return Ok(());
        }
        let cols = x.cols as i32;
        let args = self.args(&[&x.data, &y.data, &out.data, &weight.data, &cols, &eps]);
        // SAFETY: launch's contract. The shape checks above make every row of x, y and out `cols`
        // wide.
        unsafe {
            self.launch(
                kernels::ADD_RMS_NORM.of::<T>(),
                rows_config(x.rows),
                Order::Serial,
                &args,
            )
        }?;
        Ok(())
    }

    pub fn add_assign<T: GpuFloat>(&self, x: &mut GpuTensor<T>, y: &GpuTensor<T>) -> Result<()> {
        if x.rows != y.rows || x.cols != y.cols {
            return Err(shape_err(
                "add_assign",
                format!("[{}, {}] += [{}, {}]", x.rows, x.cols, y.rows, y.cols),
            ));
        }
        let n = (x.rows * x.cols) as i64;
        let args = self.args(&[&x.data, &y.data, &n]);
        // SAFETY: launch's contract. The shape checks above bound every index it computes.
        unsafe {
            self.launch(
                kernels::ADD_ASSIGN.of::<T>(),
                grid_stride_config(n as usize),
                Order::Serial,
                &args,
            )
        }?;
        Ok(())
    }

    pub fn add_bias<T: GpuFloat>(&self, x: &mut GpuTensor<T>, bias: &GpuTensor<T>) -> Result<()> {
        if bias.rows * bias.cols != x.cols {
            return Err(shape_err(
                "add_bias",
                format!("{} columns but {} biases", x.cols, bias.rows * bias.cols),
            ));
        }
        let (n, cols) = ((x.rows * x.cols) as i64, x.cols as i32);
        let args = self.args(&[&x.data, &bias.data, &n, &cols]);
        // SAFETY: launch's contract. The shape checks above bound every index it computes.
        unsafe {
            self.launch(
                kernels::ADD_BIAS.of::<T>(),
                grid_stride_config(n as usize),
                Order::Serial,
                &args,
            )
        }?;
        Ok(())
    }

    /// `gate = silu(gate) ⊙ up`.
    pub fn silu_mul<T: GpuFloat>(&self, gate: &mut GpuTensor<T>, up: &GpuTensor<T>) -> Result<()> {
        if gate.rows != up.rows || gate.cols != up.cols {
            return Err(shape_err(
                "silu_mul",
                format!(
                    "[{}, {}] and [{}, {}]",
                    gate.rows, gate.cols, up.rows, up.cols
                ),
            ));
        }
        let n = (gate.rows * gate.cols) as i64;
        let args = self.args(&[&gate.data, &up.data, &n]);
        // SAFETY: launch's contract. The shape checks above bound every index it computes.
        unsafe {
            self.launch(
                kernels::SILU_MUL.of::<T>(),
                grid_stride_config(n as usize),
                Order::Serial,
                &args,
            )
        }?;
        Ok(())
    }

    /// Uploads a step's cos/sin table.
    /// The step's RoPE table in its step buffers (copied only when it changed).
    pub fn rope_table(&self, table: &RopeTable) -> Result<RopeOnDevice> {
        Ok(RopeOnDevice {
            cos: self.step_values(("rope cos", 0), &table.cos)?,
            sin: self.step_values(("rope sin", 0), &table.sin)?,
        })
    }

    /// Rotates the first `heads` head blocks of every row, as [`crate::backend::Backend::rope`].
    #[allow(clippy::too_many_arguments)]
    pub fn rope<T: GpuFloat>(
        &self,
        x: &mut GpuTensor<T>,
        table: &RopeTable,
        cos_sin: &RopeOnDevice,
        heads: usize,
        head_stride: usize,
        offset: usize,
    ) -> Result<()> {
        if table.rows() != x.rows
            || heads * head_stride > x.cols
            || offset + 2 * table.half > head_stride
        {
            return Err(shape_err(
                "rope",
                format!(
                    "[{}, {}], {} table rows, {heads} heads of stride {head_stride}",
                    x.rows,
                    x.cols,
                    table.rows()
                ),
            ));
        }
        let (cols, heads, stride, offset, half, inter) = (
            x.cols as i32,
            heads as i32,
            head_stride as i32,
            offset as i32,
            table.half as i32,
            table.interleaved as i32,
        );
        let args = self.args(&[
            &x.data,
            &cos_sin.cos,
            &cos_sin.sin,
            &cols,
            &heads,
            &stride,
            &offset,
            &half,
            &inter,
        ]);
        // SAFETY: launch's contract. The shape checks above bound every index it computes.
        unsafe {
            self.launch(
                kernels::ROPE.of::<T>(),
                rows_config(x.rows),
                Order::Serial,
                &args,
            )
        }?;
        Ok(())
    }

    /// RMSNorm of the latent and rotation of k_pe, as [`crate::backend::Backend::latent_epilogue`].
    pub fn latent_epilogue<T: GpuFloat>(
        &self,
        ckv: &mut GpuTensor<T>,
        norm: &GpuTensor<T>,
        eps: f32,
        table: &RopeTable,
        cos_sin: &RopeOnDevice,
    ) -> Result<()> {
        let r = norm.rows * norm.cols;
        if r + 2 * table.half != ckv.cols || table.rows() != ckv.rows {
            return Err(shape_err(
                "latent_epilogue",
                format!(
                    "[{}, {}] is not latent {r} + rope {}",
                    ckv.rows,
                    ckv.cols,
                    2 * table.half
                ),
            ));
        }
        let (r, half, inter) = (r as i32, table.half as i32, table.interleaved as i32);
        let args = self.args(&[
            &ckv.data,
            &norm.data,
            &cos_sin.cos,
            &cos_sin.sin,
            &r,
            &half,
            &eps,
            &inter,
        ]);
        // SAFETY: launch's contract. The shape checks above bound every index it computes.
        unsafe {
            self.launch(
                kernels::LATENT_EPILOGUE.of::<T>(),
                rows_config(ckv.rows),
                Order::Serial,
                &args,
            )
        }?;
        Ok(())
    }

    /// Columns `[offset, offset + width)` of row `i` of `x` into slot `slots[i]` of a cache
    /// layer of `width`-wide slots; `on_device` holds the same slots, uploaded (once per step by
    /// the backend, for every layer).
    pub fn write_kv_cache<T: GpuFloat>(
        &self,
        layer: &mut CudaViewMut<'_, T>,
        width: usize,
        x: &GpuTensor<T>,
        offset: usize,
        slots: &[u32],
        on_device: &StepValues<u32>,
    ) -> Result<()> {
        let capacity = layer.len() / width.max(1);
        if slots.len() != x.rows || on_device.len != slots.len().max(1) || offset + width > x.cols {
            return Err(shape_err(
                "write_kv_cache",
                format!(
                    "[{}, {}] from column {offset}, width {width}, {} slots",
                    x.rows,
                    x.cols,
                    slots.len()
                ),
            ));
        }
        if let Some(&bad) = slots.iter().find(|&&s| s as usize >= capacity) {
            return Err(shape_err(
                "write_kv_cache",
                format!("slot {bad} of {capacity}"),
            ));
        }
        let (cols, offset, width) = (x.cols as i32, offset as i32, width as i32);
        let args = self.args(&[layer, &x.data, on_device, &cols, &offset, &width]);
        // SAFETY: launch's contract. The shape checks above bound every index it computes.
        unsafe {
            self.launch(
                kernels::WRITE_KV_CACHE.of::<T>(),
                rows_config(x.rows),
                Order::Serial,
                &args,
            )
        }?;
        Ok(())
    }

    /// Copies cache blocks `(from, to)` in every layer of a `[layers][blocks][block_elems]` cache.
    pub fn copy_blocks<T: GpuFloat>(
        &self,
        cache: &mut CudaSlice<T>,
        layers: usize,
        block_elems: usize,
        pairs: &[(u32, u32)],
    ) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let blocks = cache.len() / (layers * block_elems).max(1);
        if let Some(&(a, b)) = pairs
            .iter()
            .find(|&&(a, b)| a as usize >= blocks || b as usize >= blocks)
        {
            return Err(shape_err(
                "copy_blocks",
                format!("block {a} → {b} of {blocks}"),
            ));
        }
        let flat: Vec<u32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        let flat = self.upload_values(&flat)?;
        let (block_elems, layer_elems) = (block_elems as i64, (blocks * block_elems) as i64);
        let cfg = LaunchConfig {
            grid_dim: (pairs.len() as u32, layers as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = self.args(&[cache, &flat, &block_elems, &layer_elems]);
        // SAFETY: launch's contract. The shape checks above bound every index it computes.
        unsafe { self.launch(kernels::COPY_BLOCKS.of::<T>(), cfg, Order::Serial, &args) }?;
        Ok(())
    }
}
