// bfloat16 for the emulator: storage and the conversions the kernels use, rounding like the
// device (round to nearest even, NaN kept quiet).
#pragma once
#include "cuda_emu.h"

struct __nv_bfloat16 {
    uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 x) { return __uint_as_float((uint32_t)x.bits << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    const uint32_t u = __float_as_uint(f);
    __nv_bfloat16 out;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        out.bits = (uint16_t)((u >> 16) | 0x40);
    } else {
        out.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return out;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
