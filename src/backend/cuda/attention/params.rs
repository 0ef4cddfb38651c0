//! The params structs of the attention kernels, mirrored field for field from
//! `kernels/attention/params.cuh` (and `TmaAttentionParams` from seesaw.cu): device addresses as
//! `u64`, counts as `i32`. Both sides assert the same sizes and offsets, so a field added to one
//! side alone fails the build there.

use super::layout::Segment;
use super::schedule::{RowGroup, WorkItem, ROWS};
use crate::backend::cuda::launch::KernelParams;
use crate::kv::cache_dtype::Fp8RowParts;
use std::mem::{offset_of, size_of};

/// Where a key or value segment lives in its buffer: row `i` starts at
/// `i·width + offset + kv_head·head_stride`, `len` values from there.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeySegment {
    pub width: i32,
    pub offset: i32,
    pub head_stride: i32,
    pub len: i32,
}

impl From<&Segment> for KeySegment {
    fn from(s: &Segment) -> Self {
        KeySegment {
            width: s.width as i32,
            offset: s.offset as i32,
            head_stride: s.head_stride as i32,
            len: s.len as i32,
        }
    }
}

/// Every tensor-core attention kernel's params (see params.cuh for each field); null addresses
/// are 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AttentionParams {
    pub q1: u64,
    pub q2: u64,
    pub k1: u64,
    pub k2: u64,
    pub v: u64,
    pub items: u64,
    pub block_tables: u64,
    pub table_start: u64,
    pub token_pos: u64,
    pub partial_o: u64,
    pub partial_lse: u64,
    pub out: u64,
    pub lse_out: u64,
    pub groups: u64,
    pub split_counts: u64,
    pub s1: KeySegment,
    pub s2: KeySegment,
    pub sv: KeySegment,
    pub q1_stride: i32,
    pub q1_head_stride: i32,
    pub q2_stride: i32,
    pub q2_head_stride: i32,
    pub v_in_k: i32,
    pub block_size: i32,
    pub heads: i32,
    pub scale: f32,
    pub window: i32,
    pub units: i32,
}

/// Byte offsets of the WMMA kernel's layout-dependent shared-memory parts (q at 0).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WmmaShared {
    pub k: i32,
    pub v: i32,
    pub s: i32,
    pub p: i32,
    pub o: i32,
    pub stats: i32,
}

/// attention_wmma_bf16's params.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WmmaParams {
    pub attention: AttentionParams,
    pub shared: WmmaShared,
}

/// attention_combine_bf16's params.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CombineParams {
    pub partial_o: u64,
    pub partial_lse: u64,
    pub groups: u64,
    pub out: u64,
    pub lse_out: u64,
    pub dv: i32,
}

/// paged_attention's params (f32 or bf16 alike).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ExactParams {
    pub partial_o: u64,
    pub partial_lse: u64,
    pub q1: u64,
    pub q2: u64,
    pub k1: u64,
    pub k2: u64,
    pub v: u64,
    pub block_tables: u64,
    pub table_start: u64,
    pub row_seq: u64,
    pub row_pos: u64,
    pub split_len: u64,
    pub s1: KeySegment,
    pub s2: KeySegment,
    pub sv: KeySegment,
    pub q1_stride: i32,
    pub q1_head_stride: i32,
    pub q2_stride: i32,
    pub q2_head_stride: i32,
    pub heads: i32,
    pub group: i32,
    pub block_size: i32,
    pub window: i32,
    pub scale: f32,
}

/// combine_splits' params.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ExactCombineParams {
    pub out: u64,
    pub partial_o: u64,
    pub partial_lse: u64,
    pub jobs: i32,
    pub splits: i32,
    pub dv: i32,
}

/// Where an FP8 cache row keeps what (kernels/fp8.cuh), in bytes and values.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fp8RowFormat {
    pub row_bytes: i32,
    pub codes: i32,
    pub group: i32,
    pub scales_at: i32,
    pub tail_at: i32,
}

impl From<Fp8RowParts> for Fp8RowFormat {
    fn from(p: Fp8RowParts) -> Self {
        let i = |x: usize| x as i32;
        Fp8RowFormat {
            row_bytes: i(p.row_bytes),
            codes: i(p.codes),
            group: i(p.group),
            scales_at: i(p.scales_at),
            tail_at: i(p.tail_at),
        }
    }
}

/// paged_attention_fp8's params: [`ExactParams`] (its key and value addresses unused) and the
/// FP8 rows.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ExactFp8Params {
    pub exact: ExactParams,
    pub rows: u64,
    pub format: Fp8RowFormat,
}

/// The FP8 builds of the mma.sync kernels: [`AttentionParams`] (its key and value addresses
/// unused) and the FP8 rows.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Fp8AttentionParams {
    pub attention: AttentionParams,
    pub rows: u64,
    pub format: Fp8RowFormat,
}

/// attention_wgmma_seesaw_tma_latent576_bf16's params: [`AttentionParams`] and the tensor map
/// of the cache rows (128-byte aligned, as the bulk copies need).
#[cfg(feature = "experimental-kernels")]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TmaAttentionParams {
    pub attention: AttentionParams,
    pub kv_map: super::tensor_map::KvTensorMap,
}

// The sizes and offsets params.cuh asserts.
const _: () = {
    assert!(size_of::<KeySegment>() == 16);
    assert!(size_of::<WorkItem>() == 4 * (5 + ROWS));
    assert!(size_of::<RowGroup>() == 4 * (3 + ROWS));
    assert!(size_of::<AttentionParams>() == 208);
    assert!(offset_of!(AttentionParams, split_counts) == 112);
    assert!(offset_of!(AttentionParams, s1) == 120 && offset_of!(AttentionParams, sv) == 152);
    assert!(offset_of!(AttentionParams, q1_stride) == 168);
    assert!(offset_of!(AttentionParams, units) == 204);
    assert!(size_of::<WmmaParams>() == 232 && offset_of!(WmmaParams, shared) == 208);
    assert!(size_of::<CombineParams>() == 48 && offset_of!(CombineParams, dv) == 40);
    assert!(size_of::<ExactParams>() == 184 && offset_of!(ExactParams, s1) == 96);
    assert!(offset_of!(ExactParams, q1_stride) == 144);
    assert!(offset_of!(ExactParams, scale) == 176);
    assert!(size_of::<ExactCombineParams>() == 40 && offset_of!(ExactCombineParams, dv) == 32);
    assert!(size_of::<Fp8RowFormat>() == 20);
    assert!(size_of::<ExactFp8Params>() == 216 && offset_of!(ExactFp8Params, format) == 192);
    assert!(size_of::<Fp8AttentionParams>() == 240);
    assert!(offset_of!(Fp8AttentionParams, format) == 216);
};
#[cfg(feature = "experimental-kernels")]
const _: () = {
    assert!(size_of::<TmaAttentionParams>() == 384);
    assert!(offset_of!(TmaAttentionParams, kv_map) == 256);
};

// SAFETY (each): #[repr(C)] mirrors of the params.cuh structs, layouts asserted above on both
// sides; the addresses in them are the launching op's to vouch for.
unsafe impl KernelParams for AttentionParams {}
// SAFETY: as above.
unsafe impl KernelParams for WmmaParams {}
// SAFETY: as above.
unsafe impl KernelParams for CombineParams {}
// SAFETY: as above.
unsafe impl KernelParams for ExactParams {}
// SAFETY: as above.
unsafe impl KernelParams for ExactCombineParams {}
// SAFETY: as above.
unsafe impl KernelParams for ExactFp8Params {}
// SAFETY: as above.
unsafe impl KernelParams for Fp8AttentionParams {}
// SAFETY: as above (seesaw.cu asserts this one).
#[cfg(feature = "experimental-kernels")]
unsafe impl KernelParams for TmaAttentionParams {}
