// Barriers between parts of a CTA whose warpgroups run offset from each other (seesaw.cu):
// named barriers (a producer arrives and goes on, its consumer waits) and mbarriers completed by
// cp.async or by TMA bulk copies of a tensor map. Under cuda-emu each has a CPU implementation
// that reports a thread arriving twice, deadlocks and reads of copies whose phase has not
// completed. docs/kernels.md, "The seesaw kernel".
#pragma once
#include <stdint.h>
#include "common.cuh"

// Waits at named barrier `id` (1 … 15; 0 is __syncthreads) until `count` threads (whole warps)
// have arrived or waited there.
__device__ __forceinline__ void named_barrier_sync(int id, int count) {
#if defined(MLA_CUDA_EMU)
    emu::named_barrier(id, count, true);
#elif defined(__CUDA_ARCH__)
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}

// Counts this warp's arrival at named barrier `id` without waiting; its shared-memory writes
// before it are visible to the threads that wait there.
__device__ __forceinline__ void named_barrier_arrive(int id, int count) {
#if defined(MLA_CUDA_EMU)
    emu::named_barrier(id, count, false);
#elif defined(__CUDA_ARCH__)
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}

// An mbarrier in shared memory whose phases complete after `count` arrivals. Visible to the
// CTA after a __syncthreads.
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, int count) {
#if defined(MLA_CUDA_EMU)
    emu::mbarrier_init(bar, count);
#elif defined(__CUDA_ARCH__)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(bar)), "r"(count) : "memory");
#endif
}

// Makes mbarriers just initialised visible to the tensor memory accelerator's copies.
__device__ __forceinline__ void fence_barrier_init() {
#if defined(__CUDA_ARCH__) && !defined(MLA_CUDA_EMU)
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// One arrival at `bar`, made when this thread's cp.async copies issued so far have landed; the
// thread goes on at once.
__device__ __forceinline__ void async_copies_arrive(uint64_t* bar) {
#if defined(MLA_CUDA_EMU)
    emu::mbarrier_arrive_copies(bar);
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(shared_address(bar)) : "memory");
#endif
}

// Cycles an mbarrier wait may take before it stops the kernel (about two seconds): a phase that
// never completes (a lost arrival) then fails the launch instead of hanging the GPU.
#define MBARRIER_TIMEOUT_CYCLES (4ll << 30)

// Whether the phase of `bar` with this parity (phase k has parity k % 2) has completed; waits a
// while for it first.
__device__ __forceinline__ bool mbarrier_try_wait(uint64_t* bar, uint32_t parity) {
#if defined(MLA_CUDA_EMU)
    emu::mbarrier_wait(bar, (int)parity);
    return true;
#elif defined(__CUDA_ARCH__)
    uint32_t done;
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%1], %2;\n"
        "selp.u32 %0, 1, 0, done;\n"
        "}\n"
        : "=r"(done)
        : "r"(shared_address(bar)), "r"(parity)
        : "memory");
    return done != 0;
#else
    return true;
#endif
}

// Waits until the phase of `bar` with this parity has completed: what its arrivals' copies
// wrote is then visible to this thread (and, after fence_async_shared, to its wgmma).
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
    if (mbarrier_try_wait(bar, parity)) return;
#if defined(__CUDA_ARCH__) && !defined(MLA_CUDA_EMU)
    const long long start = clock64();
    while (!mbarrier_try_wait(bar, parity))
        if (clock64() - start > MBARRIER_TIMEOUT_CYCLES) asm volatile("trap;");
#endif
}

// A tensor map (the driver's CUtensorMap: cuTensorMapEncodeTiled on the host), passed to a
// kernel by value as a __grid_constant__ parameter, whose address the bulk copies take.
struct __align__(128) TensorMap {
    unsigned long long opaque[16];
};

// Fetches the tensor map into the cache the bulk copies read it from, ahead of the first.
__device__ __forceinline__ void prefetch_tensor_map(const TensorMap* map) {
#if defined(__CUDA_ARCH__) && !defined(MLA_CUDA_EMU)
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
#else
    (void)map;
#endif
}

// One arrival at `bar` that also adds `bytes` to what its phase waits for: the phase completes
// once its arrivals are in and bulk copies have landed that many bytes.
__device__ __forceinline__ void mbarrier_arrive_expect_bytes(uint64_t* bar, uint32_t bytes) {
#if defined(MLA_CUDA_EMU)
    emu::mbarrier_arrive_expect_bytes(bar, bytes);
#elif defined(__CUDA_ARCH__)
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(shared_address(bar)), "r"(bytes)
                 : "memory");
#endif
}

// Starts the bulk copy of the box of a 2-D `map` at column `col`, row `row` into shared memory
// at `dst` (1024-byte aligned for the 128-byte swizzle, which the map applies), its bytes
// counted on `bar`. Marked for early eviction from L2: every byte is read once.
__device__ __forceinline__ void bulk_copy_box(void* dst, const TensorMap* map, int col, int row, uint64_t* bar) {
#if defined(MLA_CUDA_EMU)
    emu::bulk_copy_box(dst, map, col, row, bar);
#elif defined(__CUDA_ARCH__)
    asm volatile(
        "{\n"
        ".reg .b64 policy;\n"
        "createpolicy.fractional.L2::evict_first.b64 policy, 1.0;\n"
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.L2::cache_hint"
        " [%0], [%1, {%2, %3}], [%4], policy;\n"
        "}\n" ::"r"(shared_address(dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(row), "r"(shared_address(bar))
        : "memory");
#endif
}
