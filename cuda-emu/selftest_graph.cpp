// cuda-emu checking its stream capture and graphs through the driver's entry points (graph.cpp,
// driver.cpp, and cublas.cpp's GEMMs): captured work does not run, replays run it with the
// arguments of the capture and the host memory of the replay, what the driver forbids during a
// capture fails and invalidates it, and a graph's memory lives as long as the driver says.
// selftest.cpp's main runs it.
#include <fcntl.h>
#include <unistd.h>
#include <cstdio>
#include "driver.h"

typedef struct EmuGraph* CUgraph;
typedef struct EmuGraphExec* CUgraphExec;
struct EmuBlasHandle;
extern "C" {
CUresult cuModuleGetFunction(CUfunction* f, void* module, const char* name);
CUresult cuModuleLoadData(void** module, const void* image);

// The module the cases look their kernels up in (the image is not read).
void* test_module() {
    static void* module = [] {
        void* m = nullptr;
        cuModuleLoadData(&m, nullptr);
        return m;
    }();
    return module;
}
CUresult cuStreamCreate(CUstream* s, unsigned flags);
CUresult cuStreamDestroy_v2(CUstream s);
CUresult cuStreamSynchronize(CUstream s);
CUresult cuStreamBeginCapture_v2(CUstream s, int mode);
CUresult cuStreamEndCapture(CUstream s, CUgraph* graph);
CUresult cuStreamIsCapturing(CUstream s, int* status);
CUresult cuEventCreate(CUevent* e, unsigned flags);
CUresult cuEventRecord(CUevent e, CUstream s);
CUresult cuEventQuery(CUevent e);
CUresult cuEventDestroy_v2(CUevent e);
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes);
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream s);
CUresult cuMemFree_v2(CUdeviceptr p);
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s);
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total);
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, CUstream s);
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, CUstream s);
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes);
CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, CUstream s, void** params, void** extra);
CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph graph, unsigned long long flags);
CUresult cuGraphUpload(CUgraphExec exec, CUstream s);
CUresult cuGraphLaunch(CUgraphExec exec, CUstream s);
CUresult cuGraphExecDestroy(CUgraphExec exec);
CUresult cuGraphDestroy(CUgraph graph);
unsigned long long cuda_emu_graph_launches();
int cublasCreate_v2(EmuBlasHandle** h);
int cublasDestroy_v2(EmuBlasHandle* h);
int cublasSetStream_v2(EmuBlasHandle* h, void* stream);
int cublasSgemm_v2(EmuBlasHandle* h, int ta, int tb, int m, int n, int k, const float* alpha, const float* a, int lda,
                   const float* b, int ldb, const float* beta, float* c, int ldc);
}

namespace {
int failures = 0;

// Two dependent kernels for the graph cases.
__global__ void graph_scale(const float* in, float* out, float factor) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    out[i] = in[i] * factor;
}
__global__ void graph_offset(const float* in, float* out, float offset) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    out[i] = in[i] + offset;
}
// A shuffle after a lane exited: a launch the emulator fails.
__global__ void graph_shuffle_after_exit(float* out) {
    if (threadIdx.x == 5) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

void expect_cu(const char* name, CUresult got, CUresult wanted) {
    if (got != wanted) {
        failures++;
        fprintf(stderr, "cuda-emu selftest %s: CUresult %d, want %d\n", name, got, wanted);
    }
}
void fail_if(bool failed, const char* what) {
    if (failed) {
        failures++;
        fprintf(stderr, "cuda-emu selftest %s\n", what);
    }
}

// Silences stderr while a case's expected failure reports itself.
struct Quiet {
    int saved;
    Quiet() {
        fflush(stderr);
        saved = dup(2);
        const int null = open("/dev/null", O_WRONLY);
        dup2(null, 2);
        close(null);
    }
    ~Quiet() {
        fflush(stderr);
        dup2(saved, 2);
        close(saved);
    }
};

const int GLOBAL = 0, THREAD_LOCAL = 1;  // capture modes
const int CAPTURE_NONE = 0, CAPTURE_ACTIVE = 1, CAPTURE_INVALIDATED = 2;

// A host→device copy, two dependent kernels between a graph allocation and its free, and a
// device→host copy, captured, then replayed twice with new host input: nothing runs during the
// capture, each replay reads the host buffer again, and the arguments are those of the capture.
void graph_replay(CUstream s, CUfunction scale, CUfunction offset, CUdeviceptr in, CUdeviceptr out) {
    const int n = 64;
    float host[n], result[n];
    for (int i = 0; i < n; i++) result[i] = -1.0f;
    size_t free_before, free_after, total;
    cuMemGetInfo_v2(&free_before, &total);
    const unsigned long long launches = cuda_emu_graph_launches();
    expect_cu("graph_replay begin", cuStreamBeginCapture_v2(s, THREAD_LOCAL), CUDA_SUCCESS);
    CUdeviceptr mid = 0;
    expect_cu("graph_replay alloc", cuMemAllocAsync(&mid, n * sizeof(float), s), CUDA_SUCCESS);
    expect_cu("graph_replay copy in", cuMemcpyHtoDAsync_v2(in, host, sizeof host, s), CUDA_SUCCESS);
    float factor = 2.0f, bias = 1.0f;
    void* scale_args[] = {&in, &mid, &factor};
    void* offset_args[] = {&mid, &out, &bias};
    expect_cu("graph_replay scale", cuLaunchKernel(scale, 1, 1, 1, n, 1, 1, 0, s, scale_args, nullptr), CUDA_SUCCESS);
    expect_cu("graph_replay offset", cuLaunchKernel(offset, 1, 1, 1, n, 1, 1, 0, s, offset_args, nullptr),
              CUDA_SUCCESS);
    expect_cu("graph_replay free", cuMemFreeAsync(mid, s), CUDA_SUCCESS);
    expect_cu("graph_replay copy out", cuMemcpyDtoHAsync_v2(result, out, sizeof result, s), CUDA_SUCCESS);
    factor = bias = 100.0f;  // the graph keeps the values the launches were given
    int status = -1;
    cuStreamIsCapturing(s, &status);
    fail_if(status != CAPTURE_ACTIVE, "graph_replay: the stream is not capturing");
    fail_if(result[0] != -1.0f, "graph_replay: work ran during the capture");
    CUgraph graph = nullptr;
    CUgraphExec exec = nullptr;
    expect_cu("graph_replay end", cuStreamEndCapture(s, &graph), CUDA_SUCCESS);
    expect_cu("graph_replay instantiate", cuGraphInstantiateWithFlags(&exec, graph, 0), CUDA_SUCCESS);
    expect_cu("graph_replay upload", cuGraphUpload(exec, s), CUDA_SUCCESS);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < n; i++) host[i] = (float)(i + 1000 * round);
        expect_cu("graph_replay launch", cuGraphLaunch(exec, s), CUDA_SUCCESS);
        expect_cu("graph_replay synchronize", cuStreamSynchronize(s), CUDA_SUCCESS);
        int wrong = 0;
        for (int i = 0; i < n; i++) wrong += result[i] != host[i] * 2.0f + 1.0f;
        fail_if(wrong > 0, round == 0 ? "graph_replay: first replay wrong" : "graph_replay: second replay wrong");
    }
    fail_if(cuda_emu_graph_launches() - launches != 2, "graph_replay: graph launches not counted");
    cuGraphExecDestroy(exec);
    cuGraphDestroy(graph);
    cuMemGetInfo_v2(&free_after, &total);
    fail_if(free_after != free_before, "graph_replay: the graph's memory outlived it");
}

// What the driver forbids during a capture fails and invalidates it; the stream then works
// eagerly again.
void capture_invalidated(CUstream s, CUfunction scale, CUdeviceptr in, CUdeviceptr out) {
    float factor = 2.0f, probe = -1.0f;
    void* args[] = {&in, &out, &factor};
    CUgraph graph = nullptr;
    int status = -1;
    expect_cu("sync_in_capture begin", cuStreamBeginCapture_v2(s, GLOBAL), CUDA_SUCCESS);
    expect_cu("sync_in_capture launch", cuLaunchKernel(scale, 1, 1, 1, 64, 1, 1, 0, s, args, nullptr), CUDA_SUCCESS);
    {
        Quiet q;
        expect_cu("sync_in_capture", cuStreamSynchronize(s), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    cuStreamIsCapturing(s, &status);
    fail_if(status != CAPTURE_INVALIDATED, "sync_in_capture: the capture is not invalidated");
    expect_cu("sync_in_capture later launch", cuLaunchKernel(scale, 1, 1, 1, 64, 1, 1, 0, s, args, nullptr),
              CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    expect_cu("sync_in_capture end", cuStreamEndCapture(s, &graph), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    fail_if(graph != nullptr, "sync_in_capture: an invalidated capture made a graph");
    cuStreamIsCapturing(s, &status);
    fail_if(status != CAPTURE_NONE, "sync_in_capture: the stream still captures");

    cuStreamBeginCapture_v2(s, GLOBAL);
    {
        Quiet q;
        expect_cu("copy_in_capture", cuMemcpyDtoH_v2(&probe, out, sizeof probe), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    expect_cu("copy_in_capture end", cuStreamEndCapture(s, &graph), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    fail_if(probe != -1.0f, "copy_in_capture: the copy ran");

    CUevent event;
    cuEventCreate(&event, 0);
    cuStreamBeginCapture_v2(s, THREAD_LOCAL);
    expect_cu("captured_event record", cuEventRecord(event, s), CUDA_SUCCESS);
    {
        Quiet q;
        expect_cu("captured_event query", cuEventQuery(event), CUDA_ERROR_CAPTURED_EVENT);
    }
    expect_cu("captured_event end", cuStreamEndCapture(s, &graph), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    cuEventDestroy_v2(event);

    cuStreamBeginCapture_v2(s, THREAD_LOCAL);
    {
        Quiet q;
        expect_cu("free_in_capture", cuMemFreeAsync(in, s), CUDA_ERROR_INVALID_VALUE);
    }
    expect_cu("free_in_capture end", cuStreamEndCapture(s, &graph), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    expect_cu("eager_after_capture", cuLaunchKernel(scale, 1, 1, 1, 64, 1, 1, 0, s, args, nullptr), CUDA_SUCCESS);
}

// An allocation a graph does not free outlives its launch: the graph may not run again until
// it is freed, unless instantiated to free it at each launch; it outlives the graph too.
void graph_memory_kept(CUstream s) {
    size_t free_before, free_after, total;
    cuMemGetInfo_v2(&free_before, &total);
    CUgraph graph = nullptr;
    CUgraphExec exec = nullptr, second = nullptr;
    CUdeviceptr kept = 0;
    cuStreamBeginCapture_v2(s, THREAD_LOCAL);
    expect_cu("graph_memory alloc", cuMemAllocAsync(&kept, 256, s), CUDA_SUCCESS);
    expect_cu("graph_memory end", cuStreamEndCapture(s, &graph), CUDA_SUCCESS);
    expect_cu("graph_memory instantiate", cuGraphInstantiateWithFlags(&exec, graph, 0), CUDA_SUCCESS);
    {
        Quiet q;
        expect_cu("graph_memory second exec", cuGraphInstantiateWithFlags(&second, graph, 0), CUDA_ERROR_INVALID_VALUE);
        expect_cu("graph_memory launch", cuGraphLaunch(exec, s), CUDA_SUCCESS);
        expect_cu("graph_memory launch unfreed", cuGraphLaunch(exec, s), CUDA_ERROR_INVALID_VALUE);
        expect_cu("graph_memory free", cuMemFreeAsync(kept, s), CUDA_SUCCESS);
        expect_cu("graph_memory free twice", cuMemFree_v2(kept), CUDA_ERROR_INVALID_VALUE);
        expect_cu("graph_memory launch freed", cuGraphLaunch(exec, s), CUDA_SUCCESS);
    }
    cuGraphExecDestroy(exec);
    expect_cu("graph_memory auto-free instantiate", cuGraphInstantiateWithFlags(&exec, graph, 1), CUDA_SUCCESS);
    expect_cu("graph_memory auto-free launch", cuGraphLaunch(exec, s), CUDA_SUCCESS);
    cuGraphExecDestroy(exec);
    cuGraphDestroy(graph);
    expect_cu("graph_memory free after the graph", cuMemFree_v2(kept), CUDA_SUCCESS);
    cuMemGetInfo_v2(&free_after, &total);
    fail_if(free_after != free_before, "graph_memory: memory not released");
}

// A cuBLAS GEMM on a capturing stream is recorded, and replays with the operands of its launch.
void gemm_replay(CUstream s) {
    CUdeviceptr da, db, dc;
    cuMemAlloc_v2(&da, 4 * sizeof(float));
    cuMemAlloc_v2(&db, 4 * sizeof(float));
    cuMemAlloc_v2(&dc, 4 * sizeof(float));
    float* a = reinterpret_cast<float*>(da);
    float* b = reinterpret_cast<float*>(db);
    float* c = reinterpret_cast<float*>(dc);
    for (int i = 0; i < 4; i++) a[i] = b[i] = (float)(i + 1);
    EmuBlasHandle* h;
    cublasCreate_v2(&h);
    cublasSetStream_v2(h, s);
    const float one = 1.0f, zero = 0.0f;
    CUgraph graph = nullptr;
    CUgraphExec exec = nullptr;
    cuStreamBeginCapture_v2(s, THREAD_LOCAL);
    expect_cu("gemm_replay gemm", cublasSgemm_v2(h, 0, 0, 2, 2, 2, &one, a, 2, b, 2, &zero, c, 2), 0);
    expect_cu("gemm_replay end", cuStreamEndCapture(s, &graph), CUDA_SUCCESS);
    fail_if(c[0] == c[0], "gemm_replay: the GEMM ran during the capture");
    cuGraphInstantiateWithFlags(&exec, graph, 0);
    for (int i = 0; i < 4; i++) a[i] = (float)(10 * i);
    expect_cu("gemm_replay launch", cuGraphLaunch(exec, s), CUDA_SUCCESS);
    int wrong = 0;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) wrong += c[i + 2 * j] != a[i] * b[2 * j] + a[i + 2] * b[1 + 2 * j];
    fail_if(wrong > 0, "gemm_replay: wrong product");
    cuGraphExecDestroy(exec);
    cuGraphDestroy(graph);
    cublasDestroy_v2(h);
    cuMemFree_v2(da);
    cuMemFree_v2(db);
    cuMemFree_v2(dc);
}

// A kernel that fails when its graph replays is reported as an eager launch is.
void graph_kernel_fails(CUstream s, CUdeviceptr out) {
    CUfunction failing;
    expect_cu("graph_kernel_fails", cuModuleGetFunction(&failing, test_module(), "graph_shuffle_after_exit"), CUDA_SUCCESS);
    void* args[] = {&out};
    CUgraph graph = nullptr;
    CUgraphExec exec = nullptr;
    cuStreamBeginCapture_v2(s, THREAD_LOCAL);
    expect_cu("graph_kernel_fails capture", cuLaunchKernel(failing, 1, 1, 1, 32, 1, 1, 0, s, args, nullptr),
              CUDA_SUCCESS);
    cuStreamEndCapture(s, &graph);
    cuGraphInstantiateWithFlags(&exec, graph, 0);
    {
        Quiet q;
        expect_cu("graph_kernel_fails launch", cuGraphLaunch(exec, s), CUDA_ERROR_LAUNCH_FAILED);
    }
    cuGraphExecDestroy(exec);
    cuGraphDestroy(graph);
}

void graph_cases() {
    CUfunction scale, offset;
    expect_cu("graph_scale", cuModuleGetFunction(&scale, test_module(), "graph_scale"), CUDA_SUCCESS);
    expect_cu("graph_offset", cuModuleGetFunction(&offset, test_module(), "graph_offset"), CUDA_SUCCESS);
    CUstream s;
    cuStreamCreate(&s, 1);
    CUdeviceptr in, out;
    cuMemAlloc_v2(&in, 64 * sizeof(float));
    cuMemAlloc_v2(&out, 64 * sizeof(float));
    graph_replay(s, scale, offset, in, out);
    capture_invalidated(s, scale, in, out);
    graph_memory_kept(s);
    gemm_replay(s);
    graph_kernel_fails(s, out);
    cuMemFree_v2(in);
    cuMemFree_v2(out);
    cuStreamDestroy_v2(s);
}
}  // namespace

EMU_REGISTER(graph_scale)
EMU_REGISTER(graph_offset)
EMU_REGISTER(graph_shuffle_after_exit)

int graph_selftest() {
    graph_cases();
    return failures;
}
