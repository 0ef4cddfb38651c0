# Sourced by make_fixtures.sh and train_demo.sh: creates (once) the project's Python venv outside
# the repository and installs the pinned scripts/fixture-requirements.txt into it, reinstalling
# only when that file changed. Sets $venv.
#
#   MLA_FIXTURE_VENV   venv location (default: $HOME/.cache/mla-rt/fixture-venv)
#   MLA_FIXTURE_PYTHON interpreter used to create the venv (default: python3)

venv="${MLA_FIXTURE_VENV:-$HOME/.cache/mla-rt/fixture-venv}"
_req="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fixture-requirements.txt"
_stamp="$venv/.mla-rt-requirements"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating venv at $venv" >&2
    mkdir -p "$(dirname "$venv")"
    "${MLA_FIXTURE_PYTHON:-python3}" -m venv "$venv"
fi

if ! cmp -s "$_req" "$_stamp" 2>/dev/null; then
    echo "installing $_req into $venv" >&2
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet --upgrade pip
    "$venv/bin/python" -m pip install --disable-pip-version-check -r "$_req"
    cp "$_req" "$_stamp"
fi
