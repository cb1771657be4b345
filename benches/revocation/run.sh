#!/usr/bin/env bash
# Revocation-checked requests per second, and the p99 a shared store adds
# per request: one portico (one worker thread), a `respond` route behind an
# HS256 policy with `revocation = true`, the same token (jti and sub, so
# every check reads two keys) reused, wrk on loopback. One run per store:
# memory (the baseline), one Redis, a 3-master Redis Cluster, and a master
# found through three sentinels. Every Redis runs on loopback, started here.
#
# Needs: a release build (cargo build --release), wrk, redis-server,
# redis-cli, openssl.
# Usage: benches/revocation/run.sh [seconds per run, default 5] [connections, default 16]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-5}"
conns="${2:-16}"
bin="${PORTICO_BIN:-target/release/portico}"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
# Below 55535: a Cluster node also listens on its port + 10000.
free_port() { python3 -c '
import random, socket
while True:
    p = random.randrange(20000, 50000)
    try:
        s = socket.socket(); s.bind(("127.0.0.1", p)); s.close(); b = socket.socket(); b.bind(("127.0.0.1", p + 10000)); b.close(); print(p); break
    except OSError:
        pass
'; }

redis() { # port dir [args...]
  local port=$1 d=$2; shift 2
  mkdir -p "$d"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$d" "$@" \
    >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ "$(redis-cli -p "$port" PING 2>/dev/null)" = PONG ] && return; sleep 0.05; done
  echo "redis on $port did not start" >&2; exit 1
}

secret=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
printf '%s' "$secret" > "$dir/secret"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
claims=$(printf '{"sub":"bench-user","jti":"bench-1","iat":%d,"exp":%d}' "$now" $((now + 3600)) | b64url)
sig=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -mac HMAC -macopt "key:$secret" -binary | b64url)
token="$header.$claims.$sig"

# One Redis.
single=$(free_port); redis "$single" "$dir/single"
# A Cluster of three masters (no replicas: the bench measures the read path).
cports=(); for i in 0 1 2; do p=$(free_port); cports+=("$p")
  redis "$p" "$dir/c$i" --cluster-enabled yes --cluster-config-file nodes.conf; done
redis-cli --cluster create "${cports[@]/#/127.0.0.1:}" --cluster-yes >/dev/null
for _ in $(seq 100); do redis-cli -p "${cports[0]}" CLUSTER INFO | grep -q cluster_state:ok && break; sleep 0.1; done
# A master, a replica and three sentinels.
master=$(free_port); redis "$master" "$dir/m"
replica=$(free_port); redis "$replica" "$dir/r" --replicaof 127.0.0.1 "$master"
sports=(); for i in 0 1 2; do p=$(free_port); sports+=("$p"); mkdir -p "$dir/s$i"
  printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor bench 127.0.0.1 %s 2\n' \
    "$p" "$dir/s$i" "$master" > "$dir/s$i/sentinel.conf"
  redis-server "$dir/s$i/sentinel.conf" --sentinel >/dev/null 2>&1 & pids+=($!); done
for p in "${sports[@]}"; do
  for _ in $(seq 100); do [ "$(redis-cli -p "$p" PING 2>/dev/null)" = PONG ] && break; sleep 0.05; done
done

list() { local out="" p; for p in "$@"; do out="$out\"redis://127.0.0.1:$p\", "; done; echo "[${out%, }]"; }
stores=(
  "memory|store = \"memory\""
  "redis|store = \"redis\"
redis_url = \"redis://127.0.0.1:$single/0\""
  "redis-cluster|store = \"redis-cluster\"
redis_urls = $(list "${cports[@]}")"
  "redis-sentinel|store = \"redis-sentinel\"
redis_urls = $(list "${sports[@]}")
sentinel_master = \"bench\""
)

run_one() { # name revocation-toml
  local name=$1 rev=$2 port admin pid out rps p99
  port=$(free_port); admin=$(free_port)
  cat > "$dir/proxy.toml" <<EOF
[server]
worker_threads = 1
access_log = "off"
[admin]
bind = "127.0.0.1:$admin"
[[listener]]
name = "http"
bind = "127.0.0.1:$port"
protocols = ["http1"]
[revocation]
$rev
[auth.users]
type = "jwt"
algorithms = ["HS256"]
secret_file = "secret"
revocation = true
[[route]]
name = "auth"
respond = { status = 200, body = "ok\n" }
auth = "users"
EOF
  "$bin" --config "$dir/proxy.toml" 2>"$dir/stderr.$name" &
  pid=$!; pids+=("$pid")
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$admin/ready" >/dev/null && break; sleep 0.1; done
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/x")
  [ "$code" = 200 ] || { echo "$name: token refused ($code)" >&2; cat "$dir/stderr.$name" >&2; exit 1; }
  out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency -H "Authorization: Bearer $token" "http://127.0.0.1:$port/x")
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf '%-15s %10s req/s   p99 %8s   non-2xx %s\n' "$name" "$rps" "$p99" "${non2xx:-0}"
}

echo "portico $(git rev-parse --short HEAD), wrk -t1 -c$conns -d${secs}s, worker_threads = 1, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for s in "${stores[@]}"; do run_one "${s%%|*}" "${s#*|}"; done
