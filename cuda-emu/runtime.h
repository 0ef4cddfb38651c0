// The emulator's launch interface between the fake driver (driver.cpp) and the kernels compiled
// from kernels/**/*.cu: a name → entry table filled at load time, and a grid runner.
#pragma once
#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include "cuda_emu.h"

namespace emu {
struct LaunchDims {
    dim3 grid, block;
    size_t shared_bytes;
};

// Runs `body(ctx)` as every thread of every block of the grid (grid.cpp: the blocks shared out
// among worker threads, each running one block at a time). Returns "" or a description of what
// went wrong (which block and thread, and why). One grid at a time (the driver's lock).
std::string run_grid(const LaunchDims& dims, void (*body)(void*), void* ctx);

// A worker's part in run_grid (runtime.cpp): the grid set up once, then on each worker thread
// open_worker, the blocks it takes (by linear index) and close_worker.
void set_grid(const LaunchDims& dims, void (*body)(void*), void* ctx);
void open_worker(size_t threads_per_block);
std::string run_block_at(size_t block, size_t threads_per_block);
void close_worker();

// Calls kernel `fn` over `dims` with the argument values `params` points to, as cuLaunchKernel.
typedef std::string (*Launcher)(void* fn, void** params, const LaunchDims& dims);
struct KernelEntry {
    void* fn;
    Launcher launch;
    size_t params;
    const bool* is_pointer;  // per parameter
    const size_t* bytes;     // per parameter (a params struct's words may be device addresses)
    // An owned copy of the argument values `params` points to (what a captured launch keeps),
    // with `copies[i]` pointed at the copy of argument i; released by free_args.
    void* (*copy_args)(void** params, void** copies);
    void (*free_args)(void* args);
};
void register_kernel(const char* name, const KernelEntry& entry);
const KernelEntry* find_kernel(const char* name);

template <typename... A> struct Kernel {
    typedef void (*Fn)(A...);
    struct Call {
        Fn fn;
        std::tuple<std::decay_t<A>...> args;
    };
    template <size_t... I>
    static std::string launch_with(void* fn, void** params, const LaunchDims& dims, std::index_sequence<I...>) {
        Call call{reinterpret_cast<Fn>(fn), {*static_cast<std::decay_t<A>*>(params[I])...}};
        return run_grid(
            dims, [](void* c) { std::apply(static_cast<Call*>(c)->fn, static_cast<Call*>(c)->args); }, &call);
    }
    static std::string launch(void* fn, void** params, const LaunchDims& dims) {
        return launch_with(fn, params, dims, std::index_sequence_for<A...>{});
    }
    typedef std::tuple<std::decay_t<A>...> Args;
    template <size_t... I> static void* copy_with(void** params, void** copies, std::index_sequence<I...>) {
        Args* args = new Args{*static_cast<std::decay_t<A>*>(params[I])...};
        ((copies[I] = &std::get<I>(*args)), ...);
        return args;
    }
    static void* copy_args(void** params, void** copies) {
        return copy_with(params, copies, std::index_sequence_for<A...>{});
    }
    static void free_args(void* args) { delete static_cast<Args*>(args); }
    static constexpr bool is_pointer[sizeof...(A) + 1] = {std::is_pointer_v<std::decay_t<A>>..., false};
    static constexpr size_t bytes[sizeof...(A) + 1] = {sizeof(std::decay_t<A>)..., 0};
};

struct Registration {
    template <typename... A> Registration(const char* name, void (*fn)(A...)) {
        register_kernel(name, KernelEntry{reinterpret_cast<void*>(fn), &Kernel<A...>::launch, sizeof...(A),
                                          Kernel<A...>::is_pointer, Kernel<A...>::bytes, &Kernel<A...>::copy_args,
                                          &Kernel<A...>::free_args});
    }
};
}  // namespace emu

#define EMU_REGISTER(name) static emu::Registration emu_registration_##name(#name, &name);
