// The routed experts of an MoE layer in four launches that never need the host: align (routes
// sorted by expert, each expert's rows padded to the GEMM's row block), a grouped GEMM for
// gate+up with SiLU-and-mul in its epilogue, a grouped GEMM for down with the route weight
// applied, and a combine that sums each token's k expert rows in route order (no float
// atomics: the same bits every run). Every buffer is sized on the host for the worst case
// (routes + experts·(block − 1) rows); CTAs past the padded total exit at once. The host sends
// the expert weights as tables of device addresses. docs/kernels.md, "Grouped MoE".
// mla: no-spills
#include "common.cuh"
#include "moe_gemm.cuh"
#include "ptx/mma.cuh"


// --- The seam with src/backend/cuda/moe_grouped.rs (#[repr(C)] mirrors, sizes asserted) -----

// Align: routes r < routes (token r / top_k, its (r % top_k)-th choice) with `expert_ids[r]`.
struct MoeAlignParams {
    const uint32_t* expert_ids;  // [routes]
    uint32_t* sorted_routes;     // [max_blocks · block_rows]: each padded row's route or NO_ROUTE
    int32_t* block_expert;       // [max_blocks]: each row block's expert, -1 past the total
    uint32_t* route_row;         // [routes]: each route's row in sorted_routes
    int routes, experts, block_rows, max_blocks;
};
static_assert(sizeof(MoeAlignParams) == 48 && offsetof(MoeAlignParams, routes) == 32, "mirrored in moe_grouped.rs");

// Token t's output: shared[t] (if any) + Σ_j y[route_row[t·top_k + j]], j in route order.
template <typename T> struct MoeCombineParams {
    const T* y;
    const T* shared;  // [tokens, hidden] or null
    const uint32_t* route_row;
    T* out;
    int tokens, top_k, hidden, pad;
};
static_assert(sizeof(MoeCombineParams<float>) == 48, "mirrored in moe_grouped.rs");

// --- Align ---------------------------------------------------------------------------------

#define ALIGN_THREADS 1024
#define MAX_EXPERTS 1024

// One CTA. Counts per expert, pads them to whole row blocks, then each warp places its experts'
// routes in route order (a ballot over 32 routes at a time), so the layout is deterministic.
extern "C" __global__ void __launch_bounds__(ALIGN_THREADS) moe_align(const __grid_constant__ MoeAlignParams p) {
    __shared__ int count[MAX_EXPERTS];
    __shared__ int first[MAX_EXPERTS + 1];
    for (int e = threadIdx.x; e < p.experts; e += blockDim.x) count[e] = 0;
    for (int r = threadIdx.x; r < p.routes; r += blockDim.x) p.route_row[r] = NO_ROUTE;
    __syncthreads();
    for (int r = threadIdx.x; r < p.routes; r += blockDim.x) {
        const uint32_t e = p.expert_ids[r];
        if (e < (uint32_t)p.experts) atomicAdd(&count[e], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int total = 0;
        for (int e = 0; e < p.experts; e++) {
            first[e] = total;
            total += (count[e] + p.block_rows - 1) / p.block_rows * p.block_rows;
        }
        first[p.experts] = total;
    }
    __syncthreads();
    const int used_blocks = first[p.experts] / p.block_rows;
    for (int b = used_blocks + threadIdx.x; b < p.max_blocks; b += blockDim.x) p.block_expert[b] = -1;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int e = warp; e < p.experts; e += warps) {
        const int begin = first[e], end = first[e + 1];
        for (int b = begin / p.block_rows + lane; b < end / p.block_rows; b += 32) p.block_expert[b] = e;
        int placed = 0;
        for (int base = 0; base < p.routes; base += 32) {
            const int r = base + lane;
            const bool mine = r < p.routes && p.expert_ids[r] == (uint32_t)e;
            const uint32_t ballot = __ballot_sync(0xffffffffu, mine);
            if (mine) {
                const int row = begin + placed + __popc(ballot & ((1u << lane) - 1));
                p.sorted_routes[row] = r;
                p.route_row[r] = row;
            }
            placed += __popc(ballot);
        }
        for (int row = begin + placed + lane; row < end; row += 32) p.sorted_routes[row] = NO_ROUTE;
    }
}

// --- The grouped GEMMs ---------------------------------------------------------------------

#define GEMM_BN 64  // output columns of a CTA
#define GEMM_BK 32  // k per stage
#define GEMM_LD (GEMM_BK + 8)  // bf16 per shared row: fragment loads of 8 rows hit 8 bank groups

// bf16 on tensor cores: a CTA of WARPS_M × WARPS_N warps computes BM rows × GEMM_BN columns
// (of w1, and of w2 for gate+up) over k in GEMM_BK steps, STAGES in flight by cp.async; each
// warp an (BM / WARPS_M) × (GEMM_BN / WARPS_N) tile of mma.sync m16n8k16 with f32 accumulators.
// Needs k_dim % 8 == 0 (16-byte rows of A and W) and 16-byte aligned buffers (host-checked).
template <int BM, int STAGES> struct alignas(16) MoeTiles {
    bf16 a[STAGES][BM][GEMM_LD];
    bf16 w[STAGES][2][GEMM_BN][GEMM_LD];
};

template <bool GATE_UP, int BM, int WARPS_M, int WARPS_N>
__device__ void moe_gemm_mma(const MoeGemmParams<bf16>& p) {
    constexpr int STAGES = 3, THREADS = 32 * WARPS_M * WARPS_N;
    constexpr int WM = BM / WARPS_M, WN = GEMM_BN / WARPS_N, MT = WM / 16, NT = WN / 8;
    static_assert(WM % 16 == 0 && WN % 8 == 0, "whole mma tiles per warp");
    typedef MoeTiles<BM, STAGES> Tiles;
    __shared__ Tiles tiles;
    const int expert = p.block_expert[blockIdx.y];
    if (expert < 0) return;  // past the padded total
    constexpr int MATRICES = GATE_UP ? 2 : 1;
    const int row0 = blockIdx.y * BM, col0 = blockIdx.x * GEMM_BN;
    const bf16* w1 = reinterpret_cast<const bf16*>(p.w1[expert]);
    const bf16* w2 = GATE_UP ? reinterpret_cast<const bf16*>(p.w2[expert]) : nullptr;

    // Copy plan: 16-byte chunks, 4 per row of a stage (GEMM_BK = 32 bf16).
    constexpr int CHUNKS_A = BM * 4, CHUNKS_W = GEMM_BN * 4;
    const bf16* a_src[(CHUNKS_A + THREADS - 1) / THREADS];
#pragma unroll
    for (int i = 0; i * THREADS < CHUNKS_A; i++) {
        const int c = threadIdx.x + i * THREADS;
        a_src[i] = nullptr;
        if (c < CHUNKS_A) {
            const int row = row0 + c / 4;
            a_src[i] = a_row(p, row, p.sorted_routes[row]);
        }
    }
    auto load_stage = [&](int stage, int k0) {
#pragma unroll
        for (int i = 0; i * THREADS < CHUNKS_A; i++) {
            const int c = threadIdx.x + i * THREADS;
            if (c >= CHUNKS_A) break;
            const int k = k0 + (c % 4) * 8;
            const bool valid = a_src[i] && k < p.k_dim;
            async_copy16(&tiles.a[stage][c / 4][(c % 4) * 8], valid ? a_src[i] + k : p.a, valid);
        }
#pragma unroll
        for (int m = 0; m < MATRICES; m++) {
            const bf16* w = m ? w2 : w1;
            for (int c = threadIdx.x; c < CHUNKS_W; c += THREADS) {
                const int n = col0 + c / 4, k = k0 + (c % 4) * 8;
                const bool valid = n < p.n && k < p.k_dim;
                async_copy16(&tiles.w[stage][m][c / 4][(c % 4) * 8], valid ? w + (size_t)n * p.k_dim + k : w, valid);
            }
        }
    };

    float acc[MATRICES][MT][NT][4] = {};
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wm = (warp / WARPS_N) * WM, wn = (warp % WARPS_N) * WN;
    const int k_steps = (p.k_dim + GEMM_BK - 1) / GEMM_BK;
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < k_steps) load_stage(s, s * GEMM_BK);
        async_commit();
    }
    for (int ks = 0; ks < k_steps; ks++) {
        async_wait<STAGES - 2>();
        __syncthreads();  // stage ks is in; every warp is done with stage ks - 1, refilled next
        if (ks + STAGES - 1 < k_steps) load_stage((ks + STAGES - 1) % STAGES, (ks + STAGES - 1) * GEMM_BK);
        async_commit();
        const int stage = ks % STAGES;
#pragma unroll
        for (int kk = 0; kk < GEMM_BK; kk += 16) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const bf16* r0 = &tiles.a[stage][wm + mt * 16 + g][kk + 2 * t];
                const bf16* r8 = &tiles.a[stage][wm + mt * 16 + g + 8][kk + 2 * t];
                a[mt][0] = *reinterpret_cast<const uint32_t*>(r0);
                a[mt][1] = *reinterpret_cast<const uint32_t*>(r8);
                a[mt][2] = *reinterpret_cast<const uint32_t*>(r0 + 8);
                a[mt][3] = *reinterpret_cast<const uint32_t*>(r8 + 8);
            }
#pragma unroll
            for (int m = 0; m < MATRICES; m++) {
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const bf16* wr = &tiles.w[stage][m][wn + nt * 8 + g][kk + 2 * t];
                    const uint32_t b0 = *reinterpret_cast<const uint32_t*>(wr);
                    const uint32_t b1 = *reinterpret_cast<const uint32_t*>(wr + 8);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) mma_bf16_16816(acc[m][mt][nt], a[mt], b0, b1);
                }
            }
        }
    }
    async_wait<0>();
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = row0 + wm + mt * 16 + g + half * 8;
            const uint32_t route = p.sorted_routes[row];
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const int col = col0 + wn + nt * 8 + 2 * t;
#pragma unroll
                for (int j = 0; j < 2; j++)
                    store_out<GATE_UP>(p, row, route, col + j, acc[0][mt][nt][half * 2 + j],
                                       acc[MATRICES - 1][mt][nt][half * 2 + j]);
            }
        }
    }
}

// Any element type and shape on the CUDA cores (the f32 build, and bf16 rows that are not 16
// bytes): 16 rows × GEMM_BN columns per CTA of 256 threads, f32 tiles of GEMM_BK in shared memory.
#define SIMT_ROWS 16
template <bool GATE_UP, typename T> __device__ void moe_gemm_simt(const MoeGemmParams<T>& p) {
    __shared__ float a_tile[SIMT_ROWS][GEMM_BK + 1];
    __shared__ float w_tile[2][GEMM_BN][GEMM_BK + 1];
    const int expert = p.block_expert[blockIdx.y];
    if (expert < 0) return;
    constexpr int MATRICES = GATE_UP ? 2 : 1;
    const int row0 = blockIdx.y * SIMT_ROWS, col0 = blockIdx.x * GEMM_BN;
    const T* w1 = reinterpret_cast<const T*>(p.w1[expert]);
    const T* w2 = GATE_UP ? reinterpret_cast<const T*>(p.w2[expert]) : nullptr;
    const int tx = threadIdx.x % GEMM_BN, ty = threadIdx.x / GEMM_BN;  // 4 row groups of 4 rows
    float acc[MATRICES][4] = {};
    for (int k0 = 0; k0 < p.k_dim; k0 += GEMM_BK) {
        __syncthreads();  // the previous tiles are used up
        for (int i = threadIdx.x; i < SIMT_ROWS * GEMM_BK; i += blockDim.x) {
            const int r = i / GEMM_BK, k = k0 + i % GEMM_BK;
            const T* src = a_row(p, row0 + r, p.sorted_routes[row0 + r]);
            a_tile[r][i % GEMM_BK] = src && k < p.k_dim ? to_f32(src[k]) : 0.0f;
        }
#pragma unroll
        for (int m = 0; m < MATRICES; m++) {
            const T* w = m ? w2 : w1;
            for (int i = threadIdx.x; i < GEMM_BN * GEMM_BK; i += blockDim.x) {
                const int n = col0 + i / GEMM_BK, k = k0 + i % GEMM_BK;
                w_tile[m][i / GEMM_BK][i % GEMM_BK] = n < p.n && k < p.k_dim ? to_f32(w[(size_t)n * p.k_dim + k]) : 0.0f;
            }
        }
        __syncthreads();
        for (int k = 0; k < GEMM_BK; k++) {
#pragma unroll
            for (int m = 0; m < MATRICES; m++) {
                const float wv = w_tile[m][tx][k];
#pragma unroll
                for (int i = 0; i < 4; i++) acc[m][i] += a_tile[ty * 4 + i][k] * wv;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int row = row0 + ty * 4 + i;
        store_out<GATE_UP>(p, row, p.sorted_routes[row], col0 + tx, acc[0][i], acc[MATRICES - 1][i]);
    }
}

// Grid: (ceil(n / GEMM_BN), max_blocks); blocks of 128 threads (mma) or 256 (simt). Each GEMM
// is built for gate+up and for down.
#define GEMM_ENTRIES(STEP, GATE_UP)                                                                    \
    extern "C" __global__ void __launch_bounds__(128) moe_##STEP##_mma16_bf16(const __grid_constant__ MoeGemmParams<bf16> p) { \
        moe_gemm_mma<GATE_UP, 16, 1, 4>(p);                                                            \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(128) moe_##STEP##_mma64_bf16(const __grid_constant__ MoeGemmParams<bf16> p) { \
        moe_gemm_mma<GATE_UP, 64, 2, 2>(p);                                                            \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256) moe_##STEP##_simt_f32(const __grid_constant__ MoeGemmParams<float> p) { \
        moe_gemm_simt<GATE_UP, float>(p);                                                              \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256) moe_##STEP##_simt_bf16(const __grid_constant__ MoeGemmParams<bf16> p) { \
        moe_gemm_simt<GATE_UP, bf16>(p);                                                               \
    }
GEMM_ENTRIES(gate_up, true)
GEMM_ENTRIES(down, false)

// --- Combine -------------------------------------------------------------------------------

// One CTA per token; f32 sums in route order, so a batch gives the same bits every run.
template <typename T> __device__ void moe_combine(const MoeCombineParams<T>& p) {
    const int token = blockIdx.x;
    const uint32_t* rows = p.route_row + (size_t)token * p.top_k;
    for (int c = threadIdx.x; c < p.hidden; c += blockDim.x) {
        float sum = p.shared ? to_f32(p.shared[(size_t)token * p.hidden + c]) : 0.0f;
        for (int j = 0; j < p.top_k; j++)
            if (rows[j] != NO_ROUTE) sum += to_f32(p.y[(size_t)rows[j] * p.hidden + c]);
        p.out[(size_t)token * p.hidden + c] = from_f32<T>(sum);
    }
}

#define COMBINE_ENTRY(NAME, T)                                                                         \
    extern "C" __global__ void moe_combine_##NAME(const __grid_constant__ MoeCombineParams<T> p) { moe_combine<T>(p); }
MLA_FOR_EACH_DTYPE(COMBINE_ENTRY)
