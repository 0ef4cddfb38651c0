// The seam between the host and the attention kernels: one params struct per kernel family,
// passed as one `__grid_constant__` argument and mirrored field for field by a #[repr(C)] struct
// in src/backend/cuda/attention/params.rs; both sides assert sizes and offsets. The work items
// and row groups of the split-KV schedule (src/backend/cuda/attention/schedule.rs) too.
// docs/kernels.md, "The kernel/host seam".
#pragma once
#include <stddef.h>
#include <stdint.h>
#include "common.cuh"
#include "fp8.cuh"

#define ROWS 16                // query rows of a run (one mma M tile)
#define KV_TILE 32             // cached tokens of a tile of the 16-row kernels
#define NO_ROW 0xffffffffu     // an empty row of a run
#define NO_GROUP 0xffffffffu   // a run of no row group (the empty runs that fill a 64-row unit)

// Row `i` of a key or value segment starts at i·width + offset + kv_head·head_stride; `len`
// values from there.
struct KeySegment {
    int width, offset, head_stride, len;
};

// One item: up to ROWS query rows (token · heads + head) of one sequence and KV head, over the
// cached tokens [kv_begin, kv_end) (one split); `group`: the row group it is a split of.
struct WorkItem {
    uint32_t seq, kv_head, kv_begin, kv_end;
    uint32_t rows[ROWS];
    uint32_t group;
};

// The splits of one row group, for the combine: items item_first + j·item_stride, j < items.
struct RowGroup {
    uint32_t item_first, items, item_stride;
    uint32_t rows[ROWS];
};

// Every tensor-core attention kernel: query segments q1 (`q1_stride` values per token,
// `q1_head_stride` per head) and q2; key segments k1, k2 and values v (`v_in_k`: the values are
// the keys' first columns); the work items, block tables and positions of the step; partial
// outputs for the combine (null where each row group has one split and the kernel writes `out`
// and `lse_out` itself); `lse_out` null where no LSE is wanted; `split_counts` null unless the
// kernel merges its own splits (experimental); `units`: the CTA units the items hold.
struct AttentionParams {
    const bf16* q1;
    const bf16* q2;
    const bf16* k1;
    const bf16* k2;
    const bf16* v;
    const WorkItem* items;
    const uint32_t* block_tables;
    const uint32_t* table_start;
    const uint32_t* token_pos;
    float* partial_o;
    float* partial_lse;
    bf16* out;
    float* lse_out;
    const RowGroup* groups;
    uint32_t* split_counts;
    KeySegment s1, s2, sv;
    int q1_stride, q1_head_stride, q2_stride, q2_head_stride;
    int v_in_k, block_size, heads;
    float scale;
    int window, units;
};
static_assert(sizeof(AttentionParams) == 208, "mirrored in params.rs");
static_assert(offsetof(AttentionParams, split_counts) == 112, "mirrored in params.rs");
static_assert(offsetof(AttentionParams, s1) == 120 && offsetof(AttentionParams, sv) == 152, "mirrored in params.rs");
static_assert(offsetof(AttentionParams, q1_stride) == 168 && offsetof(AttentionParams, units) == 204,
              "mirrored in params.rs");

// The 16- and 64-row mma.sync kernels over FP8 cache rows (fp8.cuh): `attention`'s key and value
// pointers unused, its segments' offsets and head strides counted in the rows' values.
struct Fp8AttentionParams {
    AttentionParams attention;
    const uint8_t* rows;
    Fp8RowFormat format;
};
static_assert(sizeof(Fp8AttentionParams) == 240 && offsetof(Fp8AttentionParams, format) == 216,
              "mirrored in params.rs");

// Byte offsets of the WMMA kernel's shared-memory parts (q at 0), which depend on the layout's
// widths: the host computes them with the total (kernel_choice.rs), the kernel only reads them.
struct WmmaShared {
    int k, v, s, p, o, stats;
};

// The WMMA kernel (wmma.cu).
struct WmmaParams {
    AttentionParams attention;
    WmmaShared shared;
};
static_assert(sizeof(WmmaParams) == 232 && offsetof(WmmaParams, shared) == 208, "mirrored in params.rs");

// attention_combine_bf16 (combine.cu): merges each row group's splits into `out` (dv values per
// row) and `lse_out` (null: none).
struct CombineParams {
    const float* partial_o;
    const float* partial_lse;
    const RowGroup* groups;
    bf16* out;
    float* lse_out;
    int dv;
};
static_assert(sizeof(CombineParams) == 48 && offsetof(CombineParams, dv) == 40, "mirrored in params.rs");

// The exact kernel (exact.cu), f32 or bf16 (same layout): per (split, row, head) a partial output
// and LSE from segments as above; `row_seq`, `row_pos`: each query row's sequence and position;
// `group` query heads per KV head; `*split_len` cached tokens per split (in device memory, so
// that a captured launch serves steps whose longest context differs).
template <typename T> struct ExactParams {
    float* partial_o;
    float* partial_lse;
    const T* q1;
    const T* q2;
    const T* k1;
    const T* k2;
    const T* v;
    const uint32_t* block_tables;
    const uint32_t* table_start;
    const uint32_t* row_seq;
    const uint32_t* row_pos;
    const uint32_t* split_len;
    KeySegment s1, s2, sv;
    int q1_stride, q1_head_stride, q2_stride, q2_head_stride;
    int heads, group, block_size, window;
    float scale;
};
static_assert(sizeof(ExactParams<float>) == 184 && offsetof(ExactParams<float>, s1) == 96, "mirrored in params.rs");
static_assert(offsetof(ExactParams<float>, q1_stride) == 144 && offsetof(ExactParams<float>, scale) == 176,
              "mirrored in params.rs");

// The exact kernel over FP8 cache rows (fp8.cuh): `exact`'s key and value pointers unused, its
// segments' offsets and head strides counted in the rows' values.
template <typename T> struct ExactFp8Params {
    ExactParams<T> exact;
    const uint8_t* rows;
    Fp8RowFormat format;
};
static_assert(sizeof(ExactFp8Params<float>) == 216 && offsetof(ExactFp8Params<float>, format) == 192,
              "mirrored in params.rs");

// The exact kernel's combine: `jobs` (row, head) outputs of dv values from `splits` splits.
template <typename T> struct ExactCombineParams {
    T* out;
    const float* partial_o;
    const float* partial_lse;
    int jobs, splits, dv;
};
static_assert(sizeof(ExactCombineParams<float>) == 40 && offsetof(ExactCombineParams<float>, dv) == 32,
              "mirrored in params.rs");
