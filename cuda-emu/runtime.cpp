// Fibers and the block scheduler: the threads of a block run one at a time on one OS thread,
// each until it reaches a barrier, a warp-synchronous call or its end. Switching is a
// hand-written x86-64 context switch (callee-saved registers and the stack pointer), so that a
// barrier over 1,024 threads costs microseconds rather than system calls. Each worker thread
// (grid.cpp shares a grid's blocks out among them) has its own fibers, block state and static
// shared memory: all of it is thread_local.
#include "runtime.h"
#include "wgmma_ptx.h"
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

struct ThreadState {
    void* sp;
    dim3 idx;
    int lane, warp;
    // The worker's scheduler and this thread's warp, reached from the fiber without a
    // thread-local lookup.
    void** scheduler_sp;
    WarpState* warp_state;
    State state;
    AsyncGroups<PendingCopy> copies;
    AsyncGroups<PendingMma> mmas;
    unsigned mma_waits;          // wgmma_waits this thread has passed
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
    // lane to arrive there (the mma_waits-th wait), in order: the first mma_count.
    unsigned mma_waits;
    size_t mma_count;
    std::vector<WgmmaOperands> mma_operands;
};

// The running block's state is its worker's (thread_local); the grid's shape is every worker's.
thread_local dim3 block_idx;
dim3 block_dim, grid_dim;

namespace {
// A fiber's stack: a mapping of STACK_BYTES aligned to its size, a guard page at the bottom, then
// the fiber's ThreadState* (see me()), then the stack proper.
const size_t STACK_BYTES = 256 << 10;  // a power of two
const size_t PAGE = 4096;
const size_t STACK_HEADER = 64;
const size_t STACK_USABLE = STACK_BYTES - PAGE - STACK_HEADER;
// Where an exited fiber's frames lie: below its stack's top, within this many bytes.
const size_t EXIT_FRAMES_BYTES = 8 << 10;
const size_t SHARED_GUARD = 256;
const unsigned char POISON = 0xff;  // NaN in f32 and bf16

void (*grid_body)(void*) = nullptr;
void* grid_ctx = nullptr;
size_t shared_bytes = 0;

thread_local std::vector<ThreadState> threads;
thread_local NamedBarrier named[16];
thread_local std::map<const void*, Mbarrier> mbarriers;
thread_local std::vector<WarpState> warps;
thread_local std::vector<void*> stacks;  // lowest address of each mapping; its first page is a guard page
thread_local void* scheduler_sp = nullptr;
thread_local unsigned char* shared_base = nullptr;
thread_local std::string failure;
// Whether a block failed on this worker since its stacks were last cleared: its fibers were
// abandoned mid-call, their frames' redzones left poisoned anywhere in their stacks (fibers
// that exit unwind theirs but for their last frames: see run_block).
thread_local bool stacks_poisoned = false;

// The ThreadState of the fiber this runs on, from its stack: without the call a thread-local
// lookup costs in a shared library, on every emulated threadIdx, shuffle and barrier. Only for
// code that runs on a fiber: the kernels and the calls they make.
inline ThreadState* me() {
    const uintptr_t frame = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    return *reinterpret_cast<ThreadState**>((frame & ~(uintptr_t)(STACK_BYTES - 1)) + PAGE);
}

std::map<std::string, KernelEntry>& table() {
    static std::map<std::string, KernelEntry> kernels;
    return kernels;
}

// Under AddressSanitizer (build.sh --asan) every switch tells it which stack is live.
[[maybe_unused]] thread_local const void* scheduler_stack = nullptr;
[[maybe_unused]] thread_local size_t scheduler_stack_bytes = 0;

void* stack_bottom(size_t i);

// Runs fiber i (thread t) until it hands control back; `scheduler`: where the worker's own
// stack pointer is kept meanwhile.
void switch_to_fiber(size_t i, ThreadState& t, void** scheduler) {
#if defined(__SANITIZE_ADDRESS__)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, stack_bottom(i), STACK_USABLE);
    emu_switch(scheduler, t.sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    (void)i;
    emu_switch(scheduler, t.sp);
#endif
}

void back_to_scheduler(bool exiting = false) {
#if defined(__SANITIZE_ADDRESS__)
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, scheduler_stack, scheduler_stack_bytes);
    ThreadState* self = me();
    emu_switch(&self->sp, *self->scheduler_sp);
    __sanitizer_finish_switch_fiber(fake, &scheduler_stack, &scheduler_stack_bytes);
#else
    (void)exiting;
    ThreadState* self = me();
    emu_switch(&self->sp, *self->scheduler_sp);
#endif
}

void land(const PendingCopy& c) { memcpy(c.dst, c.bytes, 16); }

extern "C" void emu_fiber_main() {
#if defined(__SANITIZE_ADDRESS__)
    __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack, &scheduler_stack_bytes);
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
// the whole block if every live thread waits at __syncthreads. False: nothing can move.
bool release(size_t count) {
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

std::string run_block(size_t count) {
    std::vector<ThreadState>& threads = emu::threads;  // one thread-local lookup, not one per use
    for (size_t i = 0; i < count; i++) {
        ThreadState& t = threads[i];
        t.idx = dim3{(unsigned)(i % block_dim.x), (unsigned)(i / block_dim.x % block_dim.y),
                     (unsigned)(i / ((size_t)block_dim.x * block_dim.y))};
        t.lane = (int)(i % 32);
        t.warp = (int)(i / 32);
        t.scheduler_sp = &scheduler_sp;
        t.warp_state = &warps[i / 32];
        t.state = State::Runnable;
        t.copies.clear();
        t.mmas.clear();
        t.mma_waits = 0;
        char* top = static_cast<char*>(stack_top(i, &t));  // maps the stack on first use
        // The last frames of the fiber that exited from this stack (emu_fiber_main and the
        // switch away, which never return) keep their redzones poisoned.
        ASAN_UNPOISON_MEMORY_REGION(top - EXIT_FRAMES_BYTES, EXIT_FRAMES_BYTES);
        t.sp = fresh_stack(top);
    }
    for (WarpState& w : warps) {
        w.generation = w.claimed = w.mma_waits = 0;
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
    void** sp = &scheduler_sp;
    for (;;) {
        for (size_t n = 0; n < count; n++) {
            const size_t i = reverse ? count - 1 - n : n;
            ThreadState& t = threads[i];
            if (t.state != State::Runnable) continue;
            switch_to_fiber(i, t, sp);
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

void async_copy16(void* dst, const void* src, bool valid) {
    PendingCopy c{static_cast<unsigned char*>(dst), {}};
    if (valid) memcpy(c.bytes, src, 16);
    memset(dst, POISON, 16);  // what a reader before the wait may find
    me()->copies.open.push_back(c);
}

void async_commit() { me()->copies.commit(); }

void async_wait(int pending) { me()->copies.wait(pending, land); }

// Lane 0 of each warp records a digest of the shared operands at the issue; compared at the wait.
static uint64_t issue_digest(int n, uint64_t a, bool a_shared, uint64_t b, bool b_mn_major) {
    if (lane_id() != 0) return 0;
    static thread_local WgmmaOperands operands;  // read and digested without a switch between
    read_wgmma_operands(operands, n, a, a_shared, b, b_mn_major);
    return wgmma_operand_digest(operands);
}

void wgmma_issue(float* d, int n, uint64_t a, uint64_t b, bool b_mn_major) {
    const uint64_t digest = issue_digest(n, a, true, b, b_mn_major);
    me()->mmas.open.push_back(PendingMma{d, n, a, b, b_mn_major, nullptr, digest});
}

void wgmma_issue_rs(float* d, int n, const uint32_t* a_regs, uint64_t b, bool b_mn_major) {
    const uint64_t digest = issue_digest(n, 0, false, b, b_mn_major);
    me()->mmas.open.push_back(PendingMma{d, n, 0, b, b_mn_major, a_regs, digest});
}

void wgmma_commit() { me()->mmas.commit(); }

void wgmma_wait(int pending) {
    ThreadState* self = me();
    WarpState& w = *self->warp_state;
    // The warp waits as one on the device (.sync.aligned): the first of its lanes to arrive
    // reads the operands of every wgmma the wait completes, before any lane computes (a lane
    // with A in registers meets the others once per wgmma), and all lanes compute from them.
    if (w.mma_waits == self->mma_waits) {
        w.mma_waits++;
        w.mma_count = 0;
        self->mmas.for_each_due(pending, [&w](const PendingMma& m) {
            if (w.mma_count == w.mma_operands.size()) w.mma_operands.emplace_back();
            read_wgmma_operands(w.mma_operands[w.mma_count++], m.n, m.a, m.a_regs == nullptr, m.b, m.b_mn_major);
        });
    }
    self->mma_waits++;
    size_t i = 0;
    self->mmas.wait(pending, [&](const PendingMma& m) {
        const WgmmaOperands* o = i < w.mma_count ? &w.mma_operands[i++] : nullptr;
        if (o == nullptr || o->n != m.n || o->a != m.a || o->b != m.b || o->a_shared != (m.a_regs == nullptr) ||
            o->b_mn_major != m.b_mn_major)
            kernel_error("the lanes of a warp complete different wgmmas at one wgmma.wait_group");
        if (self->lane == 0 && wgmma_operand_digest(*o) != m.digest)
            kernel_error("a wgmma's shared-memory operands differ between its issue and its wait: changed while it ran, "
                         "or read before the copies that fill them landed");
        if (m.a_regs != nullptr) wgmma_compute_rs(m.d, m.a_regs, *o);
        else wgmma_compute(m.d, *o);
    });
    if (i != w.mma_count) kernel_error("the lanes of a warp complete different wgmmas at one wgmma.wait_group");
    syncwarp();
}

void named_barrier(int id, int count, bool wait) {
    if (id < 1 || id > 15) kernel_error("named barrier id outside 1 … 15 (0 is __syncthreads)");
    if (count <= 0 || count % 32 != 0 || count > (int)named[id].threads.size())
        kernel_error("named barrier count not a multiple of 32 within the block");
    NamedBarrier& b = named[id];
    if (b.arrived == 0) b.count = count;
    else if (b.count != count) kernel_error("arrivals at one named barrier with different counts");
    const size_t self = me() - threads.data();
    if (b.threads[self]) kernel_error("a thread arrives twice at a named barrier before it completes");
    b.threads[self] = true;
    if (++b.arrived == b.count) {
        b.arrived = 0;
        std::fill(b.threads.begin(), b.threads.end(), false);
        for (ThreadState& t : threads)
            if (t.state == State::AtNamedBarrier && t.barrier_id == id) t.state = State::Runnable;
        return;
    }
    if (!wait) return;
    me()->state = State::AtNamedBarrier;
    me()->barrier_id = id;
    back_to_scheduler();
}

void mbarrier_init(const void* bar, int count) {
    if (count <= 0) kernel_error("mbarrier initialised with no arrivals");
    mbarriers[bar] = Mbarrier{count, 0, 0, 0, false, {}};
}

static Mbarrier& find_mbarrier(const void* bar) {
    auto it = mbarriers.find(bar);
    if (it == mbarriers.end()) kernel_error("an mbarrier used before mbarrier.init");
    return it->second;
}

// Completes the phase of `m` whose arrivals are all in: its copies land.
static void complete_phase(Mbarrier& m) {
    for (const PendingCopy& c : m.copies) land(c);
    m.copies.clear();
    m.complete = false;
    m.arrived = 0;
    m.phase++;
}

// Marks the phase of `m` complete once its arrivals and expected bytes are all in, and frees
// its waiters.
static void try_complete(Mbarrier& m, const void* bar) {
    if (m.arrived < m.count || m.expected_bytes != 0) return;
    m.complete = true;
    for (ThreadState& t : threads)
        if (t.state == State::AtMbarrier && t.mbarrier == bar) t.state = State::Runnable;
}

void mbarrier_arrive_copies(const void* bar) {
    Mbarrier& m = find_mbarrier(bar);
    if (m.complete) complete_phase(m);
    // The device tracks the thread's committed copies too; the kernels wait for those with
    // cp.async.wait_group, which lands them there.
    std::vector<PendingCopy>& open = me()->copies.open;
    m.copies.insert(m.copies.end(), open.begin(), open.end());
    open.clear();
    ++m.arrived;
    try_complete(m, bar);
}

void mbarrier_arrive_expect_bytes(const void* bar, unsigned bytes) {
    Mbarrier& m = find_mbarrier(bar);
    if (m.complete) complete_phase(m);
    if (m.arrived >= m.count) kernel_error("an arrival at an mbarrier whose phase has all its arrivals");
    m.expected_bytes += bytes;
    ++m.arrived;
    try_complete(m, bar);
}

void bulk_copy_box(void* dst, const void* map, int col, int row, const void* bar) {
    TensorMapFields f;
    memcpy(&f, map, sizeof f);
    if (f.magic != TENSOR_MAP_MAGIC) kernel_error("a bulk tensor copy through something not made by cuTensorMapEncodeTiled");
    Mbarrier& m = find_mbarrier(bar);
    if (m.complete) kernel_error("a bulk tensor copy into an mbarrier phase that expects no more bytes");
    const size_t line = (size_t)f.box[0] * f.element_bytes;
    const uint32_t at = shared_offset(dst);
    if (f.swizzle_bytes == 128 && at % 1024 != 0)
        kernel_error("a bulk tensor copy in the 128-byte swizzle to shared memory not aligned to 1024 bytes");
    if (at % 128 != 0) kernel_error("a bulk tensor copy to shared memory not aligned to 128 bytes");
    shared_offset(static_cast<unsigned char*>(dst) + line * f.box[1] - 1);  // the box ends in shared memory
    for (uint32_t r = 0; r < f.box[1]; r++)
        for (size_t c = 0; c < line; c += 16) {
            // The 128-byte swizzle: address bits 4 … 6 (the 16-byte chunk of a 128-byte line)
            // XOR bits 7 … 9 (the line of an 8-line atom).
            uint32_t a = at + (uint32_t)(r * line + c);
            if (f.swizzle_bytes == 128) a ^= ((a >> 7) & 7) << 4;
            PendingCopy p{static_cast<unsigned char*>(dst) + (a - at), {}};
            const uint64_t g_row = (uint64_t)row + r, g_col = (uint64_t)col * f.element_bytes + c;
            // Out-of-bounds elements are zeros (the map's fill: none, as the kernels ask).
            if (row >= 0 && col >= 0 && g_row < f.dims[1] && g_col < f.dims[0] * f.element_bytes)
                memcpy(p.bytes, f.base + g_row * f.row_stride + g_col, 16);
            memset(p.dst, POISON, 16);
            m.copies.push_back(p);
        }
    m.expected_bytes -= (long long)(line * f.box[1]);
    if (m.expected_bytes < 0) kernel_error("bulk tensor copies land more bytes than their mbarrier phase expects");
    try_complete(m, bar);
}

void mbarrier_wait(const void* bar, int parity) {
    for (;;) {
        Mbarrier& m = find_mbarrier(bar);
        if (m.complete && (m.phase & 1) == (unsigned)(parity & 1)) complete_phase(m);
        if ((m.phase & 1) != (unsigned)(parity & 1)) return;
        me()->state = State::AtMbarrier;
        me()->mbarrier = bar;
        back_to_scheduler();
    }
}

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
