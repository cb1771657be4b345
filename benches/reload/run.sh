#!/usr/bin/env bash
# p99 latency under steady HTTP/1.1 load with a config reload every 100 ms,
# against the same load without reloads. Loopback only.
#
#   benches/reload/run.sh            # ROUNDS=3 DURATION=10 PACE_MS=5 MAX_RELOAD_MS=1000
#
# Starts the demo backends and portico in one process (examples/demo.rs),
# portico with worker_threads = 1 on core 0, wrk on core 1. Steady and
# reloading runs alternate ROUNDS times, so that drift on a shared machine
# hits both alike; the ratio is of the medians.
#
# The load is steady, not saturating: each of wrk's 50 connections waits
# PACE_MS between a response and its next request (about 40% of what the
# one worker can serve here). A proxy runs with headroom; at 100% CPU every
# other thing the process does (a reload's build on the blocking pool,
# which this pinning puts on portico's only core) queues requests, and p99
# measures the queue. PACE_MS=0 runs saturated, to see that too.
#
# The reloads are POST /reload on one keepalive connection from a small
# Python loop: forking curl ten times a second would itself take CPU from
# the core portico runs on and show up in its latency.
#
# Last, one saturated run (no pacing, whatever PACE_MS says) with reloads:
# the reload thread runs at nice 10, below the worker, yet each reload must
# still finish (POST /reload answered) within MAX_RELOAD_MS (1000); the
# slowest one is reported and the bench fails above it.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --example demo >/dev/null 2>&1
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

cat > "$tmp/proxy.toml" <<TOML
[server]
worker_threads = 1
access_log = "off"
[admin]
bind = "127.0.0.1:19901"
[[listener]]
name = "http"
bind = "127.0.0.1:18080"
[[route]]
name = "demo"
upstream = "demo"
[upstream.demo]
servers = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
TOML
taskset -c 0 target/release/examples/demo --config "$tmp/proxy.toml" 2>"$tmp/demo.log" &
pids+=($!)
for _ in $(seq 50); do curl -sf http://127.0.0.1:19901/ready >/dev/null && break; sleep 0.1; done

cat > "$tmp/reloader.py" <<'PY'
import http.client, sys, time
conn = http.client.HTTPConnection("127.0.0.1", 19901)
n = failed = 0
slowest = 0.0
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    t0 = time.monotonic()
    conn.request("POST", "/reload")
    r = conn.getresponse(); r.read()
    slowest = max(slowest, time.monotonic() - t0)
    n += 1
    failed += r.status != 200
    time.sleep(0.1)
print(n, failed, round(slowest * 1000))
PY

PACE_MS=${PACE_MS:-5}
echo "function delay() return $PACE_MS end" >"$tmp/pace.lua"

# One wrk run; prints "p99_ms rps non2xx socket_errors".
run() {
  taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" --latency -s "$tmp/pace.lua" http://127.0.0.1:18080/ 2>&1 | awk '
    function ms(s) { v = s + 0; if (s ~ /us$/) return v / 1000; if (s ~ /ms$/) return v; return v * 1000 }
    /^ +99%/ { p = ms($2) }
    /Requests\/sec/ { r = $2 }
    /Non-2xx/ { n = $5 }
    /Socket errors/ { e = $4 + $6 + $8 + $10 }
    END { printf "%.3f %.0f %d %d\n", p, r, n, e }'
}

run >/dev/null   # warm up
steady=(); reloading=(); total_reloads=0; failed_reloads=0; bad_runs=0
for round in $(seq "$ROUNDS"); do
  read -r p r n e <<<"$(run)"
  echo "round $round steady:    p99 ${p} ms  ${r} req/s  non-2xx $n  socket errors $e"
  steady+=("$p"); [ "$n$e" = "00" ] || bad_runs=$((bad_runs + 1))
  python3 "$tmp/reloader.py" "$DURATION" >"$tmp/reloads" &
  rp=$!
  read -r p r n e <<<"$(run)"
  wait "$rp"
  read -r nr nf _ <"$tmp/reloads"
  total_reloads=$((total_reloads + nr)); failed_reloads=$((failed_reloads + nf))
  echo "round $round reloading: p99 ${p} ms  ${r} req/s  non-2xx $n  socket errors $e  ($nr reloads, $nf failed)"
  reloading+=("$p"); [ "$n$e" = "00" ] || bad_runs=$((bad_runs + 1))
done
python3 - "${steady[*]}" "${reloading[*]}" "$total_reloads" <<'PY'
import statistics, sys
s = [float(x) for x in sys.argv[1].split()]
r = [float(x) for x in sys.argv[2].split()]
ms, mr = statistics.median(s), statistics.median(r)
print(f"median p99: steady {ms:.2f} ms, reloading {mr:.2f} ms ({sys.argv[3]} reloads in all)")
print(f"p99 ratio (reloading / steady): {mr / ms:.2f}")
PY
# Saturated: no pacing; how long does the slowest reload take?
MAX_RELOAD_MS=${MAX_RELOAD_MS:-1000}
echo "-- no delay(): saturated" >"$tmp/pace.lua"
python3 "$tmp/reloader.py" "$DURATION" >"$tmp/reloads" &
rp=$!
read -r p r n e <<<"$(run)"
wait "$rp"
read -r nr nf slowest_ms <"$tmp/reloads"
failed_reloads=$((failed_reloads + nf))
[ "$n$e" = "00" ] || bad_runs=$((bad_runs + 1))
echo "saturated, reloading: p99 ${p} ms  ${r} req/s  non-2xx $n  socket errors $e  ($nr reloads, $nf failed)"
echo "slowest reload under saturation: ${slowest_ms} ms (limit ${MAX_RELOAD_MS} ms)"

status=0
if [ "$bad_runs" -ne 0 ] || [ "$failed_reloads" -ne 0 ]; then
  echo "errors: $bad_runs runs had non-2xx answers or socket errors; $failed_reloads reloads failed" >&2
  status=1
fi
if [ "$slowest_ms" -gt "$MAX_RELOAD_MS" ]; then
  echo "error: a reload took ${slowest_ms} ms under saturation (limit ${MAX_RELOAD_MS} ms)" >&2
  status=1
fi
exit "$status"
