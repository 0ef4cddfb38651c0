// FP8 weights on tensor cores (compute capability 8.9+): DeepSeek's block-scaled format — e4m3
// codes with one f32 scale per 128 × 128 block of the weight — times activations quantized per
// row per 128 channels (scale amax / 448), as DeepSeek's inference code does. The mma.sync
// m16n8k32 products of one 128-wide k block are summed in f32 registers, then multiplied by the
// block's two scales and added to the output accumulators (the promotion DeepGEMM makes, which
// also keeps the tensor cores' narrower FP8 accumulation to 128 products). One kernel body
// serves a dense projection and the grouped expert GEMMs of moe_grouped.cu (gate+up with
// SiLU-and-mul, down with the route weight). src/ops/fp8_matmul.rs is the CPU reference.
// docs/2026-12-07-fp8-weights-deep-dive.md.
// mla: no-spills
#include "common.cuh"
#include "fp8.cuh"
#include "fp8_gemm.cuh"
#include "ptx/mma.cuh"

// --- The seam with src/backend/cuda/fp8_gemm.rs (#[repr(C)] mirrors, sizes asserted) ----------

// Row r (< rows; `ld` values apart in x) → codes[r] (cols e4m3 bytes) and scales[r] (one f32
// per 128 columns):
// scale = amax / 448 (1 for an all-zero block), code = e4m3(x / scale). With block_expert set
// (the grouped down GEMM's input), rows of blocks no expert uses (−1) are skipped.
template <typename T> struct Fp8QuantizeParams {
    const T* x;
    uint8_t* codes;
    float* scales;
    const int32_t* block_expert;
    int rows, cols, ld, k_blocks, block_rows, pad;
};
static_assert(sizeof(Fp8QuantizeParams<float>) == 56, "mirrored in fp8_gemm.rs");

// out[r][c] = the epilogue of Σ_z partial[z][·][r][c], summed in z order (the same bits every
// run): silu(gate)·up with `gate_up`, else the sum.
template <typename T> struct Fp8ReduceParams {
    const float* partial;
    T* out;
    int rows, n, splits, gate_up;
};
static_assert(sizeof(Fp8ReduceParams<float>) == 32, "mirrored in fp8_gemm.rs");

// --- Activation quantization ---------------------------------------------------------------

#define QUANTIZE_THREADS 128

// One CTA per row, one warp per 128-column block at a time.
template <typename T> __device__ void quantize_rows_fp8(const Fp8QuantizeParams<T>& p) {
    const int row = blockIdx.x;
    if (p.block_expert && p.block_expert[row / p.block_rows] < 0) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const T* x = p.x + (size_t)row * p.ld;
    for (int b = warp; b < p.k_blocks; b += QUANTIZE_THREADS / 32) {
        const int first = b * FP8_BLOCK, end = min(first + FP8_BLOCK, p.cols);
        float amax = 0.0f;
        for (int c = first + lane; c < end; c += 32) amax = fmaxf(amax, fabsf(to_f32(x[c])));
        amax = warp_max(amax);
        const float scale = amax > 0.0f ? amax / E4M3_MAX : 1.0f;
        for (int c = first + lane; c < end; c += 32)
            p.codes[(size_t)row * p.cols + c] = (uint8_t)f32_to_e4m3(to_f32(x[c]) / scale);
        if (lane == 0) p.scales[(size_t)row * p.k_blocks + b] = scale;
    }
}

#define FP8_QUANTIZE_ENTRY(T, SUFFIX)                                                   \
    extern "C" __global__ void __launch_bounds__(QUANTIZE_THREADS)                     \
        quantize_rows_fp8_##SUFFIX(const __grid_constant__ Fp8QuantizeParams<T> p) { \
        quantize_rows_fp8<T>(p);                                                       \
    }
FP8_QUANTIZE_ENTRY(float, f32)
FP8_QUANTIZE_ENTRY(bf16, bf16)

// --- The GEMM ------------------------------------------------------------------------------

#define F8_BN 64             // output columns of a CTA (inside one 128-row weight scale block)
#define F8_BK 64             // k bytes per stage: two stages per scale block
#define F8_LD (F8_BK + 16)   // bytes per shared row: fragment loads of 8 rows hit 8 bank groups

template <int BM, int STAGES> struct alignas(16) Fp8Tiles {
    uint8_t a[STAGES][BM][F8_LD];
    uint8_t w[STAGES][2][F8_BN][F8_LD];
};

// A CTA of WARPS_M × WARPS_N warps computes BM rows × F8_BN columns (of w1, and w2 for gate+up)
// over k in F8_BK stages, STAGES in flight by cp.async; each warp an (BM / WARPS_M) ×
// (F8_BN / WARPS_N) tile of m16n8k32. Needs k_dim % 16 == 0 and 16-byte aligned buffers
// (host-checked).
template <typename T, bool GATE_UP, int BM, int WARPS_M, int WARPS_N>
__device__ void fp8_gemm_mma(const Fp8GemmParams<T>& p) {
    constexpr int STAGES = 3, THREADS = 32 * WARPS_M * WARPS_N;
    constexpr int WM = BM / WARPS_M, WN = F8_BN / WARPS_N, MT = WM / 16, NT = WN / 8;
    constexpr int MATRICES = GATE_UP ? 2 : 1;
    static_assert(WM % 16 == 0 && WN % 8 == 0, "whole mma tiles per warp");
    __shared__ Fp8Tiles<BM, STAGES> tiles;
    const int expert = p.block_expert ? p.block_expert[blockIdx.y] : 0;
    if (expert < 0) return;  // past the padded total
    const int row0 = blockIdx.y * BM, col0 = blockIdx.x * F8_BN;
    const Fp8ExpertWeights weights = fp8_expert_weights<T, GATE_UP>(p, expert);

    // Copy plan: 16-byte chunks, 4 per row of a stage.
    constexpr int CHUNKS_A = BM * 4, CHUNKS_W = F8_BN * 4;
    const uint8_t* a_src[(CHUNKS_A + THREADS - 1) / THREADS];
#pragma unroll
    for (int i = 0; i * THREADS < CHUNKS_A; i++) {
        const int c = threadIdx.x + i * THREADS, row = row0 + c / 4;
        a_src[i] = nullptr;
        if (c < CHUNKS_A) {
            const int a = fp8_a_row(p, row);
            if (a >= 0) a_src[i] = p.a + (size_t)a * p.k_dim;
        }
    }
    auto load_stage = [&](int stage, int k0) {
#pragma unroll
        for (int i = 0; i * THREADS < CHUNKS_A; i++) {
            const int c = threadIdx.x + i * THREADS;
            if (c >= CHUNKS_A) break;
            const int k = k0 + (c % 4) * 16;
            const bool valid = a_src[i] && k < p.k_dim;
            async_copy16(&tiles.a[stage][c / 4][(c % 4) * 16], valid ? a_src[i] + k : p.a, valid);
        }
#pragma unroll
        for (int m = 0; m < MATRICES; m++) {
            for (int c = threadIdx.x; c < CHUNKS_W; c += THREADS) {
                const int n = col0 + c / 4, k = k0 + (c % 4) * 16;
                const bool valid = n < p.n && k < p.k_dim;
                const uint8_t* w = weights.codes[m];
                async_copy16(&tiles.w[stage][m][c / 4][(c % 4) * 16], valid ? w + (size_t)n * p.k_dim + k : w, valid);
            }
        }
    };

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int wm = (warp / WARPS_N) * WM, wn = (warp % WARPS_N) * WN;
    // The A rows of this lane's accumulators (g and g + 8 of each m tile), -1 for none.
    int a_rows[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = row0 + wm + mt * 16 + g + half * 8;
            a_rows[mt][half] = fp8_a_row(p, row);
        }

    float acc[MATRICES][MT][NT][4] = {}, part[MATRICES][MT][NT][4] = {};
    float ws[MATRICES] = {}, as[MT][2] = {};  // the current k block's weight and activation scales
    // This CTA's k steps: two per 128-wide block of its split.
    const int ks0 = blockIdx.z * p.k_split * 2;
    const int ks1 = min(ks0 + p.k_split * 2, (p.k_dim + F8_BK - 1) / F8_BK);
    for (int s = 0; s < STAGES - 1; s++) {
        if (ks0 + s < ks1) load_stage(s, (ks0 + s) * F8_BK);
        async_commit();
    }
    for (int ks = ks0; ks < ks1; ks++) {
        async_wait<STAGES - 2>();
        __syncthreads();  // stage ks is in; every warp is done with stage ks - 1, refilled next
        if (ks + STAGES - 1 < ks1) load_stage((ks - ks0 + STAGES - 1) % STAGES, (ks + STAGES - 1) * F8_BK);
        async_commit();
        const int stage = (ks - ks0) % STAGES;
        // The scales of this 128-wide k block, loaded as it starts, so that their latency
        // passes under its mma work instead of stalling the promotion.
        if (!(ks & 1)) {
            const int kb = ks / 2;
#pragma unroll
            for (int m = 0; m < MATRICES; m++) ws[m] = weights.scales[m][(col0 / FP8_BLOCK) * p.k_blocks + kb];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    const int ar = a_rows[mt][half];
                    as[mt][half] = ar >= 0 ? p.a_scales[(size_t)ar * p.k_blocks + kb] : 0.0f;
                }
        }
#pragma unroll
        for (int kk = 0; kk < F8_BK; kk += 32) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                const uint8_t* r0 = &tiles.a[stage][wm + mt * 16 + g][kk + 4 * t];
                const uint8_t* r8 = &tiles.a[stage][wm + mt * 16 + g + 8][kk + 4 * t];
                a[mt][0] = *reinterpret_cast<const uint32_t*>(r0);
                a[mt][1] = *reinterpret_cast<const uint32_t*>(r8);
                a[mt][2] = *reinterpret_cast<const uint32_t*>(r0 + 16);
                a[mt][3] = *reinterpret_cast<const uint32_t*>(r8 + 16);
            }
#pragma unroll
            for (int m = 0; m < MATRICES; m++) {
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const uint8_t* wr = &tiles.w[stage][m][wn + nt * 8 + g][kk + 4 * t];
                    const uint32_t b0 = *reinterpret_cast<const uint32_t*>(wr);
                    const uint32_t b1 = *reinterpret_cast<const uint32_t*>(wr + 16);
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) mma_e4m3_16832(part[m][mt][nt], a[mt], b0, b1);
                }
            }
        }
        // The end of a 128-wide k block (or of k): its sums times its scales join the output.
        if ((ks & 1) || ks == ks1 - 1) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int half = 0; half < 2; half++)
#pragma unroll
                    for (int m = 0; m < MATRICES; m++)
#pragma unroll
                        for (int nt = 0; nt < NT; nt++)
#pragma unroll
                            for (int j = 0; j < 2; j++) {
                                float& s = part[m][mt][nt][half * 2 + j];
                                acc[m][mt][nt][half * 2 + j] += s * (as[mt][half] * ws[m]);
                                s = 0.0f;
                            }
        }
    }
    async_wait<0>();
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = row0 + wm + mt * 16 + g + half * 8;
            const uint32_t route = p.block_expert ? p.sorted_routes[row] : 0;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const int col = col0 + wn + nt * 8 + 2 * t;
#pragma unroll
                for (int j = 0; j < 2; j++)
                    fp8_store<T, GATE_UP>(p, row, route, col + j, acc[0][mt][nt][half * 2 + j],
                                          acc[MATRICES - 1][mt][nt][half * 2 + j]);
            }
        }
    }
}

// Grid: (⌈n / F8_BN⌉, row blocks, k splits); 128 threads. 16-row blocks for decode, 64 for
// prefill; dense and grouped launches share each build (`block_expert` tells them apart). The
// f32 builds serve `--fp8-activations dynamic` in f32 (the FP8 products are the same; only the
// activations read and the outputs stored are f32).
#define FP8_GEMM_ENTRY(NAME, T, GATE_UP, BM, WARPS_M, WARPS_N)                                        \
    extern "C" __global__ void __launch_bounds__(128) NAME(const __grid_constant__ Fp8GemmParams<T> p) { \
        fp8_gemm_mma<T, GATE_UP, BM, WARPS_M, WARPS_N>(p);                                            \
    }
#define FP8_GEMM_ENTRIES(T, SUFFIX)                                        \
    FP8_GEMM_ENTRY(fp8_gemm_mma16_##SUFFIX, T, false, 16, 1, 4)            \
    FP8_GEMM_ENTRY(fp8_gemm_mma64_##SUFFIX, T, false, 64, 2, 2)            \
    FP8_GEMM_ENTRY(fp8_gate_up_mma16_##SUFFIX, T, true, 16, 1, 4)          \
    FP8_GEMM_ENTRY(fp8_gate_up_mma64_##SUFFIX, T, true, 64, 2, 2)
FP8_GEMM_ENTRIES(float, f32)
FP8_GEMM_ENTRIES(bf16, bf16)

// One CTA per row, threads over its columns.
template <typename T> __device__ void fp8_split_reduce(const Fp8ReduceParams<T>& p) {
    const int row = blockIdx.x, matrices = p.gate_up ? 2 : 1;
    for (int col = threadIdx.x; col < p.n; col += blockDim.x) {
        float v[2] = {0.0f, 0.0f};
        for (int z = 0; z < p.splits; z++)
            for (int m = 0; m < matrices; m++)
                v[m] += p.partial[(((size_t)z * matrices + m) * p.rows + row) * p.n + col];
        p.out[(size_t)row * p.n + col] = from_f32<T>(p.gate_up ? silu(v[0]) * v[1] : v[0]);
    }
}

extern "C" __global__ void fp8_split_reduce_f32(const __grid_constant__ Fp8ReduceParams<float> p) {
    fp8_split_reduce<float>(p);
}
extern "C" __global__ void fp8_split_reduce_bf16(const __grid_constant__ Fp8ReduceParams<bf16> p) {
    fp8_split_reduce<bf16>(p);
}
