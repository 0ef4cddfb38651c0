// Streams, events, stream capture and graphs. Streams are synchronous: work enqueued on one runs
// at once, unless the stream captures, and then it is recorded into the capture's graph instead:
// a kernel with a copy of its argument values, a copy or set with its addresses (read again at
// each replay), an allocation, a free, a host function. cuGraphLaunch replays the nodes in order
// through the same paths as eager work, so every check still applies. What would wait for a
// capturing stream fails and invalidates the capture, as on the device.
#include <sanitizer/asan_interface.h>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>
#include "driver.h"

typedef struct EmuGraph* CUgraph;
typedef struct EmuGraphExec* CUgraphExec;
extern "C" CUresult cuGetErrorName(CUresult e, const char** s);

namespace {
const unsigned STREAM_NON_BLOCKING = 1, EVENT_WAIT_EXTERNAL = 1;
enum : int { MODE_GLOBAL = 0, MODE_THREAD_LOCAL = 1, MODE_RELAXED = 2 };
enum : int { STATUS_NONE = 0, STATUS_ACTIVE = 1, STATUS_INVALIDATED = 2 };
const unsigned long long AUTO_FREE_ON_LAUNCH = 1, DEVICE_LAUNCH = 4, KNOWN_INSTANTIATE_FLAGS = 15;
struct Capture;
struct Recording;
}  // namespace

struct EmuStream {
    unsigned flags;
    Capture* capture = nullptr;  // the capture it records into, if any
};
struct EmuEvent {
    std::chrono::steady_clock::time_point at;
    unsigned long long capture = 0;  // the capture it was last recorded in, if it was
};

namespace {
// An allocation made during a capture: its address is the graph's for the graph's lifetime.
// Each launch allocates it anew (NaN bytes again); freed in the graph, it lives until its free
// node, else until the caller frees it (cuMemFreeAsync or cuMemFree_v2) after the launch.
struct GraphMemory {
    CUdeviceptr base;
    size_t bytes;
    const Recording* graph;
    bool freed_in_graph;  // the capture freed it too
    bool live;            // a launch allocated it and nothing has freed it since
};

// One recorded operation (or one run now: eager work goes through the same nodes).
struct Node {
    enum Kind { Kernel, Copy, Set, Alloc, Free, Host, Graph } kind;
    emu::KernelLaunch launch{};
    void** params = nullptr;    // a kernel's argument pointers: the caller's, or into `args`
    void* args = nullptr;       // a recorded kernel's copy of its argument values
    void (*free_args)(void*) = nullptr;  // releases `args` (from the kernel's static entry)
    std::vector<void*> copies;  // pointers into `args`
    void* dst = nullptr;        // a copy's or set's destination
    const void* src = nullptr;  // a copy's source
    size_t count = 0;           // a copy's bytes, a set's elements
    size_t width = 1;           // a set's element size
    unsigned value = 0;
    GraphMemory* memory = nullptr;  // an allocation's or free's memory
    void (*fn)(void*) = nullptr;    // a host function and its data, which it owns if `drop` is given
    void* data = nullptr;
    void (*drop)(void*) = nullptr;
    std::shared_ptr<Recording> graph;  // a launched graph, and its exec's flags
    unsigned long long flags = 0;

    explicit Node(Kind k) : kind(k) {}
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;
    ~Node() {
        if (args) free_args(args);
        if (drop) drop(data);
    }
};

// A captured graph: its nodes in the order they were enqueued, and the memory it allocated.
// Shared by the CUgraph and the execs instantiated from it; the last to go frees it.
struct Recording {
    std::vector<std::unique_ptr<Node>> nodes;
    std::vector<std::unique_ptr<GraphMemory>> memory;
    int execs = 0;
    ~Recording();
};

struct Capture {
    unsigned long long id;
    int mode;
    std::thread::id thread;  // the thread that began it
    EmuStream* origin;
    std::vector<EmuStream*> streams;  // the origin, then streams that joined by waiting on its events
    bool invalidated;
    std::shared_ptr<Recording> graph;
};

// All of this under emu::driver_lock().
std::vector<Capture*> captures;  // the captures under way
unsigned long long next_capture = 1;
std::map<CUdeviceptr, GraphMemory*> graph_memory;  // every graph's allocations, by address
std::atomic<unsigned long long> graph_launches{0};
EmuStream legacy_stream{0}, per_thread_stream{0};
thread_local int exchanged_mode = -1;  // cuThreadExchangeStreamCaptureMode's, if set

typedef std::lock_guard<std::recursive_mutex> Locked;

EmuStream* stream_of(CUstream s) {
    const uintptr_t v = reinterpret_cast<uintptr_t>(s);  // 0 and CU_STREAM_LEGACY; CU_STREAM_PER_THREAD
    return v == 0 || v == 1 ? &legacy_stream : v == 2 ? &per_thread_stream : s;
}

// A graph allocation allocated (by a launch) or freed: NaN bytes either way, and under
// AddressSanitizer poisoned while not allocated, so that any access then is reported.
void set_live(GraphMemory& m, bool live) {
    void* p = reinterpret_cast<void*>(m.base);
    if (live) ASAN_UNPOISON_MEMORY_REGION(p, m.bytes);
    emu::poison(m.base, m.bytes);
    if (!live) ASAN_POISON_MEMORY_REGION(p, m.bytes);
    m.live = live;
}

// Marks `c` invalidated (with a line on stderr the first time, naming what did it) and
// returns `error`.
CUresult invalidate(Capture* c, CUresult error, const std::string& what) {
    if (!c->invalidated) {
        const char* name;
        cuGetErrorName(error, &name);
        fprintf(stderr, "cuda-emu: %s (%s): the stream capture is invalidated\n", what.c_str(), name);
    }
    c->invalidated = true;
    return error;
}

Capture* active_capture(unsigned long long id) {
    for (Capture* c : captures)
        if (c->id == id) return c;
    return nullptr;
}

// Whether work on the legacy stream would wait for `c` (a stream in it is a blocking one).
bool blocking(const Capture* c) {
    for (const EmuStream* s : c->streams)
        if (!(s->flags & STREAM_NON_BLOCKING)) return true;
    return false;
}

// The legacy stream orders with every blocking stream: work on it, or waiting for it, would
// depend on a capture of one.
CUresult legacy_stream_use(const char* what, CUresult error) {
    CUresult result = CUDA_SUCCESS;
    for (Capture* c : captures)
        if (blocking(c))
            result = invalidate(c, error, std::string(what) + " on the legacy stream while a blocking stream captures");
    return result;
}

// Where work enqueued on `s` goes: *into = the capture that records it, or null to run it now;
// or the error for a stream that takes no work now.
CUresult route(EmuStream* s, const char* what, Capture** into) {
    *into = nullptr;
    if (Capture* c = s->capture) {
        if (c->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        *into = c;
        return CUDA_SUCCESS;
    }
    return s == &legacy_stream ? legacy_stream_use(what, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT) : CUDA_SUCCESS;
}

CUresult replay(Recording& g, unsigned long long flags);

CUresult run(const Node& n) {
    switch (n.kind) {
        case Node::Kernel: return emu::launch_kernel(n.launch, n.params);
        case Node::Copy: memmove(n.dst, n.src, n.count); break;
        case Node::Set:
            if (n.width == 1) memset(n.dst, (int)n.value, n.count);
            else
                for (size_t i = 0; i < n.count; i++) memcpy(static_cast<char*>(n.dst) + i * 4, &n.value, 4);
            break;
        case Node::Alloc:
        case Node::Free: {
            Locked g(emu::driver_lock());
            set_live(*n.memory, n.kind == Node::Alloc);
            break;
        }
        case Node::Host: n.fn(n.data); break;
        case Node::Graph: return replay(*n.graph, n.flags);
    }
    return CUDA_SUCCESS;
}

// Runs `n` now, or records it if its stream captures (a kernel with a copy of its arguments,
// once its configuration checks out: a bad one invalidates the capture).
CUresult submit(CUstream stream, std::unique_ptr<Node> n, const char* what) {
    {
        Locked g(emu::driver_lock());
        Capture* c;
        if (CUresult r = route(stream_of(stream), what, &c)) return r;
        if (c) {
            if (n->kind == Node::Kernel) {
                if (CUresult r = emu::check_launch(n->launch))
                    return invalidate(c, r, std::string(what) + " of " + n->launch.f->name);
                const emu::KernelEntry* entry = n->launch.f->entry;
                n->copies.resize(entry->params);
                n->args = entry->copy_args(n->params, n->copies.data());
                n->free_args = entry->free_args;
                n->params = n->copies.data();
            }
            c->graph->nodes.push_back(std::move(n));
            return CUDA_SUCCESS;
        }
    }
    return run(*n);
}

// A graph's launch: its memory from the last launch must have been freed (or is freed now with
// AUTO_FREE_ON_LAUNCH), then its nodes run in order; the first failure stops it.
CUresult replay(Recording& g, unsigned long long flags) {
    {
        Locked l(emu::driver_lock());
        for (const auto& m : g.memory)
            if (!m->freed_in_graph && m->live) {
                if (!(flags & AUTO_FREE_ON_LAUNCH)) {
                    fprintf(stderr, "cuda-emu: cuGraphLaunch: the graph's %zu-byte allocation from its last launch is "
                                    "not freed (free it, or instantiate with AUTO_FREE_ON_LAUNCH)\n", m->bytes);
                    return CUDA_ERROR_INVALID_VALUE;
                }
                set_live(*m, false);
            }
    }
    graph_launches++;
    for (size_t i = 0; i < g.nodes.size(); i++)
        if (CUresult r = run(*g.nodes[i])) {
            fprintf(stderr, "cuda-emu: a graph launch stopped at its node %zu of %zu\n", i + 1, g.nodes.size());
            return r;
        }
    return CUDA_SUCCESS;
}

Recording::~Recording() {
    Locked g(emu::driver_lock());
    nodes.clear();
    for (const auto& m : memory) {
        graph_memory.erase(m->base);
        // Allocated by a launch and not yet freed, it outlives the graph as the caller's.
        if (m->live && !m->freed_in_graph) continue;
        ASAN_UNPOISON_MEMORY_REGION(reinterpret_cast<void*>(m->base), m->bytes);
        emu::device_free(m->base);
    }
}

// Leaves the capture, and every stream in it with it.
void end(Capture* c) {
    for (EmuStream* s : c->streams) s->capture = nullptr;
    for (size_t i = 0; i < captures.size(); i++)
        if (captures[i] == c) captures.erase(captures.begin() + i);
    delete c;
}

// Waiting for a capturing stream, or for the legacy stream while a blocking stream captures.
CUresult wait_for(CUstream handle, const char* what) {
    Locked g(emu::driver_lock());
    EmuStream* s = stream_of(handle);
    if (Capture* c = s->capture)
        return invalidate(c, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, std::string(what) + " of a capturing stream");
    return s == &legacy_stream ? legacy_stream_use(what, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED) : CUDA_SUCCESS;
}

// An error if `e` was last recorded in a capture (it stands for no work that will complete),
// invalidating that capture if it is still under way.
CUresult captured_event(const EmuEvent* e, const char* what) {
    if (!e->capture) return CUDA_SUCCESS;
    if (Capture* c = active_capture(e->capture))
        return invalidate(c, CUDA_ERROR_CAPTURED_EVENT, std::string(what) + " of an event recorded in the capture");
    return CUDA_ERROR_CAPTURED_EVENT;
}
}  // namespace

struct EmuGraph {
    std::shared_ptr<Recording> recording;
};
struct EmuGraphExec {
    std::shared_ptr<Recording> recording;
    unsigned long long flags;
};

namespace emu {
CUresult enqueue_kernel(CUstream s, const KernelLaunch& k, void** params) {
    auto n = std::make_unique<Node>(Node::Kernel);
    n->launch = k;
    n->params = params;
    return submit(s, std::move(n), "cuLaunchKernel");
}

CUresult enqueue_copy(CUstream s, void* dst, const void* src, size_t bytes) {
    auto n = std::make_unique<Node>(Node::Copy);
    n->dst = dst;
    n->src = src;
    n->count = bytes;
    return submit(s, std::move(n), "cuMemcpy*Async");
}

CUresult enqueue_set(CUstream s, void* dst, unsigned value, size_t count, size_t width) {
    auto n = std::make_unique<Node>(Node::Set);
    n->dst = dst;
    n->value = value;
    n->count = count;
    n->width = width;
    return submit(s, std::move(n), "cuMemsetD*Async");
}

CUresult enqueue_alloc(CUstream s, CUdeviceptr* out, size_t bytes) {
    Locked g(driver_lock());
    Capture* c;
    if (CUresult r = route(stream_of(s), "cuMemAllocAsync", &c)) return r;
    if (!c) return device_alloc(out, bytes);
    if (CUresult r = device_alloc(out, bytes)) return invalidate(c, r, "cuMemAllocAsync");
    Recording& graph = *c->graph;
    graph.memory.push_back(std::make_unique<GraphMemory>(GraphMemory{*out, bytes, &graph, false, false}));
    graph_memory[*out] = graph.memory.back().get();
    set_live(*graph.memory.back(), false);  // until a launch allocates it
    auto n = std::make_unique<Node>(Node::Alloc);
    n->memory = graph.memory.back().get();
    graph.nodes.push_back(std::move(n));
    return CUDA_SUCCESS;
}

// During a capture, only memory allocated in the same capture (a free node: the driver takes
// graph allocations only; the emulator, only its own graph's).
CUresult enqueue_free(CUstream s, CUdeviceptr p) {
    Locked g(driver_lock());
    Capture* c;
    if (CUresult r = route(stream_of(s), "cuMemFreeAsync", &c)) return r;
    if (!c) return free_now(p);
    const auto it = graph_memory.find(p);
    if (it == graph_memory.end() || it->second->graph != c->graph.get())
        return invalidate(c, CUDA_ERROR_INVALID_VALUE, "cuMemFreeAsync of memory not allocated in the capture");
    if (it->second->freed_in_graph)
        return invalidate(c, CUDA_ERROR_INVALID_VALUE, "cuMemFreeAsync of memory the capture freed already");
    it->second->freed_in_graph = true;
    auto n = std::make_unique<Node>(Node::Free);
    n->memory = it->second;
    c->graph->nodes.push_back(std::move(n));
    return CUDA_SUCCESS;
}

CUresult free_now(CUdeviceptr p) {
    Locked g(driver_lock());
    const auto it = graph_memory.find(p);
    if (it == graph_memory.end()) return device_free(p);
    GraphMemory& m = *it->second;
    if (m.freed_in_graph || !m.live) {
        fprintf(stderr, "cuda-emu: a free of a graph's %zu-byte allocation %s\n", m.bytes,
                m.freed_in_graph ? "that only its graph frees" : "that no launch has allocated since its last free");
        return CUDA_ERROR_INVALID_VALUE;
    }
    set_live(m, false);
    return CUDA_SUCCESS;
}

// As cuThreadExchangeStreamCaptureMode documents it: a thread in the global mode (the default)
// may not make such calls while a capture of its own that is not relaxed is under way, or a
// global one of another thread; in the thread-local mode, only its own captures count; in the
// relaxed mode, none.
CUresult unsafe_call(const char* what, bool legacy_stream) {
    Locked g(driver_lock());
    const int thread_mode = exchanged_mode < 0 ? MODE_GLOBAL : exchanged_mode;
    CUresult result = CUDA_SUCCESS;
    for (Capture* c : captures) {
        const bool own = c->thread == std::this_thread::get_id();
        if (thread_mode != MODE_RELAXED && ((own && c->mode != MODE_RELAXED) ||
                                            (!own && thread_mode == MODE_GLOBAL && c->mode == MODE_GLOBAL)))
            result = invalidate(c, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, std::string(what) + " during a capture");
    }
    if (result == CUDA_SUCCESS && legacy_stream) result = legacy_stream_use(what, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    return result;
}
}  // namespace emu

extern "C" {
CUresult cuCtxSynchronize() {
    Locked g(emu::driver_lock());
    CUresult result = CUDA_SUCCESS;
    for (Capture* c : captures)
        result = invalidate(c, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuCtxSynchronize during a capture");
    return result;
}

CUresult cuStreamCreate(CUstream* s, unsigned flags) {
    *s = new EmuStream{flags};
    return CUDA_SUCCESS;
}
CUresult cuStreamCreateWithPriority(CUstream* s, unsigned flags, int) { return cuStreamCreate(s, flags); }
CUresult cuStreamDestroy_v2(CUstream handle) {
    EmuStream* s = stream_of(handle);
    if (s == &legacy_stream || s == &per_thread_stream) return CUDA_ERROR_INVALID_HANDLE;
    Locked g(emu::driver_lock());
    if (Capture* c = s->capture) {
        if (c->origin == s) end(c);  // the capture and its graph are dropped
        else
            for (size_t i = 0; i < c->streams.size(); i++)
                if (c->streams[i] == s) c->streams.erase(c->streams.begin() + i);
    }
    delete s;
    return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream s) { return wait_for(s, "cuStreamSynchronize"); }
CUresult cuStreamQuery(CUstream s) { return wait_for(s, "cuStreamQuery"); }

// A wait on an event recorded in a capture joins the waiting stream to that capture (a fork);
// a capturing stream may wait on no other event unless the wait is external.
CUresult cuStreamWaitEvent(CUstream handle, CUevent e, unsigned flags) {
    Locked g(emu::driver_lock());
    EmuStream* s = stream_of(handle);
    if (e->capture) {
        Capture* from = active_capture(e->capture);
        if (!from) return CUDA_ERROR_CAPTURED_EVENT;
        if (s->capture == from) return from->invalidated ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED : CUDA_SUCCESS;
        if (s->capture) {
            invalidate(s->capture, CUDA_ERROR_STREAM_CAPTURE_MERGE, "cuStreamWaitEvent joining two captures");
            return invalidate(from, CUDA_ERROR_STREAM_CAPTURE_MERGE, "cuStreamWaitEvent joining two captures");
        }
        if (s == &legacy_stream || s == &per_thread_stream)
            return invalidate(from, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                              "cuStreamWaitEvent joining a default stream to a capture");
        s->capture = from;
        from->streams.push_back(s);
        return CUDA_SUCCESS;
    }
    Capture* c;
    if (CUresult r = route(s, "cuStreamWaitEvent", &c)) return r;
    if (c && !(flags & EVENT_WAIT_EXTERNAL))
        return invalidate(c, CUDA_ERROR_STREAM_CAPTURE_ISOLATION,
                          "cuStreamWaitEvent on an event recorded outside the capture");
    return CUDA_SUCCESS;
}

CUresult cuLaunchHostFunc(CUstream s, void (*fn)(void*), void* data) {
    auto n = std::make_unique<Node>(Node::Host);
    n->fn = fn;
    n->data = data;
    return submit(s, std::move(n), "cuLaunchHostFunc");
}

// The emulator's own entry for libcublas.so: `fn(data)` run now or captured as a host node that
// owns `data` (released by `drop`, whatever becomes of the work).
CUresult cuda_emu_enqueue_work(CUstream s, void (*fn)(void*), void* data, void (*drop)(void*)) {
    auto n = std::make_unique<Node>(Node::Host);
    n->fn = fn;
    n->data = data;
    n->drop = drop;
    return submit(s, std::move(n), "a cuBLAS call");
}
unsigned long long cuda_emu_graph_launches() { return graph_launches.load(); }

CUresult cuEventCreate(CUevent* e, unsigned) {
    *e = new EmuEvent{std::chrono::steady_clock::now()};
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent e, CUstream s) {
    Locked g(emu::driver_lock());
    Capture* c;
    if (CUresult r = route(stream_of(s), "cuEventRecord", &c)) return r;
    e->capture = c ? c->id : 0;
    if (!c) e->at = std::chrono::steady_clock::now();
    return CUDA_SUCCESS;
}
CUresult cuEventSynchronize(CUevent e) {
    Locked g(emu::driver_lock());
    if (CUresult r = captured_event(e, "cuEventSynchronize")) return r;
    return emu::unsafe_call("cuEventSynchronize", false);
}
CUresult cuEventQuery(CUevent e) {
    Locked g(emu::driver_lock());
    if (CUresult r = captured_event(e, "cuEventQuery")) return r;
    return emu::unsafe_call("cuEventQuery", false);
}
CUresult cuEventElapsedTime(float* ms, CUevent a, CUevent b) {
    Locked g(emu::driver_lock());
    if (CUresult r = captured_event(a, "cuEventElapsedTime")) return r;
    if (CUresult r = captured_event(b, "cuEventElapsedTime")) return r;
    *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
    return CUDA_SUCCESS;
}
CUresult cuEventElapsedTime_v2(float* ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }
CUresult cuEventDestroy_v2(CUevent e) {
    delete e;
    return CUDA_SUCCESS;
}

CUresult cuStreamBeginCapture_v2(CUstream handle, int mode) {
    if (mode < MODE_GLOBAL || mode > MODE_RELAXED) return CUDA_ERROR_INVALID_VALUE;
    EmuStream* s = stream_of(handle);
    if (s == &legacy_stream) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    Locked g(emu::driver_lock());
    if (s->capture) return CUDA_ERROR_ILLEGAL_STATE;
    s->capture = new Capture{next_capture++, mode, std::this_thread::get_id(), s, {s}, false,
                             std::make_shared<Recording>()};
    captures.push_back(s->capture);
    return CUDA_SUCCESS;
}
CUresult cuStreamEndCapture(CUstream handle, CUgraph* out) {
    Locked g(emu::driver_lock());
    EmuStream* s = stream_of(handle);
    Capture* c = s->capture;
    *out = nullptr;
    if (!c) return CUDA_ERROR_ILLEGAL_STATE;
    if (c->mode != MODE_RELAXED && c->thread != std::this_thread::get_id())
        return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    if (c->origin != s)
        return invalidate(c, CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, "cuStreamEndCapture on a joined stream");
    const bool invalidated = c->invalidated;
    if (!invalidated) *out = new EmuGraph{c->graph};
    end(c);
    return invalidated ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED : CUDA_SUCCESS;
}
CUresult cuStreamIsCapturing(CUstream handle, int* status) {
    Locked g(emu::driver_lock());
    const Capture* c = stream_of(handle)->capture;
    *status = !c ? STATUS_NONE : c->invalidated ? STATUS_INVALIDATED : STATUS_ACTIVE;
    return CUDA_SUCCESS;
}
CUresult cuThreadExchangeStreamCaptureMode(int* mode) {
    if (*mode < MODE_GLOBAL || *mode > MODE_RELAXED) return CUDA_ERROR_INVALID_VALUE;
    const int previous = exchanged_mode < 0 ? MODE_GLOBAL : exchanged_mode;
    exchanged_mode = *mode;
    *mode = previous;
    return CUDA_SUCCESS;
}

// A graph with memory nodes may have one exec at a time.
CUresult cuGraphInstantiateWithFlags(CUgraphExec* out, CUgraph graph, unsigned long long flags) {
    if (!out || !graph) return CUDA_ERROR_INVALID_VALUE;
    if ((flags & ~KNOWN_INSTANTIATE_FLAGS) || ((flags & DEVICE_LAUNCH) && (flags & AUTO_FREE_ON_LAUNCH)))
        return CUDA_ERROR_INVALID_VALUE;
    Locked g(emu::driver_lock());
    if (!graph->recording->memory.empty() && graph->recording->execs > 0) {
        fprintf(stderr, "cuda-emu: cuGraphInstantiateWithFlags: a graph with allocations has an exec already\n");
        return CUDA_ERROR_INVALID_VALUE;
    }
    graph->recording->execs++;
    *out = new EmuGraphExec{graph->recording, flags};
    return CUDA_SUCCESS;
}
CUresult cuGraphLaunch(CUgraphExec exec, CUstream s) {
    if (!exec) return CUDA_ERROR_INVALID_VALUE;
    auto n = std::make_unique<Node>(Node::Graph);
    n->graph = exec->recording;
    n->flags = exec->flags;
    return submit(s, std::move(n), "cuGraphLaunch");
}
CUresult cuGraphUpload(CUgraphExec exec, CUstream) { return exec ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }
CUresult cuGraphExecDestroy(CUgraphExec exec) {
    if (!exec) return CUDA_ERROR_INVALID_VALUE;
    Locked g(emu::driver_lock());
    exec->recording->execs--;
    delete exec;
    return CUDA_SUCCESS;
}
CUresult cuGraphDestroy(CUgraph graph) {
    if (!graph) return CUDA_ERROR_INVALID_VALUE;
    Locked g(emu::driver_lock());
    delete graph;
    return CUDA_SUCCESS;
}
}
