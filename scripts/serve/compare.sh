#!/usr/bin/env bash
# The server against the offline engine on the same prompts: `mla bench serve` at concurrency
# C (the server's --max-num-seqs C) against `mla generate --prompts` with --max-num-seqs C, for
# C in 1, 16 and 64 (64 prompts at 1, 512 at 16 and 64, so that the server's ramp-up and tail
# weigh little), on the demo model unless the extra flags say otherwise: output tokens/s and
# inter-token latency (mean and median), their ratio and differences, as a markdown table. The
# server's ITL is given twice: as its engine times it (from /metrics), and as the client sees it
# over HTTP; the first difference is what HTTP adds, the second also what continuous arrivals
# change in the schedule (a new request's prefill joins a step of running decodes).
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
for n, name in [(64, "small"), (512, "large")]:
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        for i in range(n):
            prompt = f"{openings[i % 8]} was, in chapter {i + 1},"
            f.write(json.dumps({"id": i, "prompt": prompt, "max_tokens": 64, "ignore_eos": True}) + "\n")
PY
echo "| concurrency | offline output tok/s | server output tok/s | server / offline | offline ITL mean / median (ms) | server's engine ITL mean (ms) | client ITL mean / median (ms) | client − server's engine, mean (ms) | client − offline, mean / median (ms) |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
# Each pair is run `reps` times, alternately, and the medians reported: timings on a shared
# machine drift by more than the difference being measured.
reps=${MLA_COMPARE_REPS:-3}
for c in 1 16 64; do
  data="$work/large.jsonl"; [[ $c == 1 ]] && data="$work/small.jsonl"
  : > "$work/runs.txt"
  for _ in $(seq "$reps"); do
    "$mla" generate --prompts "$data" --output "$work/out.jsonl" --max-num-seqs "$c" \
      --kv-cache-memory 256MB "${extra[@]}" 2> "$work/offline.log" >/dev/null
    off_tps=$(sed -n 's/.* \([0-9.]*\) output tokens\/s.*/\1/p' "$work/offline.log")
    off_itl=$(sed -n 's/^ITL (ms): mean \([0-9.]*\), median \([0-9.]*\),.*/\1 \2/p' "$work/offline.log")
    "$mla" serve --port 0 --max-num-seqs "$c" --kv-cache-memory 256MB "${extra[@]}" 2> "$work/serve.log" &
    server=$!
    for _ in $(seq 600); do
      address=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$work/serve.log")
      [[ -n "$address" ]] && curl -sf "$address/health" >/dev/null && break
      sleep 0.1
    done
    "$mla" bench serve --url "$address" --dataset "$data" --max-concurrency "$c" --format json > "$work/bench.json"
    curl -sf "$address/metrics" > "$work/metrics.txt"
    kill -TERM "$server"; wait "$server"; server=
    python3 - "$work/bench.json" "$work/metrics.txt" $off_tps $off_itl >> "$work/runs.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["failed_requests"] == 0, r
# The engine's own inter-token latency inside the server: its histogram's sum over its count.
m = dict(l.rsplit(" ", 1) for l in open(sys.argv[2]) if l.startswith("mla:inter_token_latency_seconds_"))
engine_ms = 1e3 * float(m["mla:inter_token_latency_seconds_sum"]) / float(m["mla:inter_token_latency_seconds_count"])
print(*sys.argv[3:6], r["output_tokens_per_s"], engine_ms, *r["itl_ms"][:2])
PY
  done
  python3 - "$work/runs.txt" "$c" <<'PY'
import statistics, sys
runs = [list(map(float, l.split())) for l in open(sys.argv[1])]
off_tps, off_mean, off_median, tps, engine, mean, median = (statistics.median(col) for col in zip(*runs))
print(f"| {sys.argv[2]} | {off_tps:.1f} | {tps:.1f} | {tps / off_tps:.2f} | {off_mean:.2f} / {off_median:.2f} "
      f"| {engine:.2f} | {mean:.2f} / {median:.2f} | {mean - engine:+.2f} "
      f"| {mean - off_mean:+.2f} / {median - off_median:+.2f} |")
PY
done
