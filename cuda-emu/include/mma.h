// WMMA for the emulator (16×16×16 tiles, bf16 inputs, f32 accumulators). As on the device a
// fragment is spread over the warp: lane l holds elements 8l..8l+7 of the tile in row-major
// order, so every lane must take part, and mma_sync gathers the operands from all lanes. The
// pointer and leading-dimension rules of the CUDA documentation are checked: a violation is
// undefined behaviour on the device and an error here.
#pragma once
#include <type_traits>
#include "cuda_bf16.h"

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator knows 16x16x16 tiles only");
    enum { num_elements = 8 };
    T x[8];
};

namespace detail {
inline float value(float x) { return x; }
inline float value(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> void store(T& dst, float x);
template <> inline void store<float>(float& dst, float x) { dst = x; }
template <> inline void store<__nv_bfloat16>(__nv_bfloat16& dst, float x) { dst = __float2bfloat16_rn(x); }

template <typename T> void check_pointer(const T* p, unsigned ldm) {
    if ((uintptr_t)p % 32 != 0) emu::kernel_error("WMMA pointer not 256-bit aligned");
    if (ldm * sizeof(T) % 16 != 0) emu::kernel_error("WMMA leading dimension not a multiple of 16 bytes");
}
// Offset of tile element (row, col) in memory laid out row- or column-major.
inline size_t offset(int row, int col, unsigned ldm, bool row_major) {
    return row_major ? (size_t)row * ldm + col : (size_t)col * ldm + row;
}
template <typename Frag, typename T> void load(Frag& f, const T* p, unsigned ldm, bool row_major) {
    check_pointer(p, ldm);
    const int lane = emu::lane_id();
    for (int e = 0; e < 8; e++) {
        const int idx = lane * 8 + e;
        f.x[e] = p[offset(idx / 16, idx % 16, ldm, row_major)];
    }
}
}  // namespace detail

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, T v) {
    for (int e = 0; e < 8; e++) f.x[e] = v;
}

// matrix_a or matrix_b, row- or column-major.
template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
    static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>, "an operand layout");
    detail::load(f, p, ldm, std::is_same_v<Layout, row_major>);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm,
                             layout_t layout) {
    detail::load(f, p, ldm, layout == mem_row_major);
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
    detail::check_pointer(p, ldm);
    const int lane = emu::lane_id();
    for (int e = 0; e < 8; e++) {
        const int idx = lane * 8 + e;
        p[detail::offset(idx / 16, idx % 16, ldm, layout == mem_row_major)] = f.x[e];
    }
}

template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
    typedef fragment<matrix_a, 16, 16, 16, T, LayoutA> A;
    typedef fragment<matrix_b, 16, 16, 16, T, LayoutB> B;
    const emu::LaneEntry* lanes = emu::warp_exchange(0, &a, &b);
    // This lane's outputs are row lane/2, columns 8·(lane%2) … +7: one row of A (held by lanes
    // 2·row and 2·row+1) and eight columns of B (lane 2k + lane%2 holds row k's part of them).
    const int lane = emu::lane_id(), row = lane / 2, half = lane % 2;
    float a_row[16];
    for (int k = 0; k < 16; k++)
        a_row[k] = detail::value(static_cast<const A*>(lanes[row * 2 + k / 8].first)->x[k % 8]);
    float out[8];
    for (int e = 0; e < 8; e++) out[e] = c.x[e];
    for (int k = 0; k < 16; k++) {
        const B& b_part = *static_cast<const B*>(lanes[k * 2 + half].second);
        for (int e = 0; e < 8; e++) out[e] += a_row[k] * detail::value(b_part.x[e]);
    }
    emu::syncwarp();  // every lane has read the operands before any lane may change them
    for (int e = 0; e < 8; e++) d.x[e] = out[e];
}
}  // namespace wmma
}  // namespace nvcuda
