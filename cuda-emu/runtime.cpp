// Fibers and the block scheduler: the threads of a block run one at a time on one OS thread,
// each until it reaches a barrier, a warp-synchronous call or its end. Switching is a
// hand-written x86-64 context switch (callee-saved registers and the stack pointer), so that a
// barrier over 1,024 threads costs microseconds rather than system calls. Each worker thread
// (grid.cpp shares a grid's blocks out among them) has its own fibers, block state and static
// shared memory: all of it is thread_local.
#include "block.h"
#include <sanitizer/asan_interface.h>
#include <sys/mman.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <vector>

extern "C" void emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

namespace emu {

// The running block's state is its worker's (thread_local); the grid's shape is every worker's.
thread_local dim3 block_idx;
dim3 block_dim, grid_dim;

thread_local std::vector<ThreadState> threads;
thread_local NamedBarrier named[16];
thread_local std::map<const void*, Mbarrier> mbarriers;

namespace {
// The fiber stacks (block.h): after the guard page, a header, then the stack proper.
const size_t STACK_HEADER = 64;
const size_t STACK_USABLE = STACK_BYTES - PAGE - STACK_HEADER;
// Where an exited fiber's frames lie: below its stack's top, within this many bytes.
const size_t EXIT_FRAMES_BYTES = 8 << 10;
const size_t SHARED_GUARD = 256;

void (*grid_body)(void*) = nullptr;
void* grid_ctx = nullptr;
size_t shared_bytes = 0;

thread_local std::vector<WarpState> warps;
thread_local std::vector<void*> stacks;  // lowest address of each mapping; its first page is a guard page
thread_local Scheduler scheduler;
thread_local unsigned char* shared_base = nullptr;
thread_local std::string failure;
// Whether a block failed on this worker since its stacks were last cleared: its fibers were
// abandoned mid-call, their frames' redzones left poisoned anywhere in their stacks (fibers
// that exit unwind theirs but for their last frames: see run_block).
thread_local bool stacks_poisoned = false;

std::map<std::string, KernelEntry>& table() {
    static std::map<std::string, KernelEntry> kernels;
    return kernels;
}

void* stack_bottom(size_t i);

// Runs thread t's fiber until it hands control back; `scheduler`: where the worker's own stack
// pointer is kept meanwhile.
void switch_to_fiber(ThreadState& t, void** scheduler) {
#if defined(__SANITIZE_ADDRESS__)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, t.stack, STACK_USABLE);
    emu_switch(scheduler, t.sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    emu_switch(scheduler, t.sp);
#endif
}

extern "C" void emu_fiber_main() {
#if defined(__SANITIZE_ADDRESS__)
    Scheduler* s = me()->scheduler;
    __sanitizer_finish_switch_fiber(nullptr, &s->stack, &s->stack_bytes);
#endif
    grid_body(grid_ctx);
    // Copies still in flight land (the device completes them); wgmma left unwaited is dropped:
    // its accumulators were in the frames that just returned.
    ThreadState* self = me();
    self->copies.commit();
    self->copies.wait(0, land);
    self->mmas.clear();
    self->state = State::Exited;
    back_to_scheduler(true);
    abort();  // an exited fiber is never resumed
}

// The lowest address of fiber i's stack proper, and its size.
void* stack_bottom(size_t i) { return static_cast<char*>(stacks[i]) + PAGE + STACK_HEADER; }

// The top of fiber i's stack (mapped on first use), its header naming `thread`.
void* stack_top(size_t i, ThreadState* thread) {
    while (stacks.size() <= i) {
        // Twice the size, then the aligned half kept.
        char* m = static_cast<char*>(
            mmap(nullptr, 2 * STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (m == MAP_FAILED) {
            fprintf(stderr, "cuda-emu: cannot map a fiber stack\n");
            abort();
        }
        char* aligned = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(m) + STACK_BYTES - 1) & ~(uintptr_t)(STACK_BYTES - 1));
        if (aligned > m) munmap(m, aligned - m);
        if (aligned + STACK_BYTES < m + 2 * STACK_BYTES) munmap(aligned + STACK_BYTES, m + STACK_BYTES - aligned);
        mprotect(aligned, PAGE, PROT_NONE);  // a stack overflow faults instead of corrupting
        stacks.push_back(aligned);
    }
    char* base = static_cast<char*>(stacks[i]);
    ASAN_UNPOISON_MEMORY_REGION(base + PAGE, STACK_HEADER);
    *reinterpret_cast<ThreadState**>(base + PAGE) = thread;
    // The fibers' tops staggered (by 832 bytes, 13 cache lines, wrapping at 16 KiB) so that
    // their hot frames do not all fall into the same cache sets, as the stacks are aligned.
    return base + STACK_BYTES - (i * 832) % (16 << 10);
}

// A fresh fiber's stack as emu_switch expects to find it: six saved registers, then the entry
// point as the return address, with the alignment of a function that has just been called.
void* fresh_stack(void* top) {
    uint64_t* s = static_cast<uint64_t*>(top);
    *--s = 0;
    *--s = reinterpret_cast<uint64_t>(&emu_fiber_main);
    for (int r = 0; r < 6; r++) *--s = 0;
    return s;
}

std::string where(const ThreadState& t) {
    char buf[160];
    snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", block_idx.x, block_idx.y, block_idx.z, t.idx.x,
             t.idx.y, t.idx.z);
    return buf;
}

// Releases the waiters of every warp whose live lanes have all arrived at a warp barrier, else
// the whole block if every live thread waits at __syncthreads. False: nothing can move. Like
// run_block's loop, scanned at every barrier: not instrumented by AddressSanitizer, which is
// there for the kernels' accesses, not for the scheduler's own state.
__attribute__((no_sanitize_address)) bool release(size_t count) {
    std::vector<ThreadState>& threads = emu::threads;  // one thread-local lookup, not one per use
    std::vector<WarpState>& warps = emu::warps;
    for (size_t i = 0; i < count; i++)
        if (threads[i].state == State::Runnable) return true;  // freed by a named barrier or an mbarrier
    bool released = false;
    for (size_t w = 0; w * 32 < count; w++) {
        size_t waiting = 0, exited = 0, lanes = std::min(count - w * 32, (size_t)32);
        for (size_t l = 0; l < lanes; l++) {
            const State s = threads[w * 32 + l].state;
            waiting += s == State::AtWarpBarrier;
            exited += s == State::Exited;
        }
        if (waiting == 0) continue;
        if (waiting + exited == lanes && exited > 0) {
            failure = "warp " + std::to_string(w) + ": a full-mask warp operation after some of its lanes exited";
            return false;
        }
        if (waiting == lanes) {
            warps[w].generation++;
            for (size_t l = 0; l < lanes; l++) threads[w * 32 + l].state = State::Runnable;
            released = true;
        }
    }
    if (released) return true;
    size_t at_block = 0, live = 0;
    for (size_t i = 0; i < count; i++) {
        live += threads[i].state != State::Exited;
        at_block += threads[i].state == State::AtBlockBarrier;
    }
    if (at_block > 0 && at_block == live) {
        for (size_t i = 0; i < count; i++)
            if (threads[i].state == State::AtBlockBarrier) threads[i].state = State::Runnable;
        return true;
    }
    if (live > 0)
        failure = "deadlock: " + std::to_string(at_block) + " of " + std::to_string(live) +
                  " live threads wait at __syncthreads and the others at a warp-synchronous call, a named "
                  "barrier or an mbarrier";
    return false;
}

bool shared_guard_intact() {
#if defined(__SANITIZE_ADDRESS__)
    return true;  // the guard is poisoned: AddressSanitizer reports any access to it
#endif
    for (size_t i = 0; i < SHARED_GUARD; i++)
        if (shared_base[shared_bytes + i] != POISON) return false;
    return true;
}

__attribute__((no_sanitize_address)) std::string run_block(size_t count) {
    std::vector<ThreadState>& threads = emu::threads;  // one thread-local lookup, not one per use
    for (size_t i = 0; i < count; i++) {
        ThreadState& t = threads[i];
        t.idx = dim3{(unsigned)(i % block_dim.x), (unsigned)(i / block_dim.x % block_dim.y),
                     (unsigned)(i / ((size_t)block_dim.x * block_dim.y))};
        t.lane = (int)(i % 32);
        t.warp = (int)(i / 32);
        t.scheduler = &scheduler;
        t.warp_state = &warps[i / 32];
        t.state = State::Runnable;
        t.copies.clear();
        t.mmas.clear();
        char* top = static_cast<char*>(stack_top(i, &t));  // maps the stack on first use
        // The last frames of the fiber that exited from this stack (emu_fiber_main and the
        // switch away, which never return) keep their redzones poisoned.
        ASAN_UNPOISON_MEMORY_REGION(top - EXIT_FRAMES_BYTES, EXIT_FRAMES_BYTES);
        t.sp = fresh_stack(top);
        t.stack = stack_bottom(i);
    }
    for (WarpState& w : warps) {
        w.generation = w.claimed = 0;
        w.mma_count = 0;
    }
    for (NamedBarrier& b : named) b = NamedBarrier{0, 0, std::vector<bool>(count)};
    mbarriers.clear();
    ASAN_UNPOISON_MEMORY_REGION(shared_base, shared_bytes + SHARED_GUARD);
    memset(shared_base, POISON, shared_bytes + SHARED_GUARD);
    ASAN_POISON_MEMORY_REGION(shared_base + shared_bytes, SHARED_GUARD);
    // Between two barriers the threads run one after another, so a thread that reads what
    // another writes without a barrier between them sees the write only if the writer ran first.
    // Odd blocks run their threads in reverse order, so such a race shows one way or the other.
    const bool reverse = (block_idx.x + block_idx.y + block_idx.z) % 2 == 1;
    void** sp = &scheduler.sp;
    for (;;) {
        for (size_t n = 0; n < count; n++) {
            const size_t i = reverse ? count - 1 - n : n;
            ThreadState& t = threads[i];
            if (t.state != State::Runnable) continue;
            switch_to_fiber(t, sp);
            if (t.state == State::Failed) return failure + " (" + where(t) + ")";
        }
        bool all_exited = true;
        for (size_t i = 0; i < count; i++) all_exited &= threads[i].state == State::Exited;
        if (all_exited) break;
        if (!release(count)) return failure + " (block (" + std::to_string(block_idx.x) + "," +
                                        std::to_string(block_idx.y) + "," + std::to_string(block_idx.z) + "))";
    }
    if (!shared_guard_intact()) return "write past the end of dynamic shared memory (" + std::to_string(shared_bytes) +
                                       " bytes) in block " + std::to_string(block_idx.x);
    return "";
}
}  // namespace

void back_to_scheduler(bool exiting) {
#if defined(__SANITIZE_ADDRESS__)
    void* fake = nullptr;
    ThreadState* self = me();
    Scheduler* s = self->scheduler;
    __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, s->stack, s->stack_bytes);
    emu_switch(&self->sp, s->sp);
    __sanitizer_finish_switch_fiber(fake, &s->stack, &s->stack_bytes);
#else
    (void)exiting;
    ThreadState* self = me();
    emu_switch(&self->sp, self->scheduler->sp);
#endif
}

void land(const PendingCopy& c) { memcpy(c.dst, c.bytes, 16); }

const dim3& thread_idx() { return me()->idx; }
int lane_id() { return me()->lane; }

void syncthreads() {
    me()->state = State::AtBlockBarrier;
    back_to_scheduler();
}

void syncwarp() {
    me()->state = State::AtWarpBarrier;
    back_to_scheduler();
}

const LaneEntry* warp_exchange(uint64_t value, const void* first, const void* second) {
    ThreadState* self = me();
    WarpState& w = *self->warp_state;
    LaneEntry* lanes = w.lanes[w.generation & 1];
    lanes[self->lane] = LaneEntry{value, first, second};
    syncwarp();
    return lanes;
}

bool claim_warp_op() {
    WarpState& w = *me()->warp_state;
    if (w.claimed == w.generation) return false;
    w.claimed = w.generation;
    return true;
}

void check_full_mask(unsigned mask) {
    if (mask != 0xffffffffu) kernel_error("warp operation with a partial mask (the emulator knows full masks only)");
}

void kernel_error(const char* what) {
    failure = what;
    me()->state = State::Failed;
    back_to_scheduler();
    abort();
}

void* dynamic_shared() { return shared_base; }

void set_grid(const LaunchDims& dims, void (*body)(void*), void* ctx) {
    block_dim = dims.block;
    grid_dim = dims.grid;
    grid_body = body;
    grid_ctx = ctx;
    shared_bytes = dims.shared_bytes;
}

void open_worker(size_t count) {
    if (threads.size() < count) threads.resize(count);
    if (warps.size() < (count + 31) / 32) warps.resize((count + 31) / 32);
    shared_base = static_cast<unsigned char*>(aligned_alloc(128, (shared_bytes + SHARED_GUARD + 127) / 128 * 128));
}

std::string run_block_at(size_t b, size_t count) {
    block_idx = dim3{(unsigned)(b % grid_dim.x), (unsigned)(b / grid_dim.x % grid_dim.y),
                     (unsigned)(b / ((size_t)grid_dim.x * grid_dim.y))};
    // Cleared after a failure only: clearing every stack for every block (32 KiB of shadow per
    // thread) was half the time of a sanitized run.
    if (stacks_poisoned) {
        for (size_t i = 0; i < stacks.size(); i++) ASAN_UNPOISON_MEMORY_REGION(stack_bottom(i), STACK_USABLE);
        stacks_poisoned = false;
    }
    std::string failed = run_block(count);
    stacks_poisoned = !failed.empty();
    return failed;
}

void close_worker() {
    ASAN_UNPOISON_MEMORY_REGION(shared_base, shared_bytes + SHARED_GUARD);
    free(shared_base);
    shared_base = nullptr;
}

void register_kernel(const char* name, const KernelEntry& entry) { table()[name] = entry; }

const KernelEntry* find_kernel(const char* name) {
    auto it = table().find(name);
    return it == table().end() ? nullptr : &it->second;
}
}  // namespace emu
