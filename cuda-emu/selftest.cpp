// cuda-emu checking itself: small kernels that are right must run right, and each kind of bug
// the emulator claims to catch must be caught; then stream capture and graph replay through the
// driver (selftest_graph.cpp). build.sh runs this after building the libraries and fails if any
// case goes the wrong way.
#include <cstdio>
#include <string>
#include "mma.h"
#include "runtime.h"

// selftest_graph.cpp: stream capture and graph replay through the driver.
int graph_selftest();

namespace {
int failures = 0;

template <typename... A> std::string launch(void (*kernel)(A...), unsigned blocks, unsigned threads,
                                            size_t shared, std::decay_t<A>... args) {
    void* params[] = {&args...};
    return emu::Kernel<A...>::launch(reinterpret_cast<void*>(kernel), params,
                                     emu::LaunchDims{dim3{blocks, 1, 1}, dim3{threads, 1, 1}, shared});
}

void expect(const char* name, const std::string& error, const char* wanted) {
    const bool ok = wanted ? error.find(wanted) != std::string::npos : error.empty();
    if (!ok) {
        failures++;
        fprintf(stderr, "cuda-emu selftest %s: expected %s%s, got \"%s\"\n", name, wanted ? "an error with " : "success",
                wanted ? wanted : "", error.c_str());
    }
}

__device__ float warp_total(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum of 0..blockDim-1 through shuffles and shared memory.
__global__ void block_total(float* out) {
    __shared__ float partial[32];
    float v = warp_total((float)threadIdx.x);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0;
        for (unsigned w = 0; w < blockDim.x / 32; w++) s += partial[w];
        out[blockIdx.x] = s;
    }
}

__global__ void divergent_barrier(float* out) {
    float v = 1.0f;
    if (threadIdx.x % 2) __syncthreads();
    else v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

__global__ void shuffle_after_exit(float* out) {
    if (threadIdx.x == 5) return;
    out[threadIdx.x] = warp_total(1.0f);
}

__global__ void shared_overflow(int n) {
    float* s = static_cast<float*>(emu::dynamic_shared());
    if (threadIdx.x == 0) s[n] = 1.0f;
}

// Each thread reads its neighbour's write with no barrier between: a race.
__global__ void missing_barrier(float* out) {
    float* s = static_cast<float*>(emu::dynamic_shared());
    s[threadIdx.x] = (float)threadIdx.x;
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

__global__ void misaligned_wmma(float* out) {
    using namespace nvcuda;
    __shared__ __align__(32) __nv_bfloat16 tile[16 * 24];
    for (int i = threadIdx.x; i < 16 * 24; i += 32) tile[i] = __float2bfloat16_rn(1.0f);
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::load_matrix_sync(a, tile + 8, 24);  // 16 bytes in: not 256-bit aligned
    out[threadIdx.x] = __bfloat162float(a.x[0]);
}

// C = A·B for 16×16 tiles of known values, checked element by element.
__global__ void wmma_product(float* out) {
    using namespace nvcuda;
    __shared__ __align__(32) __nv_bfloat16 a_s[256], b_s[256];
    for (int i = threadIdx.x; i < 256; i += 32) {
        a_s[i] = __float2bfloat16_rn((float)(i / 16 - i % 16));
        b_s[i] = __float2bfloat16_rn((float)((i * 7) % 5));
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
    wmma::fill_fragment(c, 0.0f);
    wmma::load_matrix_sync(a, a_s, 16);
    wmma::load_matrix_sync(b, b_s, 16);
    wmma::mma_sync(c, a, b, c);
    wmma::store_matrix_sync(out, c, 16, wmma::mem_row_major);
}

__global__ void misaligned_vector(const __nv_bfloat16* p) { MLA_ASSERT_ALIGNED(p + 1, 16); }

// Each thread copies 16 bytes global → shared in two cp.async groups and reads them back:
// `waits` = 0: before any wait (both still poisoned), 1: after a wait that leaves the newer group
// in flight, 2: after waiting for both.
__global__ void async_copies(const float* src, float* out, int waits) {
    float* s = static_cast<float*>(emu::dynamic_shared());
    const int i = threadIdx.x;
    emu::async_copy16(s + 8 * i, src + 8 * i, true);
    emu::async_commit();
    emu::async_copy16(s + 8 * i + 4, src + 8 * i + 4, true);
    emu::async_commit();
    if (waits > 0) emu::async_wait(waits == 1 ? 1 : 0);
    for (int j = 0; j < 8; j++) out[8 * i + j] = s[8 * i + j];
}

// D[64×32] += A·B over k = 16 with every operand value 1 (so any layout gives 16) on one
// warpgroup; `wait`: whether the accumulators are read after wgmma_wait or before it (2: after
// a wait that thread 0 precedes by writing one of the operands, an error; 3: after a wait where
// lane 5 completes a narrower wgmma than the rest of its warp, an error).
__global__ void wgmma_ones(float* out, int wait) {
    unsigned char* s = static_cast<unsigned char*>(emu::dynamic_shared());
    for (int i = threadIdx.x; i < (64 + 32) * 128 / 2; i += blockDim.x) reinterpret_cast<uint16_t*>(s)[i] = 0x3f80;
    __syncthreads();
    // K-major, 128-byte swizzle, 1024 bytes between 8-row atoms; B after A's 8 atoms.
    const auto desc = [](uint32_t start) { return (start >> 4) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62); };
    float d[16] = {};
    emu::wgmma_issue(d, wait == 3 && threadIdx.x == 5 ? 16 : 32, desc(0), desc(8192), false);
    emu::wgmma_commit();
    if (wait == 2 && threadIdx.x == 0) reinterpret_cast<uint16_t*>(s)[0] = 0;
    if (wait) emu::wgmma_wait(0);
    for (int j = 0; j < 16; j++) out[threadIdx.x * 16 + j] = d[j];
}
// Warp 0 copies 16 bytes per lane into shared memory with cp.async completing an mbarrier of 32
// arrivals; warp 1 reads them, after waiting for the phase (`wait`) or not. Each block writes
// out[block][lane][4].
__global__ void copies_to_mbarrier(const float* src, float* out, int wait) {
    float* s = static_cast<float*>(emu::dynamic_shared());
    const void* bar = s + 32 * 4;
    if (threadIdx.x == 0) emu::mbarrier_init(bar, 32);
    __syncthreads();
    const int lane = threadIdx.x % 32;
    if (threadIdx.x < 32) {
        emu::async_copy16(s + 4 * lane, src + 4 * lane, true);
        emu::mbarrier_arrive_copies(bar);
    } else {
        if (wait) emu::mbarrier_wait(bar, 0);
        for (int j = 0; j < 4; j++) out[blockIdx.x * 128 + 4 * lane + j] = s[4 * lane + j];
    }
}

// Thread 0 expects `expected` bytes on an mbarrier and copies a 16-row box of `map` from row
// `row` (rows past the tensor's end read as zeros) into shared memory in the 128-byte swizzle;
// every thread then waits for the phase (or not: `wait` 0) and writes the box back unswizzled
// to out[16][64].
__global__ void bulk_box(const emu::TensorMapFields* map, uint16_t* out, int row, unsigned expected, int wait) {
    unsigned char* s = static_cast<unsigned char*>(emu::dynamic_shared());
    const void* bar = s + 16 * 128;
    if (threadIdx.x == 0) emu::mbarrier_init(bar, 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        emu::mbarrier_arrive_expect_bytes(bar, expected);
        emu::bulk_copy_box(s, map, 0, row, bar);
    }
    if (wait) emu::mbarrier_wait(bar, 0);
    for (int i = threadIdx.x; i < 16 * 64; i += blockDim.x) {
        const int r = i / 64, c = i % 64;
        memcpy(&out[i], s + r * 128 + (((c / 8) ^ (r % 8)) * 16) + (c % 8) * 2, 2);
    }
}

// Warp 0 writes, arrives at named barrier 1 and goes on; warp 1 waits there (`count` 64: both
// warps) and reads. `twice`: warp 0 arrives twice before warp 1 does (an error).
__global__ void named_handoff(float* out, int count, int twice) {
    __shared__ float v[32];
    const int lane = threadIdx.x % 32;
    if (threadIdx.x < 32) {
        v[lane] = (float)lane;
        emu::named_barrier(1, count, false);
        if (twice) emu::named_barrier(1, count, false);
    } else {
        emu::named_barrier(1, count, true);
        out[blockIdx.x * 32 + lane] = v[lane];
    }
}
// Every thread of every block adds to two global counters (integer and float) and counts its
// block's threads in static shared memory: blocks run on several workers at once, so the
// counters' additions must be atomic and each worker's shared memory its own.
__global__ void global_atomics(unsigned* count, float* sum, unsigned* per_block) {
    __shared__ unsigned block_count;
    if (threadIdx.x == 0) block_count = 0;
    __syncthreads();
    atomicAdd(&block_count, 1u);
    for (int i = 0; i < 64; i++) {
        atomicAdd(count, 1u);
        atomicAdd(sum, 1.0f);
    }
    __syncthreads();
    if (threadIdx.x == 0) per_block[blockIdx.x] = block_count;
}
}  // namespace

int main() {
    float out[4 * 64];
    expect("block_total", launch(block_total, 3, 128, 0, out), nullptr);
    if (out[0] != 8128.0f || out[2] != 8128.0f) {
        failures++;
        fprintf(stderr, "cuda-emu selftest block_total: %g, want 8128\n", out[0]);
    }
    expect("divergent_barrier", launch(divergent_barrier, 1, 64, 0, out), "deadlock");
    expect("shuffle_after_exit", launch(shuffle_after_exit, 1, 32, 0, out), "after some of its lanes exited");
#if !defined(__SANITIZE_ADDRESS__)  // AddressSanitizer stops the process at the overflow itself
    expect("shared_overflow", launch(shared_overflow, 1, 32, 64, 16), "past the end of dynamic shared memory");
#endif
    expect("shared_in_bounds", launch(shared_overflow, 1, 32, 64, 15), nullptr);
    expect("missing_barrier", launch(missing_barrier, 2, 64, 64 * sizeof(float), out), nullptr);
    int wrong = 0;
    for (int i = 0; i < 128; i++) wrong += out[i] != (float)((i % 64 + 1) % 64);
    if (wrong == 0) {
        failures++;
        fprintf(stderr, "cuda-emu selftest missing_barrier: the race never showed\n");
    }
    expect("misaligned_wmma", launch(misaligned_wmma, 1, 32, 0, out), "not 256-bit aligned");
    alignas(32) float product[256];
    expect("wmma_product", launch(wmma_product, 1, 32, 0, product), nullptr);
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) {
            float want = 0;
            for (int k = 0; k < 16; k++) want += (float)(r - k) * (float)(((c * 16 + k) * 7) % 5);
            if (product[r * 16 + c] != want) {
                failures++;
                fprintf(stderr, "cuda-emu selftest wmma_product: (%d,%d) = %g, want %g\n", r, c, product[r * 16 + c], want);
                r = c = 16;
            }
        }
    __nv_bfloat16 row[16] __attribute__((aligned(16)));
    const __nv_bfloat16* p = row;
    expect("misaligned_vector", launch(misaligned_vector, 1, 32, 0, p), "misaligned 16-byte vector access");
    float src[64 * 8], copied[64 * 8];
    for (int i = 0; i < 64 * 8; i++) src[i] = (float)i;
    for (int waits = 0; waits < 3; waits++) {
        expect("async_copies", launch(async_copies, 1, 64, 64 * 8 * sizeof(float), src, copied, waits), nullptr);
        for (int i = 0; i < 64 * 8; i++) {
            const bool landed = waits == 2 || (waits == 1 && i % 8 < 4);
            if ((copied[i] == src[i]) != landed || (!landed && copied[i] == copied[i])) {
                failures++;
                fprintf(stderr, "cuda-emu selftest async_copies (%d waits): value %d is %g\n", waits, i, copied[i]);
                break;
            }
        }
    }
    static float accumulators[128 * 16];
    for (int wait = 0; wait < 2; wait++) {
        expect("wgmma_ones", launch(wgmma_ones, 1, 128, (64 + 32) * 128, accumulators, wait), nullptr);
        for (int i = 0; i < 128 * 16; i++)
            if (accumulators[i] != (wait ? 16.0f : 0.0f)) {
                failures++;
                fprintf(stderr, "cuda-emu selftest wgmma_ones (wait %d): accumulator %d is %g\n", wait, i, accumulators[i]);
                break;
            }
    }
    float mbar_out[2 * 128];
    for (int wait = 0; wait < 2; wait++) {
        expect("copies_to_mbarrier", launch(copies_to_mbarrier, 2, 64, 32 * 4 * sizeof(float) + 8, src, mbar_out, wait),
               nullptr);
        int poisoned = 0, wrong = 0;
        for (int i = 0; i < 2 * 128; i++) {
            poisoned += mbar_out[i] != mbar_out[i];
            wrong += mbar_out[i] == mbar_out[i] && mbar_out[i] != src[i % 128];
        }
        if (wrong > 0 || (poisoned > 0) == (wait == 1)) {
            failures++;
            fprintf(stderr, "cuda-emu selftest copies_to_mbarrier (wait %d): %d poisoned, %d wrong\n", wait, poisoned,
                    wrong);
        }
    }
    // A 20 × 64 tensor of 16-bit values r·64 + c, rows 8 … 23 of it (four past its end).
    static uint16_t tensor[20 * 64], box[16 * 64];
    for (int i = 0; i < 20 * 64; i++) tensor[i] = (uint16_t)i;
    const emu::TensorMapFields map{emu::TENSOR_MAP_MAGIC, reinterpret_cast<const unsigned char*>(tensor), {64, 20}, 128,
                                   {64, 16}, 2, 128};
    for (int wait = 0; wait < 2; wait++) {
        expect("bulk_box", launch(bulk_box, 1, 64, 16 * 128 + 8, &map, box, 8, 16 * 128, wait), nullptr);
        int wrong = 0;
        for (int i = 0; i < 16 * 64; i++) {
            const int r = 8 + i / 64;
            const uint16_t want = wait == 0 ? 0xffff : r < 20 ? (uint16_t)(r * 64 + i % 64) : 0;
            wrong += box[i] != want;
        }
        if (wrong > 0) {
            failures++;
            fprintf(stderr, "cuda-emu selftest bulk_box (wait %d): %d values wrong\n", wait, wrong);
        }
    }
    expect("bulk_box_unexpected", launch(bulk_box, 1, 64, 16 * 128 + 8, &map, box, 8, 8 * 128, 1),
           "more bytes than");
    expect("bulk_box_short", launch(bulk_box, 1, 64, 16 * 128 + 8, &map, box, 8, 32 * 128, 1), "deadlock");
    float handed[2 * 32];
    expect("named_handoff", launch(named_handoff, 2, 64, 0, handed, 64, 0), nullptr);
    for (int i = 0; i < 2 * 32; i++)
        if (handed[i] != (float)(i % 32)) {
            failures++;
            fprintf(stderr, "cuda-emu selftest named_handoff: value %d is %g\n", i, handed[i]);
            break;
        }
    expect("named_twice", launch(named_handoff, 1, 64, 0, handed, 64, 1), "arrives twice");
    expect("named_short", launch(named_handoff, 1, 128, 0, handed, 96, 0), "deadlock");
    expect("wgmma_operand_changed", launch(wgmma_ones, 1, 128, (64 + 32) * 128, accumulators, 2),
           "differ between its issue and its wait");
    expect("wgmma_lanes_differ", launch(wgmma_ones, 1, 128, (64 + 32) * 128, accumulators, 3),
           "complete different wgmmas");
    {
        unsigned count = 0, per_block[512];
        float sum = 0.0f;
        expect("global_atomics", launch(global_atomics, 512, 128, 0, &count, &sum, per_block), nullptr);
        int wrong_blocks = 0;
        for (unsigned b : per_block) wrong_blocks += b != 128;
        if (count != 512 * 128 * 64 || sum != 512.0f * 128 * 64 || wrong_blocks) {
            failures++;
            fprintf(stderr, "cuda-emu selftest global_atomics: %u and %g, want %d; %d blocks miscounted\n", count, sum,
                    512 * 128 * 64, wrong_blocks);
        }
    }
    failures += graph_selftest();
    if (failures) return 1;
    printf("cuda-emu selftest: all cases as expected\n");
    return 0;
}
