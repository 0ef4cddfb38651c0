#!/usr/bin/env bash
# Builds the CUDA emulator: libcuda.so and libcublas.so for the CPU, with every kernel of
# kernels/**/*.cu compiled by the host C++ compiler. Usage: cuda-emu/build.sh [OUT_DIR]
# (default target/cuda-emu). Point LD_LIBRARY_PATH at OUT_DIR and `--device cuda` runs on it.
# `cuda-emu/build.sh --asan [OUT_DIR]` (default target/cuda-emu-asan) builds it with
# AddressSanitizer: every out-of-bounds access of a kernel to device or shared memory is reported
# where it happens; run with LD_PRELOAD="$(g++ -print-file-name=libasan.so)" and
# ASAN_OPTIONS=detect_leaks=0 (the test binaries themselves are not instrumented).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cxx=${CXX:-g++}
flags=(-std=c++20 -O2 -g -fPIC -mtls-dialect=gnu2 -Wall -Wno-psabi -Wno-unknown-pragmas -Wno-unused-function -I"$root/cuda-emu/include" -I"$root/cuda-emu" -DMLA_EXPERIMENTAL_KERNELS)
default_out=$root/target/cuda-emu
if [[ ${1:-} == --asan ]]; then
    shift
    flags+=(-fsanitize=address -fno-omit-frame-pointer)
    default_out=$root/target/cuda-emu-asan
fi
out=${1:-$default_out}
mkdir -p "$out/src" "$out/obj"

objects=()
# Every kernels/**/*.cu, experimental ones included (the emulator serves every build); a kernel's
# dynamic shared memory comes through dynamic_shared() (kernels/common.cuh), which reads the
# emulator's per-block buffer. Static shared variables become thread-local ones (each worker runs
# its own block; see runtime.cpp) named through a local reference, looked up once per call of the
# kernel instead of at every access. The rest of the source is compiled as it is.
while IFS= read -r cu; do
    rel=${cu#"$root/kernels/"}
    name=${rel%.cu}
    name=${name//\//_}
    src="$out/src/$name.cpp"
    if grep -q 'extern __shared__' "$cu"; then
        echo "cuda-emu: $cu declares dynamic shared memory itself; use dynamic_shared() (kernels/common.cuh)" >&2
        exit 1
    fi
    perl -pe 's{^(\s*)__shared__\s+((?:__align__\(\d+\)\s+)?[A-Za-z_]\w*)\s+([^;]+);}{
        my ($indent, $type, $names) = ($1, $2, $3);
        $indent . join(" ", map { /^\s*([A-Za-z_]\w*)(.*?)\s*$/;
            "static thread_local $type ${1}_emu$2; auto& $1 = ${1}_emu;" } split(/,/, $names))
    }e' "$cu" >"$src"
    kernels=$("$cxx" "${flags[@]}" -I"$root/kernels" -include cuda_emu.h -E -x c++ "$src" | tr '\n' ' ' |
        grep -oE 'extern "C" __attribute__\(\(used\)\) void +[A-Za-z_][A-Za-z0-9_]*' | awk '{print $NF}')
    {
        echo '#include "runtime.h"'
        for k in $kernels; do echo "EMU_REGISTER($k)"; done
    } >>"$src"
    "$cxx" "${flags[@]}" -I"$root/kernels" -include cuda_emu.h -c "$src" -o "$out/obj/$name.o"
    objects+=("$out/obj/$name.o")
done < <(find "$root/kernels" -name '*.cu' | sort)
"$cxx" "${flags[@]}" -c "$root/cuda-emu/runtime.cpp" -o "$out/obj/runtime.o"
"$cxx" "${flags[@]}" -c "$root/cuda-emu/async.cpp" -o "$out/obj/async.o"
"$cxx" "${flags[@]}" -c "$root/cuda-emu/grid.cpp" -o "$out/obj/grid.o"
"$cxx" "${flags[@]}" -c "$root/cuda-emu/driver.cpp" -o "$out/obj/driver.o"
"$cxx" "${flags[@]}" -c "$root/cuda-emu/graph.cpp" -o "$out/obj/graph.o"
"$cxx" "${flags[@]}" -c "$root/cuda-emu/cublas.cpp" -o "$out/obj/cublas.o"
emulator=("$out/obj/driver.o" "$out/obj/graph.o" "$out/obj/runtime.o" "$out/obj/async.o" "$out/obj/grid.o")
"$cxx" "${flags[@]}" -shared -o "$out/libcuda.so" "${emulator[@]}" "${objects[@]}"
# libcublas.so hands its GEMMs to libcuda.so as stream work (so that a capture records them):
# it needs the libcuda.so beside it, the one the process has loaded already.
"$cxx" "${flags[@]}" -shared -o "$out/libcublas.so" "$out/obj/cublas.o" -L"$out" -lcuda -Wl,-rpath,'$ORIGIN'
# The emulator's own checks: right kernels run right, and every bug it claims to catch is caught.
"$cxx" "${flags[@]}" -include cuda_emu.h "$root/cuda-emu/selftest.cpp" "$root/cuda-emu/selftest_graph.cpp" \
    "${emulator[@]}" "$out/obj/cublas.o" -lpthread -o "$out/selftest"
"$out/selftest" >&2
echo "$out"
