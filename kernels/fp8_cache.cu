// FP8 cache rows (fp8.cuh): the cache write, which quantizes each row as the CPU reference does
// (src/kv/fp8_layout.rs; the bytes are equal, tests/gpu_fp8_attention.rs), and the gather of a
// context's rows dequantized (materialised MLA). docs/kernels.md, "FP8 cache rows on the GPU".
// mla: no-spills
#include "common.cuh"
#include "fp8.cuh"

#define FP8_WRITE_THREADS 128

// Row i's columns [offset, offset + codes + tail) of x go to cache slot slots[i] as an FP8 row:
// one block per row, one warp per scale group at a time (its amax, then its codes), the bf16
// tail by the whole block.
template <typename T>
__device__ void write_kv_cache_fp8(uint8_t* cache, const T* x, const uint32_t* slots, int cols, int offset, int width,
                                   Fp8RowFormat f) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const T* in = x + (size_t)blockIdx.x * cols + offset;
    uint8_t* row = cache + (size_t)slots[blockIdx.x] * f.row_bytes;
    const int groups = (f.codes + f.group - 1) / f.group;
    for (int g = warp; g < groups; g += warps) {
        const int first = g * f.group, end = min(first + f.group, f.codes);
        float amax = 0.0f;
        for (int c = first + lane; c < end; c += 32) amax = fmaxf(amax, fabsf(to_f32(in[c])));
        const float scale = fp8_group_scale(warp_max(amax));
        for (int c = first + lane; c < end; c += 32) row[c] = (uint8_t)f32_to_e4m3(to_f32(in[c]) / scale);
        if (lane == 0) *reinterpret_cast<float*>(row + f.scales_at + 4 * g) = scale;
    }
    bf16* tail = reinterpret_cast<bf16*>(row + f.tail_at);
    for (int c = f.codes + threadIdx.x; c < width; c += blockDim.x) tail[c - f.codes] = from_f32<bf16>(to_f32(in[c]));
}

// out[i] = the `width` values of cache slot rows[i], dequantized. One block per row.
template <typename T>
__device__ void gather_fp8_rows(T* out, const uint8_t* cache, const uint32_t* rows, int width, Fp8RowFormat f) {
    const uint8_t* row = cache + (size_t)rows[blockIdx.x] * f.row_bytes;
    T* o = out + (size_t)blockIdx.x * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) o[c] = from_f32<T>(fp8_value(row, f, c));
}

#define ENTRY_POINTS(NAME, T)                                                                             \
    extern "C" __global__ void write_kv_cache_fp8_##NAME(uint8_t* cache, const T* x, const uint32_t* slots, \
                                                         int cols, int offset, int width, Fp8RowFormat f) {  \
        write_kv_cache_fp8(cache, x, slots, cols, offset, width, f);                                      \
    }                                                                                                     \
    extern "C" __global__ void gather_fp8_rows_##NAME(T* out, const uint8_t* cache, const uint32_t* rows,   \
                                                      int width, Fp8RowFormat f) {                        \
        gather_fp8_rows(out, cache, rows, width, f);                                                      \
    }

MLA_FOR_EACH_DTYPE(ENTRY_POINTS)
