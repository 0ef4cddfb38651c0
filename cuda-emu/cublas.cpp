// A CPU stand-in for libcublas.so: the GEMM entry points mla-rt calls through cudarc, with
// cuBLAS's column-major conventions, f32 accumulation, bf16 rounding of bf16 outputs, and
// `beta == 0` never reading C (the runtime poisons outputs before they are written).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#include "cpus.h"
#include "include/cuda_bf16.h"

typedef int cublasStatus_t;
typedef void* cublasHandle_t;

namespace {
enum : int { STATUS_SUCCESS = 0, STATUS_INVALID_VALUE = 7, STATUS_NOT_SUPPORTED = 15 };
enum : int { OP_N = 0, OP_T = 1 };
enum : int { R_32F = 0, R_16BF = 14 };
int handle_token;

float load(const void* p, int type, size_t i) {
    return type == R_32F ? static_cast<const float*>(p)[i] : __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
void store(void* p, int type, size_t i, float v) {
    if (type == R_32F)
        static_cast<float*>(p)[i] = v;
    else
        static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
}

// Columns [first, end) of C = alpha·op(A)·op(B) + beta·C (see gemm), `rows`: op(A) in f32, row
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

// C[m×n] = alpha·op(A)·op(B) + beta·C, column-major; large products split by columns over the
// CPUs.
cublasStatus_t gemm(int ta, int tb, int m, int n, int k, float alpha, const void* a, int atype, long long lda,
                    const void* b, int btype, long long ldb, float beta, void* c, int ctype, long long ldc) {
    if ((ta != OP_N && ta != OP_T) || (tb != OP_N && tb != OP_T)) return STATUS_NOT_SUPPORTED;
    // The combinations cuBLAS documents for CUBLAS_COMPUTE_32F that mla-rt uses.
    if ((atype != R_32F && atype != R_16BF) || btype != atype || (ctype != atype && ctype != R_32F))
        return STATUS_NOT_SUPPORTED;
    if (m < 0 || n < 0 || k < 0 || ldc < m || lda < (ta == OP_N ? m : k) || ldb < (tb == OP_N ? k : n))
        return STATUS_INVALID_VALUE;
    // op(A)(i, l) = A[i·a_i + l·a_l]; op(B)(l, j) = B[l·b_l + j·b_j].
    const long long a_i = ta == OP_N ? 1 : lda, a_l = ta == OP_N ? lda : 1;
    const long long b_l = tb == OP_N ? 1 : ldb, b_j = tb == OP_N ? ldb : 1;
    std::vector<float> rows((size_t)m * k);
    for (int i = 0; i < m; i++)
        for (int l = 0; l < k; l++) rows[(size_t)i * k + l] = load(a, atype, (size_t)(i * a_i + l * a_l));
    const unsigned workers = (double)m * n * k < (1 << 22) ? 1 : std::min<unsigned>(emu::cpus(), (unsigned)n);
    std::vector<std::thread> helpers;
    const int per = (int)((n + workers - 1) / std::max(1u, workers));
    for (unsigned w = 1; w < workers; w++)
        helpers.emplace_back(gemm_columns, std::min(n, (int)w * per), std::min(n, (int)(w + 1) * per), m, k, alpha,
                             rows.data(), b, btype, b_l, b_j, beta, c, ctype, ldc);
    gemm_columns(0, std::min(n, per), m, k, alpha, rows.data(), b, btype, b_l, b_j, beta, c, ctype, ldc);
    for (std::thread& h : helpers) h.join();
    return STATUS_SUCCESS;
}
}  // namespace

extern "C" {
cublasStatus_t cublasCreate_v2(cublasHandle_t* h) {
    *h = &handle_token;
    return STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t) { return STATUS_SUCCESS; }
cublasStatus_t cublasSetStream_v2(cublasHandle_t, void*) { return STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t, void*, size_t) { return STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, int) { return STATUS_SUCCESS; }
const char* cublasGetStatusString(cublasStatus_t s) {
    return s == STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS"
           : s == STATUS_INVALID_VALUE ? "CUBLAS_STATUS_INVALID_VALUE"
                                       : "CUBLAS_STATUS_NOT_SUPPORTED";
}
const char* cublasGetStatusName(cublasStatus_t s) { return cublasGetStatusString(s); }

cublasStatus_t cublasSgemm_v2(cublasHandle_t, int ta, int tb, int m, int n, int k, const float* alpha, const float* a,
                              int lda, const float* b, int ldb, const float* beta, float* c, int ldc) {
    return gemm(ta, tb, m, n, k, *alpha, a, R_32F, lda, b, R_32F, ldb, *beta, c, R_32F, ldc);
}
cublasStatus_t cublasGemmEx(cublasHandle_t, int ta, int tb, int m, int n, int k, const void* alpha, const void* a,
                            int atype, int lda, const void* b, int btype, int ldb, const void* beta, void* c,
                            int ctype, int ldc, int compute, int) {
    if (compute != 68) return STATUS_NOT_SUPPORTED;  // CUBLAS_COMPUTE_32F: f32 scalars
    return gemm(ta, tb, m, n, k, *static_cast<const float*>(alpha), a, atype, lda, b, btype, ldb,
                *static_cast<const float*>(beta), c, ctype, ldc);
}
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t, int ta, int tb, int m, int n, int k, const float* alpha,
                                         const float* a, int lda, long long sa, const float* b, int ldb,
                                         long long sb, const float* beta, float* c, int ldc, long long sc,
                                         int batch) {
    for (int i = 0; i < batch; i++) {
        const cublasStatus_t s =
            gemm(ta, tb, m, n, k, *alpha, a + i * sa, R_32F, lda, b + i * sb, R_32F, ldb, *beta, c + i * sc, R_32F, ldc);
        if (s != STATUS_SUCCESS) return s;
    }
    return STATUS_SUCCESS;
}
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, int ta, int tb, int m, int n, int k, const void* alpha,
                                          const void* a, int atype, int lda, long long sa, const void* b, int btype,
                                          int ldb, long long sb, const void* beta, void* c, int ctype, int ldc,
                                          long long sc, int batch, int compute, int) {
    if (compute != 68) return STATUS_NOT_SUPPORTED;
    const size_t size = atype == R_32F ? 4 : 2;
    for (int i = 0; i < batch; i++) {
        const cublasStatus_t s = gemm(ta, tb, m, n, k, *static_cast<const float*>(alpha),
                                      static_cast<const char*>(a) + i * sa * size, atype, lda,
                                      static_cast<const char*>(b) + i * sb * size, btype, ldb,
                                      *static_cast<const float*>(beta), static_cast<char*>(c) + i * sc * size, ctype, ldc);
        if (s != STATUS_SUCCESS) return s;
    }
    return STATUS_SUCCESS;
}
}
