#!/usr/bin/env bash
# The server against the offline engine on the same prompts: `mla bench serve` at concurrency
# C (the server's --max-num-seqs C) against `mla generate --prompts` with --max-num-seqs C, for
# C in 1, 16 and 64, on the demo model (or --model DIR): output tokens/s, mean inter-token
# latency, their ratio and difference, as a markdown table.
#
#   scripts/serve/compare.sh [MLA] [-- extra `mla serve`/`mla generate` flags, e.g. --device cuda]
set -euo pipefail
cd "$(dirname "$0")/../.."
mla=${1:-target/release/mla}
shift || true
[[ ${1:-} == -- ]] && shift
extra=("$@")
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
server=
python3 - "$work" <<'PY'
import json, sys
openings = ["It is a truth", "Emma Woodhouse", "The family of Dashwood", "Sir Walter Elliot",
            "Catherine Morland", "Mrs. Bennet", "Anne Elliot", "Fanny Price"]
for n, name in [(16, "small"), (128, "large")]:
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        for i in range(n):
            prompt = f"{openings[i % 8]} was, in chapter {i + 1},"
            f.write(json.dumps({"id": i, "prompt": prompt, "max_tokens": 64, "ignore_eos": True}) + "\n")
PY
echo "| concurrency | offline output tok/s | server output tok/s | server / offline | offline ITL (ms) | server ITL (ms) | added per token (ms) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for c in 1 16 64; do
  data="$work/large.jsonl"; [[ $c == 1 ]] && data="$work/small.jsonl"
  "$mla" generate --prompts "$data" --output "$work/out.jsonl" --max-num-seqs "$c" \
    --kv-cache-memory 256MB "${extra[@]}" 2> "$work/offline.log" >/dev/null
  off_tps=$(sed -n 's/.* \([0-9.]*\) output tokens\/s.*/\1/p' "$work/offline.log")
  off_itl=$(sed -n 's/^ITL (ms): mean \([0-9.]*\),.*/\1/p' "$work/offline.log")
  "$mla" serve --port 0 --max-num-seqs "$c" --kv-cache-memory 256MB "${extra[@]}" 2> "$work/serve.log" &
  server=$!
  for _ in $(seq 600); do
    address=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/serve.log")
    [[ -n "$address" ]] && curl -sf "$address/health" >/dev/null && break
    sleep 0.1
  done
  "$mla" bench serve --url "$address" --dataset "$data" --max-concurrency "$c" --format json > "$work/bench.json"
  kill -TERM "$server"; wait "$server"; server=
  python3 - "$work/bench.json" "$c" "$off_tps" "$off_itl" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c, off_tps, off_itl = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
assert r["failed_requests"] == 0, r
tps, itl = r["output_tokens_per_s"], r["itl_ms"][0]
print(f"| {c} | {off_tps:.1f} | {tps:.1f} | {tps / off_tps:.2f} | {off_itl:.2f} | {itl:.2f} | {itl - off_itl:+.2f} |")
PY
done
