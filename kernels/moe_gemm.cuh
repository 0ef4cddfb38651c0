// What the grouped expert GEMMs share (moe_grouped.cu's mma.sync and CUDA-core kernels,
// moe_wgmma.cu's wgmma ones): their params, the A row a padded row reads, and the epilogue.
#pragma once
#include "common.cuh"

#define NO_ROUTE 0xffffffffu  // a padding row of an expert's block, or a route with a bad id

// One grouped GEMM: row i of block b is `a`'s row (the route's token with `gather`, else row i
// itself) times expert block_expert[b]'s `w1` (and `w2`) [n, k_dim]ᵀ. gate+up (`w2` set):
// out = silu(a·w1ᵀ) ⊙ (a·w2ᵀ); down (`w2` null): out = route_weights[route] · (a·w1ᵀ).
template <typename T> struct MoeGemmParams {
    const T* a;
    const uint64_t* w1;  // [experts] device addresses of T[n, k_dim]
    const uint64_t* w2;
    const uint32_t* sorted_routes;
    const int32_t* block_expert;
    const float* route_weights;  // [routes]
    T* out;                      // [max_blocks · block_rows, n]
    int k_dim, n, top_k, gather;
};
static_assert(sizeof(MoeGemmParams<float>) == 72 && offsetof(MoeGemmParams<float>, k_dim) == 56,
              "mirrored in moe_grouped.rs");

__device__ __forceinline__ float silu(float g) { return g / (1.0f + __expf(-g)); }

// The A row of padded row `row` (NO_ROUTE: none, zeros) and the route it serves.
template <typename T> __device__ __forceinline__ const T* a_row(const MoeGemmParams<T>& p, int row, uint32_t route) {
    if (route == NO_ROUTE) return nullptr;
    return p.a + (size_t)(p.gather ? route / p.top_k : row) * p.k_dim;
}

// Stores one output value of padded row `row`: gate+up gets (gate, up), down (acc, unused).
template <bool GATE_UP, typename T>
__device__ __forceinline__ void store_out(const MoeGemmParams<T>& p, int row, uint32_t route, int col, float v1,
                                         float v2) {
    if (col >= p.n) return;
    float v;
    if (GATE_UP) {
        v = silu(v1) * v2;  // padding rows: silu(0)·0 = 0, so down reads finite rows
    } else {
        if (route == NO_ROUTE) return;
        v = v1 * p.route_weights[route];
    }
    p.out[(size_t)row * p.n + col] = from_f32<T>(v);
}
