#!/usr/bin/env bash
# Soak test of `mla serve` (scripts/soak/soak.py; docs/testing.md, "Soak test"): starts the
# server on the MLA demo model (a copy with a chat template) on the CPU, on a free port, with a
# KV cache small enough to preempt, runs N requests against it, then stops it with SIGTERM. Fails
# if the client finds a violation, the server panicked, or it did not exit 0.
#
#   scripts/soak/run.sh [N] [MLA] [SOAK.PY FLAGS...]
#
# N: requests (default 10000). MLA: the binary (default target/release/mla, built if missing).
# SOAK.PY FLAGS: e.g. --concurrency, --max-tokens, --rss-window (soak.py --help).
# SOAK_CACHE, SOAK_BLOCK_SIZE and SOAK_MAX_SEQS override the engine's shape below.
set -euo pipefail
cd "$(dirname "$0")/../.."
requests=${1:-10000}
mla=${2:-target/release/mla}
shift $(($# < 2 ? $# : 2))
if [[ ! -x "$mla" ]]; then
  [[ "$mla" == target/release/mla ]] || { echo "soak: no binary $mla" >&2; exit 1; }
  cargo build --release --bin mla
fi
# 32 blocks of 16 tokens (demo-mla caches 1,920 bytes a token in f32 on the CPU): two of the
# longest requests, so that 8 running sequences preempt; soak.py's 12 clients keep some waiting.
cache=${SOAK_CACHE:-960KiB}
block_size=${SOAK_BLOCK_SIZE:-16}
max_seqs=${SOAK_MAX_SEQS:-8}

work=$(mktemp -d)
server=
trap '[[ -n "$server" ]] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
cp -r models/demo-mla "$work/austen"
python3 - "$work/austen/tokenizer_config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
json.dump(config, open(path, "w"))
PY
"$mla" serve --model "$work/austen" --device cpu --port 0 --kv-cache-memory "$cache" \
  --block-size "$block_size" --max-num-seqs "$max_seqs" 2> "$work/log" &
server=$!
address=
for _ in $(seq 600); do
  address=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/log")
  [[ -n "$address" ]] && curl -sf "$address/health" >/dev/null && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if ! curl -sf "${address:-none}/health" >/dev/null; then
  cat "$work/log" >&2
  echo "soak: the server did not start" >&2
  exit 1
fi
grep -m1 -i "cache" "$work/log" >&2 || true
status=0
python3 scripts/soak/soak.py --url "$address" --pid "$server" --requests "$requests" --chat "$@" ||
  status=$?
kill -TERM "$server"
exit_status=0
wait "$server" || exit_status=$?
server=
if grep -q "panicked" "$work/log"; then
  grep -B2 -A10 "panicked" "$work/log" >&2
  echo "soak: the server panicked" >&2
  status=1
fi
if [[ $exit_status -ne 0 ]]; then
  tail -20 "$work/log" >&2
  echo "soak: the server exited with status $exit_status" >&2
  status=1
fi
[[ $status -eq 0 ]] && echo "soak: ok ($requests requests, server exit status 0)"
exit $status
