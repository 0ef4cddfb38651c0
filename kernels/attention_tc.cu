// Paged attention on tensor cores (WMMA: bf16 in, f32 accumulate), sm_80+, for the bf16 shapes
// attention_mma.cu is not built for (any key and value width that is a multiple of 16), and the
// combine of every tensor-core kernel. FlashMLA's shape in a first, portable form:
//  - a CTA serves one work item: up to 16 query rows that share a sequence and a KV head — the
//    heads of a token for MLA (so each latent row read from HBM serves 16 heads), the query
//    heads of a GQA group, or consecutive tokens of one head in prefill — over one split of the
//    rows' visible cached tokens;
//  - S = Q·Kᵀ, online softmax in base 2 and O += P·V, tile by tile of KV_TILE tokens through
//    shared memory;
//  - each item writes its normalised output and log-sum-exp; attention_tc_combine merges the
//    splits of a row (flash-decoding).
// The host (src/backend/cuda/attention_schedule.rs) builds the items: every row group's visible
// tokens cut into even splits, about one wave of CTAs in all.
// mla: no-spills
#include "common.cuh"
#include "attention_items.cuh"
#include <mma.h>
using namespace nvcuda;

#define WARPS 4

// Copies `len` values (a multiple of 8, 16-byte aligned on both sides) with 16-byte loads.
__device__ __forceinline__ void copy_row(bf16* dst, const bf16* src, int len, int lane, int lanes) {
    MLA_ASSERT_ALIGNED(dst, 16);
    MLA_ASSERT_ALIGNED(src, 16);
    for (int v = lane; v < len / 8; v += lanes) reinterpret_cast<uint4*>(dst)[v] = reinterpret_cast<const uint4*>(src)[v];
}

// Shared memory, in order (each part a multiple of 32 bytes, as WMMA needs):
//   q [ROWS][dq] bf16 | k [KV_TILE][dq] bf16 | v [KV_TILE][dv] bf16 (unless v_in_k) |
//   s [2][ROWS][KV_TILE] f32 | p [ROWS][KV_TILE] bf16 | o [ROWS][dv] f32 | m, l, alpha, pos [ROWS]
extern "C" __global__ void __launch_bounds__(WARPS * 32, 1)
attention_tc_bf16(TC_ATTENTION_ARGS) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int dq = s1.len + s2.len, dv = sv.len;
    bf16* q_s = reinterpret_cast<bf16*>(smem);
    bf16* k_s = q_s + ROWS * dq;
    bf16* v_s = k_s + KV_TILE * dq;
    float* s_s = reinterpret_cast<float*>(v_s + (v_in_k ? 0 : KV_TILE * dv));
    bf16* p_s = reinterpret_cast<bf16*>(s_s + 2 * ROWS * KV_TILE);
    float* o_s = reinterpret_cast<float*>(p_s + ROWS * KV_TILE);
    float* m_s = o_s + ROWS * dv;
    float* l_s = m_s + ROWS;
    float* alpha_s = l_s + ROWS;
    int* pos_s = reinterpret_cast<int*>(alpha_s + ROWS);
    const bf16* values = v_in_k ? k_s : v_s;
    const int v_ld = v_in_k ? dq : dv;

    attention_prologue();
    const TcItem& item = items[blockIdx.x];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t* table = block_tables + table_start[item.seq];

    // Query rows (zero where a group has fewer than ROWS rows), positions, running state.
    for (int idx = threadIdx.x; idx < ROWS * dq; idx += blockDim.x) {
        const int i = idx / dq, c = idx % dq;
        const uint32_t pair = item.rows[i];
        float x = 0.0f;
        if (pair != NO_ROW) {
            const size_t t = pair / heads, h = pair % heads;
            x = c < s1.len ? to_f32(q1[t * q1_stride + h * q1_head_stride + c])
                           : to_f32(q2[t * q2_stride + h * q2_head_stride + (c - s1.len)]);
        }
        q_s[idx] = from_f32<bf16>(x);
    }
    for (int idx = threadIdx.x; idx < ROWS * dv; idx += blockDim.x) o_s[idx] = 0.0f;
    init_rows(item, token_pos, heads, m_s, l_s, pos_s);
    const float scale_log2 = scale * LOG2E;
    const int k_steps = dq / 16, half_steps = (k_steps + 1) / 2;

    for (int tile = item.kv_begin; tile < (int)item.kv_end; tile += KV_TILE) {
        __syncthreads();  // the previous tile's k/v/p are no longer read
        // Warp w loads keys w, w + WARPS, ...; its lanes split each row into 16-byte pieces.
        for (int j = warp; j < KV_TILE; j += WARPS) {
            const int p = tile + j;
            bf16* k_row = k_s + j * dq;
            bf16* v_row = v_s + j * dv;
            if (p < (int)item.kv_end) {
                const size_t slot = cache_slot(table, p, block_size);
                copy_row(k_row, k1 + slot * s1.width + s1.offset + item.kv_head * s1.head_stride, s1.len, lane, 32);
                copy_row(k_row + s1.len, k2 + slot * s2.width + s2.offset + item.kv_head * s2.head_stride, s2.len, lane, 32);
                if (!v_in_k) copy_row(v_row, v + slot * sv.width + sv.offset + item.kv_head * sv.head_stride, dv, lane, 32);
            } else {
                for (int c = lane; c < dq; c += 32) k_row[c] = from_f32<bf16>(0.0f);
                if (!v_in_k) for (int c = lane; c < dv; c += 32) v_row[c] = from_f32<bf16>(0.0f);
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
            const bool seen = visible(tile + lane, item.kv_end, pos_s[i], window);
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
        store_row_pair(out, partial_o, blockIdx.x, i, item.rows[i], dv, c, o_s[i * dv + c] * inv,
                       o_s[i * dv + c + 1] * inv);
    }
    if (threadIdx.x < ROWS) {
        const int i = threadIdx.x;
        store_row_lse(lse_out, partial_lse, blockIdx.x, i, item.rows[i], m_s[i], l_s[i]);
    }
    combine_if_last<1>(&item, groups, split_counts, partial_o, partial_lse, out, lse_out, dv);
}

// Merges the splits of each row group: weights 2^(lse_j − m) with m the largest lse_j, LSE
// m + log2 Σ weights. Block (group, row, column chunk) writes COMBINE_COLUMNS values of one
// output row (`out` row `pair` holds dv values, dv a multiple of 4) and, from the first chunk,
// the row's LSE (natural log, scaled scores) unless lse_out is null. Its warps take every
// warps-th split, each lane 4 columns, and the warps meet once through shared memory. One
// sequence's hundreds of splits fall to a few warps per output row, so a warp must have many
// splits' loads in flight: it loads COMBINE_BATCH splits (LSE and values) into registers before
// it weighs any. The launch bounds' two blocks per SM let ptxas keep them there (79 registers):
// with the default bound it kept to about 32 and issued each split's loads after the previous
// split's use (sm_90a SASS; the unrolled loop that weighed splits as they arrived did the same),
// a load's latency per split.
#define COMBINE_LANE_COLUMNS 4
#define COMBINE_COLUMNS (32 * COMBINE_LANE_COLUMNS)
#define COMBINE_MAX_WARPS 8
#define COMBINE_BATCH 8
extern "C" __global__ void __launch_bounds__(32 * COMBINE_MAX_WARPS, 2)
attention_tc_combine_bf16(const float* partial_o, const float* partial_lse, const TcGroup* groups,
                          bf16* out, float* lse_out, int dv) {
    __shared__ float4 warp_x[COMBINE_MAX_WARPS][32];
    __shared__ float warp_weight[COMBINE_MAX_WARPS];
    const TcGroup& g = groups[blockIdx.x];
    const int i = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    if (g.rows[i] == NO_ROW) return;  // the whole block
    wait_for_previous_grid();         // the splits are written
    const int c = blockIdx.z * COMBINE_COLUMNS + lane * COMBINE_LANE_COLUMNS;
    const uint32_t item_first = g.item_first, item_stride = g.item_stride, items = g.items;
    const auto split_row = [&](uint32_t j) { return (size_t)(item_first + j * item_stride) * ROWS + i; };

    float m = -INFINITY;
    for (uint32_t j = threadIdx.x; j < items; j += blockDim.x) m = fmaxf(m, partial_lse[split_row(j)]);
    m = block_max(m);

    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float weight = 0.0f;
    // Unconditional loads (a split past the last reads the last again, a lane past dv column 0;
    // neither is counted), so that nothing holds the batch's loads behind one another.
    const int col = c < dv ? c : 0;
    for (uint32_t first = warp; first < items; first += warps * COMBINE_BATCH) {
        float lse[COMBINE_BATCH];
        float4 o[COMBINE_BATCH];
#pragma unroll
        for (int b = 0; b < COMBINE_BATCH; b++) {
            const size_t r = split_row(min(first + b * warps, items - 1));
            lse[b] = partial_lse[r];
            const float* row = partial_o + r * dv + col;
            MLA_ASSERT_ALIGNED(row, 16);
            o[b] = *reinterpret_cast<const float4*>(row);
        }
#pragma unroll
        for (int b = 0; b < COMBINE_BATCH; b++) {
            // Splits that saw no token have lse −inf and zeros in partial_o: weight 2^−inf = 0,
            // as for those past the last (no branch: the batch stays one block of code).
            const bool counted = first + b * warps < items && lse[b] != -INFINITY;
            const float w = fast_exp2(counted ? lse[b] - m : -INFINITY);
            weight += w;
            x.x += w * o[b].x;
            x.y += w * o[b].y;
            x.z += w * o[b].z;
            x.w += w * o[b].w;
        }
    }
    warp_x[warp][lane] = x;
    if (lane == 0) warp_weight[warp] = weight;
    __syncthreads();
    if (warp != 0) return;
    float sum = 0.0f;
    for (int w = 0; w < warps; w++) sum += warp_weight[w];
    for (int w = 1; w < warps; w++) {
        const float4 y = warp_x[w][lane];
        x.x += y.x;
        x.y += y.y;
        x.z += y.z;
        x.w += y.w;
    }
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    if (c < dv) store_bf16x4(out + (size_t)g.rows[i] * dv + c, x, inv);
    if (lse_out != nullptr && blockIdx.z == 0 && lane == 0) lse_out[g.rows[i]] = log_sum_exp2(m, sum) * LN2;
}
