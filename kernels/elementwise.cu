// Row-wise and element-wise ops of the forward pass: embedding gather, RMSNorm, residual and
// bias adds, SiLU-and-mul, RoPE from a host-built cos/sin table, the MLA latent epilogue, paged
// cache writes and block copies, row gathers and scatter-adds, argmax, top-k and row totals,
// random weights. f32 or bf16 storage, f32 arithmetic, 16-byte packs where rows are aligned.
// docs/kernels.md, "Elementwise and row kernels".
// mla: no-spills
#include "common.cuh"

// x[i] = op(x[i], *y_at(i)) for i = first, first + stride, … < n: whole 16-byte packs while
// `packs` allows (x and y_at(i) aligned and contiguous over a pack), then single elements.
template <typename T, typename Y, typename Op>
__device__ __forceinline__ void map2(T* x, long long n, long long first, long long stride, bool packs, Y y_at, Op op) {
    constexpr int N = Pack<T>::N;
    const long long whole = packs ? n / N : 0;
    for (long long p = first; p < whole; p += stride) {
        Pack<T> a = load_pack(x + p * N);
        const Pack<T> b = load_pack(y_at(p * N));
#pragma unroll
        for (int k = 0; k < N; k++) a.v[k] = from_f32<T>(op(to_f32(a.v[k]), to_f32(b.v[k])));
        store_pack(x + p * N, a);
    }
    for (long long i = whole * N + first; i < n; i += stride) x[i] = from_f32<T>(op(to_f32(x[i]), to_f32(*y_at(i))));
}

// `len` elements from src to dst by the block's threads, in packs where both are aligned.
template <typename T> __device__ __forceinline__ void copy_elems(T* dst, const T* src, int len) {
    constexpr int N = Pack<T>::N;
    const int whole = aligned16(dst, src) ? len / N : 0;
    for (int p = threadIdx.x; p < whole; p += blockDim.x) store_pack(dst + p * N, load_pack(src + p * N));
    for (int i = whole * N + threadIdx.x; i < len; i += blockDim.x) dst[i] = src[i];
}

__device__ __forceinline__ long long grid_first() { return blockIdx.x * (long long)blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long grid_stride() { return (long long)gridDim.x * blockDim.x; }

template <typename T>
__device__ void embedding(T* out, const T* table, const uint32_t* ids, int hidden) {
    const int row = blockIdx.x;
    copy_elems(out + (size_t)row * hidden, table + (size_t)ids[row] * hidden, hidden);
}

// out = x · inv · w over one row, by the block.
template <typename T>
__device__ __forceinline__ void scale_row(T* out, const T* x, const T* w, int cols, float inv) {
    constexpr int N = Pack<T>::N;
    const int whole = aligned16(out, x, w) ? cols / N : 0;
    for (int p = threadIdx.x; p < whole; p += blockDim.x) {
        Pack<T> a = load_pack(x + p * N);
        const Pack<T> b = load_pack(w + p * N);
#pragma unroll
        for (int k = 0; k < N; k++) a.v[k] = from_f32<T>(to_f32(a.v[k]) * inv * to_f32(b.v[k]));
        store_pack(out + p * N, a);
    }
    for (int i = whole * N + threadIdx.x; i < cols; i += blockDim.x) out[i] = from_f32<T>(to_f32(x[i]) * inv * to_f32(w[i]));
}

// out = x / rms(x) · w over one row, by the block.
template <typename T>
__device__ void rms_norm_row(T* out, const T* x, const T* w, int cols, float eps) {
    constexpr int N = Pack<T>::N;
    const int whole = aligned16(x) ? cols / N : 0;
    float sq = 0.0f;
    for (int p = threadIdx.x; p < whole; p += blockDim.x) {
        const Pack<T> a = load_pack(x + p * N);
#pragma unroll
        for (int k = 0; k < N; k++) sq += to_f32(a.v[k]) * to_f32(a.v[k]);
    }
    for (int i = whole * N + threadIdx.x; i < cols; i += blockDim.x) sq += to_f32(x[i]) * to_f32(x[i]);
    // block_sum's barriers also order every read of x before any write of out (they may alias).
    scale_row(out, x, w, cols, rsqrtf(block_sum(sq) / cols + eps));
}

// One block per row.
template <typename T>
__device__ void rms_norm(T* out, const T* x, const T* w, int cols, float eps) {
    const size_t row = blockIdx.x;
    rms_norm_row(out + row * cols, x + row * cols, w, cols, eps);
}

// x += y, then out = RMSNorm(x): one pass for the residual add and the norm after it. One block
// per row; each thread rereads only the elements it wrote.
template <typename T>
__device__ void add_rms_norm(T* x, const T* y, T* out, const T* w, int cols, float eps) {
    constexpr int N = Pack<T>::N;
    const size_t row = blockIdx.x;
    T* xr = x + row * cols;
    const T* yr = y + row * cols;
    const int whole = aligned16(xr, yr) ? cols / N : 0;
    float sq = 0.0f;
    for (int p = threadIdx.x; p < whole; p += blockDim.x) {
        Pack<T> a = load_pack(xr + p * N);
        const Pack<T> b = load_pack(yr + p * N);
#pragma unroll
        for (int k = 0; k < N; k++) {
            a.v[k] = from_f32<T>(to_f32(a.v[k]) + to_f32(b.v[k]));
            sq += to_f32(a.v[k]) * to_f32(a.v[k]);
        }
        store_pack(xr + p * N, a);
    }
    for (int i = whole * N + threadIdx.x; i < cols; i += blockDim.x) {
        xr[i] = from_f32<T>(to_f32(xr[i]) + to_f32(yr[i]));
        sq += to_f32(xr[i]) * to_f32(xr[i]);
    }
    // block_sum's barriers make every thread's xr writes visible to the block.
    scale_row(out + row * cols, xr, w, cols, rsqrtf(block_sum(sq) / cols + eps));
}
template <typename T>
__device__ void add_assign(T* x, const T* y, long long n) {
    map2(x, n, grid_first(), grid_stride(), aligned16(x, y), [=](long long i) { return y + i; },
         [](float a, float b) { return a + b; });
}

template <typename T>
__device__ void add_bias(T* x, const T* bias, long long n, int cols) {
    map2(x, n, grid_first(), grid_stride(), aligned16(x, bias) && cols % Pack<T>::N == 0,
         [=](long long i) { return bias + i % cols; }, [](float a, float b) { return a + b; });
}

template <typename T>
__device__ void silu_mul(T* gate, const T* up, long long n) {
    map2(gate, n, grid_first(), grid_stride(), aligned16(gate, up), [=](long long i) { return up + i; },
         [](float g, float u) { return __fdividef(g, 1.0f + __expf(-g)) * u; });
}

// Rotates `2·half` values of `x` with one row of the table.
template <typename T>
__device__ __forceinline__ void rotate(T* x, const float* cos, const float* sin, int half, int interleaved, int pair) {
    const int a = interleaved ? 2 * pair : pair;
    const int b = interleaved ? 2 * pair + 1 : pair + half;
    const float xa = to_f32(x[a]), xb = to_f32(x[b]);
    x[a] = from_f32<T>(xa * cos[pair] - xb * sin[pair]);
    x[b] = from_f32<T>(xb * cos[pair] + xa * sin[pair]);
}

// One block per row; threads over (head, pair).
template <typename T>
__device__ void rope(T* x, const float* cos, const float* sin, int cols, int heads, int head_stride, int offset, int half, int interleaved) {
    const size_t row = blockIdx.x;
    for (int j = threadIdx.x; j < heads * half; j += blockDim.x) {
        const int head = j / half, pair = j % half;
        rotate(x + row * cols + (size_t)head * head_stride + offset, cos + row * half, sin + row * half, half, interleaved, pair);
    }
}

// kv_a_proj output rows [latent r | k_pe 2·half]: RMSNorm the latent, rotate k_pe.
template <typename T>
__device__ void latent_epilogue(T* ckv, const T* norm, const float* cos, const float* sin, int r, int half, float eps, int interleaved) {
    const size_t row = blockIdx.x;
    T* x = ckv + row * (r + 2 * half);
    rms_norm_row(x, x, norm, r, eps);
    for (int pair = threadIdx.x; pair < half; pair += blockDim.x)
        rotate(x + r, cos + row * half, sin + row * half, half, interleaved, pair);
}

// Row i's columns [offset, offset + width) go to cache slot slots[i]. One block per row.
template <typename T>
__device__ void write_kv_cache(T* cache, const T* x, const uint32_t* slots, int cols, int offset, int width) {
    const size_t row = blockIdx.x;
    copy_elems(cache + (size_t)slots[row] * width, x + row * cols + offset, width);
}

// One block per (pair, layer) of a cache laid out [layers][blocks][block elements].
template <typename T>
__device__ void copy_blocks(T* cache, const uint32_t* pairs, long long block_elems, long long layer_elems) {
    T* layer = cache + blockIdx.y * layer_elems;
    const uint32_t from = pairs[2 * blockIdx.x], to = pairs[2 * blockIdx.x + 1];
    for (long long i = threadIdx.x; i < block_elems; i += blockDim.x)
        layer[to * block_elems + i] = layer[from * block_elems + i];
}

#define ENTRY_POINTS(NAME, T)                                                                           \
    extern "C" __global__ void embedding_##NAME(T* out, const T* table, const uint32_t* ids, int hidden) { \
        embedding(out, table, ids, hidden);                                                             \
    }                                                                                                   \
    extern "C" __global__ void rms_norm_##NAME(T* out, const T* x, const T* w, int cols, float eps) {   \
        rms_norm(out, x, w, cols, eps);                                                                 \
    }                                                                                                   \
    extern "C" __global__ void add_rms_norm_##NAME(T* x, const T* y, T* out, const T* w, int cols,       \
                                                   float eps) {                                         \
        add_rms_norm(x, y, out, w, cols, eps);                                                          \
    }                                                                                                   \
    extern "C" __global__ void add_assign_##NAME(T* x, const T* y, long long n) { add_assign(x, y, n); } \
    extern "C" __global__ void add_bias_##NAME(T* x, const T* b, long long n, int cols) { add_bias(x, b, n, cols); } \
    extern "C" __global__ void silu_mul_##NAME(T* gate, const T* up, long long n) { silu_mul(gate, up, n); } \
    extern "C" __global__ void rope_##NAME(T* x, const float* cos, const float* sin, int cols, int heads,  \
                                           int head_stride, int offset, int half, int interleaved) {    \
        rope(x, cos, sin, cols, heads, head_stride, offset, half, interleaved);                         \
    }                                                                                                   \
    extern "C" __global__ void latent_epilogue_##NAME(T* ckv, const T* norm, const float* cos,          \
                                                      const float* sin, int r, int half, float eps,     \
                                                      int interleaved) {                                \
        latent_epilogue(ckv, norm, cos, sin, r, half, eps, interleaved);                                \
    }                                                                                                   \
    extern "C" __global__ void write_kv_cache_##NAME(T* cache, const T* x, const uint32_t* slots,       \
                                                     int cols, int offset, int width) {                 \
        write_kv_cache(cache, x, slots, cols, offset, width);                                           \
    }                                                                                                   \
    extern "C" __global__ void copy_blocks_##NAME(T* cache, const uint32_t* pairs, long long block_elems, \
                                                  long long layer_elems) {                              \
        copy_blocks(cache, pairs, block_elems, layer_elems);                                            \
    }

MLA_FOR_EACH_DTYPE(ENTRY_POINTS)

// Row gathers and scatters (select_rows, cache rows of a context, MoE permutation) and fills.
template <typename T>
__device__ void gather_rows(T* out, const T* src, const uint32_t* rows, int src_cols, int cols) {
    const size_t row = blockIdx.x;
    copy_elems(out + row * cols, src + (size_t)rows[row] * src_cols, cols);
}

// out[rows[i]] += weights[i] · y[i]; rows are distinct within one launch.
template <typename T>
__device__ void scatter_add_rows(T* out, const T* y, const uint32_t* rows, const float* weights, int cols) {
    const size_t row = blockIdx.x;
    T* to = out + (size_t)rows[row] * cols;
    const T* from = y + row * cols;
    const float w = weights[row];
    map2(to, cols, threadIdx.x, blockDim.x, aligned16(to, from), [=](long long i) { return from + i; },
         [=](float a, float b) { return a + w * b; });
}

template <typename T>
__device__ void fill(T* x, long long n, float value) {
    constexpr int N = Pack<T>::N;
    Pack<T> v;
#pragma unroll
    for (int k = 0; k < N; k++) v.v[k] = from_f32<T>(value);
    const long long whole = aligned16(x) ? n / N : 0;
    for (long long p = grid_first(); p < whole; p += grid_stride()) store_pack(x + p * N, v);
    for (long long i = whole * N + grid_first(); i < n; i += grid_stride()) x[i] = v.v[0];
}

#define GATHER_ENTRY_POINTS(NAME, T)                                                                  \
    extern "C" __global__ void gather_rows_##NAME(T* out, const T* src, const uint32_t* rows,         \
                                                  int src_cols, int cols) {                           \
        gather_rows(out, src, rows, src_cols, cols);                                                  \
    }                                                                                                 \
    extern "C" __global__ void scatter_add_rows_##NAME(T* out, const T* y, const uint32_t* rows,      \
                                                       const float* weights, int cols) {              \
        scatter_add_rows(out, y, rows, weights, cols);                                                \
    }                                                                                                 \
    extern "C" __global__ void fill_##NAME(T* x, long long n, float value) { fill(x, n, value); }

MLA_FOR_EACH_DTYPE(GATHER_ENTRY_POINTS)

// Greedy sampling: index of each row's largest value, ties to the lowest index (NaN never wins).
// One block per row.
__device__ __forceinline__ void better(float& v, int& i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
}

// The best (value, index) over the block; every thread gets it. blockDim.x a multiple of 32.
__device__ __forceinline__ void block_best(float& v, int& i) {
    __shared__ float value[32];
    __shared__ int index[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int offset = 16; offset > 0; offset >>= 1)
        better(v, i, __shfl_xor_sync(0xffffffffu, v, offset), __shfl_xor_sync(0xffffffffu, i, offset));
    __syncthreads();  // `value`/`index` may still be read by a previous call
    if (lane == 0) { value[warp] = v; index[warp] = i; }
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = lane < warps ? value[lane] : -INFINITY;
    i = lane < warps ? index[lane] : 0x7fffffff;
    for (int offset = 16; offset > 0; offset >>= 1)
        better(v, i, __shfl_xor_sync(0xffffffffu, v, offset), __shfl_xor_sync(0xffffffffu, i, offset));
}

template <typename T>
__device__ void argmax_rows(const T* x, uint32_t* out, int cols) {
    const T* row = x + (size_t)blockIdx.x * cols;
    float v = -INFINITY;
    int i = 0x7fffffff;
    int bad = 0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float x = to_f32(row[c]);
        bad |= !(x < INFINITY);
        better(v, i, x, c);
    }
    bad = __syncthreads_or(bad);
    block_best(v, i);
    // A row holding a NaN or +inf: NON_FINITE_ROW; a row of -inf only: the first column, as
    // the host's argmax.
    if (threadIdx.x == 0) out[blockIdx.x] = bad ? 0xffffffffu : (i == 0x7fffffff ? 0 : i);
}

// Key of a float whose unsigned order is the float's total order (Rust's `total_cmp`, the
// host's candidate order): sign bit set → all bits flipped, else the sign bit set.
__device__ __forceinline__ uint32_t order_key(float v) {
    const uint32_t b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

#define TOP_K_MAX 64

// The k largest (value, column) pairs of each row (k ≤ 64), largest first, ties to the lower
// column, as the host sorts them. One block per row:
//  1. radix select: four passes of 8-bit histograms find the k-th largest key T and how many of
//     the k are equal to T (`ties`);
//  2. every element above T is taken, and the elements equal to T — all of them when there are
//     exactly `ties`, else the `ties` lowest columns, found chunk by chunk in column order;
//  3. the k taken are ranked by (value, column).
template <typename T>
__device__ void top_k_rows(const T* x, int cols, int k, float* values, uint32_t* ids) {
    __shared__ uint32_t hist[256];
    __shared__ uint32_t prefix, prefix_mask;
    __shared__ int remaining, taken, equal;
    __shared__ uint32_t warp_ties[32];
    __shared__ float cand_value[TOP_K_MAX];
    __shared__ uint32_t cand_key[TOP_K_MAX], cand_id[TOP_K_MAX];
    const T* row = x + (size_t)blockIdx.x * cols;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // A row holding a NaN or +inf reports NaN as its first value (the host checks it).
    int bad = 0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) bad |= !(to_f32(row[c]) < INFINITY);
    bad = __syncthreads_or(bad);
    if (threadIdx.x == 0) {
        prefix = 0;
        prefix_mask = 0;
        remaining = k;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        const uint32_t p = prefix, pm = prefix_mask;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const uint32_t key = order_key(to_f32(row[c]));
            if ((key & pm) == p) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            // The digit holding the `remaining`-th largest key among those matching the prefix.
            int r = remaining;
            for (int d = 255; d >= 0; d--) {
                if ((int)hist[d] >= r) {
                    prefix |= (uint32_t)d << shift;
                    prefix_mask |= 255u << shift;
                    break;
                }
                r -= (int)hist[d];
            }
            remaining = r;
        }
        __syncthreads();
    }
    const uint32_t threshold = prefix;
    const int ties = remaining, above = k - remaining;
    if (threadIdx.x == 0) {
        taken = 0;
        equal = 0;
    }
    __syncthreads();
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = to_f32(row[c]);
        const uint32_t key = order_key(v);
        int slot = -1;
        if (key > threshold) slot = atomicAdd(&taken, 1);
        if (key == threshold) {
            const int e = atomicAdd(&equal, 1);
            if (e < ties) slot = above + e;  // right if exactly `ties` are equal; redone below if not
        }
        if (slot >= 0) {
            cand_value[slot] = v;
            cand_key[slot] = key;
            cand_id[slot] = c;
        }
    }
    __syncthreads();
    if (equal > ties) {
        // More equal to T than places: the lowest columns, chunk by chunk in column order.
        int placed = 0;
        for (int base = 0; base < cols && placed < ties; base += blockDim.x) {
            const int c = base + threadIdx.x;
            const bool tie = c < cols && order_key(to_f32(row[c])) == threshold;
            const unsigned ballot = __ballot_sync(0xffffffffu, tie);
            if (lane == 0) warp_ties[warp] = __popc(ballot);
            __syncthreads();
            int before = __popc(ballot & ((1u << lane) - 1u)), chunk = 0;
            for (int w = 0; w < (int)(blockDim.x >> 5); w++) {
                before += w < warp ? (int)warp_ties[w] : 0;
                chunk += (int)warp_ties[w];
            }
            if (tie && placed + before < ties) {
                cand_value[above + placed + before] = to_f32(row[c]);
                cand_key[above + placed + before] = threshold;
                cand_id[above + placed + before] = c;
            }
            placed += chunk;
            __syncthreads();  // warp_ties is rewritten by the next chunk
        }
    }
    __syncthreads();
    if ((int)threadIdx.x < k) {
        const int i = threadIdx.x;
        int rank = 0;
        for (int j = 0; j < k; j++)
            rank += cand_key[j] > cand_key[i] || (cand_key[j] == cand_key[i] && cand_id[j] < cand_id[i]);
        values[(size_t)blockIdx.x * k + rank] = bad && rank == 0 ? __uint_as_float(0x7fc00000u) : cand_value[i];
        ids[(size_t)blockIdx.x * k + rank] = cand_id[i];
    }
}

#define ARGMAX_ENTRY_POINTS(NAME, T)                                                                 \
    extern "C" __global__ void argmax_rows_##NAME(const T* x, uint32_t* out, int cols) {             \
        argmax_rows(x, out, cols);                                                                   \
    }                                                                                                \
    extern "C" __global__ void top_k_rows_##NAME(const T* x, int cols, int k, float* values,         \
                                                 uint32_t* ids) {                                    \
        top_k_rows(x, cols, k, values, ids);                                                         \
    }

MLA_FOR_EACH_DTYPE(ARGMAX_ENTRY_POINTS)

// Per row: Σ exp((x − max) / temperature[row]) in f64, each term computed as the host's sampler
// computes it (f32 difference and quotient, f64 exponential): the total weight that, next to the
// row's best candidates, settles a draw without the whole row. One block per row.
template <typename T>
__device__ void softmax_totals(const T* x, int cols, const float* temperatures, double* totals) {
    const T* row = x + (size_t)blockIdx.x * cols;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, to_f32(row[c]));
    m = block_max(m);
    const float t = temperatures[blockIdx.x];
    double s = 0.0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += exp((double)((to_f32(row[c]) - m) / t));
    s = block_sum(s);
    if (threadIdx.x == 0) totals[blockIdx.x] = s;
}

#define TOTALS_ENTRY_POINTS(NAME, T)                                                                 \
    extern "C" __global__ void softmax_totals_##NAME(const T* x, int cols, const float* temperatures,  \
                                                     double* totals) {                               \
        softmax_totals(x, cols, temperatures, totals);                                               \
    }

MLA_FOR_EACH_DTYPE(TOTALS_ENTRY_POINTS)

// Benchmark weights generated in place, value for value what the host's RandomWeights makes:
// value j = (u1 + u2 + u3 + u4 - 2)·√3·std, the uniforms being draws 4m+1..4m+4 of SplitMix64
// seeded with base ^ (c · golden), j = c·chunk + m. f64 as on the host, so the bits agree.
__device__ __forceinline__ unsigned long long splitmix_mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <typename T>
__device__ void random_normal(T* x, long long n, unsigned long long base, float std, long long chunk) {
    const unsigned long long golden = 0x9E3779B97F4A7C15ull;
    for (long long j = blockIdx.x * (long long)blockDim.x + threadIdx.x; j < n; j += (long long)gridDim.x * blockDim.x) {
        const unsigned long long c = j / chunk, m = j % chunk;
        const unsigned long long state = base ^ (c * golden);
        double sum = 0.0;
        for (int r = 1; r <= 4; r++) {
            const unsigned long long u = splitmix_mix(state + (4 * m + r) * golden);
            sum += (double)(u >> 11) / 9007199254740992.0;
        }
        x[j] = from_f32<T>((float)((sum - 2.0) * sqrt(3.0)) * std);
    }
}

#define RANDOM_ENTRY_POINTS(NAME, T)                                                                 \
    extern "C" __global__ void random_normal_##NAME(T* x, long long n, unsigned long long base,      \
                                                    float std, long long chunk) {                    \
        random_normal(x, n, base, std, chunk);                                                       \
    }

MLA_FOR_EACH_DTYPE(RANDOM_ENTRY_POINTS)
