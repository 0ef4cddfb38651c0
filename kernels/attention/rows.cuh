// What the tensor-core attention kernels share on the device: the prologue, the running state of
// a 16-row run, the online softmax steps, the stores of finished rows and the in-kernel merge.
// docs/kernels.md, "Base-2 online softmax on ex2.approx" and "The combine".
#pragma once
#include "common.cuh"
#include "attention/params.cuh"
#include "ptx/mma.cuh"

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// The start of every tensor-core attention kernel, which the host launches as a programmatic
// dependent of the stream's previous kernel (its launch and CTAs' start overlap that kernel's
// end): lets the combine start launching (it waits for this kernel's end), then waits for the
// previous kernel, which may write the queries or the cache, or read the partial buffers this
// one overwrites (the previous step's combine).
__device__ __forceinline__ void attention_prologue() {
    launch_dependents();
    wait_for_previous_grid();
}

// The running state of an item's rows before its first tile: no max, no sum, each row's
// position (-1 for NO_ROW: it sees nothing). Threads below ROWS write it.
__device__ __forceinline__ void init_rows(const WorkItem& item, const uint32_t* token_pos, int heads, float* m_s,
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
    const float prob = m_new == -INFINITY ? 0.0f : fast_exp2(x - m_new);
    const float alpha = m_new == -INFINITY ? 1.0f : fast_exp2(m_old - m_new);
    const float row_sum = warp_sum(prob);
    p_row[lane] = from_f32<bf16>(prob);
    __syncwarp();  // every lane has read m_s[i] before lane 0 rewrites it
    if (lane == 0) {
        m_s[i] = m_new;
        l_s[i] = l_s[i] * alpha + row_sum;
        alpha_s[i] = alpha;
    }
}

// Where a CTA's finished rows go. Without partial buffers (the step gives every row group one
// split, so no combine runs): values straight into row `pair` of the output (dv bf16 per row)
// and the LSE, natural log, into lse_out[pair]; NO_ROW rows nowhere. Else into the partial
// buffers of item `item` (row `row` of it, ROWS rows of dv f32 per item; base-2 LSE) for the
// combine (attention_combine_bf16, or combine_if_last).
// Columns col, col + 1 of one row, already divided by the row's sum.
__device__ __forceinline__ void store_row_pair(bf16* out, float* partial_o, size_t item, int row, uint32_t pair,
                                               int dv, int col, float a, float b) {
    if (partial_o == nullptr) {
        if (pair == NO_ROW) return;
        uint32_t* dst = reinterpret_cast<uint32_t*>(out + (size_t)pair * dv + col);  // col and dv even
        MLA_ASSERT_ALIGNED(dst, 4);
        *dst = pack_bf16(from_f32<bf16>(a), from_f32<bf16>(b));
    } else {
        *reinterpret_cast<float2*>(partial_o + (item * ROWS + row) * dv + col) = make_float2(a, b);
    }
}

// Base-2 log-sum-exp from a max m and a sum l of 2^(x − m): −inf where nothing was summed.
__device__ __forceinline__ float log_sum_exp2(float m, float l) { return l > 0.0f ? m + log2f(l) : -INFINITY; }

// Four merged values x·scale as bf16 at dst (8-byte aligned): a combine's output.
__device__ __forceinline__ void store_bf16x4(bf16* dst, float4 x, float scale) {
    MLA_ASSERT_ALIGNED(dst, 8);
    *reinterpret_cast<uint2*>(dst) = make_uint2(pack_bf16(from_f32<bf16>(x.x * scale), from_f32<bf16>(x.y * scale)),
                                                pack_bf16(from_f32<bf16>(x.z * scale), from_f32<bf16>(x.w * scale)));
}

// The row's log-sum-exp of its scaled scores from its running max m and sum l (base 2): as
// store_row_pair, into lse_out (natural log; nowhere if the caller wants no LSE) where there are
// no partial buffers, else into partial_lse.
__device__ __forceinline__ void store_row_lse(float* lse_out, float* partial_lse, size_t item, int row, uint32_t pair,
                                              float m, float l) {
    const float lse2 = log_sum_exp2(m, l);
    if (partial_lse == nullptr) {
        if (lse_out != nullptr && pair != NO_ROW) lse_out[pair] = lse2 * LN2;
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

// What a 64-row kernel's thread writes of 16-row run `run` (item `item`): its rows g, g + 8
// (store_rows, from column col0) and, where `with_lse` (one lane per row and CTA), their LSEs
// from the rows' max and whole sums.
template <int O_TILES, int DV>
__device__ __forceinline__ void store_run(const float* o, const WorkItem& run, size_t item, int g, int col0,
                                          float m_lo, float m_hi, float sum_lo, float sum_hi, bool with_lse,
                                          bf16* out, float* partial_o, float* lse_out, float* partial_lse) {
    const uint32_t pair_lo = run.rows[g], pair_hi = run.rows[g + 8];
    store_rows<O_TILES, DV>(o, sum_lo, sum_hi, col0, g, pair_lo, pair_hi, out, partial_o, item);
    if (with_lse) {
        store_row_lse(lse_out, partial_lse, item, g, pair_lo, m_lo, sum_lo);
        store_row_lse(lse_out, partial_lse, item, g + 8, pair_hi, m_hi, sum_hi);
    }
}

// Float4 columns per lane that merge_row_in_warp reads per split (512 columns a pass), and the
// splits whose loads it issues together.
#define MERGE_CHUNKS 4
#define MERGE_BATCH 4

// Row i of group g merged by one warp from the group's splits (at most 32: lane j holds split
// j's weight 2^(lse_j − m), m the largest lse_j), as attention_combine_bf16 merges it: values
// into `out` row g.rows[i] (dv bf16, dv a multiple of 4), the LSE (natural log) into lse_out
// unless it is null. The splits are other CTAs' stores of this launch: read through L2 only
// (an L1 line could predate them). Unconditional loads (a split past the last reads the last
// again with weight 0, a lane past dv column 0, never stored): a lane's MERGE_BATCH ×
// MERGE_CHUNKS loads are in flight before it weighs any.
__device__ __forceinline__ void merge_row_in_warp(const RowGroup& g, int i, const float* partial_o,
                                                  const float* partial_lse, bf16* out, float* lse_out, int dv) {
    const int lane = threadIdx.x & 31;
    const uint32_t item_first = g.item_first, item_stride = g.item_stride, items = g.items;
    const auto split_row = [&](uint32_t j) { return (size_t)(item_first + j * item_stride) * ROWS + i; };
    const float lse = lane < (int)items ? __ldcg(partial_lse + split_row(lane)) : -INFINITY;
    const float m = warp_max(lse);
    // Splits that saw no token have lse −inf and zeros in partial_o: weight 0.
    const float weight = lse == -INFINITY ? 0.0f : fast_exp2(lse - m);
    const float sum = warp_sum(weight);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const uint32_t pair = g.rows[i];
    for (int c0 = 0; c0 < dv; c0 += 32 * 4 * MERGE_CHUNKS) {
        float4 x[MERGE_CHUNKS];
#pragma unroll
        for (int k = 0; k < MERGE_CHUNKS; k++) x[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (uint32_t first = 0; first < items; first += MERGE_BATCH) {
            float w[MERGE_BATCH];
            float4 o[MERGE_BATCH][MERGE_CHUNKS];
#pragma unroll
            for (int b = 0; b < MERGE_BATCH; b++) {
                const uint32_t j = min(first + b, items - 1);
                w[b] = __shfl_sync(0xffffffffu, weight, (int)j);
                if (first + b >= items) w[b] = 0.0f;
                const float* row = partial_o + split_row(j) * dv;
#pragma unroll
                for (int k = 0; k < MERGE_CHUNKS; k++) {
                    const int c = c0 + (k * 32 + lane) * 4;
                    MLA_ASSERT_ALIGNED(row + c, 16);
                    o[b][k] = __ldcg(reinterpret_cast<const float4*>(row + (c < dv ? c : 0)));
                }
            }
#pragma unroll
            for (int b = 0; b < MERGE_BATCH; b++) {
#pragma unroll
                for (int k = 0; k < MERGE_CHUNKS; k++) {
                    x[k].x += w[b] * o[b][k].x;
                    x[k].y += w[b] * o[b][k].y;
                    x[k].z += w[b] * o[b][k].z;
                    x[k].w += w[b] * o[b][k].w;
                }
            }
        }
#pragma unroll
        for (int k = 0; k < MERGE_CHUNKS; k++) {
            const int c = c0 + (k * 32 + lane) * 4;
            if (c < dv) store_bf16x4(out + (size_t)pair * dv + c, x[k], inv);
        }
    }
    if (lse_out != nullptr && lane == 0) lse_out[pair] = log_sum_exp2(m, sum) * LN2;
}

// The combine inside the attention kernel, for schedules of at most 32 splits per row group
// (split_counts not null: a counter per group, zero before the launch): the CTA that stores the
// last split of its unit's row groups (`unit`: its RUNS items) merges them, a warp per row,
// while other CTAs still work — instead of a second kernel that starts once the whole grid has
// finished. Every thread of the CTA calls it after storing its partial rows of the unit. The
// counter of the unit (its first group's) goes back to zero for the next launch.
template <int RUNS>
__device__ __forceinline__ void combine_if_last(const WorkItem* unit, const RowGroup* groups, uint32_t* split_counts,
                                                const float* partial_o, const float* partial_lse, bf16* out,
                                                float* lse_out, int dv) {
    if (split_counts == nullptr) return;
    const uint32_t counter = unit[0].group;
    __threadfence();  // this thread's partial rows, before the count that publishes them
    // Every thread's, too: a count made while other warps still store their rows would let the
    // group's last CTA merge them unwritten.
    __syncthreads();
    int last = 0;
    if (threadIdx.x == 0) last = atomicAdd(&split_counts[counter], 1u) + 1 == groups[counter].items;
    if (!__syncthreads_or(last)) return;
    __threadfence();  // the other splits' rows, after the counts that published them
    if (threadIdx.x == 0) split_counts[counter] = 0;
    const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int r = warp; r < RUNS * ROWS; r += warps) {
        const uint32_t group = unit[r / ROWS].group;
        if (group != NO_GROUP && groups[group].rows[r % ROWS] != NO_ROW)
            merge_row_in_warp(groups[group], r % ROWS, partial_o, partial_lse, out, lse_out, dv);
    }
}

// The online-softmax state of this lane's two rows (g and g + 8 of its 16-row run, as in the
// accumulator layout) in the 64-row kernels, where each row's tile is split between two halves
// of the CTA (`half`: warps or warpgroups) that meet through shared memory. m: running max
// (base 2), l: this lane's share of the running sum.
struct SplitRows {
    int row_lo, row_hi, half;
    float m_lo, m_hi, l_lo, l_hi;
};

__device__ __forceinline__ SplitRows split_rows(int row_lo, int half) {
    return SplitRows{row_lo, row_lo + 8, half, -INFINITY, -INFINITY, 0.0f, 0.0f};
}

// Moves `r` to its rows' new running maxima new_lo, new_hi: O's rescale factors for them, the
// lane's N scaled scores (layout as in scale_and_mask) turned into probabilities (zeros where
// a row has seen nothing yet), and these added to the lane's shares of the row sums.
template <int N>
__device__ __forceinline__ void advance_rows(SplitRows& r, float* s, float new_lo, float new_hi, float& alpha_lo,
                                             float& alpha_hi) {
    alpha_lo = new_lo == -INFINITY ? 1.0f : fast_exp2(r.m_lo - new_lo);
    alpha_hi = new_hi == -INFINITY ? 1.0f : fast_exp2(r.m_hi - new_hi);
    r.m_lo = new_lo;
    r.m_hi = new_hi;
    float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
    for (int i = 0; i < N; i++) {
        const bool lo = (i & 2) == 0;
        const float m = lo ? new_lo : new_hi;
        s[i] = m == -INFINITY ? 0.0f : fast_exp2(s[i] - m);
        if (lo) sum_lo += s[i];
        else sum_hi += s[i];
    }
    r.l_lo = r.l_lo * alpha_lo + sum_lo;
    r.l_hi = r.l_hi * alpha_hi + sum_hi;
}

// O = alpha·O for this lane's accumulators of rows lo, hi (o[4j + e]: row lo for e < 2). Once
// the running maxima settle, most tiles leave every row of a warp as it was, and skip it.
template <int N> __device__ __forceinline__ void rescale_rows(float (&o)[N], float alpha_lo, float alpha_hi) {
    if (__ballot_sync(0xffffffffu, alpha_lo != 1.0f || alpha_hi != 1.0f) == 0) return;
#pragma unroll
    for (int j = 0; j < N / 4; j++) {
        o[4 * j] *= alpha_lo;
        o[4 * j + 1] *= alpha_lo;
        o[4 * j + 2] *= alpha_hi;
        o[4 * j + 3] *= alpha_hi;
    }
}

// Scales this lane's N scores in the accumulator layout (s[4j + e]: row lo for e < 2, at
// position pos_lo, else row hi at pos_hi; cached token first_token + 8j + 2t + e % 2) to base 2
// and masks those its rows do not see. Where both rows see every token of the 2N (decode: all
// but a split's last tile), the per-score masks, most of a softmax step's instructions, are
// skipped; the test is the same for every lane of rows at one position.
template <int N>
__device__ __forceinline__ void scale_and_mask(float* s, int first_token, int kv_end, int pos_lo, int pos_hi,
                                               int window, float scale_log2) {
    const int t = threadIdx.x & 3, last_token = first_token + 2 * N - 1;
    const bool whole = last_token < kv_end && last_token <= min(pos_lo, pos_hi) &&
                       (window <= 0 || first_token > max(pos_lo, pos_hi) - window);
    if (whole) {
#pragma unroll
        for (int i = 0; i < N; i++) s[i] *= scale_log2;
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) {
            const int p = first_token + (i / 4) * 8 + 2 * t + (i & 1);
            s[i] = visible(p, kv_end, (i & 2) == 0 ? pos_lo : pos_hi, window) ? s[i] * scale_log2 : -INFINITY;
        }
    }
}

// Raises max_lo, max_hi to the largest of the lane's N scores of rows lo, hi (accumulator
// layout, as in scale_and_mask) and of the other three lanes of the same rows.
template <int N> __device__ __forceinline__ void quad_row_max(const float* s, float& max_lo, float& max_hi) {
#pragma unroll
    for (int i = 0; i < N; i++) {
        if ((i & 2) == 0) max_lo = fmaxf(max_lo, s[i]);
        else max_hi = fmaxf(max_hi, s[i]);
    }
    max_lo = fmaxf(max_lo, __shfl_xor_sync(0xffffffffu, max_lo, 1));
    max_lo = fmaxf(max_lo, __shfl_xor_sync(0xffffffffu, max_lo, 2));
    max_hi = fmaxf(max_hi, __shfl_xor_sync(0xffffffffu, max_hi, 1));
    max_hi = fmaxf(max_hi, __shfl_xor_sync(0xffffffffu, max_hi, 2));
}

// Adds the other three lanes' shares of rows lo and hi (the four lanes of a row).
__device__ __forceinline__ void quad_sum(float& lo, float& hi) {
    lo += __shfl_xor_sync(0xffffffffu, lo, 1);
    lo += __shfl_xor_sync(0xffffffffu, lo, 2);
    hi += __shfl_xor_sync(0xffffffffu, hi, 1);
    hi += __shfl_xor_sync(0xffffffffu, hi, 2);
}

// One tile's step for `r`: masks and scales this lane's N scores (s[4j + e]: row lo for e < 2,
// cached token first_token + 8j + 2t + e % 2), agrees with the other half on the rows' new
// maxima through half_max [2][ROWS_ALL] (a block barrier), turns s into the probabilities,
// adds them to the sums and gives O's rescale factors.
template <int N, int ROWS_ALL>
__device__ __forceinline__ void split_softmax_step(SplitRows& r, float* s, int first_token, int kv_end, const int* pos_s,
                                                   int window, float scale_log2, float* half_max, float& alpha_lo,
                                                   float& alpha_hi) {
    const int t = threadIdx.x & 3;
    scale_and_mask<N>(s, first_token, kv_end, pos_s[r.row_lo], pos_s[r.row_hi], window, scale_log2);
    // The four lanes of a row hold its keys of this half.
    float max_lo = -INFINITY, max_hi = -INFINITY;
    quad_row_max<N>(s, max_lo, max_hi);
    if (t == 0) {
        half_max[r.half * ROWS_ALL + r.row_lo] = max_lo;
        half_max[r.half * ROWS_ALL + r.row_hi] = max_hi;
    }
    __syncthreads();
    // Both halves of a row reach the same running max (max is exact and order-free).
    const float new_lo = fmaxf(r.m_lo, fmaxf(max_lo, half_max[(r.half ^ 1) * ROWS_ALL + r.row_lo]));
    const float new_hi = fmaxf(r.m_hi, fmaxf(max_hi, half_max[(r.half ^ 1) * ROWS_ALL + r.row_hi]));
    advance_rows<N>(r, s, new_lo, new_hi, alpha_lo, alpha_hi);
}

// The rows' whole sums: the four lanes of a row, then the two halves through half_sum
// [2][ROWS_ALL] (a block barrier).
template <int ROWS_ALL>
__device__ __forceinline__ void split_row_sums(const SplitRows& r, float* half_sum, float& sum_lo, float& sum_hi) {
    float l_lo = r.l_lo, l_hi = r.l_hi;
    quad_sum(l_lo, l_hi);
    if ((threadIdx.x & 3) == 0) {
        half_sum[r.half * ROWS_ALL + r.row_lo] = l_lo;
        half_sum[r.half * ROWS_ALL + r.row_hi] = l_hi;
    }
    __syncthreads();
    sum_lo = half_sum[r.row_lo] + half_sum[ROWS_ALL + r.row_lo];
    sum_hi = half_sum[r.row_hi] + half_sum[ROWS_ALL + r.row_hi];
}

// Values c … c + 7 of query row `pair` (token · heads + head; the first len1 values come from
// q1, the rest from q2) into `dst` in shared memory: copied like the keys (cp.async) where the
// source is 16-byte aligned (the QLat and q_pe rows of the model are), else value by value;
// zeros for NO_ROW.
__device__ __forceinline__ void load_query_piece(bf16* dst, uint32_t pair, int c, const bf16* q1, int q1_stride,
                                                 int q1_head_stride, const bf16* q2, int q2_stride,
                                                 int q2_head_stride, int len1, int heads) {
    const bf16* src = q1;
    if (pair != NO_ROW) {
        const size_t tok = pair / heads, h = pair % heads;
        src = c < len1 ? q1 + tok * q1_stride + h * q1_head_stride + c
                       : q2 + tok * q2_stride + h * q2_head_stride + (c - len1);
    }
    if (pair == NO_ROW || aligned16(src))
        async_copy16(dst, src, pair != NO_ROW);
    else
        for (int e = 0; e < 8; e++) dst[e] = src[e];
}
