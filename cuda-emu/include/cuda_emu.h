// The CUDA execution model for kernel sources compiled by a host C++ compiler: built-in
// variables, qualifiers, barriers, warp shuffles and the device math the kernels use. Each CUDA
// thread of a block is a fiber; a barrier or a warp-synchronous call hands control to the
// block's scheduler (runtime.cpp), which releases the waiters once every live thread of the
// block (or warp) has arrived, and reports divergent or deadlocked barriers as errors.
#pragma once
// Kernel sources choose the CPU versions of inline-PTX primitives (kernels/mma.cuh) by this.
#define MLA_CUDA_EMU 1
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <type_traits>

#define __global__ __attribute__((used))
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __grid_constant__
// Static shared memory: one copy per instantiation and worker thread, which is right because
// each worker of the emulator runs one block at a time.
#define __shared__ static thread_local

struct dim3 {
    unsigned x, y, z;
};
struct uint4 {
    unsigned x, y, z, w;
} __attribute__((aligned(16)));
struct float2 {
    float x, y;
} __attribute__((aligned(8)));
inline float2 make_float2(float x, float y) { return float2{x, y}; }
struct uint2 {
    unsigned x, y;
} __attribute__((aligned(8)));
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
struct float4 {
    float x, y, z, w;
} __attribute__((aligned(16)));
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace emu {
// The running block of each worker thread of the emulator, and the grid's shape.
extern thread_local dim3 block_idx;
extern dim3 block_dim, grid_dim;
const dim3& thread_idx();
int lane_id();
void syncthreads();
void syncwarp();
// Every live lane of the warp publishes `value` and `pointers`; returns the table of all lanes'
// entries, valid until the warp's next synchronising call.
struct LaneEntry {
    uint64_t value;
    const void* first;
    const void* second;
};
const LaneEntry* warp_exchange(uint64_t value, const void* first = nullptr, const void* second = nullptr);
// After a warp_exchange: true for the first lane of the warp to go on from it, while the others
// still wait there (their operands intact), so that one lane can compute a warp-wide result for
// all (and no lane needs a second barrier before it changes its operands); false for the rest.
bool claim_warp_op();
// Stops the grid with an error, as a failed device-side check would.
[[noreturn]] void kernel_error(const char* what);
void* dynamic_shared();
// The offset of `p` in the CTA's dynamic shared memory, as a shared-window address.
inline uint32_t shared_offset(const void* p) {
    const ptrdiff_t offset = static_cast<const char*>(p) - static_cast<const char*>(dynamic_shared());
    if (offset < 0 || offset >= (1 << 18)) kernel_error("a shared-memory address outside the CTA's shared memory");
    return (uint32_t)offset;
}

template <typename T> T shuffle_from(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffled values are at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    const LaneEntry* lanes = warp_exchange(bits);
    T out;
    memcpy(&out, &lanes[src & 31].value, sizeof(T));
    return out;
}
void check_full_mask(unsigned mask);

// Asynchronous work of this thread, completed where the device may complete it last, so that a
// kernel that reads too early sees it: cp.async reads its source at issue, writes its 16 bytes
// of shared memory at the cp.async.wait_group that covers it and poisons them (NaN) meanwhile,
// so a reader before that wait (or a copy into a stage still being read) shows; wgmma computes
// its accumulators at the wgmma.wait_group that covers it, from the operands as they are then.
void async_copy16(void* dst, const void* src, bool valid);
void async_commit();
void async_wait(int pending);  // all but the newest `pending` committed groups
void wgmma_issue(float* d, int n, uint64_t a, uint64_t b, bool b_mn_major);
// The same for e4m3 operands, k = 32, both K-major; without `accumulate` (scale-d 0) D = A·B.
void wgmma_issue_e4m3(float* d, int n, uint64_t a, uint64_t b, bool accumulate);
// The same with A [64 × 16] in registers: `a_regs`, this thread's four of them (mma.sync's A
// fragment for its warp's 16 rows), read at the wait like the shared operands.
void wgmma_issue_rs(float* d, int n, const uint32_t* a_regs, uint64_t b, bool b_mn_major);
void wgmma_commit();
void wgmma_wait(int pending);  // as async_wait, then a warp barrier (.sync.aligned)
// Named barrier `id` (1 … 15) of `count` threads: bar.sync (wait) or bar.arrive. A thread that
// arrives twice before the barrier completes is an error: the device would count its warp twice.
void named_barrier(int id, int count, bool wait);
// mbarriers in shared memory that cp.async completes (cp.async.mbarrier.arrive.noinc): the
// thread's copies not yet committed count as one arrival and land when the phase completes (all
// `count` arrivals), not before, so a reader that does not wait for the phase sees poison.
void mbarrier_init(const void* bar, int count);
void mbarrier_arrive_copies(const void* bar);
void mbarrier_wait(const void* bar, int parity);  // until the phase of this parity has completed
// The tensor memory accelerator: a phase also waits for the bytes that an arrival expects
// (mbarrier.arrive.expect_tx), which bulk copies of boxes of a tensor map complete
// (cp.async.bulk.tensor.2d): each reads its source at issue and lands with the phase, as above.
void mbarrier_arrive_expect_bytes(const void* bar, unsigned bytes);
void bulk_copy_box(void* dst, const void* map, int col, int row, const void* bar);
// What the fake cuTensorMapEncodeTiled (driver.cpp) writes into the 128-byte CUtensorMap: a
// 2-D tensor, innermost dimension first.
struct TensorMapFields {
    uint64_t magic;
    const unsigned char* base;
    uint64_t dims[2];
    uint64_t row_stride;  // bytes
    uint32_t box[2];
    uint32_t element_bytes;
    uint32_t swizzle_bytes;  // 0 (none) or 128
};
static_assert(sizeof(TensorMapFields) <= 128, "the fields fit a CUtensorMap");
const uint64_t TENSOR_MAP_MAGIC = 0x6d6c612d746d6170ull;
}  // namespace emu

#define MLA_ASSERT_ALIGNED(pointer, bytes)                                                          \
    do {                                                                                            \
        if ((uintptr_t)(pointer) % (bytes) != 0)                                                    \
            emu::kernel_error("misaligned " #bytes "-byte vector access through " #pointer);        \
    } while (0)

#define threadIdx (emu::thread_idx())
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

inline void __syncthreads() { emu::syncthreads(); }
// Nonzero where any thread of the block passes a nonzero predicate. The block's fibers share
// their worker's flag (a worker runs one block at a time); the first barrier keeps the reset
// after every thread has read the previous call's result.
inline int __syncthreads_or(int predicate) {
    static thread_local int any;
    const dim3& t = emu::thread_idx();
    emu::syncthreads();
    if (t.x == 0 && t.y == 0 && t.z == 0) any = 0;
    emu::syncthreads();
    if (predicate) any = 1;
    emu::syncthreads();
    return any;
}
// Blocks run on several workers at once: a device-wide fence is a real one.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
// A load that skips L1: the CPU has one coherent memory.
template <typename T> T __ldcg(const T* address) { return *address; }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::check_full_mask(mask);
    emu::syncwarp();
}
template <typename T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    emu::check_full_mask(mask);
    if (width != 32) emu::kernel_error("shuffle width other than 32");
    return emu::shuffle_from(v, emu::lane_id() ^ lane_mask);
}
template <typename T> T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    emu::check_full_mask(mask);
    if (width != 32) emu::kernel_error("shuffle width other than 32");
    return emu::shuffle_from(v, src);
}
template <typename T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    emu::check_full_mask(mask);
    if (width != 32) emu::kernel_error("shuffle width other than 32");
    const int src = emu::lane_id() + (int)delta;
    const T other = emu::shuffle_from(v, src & 31);
    return src < 32 ? other : v;
}

template <typename T> T atomicAdd(T* address, T value) {
    // The fibers of a block never preempt one another, but blocks run on several workers at
    // once: a global address may be shared.
    if constexpr (std::is_integral_v<T>) {
        return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
    } else {
        T old, sum;
        __atomic_load(address, &old, __ATOMIC_RELAXED);
        do sum = old + value;
        while (!__atomic_compare_exchange(address, &old, &sum, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
        return old;
    }
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    emu::check_full_mask(mask);
    const emu::LaneEntry* lanes = emu::warp_exchange(predicate != 0);
    unsigned bits = 0;
    for (int l = 0; l < 32; l++)
        if (lanes[l].value) bits |= 1u << l;
    return bits;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }

// Device integer min/max (CUDA declares them for every arithmetic type).
template <typename A, typename B> inline auto min(A a, B b) { return b < a ? b : a; }
template <typename A, typename B> inline auto max(A a, B b) { return a < b ? b : a; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline unsigned __float_as_uint(float x) {
    unsigned u;
    memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}
