// Warp-level tensor-core and asynchronous-copy primitives of sm_80+ as functions with the PTX
// register layouts (mma.sync m16n8k16 bf16 → f32, ldmatrix, cp.async), so that a kernel keeps
// its accumulators in registers and knows which row each of them belongs to (WMMA hides that).
// Under cuda-emu (MLA_CUDA_EMU) each has a CPU implementation with the same layouts.
#pragma once
#include "common.cuh"
#ifdef MLA_CUDA_EMU
#include <mma_ptx.h>
#endif

// d += a·b on tensor cores. Fragment layouts, with g = lane / 4 and t = lane % 4 (bf16 pairs
// packed low element first):
//   A (16×16, row-major): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..), a[3] = (g+8, 2t+8..)
//   B (16×8, k × n):      b[0] = (k 2t..2t+1, n g), b[1] = (k 2t+8.., n g)
//   C (16×8, f32):        c[0..1] = (g, 2t..2t+1), c[2..3] = (g+8, 2t..2t+1)
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(MLA_CUDA_EMU)
    emu::mma_bf16_16816(d, a, b0, b1);
#elif defined(__CUDA_ARCH__)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// d += a·b for e4m3 (float8_e4m3fn) operands, f32 accumulators: m16n8k32, compute capability
// 8.9+ (an older build traps; the host never launches it there). Each register holds 4 bytes
// along k, lowest first:
//   A (16×32, row-major): a[0] = (g, 4t..4t+3), a[1] = (g+8, 4t..), a[2] = (g, 4t+16..), a[3] = (g+8, 4t+16..)
//   B (32×8, k × n):      b[0] = (k 4t..4t+3, n g), b[1] = (k 4t+16.., n g)
//   C (16×8, f32):        as mma_bf16_16816's
__device__ __forceinline__ void mma_e4m3_16832(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(MLA_CUDA_EMU)
    emu::mma_e4m3_16832(d, a, b0, b1);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(__CUDA_ARCH__)
    (void)d, (void)a, (void)b0, (void)b1;
    __trap();
#endif
}

// Four 8×8 bf16 matrices from shared memory: lane l gives the address of row l % 8 of matrix
// l / 8 (16-byte aligned); r[m] receives (row g, columns 2t, 2t+1) of matrix m, or with `TRANS`
// (rows 2t, 2t+1, column g).
template <bool TRANS> __device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const bf16* row) {
    MLA_ASSERT_ALIGNED(row, 16);
#if defined(MLA_CUDA_EMU)
    emu::ldmatrix_x4(r, row, TRANS);
#elif defined(__CUDA_ARCH__)
    const uint32_t address = (uint32_t)__cvta_generic_to_shared(row);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
#endif
}

// 16 bytes global → shared without waiting for them (zeros, and nothing read, unless `valid`).
// Visible to this thread after async_commit + async_wait, to the block after a barrier too.
__device__ __forceinline__ void async_copy16(void* dst, const void* src, bool valid) {
    MLA_ASSERT_ALIGNED(dst, 16);
    MLA_ASSERT_ALIGNED(src, 16);
#if defined(MLA_CUDA_EMU)
    emu::async_copy16(dst, src, valid);
#elif defined(__CUDA_ARCH__)
    const uint32_t address = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
#endif
}

// Closes the group of this thread's copies issued since the last commit.
__device__ __forceinline__ void async_commit() {
#if defined(MLA_CUDA_EMU)
    emu::async_commit();
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void async_wait() {
#if defined(MLA_CUDA_EMU)
    emu::async_wait(N);
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// Two bf16 as one 32-bit fragment register, `lo` in the low half.
__device__ __forceinline__ uint32_t pack_bf16(bf16 lo, bf16 hi) {
    uint16_t a, b;
    memcpy(&a, &lo, 2);
    memcpy(&b, &hi, 2);
    return (uint32_t)a | ((uint32_t)b << 16);
}
