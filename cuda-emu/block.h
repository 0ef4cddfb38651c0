// The state of the block a worker thread runs (runtime.cpp) as the operations on it see it:
// its threads (fibers), their warps, and the barriers and asynchronous operations in flight.
// Private to the emulator's runtime (runtime.cpp, async.cpp).
#pragma once
#include "runtime.h"
#include "wgmma_ptx.h"
#include <cstdint>
#include <deque>
#include <map>
#include <vector>

namespace emu {
enum class State { Runnable, AtBlockBarrier, AtWarpBarrier, AtNamedBarrier, AtMbarrier, Exited, Failed };

// A cp.async: its source read at issue, its destination written at the wait that covers it.
struct PendingCopy {
    unsigned char* dst;
    unsigned char bytes[16];
};

// A wgmma: computed at the wait that covers it.
struct PendingMma {
    float* d;
    int n;
    uint64_t a, b;
    bool b_mn_major;
    const uint32_t* a_regs;  // A in registers (nullptr: A in shared memory, descriptor a)
    uint64_t digest;         // of the shared operands at the issue (lane 0 of each warp)
    bool fp8;                // e4m3 operands, k = 32 (else bf16, k = 16)
    bool zero_d;             // scale-d 0: D = A·B, the accumulators' old values dropped
};

// A thread's asynchronous operations of one kind: the open group and the committed ones, oldest
// first.
template <typename Op> struct AsyncGroups {
    std::vector<Op> open;
    std::deque<std::vector<Op>> committed;

    void clear() {
        open.clear();
        committed.clear();
    }
    void commit() {
        committed.push_back(std::move(open));
        open.clear();
    }
    // Calls `f` on each operation that wait(pending) would complete, in its order.
    template <typename F> void for_each_due(int pending, F f) const {
        for (size_t g = 0; (int)(committed.size() - g) > pending; g++)
            for (const Op& op : committed[g]) f(op);
    }
    // Completes the oldest committed groups until at most `pending` remain.
    template <typename F> void wait(int pending, F complete) {
        while ((int)committed.size() > pending) {
            for (const Op& op : committed.front()) complete(op);
            committed.pop_front();
        }
    }
};

struct WarpState;

// A worker's block scheduler, as its fibers switch back to it: its saved stack pointer and,
// under AddressSanitizer, its stack.
struct Scheduler {
    void* sp = nullptr;
    const void* stack = nullptr;
    size_t stack_bytes = 0;
};

struct ThreadState {
    void* sp;
    void* stack;  // the lowest address of its fiber's stack proper
    dim3 idx;
    int lane, warp;
    // The worker's scheduler and this thread's warp, reached from the fiber without a
    // thread-local lookup.
    Scheduler* scheduler;
    WarpState* warp_state;
    State state;
    AsyncGroups<PendingCopy> copies;
    AsyncGroups<PendingMma> mmas;
    int barrier_id;              // AtNamedBarrier: which
    const void* mbarrier;        // AtMbarrier: which
};

// A named barrier's arrivals so far (and the threads that made them) and their count.
struct NamedBarrier {
    int count = 0, arrived = 0;
    std::vector<bool> threads;
};

// An mbarrier's phase (completions so far), arrivals in this phase and the copies that land at
// its completion. The completion waits until someone needs it (a wait, or the next phase's
// first arrival), so that copies land as late as the device may land them and a reader that
// does not wait for the phase sees poison whichever order the threads ran in.
struct Mbarrier {
    int count = 0, arrived = 0;
    long long expected_bytes = 0;  // of bulk copies the phase still waits for
    unsigned phase = 0;
    bool complete = false;  // every arrival and byte of the phase is in; its copies have not landed
    std::vector<PendingCopy> copies;
};

struct WarpState {
    unsigned generation;
    unsigned claimed;        // the last generation whose collective result a lane took on (claim_warp_op)
    LaneEntry lanes[2][32];  // by generation parity: a slot is rewritten two generations later
    // The operands of the wgmmas that the warp's latest wgmma_wait completes, read by the first
    // lane to go on from there, in order: the first mma_count.
    size_t mma_count;
    std::vector<WgmmaOperands> mma_operands;
};

// A fiber's stack: a mapping of STACK_BYTES aligned to its size, a guard page at the bottom, then
// the fiber's ThreadState* (see me()), then the stack proper.
const size_t STACK_BYTES = 256 << 10;  // a power of two
const size_t PAGE = 4096;
const unsigned char POISON = 0xff;  // NaN in f32 and bf16

// The ThreadState of the fiber this runs on, from its stack: without the call a thread-local
// lookup costs in a shared library, on every emulated threadIdx, shuffle and barrier. Only for
// code that runs on a fiber: the kernels and the calls they make.
inline ThreadState* me() {
    const uintptr_t frame = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    return *reinterpret_cast<ThreadState**>((frame & ~(uintptr_t)(STACK_BYTES - 1)) + PAGE);
}

// Hands the worker back to its block scheduler until this fiber is runnable again (its state
// says why it stopped), or for good where `exiting`.
void back_to_scheduler(bool exiting = false);
// A cp.async's 16 bytes written to their destination.
void land(const PendingCopy& c);

// The running block's threads, named barriers and mbarriers (this worker's).
extern thread_local std::vector<ThreadState> threads;
extern thread_local NamedBarrier named[16];
extern thread_local std::map<const void*, Mbarrier> mbarriers;
}  // namespace emu
