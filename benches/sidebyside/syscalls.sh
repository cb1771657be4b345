#!/usr/bin/env bash
# Syscalls per request of each proxy under the run.sh loads, counted with
# `perf stat` on syscall tracepoints (cheap: no strace slowdown), and the
# TCP segments per request the whole machine sent meanwhile (all of them
# are the load's: client <-> proxy <-> backends, on loopback), from
# /proc/net/snmp and /proc/net/netstat: the kernel's cost per request
# follows the packets.
#
#   SKIP_BUILD=1 benches/sidebyside/syscalls.sh
#
# Prints a markdown table (also saved as benches/out/syscalls-DATE/syscalls.md).
# Same setup, knobs and ports as run.sh; COUNT_SECONDS (5) per measurement.
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COUNT_SECONDS=${COUNT_SECONDS:-5}
SYSCALLS=(read recvfrom recvmsg readv write writev sendto sendmsg epoll_wait epoll_pwait
    epoll_ctl accept4 connect close socket setsockopt getsockopt)

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need_common_tools
need perf linux-perf
build_portico

RUN_DIR=$OUT_ROOT/syscalls-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN_DIR"
setup_work
check_ports_free
gen_cert
write_configs
start_backends
read -r -a PROXY_LIST <<<"$PROXIES"
for p in "${PROXY_LIST[@]}"; do
    start_proxy "$p"
    smoke_test "$p"
done

events=(-e raw_syscalls:sys_enter)
for s in "${SYSCALLS[@]}"; do events+=(-e "syscalls:sys_enter_$s"); done

for sc in $SCENARIOS; do
    for p in "${PROXY_LIST[@]}"; do
        load_argv "$p" "$sc" $((COUNT_SECONDS + 3))
        start_load "$RUN_DIR/load-$p-$sc.txt"
        sleep 1
        pids=$(proxy_pids "${PROXY_PID[$p]}" | paste -sd, -)
        a0=$(backend_accepts)
        cat /proc/net/snmp /proc/net/netstat >"$RUN_DIR/tcp0-$p-$sc.txt"
        perf stat -x, "${events[@]}" -p "$pids" -o "$RUN_DIR/stat-$p-$sc.csv" -- sleep "$COUNT_SECONDS"
        cat /proc/net/snmp /proc/net/netstat >"$RUN_DIR/tcp1-$p-$sc.txt"
        a1=$(backend_accepts)
        finish_load || die "load generator failed: see $RUN_DIR/load-$p-$sc.txt"
        echo "$((a1 - a0 - 1))" >"$RUN_DIR/accepts-$p-$sc.txt"
        log "$p $sc counted"
    done
done

python3 - "$RUN_DIR" "$COUNT_SECONDS" "$PROXIES" "$SCENARIOS" <<'EOF' | tee "$RUN_DIR/syscalls.md"
import re, sys
run, secs, proxies, scens = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
print(f"Syscalls per request ({secs:.0f} s window inside a longer load; requests = load rate x window).\n")
names = None
rows = []
for sc in scens:
    for p in proxies:
        txt = open(f"{run}/load-{p}-{sc}.txt").read()
        m = re.search(r"Requests/sec:\s+([\d.]+)", txt) or re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", txt)
        rps = float(m.group(1))
        reqs = rps * secs
        counts = {}
        for line in open(f"{run}/stat-{p}-{sc}.csv"):
            f = line.strip().split(",")
            if len(f) > 2 and f[2].startswith(("raw_syscalls", "syscalls")):
                n = f[2].split(":")[1].replace("sys_enter_", "").replace("sys_enter", "all")
                try:
                    counts[n] = int(f[0])
                except ValueError:
                    counts[n] = 0
        accepts = int(open(f"{run}/accepts-{p}-{sc}.txt").read())
        counts["upstream connects"] = accepts
        if names is None:
            names = ["all"] + [k for k in counts if k != "all"]
        rows.append((sc, p, rps, {k: v / reqs for k, v in counts.items()}))
shown = [n for n in names if any(r[3].get(n, 0) >= 0.005 for r in rows)]
print("| scenario | proxy | req/s | " + " | ".join(shown) + " |")
print("| --- | --- | ---: | " + " | ".join("---:" for _ in shown) + " |")
for sc, p, rps, per in rows:
    print(f"| {sc} | {p} | {rps:,.0f} | " + " | ".join(f"{per.get(n, 0):.2f}" for n in shown) + " |")

def tcp_counters(path):
    lines = open(path).read().splitlines()
    out = {}
    for head, vals in zip(lines, lines[1:]):
        h, v = head.split(), vals.split()
        if h[0] == v[0] and h[0] in ("Tcp:", "TcpExt:") and not v[1].lstrip("-").isalpha():
            out.update({f"{h[0]}{k}": int(x) for k, x in zip(h[1:], v[1:])})
    return out

tcp = [("Tcp:OutSegs", "segments"), ("TcpExt:TCPPureAcks", "pure ACKs in"), ("TcpExt:DelayedACKs", "delayed ACKs"),
       ("TcpExt:TCPAutoCorking", "autocorked"), ("TcpExt:TCPHPAcks", "header-predicted ACKs")]
print("\nTCP per request, whole machine (both hops, both directions).\n")
print("| scenario | proxy | " + " | ".join(t[1] for t in tcp) + " |")
print("| --- | --- | " + " | ".join("---:" for _ in tcp) + " |")
for sc, p, rps, per in rows:
    a, b = tcp_counters(f"{run}/tcp0-{p}-{sc}.txt"), tcp_counters(f"{run}/tcp1-{p}-{sc}.txt")
    reqs = rps * secs
    print(f"| {sc} | {p} | " + " | ".join(f"{(b.get(k, 0) - a.get(k, 0)) / reqs:.2f}" for k, _ in tcp) + " |")
EOF
