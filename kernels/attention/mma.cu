// Paged attention with mma.sync m16n8k16 (bf16 in, f32 accumulate, sm_80+) and the output in
// registers. The 16-row kernel (one run per CTA, 8 warps: each scores half a 32-token tile over a
// quarter of the key width, its queries in registers; two stages in flight, two CTAs per SM)
// serves the MLA latent (576/512), MLA materialised prefill (192/128) and 128-wide MHA/GQA heads;
// an experimental deep build keeps five stages at one CTA per SM. The 64-row kernel (four runs
// per CTA, three stages, one CTA per SM) serves the latent for 64+ heads off Hopper. Shared
// memory: MmaShared, WideMmaShared (shared.cuh). docs/kernels.md, "The 16-row mma.sync kernel"
// and "The 64-row mma.sync kernel".
// mla: no-spills
#include "common.cuh"
#include "attention/rows.cuh"
#include "attention/shared.cuh"
#include "ptx/mma.cuh"

// This thread's token of tile [tile, tile + KV_TILE) in load_tile: row threadIdx.x / 8.
__device__ __forceinline__ int tile_row() {
    return threadIdx.x / (MMA_WARPS * 32 / KV_TILE);
}

// This thread's token of a tile (token_page), looked up a tile ahead of its copies, which turn
// it into the cache row: the table read is waited for at those copies, after the barrier, not
// before the current tile's tensor work.
__device__ __forceinline__ TokenPage tile_token_page(int tile, int kv_end, const uint32_t* table, int block_size) {
    return token_page(table, tile + tile_row(), kv_end, block_size);
}

// Where a tile's keys and values are: bf16 rows in k1, k2 and v (the segments' buffers), or FP8
// rows (fp8.cuh), dequantized to bf16 on their way into shared memory.
struct TileKeys {
    const bf16* k1;
    const bf16* k2;
    const bf16* v;
    const uint8_t* rows;
    Fp8RowFormat format;
};

__device__ __forceinline__ TileKeys bf16_keys(const AttentionParams& p) {
    return TileKeys{p.k1, p.k2, p.v, nullptr, Fp8RowFormat{}};
}

__device__ __forceinline__ TileKeys fp8_keys(const Fp8AttentionParams& p) {
    return TileKeys{nullptr, nullptr, nullptr, p.rows, p.format};
}

// Values [col, col + 8) of a key (k1's, then k2's) or value row in an FP8 row (zeros if !valid):
// plain loads, converted and stored by this thread (the FP8 builds have no cp.async copies).
__device__ __forceinline__ void fp8_row_piece(bf16* dst, const uint8_t* row, const Fp8RowFormat& f, int c, bool valid) {
    *reinterpret_cast<uint4*>(dst) = valid ? fp8_piece(row, f, c) : make_uint4(0u, 0u, 0u, 0u);
}

// Starts the copies of a tile of keys (and values) into one stage, `token` from tile_token_page:
// thread i copies every eighth 16-byte piece of row i / 8. Tokens at or past kv_end become
// zeros, read from nowhere. FP8 rows are read, dequantized and stored at once instead.
template <int DQ, int DV, bool V_IN_K, bool FP8>
__device__ __forceinline__ void load_tile(bf16* stage, TokenPage token, int block_size, const TileKeys& keys,
                                          const KeySegment& s1, const KeySegment& s2, const KeySegment& sv, int kv_head) {
    typedef MmaShape<DQ, DV, V_IN_K, 2> S;  // the layout of one stage, whatever their number
    constexpr int THREADS_PER_ROW = MMA_WARPS * 32 / KV_TILE;
    const int j = tile_row(), first = threadIdx.x % THREADS_PER_ROW;
    const bool valid = token.row >= 0;
    const size_t row = valid ? token_slot(token, block_size) : 0;
    if (FP8) {
        const uint8_t* fp8_row = keys.rows + row * keys.format.row_bytes;
        // Three pieces in flight at a time: fully unrolled, the latent build spills at 2 CTAs per SM.
#pragma unroll 3
        for (int piece = first; piece < DQ / 8; piece += THREADS_PER_ROW) {
            const int col = piece * 8;
            const int c = col < s1.len ? s1.offset + kv_head * s1.head_stride + col
                                       : s2.offset + kv_head * s2.head_stride + col - s1.len;
            fp8_row_piece(stage + j * S::K_LD + col, fp8_row, keys.format, c, valid);
        }
        if (!V_IN_K) {
#pragma unroll
            for (int piece = first; piece < DV / 8; piece += THREADS_PER_ROW)
                fp8_row_piece(stage + S::K_TILE + j * S::V_LD + piece * 8, fp8_row, keys.format,
                              sv.offset + kv_head * sv.head_stride + piece * 8, valid);
        }
        return;
    }
    const bf16 *k1 = keys.k1, *k2 = keys.k2, *v = keys.v;
    const bf16* k1_row = k1 + row * s1.width + s1.offset + kv_head * s1.head_stride;
    const bf16* k2_row = k2 + row * s2.width + s2.offset + kv_head * s2.head_stride - s1.len;
    bf16* k_dst = stage + j * S::K_LD;
#pragma unroll
    for (int piece = first; piece < DQ / 8; piece += THREADS_PER_ROW) {
        const int col = piece * 8;
        async_copy16(k_dst + col, valid ? (col < s1.len ? k1_row : k2_row) + col : k1, valid);
    }
    if (!V_IN_K) {
        const bf16* v_row = v + row * sv.width + sv.offset + kv_head * sv.head_stride;
        bf16* v_dst = stage + S::K_TILE + j * S::V_LD;
#pragma unroll
        for (int piece = first; piece < DV / 8; piece += THREADS_PER_ROW)
            async_copy16(v_dst + piece * 8, valid ? v_row + piece * 8 : v, valid);
    }
}

// O = alpha·O + P·V for one warp's 16 rows and O_TILES·8 columns: `p` the rows' probabilities
// [16][P_LD] (the tile's KV_TILE keys), `v` the tile's values from this warp's first column
// [KV_TILE][V_LD]; alpha_lo, alpha_hi rescale rows g and g + 8.
template <int O_TILES, int P_LD, int V_LD>
__device__ __forceinline__ void accumulate_pv(float (&o)[O_TILES][4], float alpha_lo, float alpha_hi, const bf16* p,
                                              const bf16* v) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int n = 0; n < O_TILES; n++) {
        o[n][0] *= alpha_lo;
        o[n][1] *= alpha_lo;
        o[n][2] *= alpha_hi;
        o[n][3] *= alpha_hi;
    }
#pragma unroll
    for (int ks = 0; ks < KV_TILE / 16; ks++) {
        uint32_t a[4];
        ldmatrix_x4<false>(a, p + (lane & 15) * P_LD + ks * 16 + (lane >> 4) * 8);
#pragma unroll
        for (int n = 0; n < O_TILES; n += 2) {
            uint32_t b[4];
            ldmatrix_x4<true>(b, v + (ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * V_LD + n * 8 + (lane >> 4) * 8);
            mma_bf16_16816(o[n], a, b[0], b[1]);
            mma_bf16_16816(o[n + 1], a, b[2], b[3]);
        }
    }
}

// Where the values of query row `pair` (token · heads + head) start in q1 and q2; row 0's, a
// valid address, for NO_ROW (whose values query_pair zeroes).
struct QueryRow {
    const bf16* q1;
    const bf16* q2;
    bool valid;
};

__device__ __forceinline__ QueryRow query_row(uint32_t pair, const bf16* q1, int q1_stride, int q1_head_stride,
                                              const bf16* q2, int q2_stride, int q2_head_stride, int heads) {
    const bool valid = pair != NO_ROW;
    const uint32_t p = valid ? pair : 0, tok = p / heads, h = p % heads;
    return QueryRow{q1 + (size_t)tok * q1_stride + (size_t)h * q1_head_stride,
                    q2 + (size_t)tok * q2_stride + (size_t)h * q2_head_stride, valid};
}

// Query values c, c + 1 (c even) of row r as one bf16 pair, zeros for NO_ROW: one 4-byte load
// (the host serves only query rows whose pairs are aligned: kernel_choice). Branch-free: all of
// a thread's query loads (36 for the latent) issue before the first wait.
__device__ __forceinline__ uint32_t query_pair(const QueryRow& r, int c, int len1) {
    const bf16* x = c < len1 ? r.q1 + c : r.q2 + (c - len1);
    MLA_ASSERT_ALIGNED(x, 4);
    const uint32_t v = *reinterpret_cast<const uint32_t*>(x);
    return r.valid ? v : 0u;
}

template <typename Shared, bool FP8>
__device__ __forceinline__ void attention_mma(const AttentionParams& params, const TileKeys& keys) {
    typedef typename Shared::Shape S;
    constexpr int DQ = S::DQ, DV = S::DV, STAGES = S::STAGES;
    constexpr bool V_IN_K = S::V_IN_K;
    Shared& shared = dynamic_shared<Shared>();
    bf16* stages = shared.stages;
    float* s_s = shared.s;
    bf16* p_s = shared.p;
    float *m_s = shared.m, *l_s = shared.l, *alpha_s = shared.alpha;
    int* pos_s = shared.pos;

    attention_prologue();
    const WorkItem& item = params.items[blockIdx.x];
    if (item.group == NO_GROUP) return;  // a decode step's filler unit (schedule.rs): no rows
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const uint32_t* table = params.block_tables + params.table_start[item.seq];
    const int kv_begin = item.kv_begin, kv_end = item.kv_end, kv_head = item.kv_head;
    const int tiles = (kv_end - kv_begin + KV_TILE - 1) / KV_TILE;

    // S: warp w scores keys 16·(w % 2) … +15 over key part w / 2, with that part of the queries
    // held in registers (A fragments) for the whole item. O: warp w owns DV / MMA_WARPS columns.
    // A thread's query loads (36 for the latent) are in flight together (query_pair); ptxas
    // issues them right after the first tile's copies, which wait for two dependent reads (the
    // sequence's table start, then its block table), so the queries arrive while that tile does.
    const int n0 = (warp & 1) * 16, part = warp >> 1;
    uint32_t qf[S::PART_STEPS][4];
    {
        const QueryRow lo = query_row(item.rows[g], params.q1, params.q1_stride, params.q1_head_stride, params.q2, params.q2_stride, params.q2_head_stride, params.heads);
        const QueryRow hi =
            query_row(item.rows[g + 8], params.q1, params.q1_stride, params.q1_head_stride, params.q2, params.q2_stride, params.q2_head_stride, params.heads);
#pragma unroll
        for (int kk = 0; kk < S::PART_STEPS; kk++) {
            const int c = (part * S::PART_STEPS + kk) * 16 + 2 * t;
            qf[kk][0] = query_pair(lo, c, params.s1.len);
            qf[kk][1] = query_pair(hi, c, params.s1.len);
            qf[kk][2] = query_pair(lo, c + 8, params.s1.len);
            qf[kk][3] = query_pair(hi, c + 8, params.s1.len);
        }
    }
    // The first STAGES − 1 tiles in flight, a commit group each (empty past the last tile, so
    // that every step waits for the same count).
    TokenPage token = tile_token_page(kv_begin, kv_end, table, params.block_size);
#pragma unroll
    for (int ahead = 0; ahead < STAGES - 1; ahead++) {
        if (ahead < tiles)
            load_tile<DQ, DV, V_IN_K, FP8>(stages + ahead * S::STAGE, token, params.block_size, keys, params.s1, params.s2, params.sv, kv_head);
        async_commit();
        token = tile_token_page(kv_begin + (ahead + 1) * KV_TILE, kv_end, table, params.block_size);
    }
    init_rows(item, params.token_pos, params.heads, m_s, l_s, pos_s);
    const float scale_log2 = params.scale * LOG2E;
    const int o_col = warp * (DV / MMA_WARPS);
    float o[S::O_TILES][4];
#pragma unroll
    for (int n = 0; n < S::O_TILES; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    for (int step = 0; step < tiles; step++) {
        const int tile = kv_begin + step * KV_TILE;
        const bf16* k_tile = stages + (step % STAGES) * S::STAGE;
        const bf16* v_tile = V_IN_K ? k_tile : k_tile + S::K_TILE;
        async_wait<STAGES - 2>();
        __syncthreads();  // this tile has landed for every thread; nobody reads the previous one
        const int ahead = step + STAGES - 1;
        if (ahead < tiles) {
            load_tile<DQ, DV, V_IN_K, FP8>(stages + (ahead % STAGES) * S::STAGE, token, params.block_size, keys, params.s1, params.s2,
                                           params.sv, kv_head);
            token = tile_token_page(kv_begin + (ahead + 1) * KV_TILE, kv_end, table, params.block_size);
        }
        async_commit();

        float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int kk = 0; kk < S::PART_STEPS; kk++) {
            const int ks = part * S::PART_STEPS + kk;
            uint32_t b[4];
            ldmatrix_x4<false>(b, k_tile + (n0 + (lane & 7) + (lane >> 4) * 8) * S::K_LD + ks * 16 + ((lane >> 3) & 1) * 8);
            mma_bf16_16816(s[0], qf[kk], b[0], b[1]);
            mma_bf16_16816(s[1], qf[kk], b[2], b[3]);
        }
        float* s_part = s_s + part * ROWS * S_LD;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int col = n0 + j * 8 + 2 * t;
            *reinterpret_cast<float2*>(s_part + g * S_LD + col) = make_float2(s[j][0], s[j][1]);
            *reinterpret_cast<float2*>(s_part + (g + 8) * S_LD + col) = make_float2(s[j][2], s[j][3]);
        }
        __syncthreads();

        // Online softmax in base 2: warp w owns rows 2w, 2w + 1; lane = key within the tile.
#pragma unroll
        for (int i = warp * (ROWS / MMA_WARPS); i < (warp + 1) * (ROWS / MMA_WARPS); i++) {
            float x = 0.0f;
#pragma unroll
            for (int q = 0; q < K_PARTS; q++) x += s_s[(q * ROWS + i) * S_LD + lane];
            const bool seen = visible(tile + lane, kv_end, pos_s[i], params.window);
            online_softmax_row(seen ? x * scale_log2 : -INFINITY, i, m_s, l_s, alpha_s, p_s + i * S::P_LD);
        }
        __syncthreads();

        accumulate_pv<S::O_TILES, S::P_LD, S::V_LD>(o, alpha_s[g], alpha_s[g + 8], p_s, v_tile + o_col);
    }
    async_wait<0>();
    __syncthreads();  // l_s and m_s final

    // This split's output (divided by its own sum) and its LSE.
    store_rows<S::O_TILES, DV>(&o[0][0], l_s[g], l_s[g + 8], o_col, g, item.rows[g], item.rows[g + 8], params.out,
                               params.partial_o, blockIdx.x);
    if (threadIdx.x < ROWS) {
        const int i = threadIdx.x;
        store_row_lse(params.lse_out, params.partial_lse, blockIdx.x, i, item.rows[i], m_s[i], l_s[i]);
    }
    combine_if_last<1>(&item, params.groups, params.split_counts, params.partial_o, params.partial_lse, params.out, params.lse_out, DV);
}

// One entry point per shape and pipeline depth (its NAME_shared, shared.cuh); CTAS CTAs per SM.
#define MLA_ATTENTION_MMA(NAME, CTAS)                                                                  \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32, CTAS)                                 \
        NAME(const __grid_constant__ AttentionParams params) {                                         \
        attention_mma<NAME##_shared, false>(params, bf16_keys(params));                                \
    }
// The same over FP8 cache rows.
#define MLA_ATTENTION_MMA_FP8(NAME, CTAS)                                                              \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32, CTAS)                                 \
        NAME(const __grid_constant__ Fp8AttentionParams params) {                                      \
        attention_mma<NAME##_shared, true>(params.attention, fp8_keys(params));                        \
    }
MLA_ATTENTION_MMA(attention_mma_latent576_bf16, 2)
MLA_ATTENTION_MMA(attention_mma_head128_bf16, 2)
MLA_ATTENTION_MMA(attention_mma_head192_bf16, 2)
MLA_ATTENTION_MMA_FP8(attention_mma_fp8_latent576_bf16, 2)
MLA_ATTENTION_MMA_FP8(attention_mma_fp8_head128_bf16, 2)
#if defined(MLA_EXPERIMENTAL_KERNELS)
MLA_ATTENTION_MMA(attention_mma_deep_latent576_bf16, 1)
#endif

// The MLA latent (576/512) for 64 query rows per CTA — four 16-row runs of one sequence's heads,
// items[4·b …] — where a token has at least 64 heads (DeepSeek-V3's 128): each latent row read
// from L2 serves 64 heads instead of 16, and each barrier four times the tensor work. FlashMLA's
// split of the work over the warps: warp (r, h) = (w / 2, w % 2) scores rows 16r … over token
// half h of the tile, and owns output columns 256h … of the same rows; the two halves of a row
// agree on its running max through shared memory (each adds up its own half of the row sum).
// Three stages of 32 tokens in flight, one CTA per SM (189 KiB of shared memory).

template <typename Shared, bool FP8>
__device__ __forceinline__ void attention_mma_wide(const AttentionParams& params, const TileKeys& keys) {
    constexpr int DQ = 576, DV = 512, HALF_DV = DV / 2, O_TILES = HALF_DV / 8;
    typedef typename Shared::Shape S;
    Shared& shared = dynamic_shared<Shared>();
    bf16 *q_s = shared.q, *stages = shared.stages, *p_s = shared.p;
    float *half_max = shared.half_max, *half_sum = shared.half_sum;
    int* pos_s = shared.pos;

    attention_prologue();
    const WorkItem* quad = params.items + (size_t)blockIdx.x * WIDE_RUNS;
    if (quad[0].group == NO_GROUP) return;  // a decode step's filler unit (schedule.rs): no rows
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int run = warp >> 1, half = warp & 1, row_lo = run * ROWS + g, row_hi = row_lo + 8;
    const uint32_t* table = params.block_tables + params.table_start[quad[0].seq];
    const int kv_begin = quad[0].kv_begin, kv_end = quad[0].kv_end, kv_head = quad[0].kv_head;
    const int tiles = (kv_end - kv_begin + KV_TILE - 1) / KV_TILE;
    // Query rows, 8 values at a time.
    for (int idx = threadIdx.x; idx < WIDE_ROWS * DQ / 8; idx += blockDim.x) {
        const int r = idx / (DQ / 8), c = idx % (DQ / 8) * 8;
        load_query_piece(q_s + r * S::K_LD + c, quad[r / ROWS].rows[r % ROWS], c, params.q1, params.q1_stride, params.q1_head_stride, params.q2,
                         params.q2_stride, params.q2_head_stride, params.s1.len, params.heads);
    }
    async_commit();  // the first group: complete once the first tile is
    // Two tiles in flight before the first is used; one commit per tile (empty ones too), so that
    // "all but the newest group" is always the tile about to be read.
    for (int i = 0; i < WIDE_STAGES - 1; i++) {
        if (i < tiles)
            load_tile<DQ, DV, true, FP8>(stages + i * S::K_TILE,
                                         tile_token_page(kv_begin + i * KV_TILE, kv_end, table, params.block_size),
                                         params.block_size, keys, params.s1, params.s2, params.sv, kv_head);
        async_commit();
    }
    TokenPage token = tile_token_page(kv_begin + (WIDE_STAGES - 1) * KV_TILE, kv_end, table, params.block_size);
    if (threadIdx.x < WIDE_ROWS) {
        const uint32_t pair = quad[threadIdx.x / ROWS].rows[threadIdx.x % ROWS];
        pos_s[threadIdx.x] = pair == NO_ROW ? -1 : (int)params.token_pos[pair / params.heads];
    }
    const float scale_log2 = params.scale * LOG2E;
    SplitRows rows = split_rows(row_lo, half);
    float o[O_TILES][4];
#pragma unroll
    for (int n = 0; n < O_TILES; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    for (int step = 0; step < tiles; step++) {
        const int tile = kv_begin + step * KV_TILE;
        const bf16* k_tile = stages + (step % WIDE_STAGES) * S::K_TILE;
        async_wait<WIDE_STAGES - 2>();
        __syncthreads();  // this tile has landed for every thread; the oldest stage is free
        if (step + WIDE_STAGES - 1 < tiles) {
            load_tile<DQ, DV, true, FP8>(stages + ((step + WIDE_STAGES - 1) % WIDE_STAGES) * S::K_TILE, token,
                                         params.block_size, keys, params.s1, params.s2, params.sv, kv_head);
            token = tile_token_page(tile + WIDE_STAGES * KV_TILE, kv_end, table, params.block_size);
        }
        async_commit();

        // S for this warp's 16 rows and 16 keys, over the whole key width.
        float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll 4
        for (int ks = 0; ks < DQ / 16; ks++) {
            uint32_t a[4], b[4];
            ldmatrix_x4<false>(a, q_s + (run * ROWS + (lane & 15)) * S::K_LD + ks * 16 + (lane >> 4) * 8);
            ldmatrix_x4<false>(b, k_tile + (half * 16 + (lane & 7) + (lane >> 4) * 8) * S::K_LD + ks * 16 + ((lane >> 3) & 1) * 8);
            mma_bf16_16816(s[0], a, b[0], b[1]);
            mma_bf16_16816(s[1], a, b[2], b[3]);
        }
        float alpha_lo, alpha_hi;
        split_softmax_step<8, WIDE_ROWS>(rows, &s[0][0], tile + half * 16, kv_end, pos_s, params.window, scale_log2,
                                         half_max, alpha_lo, alpha_hi);
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int col = half * 16 + j * 8 + 2 * t;
            *reinterpret_cast<uint32_t*>(p_s + row_lo * S::P_LD + col) =
                pack_bf16(from_f32<bf16>(s[j][0]), from_f32<bf16>(s[j][1]));
            *reinterpret_cast<uint32_t*>(p_s + row_hi * S::P_LD + col) =
                pack_bf16(from_f32<bf16>(s[j][2]), from_f32<bf16>(s[j][3]));
        }
        __syncthreads();  // P of both halves is in place

        // O = alpha·O + P·V on rows 16·run … and columns 256·half …
        accumulate_pv<O_TILES, S::P_LD, S::K_LD>(o, alpha_lo, alpha_hi, p_s + run * ROWS * S::P_LD, k_tile + half * HALF_DV);
    }
    async_wait<0>();

    float sum_lo, sum_hi;
    split_row_sums<WIDE_ROWS>(rows, half_sum, sum_lo, sum_hi);
    store_run<O_TILES, DV>(&o[0][0], quad[run], (size_t)blockIdx.x * WIDE_RUNS + run, g, half * HALF_DV, rows.m_lo,
                           rows.m_hi, sum_lo, sum_hi, half == 0 && t == 0, params.out, params.partial_o, params.lse_out, params.partial_lse);
    combine_if_last<WIDE_RUNS>(quad, params.groups, params.split_counts, params.partial_o, params.partial_lse, params.out, params.lse_out, DV);
}

extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32, 1)
attention_mma_wide_latent576_bf16(const __grid_constant__ AttentionParams params) {
    attention_mma_wide<attention_mma_wide_latent576_bf16_shared, false>(params, bf16_keys(params));
}

extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32, 1)
attention_mma_wide_fp8_latent576_bf16(const __grid_constant__ Fp8AttentionParams params) {
    attention_mma_wide<attention_mma_wide_fp8_latent576_bf16_shared, true>(params.attention, fp8_keys(params));
}
