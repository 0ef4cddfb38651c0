//! The CUDA backend's paged cache: every layer's rows in one allocation, of values (f32 or
//! bf16) or of FP8 row bytes (`kv::fp8_layout`), and its allocation and row writes.

use super::backend::op_err;
use super::{CudaBackend, GpuFloat, GpuTensor};
use crate::error::{Error, Result};
use crate::kv::cache_dtype::{CacheRows, Fp8Layout};
use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::CudaSlice;

/// Every layer's paged cache in one allocation: `[layers][num_blocks][block_size]` rows of
/// `width` values, each `stride` elements of `T` of storage: the values themselves, or (`fp8`)
/// the bytes of an FP8 row.
pub struct CudaKvCache<T> {
    pub layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    /// Values per row.
    pub width: usize,
    /// Elements of `T` per row.
    pub stride: usize,
    pub fp8: Option<Fp8Layout>,
    pub data: CudaSlice<T>,
}

impl<T> CudaKvCache<T> {
    pub(super) fn layer_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }

    /// Elements of `T` per layer.
    pub(super) fn layer_len(&self) -> usize {
        self.layer_slots() * self.stride
    }

    pub(super) fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.layers {
            return Err(Error::Op {
                op: "kv_cache",
                message: format!("layer {layer} of {}", self.layers),
            });
        }
        Ok(())
    }
}

impl<T: GpuFloat> CudaBackend<T>
where
    CudaBlas: Gemm<T>,
{
    /// A cache of `rows` (`Backend::alloc_cache_rows`): values of `T`, or FP8 rows; a bf16
    /// cache under f32 activations, and FP8 rows the kernels cannot address, are refused.
    pub(super) fn new_kv_cache(
        &self,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        rows: CacheRows,
    ) -> Result<CudaKvCache<T>> {
        let layout = match rows {
            CacheRows::Native { width } => {
                let mut data = self.cache_storage(layers, num_blocks, block_size, width)?;
                // Fresh slots hold NaN so that attention reading a slot nobody wrote shows.
                self.device.fill(&mut data, f32::NAN)?;
                return Ok(CudaKvCache {
                    layers,
                    num_blocks,
                    block_size,
                    width,
                    stride: width,
                    fp8: None,
                    data,
                });
            }
            CacheRows::Bf16 { .. } => {
                return Err(Error::InvalidInput(
                    "--kv-cache-dtype bf16 needs bf16 activations on a GPU (--dtype bf16)".into(),
                ))
            }
            CacheRows::Fp8(layout) => layout,
        };
        let parts = layout.parts();
        // The kernels read scales as aligned f32 and the tail as aligned bf16 (fp8.cuh).
        if parts.row_bytes % 4 != 0 || parts.scales_at % 4 != 0 || parts.tail_at % 2 != 0 {
            return Err(Error::InvalidInput(format!(
                "an FP8 KV cache on a GPU needs rows of a multiple of 4 bytes; {layout:?} has {}",
                parts.row_bytes
            )));
        }
        let stride = parts.row_bytes / std::mem::size_of::<T>();
        let data = self.cache_storage(layers, num_blocks, block_size, stride)?;
        // Fresh slots are all-ones bytes: NaN codes, scales and tail, as on the CPU.
        self.device.fill_bytes(&data, 0xff)?;
        Ok(CudaKvCache {
            layers,
            num_blocks,
            block_size,
            width: layout.width(),
            stride,
            fp8: Some(layout),
            data,
        })
    }

    /// `Backend::write_kv_cache`: values as they are, or quantized into FP8 rows.
    pub(super) fn write_cache_rows(
        &self,
        cache: &mut CudaKvCache<T>,
        layer: usize,
        x: &GpuTensor<T>,
        offset: usize,
        slots: &[u32],
    ) -> Result<()> {
        cache.check_layer(layer)?;
        let per_layer = cache.layer_slots();
        if let Some(&bad) = slots.iter().find(|&&s| s as usize >= per_layer) {
            return Err(op_err(
                "write_kv_cache",
                format!("slot {bad} of {per_layer}"),
            ));
        }
        if x.rows == 0 {
            return Ok(());
        }
        // Every layer writes the step's slots (into its own part of the cache): copied once.
        let on_device = self.device.step_values(("cache slots", 0), slots)?;
        let (width, len, fp8) = (cache.width, cache.layer_len(), cache.fp8);
        let mut layer_view = cache.data.slice_mut(layer * len..(layer + 1) * len);
        match fp8 {
            None => {
                self.device
                    .write_kv_cache(&mut layer_view, width, x, offset, slots, &on_device)
            }
            Some(layout) => self.device.write_kv_cache_fp8(
                &mut layer_view,
                layout,
                x,
                offset,
                slots,
                &on_device,
            ),
        }
    }

    /// Uninitialised storage for `layers` × `num_blocks` × `block_size` cache rows of `stride`
    /// elements, if the GPU has room.
    fn cache_storage(
        &self,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        stride: usize,
    ) -> Result<CudaSlice<T>> {
        let len = layers * num_blocks * block_size * stride;
        let bytes = len * std::mem::size_of::<T>();
        let free = self.device.free_memory()?;
        if bytes > free {
            return Err(Error::InvalidInput(format!(
                "a KV cache of {num_blocks} blocks × {block_size} tokens × {layers} layers needs {bytes} bytes, more than the {free} bytes free on {}",
                self.device.info.name
            )));
        }
        // SAFETY: the caller fills it before anything reads it.
        unsafe { self.device.stream.alloc::<T>(len.max(1)) }.map_err(super::driver_err(format!(
            "allocating a KV cache of {bytes} bytes on {}",
            self.device.info.name
        )))
    }
}
