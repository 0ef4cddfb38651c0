// A CPU stand-in for libcublas.so: the GEMM entry points mla-rt calls through cudarc, with
// cuBLAS's column-major conventions, f32 accumulation, bf16 rounding of bf16 outputs, and
// `beta == 0` never reading C (the runtime poisons outputs before they are written). A GEMM is
// checked when called, then handed to libcuda.so as work on the handle's stream: run at once,
// or recorded into the graph if that stream captures.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include "cpus.h"
#include "include/cuda_bf16.h"

typedef int cublasStatus_t;
struct EmuBlasHandle {
    void* stream;
};
typedef EmuBlasHandle* cublasHandle_t;

// libcuda.so's (graph.cpp): `fn(data)` run now, or recorded if `stream` captures; `drop(data)`
// afterwards either way. Returns a CUresult.
extern "C" int cuda_emu_enqueue_work(void* stream, void (*fn)(void*), void* data, void (*drop)(void*));

namespace {
enum : int { STATUS_SUCCESS = 0, STATUS_INVALID_VALUE = 7, STATUS_EXECUTION_FAILED = 13, STATUS_NOT_SUPPORTED = 15 };
enum : int { OP_N = 0, OP_T = 1 };
enum : int { R_32F = 0, R_16BF = 14 };

float load(const void* p, int type, size_t i) {
    return type == R_32F ? static_cast<const float*>(p)[i] : __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
void store(void* p, int type, size_t i, float v) {
    if (type == R_32F)
        static_cast<float*>(p)[i] = v;
    else
        static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
}

// Columns [first, end) of C = alpha·op(A)·op(B) + beta·C (see Gemm), `rows`: op(A) in f32, row
// by row. Each sum runs over l in order, skipping zeros of B, as the emulator always has.
void gemm_columns(int first, int end, int m, int k, float alpha, const float* rows, const void* b, int btype,
                  long long b_l, long long b_j, float beta, void* c, int ctype, long long ldc) {
    std::vector<float> column(k > 0 ? k : 1);
    for (int j = first; j < end; j++) {
        for (int l = 0; l < k; l++) column[l] = load(b, btype, (size_t)(l * b_l + j * b_j));
        for (int i = 0; i < m; i++) {
            const float* row = rows + (size_t)i * k;
            float sum = 0.0f;
            for (int l = 0; l < k; l++)
                if (column[l] != 0.0f) sum += row[l] * column[l];
            const size_t at = (size_t)(i + j * ldc);
            const float prior = beta == 0.0f ? 0.0f : beta * load(c, ctype, at);
            store(c, ctype, at, alpha * sum + prior);
        }
    }
}

// `batch` products C[m×n] = alpha·op(A)·op(B) + beta·C, column-major, the i-th with A, B and C
// `stride_*` bytes after the first; scalars and pointers as the caller gave them.
struct Gemm {
    int ta, tb, m, n, k;
    float alpha, beta;
    const void* a;
    int atype;
    long long lda, stride_a;
    const void* b;
    int btype;
    long long ldb, stride_b;
    void* c;
    int ctype;
    long long ldc, stride_c;
    int batch;
};

cublasStatus_t check(const Gemm& g) {
    if ((g.ta != OP_N && g.ta != OP_T) || (g.tb != OP_N && g.tb != OP_T)) return STATUS_NOT_SUPPORTED;
    // The combinations cuBLAS documents for CUBLAS_COMPUTE_32F that mla-rt uses.
    if ((g.atype != R_32F && g.atype != R_16BF) || g.btype != g.atype || (g.ctype != g.atype && g.ctype != R_32F))
        return STATUS_NOT_SUPPORTED;
    if (g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0 || g.ldc < g.m || g.lda < (g.ta == OP_N ? g.m : g.k) ||
        g.ldb < (g.tb == OP_N ? g.k : g.n))
        return STATUS_INVALID_VALUE;
    return STATUS_SUCCESS;
}

// One product; large ones split by columns over the CPUs.
void product(const Gemm& g, const void* a, const void* b, void* c) {
    const int m = g.m, n = g.n, k = g.k;
    // op(A)(i, l) = A[i·a_i + l·a_l]; op(B)(l, j) = B[l·b_l + j·b_j].
    const long long a_i = g.ta == OP_N ? 1 : g.lda, a_l = g.ta == OP_N ? g.lda : 1;
    const long long b_l = g.tb == OP_N ? 1 : g.ldb, b_j = g.tb == OP_N ? g.ldb : 1;
    std::vector<float> rows((size_t)m * k);
    for (int i = 0; i < m; i++)
        for (int l = 0; l < k; l++) rows[(size_t)i * k + l] = load(a, g.atype, (size_t)(i * a_i + l * a_l));
    const unsigned workers = (double)m * n * k < (1 << 22) ? 1 : std::min<unsigned>(emu::cpus(), (unsigned)n);
    std::vector<std::thread> helpers;
    const int per = (int)((n + workers - 1) / std::max(1u, workers));
    for (unsigned w = 1; w < workers; w++)
        helpers.emplace_back(gemm_columns, std::min(n, (int)w * per), std::min(n, (int)(w + 1) * per), m, k, g.alpha,
                             rows.data(), b, g.btype, b_l, b_j, g.beta, c, g.ctype, g.ldc);
    gemm_columns(0, std::min(n, per), m, k, g.alpha, rows.data(), b, g.btype, b_l, b_j, g.beta, c, g.ctype, g.ldc);
    for (std::thread& h : helpers) h.join();
}

void run(void* p) {
    const Gemm& g = *static_cast<const Gemm*>(p);
    for (int i = 0; i < g.batch; i++)
        product(g, static_cast<const char*>(g.a) + i * g.stride_a, static_cast<const char*>(g.b) + i * g.stride_b,
                static_cast<char*>(g.c) + i * g.stride_c);
}

cublasStatus_t submit(cublasHandle_t h, const Gemm& g) {
    if (cublasStatus_t s = check(g)) return s;
    const int r = cuda_emu_enqueue_work(h->stream, run, new Gemm(g), [](void* p) { delete static_cast<Gemm*>(p); });
    return r == 0 ? STATUS_SUCCESS : STATUS_EXECUTION_FAILED;
}

long long bytes(int type) { return type == R_32F ? 4 : 2; }
}  // namespace

extern "C" {
cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
    *h = new EmuBlasHandle{nullptr};
    return STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
    delete h;
    return STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, void* stream) {
    h->stream = stream;
    return STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t, void*, size_t) { return STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, int) { return STATUS_SUCCESS; }
const char* cublasGetStatusString(cublasStatus_t s) {
    return s == STATUS_SUCCESS            ? "CUBLAS_STATUS_SUCCESS"
           : s == STATUS_INVALID_VALUE    ? "CUBLAS_STATUS_INVALID_VALUE"
           : s == STATUS_EXECUTION_FAILED ? "CUBLAS_STATUS_EXECUTION_FAILED"
                                          : "CUBLAS_STATUS_NOT_SUPPORTED";
}
const char* cublasGetStatusName(cublasStatus_t s) { return cublasGetStatusString(s); }

cublasStatus_t cublasSgemm_v2(cublasHandle_t h, int ta, int tb, int m, int n, int k, const float* alpha,
                              const float* a, int lda, const float* b, int ldb, const float* beta, float* c, int ldc) {
    return submit(h, Gemm{ta, tb, m, n, k, *alpha, *beta, a, R_32F, lda, 0, b, R_32F, ldb, 0, c, R_32F, ldc, 0, 1});
}
cublasStatus_t cublasGemmEx(cublasHandle_t h, int ta, int tb, int m, int n, int k, const void* alpha, const void* a,
                            int atype, int lda, const void* b, int btype, int ldb, const void* beta, void* c,
                            int ctype, int ldc, int compute, int) {
    if (compute != 68) return STATUS_NOT_SUPPORTED;  // CUBLAS_COMPUTE_32F: f32 scalars
    return submit(h, Gemm{ta, tb, m, n, k, *static_cast<const float*>(alpha), *static_cast<const float*>(beta), a,
                          atype, lda, 0, b, btype, ldb, 0, c, ctype, ldc, 0, 1});
}
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, int ta, int tb, int m, int n, int k, const float* alpha,
                                         const float* a, int lda, long long sa, const float* b, int ldb,
                                         long long sb, const float* beta, float* c, int ldc, long long sc,
                                         int batch) {
    return submit(h, Gemm{ta, tb, m, n, k, *alpha, *beta, a, R_32F, lda, sa * 4, b, R_32F, ldb, sb * 4, c, R_32F,
                          ldc, sc * 4, batch});
}
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, int ta, int tb, int m, int n, int k, const void* alpha,
                                          const void* a, int atype, int lda, long long sa, const void* b, int btype,
                                          int ldb, long long sb, const void* beta, void* c, int ctype, int ldc,
                                          long long sc, int batch, int compute, int) {
    if (compute != 68) return STATUS_NOT_SUPPORTED;
    return submit(h, Gemm{ta, tb, m, n, k, *static_cast<const float*>(alpha), *static_cast<const float*>(beta), a,
                          atype, lda, sa * bytes(atype), b, btype, ldb, sb * bytes(btype), c, ctype, ldc,
                          sc * bytes(ctype), batch});
}
}
