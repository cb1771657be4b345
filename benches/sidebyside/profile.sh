#!/usr/bin/env bash
# Profiles portico (pinned, one worker) under the same h1 (wrk) and
# TLS 1.3 + h2 (h2load) loads as run.sh, with `perf record -e cpu-clock`.
#
#   benches/sidebyside/profile.sh
#   PROFILE_SECONDS=5 SKIP_BUILD=1 benches/sidebyside/profile.sh
#   PROXY=haproxy benches/sidebyside/profile.sh     # the same for HAProxy
#
# Writes benches/out/profile-h1.txt and benches/out/profile-h2.txt: time by
# category (kernel, hyper/h2, allocator, TLS, tokio, portico, ...), by DSO,
# and the top symbols of `perf report --no-children --sort dso,sym`.
# The perf.data files stay in the run directory under benches/out/.
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROFILE_SECONDS=${PROFILE_SECONDS:-5}
PROXY=${PROXY:-portico}
TOP=${TOP:-25}
# Call graphs: "fp" (-g, frame pointers: kernel stacks are right, Rust code
# has no frame pointers so its callers are unreliable) or "dwarf" (unwinds
# Rust stacks too; much bigger perf.data, for `perf report --children`).
PERF_CALLGRAPH=${PERF_CALLGRAPH:-fp}
case $PERF_CALLGRAPH in
fp) CG_ARGS=(-g) ;;
dwarf) CG_ARGS=(--call-graph dwarf,32768) ;;
*) die "PERF_CALLGRAPH must be fp or dwarf" ;;
esac

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $(nproc) -ge 2 ]] || die "needs at least 2 cores"
need_common_tools
need perf linux-perf
build_portico

RUN_DIR=$OUT_ROOT/profile-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN_DIR"
setup_work
check_ports_free
gen_cert
write_configs
start_backends
start_proxy "$PROXY"
smoke_test "$PROXY"
# Every process of the proxy (NGINX serves from a worker, a child).
PID=$(proxy_pids "${PROXY_PID[$PROXY]}" | paste -sd, -)
# Profiles of another proxy are written beside portico's, never over them.
SUFFIX=""
[[ $PROXY == portico ]] || SUFFIX=-$PROXY

for sc in ${SCENARIOS}; do
    # Load runs 2 s before and 2 s after the recording window.
    load_argv "$PROXY" "$sc" $((PROFILE_SECONDS + 4))
    log "profile $sc: ${LOAD_ARGV[*]}"
    start_load "$RUN_DIR/load-$sc.txt"
    sleep 2
    data=$RUN_DIR/perf-$sc.data
    if ! perf record -e cpu-clock "${CG_ARGS[@]}" -p "$PID" -o "$data" -- sleep "$PROFILE_SECONDS" \
        >"$RUN_DIR/perf-record-$sc.log" 2>&1; then
        log "perf record ${CG_ARGS[*]} failed; retrying without call graphs"
        perf record -e cpu-clock -p "$PID" -o "$data" -- sleep "$PROFILE_SECONDS" \
            >>"$RUN_DIR/perf-record-$sc.log" 2>&1
    fi
    finish_load || die "load generator failed: see $RUN_DIR/load-$sc.txt"
    perf report -i "$data" --no-children --sort dso,sym --stdio -g none --percent-limit 0 \
        >"$RUN_DIR/report-$sc.txt" 2>/dev/null
    {
        echo "# $PROXY under $sc load: $(grep -E 'Requests/sec|finished in' "$RUN_DIR/load-$sc.txt" | head -1 | sed 's/^ *//')"
        echo "# load: ${LOAD_ARGV[*]}"
        echo "# perf record -e cpu-clock ${CG_ARGS[*]} -p <$PROXY pid, pinned to cpu $PROXY_CPU, one worker> -- sleep $PROFILE_SECONDS"
        echo "# perf report --no-children --sort dso,sym --stdio -g none   ($(date))"
        echo
        python3 "$BENCH_DIR/perf_summary.py" "$RUN_DIR/report-$sc.txt" "$TOP"
    } >"$OUT_ROOT/profile-$sc$SUFFIX.txt"
    log "wrote $OUT_ROOT/profile-$sc$SUFFIX.txt"
    sleep "$SETTLE"
done
