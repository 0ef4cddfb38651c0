// CPUs this process may run on (its affinity mask): how many workers the emulator's grids
// (grid.cpp) and large GEMMs (cublas.cpp) use.
#pragma once
#include <sched.h>
#include <algorithm>

namespace emu {
inline unsigned cpus() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    return (unsigned)std::max(1, CPU_COUNT(&set));
}
}  // namespace emu
