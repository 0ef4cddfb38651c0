// The shared-memory plan of every tensor-core attention kernel (and of the grouped MoE GEMMs
// on wgmma, moe_wgmma.cu) as structs (the WMMA kernel's
// layout-dependent parts are placed by the host: WmmaShared in params.cuh), and the table that
// names each kernel's (MLA_SHARED_STORAGE): its sizeof is the launch size, which build.rs
// reads. Parts in the order the kernels used to carve them, so every offset is unchanged.
// docs/kernels.md, "The kernel/host seam".
#pragma once
#include "common.cuh"
#include "attention/params.cuh"

// The 16-row and 64-row mma.sync kernels (mma.cu).
#define MMA_WARPS 8
#define PAD 8               // bf16 per shared K/V/P row: rows 16 bytes apart modulo 128
#define S_LD (KV_TILE + 8)  // f32 per partial-score row: the fragment stores spread over the banks
#define K_PARTS 4           // the key width is cut in four: warp w scores key part w / 2
#define WIDE_RUNS 4         // runs of the 64-row kernel's unit
#define WIDE_ROWS (WIDE_RUNS * ROWS)
#define WIDE_STAGES 3

template <int DQ_, int DV_, bool V_IN_K_, int STAGES_> struct MmaShape {
    static constexpr int DQ = DQ_, DV = DV_, STAGES = STAGES_;
    static constexpr bool V_IN_K = V_IN_K_;
    static_assert(STAGES >= 2, "a tile in flight while one is used");
    static_assert(DQ % (16 * K_PARTS) == 0, "16-wide key steps in each of the key parts");
    static_assert(DV % (16 * MMA_WARPS) == 0, "8-wide output tiles in pairs on every warp");
    static constexpr int K_LD = DQ + PAD, V_LD = V_IN_K ? K_LD : DV + PAD, P_LD = KV_TILE + PAD;
    static constexpr int K_TILE = KV_TILE * K_LD, V_TILE = V_IN_K ? 0 : KV_TILE * V_LD;
    static constexpr int STAGE = K_TILE + V_TILE;
    static constexpr int PART_STEPS = DQ / 16 / K_PARTS, O_TILES = DV / (MMA_WARPS * 8);
};

// The 16-row kernel: STAGES tiles of keys (and values), each warp's partial scores, P, and the
// rows' running max, sum, rescale factor and position.
template <int DQ, int DV, bool V_IN_K, int STAGES> struct MmaShared {
    typedef MmaShape<DQ, DV, V_IN_K, STAGES> Shape;
    bf16 stages[STAGES * Shape::STAGE];
    float s[K_PARTS * ROWS * S_LD];
    bf16 p[ROWS * Shape::P_LD];
    float m[ROWS], l[ROWS], alpha[ROWS];
    int pos[ROWS];
};

// The 64-row mma.sync kernel: the 64 query rows, WIDE_STAGES tiles of the latent, P, each
// half's row maxima and sums, positions.
struct WideMmaShared {
    typedef MmaShape<576, 512, true, WIDE_STAGES> Shape;
    bf16 q[WIDE_ROWS * Shape::K_LD];
    bf16 stages[WIDE_STAGES * Shape::K_TILE];
    bf16 p[WIDE_ROWS * Shape::P_LD];
    float half_max[2 * WIDE_ROWS], half_sum[2 * WIDE_ROWS];
    int pos[WIDE_ROWS];
};

// The Hopper kernels (wgmma.cu, seesaw.cu): operands in the 128-byte swizzle, 1024-byte atoms.
#define WG_RUNS 4
#define WG_ROWS (WG_RUNS * ROWS)  // 64: wgmma's M
#define WG_TILE 64                // cached tokens per tile
#define WG_THREADS 256            // two warpgroups
#define LATENT 576
#define VALUES 512
#define ATOM 1024               // bytes of a swizzle atom: 8 rows × 128 bytes
#define BLOCK_BYTES (64 * 128)  // a 64-row operand's 64 columns: 8 atoms
#define WG_TILE_BYTES (WG_TILE * LATENT * 2)

// wgmma: the queries [64 × 576], two tiles [64 × 576], P [64 × 64] (swizzled), each half's row
// maxima and sums, positions.
struct WgmmaShared {
    unsigned char q[WG_ROWS * LATENT * 2];
    unsigned char stages[2 * WG_TILE_BYTES];
    unsigned char p[WG_ROWS * WG_TILE * 2];
    float half_max[2 * WG_ROWS], half_sum[2 * WG_ROWS];
    int pos[WG_ROWS];
};

// wgmma with P in registers: the queries, two tiles, positions.
struct WgmmaRsShared {
    unsigned char q[WG_ROWS * LATENT * 2];
    unsigned char stages[2 * WG_TILE_BYTES];
    int pos[WG_ROWS];
};

// The seesaw kernel: the queries, the even and odd tiles, an mbarrier per stage and part, the
// running max, the factor of each tile parity's rise, each warpgroup's row sums, positions.
struct SeesawShared {
    unsigned char q[WG_ROWS * LATENT * 2];
    unsigned char stages[2 * WG_TILE_BYTES];
    uint64_t full[4];
    float m[WG_ROWS], factor[2 * WG_ROWS], sum[2 * WG_ROWS];
    int pos[WG_ROWS];
};

// The WMMA kernel's fixed part, after the parts whose sizes depend on the layout (WmmaShared):
// each row's running max, sum, rescale factor and position.
struct WmmaRowStats {
    float m[ROWS], l[ROWS], alpha[ROWS];
    int pos[ROWS];
};

// The grouped MoE GEMMs on wgmma: per stage a 64-row block of A and a 64-column tile of each
// weight (two for gate+up), 64 k wide, in the 128-byte swizzle: 8 KiB each, atom-aligned.
template <int MATRICES> struct MoeWgmmaShared {
    uint8_t a[2][64 * 64 * 2];
    uint8_t w[2][MATRICES][64 * 64 * 2];
};

MLA_SHARED_STORAGE(attention_wmma_bf16, WmmaRowStats)
MLA_SHARED_STORAGE(attention_mma_latent576_bf16, MmaShared<576, 512, true, 2>)
MLA_SHARED_STORAGE(attention_mma_head128_bf16, MmaShared<128, 128, false, 2>)
MLA_SHARED_STORAGE(attention_mma_head192_bf16, MmaShared<192, 128, false, 2>)
MLA_SHARED_STORAGE(attention_mma_wide_latent576_bf16, WideMmaShared)
MLA_SHARED_STORAGE(attention_mma_fp8_latent576_bf16, MmaShared<576, 512, true, 2>)
MLA_SHARED_STORAGE(attention_mma_fp8_head128_bf16, MmaShared<128, 128, false, 2>)
MLA_SHARED_STORAGE(attention_mma_wide_fp8_latent576_bf16, WideMmaShared)
MLA_SHARED_STORAGE(attention_wgmma_latent576_bf16, WgmmaShared)
MLA_SHARED_STORAGE(moe_gate_up_wgmma_bf16, MoeWgmmaShared<2>)
MLA_SHARED_STORAGE(moe_down_wgmma_bf16, MoeWgmmaShared<1>)
// fp8_gemm_wgmma.cu: the same bytes hold 64 rows × 128 e4m3 k per stage.
MLA_SHARED_STORAGE(fp8_gemm_wgmma_bf16, MoeWgmmaShared<1>)
MLA_SHARED_STORAGE(fp8_gate_up_wgmma_bf16, MoeWgmmaShared<2>)
#if defined(MLA_EXPERIMENTAL_KERNELS)
MLA_SHARED_STORAGE(attention_mma_deep_latent576_bf16, MmaShared<576, 512, true, 5>)
MLA_SHARED_STORAGE(attention_wgmma_rs_latent576_bf16, WgmmaRsShared)
MLA_SHARED_STORAGE(attention_wgmma_seesaw_latent576_bf16, SeesawShared)
MLA_SHARED_STORAGE(attention_wgmma_seesaw_tma_latent576_bf16, SeesawShared)
#endif
