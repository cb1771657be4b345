#!/usr/bin/env bash
# Memory of idle client connections: for each kind (plain HTTP/1.1
# keepalive, HTTP/1.1 over TLS 1.3, HTTP/2 over TLS 1.3), a fresh portico
# (one worker thread) gets N connections, one request on each, then they sit
# idle; the RSS growth divided by N is printed. Loopback only.
#
#   benches/idle_memory/run.sh            N=2000, target/release/portico
#   N=500 PORTICO_BIN=... benches/idle_memory/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-2000}
KINDS=${KINDS:-"h1 h1tls h2"}
PORTICO_BIN=${PORTICO_BIN:-target/release/portico}
PORT=${PORT:-18090}
ADMIN_PORT=${ADMIN_PORT:-18091}
[ -x "$PORTICO_BIN" ] || cargo build --release --bin portico
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
trap '[ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/key.pem" -out "$work/cert.pem" -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null

for kind in $KINDS; do
    case $kind in
        h1) tls=""; protocols='["http1"]' ;;
        h1tls) tls='tls = { cert = "cert.pem", key = "key.pem" }'; protocols='["http1"]' ;;
        h2) tls='tls = { cert = "cert.pem", key = "key.pem" }'; protocols='["http2"]' ;;
        *) echo "unknown kind $kind" >&2; exit 2 ;;
    esac
    cat >"$work/proxy.toml" <<TOML
[server]
worker_threads = 1
access_log = "off"

[admin]
bind = "127.0.0.1:$ADMIN_PORT"

[[listener]]
name = "in"
bind = "127.0.0.1:$PORT"
protocols = $protocols
$tls

[[route]]
name = "all"
match.path_prefix = "/"
respond = { status = 200, body = "ok" }
TOML
    "$PORTICO_BIN" --config "$work/proxy.toml" >"$work/portico.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        curl -s -o /dev/null "http://127.0.0.1:$ADMIN_PORT/health" && break
        sleep 0.05
    done
    python3 benches/idle_memory/idle_conns.py "$kind" "127.0.0.1:$PORT" "$pid" "$N"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
done
