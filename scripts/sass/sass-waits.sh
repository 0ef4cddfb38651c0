#!/usr/bin/env bash
# Where a kernel file's global loads are first waited for, from its sm_90a SASS, without a GPU:
# compiles kernels/FILE.cu (e.g. attention/mma; experimental kernels included) with the
# project's nvcc 13.0 (scripts/cuda-toolchain.sh), dumps the
# SASS with cuobjdump and nvdisasm (PyPI wheels into a cache folder of their own, newer than
# 13.0: only reading cubins, never building them) and lists the loads waited for within N
# instructions (scripts/sass/sass_waits.py).
#
#   scripts/sass/sass-waits.sh attention/mma [FUNCTION] [--within N]
#
# This is how a branch per load (ptxas waits where the branches meet) and a load consumed at
# once (a combine weighing each split as it arrived) were found in the attention kernels.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $# -ge 1 ]] || { sed -n '2,9p' "$0" >&2; exit 2; }
file=$1
shift
function=""
if [[ $# -ge 1 && $1 != --* ]]; then function=$1; shift; fi
[[ -f kernels/$file.cu ]] || { echo "no kernels/$file.cu" >&2; exit 2; }

nvcc="$(scripts/cuda-toolchain.sh)"
tools="${MLA_SASS_TOOLS:-$HOME/.cache/mla-rt/sass-tools}"
bin="$tools/nvidia/cu13/bin"
if [[ ! -x "$bin/cuobjdump" || ! -x "$bin/nvdisasm" ]]; then
  echo "installing cuobjdump and nvdisasm into $tools" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --root-user-action=ignore --target "$tools" "nvidia-cuda-cuobjdump==13.2.86" "nvidia-cuda-nvdisasm" >&2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$nvcc" -arch=sm_90a -cubin -O3 -std=c++17 -DMLA_EXPERIMENTAL_KERNELS -I kernels -o "$work/k.cubin" "kernels/$file.cu"
PATH="$bin:$PATH" "$bin/cuobjdump" -sass ${function:+-fun "$function"} "$work/k.cubin" > "$work/k.sass"
python3 scripts/sass/sass_waits.py "$work/k.sass" "$@"
