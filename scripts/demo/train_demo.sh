#!/usr/bin/env bash
# Train the demo models under models/ (demo-mla: DeepSeek-V2 MLA + MoE; demo-mha: its Llama MHA
# twin) on Jane Austen's novels, from scratch, on one CPU core. See scripts/demo/train_demo.py.
#
# Creates (once) the same Python venv as scripts/fixtures/make_fixtures.sh (pinned
# scripts/fixtures/fixture-requirements.txt), then runs scripts/demo/train_demo.py with the given arguments.
# The corpus comes from Debian's package registry: the script runs `apt-get download
# r-cran-janeaustenr` (nothing is installed; needs apt's package lists, it runs `apt-get update`
# itself if the download fails) into $MLA_DEMO_CACHE (default $HOME/.cache/mla-rt/demo-corpus).
#
#   scripts/demo/train_demo.sh                 # both models, ~30 min each on one core -> models/
#   scripts/demo/train_demo.sh --only mha      # one model
#   scripts/demo/train_demo.sh --bench 20      # time 20 steps per model, write nothing
#   scripts/demo/train_demo.sh --steps 100 --out /tmp/demo   # quick smoke run elsewhere
#
#   MLA_FIXTURE_VENV   venv location (default: $HOME/.cache/mla-rt/fixture-venv)
#   MLA_FIXTURE_PYTHON interpreter used to create the venv (default: python3)
#   MLA_DEMO_CACHE     where the .deb is downloaded and unpacked
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/../.." && pwd)"
cd "$repo_root"

# shellcheck source=scripts/fixtures/python-env.sh
source "$script_dir/../fixtures/python-env.sh"

for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "train_demo.sh needs $tool (Debian/Ubuntu)" >&2; exit 1; }
done

# One core, deterministic.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
exec "$venv/bin/python" "$script_dir/train_demo.py" "$@"
