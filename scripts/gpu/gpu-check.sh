#!/usr/bin/env bash
# The GPU check: every test (ignored GPU tests included) plus the benchmarks, as one command.
#
#   scripts/gpu/gpu-check.sh prepare   # (alias: bundle) here (Rust toolchain + nvcc): build the release binary and
#                                  # the GPU test binaries (tests/gpu_*.rs), stripped, into
#                                  # device-bin/ (gitignored; small enough to carry)
#   scripts/gpu/gpu-check.sh run [S]   # on the GPU machine, from the repo root, with device-bin/
#                                  # carried over: runs them and prints a summary table, all
#                                  # within S seconds (540: inside the device tool's 600 a
#                                  # command); a step gets at most what is left, and one that
#                                  # would get under 15 s is skipped (a failed row)
#   scripts/gpu/gpu-check.sh profile [S]  # on the GPU machine: only the last step of `run`, ncu on the
#                                  # attention shapes short of their targets, a table of where
#                                  # the time goes (scripts/gpu/ncu-summary.py)
#   scripts/gpu/gpu-check.sh emulate   # here, no GPU: prepare, then the tests and the CLI check of
#                                  # `run` on cuda-emu (kernels/*.cu on the CPU); no benchmarks,
#                                  # whose timings would mean nothing there
set -euo pipefail
cd "$(dirname "$0")/../.."
out=device-bin

# Release binary and GPU test executables, stripped, into device-bin/.
prepare() {
  nvcc="$(scripts/cuda-toolchain.sh)"
  export NVCC="$nvcc" MLA_REQUIRE_CUDA=1
  rm -rf "$out" && mkdir -p "$out/tests"
  # With the experimental kernels, which the A/B steps time against the default ones.
  cargo build --release --quiet --features experimental-kernels
  cp target/release/mla "$out/"
  # GPU test executables (the CPU tests run here), found from cargo's JSON messages.
  cargo test --release --features experimental-kernels --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    m = json.loads(line)
    name = m.get("target", {}).get("name", "")
    if m.get("reason") == "compiler-artifact" and m.get("executable") and name.startswith("gpu_"):
        shutil.copy(m["executable"], os.path.join(sys.argv[1], "tests", name))
' "$out"
  strip "$out/mla" "$out"/tests/*
  du -sh "$out"/mla "$out"/tests/* | sed 's/^/prepared: /'
}

# cuBLAS and friends from the CUDA toolkit or pip wheels, wherever this machine has them.
find_cuda_libraries() {
  for dir in /usr/local/cuda/lib64 $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    for lib in "$dir"/nvidia/*/lib "$dir"; do
      [[ -d "$lib" ]] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$lib"
    done
  done
  export LD_LIBRARY_PATH
}

# Every GPU test executable, ignored tests included; a row of the summary each.
gpu_tests() {
  local limit rc line why passed failed ignored
  for t in "$out"/tests/*; do
    log="$out/$(basename "$t").log"
    # A hung kernel must not eat the GPU session: each test file gets at most $test_timeout s.
    limit=$(step_limit "$test_timeout")
    if (( limit == 0 )); then skipped "$(basename "$t")"; continue; fi
    rc=0
    MLA_BIN="$out/mla" timeout "$limit" "$t" --include-ignored > "$log" 2>&1 || rc=$?
    (( rc == 0 )) || status=1
    line=$(grep -E '^test result' "$log" | tail -1 || true)
    if [[ -z $line ]]; then  # stopped (or crashed) before its result line
      case $rc in
        124) why="stopped at its time limit of $limit s" ;;
        *) why="ended (exit $rc) without a result line" ;;
      esac
      printf '| %s | %s | | |\n' "$(basename "$t")" "$why" >> "$out/summary.md"
    else
      passed=$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<< "$line")
      failed=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<< "$line")
      ignored=$(sed -E 's/.* ([0-9]+) ignored.*/\1/' <<< "$line")
      printf '| %s | %s | %s | %s |\n' "$(basename "$t")" "$passed" "$failed" "$ignored" >> "$out/summary.md"
    fi
    grep -E '^(test .* FAILED|---- .* stdout ----)' "$log" | head -20 || true
    keep_logs
  done
}

# The CLI end to end: text generated on the GPU (f32) must equal the CPU's, greedy for both demo
# models and sampled without a top-k (candidates + row totals on the device) for the MLA one, and
# greedy for both with FP8 caches on both devices, and for the MLA one with FP8 weights too.
cli_check() {
  for run in "models/demo-mla greedy" "models/demo-mha greedy" "models/demo-mla sampled" \
      "models/demo-mla fp8-cache" "models/demo-mha fp8-cache" "models/demo-mla fp8-weights+cache"; do
    read -r model mode <<< "$run"
    args=(generate --model "$model" --prompt "It is a truth universally acknowledged" --max-new-tokens 48)
    [[ $mode == sampled ]] && args+=(--temperature 1.0 --seed 3)
    [[ $mode == fp8-* ]] && args+=(--kv-cache-dtype fp8)
    [[ $mode == fp8-weights* ]] && args+=(--quantization fp8)
    cpu=$(timeout 120 "$out/mla" "${args[@]}" --device cpu 2>/dev/null || echo "cpu failed")
    t0=$(date +%s.%N)
    gpu=$(timeout 120 "$out/mla" "${args[@]}" --device cuda --dtype f32 2> "$out/generate.log" || { cat "$out/generate.log"; echo "gpu failed"; })
    secs=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
    if [[ "$cpu" == "$gpu" ]]; then verdict=same; else verdict=DIFFERENT; status=1; fi
    printf '| generate %s %s cuda f32 vs cpu | %s | | (%s s) |\n' "$model" "$mode" "$verdict" "$secs" >> "$out/summary.md"
    [[ $verdict == same ]] || printf 'cpu: %s\ngpu: %s\n' "$cpu" "$gpu"
    keep_logs
  done
  # --profile's per-op table from CUDA events (what stands in for an nsys timeline where there
  # is no nsys), and the decode step's counters: the graph captured at start-up replays every
  # step, with one device→host wait (the sampled ids).
  if timeout 120 "$out/mla" generate --model models/demo-mla --prompt "It is a truth" --max-new-tokens 16 \
      --device cuda --profile > "$out/profile.md" 2>&1 && grep -q '^| op | calls' "$out/profile.md" &&
      grep -q '^decode step: 1 graph launch, .*, 1 device→host wait (' "$out/profile.md" &&
      grep -q '^captured 1 CUDA graph for decode' "$out/profile.md"; then
    profile=ok
  else
    profile=FAILED; status=1; tail -5 "$out/profile.md"
  fi
  printf '| generate --device cuda --profile (per-op table, start-up graph, 1 graph and 1 wait per decode step) | %s | | |\n' "$profile" >> "$out/summary.md"
}

# One benchmark under a time limit of $3 s: its table into $out/$1.md and stderr into
# $out/$1.log, the table printed, and a summary row "$2 | ok" (or FAILED, with the log's tail)
# with the seconds it took (what the next check's time limits are sized from).
bench_step() {
  local name=$1 label=$2 limit verdict=ok start=$SECONDS
  limit=$(step_limit "$3")
  shift 3
  if (( limit == 0 )); then skipped "$label"; return; fi
  if ! timeout "$limit" "$@" > "$out/$name.md" 2> "$out/$name.log"; then
    verdict=FAILED; status=1; tail -5 "$out/$name.log"
  fi
  cat "$out/$name.md"
  printf '| %s | %s | | (%d s) |\n' "$label" "$verdict" $((SECONDS - start)) >> "$out/summary.md"
  keep_logs
}

attention_benches() {
  # Elementwise and row kernels against a device-to-device copy (bf16).
  bench_step kernels "mla bench kernels" 120 "$out/mla" bench kernels
  # The absorbed decode kernel on V2-Lite and V3 shapes, with the naive path where it fits; for
  # V3 the runtime's choice and then each kernel that could serve it.
  bench_step attention "mla bench attention" 150 \
    "$out/mla" bench attention --batch 1,32,128 --context 1024,4096,16384,32768 --reps 5 \
    --kernel where-pays,wgmma,mma,16-row
  # The same over FP8 pages (656-byte rows) against bf16 ones: the FP8 builds' GB/s over the
  # bytes they read, as a fraction of the copy (the FP8 issue's target: ≥ 0.8 where bf16 is).
  bench_step attention-fp8 "mla bench attention --kv-cache-dtype bf16,fp8" 90 \
    "$out/mla" bench attention --batch 1,32,128 --context 4096,32768 --reps 5 \
    --kv-cache-dtype bf16,fp8 --materialised false
  # The wgmma kernel's alternatives side by side with it on every V3 shape (a step of its own,
  # so that a failure of a new one leaves the table above whole): P in registers (rs), a CTA
  # per SM serving several units in turn (persistent), and the warpgroups offset so that one's
  # softmax overlaps the other's tensor work (seesaw), its tiles copied by every thread or by
  # the tensor memory accelerator (seesaw-tma); each also with its splits merged by the CTA that
  # finishes a row group's last one (last-cta) instead of the combine kernel, where that applies.
  bench_step attention-wgmma-rs "mla bench attention --kernel wgmma,wgmma-rs,wgmma-persistent,wgmma-seesaw,wgmma-seesaw-tma --combine kernel,last-cta (V3)" 180 \
    "$out/mla" bench attention --heads 128 --batch 1,32,128 --context 1024,4096,16384,32768 --reps 5 \
    --kernel wgmma,wgmma-rs,wgmma-persistent,wgmma-seesaw,wgmma-seesaw-tma --combine kernel,last-cta --materialised false
  # The two builds of the 16-row kernel side by side on every V2-Lite shape: two CTAs per SM
  # with two stages of tiles, or one with five (fewer splits, twice the bytes in flight per SM);
  # and the seesaw wgmma kernel (both builds) with 48 of its 64 rows empty, as FlashMLA serves
  # 16 heads; each with the combine kernel and the last-CTA combine.
  bench_step attention-deep "mla bench attention --kernel 16-row,16-row-deep,wgmma-seesaw,wgmma-seesaw-tma --combine kernel,last-cta (V2-Lite)" 120 \
    "$out/mla" bench attention --heads 16 --batch 1,32,128 --context 1024,4096,16384,32768 --reps 5 \
    --kernel 16-row,16-row-deep,wgmma-seesaw,wgmma-seesaw-tma --combine kernel,last-cta --materialised false
  # The shapes short of their targets again, with the split-KV schedule aiming for half, one,
  # two and four waves of CTAs: whether fewer/longer or more/shorter splits pay (more splits
  # cost less where the last CTA of a row group merges them).
  bench_step attention-waves "mla bench attention --waves 0.5,1,2,4 --combine kernel,last-cta (V2-Lite)" 120 \
    "$out/mla" bench attention --heads 16 --batch 1,32,128 --context 1024,4096,32768 --reps 10 \
    --waves 0.5,1,2,4 --kernel 16-row,16-row-deep --combine kernel,last-cta --materialised false
  bench_step attention-waves-v3 "mla bench attention --waves 0.5,1,2,4 (V3)" 90 \
    "$out/mla" bench attention --heads 128 --batch 32,128 --context 1024 --reps 10 \
    --waves 0.5,1,2,4 --materialised false
  # What a launch costs besides its tiles: one CTA per row group and no combine (contexts
  # below a split's minimum), 1, 16 and 64 tiles per CTA — V2-Lite with 256 CTAs, as at 32 × 4K
  # (whose 8 splits add the combine); V3 with exactly one wave (66 sequences) and two (132).
  bench_step attention-fixed "mla bench attention: fixed costs (one split, 1-64 tiles)" 90 \
    "$out/mla" bench attention --heads 16 --batch 256 --context 32,512,2048 --reps 10 \
    --materialised false
  bench_step attention-fixed-v3 "mla bench attention: fixed costs, V3 (one and two waves)" 90 \
    "$out/mla" bench attention --heads 128 --batch 66,132 --context 64,1024,4096 --reps 10 \
    --kernel wgmma,wgmma-rs,wgmma-persistent,wgmma-seesaw,wgmma-seesaw-tma \
    --materialised false
  # The choices still open, kernel against kernel per shape: the 16-row builds (V2-Lite, also
  # at each CTA target) and the wgmma kernels (V3), into ab-summary.md.
  {
    python3 scripts/gpu/ab-summary.py "V2-Lite: the 16-row kernel's two-stage build (first) against its deep build, wgmma-seesaw and wgmma-seesaw-tma, each also with the last-CTA combine" \
      "$out/attention-deep.md" "$out/attention-waves.md"
    echo
    python3 scripts/gpu/ab-summary.py "V3: wgmma (first) against wgmma-rs, wgmma-persistent, wgmma-seesaw and wgmma-seesaw-tma, each also with the last-CTA combine" \
      "$out/attention-wgmma-rs.md" "$out/attention-fixed-v3.md"
  } > "$out/ab-summary.md" 2>&1 || true
  cat "$out/ab-summary.md"
  [[ -z "${OUT:-}" ]] || cp "$out/ab-summary.md" "$OUT/"
  keep_logs
}

# The model benchmarks, after the profile: they time attention only as part of a step, so the
# budget goes to the attention tables and ncu first.
model_benches() {
  # One MoE layer (V2-Lite, V3) on the grouped and the per-expert path: weight bytes over time
  # against the copy bandwidth (the MoE issue's target: ≥ 0.7 of copy at 64+ decode tokens).
  bench_step moe "mla bench moe (V2-Lite, V3; grouped vs per-expert)" 120 \
    "$out/mla" bench moe --device cuda --shape v2-lite,v3 --tokens 1,8,64,128,512 --reps 10
  # FP8 weights (the FP8 issue): V2-Lite's MoE layer with bf16 and FP8 experts (half the bytes:
  # the layer's time should follow), and single projections on cuBLAS bf16 against the FP8 GEMM
  # (TFLOPS, and weight bytes over time against the copy).
  bench_step moe-fp8 "mla bench moe --weights bf16,fp8 (V2-Lite)" 90 \
    "$out/mla" bench moe --device cuda --shape v2-lite --tokens 1,8,64,128,512 --reps 10 --weights bf16,fp8
  bench_step gemm "mla bench gemm (bf16 vs FP8 weights; V2-Lite, V3)" 90 \
    "$out/mla" bench gemm --device cuda --tokens 1,64,4096 --reps 10
  # MLA against MHA on the first layers of DeepSeek-V2-Lite (random weights, bf16).
  bench_step bench "mla bench (V2-Lite vs MHA, 4 layers)" 240 \
    "$out/mla" bench --device cuda --preset deepseek-v2-lite,deepseek-v2-lite-mha \
    --layers 4 --batch 1,32 --prompt 512 --gen 32 --depth 0,4096 --reps 2 --compare
  # MLA-fp8 against MLA-bf16 and MHA at both cache types: decode tokens/s with each cache and
  # the largest batch in the same 8 GiB (the FP8 issue's target: MLA fp8 ≥ 1.7× MLA bf16's).
  bench_step bench-fp8 "mla bench --kv-cache-dtype fp8,bf16 (V2-Lite vs MHA, 4 layers, max batch in 8 GiB @ d4096)" 150 \
    "$out/mla" bench --device cuda --preset deepseek-v2-lite,deepseek-v2-lite-mha --layers 4 \
    --batch 1,max --depth 4096 --kv-cache-memory 8GiB --prompt 0 --gen 16 --reps 2 \
    --kv-cache-dtype fp8,bf16 --compare
  # The same decode with FP8 weights (kept FP8, the FP8 GEMM) and both caches: with the step
  # above, bf16 + bf16, bf16 + fp8 cache, fp8 + fp8 and fp8 + bf16 cache (the FP8 issue's rows).
  bench_step bench-fp8-weights "mla bench --quantization fp8 --kv-cache-dtype fp8,bf16 (V2-Lite, 4 layers, d4096)" 150 \
    "$out/mla" bench --device cuda --preset deepseek-v2-lite --layers 4 --quantization fp8 \
    --batch 1,32 --depth 4096 --prompt 0 --gen 16 --reps 2 --kv-cache-dtype fp8,bf16
  # The same V2-Lite decode launched eagerly: against the first step's rows, what CUDA graphs
  # bring (its tg rows replay graphs).
  bench_step bench-eager "mla bench --enforce-eager (V2-Lite, 4 layers)" 120 \
    "$out/mla" bench --device cuda --preset deepseek-v2-lite --enforce-eager \
    --layers 4 --batch 1,32 --prompt 0 --gen 32 --reps 2
  # The comparison of the MLA-vs-MHA issue: the whole V2-Lite against its MHA twin at depth
  # 16384, each at the largest batch whose cache fits 60 GiB, with the plot.
  bench_step bench-max "mla bench (V2-Lite vs MHA, max batch in 60 GiB @ d16384)" 240 \
    "$out/mla" bench --device cuda --preset deepseek-v2-lite,deepseek-v2-lite-mha \
    --batch max --depth 16384 --kv-cache-memory 60GiB --prompt 0 --gen 16 --reps 2 --compare \
    --plot "$out/bench-max.svg"
  # `mla serve` against the offline engine on the demo model (one run of each, not three).
  bench_step serve "scripts/serve/compare.sh (server vs offline, demo-mla)" 150 \
    env MLA_COMPARE_REPS=1 scripts/serve/compare.sh "$out/mla" -- --device cuda
}

# ncu on the attention shapes still short of their targets (V2-Lite through both 16-row builds,
# V3 through the wgmma kernels), one
# that meets them (for reference) and two of 256 one-split CTAs of 1 and 16 tiles (what a launch
# costs besides its tiles): per launch of the absorbed kernel and its combine, the duration, DRAM and SM
# throughput, how much of the time the SMs were busy (ramp and tail), occupancy, waves and the
# top warp stalls. The raw CSVs go into the logs.
profile() {
  local ncu limit
  ncu=$(command -v ncu || ls -d /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | tail -1 || true)
  if [[ ! -x "$ncu" ]]; then
    echo "no ncu on this machine" >&2
    printf '| ncu profile of the attention shapes | skipped (no ncu) | | |\n' >> "$out/summary.md"
    return
  fi
  local verdict=ok
  python3 scripts/gpu/ncu-summary.py --header > "$out/profile-attention.md"
  for shape in "16 32 4096 16-row" "16 32 4096 16-row last-cta" "16 128 1024 16-row" "16 1 16384 16-row" "16 256 32 16-row" \
               "16 256 512 16-row" "16 32 4096 16-row-deep" "16 32 4096 wgmma-seesaw" "16 32 4096 wgmma-seesaw-tma" \
               "128 128 1024 wgmma" "128 128 16384 wgmma" "128 128 1024 wgmma-persistent" \
               "128 128 1024 wgmma-seesaw" \
               "128 128 1024 wgmma-seesaw-tma"; do
    read -r heads batch context kernel combine <<< "$shape"
    combine=${combine:-kernel}
    csv="$out/ncu-$heads-$batch-$context-$kernel-$combine.csv"
    limit=$(step_limit 60)
    if (( limit == 0 )); then verdict="skipped from $heads × $batch × $context $kernel on (time budget)"; status=1; break; fi
    timeout "$limit" "$ncu" --clock-control none --print-units base --csv --page raw \
      -k regex:'attention_(mma_latent576|mma_deep_latent576|wgmma_latent576|wgmma_rs_latent576|wgmma_seesaw_latent576|wgmma_seesaw_tma_latent576|combine)' -c 2 \
      --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
      "$out/mla" bench attention --heads "$heads" --batch "$batch" --context "$context" \
      --kernel "$kernel" --combine "$combine" --reps 1 --materialised false > "$csv" 2> "$csv.log" ||
      { verdict=FAILED; status=1; tail -3 "$csv.log"; }
    title="$heads × $batch × $context"
    [[ $combine == kernel ]] || title+=" ($combine combine)"
    python3 scripts/gpu/ncu-summary.py "$title" "$csv" >> "$out/profile-attention.md"
  done
  printf '| ncu profile of the attention shapes | %s | | |\n' "$verdict" >> "$out/summary.md"
  cat "$out/profile-attention.md"
  [[ -z "${OUT:-}" ]] || cp "$out/profile-attention.md" "$OUT/"
  keep_logs
}

# Logs and tables also go to $OUT when the device tool provides it, so that they come back: after
# every step (a run stopped at its time limit still returns what it did), as one archive plus the
# summary (the tool returns at most 8 files).
keep_logs() {
  if [[ -n "${OUT:-}" ]]; then
    tar czf "$OUT/gpu-check-logs.tgz" -C "$out" $(cd "$out" && ls *.log *.md *.svg *.csv 2>/dev/null) 2>/dev/null || true
    cp "$out/summary.md" "$OUT/" 2>/dev/null || true
  fi
}

status=0
test_timeout=120
# The run's time budget in seconds (see `run` above) and the least time a step is started with.
budget=540
min_step=15

# The time limit of a step that asks for $1 s: that, or what is left of the budget if less; 0
# where under $min_step s are left (the step is then skipped).
step_limit() {
  local rest=$((budget - SECONDS))
  if (( rest < min_step )); then echo 0; elif (( $1 < rest )); then echo "$1"; else echo "$rest"; fi
}

# The budget from `run S` or `profile S`, if given.
set_budget() {
  [[ -z $1 ]] && return
  [[ $1 =~ ^[0-9]+$ ]] || { echo "the time budget must be whole seconds, not '$1'" >&2; exit 2; }
  budget=$1
}

# A summary row for step $1, skipped for want of time: a failed check, as its result is missing.
skipped() {
  printf '| %s | skipped (time budget of %d s spent) | | |\n' "$1" "$budget" >> "$out/summary.md"
  status=1
}
summary_header() { printf '| check | passed | failed | ignored |\n|---|---|---|---|\n' > "$out/summary.md"; }

case "${1:-}" in
prepare|bundle)
  prepare
  ;;
run)
  [[ -x "$out/mla" ]] || { echo "no $out/mla: run 'scripts/gpu/gpu-check.sh prepare' first and carry $out" >&2; exit 2; }
  set_budget "${2:-}"
  find_cuda_libraries
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$out/mla" info --device cuda | tail -2 || true
  summary_header
  gpu_tests
  cli_check
  attention_benches
  profile
  model_benches
  cat "$out/summary.md"
  keep_logs
  exit $status
  ;;
profile)
  [[ -x "$out/mla" ]] || { echo "no $out/mla: run 'scripts/gpu/gpu-check.sh prepare' first and carry $out" >&2; exit 2; }
  set_budget "${2:-}"
  find_cuda_libraries
  summary_header
  profile
  cat "$out/summary.md"
  exit $status
  ;;
emulate)
  test_timeout=1200  # the CPU runs the decode batches in about 3 minutes
  budget=$((4 * 3600))  # the CPU is slow; a hung test still stops at test_timeout
  prepare
  export LD_LIBRARY_PATH="$(cuda-emu/build.sh)"
  "$out/mla" info --device cuda | tail -2
  summary_header
  gpu_tests
  cli_check
  cat "$out/summary.md"
  exit $status
  ;;
*)
  echo "usage: scripts/gpu/gpu-check.sh prepare | run [SECONDS] | profile [SECONDS] | emulate" >&2
  exit 2
  ;;
esac
