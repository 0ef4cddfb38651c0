// Merges the splits of each row group of the tensor-core attention kernels by their
// log-sum-exp (flash-decoding), launched as a programmatic dependent of the attention kernel.
// docs/kernels.md, "The combine".
// mla: no-spills
#include "common.cuh"
#include "attention/rows.cuh"

// Merges the splits of each row group: weights 2^(lse_j − m) with m the largest lse_j, LSE
// m + log2 Σ weights. Block (group, row, column chunk) writes COMBINE_COLUMNS values of one
// output row (`out` row `pair` holds dv values, dv a multiple of 4) and, from the first chunk,
// the row's LSE (natural log, scaled scores) unless lse_out is null. Its warps take every
// warps-th split, each lane 4 columns, and the warps meet once through shared memory. A warp
// loads COMBINE_BATCH splits (LSE and values) into registers before it weighs any, so hundreds
// of splits cost a few rounds of loads; the launch bounds (two blocks per SM) leave ptxas the
// registers to keep them there.
#define COMBINE_LANE_COLUMNS 4
#define COMBINE_COLUMNS (32 * COMBINE_LANE_COLUMNS)
#define COMBINE_MAX_WARPS 8
#define COMBINE_BATCH 8
extern "C" __global__ void __launch_bounds__(32 * COMBINE_MAX_WARPS, 2)
attention_combine_bf16(const __grid_constant__ CombineParams params) {
    __shared__ float4 warp_x[COMBINE_MAX_WARPS][32];
    __shared__ float warp_weight[COMBINE_MAX_WARPS];
    const RowGroup& g = params.groups[blockIdx.x];
    const int i = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    if (g.rows[i] == NO_ROW) return;  // the whole block
    wait_for_previous_grid();         // the splits are written
    const int c = blockIdx.z * COMBINE_COLUMNS + lane * COMBINE_LANE_COLUMNS;
    const uint32_t item_first = g.item_first, item_stride = g.item_stride, items = g.items;
    const auto split_row = [&](uint32_t j) { return (size_t)(item_first + j * item_stride) * ROWS + i; };

    float m = -INFINITY;
    for (uint32_t j = threadIdx.x; j < items; j += blockDim.x) m = fmaxf(m, params.partial_lse[split_row(j)]);
    m = block_max(m);

    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float weight = 0.0f;
    // Unconditional loads (a split past the last reads the last again, a lane past dv column 0;
    // neither is counted), so that nothing holds the batch's loads behind one another.
    const int col = c < params.dv ? c : 0;
    for (uint32_t first = warp; first < items; first += warps * COMBINE_BATCH) {
        float lse[COMBINE_BATCH];
        float4 o[COMBINE_BATCH];
#pragma unroll
        for (int b = 0; b < COMBINE_BATCH; b++) {
            const size_t r = split_row(min(first + b * warps, items - 1));
            lse[b] = params.partial_lse[r];
            const float* row = params.partial_o + r * params.dv + col;
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
    if (c < params.dv) store_bf16x4(params.out + (size_t)g.rows[i] * params.dv + c, x, inv);
    if (params.lse_out != nullptr && blockIdx.z == 0 && lane == 0) params.lse_out[g.rows[i]] = log_sum_exp2(m, sum) * LN2;
}
