// The work items of the tensor-core attention kernels (attention_tc.cu, attention_mma.cu) and
// their combine; mirror `TcItem`, `TcGroup` and `KeySegment` on the Rust side.
#pragma once
#include <stdint.h>
#include "common.cuh"

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

// The running state of an item's rows before its first tile: no max, no sum, each row's
// position (-1 for NO_ROW: it sees nothing). Threads below ROWS write it.
__device__ __forceinline__ void init_rows(const TcItem& item, const uint32_t* token_pos, int heads, float* m_s,
                                          float* l_s, int* pos_s) {
    if (threadIdx.x < ROWS) {
        const int i = threadIdx.x;
        m_s[i] = -INFINITY;
        l_s[i] = 0.0f;
        pos_s[i] = item.rows[i] == NO_ROW ? -1 : (int)token_pos[item.rows[i] / heads];
    }
}

// Whether a query row at position `pos` sees cached token `p` of a split ending at kv_end.
__device__ __forceinline__ bool visible(int p, int kv_end, int pos, int window) {
    return p < kv_end && p <= pos && (window <= 0 || p > pos - window);
}

// One tile's step of the online softmax (base 2) for row i, by one warp, lane = key: x is the
// lane's scaled score (-inf where masked). Writes the key's probability to p_row[lane] and, from
// lane 0, the row's new running max, sum and rescale factor.
__device__ __forceinline__ void online_softmax_row(float x, int i, float* m_s, float* l_s, float* alpha_s, bf16* p_row) {
    const int lane = threadIdx.x & 31;
    const float m_old = m_s[i];
    const float m_new = fmaxf(m_old, warp_max(x));
    const float prob = m_new == -INFINITY ? 0.0f : exp2f(x - m_new);
    const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_old - m_new);
    const float row_sum = warp_sum(prob);
    p_row[lane] = from_f32<bf16>(prob);
    __syncwarp();  // every lane has read m_s[i] before lane 0 rewrites it
    if (lane == 0) {
        m_s[i] = m_new;
        l_s[i] = l_s[i] * alpha + row_sum;
        alpha_s[i] = alpha;
    }
}

// The splits of one row group, for the combine: items item_first + j·item_stride, j < items
// (a stride of 4 where a CTA serves four row groups at once).
struct TcGroup {
    uint32_t item_first, items, item_stride;
    uint32_t rows[ROWS];
};
