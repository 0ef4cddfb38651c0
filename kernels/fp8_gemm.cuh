// What the FP8 GEMM's builds share (fp8_gemm.cu: mma.sync, compute capability 8.9+;
// fp8_gemm_wgmma.cu: wgmma, sm_90a): the params mirrored in src/backend/cuda/fp8_gemm.rs, the A
// row of an output row, and the epilogue that stores an output element.
#pragma once
#include "common.cuh"
#include "moe_gemm.cuh"

#define FP8_BLOCK 128  // the scale blocks' side, in weights and activations

// out = (a · w1ᵀ) over FP8 operands. Dense (block_expert null): row r of out is row r of `a`,
// times expert 0 (w1[0], s1[0]). Grouped: as MoeGemmParams — row i of block b is `a`'s row
// (the route's token with `gather`) times expert block_expert[b]; gate+up (w2 set) stores
// silu(a·w1ᵀ) ⊙ (a·w2ᵀ), down stores route_weights[route] · (a·w1ᵀ).
template <typename T> struct Fp8GemmParams {
    const uint8_t* a;       // [a rows, k_dim] e4m3
    const float* a_scales;  // [a rows, k_blocks]
    const uint64_t* w1;     // [experts] addresses of uint8_t[n, k_dim]
    const uint64_t* w2;
    const uint64_t* s1;  // [experts] addresses of f32[⌈n / 128⌉, k_blocks]
    const uint64_t* s2;
    const uint32_t* sorted_routes;
    const int32_t* block_expert;
    const float* route_weights;
    T* out;  // [rows, n]
    // Split k (dense only): CTA z sums k blocks [z·k_split, (z + 1)·k_split) and stores its
    // f32 sums to partial[z][matrix][row][col] for fp8_split_reduce; null: one CTA per tile
    // (k_split = k_blocks) writes `out` itself.
    float* partial;
    int rows, k_dim, n, k_blocks, top_k, gather, k_split, pad;
};
static_assert(sizeof(Fp8GemmParams<float>) == 120 && offsetof(Fp8GemmParams<float>, rows) == 88,
              "mirrored in fp8_gemm.rs");

// The A row of output row `row` (-1: none, zeros): dense, the row itself; grouped, from the
// route the row serves.
template <typename T> __device__ __forceinline__ int fp8_a_row(const Fp8GemmParams<T>& p, int row) {
    if (!p.block_expert) return row < p.rows ? row : -1;
    const uint32_t route = p.sorted_routes[row];
    if (route == NO_ROUTE) return -1;
    return p.gather ? (int)(route / p.top_k) : row;
}

// The weights of expert `expert` (0 for a dense launch): w1's codes and scales, and w2's for
// gate+up (null otherwise).
struct Fp8ExpertWeights {
    const uint8_t* codes[2];
    const float* scales[2];
};
template <typename T, bool GATE_UP>
__device__ __forceinline__ Fp8ExpertWeights fp8_expert_weights(const Fp8GemmParams<T>& p, int expert) {
    return {{reinterpret_cast<const uint8_t*>(p.w1[expert]),
             GATE_UP ? reinterpret_cast<const uint8_t*>(p.w2[expert]) : nullptr},
            {reinterpret_cast<const float*>(p.s1[expert]),
             GATE_UP ? reinterpret_cast<const float*>(p.s2[expert]) : nullptr}};
}

// Stores output element (row, col) from its f32 sums `v1` (and `v2`, up, for gate+up); `route`:
// the row's sorted route (grouped). Split k: the sums go to this CTA's partial slice (z =
// blockIdx.z) for fp8_split_reduce; else gate+up stores silu(v1)·v2, grouped down v1 times the
// route weight, dense v1. Grouped gate+up writes its padding rows too (silu(0)·0 = 0): the down
// GEMM's quantization reads every row of a used block.
template <typename T, bool GATE_UP>
__device__ __forceinline__ void fp8_store(const Fp8GemmParams<T>& p, int row, uint32_t route, int col, float v1,
                                          float v2) {
    if (col >= p.n || (!p.block_expert && row >= p.rows)) return;
    if (p.partial) {
        constexpr int MATRICES = GATE_UP ? 2 : 1;
        float* sums = p.partial + ((size_t)blockIdx.z * MATRICES * p.rows + row) * p.n + col;
        sums[0] = v1;
        if (GATE_UP) sums[(size_t)p.rows * p.n] = v2;
        return;
    }
    if (!GATE_UP && p.block_expert && route == NO_ROUTE) return;
    const float v = GATE_UP ? silu(v1) * v2 : p.block_expert ? v1 * p.route_weights[route] : v1;
    p.out[(size_t)row * p.n + col] = from_f32<T>(v);
}
