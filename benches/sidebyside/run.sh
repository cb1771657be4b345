#!/usr/bin/env bash
# Side-by-side benchmark: portico vs NGINX vs HAProxy, one worker each, in
# front of the same three nginx backends, HTTP/1.1 keepalive (wrk) and
# TLS 1.3 + HTTP/2 (h2load). See benches/README.md.
#
#   benches/sidebyside/run.sh                  # build portico, 3 rounds x 10 s
#   DURATION=5 ROUNDS=1 benches/sidebyside/run.sh
#
# Env knobs: DURATION ROUNDS WARMUP SETTLE CONNS H2_STREAMS PROXIES SCENARIOS
# PROXY_CPU LOAD_CPU NGINX_KEEPALIVE PORTICO_MAX_IDLE OUT_DIR PORTICO_BIN
# PORTICO_B_BIN (proxy "portico-b") SKIP_BUILD=1 (see lib.sh). Traffic goes to 127.0.0.1 only.
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ $(nproc) -ge 2 ]] || die "needs at least 2 cores (proxy on $PROXY_CPU, load on $LOAD_CPU)"

need_common_tools
build_portico

RUN_DIR=$OUT_ROOT/sidebyside-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN_DIR"
setup_work
check_ports_free
gen_cert
write_configs

CLK_TCK=$(getconf CLK_TCK)
read -r -a PROXY_LIST <<<"$PROXIES"
read -r -a SCENARIO_LIST <<<"$SCENARIOS"

{
    echo "date: $(date)"
    echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
    echo "nproc: $(nproc)"
    echo "kernel: $(uname -r)"
    echo "loadavg at start: $(cat /proc/loadavg)"
    echo "duration=$DURATION rounds=$ROUNDS warmup=$WARMUP conns=$CONNS h2_streams=$H2_STREAMS proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU nice=$NICE nginx_keepalive=$NGINX_KEEPALIVE portico_max_idle=$PORTICO_MAX_IDLE tls13_ciphers=$TLS13_CIPHERS"
    echo "portico: $("$PORTICO_BIN" version), $PORTICO_BUILT_FROM ($PORTICO_BIN)"
    echo "rustc: $(rustc --version 2>/dev/null || echo '?')"
    echo "nginx: $(nginx -v 2>&1)"
    echo "haproxy: $(haproxy -v | head -1)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "h2load: $(h2load --version | head -1)"
    echo "openssl: $(openssl version)"
} >"$RUN_DIR/env.txt"
cat "$RUN_DIR/env.txt" >&2

start_backends
for p in "${PROXY_LIST[@]}"; do
    start_proxy "$p"
    smoke_test "$p"
done
log "all up; results in $RUN_DIR"

# Warm-up: connection pools filled, caches hot; not measured.
if [[ $WARMUP -gt 0 ]]; then
    for p in "${PROXY_LIST[@]}"; do
        for sc in "${SCENARIO_LIST[@]}"; do
            log "warm-up $p $sc (${WARMUP}s)"
            load_argv "$p" "$sc" "$WARMUP"
            start_load "$RUN_DIR/logs/warmup-$p-$sc.txt"
            finish_load || die "load generator failed: see $RUN_DIR/logs/warmup-$p-$sc.txt"
        done
    done
fi

RUNS=$RUN_DIR/runs.tsv
printf 'round\tproxy\tscenario\tout\tlatlog\tticks\tsys_ticks\tclk_tck\twall_s\tcore0_busy\tcore0_total\tcore1_busy\tcore1_total\tupstream_conns\tloadavg\tctxt\tbackend_ctxsw\n' >"$RUNS"
mkdir -p "$RUN_DIR/raw"

n=${#PROXY_LIST[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the proxy order every round, and alternate the scenario order,
    # so no proxy always runs first or right after another one.
    order=()
    for ((i = 0; i < n; i++)); do order+=("${PROXY_LIST[$(((i + r - 1) % n))]}"); done
    scs=("${SCENARIO_LIST[@]}")
    if ((r % 2 == 0)); then
        scs=()
        for ((i = ${#SCENARIO_LIST[@]} - 1; i >= 0; i--)); do scs+=("${SCENARIO_LIST[$i]}"); done
    fi
    log "round $r/$ROUNDS: ${order[*]} x ${scs[*]}"
    for p in "${order[@]}"; do
        for sc in "${scs[@]}"; do
            out=$RUN_DIR/raw/r$r-$p-$sc.txt
            latlog=""
            [[ $sc == h2 ]] && latlog=$RUN_DIR/raw/r$r-$p-$sc.reqlog
            load_argv "$p" "$sc" "$DURATION" "$latlog"
            pid=${PROXY_PID[$p]}
            kill -0 "$pid" 2>/dev/null || die "$p (pid $pid) is not running"
            a0=$(backend_accepts)
            x0=$(machine_ctxt)
            b0=$(backend_ctxsw)
            read -r t0 y0 < <(proc_ticks "$pid")
            read -r c0b0 c0t0 < <(core_stat "$PROXY_CPU")
            read -r c1b0 c1t0 < <(core_stat "$LOAD_CPU")
            s0=$(date +%s.%N)
            start_load "$out"
            finish_load || die "load generator failed: see $out"
            s1=$(date +%s.%N)
            read -r t1 y1 < <(proc_ticks "$pid")
            read -r c0b1 c0t1 < <(core_stat "$PROXY_CPU")
            read -r c1b1 c1t1 < <(core_stat "$LOAD_CPU")
            x1=$(machine_ctxt)
            b1=$(backend_ctxsw)
            a1=$(backend_accepts)
            wall=$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.3f", b - a }')
            # upstream_conns: new backend connections during the run (minus
            # the stub_status request itself).
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$p" "$sc" "$out" "${latlog:--}" \
                "$((t1 - t0))" "$((y1 - y0))" "$CLK_TCK" "$wall" "$((c0b1 - c0b0))" "$((c0t1 - c0t0))" \
                "$((c1b1 - c1b0))" "$((c1t1 - c1t0))" "$((a1 - a0 - 1))" "$(cut -d' ' -f1 /proc/loadavg)" \
                "$((x1 - x0))" "$((b1 - b0))" >>"$RUNS"
            log "  $p $sc: proxy cpu $((t1 - t0)) ticks in ${wall}s"
            sleep "$SETTLE"
        done
    done
done

echo "loadavg at end: $(cat /proc/loadavg)" >>"$RUN_DIR/env.txt"
python3 "$BENCH_DIR/report.py" "$RUNS" "$RUN_DIR/env.txt" >"$RUN_DIR/results.md"
# The per-request logs are big and only needed for the percentiles above.
rm -f "$RUN_DIR"/raw/*.reqlog
cat "$RUN_DIR/results.md"
log "done: $RUN_DIR/results.md"
