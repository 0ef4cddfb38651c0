// Paged causal attention, straightforward and exact: one warp per (query row, head, KV split)
// with an online softmax over its part of the row's context, 32 tokens at a time, then a
// combine of the splits by their log-sum-exp (flash-decoding), so that a few long sequences
// still fill the GPU. One kernel serves MHA/GQA, MLA absorbed (keys and values are the latent
// cache rows) and MLA materialised (keys and values expanded by kv_b): a score is the dot
// product of two query segments with two key segments, which may live in different buffers, so
// no kernel has to concatenate them first. The tuned MLA kernels replace this for decode; this
// one stays as their GPU-side reference.
// mla: no-spills
#include "common.cuh"

#define WARPS_PER_BLOCK 4
// Widest value vector (MLA absorbed: kv_lora_rank) and widest query, checked on the host.
#define MAX_VALUE_PER_LANE 16
#define MAX_QUERY 1024

// Where one key segment lives: row `slot` of a buffer of `width`-wide rows, from column
// `offset + kv_head * head_stride`.
struct KeySegment {
    int width, offset, head_stride, len;
};

// Writes, per (split, row, head), the split's normalised output and its LSE (natural log).
template <typename T>
__device__ void paged_attention(
    float* partial_o, float* partial_lse,
    const T* q1, int q1_stride, int q1_head_stride,
    const T* q2, int q2_stride, int q2_head_stride,
    const T* k1, KeySegment s1, const T* k2, KeySegment s2,
    const T* v, int v_width, int v_offset, int v_head_stride, int dv,
    int heads, int group,
    const uint32_t* block_tables, const uint32_t* table_start, int block_size,
    const uint32_t* row_seq, const uint32_t* row_pos, int window, float scale, int split_len) {
    __shared__ float query[WARPS_PER_BLOCK][MAX_QUERY];
    __shared__ float tile_weight[WARPS_PER_BLOCK][32];
    __shared__ size_t tile_slot[WARPS_PER_BLOCK][32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const size_t row = blockIdx.x, rows = gridDim.x, split = blockIdx.z;
    const int head = blockIdx.y * WARPS_PER_BLOCK + warp;
    if (head >= heads) return;  // whole warps leave; nothing below synchronises the block
    float* q = query[warp];
    for (int i = lane; i < s1.len; i += 32) q[i] = to_f32(q1[row * q1_stride + head * q1_head_stride + i]) * scale;
    for (int i = lane; i < s2.len; i += 32) q[s1.len + i] = to_f32(q2[row * q2_stride + head * q2_head_stride + i]) * scale;
    __syncwarp();

    const uint32_t* table = block_tables + table_start[row_seq[row]];
    const int pos = row_pos[row];
    const int kv_head = head / group;
    const int first = max(window > 0 ? max(0, pos + 1 - window) : 0, (int)split * split_len);
    const int last = min(pos, ((int)split + 1) * split_len - 1);
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
            slot = cache_slot(table, tile + lane, block_size);
            const T* key1 = k1 + slot * s1.width + s1.offset + kv_head * s1.head_stride;
            const T* key2 = k2 + slot * s2.width + s2.offset + kv_head * s2.head_stride;
            score = 0.0f;
            for (int i = 0; i < s1.len; i++) score += q[i] * to_f32(key1[i]);
            for (int i = 0; i < s2.len; i++) score += q[s1.len + i] * to_f32(key2[i]);
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
            const T* value = v + tile_slot[warp][j] * v_width + v_offset + kv_head * v_head_stride;
            const float w = tile_weight[warp][j];
#pragma unroll
            for (int i = 0; i < MAX_VALUE_PER_LANE; i++) {
                const int c = lane + 32 * i;
                if (c < dv) acc[i] += w * to_f32(value[c]);
            }
        }
        __syncwarp();  // every lane has read the tile before the next one overwrites it
    }
    denom = warp_sum(denom);
    const size_t job = (split * rows + row) * heads + head;
    float* o = partial_o + job * dv;
#pragma unroll
    for (int i = 0; i < MAX_VALUE_PER_LANE; i++) {
        const int c = lane + 32 * i;
        if (c < dv) o[c] = denom > 0.0f ? acc[i] / denom : 0.0f;
    }
    if (lane == 0) partial_lse[job] = denom > 0.0f ? running_max + logf(denom) : -INFINITY;
}

// out[row, head·dv + c] = Σ_split e^(lse_split − lse) · partial_split, lse = log Σ e^lse_split.
// One warp per (row, head).
template <typename T>
__device__ void combine_splits(T* out, const float* partial_o, const float* partial_lse, int jobs, int splits, int dv) {
    const int job = blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (job >= jobs) return;
    float m = -INFINITY;
    for (int s = 0; s < splits; s++) m = fmaxf(m, partial_lse[(size_t)s * jobs + job]);
    float sum = 0.0f;
    for (int s = 0; s < splits; s++) {
        const float lse = partial_lse[(size_t)s * jobs + job];
        sum += lse == -INFINITY ? 0.0f : expf(lse - m);
    }
    for (int c = lane; c < dv; c += 32) {
        float v = 0.0f;
        for (int s = 0; s < splits; s++) {
            const float lse = partial_lse[(size_t)s * jobs + job];
            if (lse != -INFINITY) v += expf(lse - m) * partial_o[((size_t)s * jobs + job) * dv + c];
        }
        out[(size_t)job * dv + c] = from_f32<T>(v / sum);
    }
}

#define ENTRY_POINTS(NAME, T)                                                                          \
    extern "C" __global__ void paged_attention_##NAME(                                                 \
        float* partial_o, float* partial_lse, const T* q1, int q1_stride, int q1_head_stride,           \
        const T* q2, int q2_stride, int q2_head_stride, const T* k1, KeySegment s1, const T* k2,        \
        KeySegment s2, const T* v, int v_width, int v_offset, int v_head_stride, int dv, int heads,     \
        int group, const uint32_t* block_tables, const uint32_t* table_start, int block_size,          \
        const uint32_t* row_seq, const uint32_t* row_pos, int window, float scale, int split_len) {    \
        paged_attention(partial_o, partial_lse, q1, q1_stride, q1_head_stride, q2, q2_stride,          \
                        q2_head_stride, k1, s1, k2, s2, v, v_width, v_offset, v_head_stride, dv,      \
                        heads, group, block_tables, table_start, block_size, row_seq, row_pos,         \
                        window, scale, split_len);                                                     \
    }                                                                                                  \
    extern "C" __global__ void combine_splits_##NAME(T* out, const float* partial_o,                   \
                                                     const float* partial_lse, int jobs, int splits,   \
                                                     int dv) {                                         \
        combine_splits(out, partial_o, partial_lse, jobs, splits, dv);                                 \
    }

MLA_FOR_EACH_DTYPE(ENTRY_POINTS)
