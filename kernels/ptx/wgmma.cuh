// Warpgroup-level tensor-core primitives of sm_90a (wgmma.mma_async, bf16 or e4m3 in, f32
// accumulate, both operands in shared memory, or A in registers) as functions, for kernels built only for
// sm_90a; under cuda-emu (MLA_CUDA_EMU) each has a CPU implementation (cuda-emu/include/wgmma_ptx.h).
// Operand and accumulator layouts: at wgmma_desc. docs/kernels.md, "The Hopper wgmma kernel".
#pragma once
#include "common.cuh"
#ifdef MLA_CUDA_EMU
#include <wgmma_ptx.h>
#endif

// Operand layout in shared memory, 128-byte swizzle: the matrix is cut into atoms of 8 rows ×
// 128 bytes (64 bf16), 1024 contiguous bytes at a 1024-byte aligned address, in which the
// 16-byte chunk c of row r sits at chunk position c ^ r (so that the 8 rows of a column of
// chunks fall in 8 different bank groups). A K-major operand has 64 consecutive k in a row; a
// descriptor gives where it starts (plus 32 bytes per 16 k inside the atom) and the distance
// between atoms along M or N (stride). An MN-major operand has 64 consecutive m or n in a row,
// one row per k; its descriptor gives the distance between atoms along M or N (leading) and
// along K (stride). The same atoms are therefore both the keys of a latent tile (K-major: rows
// are tokens) and its values (MN-major: rows are tokens, the k of P·V).
//
// Accumulators: warp w of the warpgroup owns rows 16w … 16w + 15 of D [64 × N]; with g = lane / 4
// and t = lane % 4, d[4j + e] is row 16w + g + 8·(e / 2), column 8j + 2t + e % 2 — mma.sync's C
// fragment, once per 8 columns.
//
// The descriptor of a 128-byte swizzled operand starting at `start` (16-byte aligned, inside an
// atom aligned to 1024 bytes) with atoms `leading` and `stride` bytes apart (see above).
__device__ __forceinline__ uint64_t wgmma_desc(const void* start, uint32_t leading, uint32_t stride) {
    MLA_ASSERT_ALIGNED(start, 16);
    return (uint64_t)((shared_address(start) >> 4) & 0x3fff) | (uint64_t)((leading >> 4) & 0x3fff) << 16 |
           (uint64_t)((stride >> 4) & 0x3fff) << 32 | 1ull << 62;
}

// wgmma_desc(start, …), computed where it is used: a loop's k-steps then add constants to it
// (wgmma_desc_at) instead of the compiler hoisting every step's descriptor out of an outer loop
// and holding them all across it (which spills in seesaw.cu).
__device__ __forceinline__ uint64_t wgmma_desc_here(const void* start, uint32_t leading, uint32_t stride) {
    uint64_t d = wgmma_desc(start, leading, stride);
#if defined(__CUDA_ARCH__) && !defined(MLA_CUDA_EMU)
    asm volatile("" : "+l"(d));
#endif
    return d;
}

// The descriptor `d` moved `bytes` (a multiple of 16, staying in shared memory) further.
__device__ __forceinline__ uint64_t wgmma_desc_at(uint64_t d, uint32_t bytes) { return d + (bytes >> 4); }

// Stops the kernel (a launch error) unless `base` is aligned to a swizzle atom: the swizzle is a
// function of the address bits, so a misaligned buffer would be read scrambled, silently.
__device__ __forceinline__ void require_atom_aligned(const void* base) {
#if defined(__CUDA_ARCH__) && !defined(MLA_CUDA_EMU)
    if (shared_address(base) % 1024 != 0) asm volatile("trap;");
#else
    (void)base;
#endif
}

// Byte offset of element (row, col) of a K-major operand of `rows` rows (a multiple of 8) in
// the 128-byte swizzle, its columns in blocks of 64 (one atom wide), block after block.
__device__ __forceinline__ uint32_t swizzled_offset(int row, int col, int rows) {
    return (uint32_t)((col / 64) * rows * 128 + row * 128 + ((((col % 64) / 8) ^ (row % 8)) * 16) + (col % 8) * 2);
}

// Orders this thread's register and shared-memory writes before the warpgroup's next wgmma.
__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH__) && !defined(MLA_CUDA_EMU)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

// Closes the group of wgmma issued since the last commit.
__device__ __forceinline__ void wgmma_commit() {
#if defined(MLA_CUDA_EMU)
    emu::wgmma_commit();
#elif defined(__CUDA_ARCH__)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most N of the warpgroup's committed wgmma groups are still running.
template <int N> __device__ __forceinline__ void wgmma_wait() {
#if defined(MLA_CUDA_EMU)
    emu::wgmma_wait(N);
#elif defined(__CUDA_ARCH__)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Makes this thread's earlier shared-memory writes (stores, completed cp.async) visible to
// wgmma, which reads shared memory through the async proxy.
__device__ __forceinline__ void fence_async_shared() {
#if defined(__CUDA_ARCH__) && !defined(MLA_CUDA_EMU)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Pins accumulator registers in place: the compiler may not move their reads or writes across
// this point (wgmma writes them behind its back until wgmma_wait returns).
template <int N> __device__ __forceinline__ void fence_registers(float (&d)[N]) {
#if defined(__CUDA_ARCH__) && !defined(MLA_CUDA_EMU)
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
#endif
}
// The same for A fragments in registers, which wgmma reads until its wgmma_wait.
template <int N> __device__ __forceinline__ void fence_registers(uint32_t (&a)[N]) {
#if defined(__CUDA_ARCH__) && !defined(MLA_CUDA_EMU)
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(a[i])::"memory");
#endif
}

// D[64×32] += A[64×16]·B[16×32], A and B K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n32k16(float (&d)[16], uint64_t a, uint64_t b) {
#if defined(MLA_CUDA_EMU)
    emu::wgmma_issue(d, 32, a, b, false);
#elif defined(__CUDA_ARCH__)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {"
                 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15"
                 "}, %16, %17, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                   "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
                   "+f"(d[14]), "+f"(d[15])
                 : "l"(a), "l"(b), "r"(1));
#endif
}

// D[64×64] += A[64×16]·B[16×64], A and B K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t a, uint64_t b) {
#if defined(MLA_CUDA_EMU)
    emu::wgmma_issue(d, 64, a, b, false);
#elif defined(__CUDA_ARCH__)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {"
                 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
                 "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                   "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
                   "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
                   "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
                   "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(a), "l"(b), "r"(1));
#endif
}

// D[64×64] = A[64×32]·B[32×64] (+ D where `accumulate`) of e4m3 values, A and B K-major in
// shared memory (8-bit operands must be: a row of the swizzle atom holds 128 k). Products are
// exact; the sums are the tensor cores' (fp8_gemm_wgmma.cu promotes them every 128 k).
__device__ __forceinline__ void wgmma_m64n64k32_e4m3(float (&d)[32], uint64_t a, uint64_t b, bool accumulate) {
#if defined(MLA_CUDA_EMU)
    emu::wgmma_issue_e4m3(d, 64, a, b, accumulate);
#elif defined(__CUDA_ARCH__)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 {"
                 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
                 "}, %32, %33, p, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(a), "l"(b), "r"((int)accumulate));
#endif
}

// D[64×256] += A[64×16]·B[16×256], A in registers (`a`: this thread's four, mma.sync's A
// fragment for its warp's 16 rows: rows g, g + 8, columns 2t, 2t + 1 and 2t + 8, 2t + 9), B
// MN-major in shared memory. A must stay unchanged until the wgmma_wait that covers this.
__device__ __forceinline__ void wgmma_m64n256k16_rs_mn_b(float (&d)[128], const uint32_t (&a)[4], uint64_t b) {
#if defined(MLA_CUDA_EMU)
    emu::wgmma_issue_rs(d, 256, a, b, true);
#elif defined(__CUDA_ARCH__)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
                 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
                 "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
                 "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,"
                 "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,"
                 "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"
                 "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,"
                 "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"
                 "}, {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                   "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
                   "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
                   "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
                   "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
                   "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
                   "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
                   "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
                   "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]),
                   "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]),
                   "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
                   "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]),
                   "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]),
                   "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]),
                   "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
                   "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]),
                   "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]),
                   "+f"(d[126]), "+f"(d[127])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#endif
}

// D[64×256] += A[64×16]·B[16×256], A K-major, B MN-major (its 256 columns contiguous by 8) in
// shared memory.
__device__ __forceinline__ void wgmma_m64n256k16_mn_b(float (&d)[128], uint64_t a, uint64_t b) {
#if defined(MLA_CUDA_EMU)
    emu::wgmma_issue(d, 256, a, b, true);
#elif defined(__CUDA_ARCH__)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
                 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
                 "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
                 "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
                 "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,"
                 "%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,"
                 "%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,"
                 "%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,"
                 "%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127"
                 "}, %128, %129, p, 1, 1, 0, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                   "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
                   "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
                   "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
                   "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
                   "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
                   "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
                   "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
                   "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
                   "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]),
                   "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]),
                   "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
                   "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]),
                   "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]),
                   "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
                   "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),
                   "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]),
                   "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]),
                   "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
                 : "l"(a), "l"(b), "r"(1));
#endif
}
