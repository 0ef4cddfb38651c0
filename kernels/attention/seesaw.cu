// Experimental MLA latent kernel for Hopper (awaiting a GPU measurement), 64 query rows per CTA:
// the warpgroups score alternate 64-token tiles (m64n64k16), offset by half a step so that one's
// softmax overlaps the other's wgmma (FlashMLA's "seesaw"); each owns 256 output columns and adds
// both tiles' P·V, its own P from registers, the other's from shared memory. They meet only at
// named barriers where one needs the other's max or P; each stage is reloaded in two parts whose
// copies complete an mbarrier. SeesawShared (218 KiB), one CTA per SM. Two builds: cp.async
// copies, or TMA bulk copies of a tensor map over the cache rows. docs/kernels.md, "The seesaw
// kernel".
// mla: no-spills
// mla: sm_90a
// mla: experimental
#include "common.cuh"
#include "attention/rows.cuh"
#include "attention/shared.cuh"
#include "ptx/mma.cuh"
#include "ptx/wgmma.cuh"
#include "ptx/barriers.cuh"
#include "attention/wgmma_tiles.cuh"

#define SEESAW_WG 128     // threads of a warpgroup
#define SEESAW_ROUNDS 4   // token rows each thread copies per tile: 8 threads per 128-byte line
#define P_BLOCK 8         // the column block of a tile that holds P once it is scored

// Named barriers (count 256: one warpgroup arrives, the other waits).
#define BAR_EVEN_MAX 1  // the even tile raised the running max (factor_s[0], m_s)
#define BAR_ODD_MAX 2   // the odd tile raised it (factor_s[1], m_s)
#define BAR_EVEN_P 3    // the even tile's P, at the odd tile's max, is in stage 0
#define BAR_ODD_P 4     // the odd tile's P is in stage 1

// The cache slots of this thread's tokens of tile [tile, tile + WG_TILE) (token i / 8 + 16·r for
// thread i of its warpgroup), -1 past kv_end. Looked up at the start of the pair before the one
// they are loaded in, so that the block-table reads are not waited for.
__device__ __forceinline__ void seesaw_slots(int (&slots)[SEESAW_ROUNDS], int tile, int kv_end,
                                             const uint32_t* table, int block_size, int i) {
#pragma unroll
    for (int r = 0; r < SEESAW_ROUNDS; r++) {
        const int p = tile + i / 8 + 16 * r;
        slots[r] = slot_or_none(table, p, kv_end, block_size);
    }
}

// The tensor-map build's counterpart: the cache row of each box of tile [tile, tile + WG_TILE)
// (box r holds tokens tile + r·rows …, rows = box_rows(block_size)), -1 past kv_end or past
// the tile. Tiles start at multiples of 64 tokens, so a box never crosses a page.
__device__ __forceinline__ int box_rows(int block_size) {
    return block_size % WG_TILE == 0 ? WG_TILE : block_size;
}
__device__ __forceinline__ void box_slots(int (&slots)[SEESAW_ROUNDS], int tile, int kv_end, const uint32_t* table,
                                          int block_size) {
    const int rows = box_rows(block_size);
#pragma unroll
    for (int r = 0; r < SEESAW_ROUNDS; r++) {
        const int p = tile + r * rows;
        const int slot = slot_or_none(table, p, kv_end, block_size);  // read whatever r is: no branch
        slots[r] = r * rows < WG_TILE ? slot : -1;
    }
}

template <bool TMA>
__device__ __forceinline__ void tile_slots(int (&slots)[SEESAW_ROUNDS], int tile, int kv_end, const uint32_t* table,
                                           int block_size, int i) {
    if constexpr (TMA) box_slots(slots, tile, kv_end, table, block_size);
    else seesaw_slots(slots, tile, kv_end, table, block_size, i);
}

// Starts this thread's copies of column blocks [FIRST, END) (64 latent values each) of its
// tokens of a tile into `stage`, in the swizzle: thread i copies 16-byte chunk i % 8 of each
// 128-byte line, so a warp reads four whole lines per copy. Tokens past kv_end become zeros.
template <int FIRST, int END>
__device__ __forceinline__ void load_blocks(unsigned char* stage, const int (&slots)[SEESAW_ROUNDS], const bf16* k1,
                                            const KeySegment& s1, const bf16* k2, const KeySegment& s2, int kv_head,
                                            int i) {
    const int chunk = i % 8;
#pragma unroll
    for (int r = 0; r < SEESAW_ROUNDS; r++) {
        const int j = i / 8 + 16 * r;
        const bool valid = slots[r] >= 0;
        const size_t slot = valid ? (size_t)slots[r] : 0;
        const bf16* k1_row = k1 + slot * s1.width + s1.offset + kv_head * s1.head_stride;
        const bf16* k2_row = k2 + slot * s2.width + s2.offset + kv_head * s2.head_stride - s1.len;
#pragma unroll
        for (int b = FIRST; b < END; b++) {
            const int col = b * 64 + chunk * 8;
            async_copy16(stage + swizzled_offset(j, col, WG_TILE), valid ? (col < s1.len ? k1_row : k2_row) + col : k1,
                         valid);
        }
    }
}

// The bulk copies of column blocks [first, end) of the boxes in `slots` (box_slots) into
// `stage`, their bytes counted on `bar`.
__device__ __forceinline__ void copy_boxes(unsigned char* stage, int first, int end, const int (&slots)[SEESAW_ROUNDS],
                                           int block_size, const TensorMap* map, uint64_t* bar) {
    const int rows = box_rows(block_size);
#pragma unroll
    for (int r = 0; r < SEESAW_ROUNDS; r++)
        if (slots[r] >= 0)
            for (int b = first; b < end; b++)
                bulk_copy_box(stage + b * BLOCK_BYTES + r * rows * 128, map, b * 64, slots[r], bar);
}

// The bytes of `blocks` column blocks of the boxes in `slots`.
__device__ __forceinline__ uint32_t box_bytes(int blocks, const int (&slots)[SEESAW_ROUNDS], int block_size) {
    int boxes = 0;
#pragma unroll
    for (int r = 0; r < SEESAW_ROUNDS; r++) boxes += slots[r] >= 0;
    return (uint32_t)(boxes * blocks * box_rows(block_size) * 128);
}

// Warpgroup wg's part of a tile into stage `odd` (see the top): column blocks 0 … 3 (and the
// odd stage's P_BLOCK) for warpgroup 0, the others for warpgroup 1; the part's mbarrier
// completes when the copies land.
template <bool TMA>
__device__ __forceinline__ void load_part(unsigned char* stage, int odd, int wg, const int (&slots)[SEESAW_ROUNDS],
                                          const bf16* k1, const KeySegment& s1, const bf16* k2, const KeySegment& s2,
                                          int kv_head, int block_size, const TensorMap* map, uint64_t* full) {
    const int i = threadIdx.x % SEESAW_WG;
    if constexpr (TMA) {
        // One arrival per part, expecting all its bytes, then the copies.
        if (i != 0) return;
        uint64_t* bar = &full[2 * odd + wg];
        if (wg == 0) {
            mbarrier_arrive_expect_bytes(bar, box_bytes(4 + odd, slots, block_size));
            copy_boxes(stage, 0, 4, slots, block_size, map, bar);
            if (odd) copy_boxes(stage, P_BLOCK, P_BLOCK + 1, slots, block_size, map, bar);
        } else {
            const int end = odd ? P_BLOCK : P_BLOCK + 1;
            mbarrier_arrive_expect_bytes(bar, box_bytes(end - 4, slots, block_size));
            copy_boxes(stage, 4, end, slots, block_size, map, bar);
        }
        return;
    }
    if (wg == 0) {
        load_blocks<0, 4>(stage, slots, k1, s1, k2, s2, kv_head, i);
        if (odd) load_blocks<P_BLOCK, P_BLOCK + 1>(stage, slots, k1, s1, k2, s2, kv_head, i);
    } else if (odd) {
        load_blocks<4, P_BLOCK>(stage, slots, k1, s1, k2, s2, kv_head, i);
    } else {
        load_blocks<4, P_BLOCK + 1>(stage, slots, k1, s1, k2, s2, kv_head, i);
    }
    async_copies_arrive(&full[2 * odd + wg]);
}

// Zeros the values (column blocks 0 … 7) of the tile's tokens at or past kv_end in `stage`,
// which bulk copies bring with their page (or leave as they were), so that P·V multiplies
// their zero probabilities by zeros, not by NaN; visible to this warpgroup's wgmma after. Run
// by the warpgroup that scored the tile (it waited for both parts) before either P·V.
template <bool TMA> __device__ __forceinline__ void clear_past_end(unsigned char* stage, int tile, int kv_end) {
    if constexpr (TMA) {
        const int first = max(kv_end - tile, 0);
        if (first >= WG_TILE) return;
        for (int idx = threadIdx.x % SEESAW_WG; idx < (WG_TILE - first) * P_BLOCK * 8; idx += SEESAW_WG) {
            const int row = first + idx / (P_BLOCK * 8), block = idx / 8 % P_BLOCK, chunk = idx % 8;
            *reinterpret_cast<uint4*>(stage + block * BLOCK_BYTES + row * 128 + chunk * 16) = uint4{0u, 0u, 0u, 0u};
        }
        fence_async_shared();
    }
}

// Waits for part `part` of the tile in stage `odd` (phase parity `parity`) and makes it
// readable by this thread's wgmma.
__device__ __forceinline__ void wait_part(uint64_t* full, int odd, int part, uint32_t parity) {
    mbarrier_wait(&full[2 * odd + part], parity);
    fence_async_shared();
}

// S += Q · K^T over column blocks [FIRST, END) of the key width (four m64n64k16 per block) of
// the tile in `stage`, issued and committed as one group.
template <int FIRST, int END>
__device__ __forceinline__ void score_blocks(float (&s)[32], const unsigned char* q_s, const unsigned char* stage) {
    const uint64_t q = wgmma_desc_here(q_s, 0, ATOM), k = wgmma_desc_here(stage, 0, ATOM);
    wgmma_fence();
#pragma unroll
    for (int ks = FIRST * 4; ks < END * 4; ks++)
        wgmma_m64n64k16(s, wgmma_desc_at(q, swizzled_offset(0, ks * 16, WG_ROWS)),
                        wgmma_desc_at(k, swizzled_offset(0, ks * 16, WG_TILE)));
    wgmma_commit();
}

// S = Q · K^T for the tile in stage `odd` (its loads' phase parity `parity`): the first part's
// column blocks issued as soon as they land, then `between()` (work that waits for wgmma issued
// before these), then the second part's; waits for all.
template <typename Between>
__device__ __forceinline__ void score_tile(float (&s)[32], const unsigned char* q_s, const unsigned char* stage,
                                          uint64_t* full, int odd, uint32_t parity, Between between) {
#pragma unroll
    for (int k = 0; k < 32; k++) s[k] = 0.0f;
    fence_registers(s);
    wait_part(full, odd, 0, parity);
    score_blocks<0, 4>(s, q_s, stage);
    between();
    wait_part(full, odd, 1, parity);
    score_blocks<4, P_BLOCK + 1>(s, q_s, stage);
    wgmma_wait<0>();
    fence_registers(s);
}

// O [64 rows × 256 columns from col0] += P · V over the tile in `stage`, P from registers (A
// fragments, one per 16 tokens), issued and committed as one group.
__device__ __forceinline__ void pv_from_registers(float (&o)[128], const uint32_t (&p)[4][4], const unsigned char* stage,
                                                  int col0) {
    const uint64_t v = wgmma_desc_here(stage + swizzled_offset(0, col0, WG_TILE), BLOCK_BYTES, ATOM);
    fence_registers(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < WG_TILE / 16; kk++)
        wgmma_m64n256k16_rs_mn_b(o, p[kk], wgmma_desc_at(v, swizzled_offset(kk * 16, 0, WG_TILE)));
    wgmma_commit();
}

// The same with P from the tile's P_BLOCK, where the other warpgroup stored it.
__device__ __forceinline__ void pv_from_shared(float (&o)[128], const unsigned char* stage, int col0) {
    const uint64_t p = wgmma_desc_here(stage + P_BLOCK * BLOCK_BYTES, 0, ATOM);
    const uint64_t v = wgmma_desc_here(stage + swizzled_offset(0, col0, WG_TILE), BLOCK_BYTES, ATOM);
    fence_registers(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < WG_TILE / 16; kk++)
        wgmma_m64n256k16_mn_b(o, wgmma_desc_at(p, swizzled_offset(0, kk * 16, WG_ROWS)),
                              wgmma_desc_at(v, swizzled_offset(kk * 16, 0, WG_TILE)));
    wgmma_commit();
}

// Raises the rows' running max m_s (shared by both warpgroups) with this tile's scores s
// (scaled and masked), turns s into probabilities, adds them to r's sums, and records the
// factor from the old max to the new in factor_s (read by the other warpgroup) and f_lo, f_hi.
__device__ __forceinline__ void raise_max(SplitRows& r, float (&s)[32], float* m_s, float* factor_s, float& f_lo,
                                          float& f_hi) {
    float max_lo = -INFINITY, max_hi = -INFINITY;
    quad_row_max<32>(s, max_lo, max_hi);
    r.m_lo = m_s[r.row_lo];
    r.m_hi = m_s[r.row_hi];
    advance_rows<32>(r, s, fmaxf(r.m_lo, max_lo), fmaxf(r.m_hi, max_hi), f_lo, f_hi);
    __syncwarp();  // the four lanes of each row have read m_s before one of them writes it
    if ((threadIdx.x & 3) == 0) {
        m_s[r.row_lo] = r.m_lo;
        m_s[r.row_hi] = r.m_hi;
        factor_s[r.row_lo] = f_lo;
        factor_s[r.row_hi] = f_hi;
    }
}

// P as P·V's A fragments, one per 16 tokens: rows lo, hi × tokens 2t, 2t + 1 and 2t + 8, 2t + 9.
__device__ __forceinline__ void p_fragments(uint32_t (&p)[4][4], const float (&s)[32]) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int q = 0; q < 4; q++)
            p[kk][q] = pack_bf16(from_f32<bf16>(s[8 * kk + 2 * q]), from_f32<bf16>(s[8 * kk + 2 * q + 1]));
}

// P, as P·V's A fragments (p_fragments), into the tile's P_BLOCK, K-major for the other
// warpgroup's P·V, each row's values times f_lo, f_hi unless `rescaled` is false.
__device__ __forceinline__ void store_p(unsigned char* stage, const uint32_t (&p)[4][4], int row_lo, int row_hi,
                                        float f_lo, float f_hi, bool rescaled) {
    unsigned char* p_s = stage + P_BLOCK * BLOCK_BYTES;
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const bool hi = q & 1;
            const float f = hi ? f_hi : f_lo;
            const uint32_t v = p[kk][q];
            *reinterpret_cast<uint32_t*>(p_s + swizzled_offset(hi ? row_hi : row_lo, 16 * kk + 8 * (q >> 1) + 2 * t,
                                                               WG_ROWS)) =
                rescaled ? pack_bf16(from_f32<bf16>(__uint_as_float(v << 16) * f),
                                     from_f32<bf16>(__uint_as_float(v & 0xffff0000u) * f))
                         : v;
        }
}

template <bool TMA> __device__ __forceinline__ void seesaw(const AttentionParams params, const TensorMap* map) {
    constexpr int TILE_BYTES = WG_TILE_BYTES, O_REGS = VALUES / 2 / 2;
    SeesawShared& shared = dynamic_shared<SeesawShared>();
    unsigned char *q_s = shared.q, *stages = shared.stages;  // stages: the even and the odd tile
    uint64_t* full = shared.full;                              // [stage][part]
    float *m_s = shared.m, *factor_s = shared.factor, *sum_s = shared.sum;
    int* pos_s = shared.pos;
    require_atom_aligned(q_s);
    if (TMA && threadIdx.x == 0) prefetch_tensor_map(map);
    attention_prologue();

    const int wg = threadIdx.x / SEESAW_WG, i = threadIdx.x % SEESAW_WG;
    const int run = i / 32, g = (i & 31) >> 2, t = i & 3, row_lo = run * ROWS + g, row_hi = row_lo + 8;
    const float scale_log2 = params.scale * LOG2E;
    unsigned char* even = stages;
    unsigned char* odd = stages + TILE_BYTES;
    unsigned char* mine = wg == 0 ? even : odd;  // the stage of the tiles this warpgroup scores
    if (threadIdx.x == 0) {
        for (int b = 0; b < 4; b++) mbarrier_init(&full[b], TMA ? 1 : SEESAW_WG);
        fence_barrier_init();
    }
    uint32_t parity = 0;  // of the next load into `mine`: loads alternate phases across quads too

    for (int b = blockIdx.x; b < params.units; b += gridDim.x) {
        const WgCta cta = wg_cta(params.items, params.block_tables, params.table_start, b);
        const int pairs = max(1, (cta.tiles + 1) / 2);
        __syncthreads();  // the mbarriers are set up; the last quad is done with q_s, m_s, pos_s
        load_quad_rows(q_s, pos_s, cta.quad, params.q1, params.q1_stride, params.q1_head_stride, params.q2, params.q2_stride, params.q2_head_stride, params.s1.len,
                       params.token_pos, params.heads);
        async_commit();
        if (threadIdx.x < WG_ROWS) m_s[threadIdx.x] = -INFINITY;
        int slots[SEESAW_ROUNDS];
        tile_slots<TMA>(slots, cta.kv_begin, cta.kv_end, cta.table, params.block_size, i);
        load_part<TMA>(even, 0, wg, slots, params.k1, params.s1, params.k2, params.s2, cta.kv_head, params.block_size, map, full);
        tile_slots<TMA>(slots, cta.kv_begin + WG_TILE, cta.kv_end, cta.table, params.block_size, i);
        load_part<TMA>(odd, 1, wg, slots, params.k1, params.s1, params.k2, params.s2, cta.kv_head, params.block_size, map, full);
        async_wait<0>();  // the queries (the tiles' copies are not in a group: their mbarriers tell)
        fence_async_shared();
        __syncthreads();
        const int pos_lo = pos_s[row_lo], pos_hi = pos_s[row_hi];

        // The first pair's scores: each warpgroup its own tile.
        float s[32];
        score_tile(s, q_s, mine, full, wg, parity, [] {});
        clear_past_end<TMA>(mine, cta.kv_begin + wg * WG_TILE, cta.kv_end);
        parity ^= 1;

        SplitRows r = split_rows(row_lo, wg);
        float o[O_REGS];
#pragma unroll
        for (int k = 0; k < O_REGS; k++) o[k] = 0.0f;
        uint32_t p[4][4];
        for (int pair = 0; pair < pairs; pair++) {
            const int tile = cta.kv_begin + 2 * pair * WG_TILE;
            const bool has_next = pair + 1 < pairs;
            int next_even[SEESAW_ROUNDS], next_odd[SEESAW_ROUNDS];
            if (has_next) {
                tile_slots<TMA>(next_even, tile + 2 * WG_TILE, cta.kv_end, cta.table, params.block_size, i);
                tile_slots<TMA>(next_odd, tile + 3 * WG_TILE, cta.kv_end, cta.table, params.block_size, i);
            }
            float f_lo, f_hi;
            if (wg == 0) {
                // The even tile raises the max; O and P·V of it at once, from registers.
                scale_and_mask<32>(s, tile, cta.kv_end, pos_lo, pos_hi, params.window, scale_log2);
                raise_max(r, s, m_s, factor_s, f_lo, f_hi);
                rescale_rows(o, f_lo, f_hi);
                p_fragments(p, s);
                named_barrier_arrive(BAR_EVEN_MAX, WG_THREADS);
                pv_from_registers(o, p, even, 0);
                // The odd tile's max: the even P moves to it, stored for warpgroup 1.
                named_barrier_sync(BAR_ODD_MAX, WG_THREADS);
                const float g_lo = factor_s[WG_ROWS + row_lo], g_hi = factor_s[WG_ROWS + row_hi];
                store_p(even, p, row_lo, row_hi, g_lo, g_hi, true);
                fence_async_shared();
                named_barrier_arrive(BAR_EVEN_P, WG_THREADS);
                wgmma_wait<0>();
                fence_registers(o);
#pragma unroll
                for (int kk = 0; kk < 4; kk++) fence_registers(p[kk]);
                // Columns 0 … 255 of the even stage are free: the next even tile's first part.
                if (has_next)
                    load_part<TMA>(even, 0, 0, next_even, params.k1, params.s1, params.k2, params.s2, cta.kv_head, params.block_size, map, full);
                rescale_rows(o, g_lo, g_hi);
                r.l_lo *= g_lo;
                r.l_hi *= g_hi;
                named_barrier_sync(BAR_ODD_P, WG_THREADS);
                pv_from_shared(o, odd, 0);
                if (has_next) {
                    // The next even tile's scores; the odd stage's columns 0 … 255 and P are
                    // free once P·V is done.
                    score_tile(s, q_s, even, full, 0, parity, [&] {
                        wgmma_wait<1>();
                        fence_registers(o);
                        load_part<TMA>(odd, 1, 0, next_odd, params.k1, params.s1, params.k2, params.s2, cta.kv_head, params.block_size, map, full);
                    });
                    clear_past_end<TMA>(even, tile + 2 * WG_TILE, cta.kv_end);
                    parity ^= 1;
                }
                wgmma_wait<0>();
                fence_registers(o);
            } else {
                // The odd tile raises the max after the even one; O catches up with both.
                named_barrier_sync(BAR_EVEN_MAX, WG_THREADS);
                const float e_lo = factor_s[row_lo], e_hi = factor_s[row_hi];
                r.l_lo *= e_lo;
                r.l_hi *= e_hi;
                scale_and_mask<32>(s, tile + WG_TILE, cta.kv_end, pos_lo, pos_hi, params.window, scale_log2);
                raise_max(r, s, m_s, factor_s + WG_ROWS, f_lo, f_hi);
                named_barrier_arrive(BAR_ODD_MAX, WG_THREADS);
                p_fragments(p, s);
                store_p(odd, p, row_lo, row_hi, 1.0f, 1.0f, false);
                fence_async_shared();
                named_barrier_arrive(BAR_ODD_P, WG_THREADS);
                rescale_rows(o, e_lo * f_lo, e_hi * f_hi);
                pv_from_registers(o, p, odd, VALUES / 2);
                named_barrier_sync(BAR_EVEN_P, WG_THREADS);
                pv_from_shared(o, even, VALUES / 2);
                if (has_next) {
                    // Columns 256 … 511 of the odd stage are free once its P·V is done, the even
                    // stage's 256 … 575 (with its P) once the even one is.
                    wgmma_wait<1>();
                    fence_registers(o);
                    load_part<TMA>(odd, 1, 1, next_odd, params.k1, params.s1, params.k2, params.s2, cta.kv_head, params.block_size, map, full);
                    wgmma_wait<0>();
                    fence_registers(o);
                    load_part<TMA>(even, 0, 1, next_even, params.k1, params.s1, params.k2, params.s2, cta.kv_head, params.block_size, map, full);
                    score_tile(s, q_s, odd, full, 1, parity, [] {});
                    clear_past_end<TMA>(odd, tile + 3 * WG_TILE, cta.kv_end);
                    parity ^= 1;
                }
                wgmma_wait<0>();
                fence_registers(o);
#pragma unroll
                for (int kk = 0; kk < 4; kk++) fence_registers(p[kk]);
            }
        }

        // Each warpgroup's sums cover its tiles, both at the last max: the rows' whole sums.
        float sum_lo, sum_hi;
        split_row_sums<WG_ROWS>(r, sum_s, sum_lo, sum_hi);
        store_run<O_REGS / 4, VALUES>(o, cta.quad[run], (size_t)b * WG_RUNS + run, g, wg * (VALUES / 2), m_s[row_lo],
                                      m_s[row_hi], sum_lo, sum_hi, wg == 0 && t == 0, params.out, params.partial_o, params.lse_out,
                                      params.partial_lse);
        combine_if_last<WG_RUNS>(cta.quad, params.groups, params.split_counts, params.partial_o, params.partial_lse, params.out, params.lse_out, VALUES);
    }
}

extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)
attention_wgmma_seesaw_latent576_bf16(const __grid_constant__ AttentionParams params) {
    seesaw<false>(params, nullptr);
}

// The TMA build's params: AttentionParams and `kv_map`, the cache's rows [rows × 576] bf16 in
// boxes of 64 columns × box_rows(block_size) rows in the 128-byte swizzle (tensor_map.rs).
struct TmaAttentionParams {
    AttentionParams attention;
    TensorMap kv_map;
};
static_assert(sizeof(TmaAttentionParams) == 384 && offsetof(TmaAttentionParams, kv_map) == 256,
              "mirrored in params.rs");

extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)
attention_wgmma_seesaw_tma_latent576_bf16(const __grid_constant__ TmaAttentionParams params) {
    seesaw<true>(params.attention, &params.kv_map);
}
