#!/usr/bin/env bash
# Installs nvcc 13.0 (compiler, ptxas, headers; no driver, no GPU needed) from NVIDIA's PyPI
# wheels into a cache folder outside the repository, and prints the path of nvcc.
#
#   scripts/cuda-toolchain.sh            # install if missing, print the nvcc path
#   MLA_CUDA_TOOLCHAIN=DIR scripts/...   # install somewhere else
#
# Stay on 13.0: the GPU machines run a 580-series driver (CUDA 13.0), which rejects PTX from
# newer toolkits. build.rs finds this install by itself.
set -euo pipefail

dir="${MLA_CUDA_TOOLCHAIN:-$HOME/.cache/mla-rt/cuda-13.0}"
nvcc="$dir/nvidia/cu13/bin/nvcc"
packages=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.*"
)
stamp="$dir/.installed"
want="${packages[*]}"

if [[ ! -x "$nvcc" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  python="${MLA_PYTHON:-$(command -v python3 || command -v python)}"
  echo "installing nvcc 13.0 into $dir" >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  "$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$dir" "${packages[@]}" >&2
  echo "$want" > "$stamp"
fi
"$nvcc" --version >/dev/null
echo "$nvcc"
