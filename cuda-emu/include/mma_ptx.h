// CPU versions of the PTX primitives of kernels/mma.cuh, with the device's register layouts:
// every lane of the warp takes part (a warp exchange), as in the warp-wide instructions.
#pragma once
#include "cuda_emu.h"
#include "cuda_bf16.h"

namespace emu {
namespace ptx {
inline float low(uint32_t pair) {
    uint16_t bits = pair & 0xffff;
    __nv_bfloat16 x;
    memcpy(&x, &bits, 2);
    return __bfloat162float(x);
}
inline float high(uint32_t pair) { return low(pair >> 16); }
inline float element(uint32_t pair, int half) { return half ? high(pair) : low(pair); }
inline uint32_t pack(const __nv_bfloat16& lo, const __nv_bfloat16& hi) {
    uint16_t a, b;
    memcpy(&a, &lo, 2);
    memcpy(&b, &hi, 2);
    return (uint32_t)a | ((uint32_t)b << 16);
}

// The value of an e4m3fn byte (S.1111.111 is NaN).
inline float e4m3(uint32_t byte) {
    const int e = (byte >> 3) & 0xf, m = byte & 7;
    const float v = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + m / 8.0f, e - 7);
    return (byte & 0x7f) == 0x7f ? NAN : (byte & 0x80 ? -v : v);
}
}  // namespace ptx

// out = C + A·B for a warp's m16n8kK, from the values gathered out of its lanes' registers:
// each value summed as the device's lane would, its C then k = 0 … K − 1. Not instrumented by
// AddressSanitizer, whose checks would cost more than the products: it touches only the
// caller's arrays, which the gathering (instrumented) filled.
template <int K>
__attribute__((no_sanitize_address)) inline void mma_products(float (&out)[32][4], const float (&c)[32][4],
                                                              const float (&a)[16][K], const float (&b)[K][8]) {
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane / 4, t = lane % 4;
        for (int e = 0; e < 4; e++) {
            const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
            float sum = c[lane][e];
            for (int k = 0; k < K; k++) sum += a[row][k] * b[k][col];
            out[lane][e] = sum;
        }
    }
}

// Hands every lane its D (the first lane's job, after the products).
inline void scatter_d(const LaneEntry* lanes, const float (&out)[32][4]) {
    for (int lane = 0; lane < 32; lane++)
        for (int e = 0; e < 4; e++) reinterpret_cast<float*>(lanes[lane].value)[e] = out[lane][e];
}

inline void gather_c(const LaneEntry* lanes, float (&c)[32][4]) {
    for (int lane = 0; lane < 32; lane++)
        for (int e = 0; e < 4; e++) c[lane][e] = reinterpret_cast<const float*>(lanes[lane].value)[e];
}

// The first lane out of the exchange computes the whole warp's D (claim_warp_op).
inline void mma_bf16_16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    const uint32_t b[2] = {b0, b1};
    const LaneEntry* lanes = warp_exchange(reinterpret_cast<uintptr_t>(d), a, b);
    if (!claim_warp_op()) return;
    // A(row, k) sits in lane (row % 8)·4 + (k % 8)/2, register (row ≥ 8) + 2·(k ≥ 8);
    // B(k, n) in lane n·4 + (k % 8)/2, register (k ≥ 8).
    float a_f[16][16], b_f[16][8], c_f[32][4], out[32][4];
    for (int row = 0; row < 16; row++)
        for (int k = 0; k < 16; k++) {
            const uint32_t* regs = static_cast<const uint32_t*>(lanes[(row % 8) * 4 + (k % 8) / 2].first);
            a_f[row][k] = ptx::element(regs[(row >= 8) + 2 * (k >= 8)], k % 2);
        }
    for (int k = 0; k < 16; k++)
        for (int n = 0; n < 8; n++) {
            const uint32_t* regs = static_cast<const uint32_t*>(lanes[n * 4 + (k % 8) / 2].second);
            b_f[k][n] = ptx::element(regs[k >= 8], k % 2);
        }
    gather_c(lanes, c_f);
    mma_products<16>(out, c_f, a_f, b_f);
    scatter_d(lanes, out);
}

// As mma_bf16_16816, for e4m3 bytes (4 per register along k): the products of two e4m3 values
// are exact in f32, summed in k order as above.
inline void mma_e4m3_16832(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    const uint32_t b[2] = {b0, b1};
    const LaneEntry* lanes = warp_exchange(reinterpret_cast<uintptr_t>(d), a, b);
    if (!claim_warp_op()) return;
    // A(row, k) sits in lane (row % 8)·4 + (k % 16)/4, register (row ≥ 8) + 2·(k ≥ 16), byte k % 4;
    // B(k, n) in lane n·4 + (k % 16)/4, register (k ≥ 16), byte k % 4.
    float a_f[16][32], b_f[32][8], c_f[32][4], out[32][4];
    for (int row = 0; row < 16; row++)
        for (int k = 0; k < 32; k++) {
            const uint32_t* regs = static_cast<const uint32_t*>(lanes[(row % 8) * 4 + (k % 16) / 4].first);
            a_f[row][k] = ptx::e4m3((regs[(row >= 8) + 2 * (k >= 16)] >> (8 * (k % 4))) & 0xff);
        }
    for (int k = 0; k < 32; k++)
        for (int n = 0; n < 8; n++) {
            const uint32_t* regs = static_cast<const uint32_t*>(lanes[n * 4 + (k % 16) / 4].second);
            b_f[k][n] = ptx::e4m3((regs[k >= 16] >> (8 * (k % 4))) & 0xff);
        }
    gather_c(lanes, c_f);
    mma_products<32>(out, c_f, a_f, b_f);
    scatter_d(lanes, out);
}

// As one instruction: the first lane out of the exchange gathers every lane's registers while
// the others wait, so no lane writes the rows before every lane's have been read.
inline void ldmatrix_x4(uint32_t r[4], const __nv_bfloat16* row, bool trans) {
    const LaneEntry* lanes = warp_exchange(reinterpret_cast<uintptr_t>(r), row);
    if (!claim_warp_op()) return;
    auto at = [&](int m, int i, int j) { return static_cast<const __nv_bfloat16*>(lanes[m * 8 + i].first)[j]; };
    uint32_t out[32][4];
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane / 4, t = lane % 4;
        for (int m = 0; m < 4; m++)
            out[lane][m] =
                trans ? ptx::pack(at(m, 2 * t, g), at(m, 2 * t + 1, g)) : ptx::pack(at(m, g, 2 * t), at(m, g, 2 * t + 1));
    }
    for (int lane = 0; lane < 32; lane++)
        for (int m = 0; m < 4; m++) reinterpret_cast<uint32_t*>(lanes[lane].value)[m] = out[lane][m];
}

}  // namespace emu
