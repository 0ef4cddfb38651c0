#!/usr/bin/env bash
# Regenerate tests/fixtures/ (tiny random DeepSeek-V2/V3 and Llama/Mistral/Qwen2 checkpoints +
# float64 reference logits).
#
# Creates (once) a Python venv outside the repository, installs the pinned requirements into it,
# then runs scripts/make_fixtures.py and scripts/make_llama_fixtures.py. Idempotent: re-running
# reuses the venv and rewrites the fixtures deterministically (byte-identical output for the same
# pinned versions).
#
#   MLA_FIXTURE_VENV   venv location (default: $HOME/.cache/mla-rt/fixture-venv)
#   MLA_FIXTURE_PYTHON interpreter used to create the venv (default: python3)
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
cd "$repo_root"

# shellcheck source=scripts/python-env.sh
source "$script_dir/python-env.sh"

# DeepSeek fixtures, then the Llama-family ones (both accept the same --out / --only arguments).
"$venv/bin/python" "$script_dir/make_fixtures.py" "$@"
exec "$venv/bin/python" "$script_dir/make_llama_fixtures.py" "$@"
