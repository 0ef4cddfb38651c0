// The work items of the tensor-core attention kernels (attention_tc.cu, attention_mma.cu) and
// their combine; mirror `TcItem`, `TcGroup` and `KeySegment` on the Rust side.
#pragma once
#include <stdint.h>
#include "common.cuh"

#define ROWS 16
#define KV_TILE 32
#define NO_ROW 0xffffffffu
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

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

// Where a CTA's finished rows go. With `out` (the step gives every row group one split, so no
// combine runs): values straight into row `pair` of the output (dv bf16 per row) and the LSE,
// natural log, into lse_out[pair]; NO_ROW rows nowhere. Else into the partial buffers of item
// `item` (row `row` of it, ROWS rows of dv f32 per item; base-2 LSE) for attention_tc_combine.
// Columns col, col + 1 of one row, already divided by the row's sum.
__device__ __forceinline__ void store_row_pair(bf16* out, float* partial_o, size_t item, int row, uint32_t pair,
                                               int dv, int col, float a, float b) {
    if (out != nullptr) {
        if (pair == NO_ROW) return;
        out[(size_t)pair * dv + col] = from_f32<bf16>(a);
        out[(size_t)pair * dv + col + 1] = from_f32<bf16>(b);
    } else {
        *reinterpret_cast<float2*>(partial_o + (item * ROWS + row) * dv + col) = make_float2(a, b);
    }
}

// The row's log-sum-exp of its scaled scores from its running max m and sum l (base 2).
__device__ __forceinline__ void store_row_lse(float* lse_out, float* partial_lse, size_t item, int row, uint32_t pair,
                                              float m, float l) {
    const float lse2 = l > 0.0f ? m + log2f(l) : -INFINITY;
    if (lse_out != nullptr) {
        if (pair != NO_ROW) lse_out[pair] = lse2 * LN2;
    } else {
        partial_lse[item * ROWS + row] = lse2;
    }
}

// One warp's output fragments (mma.sync's or wgmma's accumulator layout) of rows `row`, `row` + 8 of `item` (16-row run; pairs pair_lo,
// pair_hi), divided by their rows' sums (zero sums give zeros), from column col0: o[4n + e] is
// row + 8·(e / 2), column col0 + 8n + 2t + e % 2. See store_row_pair for where they go.
template <int O_TILES, int DV>
__device__ __forceinline__ void store_rows(const float* o, float sum_lo, float sum_hi, int col0, int row,
                                           uint32_t pair_lo, uint32_t pair_hi, bf16* out, float* partial_o,
                                           size_t item) {
    const int t = threadIdx.x & 3;
    const float inv_lo = sum_lo > 0.0f ? 1.0f / sum_lo : 0.0f, inv_hi = sum_hi > 0.0f ? 1.0f / sum_hi : 0.0f;
#pragma unroll
    for (int n = 0; n < O_TILES; n++) {
        const int col = col0 + n * 8 + 2 * t;
        store_row_pair(out, partial_o, item, row, pair_lo, DV, col, o[4 * n] * inv_lo, o[4 * n + 1] * inv_lo);
        store_row_pair(out, partial_o, item, row + 8, pair_hi, DV, col, o[4 * n + 2] * inv_hi, o[4 * n + 3] * inv_hi);
    }
}
