// Helpers shared by every kernel family: f32 math on f32 or bf16 storage, block reductions.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

// Alignment a vector access needs: free on the device (a misaligned access faults there), an
// error that names the access under cuda-emu, which would otherwise run it silently.
#ifndef MLA_ASSERT_ALIGNED
#define MLA_ASSERT_ALIGNED(pointer, bytes)
#endif

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

template <typename F> __device__ __forceinline__ F warp_sum(F v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum over the block (f32 or f64); every thread gets the result. blockDim.x must be a multiple
// of 32.
template <typename F> __device__ __forceinline__ F block_sum(F v) {
    __shared__ F partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // `partial` may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = lane < warps ? partial[lane] : F(0);
    return warp_sum(v);
}

// Largest value over the block (NaN ignored); every thread gets it. blockDim.x a multiple of 32.
__device__ __forceinline__ float block_max(float v) {
    __shared__ float partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();  // `partial` may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? partial[lane] : -INFINITY;
    return warp_max(v);
}

// Instantiates `extern "C"` entry points NAME_f32 and NAME_bf16 of a templated kernel.
#define MLA_FOR_EACH_DTYPE(MACRO) MACRO(f32, float) MACRO(bf16, bf16)
