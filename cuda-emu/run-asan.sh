#!/usr/bin/env bash
# Runs a command (a test binary, as cargo's target runner) on the AddressSanitizer build of
# cuda-emu: the runtime preloaded, since the Rust binaries themselves are not instrumented.
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=cuda-emu/run-asan.sh cargo test --test gpu_ops -- --include-ignored
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[[ -f "$root/target/cuda-emu-asan/libcuda.so" ]] || "$root/cuda-emu/build.sh" --asan >/dev/null
export LD_LIBRARY_PATH="$root/target/cuda-emu-asan${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_PRELOAD="$(${CXX:-g++} -print-file-name=libasan.so)"
export ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
exec "$@"
