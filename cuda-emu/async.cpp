// The operations by which a block's threads wait for one another in part, or for work in
// flight: cp.async and its groups, wgmma (computed at its wait), named barriers, mbarriers and
// the tensor memory accelerator's bulk copies that complete them.
#include "block.h"
#include <algorithm>
#include <cstring>

namespace emu {
void async_copy16(void* dst, const void* src, bool valid) {
    PendingCopy c{static_cast<unsigned char*>(dst), {}};
    if (valid) memcpy(c.bytes, src, 16);
    memset(dst, POISON, 16);  // what a reader before the wait may find
    me()->copies.open.push_back(c);
}

void async_commit() { me()->copies.commit(); }

void async_wait(int pending) { me()->copies.wait(pending, land); }

// Lane 0 of each warp records a digest of the shared operands at the issue; compared at the wait.
static uint64_t issue_digest(int n, uint64_t a, bool a_shared, uint64_t b, bool b_mn_major, bool fp8) {
    if (lane_id() != 0) return 0;
    static thread_local WgmmaOperands operands;  // read and digested without a switch between
    read_wgmma_operands(operands, n, a, a_shared, b, b_mn_major, fp8);
    return wgmma_operand_digest(operands);
}

void wgmma_issue(float* d, int n, uint64_t a, uint64_t b, bool b_mn_major) {
    const uint64_t digest = issue_digest(n, a, true, b, b_mn_major, false);
    me()->mmas.open.push_back(PendingMma{d, n, a, b, b_mn_major, nullptr, digest, false, false});
}

void wgmma_issue_e4m3(float* d, int n, uint64_t a, uint64_t b, bool accumulate) {
    const uint64_t digest = issue_digest(n, a, true, b, false, true);
    me()->mmas.open.push_back(PendingMma{d, n, a, b, false, nullptr, digest, true, !accumulate});
}

void wgmma_issue_rs(float* d, int n, const uint32_t* a_regs, uint64_t b, bool b_mn_major) {
    const uint64_t digest = issue_digest(n, 0, false, b, b_mn_major, false);
    me()->mmas.open.push_back(PendingMma{d, n, 0, b, b_mn_major, a_regs, digest, false, false});
}

void wgmma_commit() { me()->mmas.commit(); }

void wgmma_wait(int pending) {
    ThreadState* self = me();
    WarpState& w = *self->warp_state;
    // The warp waits as one on the device (.sync.aligned): once every lane is here, the first to
    // go on reads the operands of every wgmma the wait completes, before any lane computes (a
    // lane with A in registers meets the others once per wgmma), and all lanes compute from them.
    warp_exchange(0);
    if (claim_warp_op()) {
        w.mma_count = 0;
        self->mmas.for_each_due(pending, [&w](const PendingMma& m) {
            if (w.mma_count == w.mma_operands.size()) w.mma_operands.emplace_back();
            read_wgmma_operands(w.mma_operands[w.mma_count++], m.n, m.a, m.a_regs == nullptr, m.b, m.b_mn_major, m.fp8);
        });
    }
    const char* lanes_differ = "the lanes of a warp complete different wgmmas at one wgmma.wait_group";
    size_t i = 0;
    self->mmas.wait(pending, [&](const PendingMma& m) {
        const WgmmaOperands* o = i < w.mma_count ? &w.mma_operands[i++] : nullptr;
        if (o == nullptr || o->n != m.n || o->a != m.a || o->b != m.b || o->a_shared != (m.a_regs == nullptr) ||
            o->b_mn_major != m.b_mn_major || o->fp8 != m.fp8)
            kernel_error(lanes_differ);
        if (self->lane == 0 && wgmma_operand_digest(*o) != m.digest)
            kernel_error("a wgmma's shared-memory operands differ between its issue and its wait: changed while it ran, "
                         "or read before the copies that fill them landed");
        if (m.zero_d)  // scale-d 0: the products replace the accumulators (n / 2 per thread)
            for (int i = 0; i < m.n / 2; i++) m.d[i] = 0.0f;
        if (m.a_regs != nullptr) wgmma_compute_rs(m.d, m.a_regs, *o);
        else wgmma_compute(m.d, *o);
    });
    if (i != w.mma_count) kernel_error(lanes_differ);
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
}  // namespace emu
