#!/usr/bin/env bash
# Checks `mla serve` with the official `openai` Python package: completions and chats, whole and
# streamed, the model list and an error. Installs the pinned client (openai-requirements.txt)
# into a venv outside the repository (default ~/.cache/mla-rt/openai-venv) the first time.
#
#   scripts/serve/openai-check.sh [MLA]      # MLA: the binary (default target/debug/mla)
set -euo pipefail
cd "$(dirname "$0")/../.."
mla=${1:-target/debug/mla}
venv="${MLA_OPENAI_VENV:-$HOME/.cache/mla-rt/openai-venv}"
req=scripts/serve/openai-requirements.txt
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$req" "$venv/.mla-rt-requirements"; then
  echo "installing the openai client into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/.mla-rt-requirements"
fi
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
# The demo model with a chat template (it ships none), so that chats can be served.
cp -r models/demo-mla "$work/austen"
"$venv/bin/python" - "$work/austen/tokenizer_config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
json.dump(config, open(path, "w"))
PY
"$mla" serve --model "$work/austen" --port 0 --kv-cache-memory 32MB --api-key sekret 2> "$work/log" &
server=$!
for _ in $(seq 600); do
  address=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/log")
  [[ -n "$address" ]] && curl -sf "$address/health" >/dev/null && break
  sleep 0.1
done
[[ -n "${address:-}" ]] || { cat "$work/log" >&2; exit 1; }
"$venv/bin/python" scripts/serve/openai_check.py "$address"
kill -TERM "$server"
wait "$server"
echo "openai client check: ok (server exit status 0)"
