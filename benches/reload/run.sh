#!/usr/bin/env bash
# p99 latency under steady HTTP/1.1 load with a config reload every 100 ms,
# against the same load without reloads. Loopback only.
#
#   benches/reload/run.sh            # DURATION=10 by default
#
# Starts the demo backends and portico in one process (examples/demo.rs),
# portico with worker_threads = 1 on core 0, wrk on core 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10}
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

run() { taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" --latency http://127.0.0.1:18080/ 2>&1; }
p99() { awk '/^ +99%/ {print $2}' ; }
non2xx() { awk '/Non-2xx/ {print $5; f=1} END {if (!f) print 0}'; }
errors() { awk '/Socket errors/ {print; f=1} END {if (!f) print "none"}'; }

run >/dev/null   # warm up
base=$(run)
(
  n=0
  while true; do curl -sf -XPOST http://127.0.0.1:19901/reload >/dev/null || echo "reload failed" >&2; n=$((n+1)); echo "$n" > "$tmp/reloads"; sleep 0.1; done
) &
pids+=($!)
loaded=$(run)
kill "${pids[1]}" 2>/dev/null || true
reloads=$(cat "$tmp/reloads" 2>/dev/null || echo 0)

b=$(echo "$base" | p99); l=$(echo "$loaded" | p99)
echo "without reloads: p99 $b, non-2xx $(echo "$base" | non2xx), socket errors: $(echo "$base" | errors)"
echo "$base" | grep -E "Requests/sec"
echo "with a reload every 100 ms ($reloads reloads): p99 $l, non-2xx $(echo "$loaded" | non2xx), socket errors: $(echo "$loaded" | errors)"
echo "$loaded" | grep -E "Requests/sec"
python3 - "$b" "$l" <<'PY'
import sys, re
def ms(s):
    v = float(re.match(r"[\d.]+", s).group())
    return v / 1000 if s.endswith("us") else v * 1000 if s.endswith("s") and not s.endswith("ms") else v
b, l = ms(sys.argv[1]), ms(sys.argv[2])
print(f"p99 ratio (reloading / steady): {l / b:.2f}")
PY
