// The MLA latent (576/512) for 64 query rows per CTA on Hopper's warpgroup tensor cores (sm_90a):
// 64-token tiles in two stages, copied with cp.async into the 128-byte swizzle so one copy is both
// the keys (K-major) and the values (MN-major); warpgroup h scores token half h of each tile
// (m64n32k16), the halves agree on each row's running max through shared memory, and warpgroup h
// accumulates output columns 256h … in registers (m64n256k16). WgmmaShared (225 KiB), one CTA
// per SM; with fewer CTAs than units it serves several in turn (persistent, experimental). The
// experimental rs build keeps P in registers. docs/kernels.md, "The Hopper wgmma kernel".
// mla: no-spills
// mla: sm_90a
#include "common.cuh"
#include "attention/rows.cuh"
#include "attention/shared.cuh"
#include "ptx/mma.cuh"
#include "ptx/wgmma.cuh"
#include "attention/wgmma_tiles.cuh"

// The token of tile row-slot `round` (0, 1) this thread copies: i / 8 + 32·round.
__device__ __forceinline__ int tile_token(int round) { return threadIdx.x / 8 + 32 * round; }

// The cache slots of this thread's two tokens of tile [tile, tile + WG_TILE), -1 past kv_end:
// looked up a tile ahead, so that the block-table reads are not waited for when the copies start.
__device__ __forceinline__ void tile_slots(int (&slots)[2], int tile, int kv_end, const uint32_t* table,
                                           int block_size) {
#pragma unroll
    for (int round = 0; round < 2; round++) {
        const int p = tile + tile_token(round);
        slots[round] = slot_or_none(table, p, kv_end, block_size);
    }
}

// Starts the copies of a tile of the latent (`slots` from tile_slots) into `stage` in the
// swizzle: thread i copies 16-byte chunk i % 8 of each 128-byte line of its two tokens, so a
// warp reads four whole lines and writes four whole swizzled rows per copy. Tokens at or past
// kv_end become zeros.
__device__ __forceinline__ void load_latent_tile(unsigned char* stage, const int (&slots)[2], const bf16* k1,
                                                 const KeySegment& s1, const bf16* k2, const KeySegment& s2,
                                                 int kv_head) {
    const int chunk = threadIdx.x % 8;
#pragma unroll
    for (int round = 0; round < 2; round++) {
        const int j = tile_token(round);
        const bool valid = slots[round] >= 0;
        const size_t slot = valid ? (size_t)slots[round] : 0;
        const bf16* k1_row = k1 + slot * s1.width + s1.offset + kv_head * s1.head_stride;
        const bf16* k2_row = k2 + slot * s2.width + s2.offset + kv_head * s2.head_stride - s1.len;
#pragma unroll
        for (int col = chunk * 8; col < LATENT; col += 64)
            async_copy16(stage + swizzled_offset(j, col, WG_TILE), valid ? (col < s1.len ? k1_row : k2_row) + col : k1,
                         valid);
    }
}

// The start of a CTA's quad of runs: its query rows (load_quad_rows) and its first tile into
// `stage0`, one commit group; the slots of its second tile into `slots`.
__device__ __forceinline__ void start_quad(unsigned char* q_s, unsigned char* stage0, int* pos_s, int (&slots)[2],
                                           const WgCta& cta, const bf16* q1, int q1_stride, int q1_head_stride,
                                           const bf16* q2, int q2_stride, int q2_head_stride, const bf16* k1,
                                           const KeySegment& s1, const bf16* k2, const KeySegment& s2,
                                           const uint32_t* token_pos, int heads, int block_size) {
    load_quad_rows(q_s, pos_s, cta.quad, q1, q1_stride, q1_head_stride, q2, q2_stride, q2_head_stride, s1.len,
                   token_pos, heads);
    tile_slots(slots, cta.kv_begin, cta.kv_end, cta.table, block_size);
    if (cta.tiles > 0) load_latent_tile(stage0, slots, k1, s1, k2, s2, cta.kv_head);
    async_commit();
    tile_slots(slots, cta.kv_begin + WG_TILE, cta.kv_end, cta.table, block_size);
}

// Persistent where the launch has fewer CTAs than quads (`units`): CTA c serves quads c,
// c + gridDim.x, …, and while it finishes one it already loads the next one's first tile (into
// the stage the last tile leaves free) and, once both warpgroups have scored the last tile, its
// queries: the next quad's start overlaps this one's softmax, P·V and stores instead of
// following them, as a new CTA's would. The next quad's item, table start and block-table slots
// are read tiles ahead, while the tensor cores work. With a CTA per quad, each serves one.
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)
attention_wgmma_latent576_bf16(const __grid_constant__ AttentionParams params) {
    constexpr int TILE_BYTES = WG_TILE_BYTES, O_REGS = VALUES / 2 / 2;  // 64 × 256 / 128 threads
    attention_wgmma_latent576_bf16_shared& shared = dynamic_shared<attention_wgmma_latent576_bf16_shared>();
    unsigned char *q_s = shared.q, *stages = shared.stages, *p_s = shared.p;
    float *half_max = shared.half_max, *half_sum = shared.half_sum;
    int* pos_s = shared.pos;
    require_atom_aligned(q_s);
    attention_prologue();

    const int half = threadIdx.x / 128, run = (threadIdx.x / 32) % 4, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3, row_lo = run * ROWS + g, row_hi = row_lo + 8;
    const float scale_log2 = params.scale * LOG2E;

    WgCta cta = wg_cta(params.items, params.block_tables, params.table_start, blockIdx.x);
    int slots[2];
    start_quad(q_s, stages, pos_s, slots, cta, params.q1, params.q1_stride, params.q1_head_stride, params.q2, params.q2_stride, params.q2_head_stride, params.k1, params.s1,
               params.k2, params.s2, params.token_pos, params.heads, params.block_size);
    int stage = 0;  // of the current tile: tiles alternate stages across quads too
    for (int b = blockIdx.x; b < params.units; b += gridDim.x) {
        const bool has_next = b + (int)gridDim.x < params.units;
        // The next quad's item and table (read at the first tile, while the tensor cores score
        // it) and its first tile's slots (a tile before they are needed, as for every tile).
        WgCta next = cta;
        int next_slots[2];
        bool next_started = false;

        SplitRows rows = split_rows(row_lo, half);
        float o[O_REGS];
#pragma unroll
        for (int i = 0; i < O_REGS; i++) o[i] = 0.0f;

        for (int step = 0; step < cta.tiles; step++) {
            const int tile = cta.kv_begin + step * WG_TILE;
            const unsigned char* cur = stages + stage * TILE_BYTES;
            unsigned char* other = stages + (stage ^ 1) * TILE_BYTES;
            const bool last = step + 1 == cta.tiles;
            async_wait<0>();
            fence_async_shared();
            __syncthreads();  // this tile (and at a quad's start its queries) landed; `other` is free

            // S [64 rows × 32 tokens of half `half`] over the key width, 16 values per step; the
            // next tile's copies (at the last tile: the next quad's first) are issued while the
            // tensor cores work.
            float s[16];
#pragma unroll
            for (int i = 0; i < 16; i++) s[i] = 0.0f;
            fence_registers(s);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < LATENT / 16; ks++)
                wgmma_m64n32k16(s, wgmma_desc(q_s + swizzled_offset(0, ks * 16, WG_ROWS), 0, ATOM),
                                wgmma_desc(cur + swizzled_offset(half * 32, ks * 16, WG_TILE), 0, ATOM));
            wgmma_commit();
            if (has_next && step == 0) next = wg_cta(params.items, params.block_tables, params.table_start, b + gridDim.x);
            if (has_next && step == max(cta.tiles - 2, 0))
                tile_slots(next_slots, next.kv_begin, next.kv_end, next.table, params.block_size);
            if (!last) {
                load_latent_tile(other, slots, params.k1, params.s1, params.k2, params.s2, cta.kv_head);
                tile_slots(slots, tile + 2 * WG_TILE, cta.kv_end, cta.table, params.block_size);
            } else if (has_next) {
                if (next.tiles > 0) load_latent_tile(other, next_slots, params.k1, params.s1, params.k2, params.s2, next.kv_head);
                tile_slots(slots, next.kv_begin + WG_TILE, next.kv_end, next.table, params.block_size);
            }
            async_commit();
            wgmma_wait<0>();
            fence_registers(s);

            float alpha_lo, alpha_hi;
            split_softmax_step<16, WG_ROWS>(rows, s, tile + half * 32, cta.kv_end, pos_s, params.window, scale_log2,
                                            half_max, alpha_lo, alpha_hi);
            if (last && has_next) {
                // Both warpgroups are past their last scores (the barrier in the step above):
                // q_s and pos_s are free for the next quad.
                load_quad_rows(q_s, pos_s, next.quad, params.q1, params.q1_stride, params.q1_head_stride, params.q2, params.q2_stride, params.q2_head_stride,
                               params.s1.len, params.token_pos, params.heads);
                async_commit();
                next_started = true;
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int col = half * 32 + j * 8 + 2 * t;
                *reinterpret_cast<uint32_t*>(p_s + swizzled_offset(row_lo, col, WG_ROWS)) =
                    pack_bf16(from_f32<bf16>(s[4 * j]), from_f32<bf16>(s[4 * j + 1]));
                *reinterpret_cast<uint32_t*>(p_s + swizzled_offset(row_hi, col, WG_ROWS)) =
                    pack_bf16(from_f32<bf16>(s[4 * j + 2]), from_f32<bf16>(s[4 * j + 3]));
            }
            rescale_rows(o, alpha_lo, alpha_hi);
            fence_async_shared();
            __syncthreads();  // P of both halves is in place

            // O [64 rows × columns 256·half …] += P · V, 16 tokens per step.
            fence_registers(o);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < WG_TILE / 16; ks++)
                wgmma_m64n256k16_mn_b(o, wgmma_desc(p_s + swizzled_offset(0, ks * 16, WG_ROWS), 0, ATOM),
                                      wgmma_desc(cur + swizzled_offset(ks * 16, half * 256, WG_TILE), BLOCK_BYTES, ATOM));
            wgmma_commit();
            wgmma_wait<0>();
            fence_registers(o);
            stage ^= 1;
        }

        float sum_lo, sum_hi;
        split_row_sums<WG_ROWS>(rows, half_sum, sum_lo, sum_hi);
        store_run<O_REGS / 4, VALUES>(o, cta.quad[run], (size_t)b * WG_RUNS + run, g, half * (VALUES / 2), rows.m_lo,
                                      rows.m_hi, sum_lo, sum_hi, half == 0 && t == 0, params.out, params.partial_o, params.lse_out,
                                      params.partial_lse);
        combine_if_last<WG_RUNS>(cta.quad, params.groups, params.split_counts, params.partial_o, params.partial_lse, params.out, params.lse_out, VALUES);
        if (!has_next) break;
        if (!next_started) {
            // A quad without tiles: nothing was loaded ahead (the barrier in split_row_sums
            // above keeps this quad's pos_s reads before the next quad's writes).
            next = wg_cta(params.items, params.block_tables, params.table_start, b + gridDim.x);
            start_quad(q_s, stages + stage * TILE_BYTES, pos_s, slots, next, params.q1, params.q1_stride, params.q1_head_stride, params.q2,
                       params.q2_stride, params.q2_head_stride, params.k1, params.s1, params.k2, params.s2, params.token_pos, params.heads, params.block_size);
        }
        cta = next;
    }
    async_wait<0>();
}

#if defined(MLA_EXPERIMENTAL_KERNELS)
// The same job with the scores kept in registers (attention_wgmma_rs_latent576_bf16): each
// warpgroup scores all 64 rows against the whole 64-token tile (m64n64k16; the two warpgroups
// compute the same scores), so each holds every row's full set of scores: its online softmax
// needs no exchange with the other, and P, packed to bf16 in the accumulator layout, is the A
// operand of its P·V straight from registers. No P in shared memory means no proxy fence
// before P·V (its MEMBAR may wait for the next tile's copies in flight) and one barrier per tile
// instead of three, for a third more tensor work on the scores. 216 KiB of shared memory.
extern "C" __global__ void __launch_bounds__(WG_THREADS, 1)
attention_wgmma_rs_latent576_bf16(const __grid_constant__ AttentionParams params) {
    constexpr int TILE_BYTES = WG_TILE_BYTES, O_REGS = VALUES / 2 / 2, S_REGS = WG_TILE / 2;
    attention_wgmma_rs_latent576_bf16_shared& shared = dynamic_shared<attention_wgmma_rs_latent576_bf16_shared>();
    unsigned char *q_s = shared.q, *stages = shared.stages;
    int* pos_s = shared.pos;
    require_atom_aligned(q_s);
    attention_prologue();

    const WgCta cta = wg_cta(params.items, params.block_tables, params.table_start, blockIdx.x);
    const auto [quad, table, kv_begin, kv_end, kv_head, tiles] = cta;
    const int half = threadIdx.x / 128, run = (threadIdx.x / 32) % 4, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3, row_lo = run * ROWS + g, row_hi = row_lo + 8;

    int slots[2];
    start_quad(q_s, stages, pos_s, slots, cta, params.q1, params.q1_stride, params.q1_head_stride, params.q2, params.q2_stride, params.q2_head_stride, params.k1, params.s1,
               params.k2, params.s2, params.token_pos, params.heads, params.block_size);
    __syncthreads();  // pos_s
    const int pos_lo = pos_s[row_lo], pos_hi = pos_s[row_hi];
    const float scale_log2 = params.scale * LOG2E;
    SplitRows rows = split_rows(row_lo, half);  // whole rows here: no other half to meet
    float o[O_REGS];
#pragma unroll
    for (int i = 0; i < O_REGS; i++) o[i] = 0.0f;

    for (int step = 0; step < tiles; step++) {
        const int tile = kv_begin + step * WG_TILE;
        const unsigned char* stage = stages + (step & 1) * TILE_BYTES;
        async_wait<0>();
        fence_async_shared();
        __syncthreads();  // this tile has landed for every thread; both warpgroups are done with the other stage

        // S [64 rows × 64 tokens] over the key width; the next tile's copies meanwhile.
        float s[S_REGS];
#pragma unroll
        for (int i = 0; i < S_REGS; i++) s[i] = 0.0f;
        fence_registers(s);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < LATENT / 16; ks++)
            wgmma_m64n64k16(s, wgmma_desc(q_s + swizzled_offset(0, ks * 16, WG_ROWS), 0, ATOM),
                            wgmma_desc(stage + swizzled_offset(0, ks * 16, WG_TILE), 0, ATOM));
        wgmma_commit();
        if (step + 1 < tiles) {
            load_latent_tile(stages + ((step + 1) & 1) * TILE_BYTES, slots, params.k1, params.s1, params.k2, params.s2, kv_head);
            tile_slots(slots, tile + 2 * WG_TILE, kv_end, table, params.block_size);
        }
        async_commit();
        wgmma_wait<0>();
        fence_registers(s);

        // Online softmax (base 2) of rows lo, hi over the whole tile.
        scale_and_mask<S_REGS>(s, tile, kv_end, pos_lo, pos_hi, params.window, scale_log2);
        // The four lanes of a row hold all of its tokens.
        float max_lo = rows.m_lo, max_hi = rows.m_hi, alpha_lo, alpha_hi;
        quad_row_max<S_REGS>(s, max_lo, max_hi);
        advance_rows<S_REGS>(rows, s, max_lo, max_hi, alpha_lo, alpha_hi);
        // P as A fragments, one per 16 tokens: rows lo, hi × tokens 2t, 2t + 1 and 2t + 8, 2t + 9.
        uint32_t p[WG_TILE / 16][4];
#pragma unroll
        for (int kk = 0; kk < WG_TILE / 16; kk++)
#pragma unroll
            for (int r = 0; r < 4; r++)
                p[kk][r] = pack_bf16(from_f32<bf16>(s[8 * kk + 2 * r]), from_f32<bf16>(s[8 * kk + 2 * r + 1]));
        rescale_rows(o, alpha_lo, alpha_hi);

        // O [64 rows × columns 256·half …] += P · V, 16 tokens per step, P from registers.
        fence_registers(o);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < WG_TILE / 16; kk++)
            wgmma_m64n256k16_rs_mn_b(o, p[kk],
                                     wgmma_desc(stage + swizzled_offset(kk * 16, half * 256, WG_TILE), BLOCK_BYTES, ATOM));
        wgmma_commit();
        wgmma_wait<0>();
        fence_registers(o);
#pragma unroll
        for (int kk = 0; kk < WG_TILE / 16; kk++) fence_registers(p[kk]);  // read by the wgmma until here
    }
    async_wait<0>();

    // Whole row sums from the four lanes of each row (each warpgroup has every token's share).
    float l_lo = rows.l_lo, l_hi = rows.l_hi;
    quad_sum(l_lo, l_hi);
    store_run<O_REGS / 4, VALUES>(o, quad[run], (size_t)blockIdx.x * WG_RUNS + run, g, half * (VALUES / 2), rows.m_lo,
                                  rows.m_hi, l_lo, l_hi, half == 0 && t == 0, params.out, params.partial_o, params.lse_out, params.partial_lse);
    combine_if_last<WG_RUNS>(quad, params.groups, params.split_counts, params.partial_o, params.partial_lse, params.out, params.lse_out, VALUES);
}
#endif  // MLA_EXPERIMENTAL_KERNELS
