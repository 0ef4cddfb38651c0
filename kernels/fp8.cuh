// FP8 cache rows (src/kv/fp8_layout.rs, which defines the quantizer; this mirrors it bit for bit):
// `codes` float8_e4m3fn values, one f32 scale per `group` of them from byte `scales_at`, then the
// rest of the row's values as bf16 from byte `tail_at` (MLA: the RoPE part; MHA: none). Value c
// of a row is code[c]·scale[c / group] for c < codes, else tail[c − codes].
// docs/kernels.md, "FP8 cache rows on the GPU".
#pragma once
#include <stdint.h>
#include "common.cuh"
#include "ptx/mma.cuh"

// Mirrored by `Fp8RowFormat` in src/backend/cuda/attention/params.rs.
struct Fp8RowFormat {
    int row_bytes, codes, group, scales_at, tail_at;
};
static_assert(sizeof(Fp8RowFormat) == 20, "mirrored in params.rs");

#define E4M3_MAX 448.0f

// The value of an e4m3fn byte, exactly: normals rebuilt as f32 bits, subnormals (m·2⁻⁹) from the
// integer (no denormal operand, so flush-to-zero cannot touch it); S.1111.111 is NaN.
__device__ __forceinline__ float e4m3_to_f32(uint32_t b) {
    const uint32_t e = (b >> 3) & 0xf, m = b & 7, sign = (b & 0x80) << 24;
    const float normal = __uint_as_float(sign | ((e + 120) << 23) | (m << 20));
    const float subnormal = __uint_as_float(sign | __float_as_uint((float)m * 0.001953125f));
    const float v = e == 0 ? subnormal : normal;
    return (b & 0x7f) == 0x7f ? __uint_as_float(0x7fc00000u) : v;
}

// The e4m3fn byte nearest x (ties to the even mantissa), saturating at ±448; NaN → 0x7f. A value
// below 2⁻⁶ is a multiple of 2⁻⁹ (subnormal); above, 3 mantissa bits at its own exponent — one
// formula, as the byte's value rises continuously across the two.
__device__ __forceinline__ uint32_t f32_to_e4m3(float x) {
    if (x != x) return 0x7f;
    const uint32_t sign = signbit(x) ? 0x80u : 0u;
    const float a = fminf(fabsf(x), E4M3_MAX);
    int k;
    frexpf(a, &k);  // a = m·2^k, m in [0.5, 1)
    const int e = a < 0.015625f ? -6 : k - 1;
    const uint32_t code = (uint32_t)((e + 6) * 8) + (uint32_t)rintf(ldexpf(a, 3 - e));
    return sign | min(code, 0x7eu);
}

// The scale of a group whose largest magnitude is amax: amax / 448 (at least 1e-4) rounded up to
// a power of two, so that dividing by it is exact and every quotient fits e4m3.
__device__ __forceinline__ float fp8_group_scale(float amax) {
    const float s = fmaxf(amax / E4M3_MAX, 1e-4f);
    if (!isfinite(s)) return s;
    int k;
    const float m = frexpf(s, &k);  // s = m·2^k
    return m == 0.5f ? s : ldexpf(1.0f, k);
}

__device__ __forceinline__ float fp8_scale(const uint8_t* row, const Fp8RowFormat& f, int c) {
    return *reinterpret_cast<const float*>(row + f.scales_at + 4 * (c / f.group));
}

// Value c of an FP8 row.
__device__ __forceinline__ float fp8_value(const uint8_t* row, const Fp8RowFormat& f, int c) {
    if (c < f.codes) return e4m3_to_f32(row[c]) * fp8_scale(row, f, c);
    return to_f32(*reinterpret_cast<const bf16*>(row + f.tail_at + 2 * (c - f.codes)));
}

// Values c … c + 7 of an FP8 row as 8 bf16 (16 bytes), exactly (a code times a power of two keeps
// its 4 significant bits). The host serves only formats where such a piece is one aligned load:
// c, codes and group multiples of 8, tail_at and row_bytes of 16 (kernel_choice.rs).
__device__ __forceinline__ uint4 fp8_piece(const uint8_t* row, const Fp8RowFormat& f, int c) {
    if (c >= f.codes) {
        const uint8_t* tail = row + f.tail_at + 2 * (c - f.codes);
        MLA_ASSERT_ALIGNED(tail, 16);
        return *reinterpret_cast<const uint4*>(tail);
    }
    MLA_ASSERT_ALIGNED(row + c, 8);
    const uint2 codes = *reinterpret_cast<const uint2*>(row + c);
    const float scale = fp8_scale(row, f, c);
    uint32_t out[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const uint32_t word = i < 2 ? codes.x : codes.y, shift = (i & 1) * 16;
        out[i] = pack_bf16(from_f32<bf16>(e4m3_to_f32((word >> shift) & 0xff) * scale),
                           from_f32<bf16>(e4m3_to_f32((word >> (shift + 8)) & 0xff) * scale));
    }
    return make_uint4(out[0], out[1], out[2], out[3]);
}
