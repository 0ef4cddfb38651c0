// CPU versions of the wgmma primitives of kernels/wgmma.cuh: each thread computes its own
// accumulators from the shared-memory operands its descriptors name, at the wgmma_wait that
// covers the operation (async.cpp keeps the issued ones until then: nothing may touch the
// operands or read the accumulators before it), as its warp read them there.
#pragma once
#include "cuda_emu.h"
#include "cuda_bf16.h"
#include "mma_ptx.h"
#include <stddef.h>

namespace emu {
// Element (mn, k) of the operand of `desc`, 128-byte swizzle (kernels/wgmma.cuh): atoms of 8
// rows × 128 bytes whose 16-byte chunk c of row r sits at c ^ r; a row holds 64 consecutive k
// (K-major: atoms `stride` bytes apart along mn) or 64 consecutive mn (MN-major: atoms
// `leading` bytes apart along mn and `stride` bytes apart along k); with `fp8`, e4m3 bytes, 128
// consecutive k per row (K-major only, as on the device). `shared`: the CTA's shared memory
// (dynamic_shared(), looked up once per operation: it is thread-local).
inline float wgmma_operand(const char* shared, uint64_t desc, int mn, int k, bool mn_major, bool fp8 = false) {
    const size_t start = (desc & 0x3fff) << 4, leading = ((desc >> 16) & 0x3fff) << 4,
                 stride = ((desc >> 32) & 0x3fff) << 4;
    if ((desc >> 46) != (1ull << 16)) kernel_error("a wgmma descriptor without the 128-byte swizzle or with a base offset");
    if (fp8 && mn_major) kernel_error("an MN-major e4m3 wgmma operand (8-bit operands are K-major)");
    const size_t linear = mn_major ? start + (mn / 64) * leading + (mn % 64) * 2 + (k / 8) * stride + (k % 8) * 128
                                   : start + (mn / 8) * stride + (mn % 8) * 128 + k * (fp8 ? 1 : 2);
    const size_t at = linear ^ (((linear >> 7) & 7) << 4);
    if (at + 2 > (1u << 18)) kernel_error("a wgmma operand past the CTA's shared memory");
    if (fp8) return ptx::e4m3((unsigned char)shared[at]);
    __nv_bfloat16 x;
    memcpy(&x, shared + at, 2);
    return __bfloat162float(x);
}

// The shared-memory operands of one wgmma as a warp reads them, in floats: its 16 rows of A
// (where A is in shared memory) and the whole of B, column by column, over its k (16 for bf16,
// 32 for e4m3). Read once per warp at the wait (async.cpp): every lane computes its
// accumulators from them.
struct WgmmaOperands {
    int n;
    uint64_t a, b;  // the descriptors (a: 0 where A is in registers)
    bool a_shared, b_mn_major, fp8;
    int k;
    float a_rows[16][32];
    float b_cols[256][32];
};

inline void read_wgmma_operands(WgmmaOperands& o, int n, uint64_t a, bool a_shared, uint64_t b, bool b_mn_major,
                                bool fp8 = false) {
    if (n <= 0 || n > 256 || n % 8 != 0) kernel_error("a wgmma with N outside 8, 16, ... 256");
    if (fp8 && !a_shared) kernel_error("an e4m3 wgmma with A in registers (not emulated)");
    const int kk = fp8 ? 32 : 16;
    o.n = n, o.a = a, o.b = b, o.a_shared = a_shared, o.b_mn_major = b_mn_major, o.fp8 = fp8, o.k = kk;
    const int warp = (thread_idx().x / 32) % 4;
    const char* shared = static_cast<const char*>(dynamic_shared());
    if (a_shared)
        for (int r = 0; r < 16; r++)
            for (int k = 0; k < kk; k++) o.a_rows[r][k] = wgmma_operand(shared, a, 16 * warp + r, k, false, fp8);
    for (int col = 0; col < n; col++)
        for (int k = 0; k < kk; k++) o.b_cols[col][k] = wgmma_operand(shared, b, col, k, b_mn_major, fp8);
}

// A digest of a wgmma's shared-memory operands as a warp reads them. Taken at the issue and
// again at the wait (async.cpp), where the two must agree: an operand changed in between, or
// read at the issue before the copies that fill it had landed (poison or stale then, data at
// the wait), shows whichever order the emulator happened to run the threads in.
inline uint64_t wgmma_operand_digest(const WgmmaOperands& o) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    const auto mix = [&h](float x) {
        uint32_t bits;
        memcpy(&bits, &x, 4);
        h = (h ^ bits) * 1099511628211ull;
    };
    if (o.a_shared)
        for (int r = 0; r < 16; r++)
            for (int k = 0; k < o.k; k++) mix(o.a_rows[r][k]);
    for (int col = 0; col < o.n; col++)
        for (int k = 0; k < o.k; k++) mix(o.b_cols[col][k]);
    return h;
}

// d += A·B[k×n] for this thread's accumulators, from a_rows: its two rows of A (g and g + 8 of
// its warp's 16) over the wgmma's k (products of e4m3 values are exact in f32). Not instrumented by AddressSanitizer, whose checks would cost more
// than the products: it reads the warp's copy of the operands (read_wgmma_operands checks the
// reads of shared memory) and writes the thread's own accumulators.
__attribute__((no_sanitize_address)) inline void wgmma_accumulate(float* d, const float (&a_rows)[2][32],
                                                                  const WgmmaOperands& o) {
    const int t = lane_id() % 4;
    for (int j = 0; j < o.n / 8; j++)
        for (int e = 0; e < 4; e++) {
            const float* b = o.b_cols[8 * j + 2 * t + e % 2];
            float sum = d[4 * j + e];
            for (int k = 0; k < o.k; k++) sum += a_rows[e / 2][k] * b[k];
            d[4 * j + e] = sum;
        }
}

// d += A[64×k]·B[k×n] for this thread's accumulators (A K-major in shared memory).
inline void wgmma_compute(float* d, const WgmmaOperands& o) {
    const int g = lane_id() / 4;
    float a_rows[2][32];
    for (int half = 0; half < 2; half++)
        for (int k = 0; k < o.k; k++) a_rows[half][k] = o.a_rows[g + 8 * half][k];
    wgmma_accumulate(d, a_rows, o);
}

// The same with A in registers, in mma.sync's A layout for the warp's 16 rows (mma_ptx.h): lane
// 4·(r % 8) + (k % 8) / 2 holds row r, column k in register (r ≥ 8) + 2·(k ≥ 8). Every lane has
// read the warp's fragments before any lane goes on (and may change them).
inline void wgmma_compute_rs(float* d, const uint32_t* a_regs, const WgmmaOperands& o) {
    const LaneEntry* lanes = warp_exchange(0, a_regs);
    const int g = lane_id() / 4;
    float a_rows[2][32];
    for (int half = 0; half < 2; half++)
        for (int k = 0; k < 16; k++) {
            const uint32_t* regs = static_cast<const uint32_t*>(lanes[4 * g + (k % 8) / 2].first);
            a_rows[half][k] = ptx::element(regs[half + 2 * (k >= 8)], k % 2);
        }
    syncwarp();
    wgmma_accumulate(d, a_rows, o);
}
}  // namespace emu
