// The FP8 GEMM on Hopper's warpgroup tensor cores (sm_90a), for 64-row blocks (prefill, and
// experts with 32+ rows on average), where fp8_gemm.cu's mma.sync builds run at f16 rates (sm_90
// has no FP8 mma.sync: ptxas unpacks the codes to f16). One warpgroup per CTA computes 64 rows ×
// 64 columns of w1 (and of w2 for gate+up): per 128-wide k block — one stage, one row of the
// 128-byte swizzle atom, one scale block — four wgmma m64n64k32 e4m3 into fresh sums (the first
// with scale-d 0), which are
// then promoted with the block's activation and weight scales, as fp8_gemm.cu does; two stages in
// flight by cp.async (MoeWgmmaShared: 32 KiB, 48 for gate+up). Same params, rows, split k and
// epilogue as the mma.sync builds (fp8_gemm.cuh), so the two are interchangeable.
// docs/2026-12-07-fp8-weights-deep-dive.md.
// mla: no-spills
// mla: sm_90a
#include "common.cuh"
#include "fp8_gemm.cuh"
#include "ptx/mma.cuh"
#include "ptx/wgmma.cuh"
#include "attention/shared.cuh"

#define F8W_ROWS 64   // rows of a block (the wgmma M)
#define F8W_COLS 64   // output columns of a CTA (the wgmma N), inside one 128-row scale block
#define F8W_STAGES 2  // stages of FP8_BLOCK k bytes: one atom row each

template <typename T, bool GATE_UP> __device__ __forceinline__ void fp8_gemm_wgmma(const Fp8GemmParams<T>& p) {
    constexpr int MATRICES = GATE_UP ? 2 : 1;
    auto& shared = dynamic_shared<MoeWgmmaShared<MATRICES>>();
    auto& a_s = shared.a;
    auto& w_s = shared.w;
    require_atom_aligned(a_s);
    const int expert = p.block_expert ? p.block_expert[blockIdx.y] : 0;
    if (expert < 0) return;  // past the padded total
    const int row0 = blockIdx.y * F8W_ROWS, col0 = blockIdx.x * F8W_COLS;
    const Fp8ExpertWeights weights = fp8_expert_weights<T, GATE_UP>(p, expert);

    // Copy plan: thread i copies 16-byte chunk i % 8 of rows i / 8 + 16·r (r < 4) of each
    // operand, into its swizzled place (the bf16 offsets of chunk·8 values are its bytes).
    const int chunk = threadIdx.x % 8;
    const uint8_t* a_src[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int row = row0 + threadIdx.x / 8 + 16 * r;
        const int a = fp8_a_row(p, row);
        a_src[r] = a >= 0 ? p.a + (size_t)a * p.k_dim : nullptr;
    }
    auto load_stage = [&](int stage, int kb) {
        const int k = kb * FP8_BLOCK + chunk * 16;
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int j = threadIdx.x / 8 + 16 * r;
            const uint32_t at = swizzled_offset(j, chunk * 8, F8W_ROWS);
            const bool a_valid = a_src[r] && k < p.k_dim;
            async_copy16(a_s[stage] + at, a_valid ? a_src[r] + k : p.a, a_valid);
            const int n = col0 + j;
            const bool w_valid = n < p.n && k < p.k_dim;
#pragma unroll
            for (int m = 0; m < MATRICES; m++) {
                const uint8_t* w = weights.codes[m];
                async_copy16(w_s[stage][m] + at, w_valid ? w + (size_t)n * p.k_dim + k : w, w_valid);
            }
        }
    };

    // Accumulators as mma.sync's C fragments: warp w holds rows 16w + g (+ 8), columns 8j + 2t;
    // their A rows (-1: none) give the activation scales.
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int a_rows[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int row = row0 + 16 * warp + g + 8 * h;
        a_rows[h] = fp8_a_row(p, row);
    }
    float acc[MATRICES][32], part[MATRICES][32];
#pragma unroll
    for (int m = 0; m < MATRICES; m++)
#pragma unroll
        for (int i = 0; i < 32; i++) acc[m][i] = 0.0f;
    // This CTA's 128-wide k blocks (its split).
    const int kb0 = blockIdx.z * p.k_split, kb1 = min(kb0 + p.k_split, p.k_blocks);
    load_stage(0, kb0);
    async_commit();
    for (int kb = kb0; kb < kb1; kb++) {
        // The next stage's copies go out before this one's are waited for.
        if (kb + 1 < kb1) load_stage((kb - kb0 + 1) % F8W_STAGES, kb + 1);
        async_commit();
        // The block's scales, loaded now so that their latency passes under the wgmma.
        float ws[MATRICES], as[2];
#pragma unroll
        for (int m = 0; m < MATRICES; m++) ws[m] = weights.scales[m][(col0 / FP8_BLOCK) * p.k_blocks + kb];
#pragma unroll
        for (int h = 0; h < 2; h++) as[h] = a_rows[h] >= 0 ? p.a_scales[(size_t)a_rows[h] * p.k_blocks + kb] : 0.0f;
        async_wait<1>();
        fence_async_shared();  // the copies are visible to wgmma (the async proxy)
        __syncthreads();
        const int stage = (kb - kb0) % F8W_STAGES;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < FP8_BLOCK / 32; kk++) {
            const uint64_t a = wgmma_desc(a_s[stage] + kk * 32, 0, 1024);
#pragma unroll
            for (int m = 0; m < MATRICES; m++)
                wgmma_m64n64k32_e4m3(part[m], a, wgmma_desc(w_s[stage][m] + kk * 32, 0, 1024), kk > 0);
        }
        wgmma_commit();
        wgmma_wait<0>();
#pragma unroll
        for (int m = 0; m < MATRICES; m++) fence_registers(part[m]);
        // The block's sums times its scales join the output (d[4j + e] is row half e / 2).
#pragma unroll
        for (int m = 0; m < MATRICES; m++)
#pragma unroll
            for (int i = 0; i < 32; i++) acc[m][i] += part[m][i] * (as[(i % 4) / 2] * ws[m]);
        __syncthreads();  // every warp is done with this stage before the next block refills it
    }
    async_wait<0>();

#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int row = row0 + 16 * warp + g + 8 * h;
        const uint32_t route = p.block_expert ? p.sorted_routes[row] : 0;
#pragma unroll
        for (int j = 0; j < F8W_COLS / 8; j++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int i = 4 * j + 2 * h + c;
                fp8_store<T, GATE_UP>(p, row, route, col0 + 8 * j + 2 * t + c, acc[0][i], acc[MATRICES - 1][i]);
            }
    }
}

// Grid: (⌈n / 64⌉, row blocks of 64, k splits); 128 threads; bf16 activations (f32 runs take
// the mma.sync builds).
extern "C" __global__ void __launch_bounds__(128, 1) fp8_gemm_wgmma_bf16(const __grid_constant__ Fp8GemmParams<bf16> p) {
    fp8_gemm_wgmma<bf16, false>(p);
}
extern "C" __global__ void __launch_bounds__(128, 1)
    fp8_gate_up_wgmma_bf16(const __grid_constant__ Fp8GemmParams<bf16> p) {
    fp8_gemm_wgmma<bf16, true>(p);
}
