// Helpers shared by every kernel family: f32 math on f32 or bf16 storage, block reductions.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

// Alignment a vector access needs: free on the device (a misaligned access faults there), an
// error that names the access under cuda-emu, which would otherwise run it silently.
#ifndef MLA_ASSERT_ALIGNED
#define MLA_ASSERT_ALIGNED(pointer, bytes)
#endif

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

// 16 bytes of T (8 bf16 or 4 f32), moved with one vector load or store: scalar 2-byte accesses
// leave elementwise kernels at a third of the copy bandwidth.
template <typename T> struct __align__(16) Pack {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};
template <typename T> __device__ __forceinline__ Pack<T> load_pack(const T* p) {
    MLA_ASSERT_ALIGNED(p, 16);
    return *reinterpret_cast<const Pack<T>*>(p);
}
template <typename T> __device__ __forceinline__ void store_pack(T* p, const Pack<T>& x) {
    MLA_ASSERT_ALIGNED(p, 16);
    *reinterpret_cast<Pack<T>*>(p) = x;
}
// The 18-bit shared-memory address of `p` (a pointer into this CTA's shared memory).
__device__ __forceinline__ uint32_t shared_address(const void* p) {
#if defined(MLA_CUDA_EMU)
    return emu::shared_offset(p);
#elif defined(__CUDA_ARCH__)
    return (uint32_t)__cvta_generic_to_shared(p);
#else
    (void)p;
    return 0;
#endif
}
// Whether every pointer is 16-byte aligned, so that packs may be used from it.
__device__ __forceinline__ bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }
template <typename... P> __device__ __forceinline__ bool aligned16(const void* p, P... rest) {
    return aligned16(p) && aligned16(rest...);
}

// 2^x for the softmax weights of the tensor-core attention kernels (bf16): the SFU's
// approximation (2 ulp) with results below 2^-126 flushed to zero, where exp2f wraps each call
// in range checks for denormal results (about ten instructions each, 18 calls per lane and tile
// in the wgmma kernel). Their exponents are at most 0 and a weight below 2^-126 is nothing next
// to the row's largest, 1. Under cuda-emu: exp2f, flushed alike.
__device__ __forceinline__ float fast_exp2(float x) {
#if defined(MLA_CUDA_EMU)
    const float y = exp2f(x);
    return y < 1.17549435e-38f ? 0.0f : y;  // FLT_MIN: the smallest normal
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// Programmatic dependent launch (sm_90+), for the attention kernels and their combine: a kernel
// lets the stream's next one (launched as its dependent: src/backend/cuda/launch.rs) start
// launching while its own CTAs still run, and that one waits for it before it reads what it
// writes. Without a dependent launch the wait returns at once. Nothing on older GPUs, where the
// host launches plainly, or under cuda-emu, which runs kernels one after another.
__device__ __forceinline__ void launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(MLA_CUDA_EMU)
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(MLA_CUDA_EMU)
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

struct SumOp {
    template <typename F> __device__ __forceinline__ F operator()(F a, F b) const { return a + b; }
};
struct MaxOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename F, typename Op> __device__ __forceinline__ F warp_reduce(F v, Op op) {
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// `op` over the block; every thread gets the result. blockDim.x must be a multiple of 32.
template <typename F, typename Op> __device__ __forceinline__ F block_reduce(F v, F identity, Op op) {
    __shared__ F partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();  // `partial` may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? partial[lane] : identity;
    return warp_reduce(v, op);
}

template <typename F> __device__ __forceinline__ F warp_sum(F v) { return warp_reduce(v, SumOp()); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce(v, MaxOp()); }
// f32 or f64.
template <typename F> __device__ __forceinline__ F block_sum(F v) { return block_reduce(v, F(0), SumOp()); }
// NaN is ignored (fmaxf).
__device__ __forceinline__ float block_max(float v) { return block_reduce(v, -INFINITY, MaxOp()); }

// The dynamic shared memory of kernel NAME is one `NAME_shared` (a struct, TYPE): its sizeof is
// the launch size, which the host takes from build.rs (it compiles these declarations on the
// host with MLA_SHARED_PROBE and reads the sizes), so no size is written twice.
#if defined(MLA_SHARED_PROBE)
#include <vector>
namespace mla_probe {
struct Entry {
    const char* name;
    size_t bytes;
};
inline std::vector<Entry>& entries() {
    static std::vector<Entry> all;
    return all;
}
struct Add {
    Add(const char* name, size_t bytes) { entries().push_back(Entry{name, bytes}); }
};
}  // namespace mla_probe
#define MLA_SHARED_STORAGE(NAME, ...)   \
    typedef __VA_ARGS__ NAME##_shared; \
    inline mla_probe::Add NAME##_probe{#NAME, sizeof(NAME##_shared)};
#else
#define MLA_SHARED_STORAGE(NAME, ...) typedef __VA_ARGS__ NAME##_shared;
#endif

// This CTA's dynamic shared memory as a T (a kernel's `NAME_shared`), or as bytes.
__device__ __forceinline__ unsigned char* dynamic_shared_bytes() {
#if defined(MLA_CUDA_EMU)
    return static_cast<unsigned char*>(emu::dynamic_shared());
#else
    extern __shared__ __align__(128) unsigned char mla_dynamic_shared[];
    return mla_dynamic_shared;
#endif
}
template <typename T> __device__ __forceinline__ T& dynamic_shared() {
    return *reinterpret_cast<T*>(dynamic_shared_bytes());
}

// Instantiates `extern "C"` entry points NAME_f32 and NAME_bf16 of a templated kernel.
#define MLA_FOR_EACH_DTYPE(MACRO) MACRO(f32, float) MACRO(bf16, bf16)

// The cache row of token p of a sequence whose pages (of block_size tokens) are `table`.
__device__ __forceinline__ size_t cache_slot(const uint32_t* table, int p, int block_size) {
    return (size_t)table[p / block_size] * block_size + p % block_size;
}

// Token p (p ≥ 0) of a split ending at kv_end (≥ 1): its page (block-table entry) and its row
// in the page, -1 at or past the split's end. Branch-free (the table read clamped to the split's
// last token, the row dropped past it), so the read's wait can fall where its user is.
struct TokenPage {
    uint32_t page;
    int row;
};

__device__ __forceinline__ TokenPage token_page(const uint32_t* table, int p, int kv_end, int block_size) {
    const int q = min(p, kv_end - 1);
    return TokenPage{table[q / block_size], p < kv_end ? q % block_size : -1};
}

// The cache row of a token with a row (t.row ≥ 0).
__device__ __forceinline__ size_t token_slot(TokenPage t, int block_size) {
    return (size_t)t.page * block_size + t.row;
}

// The cache slot of token p, -1 at or past kv_end (token_page). The multiply follows the read
// closely, and so does the wait for it: where a tile's tensor work must not wait behind it,
// carry the TokenPage to the copies instead (mma.cu); in the wgmma kernels it overlaps the
// asynchronous wgmma.
__device__ __forceinline__ int slot_or_none(const uint32_t* table, int p, int kv_end, int block_size) {
    const TokenPage t = token_page(table, p, kv_end, block_size);
    return t.row >= 0 ? (int)token_slot(t, block_size) : -1;
}
