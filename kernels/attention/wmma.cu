// Paged attention with WMMA (bf16 in, f32 accumulate, sm_80+) for the bf16 shapes mma.cu is not
// built for (any key and value width that is a multiple of 16): one run of up to 16 query rows per
// CTA over one split, S = Q·Kᵀ, base-2 online softmax and O += P·V tile by tile of 32 tokens
// through shared memory, whose layout-dependent parts the host places (WmmaShared).
// docs/kernels.md, "The WMMA fallback".
// mla: no-spills
#include "common.cuh"
#include "attention/rows.cuh"
#include "attention/shared.cuh"
#include <mma.h>
using namespace nvcuda;

#define WARPS 4

// Copies `len` values (a multiple of 8, 16-byte aligned on both sides) with 16-byte loads.
__device__ __forceinline__ void copy_row(bf16* dst, const bf16* src, int len, int lane, int lanes) {
    MLA_ASSERT_ALIGNED(dst, 16);
    MLA_ASSERT_ALIGNED(src, 16);
    for (int v = lane; v < len / 8; v += lanes) reinterpret_cast<uint4*>(dst)[v] = reinterpret_cast<const uint4*>(src)[v];
}

// Shared memory: q [ROWS][dq] bf16 | k [KV_TILE][dq] bf16 | v [KV_TILE][dv] bf16 (unless v_in_k) |
// s [2][ROWS][KV_TILE] f32 | p [ROWS][KV_TILE] bf16 | o [ROWS][dv] f32 | WmmaRowStats, at the
// offsets the host computes (WmmaShared), each a multiple of 32 bytes as WMMA needs.
extern "C" __global__ void __launch_bounds__(WARPS * 32, 1)
attention_wmma_bf16(const __grid_constant__ WmmaParams wmma) {
    const AttentionParams& params = wmma.attention;
    const WmmaShared& plan = wmma.shared;
    unsigned char* smem = dynamic_shared_bytes();
    const int dq = params.s1.len + params.s2.len, dv = params.sv.len;
    bf16* q_s = reinterpret_cast<bf16*>(smem);
    bf16* k_s = reinterpret_cast<bf16*>(smem + plan.k);
    bf16* v_s = reinterpret_cast<bf16*>(smem + plan.v);
    float* s_s = reinterpret_cast<float*>(smem + plan.s);
    bf16* p_s = reinterpret_cast<bf16*>(smem + plan.p);
    float* o_s = reinterpret_cast<float*>(smem + plan.o);
    WmmaRowStats& stats = *reinterpret_cast<WmmaRowStats*>(smem + plan.stats);
    float *m_s = stats.m, *l_s = stats.l, *alpha_s = stats.alpha;
    int* pos_s = stats.pos;
    const bf16* values = params.v_in_k ? k_s : v_s;
    const int v_ld = params.v_in_k ? dq : dv;

    attention_prologue();
    const WorkItem& item = params.items[blockIdx.x];
    if (item.group == NO_GROUP) return;  // a decode step's filler unit (schedule.rs): no rows
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t* table = params.block_tables + params.table_start[item.seq];

    // Query rows (zero where a group has fewer than ROWS rows), positions, running state.
    for (int idx = threadIdx.x; idx < ROWS * dq; idx += blockDim.x) {
        const int i = idx / dq, c = idx % dq;
        const uint32_t pair = item.rows[i];
        float x = 0.0f;
        if (pair != NO_ROW) {
            const size_t t = pair / params.heads, h = pair % params.heads;
            x = c < params.s1.len ? to_f32(params.q1[t * params.q1_stride + h * params.q1_head_stride + c])
                           : to_f32(params.q2[t * params.q2_stride + h * params.q2_head_stride + (c - params.s1.len)]);
        }
        q_s[idx] = from_f32<bf16>(x);
    }
    for (int idx = threadIdx.x; idx < ROWS * dv; idx += blockDim.x) o_s[idx] = 0.0f;
    init_rows(item, params.token_pos, params.heads, m_s, l_s, pos_s);
    const float scale_log2 = params.scale * LOG2E;
    const int k_steps = dq / 16, half_steps = (k_steps + 1) / 2;

    for (int tile = item.kv_begin; tile < (int)item.kv_end; tile += KV_TILE) {
        __syncthreads();  // the previous tile's k/v/p are no longer read
        // Warp w loads keys w, w + WARPS, ...; its lanes split each row into 16-byte pieces.
        for (int j = warp; j < KV_TILE; j += WARPS) {
            const int p = tile + j;
            bf16* k_row = k_s + j * dq;
            bf16* v_row = v_s + j * dv;
            if (p < (int)item.kv_end) {
                const size_t slot = cache_slot(table, p, params.block_size);
                copy_row(k_row, params.k1 + slot * params.s1.width + params.s1.offset + item.kv_head * params.s1.head_stride, params.s1.len, lane, 32);
                copy_row(k_row + params.s1.len, params.k2 + slot * params.s2.width + params.s2.offset + item.kv_head * params.s2.head_stride, params.s2.len, lane, 32);
                if (!params.v_in_k) copy_row(v_row, params.v + slot * params.sv.width + params.sv.offset + item.kv_head * params.sv.head_stride, dv, lane, 32);
            } else {
                for (int c = lane; c < dq; c += 32) k_row[c] = from_f32<bf16>(0.0f);
                if (!params.v_in_k) for (int c = lane; c < dv; c += 32) v_row[c] = from_f32<bf16>(0.0f);
            }
        }
        __syncthreads();

        // S: warp w computes the 16×16 tile (w & 1) over half (w >> 1) of the key width.
        {
            const int n0 = (warp & 1) * 16, half = warp >> 1;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int ks = half * half_steps; ks < min(k_steps, (half + 1) * half_steps); ks++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
                wmma::load_matrix_sync(a, q_s + ks * 16, dq);
                wmma::load_matrix_sync(b, k_s + n0 * dq + ks * 16, dq);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(s_s + half * ROWS * KV_TILE + n0, acc, KV_TILE, wmma::mem_row_major);
        }
        __syncthreads();

        // Online softmax: warp w owns rows 4w..4w+3, lane = key within the tile.
        for (int i = warp * (ROWS / WARPS); i < (warp + 1) * (ROWS / WARPS); i++) {
            const float s = s_s[i * KV_TILE + lane] + s_s[ROWS * KV_TILE + i * KV_TILE + lane];
            const bool seen = visible(tile + lane, item.kv_end, pos_s[i], params.window);
            online_softmax_row(seen ? s * scale_log2 : -INFINITY, i, m_s, l_s, alpha_s, p_s + i * KV_TILE);
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < ROWS * dv; idx += blockDim.x) o_s[idx] *= alpha_s[idx / dv];
        __syncthreads();

        // O += P·V: warp w owns output column tiles w, w + 4, ...
        for (int c0 = warp * 16; c0 < dv; c0 += WARPS * 16) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, o_s + c0, dv, wmma::mem_row_major);
            for (int ks = 0; ks < KV_TILE / 16; ks++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
                wmma::load_matrix_sync(a, p_s + ks * 16, KV_TILE);
                wmma::load_matrix_sync(b, values + ks * 16 * v_ld + c0, v_ld);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(o_s + c0, acc, dv, wmma::mem_row_major);
        }
    }
    __syncthreads();

    // This split's output (divided by its own sum) and its LSE (see store_row_pair).
    for (int idx = threadIdx.x; idx < ROWS * dv / 2; idx += blockDim.x) {
        const int i = idx / (dv / 2), c = idx % (dv / 2) * 2;
        const float inv = l_s[i] > 0.0f ? 1.0f / l_s[i] : 0.0f;
        store_row_pair(params.out, params.partial_o, blockIdx.x, i, item.rows[i], dv, c, o_s[i * dv + c] * inv,
                       o_s[i * dv + c + 1] * inv);
    }
    if (threadIdx.x < ROWS) {
        const int i = threadIdx.x;
        store_row_lse(params.lse_out, params.partial_lse, blockIdx.x, i, item.rows[i], m_s[i], l_s[i]);
    }
    combine_if_last<1>(&item, params.groups, params.split_counts, params.partial_o, params.partial_lse, params.out, params.lse_out, dv);
}
