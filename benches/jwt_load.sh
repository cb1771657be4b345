#!/usr/bin/env bash
# Side-by-side load: the same `respond` route with and without an ES256 JWT
# policy, the same token reused (so the verified-token cache answers), in one
# portico process on one worker thread, wrk on loopback. Prints requests/s of
# each and the ratio. A respond route does no upstream work, so this is the
# harshest ratio auth can show; a proxied route only dilutes it.
#
# Needs: a release build (cargo build --release), wrk, openssl, xxd.
# Usage: benches/jwt_load.sh [seconds per run, default 5] [rounds, default 7]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
rounds="${2:-7}"
bin=target/release/portico
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
port=$(free_port)
admin=$(free_port)

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/es256.key" 2>/dev/null
openssl pkey -in "$dir/es256.key" -pubout -out "$dir/es256.pub"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"ES256","typ":"JWT"}' | b64url)
claims=$(printf '{"sub":"user-1234","iss":"https://idp.example","aud":"api","jti":"load-1","iat":%d,"exp":%d,"scope":"read"}' \
  "$now" $((now + 3600)) | b64url)
sig=$(printf '%s.%s' "$header" "$claims" | openssl dgst -sha256 -sign "$dir/es256.key" \
  | openssl asn1parse -inform DER | awk -F: '/INTEGER/{print $NF}' \
  | while read -r h; do h=$(printf '%064s' "$h" | tr ' ' 0); printf '%s' "${h: -64}"; done \
  | xxd -r -p | b64url)
token="$header.$claims.$sig"

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
[[route]]
name = "open"
match.path_prefix = "/open/"
respond = { status = 200, body = "ok\n" }
[[route]]
name = "auth"
match.path_prefix = "/auth/"
respond = { status = 200, body = "ok\n" }
auth = "users"
EOF
"$bin" --config "$dir/proxy.toml" 2>"$dir/stderr" &
pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$admin/ready" >/dev/null && break; sleep 0.1; done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/auth/x")
[ "$code" = 200 ] || { echo "token refused ($code)" >&2; cat "$dir/stderr" >&2; exit 1; }

rate() { wrk -t1 -c32 -d"${secs}s" "$@" | awk '/Requests\/sec/{print $2}'; }
# Alternate the two, several rounds, so a noisy neighbour hits both alike;
# report each round's ratio and their median.
ratios=()
for round in $(seq "$rounds"); do
  o=$(rate "http://127.0.0.1:$port/open/x")
  a=$(rate -H "Authorization: Bearer $token" "http://127.0.0.1:$port/auth/x")
  r=$(echo "scale=3; $a / $o" | bc -l)
  ratios+=("$r")
  echo "round $round: no auth $o req/s, ES256 (cached) $a req/s, ratio $r"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}')
echo "median ratio auth/no-auth over $rounds rounds: $median"
