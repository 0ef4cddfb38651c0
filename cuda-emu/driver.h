// What the fake driver's two halves share: driver.cpp (device, memory, modules, launches) and
// graph.cpp (streams, events, stream capture and graphs). The handle types and error codes are
// cuda.h's; a CUstream is an EmuStream (graph.cpp), a CUfunction an EmuFunction.
#pragma once
#include <cstddef>
#include <mutex>
#include <string>
#include "runtime.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef struct EmuStream* CUstream;
typedef struct EmuFunction* CUfunction;
typedef struct EmuEvent* CUevent;

// cuda.h's values, for the errors the emulator returns.
enum : int {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_ILLEGAL_STATE = 401,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_STREAM_CAPTURE_MERGE = 902,
    CUDA_ERROR_STREAM_CAPTURE_UNMATCHED = 903,
    CUDA_ERROR_STREAM_CAPTURE_ISOLATION = 905,
    CUDA_ERROR_STREAM_CAPTURE_IMPLICIT = 906,
    CUDA_ERROR_CAPTURED_EVENT = 907,
    CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD = 908,
};

struct EmuFunction {
    const emu::KernelEntry* entry;
    std::string name;
    int max_dynamic_shared;
};

namespace emu {
// driver.cpp. One lock for the allocations, the running grid, the streams and the graphs.
std::recursive_mutex& driver_lock();
// Device memory: fresh allocations hold NaN bytes, with a guard after each.
CUresult device_alloc(CUdeviceptr* out, size_t bytes);
CUresult device_free(CUdeviceptr p);
void poison(CUdeviceptr p, size_t bytes);  // NaN bytes, as a fresh allocation holds

struct KernelLaunch {
    CUfunction f;
    dim3 grid, block;
    unsigned shared;
};
// The launch's configuration against the device's limits (a line on stderr if not).
CUresult check_launch(const KernelLaunch& k);
// Checks and runs a launch with the argument values `params` points to, then the guards of
// the allocations its pointers reach: an eager launch and a replayed one alike.
CUresult launch_kernel(const KernelLaunch& k, void** params);

// graph.cpp: work on a stream, run now or, while the stream captures, recorded into its graph.
CUresult enqueue_kernel(CUstream s, const KernelLaunch& k, void** params);
CUresult enqueue_copy(CUstream s, void* dst, const void* src, size_t bytes);
CUresult enqueue_set(CUstream s, void* dst, unsigned value, size_t count, size_t width);
CUresult enqueue_alloc(CUstream s, CUdeviceptr* out, size_t bytes);
CUresult enqueue_free(CUstream s, CUdeviceptr p);
// cuMemFree_v2, or a stream-ordered free run now: graph memory too.
CUresult free_now(CUdeviceptr p);
// Before a call the driver forbids during a capture (a synchronous copy, cuMemAlloc_v2, event
// queries): the error, with the captures it invalidates, or CUDA_SUCCESS. `legacy_stream`: the
// call is work on the legacy stream (a synchronous copy or set).
CUresult unsafe_call(const char* what, bool legacy_stream);
}  // namespace emu
