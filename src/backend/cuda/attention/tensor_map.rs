//! Tensor maps for the tensor memory accelerator (Hopper's bulk copies): the latent cache as a
//! 2-D tensor of rows, which `attention_wgmma_seesaw_tma_latent576_bf16` copies into shared
//! memory a box (64 latent values × up to 64 tokens of one page) per bulk copy, in the 128-byte
//! swizzle its wgmma read.

use super::layout::AttentionLayout;
use crate::backend::cuda::error::driver_err;
use crate::error::Result;
use cudarc::driver::sys::{
    self, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};

/// Latent values per box row: one 128-byte swizzle span of bf16.
const BOX_COLUMNS: u32 = 64;
/// Tokens per shared-memory tile of the 64-row kernels (a box holds at most one tile).
pub(super) const TILE_TOKENS: usize = 64;

/// A CUtensorMap, which a kernel takes by value (a `const __grid_constant__ TensorMap`
/// argument, kernels/barriers.cuh: the same 128 bytes, 128-byte aligned).
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct KvTensorMap(sys::CUtensorMap);

/// Whether the keys of `l` are whole rows of one buffer that bulk copies can bring in 64-value
/// boxes: k2 continues k1 in the same rows, one KV head, widths a multiple of the box.
pub(super) fn keys_are_rows(l: &AttentionLayout) -> bool {
    let (k1, k2) = (&l.k1, &l.k2);
    k1.source == k2.source
        && k1.width == k2.width
        && k2.offset == k1.offset + k1.len
        && k1.head_stride == 0
        && k2.head_stride == 0
        && (k1.len + k2.len) % BOX_COLUMNS as usize == 0
}

/// Tokens per box for pages of `block_size` tokens: a whole 64-token tile where pages hold
/// whole tiles, else a page (tiles start at multiples of 64 tokens, so a box never crosses a
/// page); none for pages that would need more than four boxes per tile or do not tile evenly.
pub(super) fn box_tokens(block_size: usize) -> Option<usize> {
    match block_size {
        b if b % TILE_TOKENS == 0 => Some(TILE_TOKENS),
        b if b >= 16 && TILE_TOKENS % b == 0 => Some(b),
        _ => None,
    }
}

/// The map over the cache rows at `address` (`rows` of `row_values` bf16, the keys the first
/// `key_values` of each), in boxes of 64 values × `box_tokens` rows.
pub(super) fn cache_rows_map(
    address: sys::CUdeviceptr,
    rows: usize,
    row_values: usize,
    key_values: usize,
    box_tokens: usize,
) -> Result<KvTensorMap> {
    let bf16_bytes = 2u64;
    let dims = [key_values as u64, rows as u64];
    let strides = [row_values as u64 * bf16_bytes];
    let boxes = [BOX_COLUMNS, box_tokens as u32];
    let element_strides = [1u32, 1];
    // SAFETY: a zeroed CUtensorMap is a valid (opaque) value for the encoder to overwrite.
    let mut map: sys::CUtensorMap = unsafe { std::mem::zeroed() };
    // SAFETY: every array holds the rank's entries (strides one fewer); the encoder only writes
    // `map` and reads the arrays during the call; `address` is a device address, which it does
    // not dereference.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            address as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(driver_err(format!(
        "tensor map of {rows} cache rows × {key_values} of {row_values} bf16 at {address:#x}, \
         boxes of {box_tokens} rows"
    )))?;
    Ok(KvTensorMap(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::attention::layout::{absorbed_layout, materialised_layout};
    use crate::backend::MlaDims;

    #[test]
    fn the_latent_keys_are_whole_cache_rows() {
        let dims = MlaDims::deepseek(16, 0.07);
        assert!(keys_are_rows(&absorbed_layout(&dims)));
        assert!(!keys_are_rows(&materialised_layout(&dims)));
    }

    #[test]
    fn boxes_hold_a_tile_or_a_page() {
        assert_eq!(box_tokens(64), Some(64));
        assert_eq!(box_tokens(128), Some(64));
        assert_eq!(box_tokens(32), Some(32));
        assert_eq!(box_tokens(16), Some(16));
        assert_eq!(box_tokens(8), None);
        assert_eq!(box_tokens(48), None);
    }
}
