#!/usr/bin/env bash
# Coverage-guided fuzzing of portico's parsers (fuzz/, see FUZZING.md), on
# the stable toolchain: cargo-fuzz with `--sanitizer none`.
#
#   scripts/fuzz.sh                 build every target, run each FUZZ_SECONDS
#   scripts/fuzz.sh jwt config      only these targets
#   FUZZ_SECONDS=0 scripts/fuzz.sh  build only
#
# Build: release (-O) with debug assertions and overflow checks (-a), so an
# overflow is a crash, not a wrap. Environment:
#   FUZZ_SECONDS   time per target (default 60)
#   FUZZ_TIMEOUT   seconds one input may take before it counts as a hang (10)
#   FUZZ_RSS_MB    memory limit of a fuzzing process, MB (2048)
#   FUZZ_PARALLEL  targets run at once, 1 or 2 (default 1: other builds
#                  and fuzzers share the machine)
#   FUZZ_BUILD_JOBS  cargo build jobs (default 2)
# Exits non-zero on any crash, hang or out-of-memory, after printing the
# reproducer's path (fuzz/artifacts/TARGET/...). Inputs found interesting
# are kept in fuzz/corpus-work/TARGET (not committed); the committed seeds
# in fuzz/corpus/TARGET are only read.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=${FUZZ_SECONDS:-60}
timeout=${FUZZ_TIMEOUT:-10}
rss=${FUZZ_RSS_MB:-2048}
parallel=${FUZZ_PARALLEL:-1}
export CARGO_BUILD_JOBS=${FUZZ_BUILD_JOBS:-2}
flags=(--sanitizer none --release --debug-assertions)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "== fuzz: building ${targets[*]}"
start=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "== fuzz: built in $(($(date +%s) - start)) s"
[ "$seconds" -gt 0 ] || exit 0

logs=fuzz/target/fuzz-logs
mkdir -p "$logs"

# Runs one target; its output goes to $logs/TARGET.log.
run_one() {
  local t=$1
  mkdir -p "fuzz/corpus-work/$t" "fuzz/corpus/$t"
  cargo fuzz run "${flags[@]}" "$t" "fuzz/corpus-work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb="$rss" \
    -print_final_stats=1 >"$logs/$t.log" 2>&1
}

# Prints a target's result; returns non-zero if it failed.
report() {
  local t=$1 rc=$2 log="$logs/$1.log"
  local execs corpus
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  corpus=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$log" | tail -1 | sed 's/corp: //')
  if [ "$rc" -eq 0 ]; then
    echo "   ok   $t: ${execs:-?} executions, corpus ${corpus:-?}"
    return 0
  fi
  echo "!! FAIL $t (exit $rc): last lines of $log:" >&2
  tail -n 40 "$log" >&2
  local artifacts
  artifacts=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log")
  if [ -n "$artifacts" ]; then
    echo "!! reproducer: $artifacts" >&2
    echo "!! replay: cargo fuzz run ${flags[*]} $t $artifacts" >&2
  else
    echo "!! no reproducer written (build or setup failure?)" >&2
  fi
  return 1
}

echo "== fuzz: ${seconds} s per target, ${parallel} at a time"
failed=()
i=0
while [ "$i" -lt "${#targets[@]}" ]; do
  batch=("${targets[@]:i:parallel}")
  pids=()
  for t in "${batch[@]}"; do
    run_one "$t" &
    pids+=($!)
  done
  for k in "${!batch[@]}"; do
    rc=0
    wait "${pids[$k]}" || rc=$?
    report "${batch[$k]}" "$rc" || failed+=("${batch[$k]}")
  done
  i=$((i + parallel))
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "== fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "== fuzz: no crash"
