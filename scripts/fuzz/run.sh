#!/usr/bin/env bash
# Long fuzzing runs: every fuzz target (or one) for a number of executions each, with libFuzzer
# through cargo-fuzz on the stable toolchain (RUSTC_BOOTSTRAP=1 for its coverage flags; no
# sanitizer: the targets are safe Rust, and debug assertions and overflow checks are on).
#
#   scripts/fuzz/run.sh [TARGET|all] [EXECUTIONS]   # default: all, 1000000 each
#
# Installs cargo-fuzz into $MLA_FUZZ_TOOLS (default ~/.cache/mla-rt/fuzz-tools) the first time.
# Corpora grow in fuzz/corpus/TARGET (gitignored), started from fuzz/seeds/TARGET; a crash,
# timeout or out-of-memory input lands in fuzz/artifacts/TARGET/ (with the run's log), and the
# target's run goes on; the script exits non-zero if anything was found.
# One process on one core (the development machine has two shared cores); MLA_FUZZ_JOBS sets cargo's
# build jobs. Prints one line per target: executions, exec/s, findings, corpus files and bytes.
set -euo pipefail
cd "$(dirname "$0")/../.."

targets=(safetensors config_json chat_template request_line openai_body)
which="${1:-all}"
runs="${2:-1000000}"
if [[ "$which" != all ]]; then
  [[ " ${targets[*]} " == *" $which "* ]] || { echo "unknown target $which (${targets[*]})" >&2; exit 2; }
  targets=("$which")
fi

tools="${MLA_FUZZ_TOOLS:-$HOME/.cache/mla-rt/fuzz-tools}"
if [[ ! -x "$tools/bin/cargo-fuzz" ]]; then
  cargo install cargo-fuzz --version 0.13.2 --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"

# The fuzz crate resolves the same versions as the runtime: it starts from its lock file.
[[ fuzz/Cargo.lock -nt Cargo.lock ]] || cp Cargo.lock fuzz/Cargo.lock
(cd fuzz && CARGO_BUILD_JOBS="${MLA_FUZZ_JOBS:-1}" RUSTC_BOOTSTRAP=1 \
  cargo fuzz build --sanitizer none --debug-assertions)
bin=fuzz/target/x86_64-unknown-linux-gnu/release

# The targets write files on every input: into memory where the system has a tmpfs.
shm=/dev/shm; [[ -d "$shm" && -w "$shm" ]] || shm="${TMPDIR:-/tmp}"
scratch="$(mktemp -d "$shm/mla-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
export MLA_FUZZ_SCRATCH="$scratch"

status=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  # libFuzzer stops at a finding; the run goes on from the corpus it has (at most 20 times) until
  # the target has had its executions, and every finding is kept in fuzz/artifacts/TARGET/.
  done_runs=0 seconds=0 findings=0 restarts=0 rss=0
  while (( done_runs < runs && restarts < 20 )); do
    log="fuzz/artifacts/$t/run-$restarts.log"
    start=$(date +%s)
    # -timeout: an input over 10 s is a hang; -rss_limit_mb: over 2 GiB is out of memory.
    if ! "$bin/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -runs=$((runs - done_runs)) \
        -dict="fuzz/dicts/$t.dict" -artifact_prefix="fuzz/artifacts/$t/" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
      findings=$((findings + 1))
      echo "$t: FOUND: $(grep -a -m1 -o 'ERROR: libFuzzer: [a-z-]*' "$log"), see $log" >&2
    fi
    seconds=$((seconds + $(date +%s) - start))
    # Executions: the final stats, or the last status line where the run stopped at a finding.
    n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    [[ -n "$n" ]] || n=$(grep -a -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    done_runs=$((done_runs + ${n:-0}))
    r=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    [[ -z "$r" ]] || (( r <= rss )) || rss=$r
    restarts=$((restarts + 1))
  done
  (( findings == 0 )) || status=1
  files=$(find "fuzz/corpus/$t" -type f | wc -l)
  bytes=$(du -sb "fuzz/corpus/$t" | cut -f1)
  echo "$t: $done_runs executions in ${seconds} s ($((done_runs / (seconds > 0 ? seconds : 1))) exec/s)," \
    "$findings findings, corpus $files files / $bytes bytes, peak RSS ${rss} MB (runs that ended)"
done
exit "$status"
