// The grouped expert GEMMs of moe_grouped.cu on Hopper's warpgroup tensor cores (sm_90a), for
// 64-row blocks (experts with many tokens: prefill): one warpgroup per CTA computes 64 padded
// rows × 64 columns of w1 (and of w2 for gate+up) with wgmma m64n64k16, both operands K-major in
// the 128-byte swizzle, 64 k per stage, two stages in flight by cp.async (MoeWgmmaShared in
// attention/shared.cuh: 48 KiB of dynamic shared memory for gate+up). Same params, row gather and epilogue as the mma.sync kernels
// (moe_gemm.cuh), so the two are interchangeable. docs/kernels.md, "Grouped MoE".
// mla: no-spills
// mla: sm_90a
#include "common.cuh"
#include "moe_gemm.cuh"
#include "ptx/mma.cuh"
#include "ptx/wgmma.cuh"
#include "attention/shared.cuh"

#define WG_MOE_ROWS 64  // rows of a block (a wgmma M)
#define WG_MOE_COLS 64  // output columns of a CTA (a wgmma N)
#define WG_MOE_K 64     // k per stage: one swizzle atom wide
#define WG_MOE_STAGES 2

template <bool GATE_UP> __device__ __forceinline__ void moe_gemm_wgmma(const MoeGemmParams<bf16>& p) {
    constexpr int MATRICES = GATE_UP ? 2 : 1;
    auto& shared = dynamic_shared<MoeWgmmaShared<MATRICES>>();
    auto& a_s = shared.a;
    auto& w_s = shared.w;
    require_atom_aligned(a_s);
    const int expert = p.block_expert[blockIdx.y];
    if (expert < 0) return;  // past the padded total
    const int row0 = blockIdx.y * WG_MOE_ROWS, col0 = blockIdx.x * WG_MOE_COLS;
    const bf16* w1 = reinterpret_cast<const bf16*>(p.w1[expert]);
    const bf16* w2 = GATE_UP ? reinterpret_cast<const bf16*>(p.w2[expert]) : nullptr;

    // Copy plan: thread i copies 16-byte chunk i % 8 of rows i / 8 + 16·r (r < 4) of each
    // operand, into its swizzled place.
    const int chunk = threadIdx.x % 8;
    const bf16* a_src[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int row = row0 + threadIdx.x / 8 + 16 * r;
        a_src[r] = a_row(p, row, p.sorted_routes[row]);
    }
    auto load_stage = [&](int stage, int k0) {
        const int k = k0 + chunk * 8;
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int j = threadIdx.x / 8 + 16 * r;
            const uint32_t at = swizzled_offset(j, chunk * 8, WG_MOE_ROWS);
            const bool a_valid = a_src[r] && k < p.k_dim;
            async_copy16(a_s[stage] + at, a_valid ? a_src[r] + k : p.a, a_valid);
            const int n = col0 + j;
            const bool w_valid = n < p.n && k < p.k_dim;
#pragma unroll
            for (int m = 0; m < MATRICES; m++) {
                const bf16* w = m ? w2 : w1;
                async_copy16(w_s[stage][m] + at, w_valid ? w + (size_t)n * p.k_dim + k : w, w_valid);
            }
        }
    };

    float d[MATRICES][32];
#pragma unroll
    for (int m = 0; m < MATRICES; m++)
#pragma unroll
        for (int i = 0; i < 32; i++) d[m][i] = 0.0f;
    const int k_steps = (p.k_dim + WG_MOE_K - 1) / WG_MOE_K;
    load_stage(0, 0);
    async_commit();
    for (int ks = 0; ks < k_steps; ks++) {
        // The next stage's copies go out before this one's are waited for.
        if (ks + 1 < k_steps) load_stage((ks + 1) % WG_MOE_STAGES, (ks + 1) * WG_MOE_K);
        async_commit();
        async_wait<1>();
        fence_async_shared();  // the copies are visible to wgmma (the async proxy)
        __syncthreads();
        const int stage = ks % WG_MOE_STAGES;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < WG_MOE_K / 16; kk++) {
            const uint32_t at = swizzled_offset(0, kk * 16, WG_MOE_ROWS);
            const uint64_t a = wgmma_desc(a_s[stage] + at, 0, 1024);
#pragma unroll
            for (int m = 0; m < MATRICES; m++) wgmma_m64n64k16(d[m], a, wgmma_desc(w_s[stage][m] + at, 0, 1024));
        }
        wgmma_commit();
        wgmma_wait<0>();
#pragma unroll
        for (int m = 0; m < MATRICES; m++) fence_registers(d[m]);
        __syncthreads();  // every warp is done with this stage before the next step refills it
    }

    // Accumulators as mma.sync's C fragments: warp w holds rows 16w + g (+ 8), columns 8j + 2t.
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int row = row0 + 16 * warp + g + 8 * h;
        const uint32_t route = p.sorted_routes[row];
#pragma unroll
        for (int j = 0; j < WG_MOE_COLS / 8; j++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int i = 4 * j + 2 * h + c;
                store_out<GATE_UP>(p, row, route, col0 + 8 * j + 2 * t + c, d[0][i], d[MATRICES - 1][i]);
            }
    }
}

extern "C" __global__ void __launch_bounds__(128, 1) moe_gate_up_wgmma_bf16(const __grid_constant__ MoeGemmParams<bf16> p) {
    moe_gemm_wgmma<true>(p);
}
extern "C" __global__ void __launch_bounds__(128, 1) moe_down_wgmma_bf16(const __grid_constant__ MoeGemmParams<bf16> p) {
    moe_gemm_wgmma<false>(p);
}
