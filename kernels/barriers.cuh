// Barriers between parts of a CTA, for kernels whose warpgroups run offset from each other
// (attention_seesaw.cu), where __syncthreads would hold both to the slower one's pace:
//  - named barriers (bar.sync / bar.arrive with an id and a thread count): a producer arrives
//    and goes on, its consumer waits;
//  - mbarriers completed by cp.async (cp.async.mbarrier.arrive.noinc, sm_80+): the copying
//    threads do not wait for their copies, whoever reads them waits for the mbarrier's phase.
// Under cuda-emu each has a CPU implementation (cuda-emu/runtime.cpp) that catches a thread
// arriving twice, deadlocks, and reads of copies whose phase has not completed.
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
