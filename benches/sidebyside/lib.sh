# shellcheck shell=bash
# Shared pieces of the side-by-side harness (sourced by run.sh, profile.sh
# and syscalls.sh).
#
# Everything listens on and talks to 127.0.0.1 only. Every process started
# here is recorded in STARTED_PIDS and stopped by `cleanup` (run from an EXIT
# trap). Generated configs, certificates and keys live in the mktemp dir
# $WORK, which cleanup removes; results go to $RUN_DIR under benches/out/.

export PATH="$PATH:/usr/sbin:/sbin"

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/../.." && pwd)

# ---- knobs (environment) ----------------------------------------------------
DURATION=${DURATION:-10}          # seconds per measured run
ROUNDS=${ROUNDS:-3}               # interleaved rounds
WARMUP=${WARMUP:-2}               # seconds of unmeasured load per proxy+scenario before round 1
SETTLE=${SETTLE:-1}               # pause between runs
CONNS=${CONNS:-50}                # client connections (both scenarios)
H2_STREAMS=${H2_STREAMS:-10}      # concurrent streams per h2 connection
HS_CONNS=${HS_CONNS:-10}          # scenario hs: concurrent clients, each reconnecting per request
TLS13_CIPHERS=${TLS13_CIPHERS:-TLS_AES_128_GCM_SHA256}  # one suite for every proxy (h2load offers only this)
PROXIES=${PROXIES:-"portico nginx haproxy"}
SCENARIOS=${SCENARIOS:-"h1 h1big h2"}
PROXY_CPU=${PROXY_CPU:-0}         # core the proxy under test is pinned to
LOAD_CPU=${LOAD_CPU:-1}           # core for load generator and backends
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-32}   # nginx upstream keepalive cache
PORTICO_MAX_IDLE=${PORTICO_MAX_IDLE:-0}  # portico max_idle_per_server (0: its default, sized to demand)
NICE=${NICE:-0}                   # e.g. -10: proxies, backends and load win the CPU over other sessions' work (see boost)
OUT_ROOT=${OUT_DIR:-$REPO_ROOT/benches/out}
PORTICO_BIN=${PORTICO_BIN:-$REPO_ROOT/target/release/portico}
PORTICO_B_BIN=${PORTICO_B_BIN:-}  # proxy "portico-b": a second portico build, for an A/B in one run

# ---- fixed ports (127.0.0.1) -------------------------------------------------
BACKEND_PORTS="19001 19002 19003"
BACKEND_STATUS_PORT=19000         # backend nginx stub_status: counts new upstream connections
declare -A H1_PORT=([portico]=18080 [nginx]=18081 [haproxy]=18082 [portico-b]=18083)
declare -A H2_PORT=([portico]=18443 [nginx]=18444 [haproxy]=18445 [portico-b]=18446)
declare -A ADMIN_PORT=([portico]=19901 [portico-b]=19902)

declare -A PROXY_PID=()
STARTED_PIDS=()
WORK=""
APT_UPDATED=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need CMD PACKAGE: install PACKAGE with apt-get when CMD is missing.
need() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return 0
    log "$cmd not found: apt-get install -y $pkg"
    if [[ -z $APT_UPDATED ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg"
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd still missing after installing $pkg"
}

need_common_tools() {
    need taskset util-linux
    need ps procps
    need getconf libc-bin
    need openssl openssl
    need curl curl
    need python3 python3
    need nginx nginx-light
    need haproxy haproxy
    need wrk wrk
    need h2load nghttp2-client
}

build_portico() {
    if [[ -n ${PORTICO_REF:-} ]]; then
        # Build a committed revision, untouched by uncommitted edits in the
        # work tree: exported under benches/out/, own target dir (reused).
        local rev src
        rev=$(git -C "$REPO_ROOT" rev-parse --verify "$PORTICO_REF^{commit}")
        src=$OUT_ROOT/src-${rev:0:12}
        if [[ ! -d $src ]]; then
            mkdir -p "$src"
            git -C "$REPO_ROOT" archive "$rev" | tar -x -C "$src"
        fi
        log "cargo build --release of $PORTICO_REF ($rev) in $src"
        (cd "$src" && CARGO_TARGET_DIR=$OUT_ROOT/target-ref cargo build --release --bin portico)
        PORTICO_BIN=$OUT_ROOT/target-ref/release/portico
        PORTICO_BUILT_FROM="commit $rev"
        [[ $PORTICO_REF == "$rev" ]] || PORTICO_BUILT_FROM="$PORTICO_REF = commit $rev"
    elif [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "cargo build --release (in $REPO_ROOT)"
        (cd "$REPO_ROOT" && cargo build --release)
        PORTICO_BUILT_FROM="work tree at $(git -C "$REPO_ROOT" rev-parse --short HEAD)$(git -C "$REPO_ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes')"
    else
        PORTICO_BUILT_FROM="prebuilt (SKIP_BUILD=1), binary modified $(date -r "$PORTICO_BIN" 2>/dev/null || echo '?')"
    fi
    [[ -x $PORTICO_BIN ]] || die "portico binary not found at $PORTICO_BIN"
}

cleanup() {
    local rc=$? pid i
    trap - EXIT
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop on TERM: KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $WORK && -d $WORK ]]; then
        rm -rf "$WORK"
    fi
    exit "$rc"
}

# port_open PORT: something accepts TCP on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports_free() {
    local p
    for p in $BACKEND_STATUS_PORT $BACKEND_PORTS "${H1_PORT[@]}" "${H2_PORT[@]}" "${ADMIN_PORT[@]}"; do
        if port_open "$p"; then
            die "127.0.0.1:$p is already in use (another harness running?)"
        fi
    done
}

# wait_port PORT PID NAME
wait_port() {
    local port=$1 pid=$2 name=$3 i
    for ((i = 0; i < 100; i++)); do
        port_open "$port" && return 0
        kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) exited during start-up; see $RUN_DIR/logs/$name.log"
        sleep 0.1
    done
    die "$name did not listen on 127.0.0.1:$port within 10 s"
}

# boost PID: with NICE set, give PID's session (autogroup) that nice value.
# With kernel.sched_autogroup_enabled = 1 a plain `nice` only ranks processes
# within their own session, so it cannot win over another session's compile;
# the session's autogroup nice can. Processes are started with setsid, so each
# gets its own session; this waits until the child has called setsid().
boost() {
    local pid=$1 i
    [[ $NICE == 0 ]] && return 0
    for ((i = 0; i < 100; i++)); do
        [[ $(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ') == "$pid" ]] && break
        sleep 0.01
    done
    if [[ -w /proc/$pid/autogroup ]]; then
        echo "$NICE" >"/proc/$pid/autogroup" 2>/dev/null || true
    fi
}

# spawn CMD...: runs CMD in the background (in its own session when NICE is
# set); sets SPAWNED to its pid. setsid, nice and taskset exec CMD, and a
# script's background job is no process-group leader, so setsid does not
# fork: $! is the program's own pid.
spawn() {
    if [[ $NICE != 0 ]]; then
        setsid nice -n "$NICE" "$@" &
    else
        "$@" &
    fi
    SPAWNED=$!
    boost "$SPAWNED"
}

# start NAME CPU CMD...: starts CMD pinned to CPU, logs to $RUN_DIR/logs/NAME.log.
start() {
    local name=$1 cpu=$2
    shift 2
    spawn taskset -c "$cpu" "$@" >"$RUN_DIR/logs/$name.log" 2>&1
    STARTED_PIDS+=("$SPAWNED")
    PROXY_PID[$name]=$SPAWNED
    log "started $name (pid $SPAWNED, cpu $cpu)"
}

# start_load OUTFILE: starts LOAD_ARGV in the background, output to OUTFILE;
# sets LOAD_PID. finish_load waits for it and returns its exit status.
start_load() {
    spawn "${LOAD_ARGV[@]}" >"$1" 2>&1
    LOAD_PID=$SPAWNED
    STARTED_PIDS+=("$LOAD_PID")
}

finish_load() {
    local rc=0 i
    wait "$LOAD_PID" || rc=$?
    for i in "${!STARTED_PIDS[@]}"; do
        [[ ${STARTED_PIDS[$i]} == "$LOAD_PID" ]] && unset 'STARTED_PIDS[i]'
    done
    STARTED_PIDS=("${STARTED_PIDS[@]}")
    return "$rc"
}

setup_work() {
    WORK=$(mktemp -d -t portico-sidebyside.XXXXXX)
    mkdir -p "$WORK/tls" "$RUN_DIR/logs" "$RUN_DIR/configs"
    for d in backend nginx; do
        mkdir -p "$WORK/$d/tmp"
        # nginx workers run as "nobody" when started by root.
        chmod 755 "$WORK" "$WORK/$d" "$WORK/$d/tmp"
    done
}

gen_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days 2 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null
    cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >"$WORK/tls/haproxy.pem"
    chmod 644 "$WORK/tls/"*.pem
}

nginx_temp_paths() {
    local t=$1
    cat <<EOF
    client_body_temp_path $t/client_body;
    proxy_temp_path $t/proxy;
    fastcgi_temp_path $t/fastcgi;
    uwsgi_temp_path $t/uwsgi;
    scgi_temp_path $t/scgi;
EOF
}

write_backend_conf() {
    # /16k: a 16 KiB body (scenario h1big)
    mkdir -p "$WORK/backend/www"
    head -c 16384 /dev/zero | tr '\0' 'x' >"$WORK/backend/www/16k"
    local f=$WORK/backend/nginx.conf p
    {
        cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    default_type text/plain;
$(nginx_temp_paths "$WORK/backend/tmp")
EOF
        for p in $BACKEND_PORTS; do
            echo "    server { listen 127.0.0.1:$p backlog=4096; location / { return 200 \"ok\"; }"
            echo "        location = /16k { root $WORK/backend/www; } }"
        done
        echo "    server { listen 127.0.0.1:$BACKEND_STATUS_PORT; location / { stub_status; } }"
        echo "}"
    } >"$f"
}

write_nginx_conf() {
    local f=$WORK/nginx/nginx.conf p
    {
        cat <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;     # also caps requests per HTTP/2 connection since 1.19.7
    keepalive_timeout 300s;
$(nginx_temp_paths "$WORK/nginx/tmp")
    upstream backends {
EOF
        for p in $BACKEND_PORTS; do echo "        server 127.0.0.1:$p;"; done
        cat <<EOF
        keepalive $NGINX_KEEPALIVE;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:${H1_PORT[nginx]} backlog=4096;
        listen 127.0.0.1:${H2_PORT[nginx]} ssl http2 backlog=4096;
        ssl_certificate $WORK/tls/cert.pem;
        ssl_certificate_key $WORK/tls/key.pem;
        ssl_protocols TLSv1.3;
        # No resumption anywhere: scenario hs measures full handshakes.
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Same forwarding work as portico does by default.
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
            add_header X-Request-Id \$request_id always;
        }
    }
}
EOF
    } >"$f"
}

write_haproxy_conf() {
    local f=$WORK/haproxy.cfg i=1 p
    {
        cat <<EOF
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
    tune.ssl.cachesize 0

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    # no "log" lines: no access log

frontend fe
    bind 127.0.0.1:${H1_PORT[haproxy]}
    bind 127.0.0.1:${H2_PORT[haproxy]} ssl crt $WORK/tls/haproxy.pem alpn h2,http/1.1
    # Same forwarding work as portico does by default.
    option forwardfor
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    unique-id-format %[uuid()]
    unique-id-header X-Request-Id
    http-response set-header X-Request-Id %[unique-id]
    default_backend be

backend be
    balance roundrobin
    http-reuse always
EOF
        for p in $BACKEND_PORTS; do
            echo "    server s$i 127.0.0.1:$p"
            i=$((i + 1))
        done
    } >"$f"
}

# write_portico_conf [NAME]: the config of proxy NAME (portico or portico-b).
write_portico_conf() {
    local name=${1:-portico}
    local f=$WORK/$name.toml servers="" p
    for p in $BACKEND_PORTS; do servers+="\"127.0.0.1:$p\", "; done
    cat >"$f" <<EOF
[server]
worker_threads = 1
access_log = "off"

[admin]
bind = "127.0.0.1:${ADMIN_PORT[$name]}"

[[listener]]
name = "h1"
bind = "127.0.0.1:${H1_PORT[$name]}"
protocols = ["http1"]
backlog = 4096

[[listener]]
name = "tls"
bind = "127.0.0.1:${H2_PORT[$name]}"
protocols = ["http1", "http2"]
backlog = 4096
tls = { cert = "tls/cert.pem", key = "tls/key.pem", session_tickets = false }

[[route]]
name = "all"
match.path_prefix = "/"
upstream = "backends"

[upstream.backends]
servers = [${servers%, }]
max_idle_per_server = $PORTICO_MAX_IDLE
EOF
}

write_configs() {
    write_backend_conf
    write_nginx_conf
    write_haproxy_conf
    write_portico_conf
    [[ -n $PORTICO_B_BIN ]] && write_portico_conf portico-b
    cp "$WORK/backend/nginx.conf" "$RUN_DIR/configs/backend-nginx.conf"
    cp "$WORK/nginx/nginx.conf" "$RUN_DIR/configs/nginx.conf"
    cp "$WORK/haproxy.cfg" "$RUN_DIR/configs/haproxy.cfg"
    cp "$WORK/portico.toml" "$RUN_DIR/configs/portico.toml"
}

start_backends() {
    nginx -t -q -e "$WORK/backend/error.log" -p "$WORK/backend" -c "$WORK/backend/nginx.conf"
    start backend "$LOAD_CPU" nginx -e "$WORK/backend/error.log" -p "$WORK/backend" -c "$WORK/backend/nginx.conf"
    local p
    for p in $BACKEND_PORTS; do wait_port "$p" "${PROXY_PID[backend]}" backend; done
}

# proxy_cmd NAME: checks NAME's config and sets PROXY_CMD to the command
# line that runs it in the foreground.
proxy_cmd() {
    case $1 in
    portico)
        "$PORTICO_BIN" check --config "$WORK/portico.toml" >/dev/null
        PROXY_CMD=("$PORTICO_BIN" --config "$WORK/portico.toml")
        ;;
    portico-b)
        [[ -x $PORTICO_B_BIN ]] || die "portico-b needs PORTICO_B_BIN (a portico binary)"
        "$PORTICO_B_BIN" check --config "$WORK/portico-b.toml" >/dev/null
        PROXY_CMD=("$PORTICO_B_BIN" --config "$WORK/portico-b.toml")
        ;;
    nginx)
        nginx -t -q -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
        PROXY_CMD=(nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf")
        ;;
    haproxy)
        haproxy -c -q -f "$WORK/haproxy.cfg"
        PROXY_CMD=(haproxy -db -f "$WORK/haproxy.cfg")
        ;;
    *) die "unknown proxy $1" ;;
    esac
}

start_proxy() {
    local name=$1
    proxy_cmd "$name"
    start "$name" "$PROXY_CPU" "${PROXY_CMD[@]}"
    wait_port "${H1_PORT[$name]}" "${PROXY_PID[$name]}" "$name"
    wait_port "${H2_PORT[$name]}" "${PROXY_PID[$name]}" "$name"
}

# smoke_test NAME: one request per scenario through the proxy must return "ok".
smoke_test() {
    local name=$1 body ver
    body=$(curl -sS --max-time 5 "http://127.0.0.1:${H1_PORT[$name]}/")
    [[ $body == ok ]] || die "$name h1 smoke test: got '$body'"
    body=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code} %{size_download}' \
        "http://127.0.0.1:${H1_PORT[$name]}/16k")
    [[ $body == "200 16384" ]] || die "$name h1big smoke test: got '$body'"
    ver=$(curl -sSk --max-time 5 --http2 --tlsv1.3 -o /dev/null -w '%{http_version}' \
        "https://127.0.0.1:${H2_PORT[$name]}/")
    [[ $ver == 2 ]] || die "$name TLS smoke test: HTTP version '$ver', expected 2"
}

# All pids of a proxy: the main process and its children (nginx workers).
proxy_pids() {
    local main=$1
    echo "$main"
    cat /proc/"$main"/task/*/children 2>/dev/null | tr -s ' ' '\n' | grep . || true
}

# proc_ticks PID: "utime+stime stime" (clock ticks) of the process and its
# children. /proc/PID/stat of a thread-group leader sums all its threads.
proc_ticks() {
    local total=0 sys=0 p t s
    for p in $(proxy_pids "$1"); do
        read -r t s < <(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13, $13}') || true
        total=$((total + ${t:-0}))
        sys=$((sys + ${s:-0}))
    done
    echo "$total $sys"
}

# core_stat CPU: "busy total" jiffies of one core from /proc/stat.
core_stat() {
    awk -v c="cpu$1" '$1 == c { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6 }' /proc/stat
}

# machine_ctxt: context switches since boot, every core (/proc/stat).
machine_ctxt() {
    awk '$1 == "ctxt" { print $2 }' /proc/stat
}

# backend_ctxsw: context switches of the backend nginx processes so far
# (voluntary and not): how often the backends went to sleep and were woken.
backend_ctxsw() {
    local total=0 p n
    for p in $(proxy_pids "${PROXY_PID[backend]}"); do
        n=$(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' "/proc/$p/status" 2>/dev/null) || n=0
        total=$((total + n))
    done
    echo "$total"
}

# backend_accepts: connections the backends have accepted so far (the status
# request itself included).
backend_accepts() {
    curl -sS --max-time 5 "http://127.0.0.1:$BACKEND_STATUS_PORT/" | awk 'NR == 3 { print $1 }'
}

# load_argv NAME SCENARIO SECONDS [LOGFILE]: sets LOAD_ARGV to the pinned
# load generator command line.
load_argv() {
    local name=$1 sc=$2 secs=$3 logf=${4:-}
    case $sc in
    h1)
        LOAD_ARGV=(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${secs}s" --latency
            "http://127.0.0.1:${H1_PORT[$name]}/")
        ;;
    h1big)
        LOAD_ARGV=(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${secs}s" --latency
            "http://127.0.0.1:${H1_PORT[$name]}/16k")
        ;;
    hs)
        # A new TCP connection and full TLS 1.3 handshake for every request.
        LOAD_ARGV=(taskset -c "$LOAD_CPU" wrk -t1 -c"$HS_CONNS" -d"${secs}s" --latency
            -H "Connection: close" "https://127.0.0.1:${H2_PORT[$name]}/")
        ;;
    h2)
        LOAD_ARGV=(taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D "$secs"
            --tls13-ciphers="$TLS13_CIPHERS")
        [[ -n $logf ]] && LOAD_ARGV+=("--log-file=$logf")
        LOAD_ARGV+=("https://127.0.0.1:${H2_PORT[$name]}/")
        ;;
    *) die "unknown scenario $sc" ;;
    esac
}
