// Running a grid: its blocks shared out among one worker per CPU the process may use (the
// launching thread and helpers), each running whole blocks on its own fibers (runtime.cpp).
// Blocks are independent on the device too; the kernels' atomics are atomic here as well.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include "cpus.h"
#include "runtime.h"

namespace emu {
namespace {
// The blocks of the running grid, handed out in launch order to whichever worker asks next,
// and the first failure, after which no worker starts another block.
struct GridJob {
    size_t blocks, count;
    bool backwards;
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex error_lock;
    std::string error;
};

// This worker's share of `job`: blocks until none is left, in its own shared memory.
void run_blocks(GridJob& job) {
    open_worker(job.count);
    while (!job.failed.load()) {
        const size_t n = job.next.fetch_add(1);
        if (n >= job.blocks) break;
        std::string error = run_block_at(job.backwards ? job.blocks - 1 - n : n, job.count);
        if (!error.empty()) {
            std::lock_guard<std::mutex> g(job.error_lock);
            if (job.error.empty()) job.error = std::move(error);
            job.failed = true;
        }
    }
    close_worker();
}

// Helper threads that join the launching thread on each grid of more than one block. They live
// as long as the process (never destroyed, so exit does not wait for them).
class Workers {
  public:
    Workers() {
        for (unsigned i = 1; i < cpus(); i++) std::thread([this] { serve(); }).detach();
    }

    void run(GridJob& job) {
        {
            std::lock_guard<std::mutex> g(lock_);
            job_ = &job;
            helping_ = helpers_;
            generation_++;
        }
        start_.notify_all();
        run_blocks(job);
        std::unique_lock<std::mutex> g(lock_);
        done_.wait(g, [this] { return helping_ == 0; });
        job_ = nullptr;
    }

  private:
    void serve() {
        unsigned long seen;
        {
            std::lock_guard<std::mutex> g(lock_);
            helpers_++;
            seen = generation_;
        }
        for (;;) {
            GridJob* job;
            {
                std::unique_lock<std::mutex> g(lock_);
                start_.wait(g, [&] { return generation_ != seen; });
                seen = generation_;
                job = job_;
            }
            if (job != nullptr) run_blocks(*job);
            std::lock_guard<std::mutex> g(lock_);
            if (job != nullptr && --helping_ == 0) done_.notify_all();
        }
    }

    std::mutex lock_;
    std::condition_variable start_, done_;
    GridJob* job_ = nullptr;
    unsigned long generation_ = 0;
    size_t helpers_ = 0, helping_ = 0;
};
}  // namespace

std::string run_grid(const LaunchDims& dims, void (*body)(void*), void* ctx) {
    const size_t count = (size_t)dims.block.x * dims.block.y * dims.block.z;
    if (count == 0 || count > 1024) return "block of " + std::to_string(count) + " threads";
    set_grid(dims, body, ctx);
    // Blocks may run in any order on the device: every other launch hands them out last to
    // first, so a kernel that relies on an order shows it.
    static std::atomic<unsigned long> launches{0};
    GridJob job;
    job.blocks = (size_t)dims.grid.x * dims.grid.y * dims.grid.z;
    job.count = count;
    job.backwards = launches++ % 2 == 1;
    static Workers* workers = new Workers;  // leaked on purpose: see Workers
    if (job.blocks > 1) workers->run(job);
    else run_blocks(job);
    return job.error;
}

}  // namespace emu
