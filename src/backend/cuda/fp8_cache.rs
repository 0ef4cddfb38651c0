//! FP8 cache rows on the device (kernels/fp8_cache.cu): the cache write, which quantizes as the
//! CPU reference does (`kv::fp8_layout`), the gather of a context's rows dequantized, and the
//! rows' bytes read back for tests.

use super::attention::params::Fp8RowFormat;
use super::backend::op_err;
use super::kernels;
use super::launch::Order;
use super::{CudaDevice, CudaKvCache, GpuFloat, GpuTensor, StepValues};
use crate::error::Result;
use crate::kv::cache_dtype::Fp8Layout;
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig};

const THREADS: u32 = 128;

fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaDevice {
    /// Columns `[offset, offset + width)` of row `i` of `x` as an FP8 row of `layout` into slot
    /// `slots[i]` of a cache layer (`on_device`: the same slots, uploaded once per step).
    pub fn write_kv_cache_fp8<T: GpuFloat>(
        &self,
        layer: &mut CudaViewMut<'_, T>,
        layout: Fp8Layout,
        x: &GpuTensor<T>,
        offset: usize,
        slots: &[u32],
        on_device: &StepValues<u32>,
    ) -> Result<()> {
        let (parts, width) = (layout.parts(), layout.width());
        let capacity = layer.len() * size_of::<T>() / parts.row_bytes;
        if slots.len() != x.rows || on_device.len != slots.len().max(1) || offset + width > x.cols {
            return Err(op_err(
                "write_kv_cache",
                format!(
                    "[{}, {}] from column {offset}, {width} values, {} slots",
                    x.rows,
                    x.cols,
                    slots.len()
                ),
            ));
        }
        if let Some(&bad) = slots.iter().find(|&&s| s as usize >= capacity) {
            return Err(op_err(
                "write_kv_cache",
                format!("slot {bad} of {capacity}"),
            ));
        }
        if x.rows == 0 {
            return Ok(());
        }
        let (cols, offset, width) = (x.cols as i32, offset as i32, width as i32);
        let format = Fp8RowFormat::from(parts);
        let args = self.args(&[layer, &x.data, on_device, &cols, &offset, &width, &format]);
        // SAFETY: launch's contract. The checks above bound every slot by the layer and every
        // column by `x`; the format's parts lie within a row (Fp8Layout::parts).
        unsafe {
            self.launch(
                kernels::WRITE_KV_CACHE_FP8.of::<T>(),
                rows_config(x.rows),
                Order::Serial,
                &args,
            )
        }
    }

    /// Row `i` of `out` = the values of FP8 row `rows[i]` of a cache layer, dequantized.
    pub fn gather_fp8_rows<T: GpuFloat>(
        &self,
        out: &mut GpuTensor<T>,
        layer: &CudaView<'_, T>,
        layout: Fp8Layout,
        rows: &[u32],
        key: &'static str,
    ) -> Result<()> {
        let parts = layout.parts();
        let capacity = layer.len() * size_of::<T>() / parts.row_bytes;
        if out.rows != rows.len() || out.cols != layout.width() {
            return Err(op_err(
                "gather_fp8_rows",
                format!(
                    "{} rows of {} values into [{}, {}]",
                    rows.len(),
                    layout.width(),
                    out.rows,
                    out.cols
                ),
            ));
        }
        if let Some(bad) = rows.iter().find(|&&r| r as usize >= capacity) {
            return Err(op_err(
                "gather_fp8_rows",
                format!("row {bad} of {capacity}"),
            ));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let idx = self.step_values((key, 0), rows)?;
        let (width, format) = (out.cols as i32, Fp8RowFormat::from(parts));
        let args = self.args(&[&out.data, layer, &idx, &width, &format]);
        // SAFETY: launch's contract. Every row index was checked against the layer above and
        // `out` has one row of `width` values per index.
        unsafe {
            self.launch(
                kernels::GATHER_FP8_ROWS.of::<T>(),
                rows_config(rows.len()),
                Order::Serial,
                &args,
            )
        }
    }

    /// The bytes of every row of `layer` of an FP8 cache (`[slots, row bytes]`), for tests that
    /// compare them with the CPU's.
    pub fn fp8_cache_bytes<T: GpuFloat>(
        &self,
        cache: &CudaKvCache<T>,
        layer: usize,
    ) -> Result<Vec<u8>> {
        cache.check_layer(layer)?;
        if cache.fp8.is_none() {
            return Err(op_err("fp8_cache_bytes", "the cache is not FP8".into()));
        }
        let bytes = cache.layer_len() * size_of::<T>();
        let address = self.address(&cache.data) + (layer * bytes) as u64;
        self.fetch_parts(&[(address, bytes)], "the FP8 cache", |parts| {
            parts[0].to_vec()
        })
    }
}
