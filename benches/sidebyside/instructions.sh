#!/usr/bin/env bash
# User-space instructions per request of each proxy under the run.sh loads,
# counted by valgrind's callgrind: a figure the machine's noise cannot move
# (the same binary gives the same count to within a fraction of a percent),
# for A/B comparisons of one change where CPU time drifts by 10-20 % between
# runs. It counts no kernel work and no cache misses: read it beside
# run.sh's CPU µs/request, not instead of it.
#
#   SKIP_BUILD=1 benches/sidebyside/instructions.sh
#   PROXIES="portico haproxy" SCENARIOS="h1 h2" REQUESTS=20000 benches/sidebyside/instructions.sh
#   PORTICO_BIN=/tmp/a SKIP_BUILD=1 benches/sidebyside/instructions.sh   # another build
#
# Each proxy runs under callgrind (about 50x slower); after a warm-up of
# WARMUP_REQUESTS its counters are zeroed, REQUESTS requests are sent with
# h2load (HTTP/1.1 for h1 and h1big, TLS 1.3 + HTTP/2 for h2; the same
# connections and streams as run.sh), and the counters are dumped. Prints a
# markdown table (also benches/out/instructions-DATE/instructions.md) and
# keeps the callgrind files there for callgrind_annotate.
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REQUESTS=${REQUESTS:-20000}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-2000}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need_common_tools
need valgrind valgrind
need callgrind_control valgrind
build_portico

RUN_DIR=$OUT_ROOT/instructions-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN_DIR"
setup_work
check_ports_free
gen_cert
write_configs
start_backends
read -r -a PROXY_LIST <<<"$PROXIES"

# h2load_argv PROXY SCENARIO COUNT: a fixed number of requests.
h2load_argv() {
    local p=$1 sc=$2 n=$3
    case $sc in
    h1) LOAD_ARGV=(taskset -c "$LOAD_CPU" h2load --h1 -t1 -c"$CONNS" -n"$n" "http://127.0.0.1:${H1_PORT[$p]}/") ;;
    h1big) LOAD_ARGV=(taskset -c "$LOAD_CPU" h2load --h1 -t1 -c"$CONNS" -n"$n" "http://127.0.0.1:${H1_PORT[$p]}/16k") ;;
    h2) LOAD_ARGV=(taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -n"$n"
        --tls13-ciphers=TLS_AES_128_GCM_SHA256 "https://127.0.0.1:${H2_PORT[$p]}/") ;;
    *) die "scenario $sc: instructions.sh knows h1, h1big and h2" ;;
    esac
}

# callgrind_total FILE: the Ir total of one dump.
callgrind_total() {
    awk '/^(summary|totals):/ { print $2; exit }' "$1"
}

for p in "${PROXY_LIST[@]}"; do
    proxy_cmd "$p"
    # nginx forks its worker: callgrind follows it (--trace-children).
    start "$p" "$PROXY_CPU" valgrind --tool=callgrind --trace-children=yes \
        --callgrind-out-file="$RUN_DIR/callgrind-$p.%p" "${PROXY_CMD[@]}"
    for ((i = 0; i < 600; i++)); do
        port_open "${H1_PORT[$p]}" && port_open "${H2_PORT[$p]}" && break
        kill -0 "${PROXY_PID[$p]}" 2>/dev/null || die "$p exited under valgrind; see $RUN_DIR/logs/$p.log"
        sleep 0.1
    done
    smoke_test "$p"
    for sc in $SCENARIOS; do
        h2load_argv "$p" "$sc" "$WARMUP_REQUESTS"
        "${LOAD_ARGV[@]}" >"$RUN_DIR/warmup-$p-$sc.txt" 2>&1 || die "warm-up failed: $RUN_DIR/warmup-$p-$sc.txt"
        callgrind_control -z >/dev/null
        h2load_argv "$p" "$sc" "$REQUESTS"
        "${LOAD_ARGV[@]}" >"$RUN_DIR/load-$p-$sc.txt" 2>&1 || die "load failed: $RUN_DIR/load-$p-$sc.txt"
        grep -q "succeeded, 0 failed, 0 errored" "$RUN_DIR/load-$p-$sc.txt" ||
            die "$p $sc: not every request succeeded; see $RUN_DIR/load-$p-$sc.txt"
        rm -f "$RUN_DIR"/callgrind-"$p".*.[0-9]*
        callgrind_control -d "$p-$sc" >/dev/null
        sleep 1
        total=0
        for f in "$RUN_DIR"/callgrind-"$p".*.[0-9]*; do
            [[ -e $f ]] || continue
            total=$((total + $(callgrind_total "$f")))
            mv "$f" "$RUN_DIR/$p-$sc.$(basename "$f" | tr -dc '0-9.' | tr '.' '-')callgrind"
        done
        [[ $total -gt 0 ]] || die "$p $sc: callgrind dumped no counts (see $RUN_DIR)"
        echo "$total" >"$RUN_DIR/ir-$p-$sc.txt"
        log "$p $sc: $total instructions for $REQUESTS requests"
    done
    kill -TERM "${PROXY_PID[$p]}" 2>/dev/null || true
    wait "${PROXY_PID[$p]}" 2>/dev/null || true
done

python3 - "$RUN_DIR" "$REQUESTS" "$PROXIES" "$SCENARIOS" <<'EOF' | tee "$RUN_DIR/instructions.md"
import sys
run, n, proxies, scens = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
print(f"User-space instructions per request (callgrind, {n} requests after a warm-up).\n")
ratio = {"portico", "haproxy"} <= set(proxies)
print("| scenario | " + " | ".join(proxies) + (" | portico ÷ HAProxy" if ratio else "") + " |")
print("| --- | " + " | ".join("---:" for _ in proxies) + (" | ---:" if ratio else "") + " |")
for sc in scens:
    ir = {p: int(open(f"{run}/ir-{p}-{sc}.txt").read()) / n for p in proxies}
    row = f"| {sc} | " + " | ".join(f"{ir[p]:,.0f}" for p in proxies)
    if ratio:
        row += f" | {ir['portico'] / ir['haproxy']:.2f}×"
    print(row + " |")
EOF
