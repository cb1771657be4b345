#!/usr/bin/env bash
# Builds target/dist/portico: the release binary with whole-program LTO and
# profile-guided optimisation (PGO), the build portico ships.
#
#   scripts/build-pgo.sh
#
# 1. builds portico instrumented ([profile.dist], -Cprofile-generate);
# 2. trains it on loopback: portico in front of three portico backends
#    (`respond` routes), h2load sending plain HTTP/1.1 (100 B and 16 KiB
#    answers), TLS 1.3 + HTTP/2 and HTTP/1.1, and HTTP/1.1 with an ES256
#    JWT on a route that checks it; then HTTP/3 and HTTP/2 from
#    benches/h3load.rs (built with `cargo bench`);
# 3. merges the counts with rustup's llvm-profdata (the llvm-tools
#    component, added when missing) and builds again with them.
#
# Why: the hot path of a proxy is spread over hyper, h2, tokio, rustls and
# portico's own code, and a build without a profile lays it out and inlines
# it blind. With the profile the same requests take about a fifth fewer
# instructions and fit the instruction cache better (benches/RESULTS.md,
# section M). Paths the training does not run (the admin API, Redis, PROXY
# protocol, WebSocket tunnels) are built for size rather than speed.
#
# That the profile took shows in `PORTICO_BIN=target/dist/portico
# benches/sidebyside/instructions.sh`: about 33,000 instructions per
# HTTP/1.1 request, against 42,000 when the profile matched nothing (a
# build whose symbol names differ from the instrumented one's, e.g. one
# with --target, matches nothing, silently).
#
# Needs: cargo and rustup, h2load (apt: nghttp2-client) and openssl; as root
# on a Debian/Ubuntu machine the packages are installed when missing.
# Training takes about a minute (plus the h3load client's first build);
# each build of portico a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/target/pgo
secs=${PGO_TRAIN_SECS:-5}

log() { printf '[build-pgo] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

need_pkg() { # need_pkg COMMAND PACKAGE
    command -v "$1" >/dev/null && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing $2 (for $1)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
    command -v "$1" >/dev/null || die "$1 is missing (apt: $2)"
}
need_pkg h2load nghttp2-client
need_pkg openssl openssl
need_pkg python3 python3

host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [[ ! -x $profdata ]]; then
    log "adding rustup's llvm-tools component (llvm-profdata)"
    rustup component add llvm-tools
fi
[[ -x $profdata ]] || die "no llvm-profdata at $profdata"

rm -rf "$out/raw" "$out/portico.profdata"
mkdir -p "$out/raw"

log "1/3 instrumented build"
# A target directory of its own: other RUSTFLAGS would otherwise rebuild
# target/dist from scratch at each step. No --target: it would change
# every crate's symbol names, and the profile would match nothing in the
# final build. Build scripts are instrumented too, and write their counts
# under other names, which the merge leaves out.
RUSTFLAGS="-Cprofile-generate=$out/raw" \
    cargo build --profile dist --locked --bin portico --target-dir "$out/target"
gen=$out/target/dist/portico

log "2/3 training (${secs} s per load)"
work=$(mktemp -d)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# The head of every config here: one worker, no access log, an admin port.
config_head() {
    printf '[server]\nworker_threads = 1\naccess_log = "off"\n\n[admin]\nbind = "127.0.0.1:%s"\n' "$(free_port)"
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/es256.key" 2>/dev/null
openssl pkey -in "$work/es256.key" -pubout -out "$work/es256.pub"
now=$(date +%s)
token=$(scripts/es256-jwt.sh "$work/es256.key" \
    "$(printf '{"iss":"https://issuer.test","aud":"api","sub":"u1","exp":%d,"iat":%d}' $((now + 3600)) "$now")")

body16k=$(head -c 16384 /dev/zero | tr '\0' 'x')
backends=""
for i in 1 2 3; do
    port=$(free_port)
    cat >"$work/backend$i.toml" <<EOF
$(config_head)

[[listener]]
name = "main"
bind = "127.0.0.1:$port"

[[route]]
name = "big"
match.path_prefix = "/16k"
respond = { status = 200, body = "$body16k" }

[[route]]
name = "ok"
match.path_prefix = "/"
respond = { status = 200, body = "ok\n" }
EOF
    backends+="\"127.0.0.1:$port\", "
done
h1=$(free_port)
tls=$(free_port)
cat >"$work/front.toml" <<EOF
$(config_head)

[[listener]]
name = "h1"
bind = "127.0.0.1:$h1"
protocols = ["http1"]

[[listener]]
name = "tls"
bind = "127.0.0.1:$tls"
protocols = ["http1", "http2"]
tls = { cert = "$work/cert.pem", key = "$work/key.pem" }

[auth.api]
type = "jwt"
algorithms = ["ES256"]
keys = ["$work/es256.pub"]
issuer = ["https://issuer.test"]
audience = ["api"]
forward_claims = { sub = "x-user" }

[[route]]
name = "jwt"
match.path_prefix = "/jwt/"
auth = "api"
upstream = "backends"

[[route]]
name = "all"
match.path_prefix = "/"
upstream = "backends"

[upstream.backends]
servers = [${backends%, }]
EOF

start() { # start NAME CONFIG: the instrumented binary, its counts under $out/raw
    "$gen" check --config "$2" >/dev/null
    LLVM_PROFILE_FILE="$out/raw/$1-%p-%m.profraw" "$gen" --config "$2" >"$work/$1.log" 2>&1 &
    pids+=($!)
}
wait_port() {
    local i
    for ((i = 0; i < 100; i++)); do
        python3 -c "import socket;socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 (see $work/*.log)"
}
for i in 1 2 3; do start "backend$i" "$work/backend$i.toml"; done
start front "$work/front.toml"
wait_port "$h1"
wait_port "$tls"

load() { # load ARGS...: one h2load run, every request answered 200
    local o
    o=$(h2load "$@" 2>&1) || die "h2load $*: $o"
    grep -q ' 0 failed, 0 errored' <<<"$o" || die "h2load $*: requests failed: $o"
    grep -qE 'status codes: [1-9][0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx' <<<"$o" ||
        die "h2load $*: not every answer was a 2xx: $o"
}
load --h1 -t1 -c50 -D "$secs" "http://127.0.0.1:$h1/"
load --h1 -t1 -c50 -D "$secs" "http://127.0.0.1:$h1/16k"
load -t1 -c50 -m10 -D "$secs" "https://127.0.0.1:$tls/"
load --h1 -t1 -c50 -D "$secs" -H "authorization: Bearer $token" "http://127.0.0.1:$h1/jwt/me"
load --h1 -t1 -c10 -n 2000 "https://127.0.0.1:$tls/"
cleanup
trap - EXIT
# HTTP/3 (and HTTP/2 again) with the raw clients of benches/h3load.rs, the
# one QUIC client at hand (h2load speaks no HTTP/3 here): untrained, the
# QUIC path would be built for size and lose about a tenth of its speed.
log "training HTTP/3 (cargo bench --bench h3load)"
LLVM_PROFILE_FILE="$out/raw/h3load-%p-%m.profraw" PORTICO_BENCH_BIN=$gen \
    H3LOAD_SECS=$secs H3LOAD_ROUNDS=1 \
    cargo bench --locked --bench h3load >"$out/h3load.log" 2>&1 ||
    die "the HTTP/3 training failed: see $out/h3load.log"
for p in front backend1 backend2 backend3 h3load; do
    ls "$out"/raw/"$p"-*.profraw >/dev/null 2>&1 ||
        die "the instrumented portico ($p) wrote no profile"
done

log "3/3 optimised build"
"$profdata" merge -o "$out/portico.profdata" \
    "$out"/raw/{front,backend1,backend2,backend3,h3load}-*.profraw
RUSTFLAGS="-Cprofile-use=$out/portico.profdata" \
    cargo build --profile dist --locked --bin portico
log "built target/dist/portico ($(target/dist/portico --version))"
