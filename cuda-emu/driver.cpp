// A CPU stand-in for libcuda.so: the subset of the driver API that cudarc and mla-rt call,
// with device memory in host memory and kernels run by the emulator (runtime.cpp); streams,
// events, stream capture and graphs are graph.cpp's. It keeps the driver's rules that matter
// for finding bugs: launch limits, the 48 KiB dynamic shared memory default unless a kernel
// opts in, out-of-memory, and fresh allocations that hold garbage (here NaN bytes); it adds a
// guard after every allocation and reports kernels that write past an end.
#include <sanitizer/asan_interface.h>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include "driver.h"

typedef int CUdevice;
typedef void* CUcontext;
typedef void* CUmodule;
typedef void* CUmemoryPool;

namespace {
const size_t TOTAL_MEMORY = (size_t)8 << 30;
const int MULTIPROCESSORS = 132;
const int SHARED_OPTIN = 232448;  // an H100's opt-in dynamic shared memory per block
const int SHARED_DEFAULT = 48 << 10;
const size_t GUARD = 256;
const unsigned char POISON = 0xff;

std::map<CUdeviceptr, size_t> allocations;  // base → bytes asked for
size_t allocated = 0;
int context_token, pool_token;

// A loaded module: its functions, each with its own attributes (as on a device, where a
// function's shared-memory opt-in belongs to the module it was looked up in).
struct EmuModule {
    std::map<std::string, EmuFunction> functions;
};

bool guard_intact(CUdeviceptr base, size_t bytes) {
#if defined(__SANITIZE_ADDRESS__)
    return true;  // the guard is poisoned: AddressSanitizer reports any access to it
#endif
    const unsigned char* g = reinterpret_cast<const unsigned char*>(base) + bytes;
    for (size_t i = 0; i < GUARD; i++)
        if (g[i] != POISON) return false;
    return true;
}

// The allocation holding `p`, if any.
const std::pair<const CUdeviceptr, size_t>* owner(CUdeviceptr p) {
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return nullptr;
    --it;
    return p < it->first + it->second + GUARD ? &*it : nullptr;
}
}  // namespace

namespace emu {
std::recursive_mutex& driver_lock() {
    static std::recursive_mutex lock;
    return lock;
}

CUresult device_alloc(CUdeviceptr* out, size_t bytes) {
    std::lock_guard<std::recursive_mutex> g(driver_lock());
    if (bytes > TOTAL_MEMORY - allocated) return CUDA_ERROR_OUT_OF_MEMORY;
    void* p = aligned_alloc(256, (bytes + GUARD + 255) / 256 * 256);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    memset(p, POISON, bytes + GUARD);
    ASAN_POISON_MEMORY_REGION(static_cast<char*>(p) + bytes, GUARD);
    *out = reinterpret_cast<CUdeviceptr>(p);
    allocations[*out] = bytes;
    allocated += bytes;
    return CUDA_SUCCESS;
}

CUresult device_free(CUdeviceptr p) {
    std::lock_guard<std::recursive_mutex> g(driver_lock());
    auto it = allocations.find(p);
    if (it == allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    if (!guard_intact(it->first, it->second)) {
        fprintf(stderr, "cuda-emu: a kernel wrote past the end of a %zu-byte allocation (found when freeing it)\n",
                it->second);
        abort();
    }
    ASAN_UNPOISON_MEMORY_REGION(reinterpret_cast<char*>(p) + it->second, GUARD);
    allocated -= it->second;
    allocations.erase(it);
    free(reinterpret_cast<void*>(p));
    return CUDA_SUCCESS;
}

void poison(CUdeviceptr p, size_t bytes) { memset(reinterpret_cast<void*>(p), POISON, bytes); }

CUresult check_launch(const KernelLaunch& k) {
    const dim3 &grid = k.grid, &block = k.block;
    const size_t threads = (size_t)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu ||
        threads == 0 || block.x > 1024 || block.y > 1024 || block.z > 64) {
        fprintf(stderr, "cuda-emu: %s launched with grid (%u,%u,%u) and block (%u,%u,%u)\n", k.f->name.c_str(), grid.x,
                grid.y, grid.z, block.x, block.y, block.z);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (threads > 1024) return CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES;
    if ((int)k.shared > k.f->max_dynamic_shared) {
        fprintf(stderr, "cuda-emu: %s asks for %u bytes of dynamic shared memory but may use %d\n", k.f->name.c_str(),
                k.shared, k.f->max_dynamic_shared);
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult launch_kernel(const KernelLaunch& k, void** params) {
    std::lock_guard<std::recursive_mutex> g(driver_lock());
    if (CUresult r = check_launch(k)) return r;
    const EmuFunction* f = k.f;
    const std::string error = f->entry->launch(f->entry->fn, params, LaunchDims{k.grid, k.block, k.shared});
    if (!error.empty()) {
        fprintf(stderr, "cuda-emu: kernel %s failed: %s\n", f->name.c_str(), error.c_str());
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    // Parameters that point into an allocation — pointers, and the 8-byte-aligned words of a
    // params struct that hold one — must not have been written past the allocation's end.
    for (size_t i = 0; i < f->entry->params; i++) {
        const bool pointer = f->entry->is_pointer[i];
        const size_t words = pointer ? 1 : f->entry->bytes[i] / sizeof(CUdeviceptr);
        for (size_t w = 0; w < words; w++) {
            CUdeviceptr value;
            memcpy(&value, static_cast<const char*>(params[i]) + w * sizeof value, sizeof value);
            const auto* a = owner(value);
            if (a && !guard_intact(a->first, a->second)) {
                fprintf(stderr, "cuda-emu: kernel %s wrote past the end of a %zu-byte allocation (parameter %zu)\n",
                        f->name.c_str(), a->second, i);
                return CUDA_ERROR_LAUNCH_FAILED;
            }
        }
    }
    return CUDA_SUCCESS;
}
}  // namespace emu

extern "C" {
CUresult cuInit(unsigned) { return CUDA_SUCCESS; }
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *d = 0;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, len, "cuda-emu (CPU emulation of an sm_90 GPU)");
    return CUDA_SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice) {
    *bytes = TOTAL_MEMORY;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetAttribute(int* v, int attribute, CUdevice) {
    switch (attribute) {
        case 1: *v = 1024; break;            // max threads per block
        case 8: *v = SHARED_DEFAULT; break;  // shared memory per block
        case 10: *v = 32; break;             // warp size
        case 16: *v = MULTIPROCESSORS; break;
        case 75: *v = 9; break;  // compute capability
        case 76: *v = 0; break;
        case 97: *v = SHARED_OPTIN; break;
        case 115: *v = 1; break;  // memory pools
        default: *v = 0;
    }
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice) {
    *c = &context_token;
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return CUDA_SUCCESS; }
CUresult cuCtxSetCurrent(CUcontext) { return CUDA_SUCCESS; }
CUresult cuCtxGetCurrent(CUcontext* c) {
    *c = &context_token;
    return CUDA_SUCCESS;
}
// Stream-ordered calls run now or are captured (graph.cpp); the synchronous ones are among
// those the driver forbids during a capture.
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    if (CUresult r = emu::unsafe_call("cuMemAlloc_v2", false)) return r;
    return emu::device_alloc(p, bytes);
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream s) { return emu::enqueue_alloc(s, p, bytes); }
CUresult cuMemFree_v2(CUdeviceptr p) {
    if (CUresult r = emu::unsafe_call("cuMemFree_v2", false)) return r;
    return emu::free_now(p);
}
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { return emu::enqueue_free(s, p); }
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::recursive_mutex> g(emu::driver_lock());
    *free_bytes = TOTAL_MEMORY - allocated;
    *total = TOTAL_MEMORY;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice) {
    *pool = &pool_token;
    return CUDA_SUCCESS;
}
CUresult cuMemPoolSetAttribute(CUmemoryPool, int, void*) { return CUDA_SUCCESS; }
CUresult cuMemPoolGetAttribute(CUmemoryPool, int, void* v) {
    memset(v, 0, 8);
    return CUDA_SUCCESS;
}
CUresult cuMemPoolTrimTo(CUmemoryPool, size_t) { return CUDA_SUCCESS; }
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned) {
    if (CUresult r = emu::unsafe_call("cuMemHostAlloc", false)) return r;
    *p = malloc(bytes ? bytes : 1);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemFreeHost(void* p) {
    if (CUresult r = emu::unsafe_call("cuMemFreeHost", false)) return r;
    free(p);
    return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t bytes) {
    if (CUresult r = emu::unsafe_call("cuMemcpyHtoD_v2", true)) return r;
    memcpy(reinterpret_cast<void*>(dst), src, bytes);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t bytes, CUstream s) {
    return emu::enqueue_copy(s, reinterpret_cast<void*>(dst), src, bytes);
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t bytes) {
    if (CUresult r = emu::unsafe_call("cuMemcpyDtoH_v2", true)) return r;
    memcpy(dst, reinterpret_cast<const void*>(src), bytes);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t bytes, CUstream s) {
    return emu::enqueue_copy(s, dst, reinterpret_cast<const void*>(src), bytes);
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    if (CUresult r = emu::unsafe_call("cuMemcpyDtoD_v2", true)) return r;
    memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream s) {
    return emu::enqueue_copy(s, reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
}
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    if (CUresult r = emu::unsafe_call("cuMemsetD8_v2", true)) return r;
    memset(reinterpret_cast<void*>(dst), v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) {
    return emu::enqueue_set(s, reinterpret_cast<void*>(dst), v, n, 1);
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, CUstream s) {
    return emu::enqueue_set(s, reinterpret_cast<void*>(dst), v, n, 4);
}

// The image (build.rs's fatbin) is not read: kernels are looked up by name among those this
// library was compiled with, from the same kernels/**/*.cu sources.
CUresult cuModuleLoadData(CUmodule* m, const void*) {
    *m = new EmuModule;
    return CUDA_SUCCESS;
}
CUresult cuModuleUnload(CUmodule m) {
    std::lock_guard<std::recursive_mutex> g(emu::driver_lock());
    delete static_cast<EmuModule*>(m);
    return CUDA_SUCCESS;
}
CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    std::lock_guard<std::recursive_mutex> g(emu::driver_lock());
    const emu::KernelEntry* entry = emu::find_kernel(name);
    if (!entry) return CUDA_ERROR_NOT_FOUND;
    auto& functions = static_cast<EmuModule*>(m)->functions;
    auto it = functions.emplace(name, EmuFunction{entry, name, SHARED_DEFAULT}).first;
    *f = &it->second;
    return CUDA_SUCCESS;
}
CUresult cuFuncSetAttribute(CUfunction f, int attribute, int value) {
    if (attribute == 8) {  // max dynamic shared size
        if (value < 0 || value > SHARED_OPTIN) return CUDA_ERROR_INVALID_VALUE;
        f->max_dynamic_shared = value;
    } else if (attribute == 9) {  // preferred shared memory carveout: a percentage, or -1
        if (value < -1 || value > 100) return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}
CUresult cuFuncGetAttribute(int* v, int attribute, CUfunction f) {
    *v = attribute == 8 ? f->max_dynamic_shared : attribute == 0 ? 1024 : 0;
    return CUDA_SUCCESS;
}

// Checks what the device's encoder checks for the maps the kernels use (2-D, bf16 or f32, no
// interleave, no swizzle or the 128-byte one) and writes the fields bulk_copy_box reads.
CUresult cuTensorMapEncodeTiled(void* map, int data_type, unsigned rank, void* address, const uint64_t* dims,
                                const uint64_t* strides, const uint32_t* box, const uint32_t* element_strides,
                                int interleave, int swizzle, int, int) {
    const uint32_t element_bytes = data_type == 9 ? 2 : data_type == 7 ? 4 : 0;  // BFLOAT16, FLOAT32
    if (rank != 2 || element_bytes == 0 || interleave != 0 || (swizzle != 0 && swizzle != 3))
        return CUDA_ERROR_INVALID_VALUE;
    if (reinterpret_cast<uintptr_t>(map) % 64 != 0 || reinterpret_cast<uintptr_t>(address) % 16 != 0)
        return CUDA_ERROR_INVALID_VALUE;
    const uint32_t swizzle_bytes = swizzle == 3 ? 128 : 0;
    for (int d = 0; d < 2; d++)
        if (dims[d] == 0 || dims[d] > (1ull << 32) || box[d] == 0 || box[d] > 256 || element_strides[d] != 1)
            return CUDA_ERROR_INVALID_VALUE;
    const uint64_t line = (uint64_t)box[0] * element_bytes;
    if (strides[0] % 16 != 0 || strides[0] < dims[0] * element_bytes || line % 16 != 0 ||
        (swizzle_bytes != 0 && line > swizzle_bytes))
        return CUDA_ERROR_INVALID_VALUE;
    {
        std::lock_guard<std::recursive_mutex> g(emu::driver_lock());
        // The tensor must lie in one allocation, as every address the copies read must be mapped.
        auto it = allocations.upper_bound(reinterpret_cast<CUdeviceptr>(address));
        if (it == allocations.begin()) return CUDA_ERROR_INVALID_VALUE;
        --it;
        const uint64_t end = reinterpret_cast<CUdeviceptr>(address) + (dims[1] - 1) * strides[0] + dims[0] * element_bytes;
        if (end > it->first + it->second) return CUDA_ERROR_INVALID_VALUE;
    }
    emu::TensorMapFields f{emu::TENSOR_MAP_MAGIC, static_cast<const unsigned char*>(address), {dims[0], dims[1]},
                           strides[0], {box[0], box[1]}, element_bytes, swizzle_bytes};
    memset(map, 0, 128);
    memcpy(map, &f, sizeof f);
    return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, CUstream s, void** params, void** extra) {
    if (extra) return CUDA_ERROR_INVALID_VALUE;
    return emu::enqueue_kernel(s, emu::KernelLaunch{f, dim3{gx, gy, gz}, dim3{bx, by, bz}, shared}, params);
}

// cuLaunchKernelEx's configuration, laid out as cuda.h's CUlaunchConfig and CUlaunchAttribute.
struct CUlaunchAttribute {
    int id;
    char pad[4];
    union {
        char bytes[64];
        int flag;
    } value;
};
struct CUlaunchConfig {
    unsigned gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
    CUstream hStream;
    CUlaunchAttribute* attrs;
    unsigned numAttrs;
};
static_assert(sizeof(CUlaunchAttribute) == 72 && offsetof(CUlaunchConfig, hStream) == 32 &&
                  offsetof(CUlaunchConfig, attrs) == 40 && offsetof(CUlaunchConfig, numAttrs) == 48,
              "cuda.h's layout");

// Only the attribute the runtime uses: a programmatic dependent launch, which here (kernels run
// one after another) sees its prerequisite kernel finished, as it does after griddepcontrol.wait.
CUresult cuLaunchKernelEx(const CUlaunchConfig* c, CUfunction f, void** params, void** extra) {
    const int programmatic_stream_serialization = 6;
    for (unsigned i = 0; i < c->numAttrs; i++) {
        const CUlaunchAttribute& a = c->attrs[i];
        if (a.id != programmatic_stream_serialization || (a.value.flag != 0 && a.value.flag != 1)) {
            fprintf(stderr, "cuda-emu: %s launched with attribute %d = %d\n", f->name.c_str(), a.id, a.value.flag);
            return CUDA_ERROR_INVALID_VALUE;
        }
    }
    return cuLaunchKernel(f, c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, c->blockDimY, c->blockDimZ,
                          c->sharedMemBytes, c->hStream, params, extra);
}

CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
#define EMU_ERROR_NAME(name) \
    case name: *s = #name; break;
        EMU_ERROR_NAME(CUDA_SUCCESS)
        EMU_ERROR_NAME(CUDA_ERROR_INVALID_VALUE)
        EMU_ERROR_NAME(CUDA_ERROR_OUT_OF_MEMORY)
        EMU_ERROR_NAME(CUDA_ERROR_INVALID_DEVICE)
        EMU_ERROR_NAME(CUDA_ERROR_INVALID_HANDLE)
        EMU_ERROR_NAME(CUDA_ERROR_ILLEGAL_STATE)
        EMU_ERROR_NAME(CUDA_ERROR_NOT_FOUND)
        EMU_ERROR_NAME(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)
        EMU_ERROR_NAME(CUDA_ERROR_LAUNCH_FAILED)
        EMU_ERROR_NAME(CUDA_ERROR_NOT_SUPPORTED)
        EMU_ERROR_NAME(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
        EMU_ERROR_NAME(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED)
        EMU_ERROR_NAME(CUDA_ERROR_STREAM_CAPTURE_MERGE)
        EMU_ERROR_NAME(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED)
        EMU_ERROR_NAME(CUDA_ERROR_STREAM_CAPTURE_ISOLATION)
        EMU_ERROR_NAME(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT)
        EMU_ERROR_NAME(CUDA_ERROR_CAPTURED_EVENT)
        EMU_ERROR_NAME(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD)
#undef EMU_ERROR_NAME
        default: *s = "CUDA_ERROR_UNKNOWN";
    }
    return CUDA_SUCCESS;
}
CUresult cuGetErrorString(CUresult e, const char** s) { return cuGetErrorName(e, s); }
}
