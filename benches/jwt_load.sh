#!/usr/bin/env bash
# Side-by-side load: the same route with and without an ES256 JWT policy,
# the same token reused (so the verified-token cache answers), in one
# portico process on one worker thread, wrk on loopback. Prints requests/s of
# each and the ratio.
#
# ROUTE=respond (default): `respond` routes, no upstream work, the harshest
# ratio auth can show. ROUTE=proxy: routes that forward to a local nginx
# answering "ok" (apt: nginx-light), what a JWT-protected API route is.
# With taskset available, portico runs on CPU 0 and wrk (and nginx) on CPU 1.
#
# Needs: a release build (cargo build --release; PORTICO_BIN=target/dist/portico
# measures the PGO build of scripts/build-pgo.sh instead), wrk, openssl, python3.
# Usage: [ROUTE=proxy] benches/jwt_load.sh [seconds per run, default 5] [rounds, default 7]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
rounds="${2:-7}"
bin=${PORTICO_BIN:-target/release/portico}
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
dir=$(mktemp -d)
route=${ROUTE:-respond}
pid=
trap 'kill "$pid" 2>/dev/null || true; [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
port=$(free_port)
admin=$(free_port)

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/es256.key" 2>/dev/null
openssl pkey -in "$dir/es256.key" -pubout -out "$dir/es256.pub"
now=$(date +%s)
token=$(scripts/es256-jwt.sh "$dir/es256.key" \
  "$(printf '{"sub":"user-1234","iss":"https://idp.example","aud":"api","jti":"load-1","iat":%d,"exp":%d,"scope":"read"}' \
    "$now" $((now + 3600)))")

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
[auth.users]
type = "jwt"
algorithms = ["ES256"]
keys = ["es256.pub"]
issuer = ["https://idp.example"]
audience = ["api"]
forward_claims = { sub = "x-user-id" }
EOF
pin_proxy=() pin_load=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_proxy=(taskset -c 0) pin_load=(taskset -c 1)
fi
case "$route" in
  respond) action='respond = { status = 200, body = "ok\n" }' ;;
  proxy)
    command -v nginx >/dev/null || { echo "ROUTE=proxy needs nginx (apt: nginx-light)" >&2; exit 1; }
    backend=$(free_port)
    mkdir -p "$dir/tmp" && chmod 755 "$dir" "$dir/tmp"
    cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
daemon on;
pid $dir/nginx.pid;
error_log $dir/nginx.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $dir/tmp/b; proxy_temp_path $dir/tmp/p; fastcgi_temp_path $dir/tmp/f;
  uwsgi_temp_path $dir/tmp/u; scgi_temp_path $dir/tmp/s;
  server { listen 127.0.0.1:$backend; location / { return 200 "ok\n"; } }
}
EOF
    "${pin_load[@]}" nginx -c "$dir/nginx.conf" -p "$dir"
    printf '[upstream.app]\nservers = ["127.0.0.1:%s"]\n' "$backend" >> "$dir/proxy.toml"
    action='upstream = "app"' ;;
  *) echo "ROUTE is respond or proxy" >&2; exit 1 ;;
esac
cat >> "$dir/proxy.toml" <<EOF
[[route]]
name = "open"
match.path_prefix = "/open/"
$action
[[route]]
name = "auth"
match.path_prefix = "/auth/"
$action
auth = "users"
EOF
"${pin_proxy[@]}" "$bin" --config "$dir/proxy.toml" 2>"$dir/stderr" &
pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$admin/ready" >/dev/null && break; sleep 0.1; done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/auth/x")
[ "$code" = 200 ] || { echo "token refused ($code)" >&2; cat "$dir/stderr" >&2; exit 1; }

# portico's CPU time so far, in clock ticks (utime + stime).
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
# "REQ/S US_PER_REQUEST": wrk's rate and portico's CPU per request.
rate() {
  local t0 t1 out
  t0=$(ticks)
  out=$("${pin_load[@]}" wrk -t1 -c32 -d"${secs}s" "$@")
  t1=$(ticks)
  echo "$out" | awk -v t=$((t1 - t0)) -v hz="$hz" '
    /Requests\/sec/ {rps = $2}
    /requests in/ {n = $1}
    END {printf "%s %.2f\n", rps, (n > 0 ? t / hz * 1e6 / n : 0)}'
}
# Alternate the two, several rounds, so a noisy neighbour hits both alike;
# report each round's ratio and their median.
ratios=()
for round in $(seq "$rounds"); do
  read -r o ocpu < <(rate "http://127.0.0.1:$port/open/x")
  read -r a acpu < <(rate -H "Authorization: Bearer $token" "http://127.0.0.1:$port/auth/x")
  r=$(echo "scale=3; $a / $o" | bc -l)
  ratios+=("$r")
  echo "round $round: no auth $o req/s ($ocpu us CPU/req), ES256 (cached) $a req/s ($acpu us CPU/req), ratio $r"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}')
echo "median ratio auth/no-auth ($route routes) over $rounds rounds: $median"
