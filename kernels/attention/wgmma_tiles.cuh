// What the 64-row wgmma kernels (wgmma.cu, seesaw.cu) share: a CTA's quad of 16-row runs and
// the load of its query rows into the swizzle.
#pragma once
#include "common.cuh"
#include "attention/rows.cuh"
#include "attention/shared.cuh"
#include "ptx/mma.cuh"
#include "ptx/wgmma.cuh"


// A CTA's job: quad b of 16-row runs (items[4·b …]), its sequence's block table, the cached
// tokens [kv_begin, kv_end) of its split and their KV head, and its tiles.
struct WgCta {
    const WorkItem* quad;
    const uint32_t* table;
    int kv_begin, kv_end, kv_head, tiles;
};

__device__ __forceinline__ WgCta wg_cta(const WorkItem* items, const uint32_t* block_tables,
                                        const uint32_t* table_start, int b) {
    const WorkItem* quad = items + (size_t)b * WG_RUNS;
    const int kv_begin = quad[0].kv_begin, kv_end = quad[0].kv_end;
    return WgCta{quad, block_tables + table_start[quad[0].seq], kv_begin, kv_end, (int)quad[0].kv_head,
                 (kv_end - kv_begin + WG_TILE - 1) / WG_TILE};
}

// A quad's 64 query rows into the swizzle at q_s (eight threads per 128-byte line, copies not
// committed) and the rows' positions into pos_s (-1 for NO_ROW), read after a barrier.
__device__ __forceinline__ void load_quad_rows(unsigned char* q_s, int* pos_s, const WorkItem* quad, const bf16* q1,
                                               int q1_stride, int q1_head_stride, const bf16* q2, int q2_stride,
                                               int q2_head_stride, int len1, const uint32_t* token_pos, int heads) {
    for (int idx = threadIdx.x; idx < WG_ROWS * LATENT / 8; idx += blockDim.x) {
        const int r = idx / 8 % WG_ROWS, c = idx / (8 * WG_ROWS) * 64 + idx % 8 * 8;
        load_query_piece(reinterpret_cast<bf16*>(q_s + swizzled_offset(r, c, WG_ROWS)), quad[r / ROWS].rows[r % ROWS],
                         c, q1, q1_stride, q1_head_stride, q2, q2_stride, q2_head_stride, len1, heads);
    }
    if (threadIdx.x < WG_ROWS) {
        const uint32_t pair = quad[threadIdx.x / ROWS].rows[threadIdx.x % ROWS];
        pos_s[threadIdx.x] = pair == NO_ROW ? -1 : (int)token_pos[pair / heads];
    }
}
