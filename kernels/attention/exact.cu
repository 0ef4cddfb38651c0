// Exact paged causal attention for any layout, f32 or bf16: one warp per (query row, head, KV
// split), an online softmax over 32 tokens at a time (a lane scoring each), then a combine of the
// splits by their log-sum-exp. A score is q1·k1 + q2·k2 over segments that may live in different
// buffers, so MHA/GQA, MLA absorbed and MLA materialised need no concatenation. The GPU-side
// reference of the tensor-core kernels; its FP8 build reads FP8 cache rows (fp8.cuh).
// docs/kernels.md, "The exact paged attention kernel".
// mla: no-spills
#include "common.cuh"
#include "fp8.cuh"
#include "attention/params.cuh"

#define WARPS_PER_BLOCK 4
// Widest value vector (MLA absorbed: kv_lora_rank) and widest query, checked on the host.
#define MAX_VALUE_PER_LANE 16
#define MAX_QUERY 1024

// Where the keys and values are: `base` rows of T as segment `s` says, or (`rows` not null) FP8
// rows, whose value index is the segment's offset + head·head_stride + i.
template <typename T> struct CachedRows {
    const uint8_t* rows;
    Fp8RowFormat format;

    __device__ __forceinline__ float at(const T* base, const KeySegment& s, size_t slot, int head, int i) const {
        const int c = s.offset + head * s.head_stride + i;
        if (rows != nullptr) return fp8_value(rows + slot * format.row_bytes, format, c);
        return to_f32(base[slot * s.width + c]);
    }
};

// Writes, per (split, row, head), the split's normalised output and its LSE (natural log).
template <typename T> __device__ void paged_attention(const ExactParams<T>& params, const CachedRows<T>& cached) {
    __shared__ float query[WARPS_PER_BLOCK][MAX_QUERY];
    __shared__ float tile_weight[WARPS_PER_BLOCK][32];
    __shared__ size_t tile_slot[WARPS_PER_BLOCK][32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t row = blockIdx.x, rows = gridDim.x, split = blockIdx.z;
    const int head = blockIdx.y * WARPS_PER_BLOCK + warp;
    if (head >= params.heads) return;  // whole warps leave; nothing below synchronises the block
    const int pos = params.row_pos[row];
    // Splits past the row's context see no token (the grid is sized for the longest possible):
    // an LSE of −inf, whose output the combine never reads.
    const int split_len = (int)*params.split_len;
    const int first = max(params.window > 0 ? max(0, pos + 1 - params.window) : 0, (int)split * split_len);
    const int last = min(pos, ((int)split + 1) * split_len - 1);
    const size_t job = (split * rows + row) * params.heads + head;
    if (first > last) {
        if (lane == 0) params.partial_lse[job] = -INFINITY;
        return;
    }
    float* q = query[warp];
    for (int i = lane; i < params.s1.len; i += 32) q[i] = to_f32(params.q1[row * params.q1_stride + head * params.q1_head_stride + i]) * params.scale;
    for (int i = lane; i < params.s2.len; i += 32) q[params.s1.len + i] = to_f32(params.q2[row * params.q2_stride + head * params.q2_head_stride + i]) * params.scale;
    __syncwarp();

    const uint32_t* table = params.block_tables + params.table_start[params.row_seq[row]];
    const int kv_head = head / params.group;
    // denom: this lane's share of the running sum (its own tokens' weights), summed at the end.
    float running_max = -INFINITY, denom = 0.0f, acc[MAX_VALUE_PER_LANE];
#pragma unroll
    for (int i = 0; i < MAX_VALUE_PER_LANE; i++) acc[i] = 0.0f;

    // Tiles of 32 tokens, lane j scoring token j on its own (a whole dot product, no shuffles):
    // a tile costs the warp one max and two syncs, where a warp-wide dot product per token would
    // cost five shuffles each.
    for (int tile = first; tile <= last; tile += 32) {
        const int count = min(32, last - tile + 1);
        float score = -INFINITY;
        size_t slot = 0;
        if (lane < count) {
            slot = cache_slot(table, tile + lane, params.block_size);
            score = 0.0f;
            for (int i = 0; i < params.s1.len; i++) score += q[i] * cached.at(params.k1, params.s1, slot, kv_head, i);
            for (int i = 0; i < params.s2.len; i++)
                score += q[params.s1.len + i] * cached.at(params.k2, params.s2, slot, kv_head, i);
        }
        // fmaxf drops a NaN score, but its weight below stays NaN and shows in the output.
        const float new_max = fmaxf(running_max, warp_max(score));
        const float rescale = expf(running_max - new_max);
        const float weight = lane < count ? expf(score - new_max) : 0.0f;
        denom = denom * rescale + weight;
        running_max = new_max;
        tile_weight[warp][lane] = weight;
        tile_slot[warp][lane] = slot;
        __syncwarp();
#pragma unroll
        for (int i = 0; i < MAX_VALUE_PER_LANE; i++) acc[i] *= rescale;
        for (int j = 0; j < count; j++) {
            const size_t value_slot = tile_slot[warp][j];
            const float w = tile_weight[warp][j];
#pragma unroll
            for (int i = 0; i < MAX_VALUE_PER_LANE; i++) {
                const int c = lane + 32 * i;
                if (c < params.sv.len) acc[i] += w * cached.at(params.v, params.sv, value_slot, kv_head, c);
            }
        }
        __syncwarp();  // every lane has read the tile before the next one overwrites it
    }
    denom = warp_sum(denom);
    float* o = params.partial_o + job * params.sv.len;
#pragma unroll
    for (int i = 0; i < MAX_VALUE_PER_LANE; i++) {
        const int c = lane + 32 * i;
        if (c < params.sv.len) o[c] = denom > 0.0f ? acc[i] / denom : 0.0f;
    }
    if (lane == 0) params.partial_lse[job] = denom > 0.0f ? running_max + logf(denom) : -INFINITY;
}

// out[row, head·dv + c] = Σ_split e^(lse_split − lse) · partial_split, lse = log Σ e^lse_split.
// One warp per (row, head).
template <typename T> __device__ void combine_splits(const ExactCombineParams<T>& params) {
    const int job = blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (job >= params.jobs) return;
    float m = -INFINITY;
    for (int s = 0; s < params.splits; s++) m = fmaxf(m, params.partial_lse[(size_t)s * params.jobs + job]);
    float sum = 0.0f;
    for (int s = 0; s < params.splits; s++) {
        const float lse = params.partial_lse[(size_t)s * params.jobs + job];
        sum += lse == -INFINITY ? 0.0f : expf(lse - m);
    }
    for (int c = lane; c < params.dv; c += 32) {
        float v = 0.0f;
        for (int s = 0; s < params.splits; s++) {
            const float lse = params.partial_lse[(size_t)s * params.jobs + job];
            if (lse != -INFINITY) v += expf(lse - m) * params.partial_o[((size_t)s * params.jobs + job) * params.dv + c];
        }
        params.out[(size_t)job * params.dv + c] = from_f32<T>(v / sum);
    }
}

#define ENTRY_POINTS(NAME, T)                                                                               \
    extern "C" __global__ void paged_attention_##NAME(const __grid_constant__ ExactParams<T> params) {      \
        paged_attention(params, CachedRows<T>{nullptr, Fp8RowFormat{}});                                    \
    }                                                                                                       \
    extern "C" __global__ void paged_attention_fp8_##NAME(const __grid_constant__ ExactFp8Params<T> params) { \
        paged_attention(params.exact, CachedRows<T>{params.rows, params.format});                           \
    }                                                                                                       \
    extern "C" __global__ void combine_splits_##NAME(const __grid_constant__ ExactCombineParams<T> params) { \
        combine_splits(params);                                                                             \
    }

MLA_FOR_EACH_DTYPE(ENTRY_POINTS)
