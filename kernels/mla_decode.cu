// Absorbed MLA attention over the paged latent cache on tensor cores (WMMA: bf16 in, f32
// accumulate), the FlashMLA shape in a first, portable form (sm_80+):
//  - a CTA serves one work item: 16 query rows of one sequence (a row is a (query token, head)
//    pair, so one CTA covers 16 heads) over one split of the sequence's cached tokens; every
//    latent row read from HBM is used by all 16 rows at once;
//  - scores S = Q·Kᵀ over 576-wide rows (latent 512 + rope 64), online softmax in base 2, and
//    O += P·V with V = the first 512 values of the same rows, tile by tile of KV_TILE tokens;
//  - each item writes its unnormalised-then-divided output and log-sum-exp; mla_combine merges
//    the splits of a row by their LSE (flash-decoding).
// The host (src/backend/cuda/mla_decode.rs) builds the items so that long and short sequences
// are cut into splits of equal length and the grid fills the GPU.
// mla: no-spills
#include "common.cuh"
#include <mma.h>
using namespace nvcuda;

#define ROWS 16
#define KV_TILE 32
#define WARPS 4
#define LOG2E 1.4426950408889634f

// One CTA's job; mirrors `WorkItem` in mla_decode.rs.
struct WorkItem {
    uint32_t seq, row_begin, row_count, kv_begin, kv_end;
};

// A row group's splits, for the combine; mirrors `RowGroup` in mla_decode.rs.
struct RowGroup {
    uint32_t item_first, items, row_begin, row_count;
};

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Shared memory, in order (every part a multiple of 32 bytes, as WMMA needs):
//   q [ROWS][d] bf16 | k [KV_TILE][d] bf16 | s [2][ROWS][KV_TILE] f32 | p [ROWS][KV_TILE] bf16 |
//   o [ROWS][r] f32 | m, l, alpha [ROWS] f32 | pos [ROWS] int
extern "C" __global__ void __launch_bounds__(WARPS * 32)
mla_decode_bf16(const bf16* q_lat, const bf16* q, const bf16* cache, const WorkItem* items,
                const uint32_t* block_tables, const uint32_t* table_start, const uint32_t* token_pos,
                float* partial_o, float* partial_lse, int heads, int r, int d_rope, int q_stride_head,
                int q_pe_offset, int block_size, float scale) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int d = r + d_rope;
    bf16* q_s = reinterpret_cast<bf16*>(smem);
    bf16* k_s = q_s + ROWS * d;
    float* s_s = reinterpret_cast<float*>(k_s + KV_TILE * d);
    bf16* p_s = reinterpret_cast<bf16*>(s_s + 2 * ROWS * KV_TILE);
    float* o_s = reinterpret_cast<float*>(p_s + ROWS * KV_TILE);
    float* m_s = o_s + ROWS * r;
    float* l_s = m_s + ROWS;
    float* alpha_s = l_s + ROWS;
    int* pos_s = reinterpret_cast<int*>(alpha_s + ROWS);

    const WorkItem item = items[blockIdx.x];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t* table = block_tables + table_start[item.seq];

    // Query rows: [q_lat of the head | q_pe of the head]; rows past the group are zero.
    for (int idx = threadIdx.x; idx < ROWS * d; idx += blockDim.x) {
        const int i = idx / d, c = idx % d;
        float v = 0.0f;
        if (i < (int)item.row_count) {
            const size_t pair = item.row_begin + i;
            const size_t t = pair / heads, h = pair % heads;
            v = c < r ? to_f32(q_lat[(t * heads + h) * r + c])
                      : to_f32(q[(t * heads + h) * q_stride_head + q_pe_offset + (c - r)]);
        }
        q_s[idx] = from_f32<bf16>(v);
    }
    for (int idx = threadIdx.x; idx < ROWS * r; idx += blockDim.x) o_s[idx] = 0.0f;
    if (threadIdx.x < ROWS) {
        const int i = threadIdx.x;
        m_s[i] = -INFINITY;
        l_s[i] = 0.0f;
        pos_s[i] = i < (int)item.row_count ? (int)token_pos[(item.row_begin + i) / heads] : -1;
    }
    const float scale_log2 = scale * LOG2E;
    const int k_steps = d / 16, half_steps = (k_steps + 1) / 2;
    const int vectors_per_row = d / 8;  // 16-byte loads of 8 bf16

    for (int tile = item.kv_begin; tile < (int)item.kv_end; tile += KV_TILE) {
        __syncthreads();  // the previous tile's k_s and p_s are no longer read
        for (int idx = threadIdx.x; idx < KV_TILE * vectors_per_row; idx += blockDim.x) {
            const int j = idx / vectors_per_row, v = idx % vectors_per_row;
            const int p = tile + j;
            uint4 value = make_uint4(0, 0, 0, 0);
            if (p < (int)item.kv_end) {
                const size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
                value = reinterpret_cast<const uint4*>(cache + slot * d)[v];
            }
            reinterpret_cast<uint4*>(k_s + j * d)[v] = value;
        }
        __syncthreads();

        // S: warp w computes the 16×16 tile (w & 1) over half (w >> 1) of the d dimension.
        {
            const int n0 = (warp & 1) * 16, half = warp >> 1;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int ks = half * half_steps; ks < min(k_steps, (half + 1) * half_steps); ks++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
                wmma::load_matrix_sync(a, q_s + ks * 16, d);
                wmma::load_matrix_sync(b, k_s + n0 * d + ks * 16, d);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(s_s + half * ROWS * KV_TILE + n0, acc, KV_TILE, wmma::mem_row_major);
        }
        __syncthreads();

        // Online softmax: warp w owns rows 4w..4w+3, lane = key within the tile.
        for (int i = warp * (ROWS / WARPS); i < (warp + 1) * (ROWS / WARPS); i++) {
            const int p = tile + lane;
            const bool valid = p < (int)item.kv_end && p <= pos_s[i];
            const float s = valid ? (s_s[i * KV_TILE + lane] + s_s[ROWS * KV_TILE + i * KV_TILE + lane]) * scale_log2
                                  : -INFINITY;
            const float m_old = m_s[i];
            const float m_new = fmaxf(m_old, warp_max(s));
            const float prob = m_new == -INFINITY ? 0.0f : exp2f(s - m_new);
            const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_old - m_new);
            const float row_sum = warp_sum(prob);
            p_s[i * KV_TILE + lane] = from_f32<bf16>(prob);
            if (lane == 0) {
                m_s[i] = m_new;
                l_s[i] = l_s[i] * alpha + row_sum;
                alpha_s[i] = alpha;
            }
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < ROWS * r; idx += blockDim.x) o_s[idx] *= alpha_s[idx / r];
        __syncthreads();

        // O += P·V: warp w owns output column tiles w, w + 4, ...
        for (int c0 = warp * 16; c0 < r; c0 += WARPS * 16) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, o_s + c0, r, wmma::mem_row_major);
            for (int ks = 0; ks < KV_TILE / 16; ks++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
                wmma::load_matrix_sync(a, p_s + ks * 16, KV_TILE);
                wmma::load_matrix_sync(b, k_s + ks * 16 * d + c0, d);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(o_s + c0, acc, r, wmma::mem_row_major);
        }
    }
    __syncthreads();

    // This split's output (normalised by its own sum) and its LSE in base 2.
    float* out = partial_o + (size_t)blockIdx.x * ROWS * r;
    for (int idx = threadIdx.x; idx < ROWS * r; idx += blockDim.x) {
        const float l = l_s[idx / r];
        out[idx] = l > 0.0f ? o_s[idx] / l : 0.0f;
    }
    if (threadIdx.x < ROWS) {
        const int i = threadIdx.x;
        partial_lse[blockIdx.x * ROWS + i] = l_s[i] > 0.0f ? m_s[i] + log2f(l_s[i]) : -INFINITY;
    }
}

// Merges the splits of each row group: weights 2^(lse_j − lse) with lse = log2 Σ 2^lse_j.
// Writes the output rows (bf16) and each row's LSE (natural log, of the scaled scores).
extern "C" __global__ void __launch_bounds__(128)
mla_combine_bf16(const float* partial_o, const float* partial_lse, const RowGroup* groups, bf16* out,
                 float* lse_out, int r) {
    __shared__ float lse_max[ROWS], inv_sum[ROWS];
    const RowGroup g = groups[blockIdx.x];
    if (threadIdx.x < ROWS) {
        const int i = threadIdx.x;
        float m = -INFINITY;
        for (uint32_t j = 0; j < g.items; j++) m = fmaxf(m, partial_lse[(g.item_first + j) * ROWS + i]);
        float s = 0.0f;
        for (uint32_t j = 0; j < g.items; j++) {
            const float lse = partial_lse[(g.item_first + j) * ROWS + i];
            s += lse == -INFINITY ? 0.0f : exp2f(lse - m);
        }
        lse_max[i] = m;
        inv_sum[i] = s > 0.0f ? 1.0f / s : 0.0f;
        if (i < (int)g.row_count) lse_out[g.row_begin + i] = (m + log2f(s)) * 0.6931471805599453f;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < (int)g.row_count * r; idx += blockDim.x) {
        const int i = idx / r, c = idx % r;
        float v = 0.0f;
        for (uint32_t j = 0; j < g.items; j++) {
            const size_t item = g.item_first + j;
            const float lse = partial_lse[item * ROWS + i];
            if (lse != -INFINITY) v += exp2f(lse - lse_max[i]) * partial_o[(item * ROWS + i) * r + c];
        }
        out[(size_t)(g.row_begin + i) * r + c] = from_f32<bf16>(v * inv_sum[i]);
    }
}
