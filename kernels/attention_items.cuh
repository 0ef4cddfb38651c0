// The work items of the tensor-core attention kernels (attention_tc.cu, attention_mma.cu) and
// their combine; mirror `TcItem`, `TcGroup` and `KeySegment` on the Rust side.
#pragma once
#include <stdint.h>

#define ROWS 16
#define KV_TILE 32
#define NO_ROW 0xffffffffu
#define LOG2E 1.4426950408889634f

// Row `i` of a key or value segment starts at i·width + offset + kv_head·head_stride.
struct KeySegment {
    int width, offset, head_stride, len;
};

// One CTA's job: up to ROWS query rows (token · heads + head) of one sequence and KV head, over
// the cached tokens [kv_begin, kv_end).
struct TcItem {
    uint32_t seq, kv_head, kv_begin, kv_end;
    uint32_t rows[ROWS];
};

// The splits of one row group, for the combine: items item_first + j·item_stride, j < items
// (a stride of 4 where a CTA serves four row groups at once).
struct TcGroup {
    uint32_t item_first, items, item_stride;
    uint32_t rows[ROWS];
};
