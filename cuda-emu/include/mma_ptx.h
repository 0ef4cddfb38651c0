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
}  // namespace ptx

inline void mma_bf16_16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    const uint32_t b[2] = {b0, b1};
    const LaneEntry* lanes = warp_exchange(0, a, b);
    const int lane = lane_id(), g = lane / 4, t = lane % 4;
    // A(row, k) sits in lane (row % 8)·4 + (k % 8)/2, register (row ≥ 8) + 2·(k ≥ 8);
    // B(k, n) in lane n·4 + (k % 8)/2, register (k ≥ 8).
    auto a_at = [&](int row, int k) {
        const uint32_t* regs = static_cast<const uint32_t*>(lanes[(row % 8) * 4 + (k % 8) / 2].first);
        return ptx::element(regs[(row >= 8) + 2 * (k >= 8)], k % 2);
    };
    auto b_at = [&](int k, int n) {
        const uint32_t* regs = static_cast<const uint32_t*>(lanes[n * 4 + (k % 8) / 2].second);
        return ptx::element(regs[k >= 8], k % 2);
    };
    float out[4];
    for (int e = 0; e < 4; e++) {
        const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
        float sum = d[e];
        for (int k = 0; k < 16; k++) sum += a_at(row, k) * b_at(k, col);
        out[e] = sum;
    }
    syncwarp();  // every lane has read the operands before any lane may change them
    for (int e = 0; e < 4; e++) d[e] = out[e];
}

inline void ldmatrix_x4(uint32_t r[4], const __nv_bfloat16* row, bool trans) {
    const LaneEntry* lanes = warp_exchange(0, row);
    const int lane = lane_id(), g = lane / 4, t = lane % 4;
    auto at = [&](int m, int i, int j) { return static_cast<const __nv_bfloat16*>(lanes[m * 8 + i].first)[j]; };
    uint32_t out[4];
    for (int m = 0; m < 4; m++)
        out[m] = trans ? ptx::pack(at(m, 2 * t, g), at(m, 2 * t + 1, g)) : ptx::pack(at(m, g, 2 * t), at(m, g, 2 * t + 1));
    syncwarp();  // as one instruction: no lane writes the rows before every lane has read them
    for (int m = 0; m < 4; m++) r[m] = out[m];
}

}  // namespace emu
