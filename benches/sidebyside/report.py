#!/usr/bin/env python3
"""Turns the raw outputs of run.sh into a markdown report.

usage: report.py RUNS_TSV [ENV_TXT]

Per run it parses wrk or h2load output, derives latency percentiles, and
computes the proxy's CPU time per request from the /proc tick deltas that
run.sh recorded. Per proxy and scenario it reports the median over rounds
(and the min-max of requests/s), then ratios against HAProxy.
"""
import csv
import statistics
import sys
from collections import defaultdict

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def to_ms(tok):
    """'1.23ms' / '456us' / '1.2s' -> milliseconds."""
    for u in ("us", "ms", "s", "m"):
        if tok.endswith(u):
            return float(tok[: -len(u)]) * UNITS[u]
    raise ValueError(f"bad duration {tok!r}")


def parse_wrk(text):
    r = {"errors": 0}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        f = line.split()
        if not f:
            continue
        if f[0] == "Latency" and len(f) >= 4 and f[1] != "Distribution":
            r["mean_ms"] = to_ms(f[1])
            r["sd_ms"] = to_ms(f[2])
            r["max_ms"] = to_ms(f[3])
        elif f[0] in ("50%", "99%") and len(f) == 2:
            r["p" + f[0][:-1] + "_ms"] = to_ms(f[1])
        elif len(f) >= 4 and f[1] == "requests" and f[2] == "in":
            r["requests"] = int(f[0])
            r["duration_s"] = to_ms(f[3].rstrip(",")) / 1e3
        elif line.startswith("Requests/sec:"):
            r["rps"] = float(f[1])
        elif line.startswith("Non-2xx or 3xx responses:"):
            r["errors"] += int(f[-1])
        elif line.strip().startswith("Socket errors:"):
            # Socket errors: connect 0, read 0, write 0, timeout 0
            nums = [int(x.rstrip(",")) for x in f[2:] if x.rstrip(",").isdigit()]
            r["errors"] += sum(nums)
    r["protocol"] = "HTTP/1.1"
    return r


def parse_h2load(text):
    r = {"errors": 0}
    for line in text.splitlines():
        s = line.strip()
        f = s.split()
        if s.startswith("finished in"):
            # finished in 10.00s, 123.45 req/s, 1.23MB/s
            r["duration_s"] = to_ms(f[2].rstrip(",")) / 1e3
            r["rps"] = float(f[3])
        elif s.startswith("requests:"):
            # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            kv = {f[i + 1].rstrip(","): int(f[i]) for i in range(1, len(f) - 1, 2)}
            r["requests"] = kv["succeeded"]
            r["done"] = kv["done"]
            r["errors"] += kv.get("failed", 0) + kv.get("errored", 0) + kv.get("timeout", 0)
        elif s.startswith("status codes:"):
            # status codes: N 2xx, N 3xx, N 4xx, N 5xx
            kv = {f[i + 1].rstrip(","): int(f[i]) for i in range(2, len(f) - 1, 2)}
            r["errors"] += kv.get("4xx", 0) + kv.get("5xx", 0)
        elif s.startswith("time for request:"):
            # min max mean sd +/-sd
            r["min_ms"], r["max_ms"], r["mean_ms"], r["sd_ms"] = (to_ms(x) for x in f[3:7])
        elif s.startswith("TLS Protocol:"):
            r["tls"] = f[2]
        elif s.startswith("Cipher:"):
            r["cipher"] = f[1]
        elif s.startswith("Application protocol:"):
            r["protocol"] = f[2]
    return r


def percentiles_from_reqlog(path):
    """h2load --log-file: start_us, status, us until end of response."""
    lat = []
    with open(path) as fh:
        for line in fh:
            f = line.split("\t")
            if len(f) >= 3:
                lat.append(int(f[2]))
    if not lat:
        return {}
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] / 1e3

    return {"p50_ms": pct(50), "p99_ms": pct(99), "logged": len(lat)}


def load_runs(tsv):
    runs = []
    with open(tsv) as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            text = open(row["out"]).read()
            if row["scenario"] in ("h1", "h1big", "hs"):
                m = parse_wrk(text)
            else:
                m = parse_h2load(text)
                if row["latlog"] != "-":
                    m.update(percentiles_from_reqlog(row["latlog"]))
            if "rps" not in m or not m.get("requests"):
                sys.exit(f"could not parse {row['out']}")
            ticks, hz = int(row["ticks"]), int(row["clk_tck"])
            cpu_s = ticks / hz
            wall = float(row["wall_s"])
            m.update(
                round=int(row["round"]),
                proxy=row["proxy"],
                scenario=row["scenario"],
                cpu_us_per_req=cpu_s / m["requests"] * 1e6,
                # The kernel's part of it (stime): loopback TCP, epoll, the
                # receiver's softirq run in the sender's context.
                sys_us_per_req=int(row["sys_ticks"]) / hz / m["requests"] * 1e6
                if row.get("sys_ticks")
                else None,
                proxy_cpu_pct=100.0 * cpu_s / m["duration_s"],
                # Everything else busy on the proxy's core (noise, softirq not
                # charged to the proxy), and the load core's utilisation.
                core0_other_pct=100.0
                * max(0, int(row["core0_busy"]) - ticks)
                / max(1, int(row["core0_total"])),
                core1_busy_pct=100.0 * int(row["core1_busy"]) / max(1, int(row["core1_total"])),
                wall_s=wall,
                upstream_conns=int(row["upstream_conns"]),
                loadavg=float(row["loadavg"]),
                # Context switches per 1,000 requests: every process on the
                # machine, and the backends alone (how often a backend slept
                # and was woken: fewer when requests reach it in bursts).
                ctxsw_per_kreq=int(row["ctxt"]) * 1000 / m["requests"] if row.get("ctxt") else None,
                backend_ctxsw_per_kreq=int(row["backend_ctxsw"]) * 1000 / m["requests"]
                if row.get("backend_ctxsw")
                else None,
            )
            runs.append(m)
    return runs


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=2):
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


SCEN_TITLE = {
    "h1": "HTTP/1.1 keepalive (wrk)",
    "h1big": "HTTP/1.1 keepalive, 16 KiB body (wrk)",
    "hs": "full TLS 1.3 handshake + 1 request per connection (wrk)",
    "h2": "TLS 1.3 + HTTP/2 (h2load)",
}


def main():
    runs = load_runs(sys.argv[1])
    env = open(sys.argv[2]).read() if len(sys.argv) > 2 else ""
    groups = defaultdict(list)
    proxies, scens = [], []
    for m in runs:
        groups[(m["proxy"], m["scenario"])].append(m)
        if m["proxy"] not in proxies:
            proxies.append(m["proxy"])
        if m["scenario"] not in scens:
            scens.append(m["scenario"])
    proxies.sort(key=lambda p: {"portico": 0, "portico-b": 1, "nginx": 2, "haproxy": 3}.get(p, 9))
    scens.sort()

    agg = {}
    for key, ms in groups.items():
        agg[key] = {
            k: med([m.get(k) for m in ms])
            for k in (
                "rps", "p50_ms", "p99_ms", "mean_ms", "sd_ms", "max_ms",
                "cpu_us_per_req", "sys_us_per_req", "proxy_cpu_pct", "core0_other_pct", "core1_busy_pct",
                "upstream_conns", "loadavg", "ctxsw_per_kreq", "backend_ctxsw_per_kreq",
            )
        }
        agg[key]["rps_min"] = min(m["rps"] for m in ms)
        agg[key]["rps_max"] = max(m["rps"] for m in ms)
        agg[key]["errors"] = sum(m["errors"] for m in ms)
        agg[key]["n"] = len(ms)
        agg[key]["requests"] = sum(m["requests"] for m in ms)
        agg[key]["proto"] = ",".join(sorted({m.get("protocol", "?") for m in ms}))
        agg[key]["tls"] = ",".join(sorted({m.get("tls", "") + " " + m.get("cipher", "") for m in ms})).strip()

    out = []
    w = out.append
    w("# Side-by-side results\n")
    if env:
        w("```")
        w(env.strip())
        w("```\n")
    w(
        "Medians over rounds; req/s range is min-max over rounds. Latency: h1 "
        "p50/p99 from `wrk --latency` (HdrHistogram); h2 p50/p99 computed from "
        "h2load's per-request log (`--log-file`, time from request start to end of "
        "response), mean and sd are h2load's own `time for request`. CPU µs/req = "
        "proxy utime+stime over the run (all its processes) / requests completed; "
        "of it kernel = stime alone. "
        "proxy CPU % = CPU seconds / run seconds (100 % = the proxy's core is saturated).\n"
    )
    w("| scenario | proxy | req/s (median) | req/s min-max | p50 ms | p99 ms | mean ms | sd ms | CPU µs/req | of it kernel | proxy CPU % | errors |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for sc in scens:
        for p in proxies:
            a = agg.get((p, sc))
            if not a:
                continue
            w(
                f"| {SCEN_TITLE.get(sc, sc)} | {p} | {fmt(a['rps'])} | {fmt(a['rps_min'])}-{fmt(a['rps_max'])} "
                f"| {fmt(a['p50_ms'], 3)} | {fmt(a['p99_ms'], 3)} | {fmt(a['mean_ms'], 3)} | {fmt(a['sd_ms'], 3)} "
                f"| {fmt(a['cpu_us_per_req'], 1)} | {fmt(a['sys_us_per_req'], 1)} | {fmt(a['proxy_cpu_pct'], 0)} | {a['errors']} |"
            )
    w("")

    if "haproxy" in proxies:
        w("## Ratios vs HAProxy (medians)\n")
        w("req/s: higher is better; p50, p99 and CPU/req: lower is better.\n")
        w("| scenario | proxy | req/s ÷ HAProxy | p50 ÷ HAProxy | p99 ÷ HAProxy | CPU/req ÷ HAProxy |")
        w("| --- | --- | ---: | ---: | ---: | ---: |")
        for sc in scens:
            base = agg.get(("haproxy", sc))
            if not base:
                continue
            for p in proxies:
                if p == "haproxy" or (p, sc) not in agg:
                    continue
                a = agg[(p, sc)]

                def ratio(k):
                    if a.get(k) is None or not base.get(k):
                        return "n/a"
                    return f"{a[k] / base[k]:.2f}×"

                w(
                    f"| {SCEN_TITLE.get(sc, sc)} | {p} | {ratio('rps')} | {ratio('p50_ms')} "
                    f"| {ratio('p99_ms')} | {ratio('cpu_us_per_req')} |"
                )
        w("")

        # The machine drifts between rounds (other guests on the host): a
        # proxy and HAProxy measured in the same round, minutes apart at
        # most, are compared with each other first, and the per-round
        # ratios summarised after.
        w("## Ratios vs HAProxy, round by round\n")
        w(
            "Each round's ratio to HAProxy's run of the same round, then the "
            "median over rounds; \"better\" = rounds where the proxy did at least "
            "as well as HAProxy (req/s not lower, p99 and CPU/req not higher).\n"
        )
        w("| scenario | proxy | req/s ÷ HAProxy | p99 ÷ HAProxy | CPU/req ÷ HAProxy | better req/s | better p99 | better CPU/req |")
        w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        by_round = {(m["proxy"], m["scenario"], m["round"]): m for m in runs}
        for sc in scens:
            for p in proxies:
                if p == "haproxy" or (p, sc) not in agg:
                    continue
                pairs = [
                    (m, by_round[("haproxy", sc, m["round"])])
                    for m in groups[(p, sc)]
                    if ("haproxy", sc, m["round"]) in by_round
                ]
                if not pairs:
                    continue
                cells, wins = [], []
                for k, higher_better in (("rps", True), ("p99_ms", False), ("cpu_us_per_req", False)):
                    rs = [a[k] / b[k] for a, b in pairs if a.get(k) is not None and b.get(k)]
                    cells.append(f"{med(rs):.2f}×" if rs else "n/a")
                    won = sum(1 for r in rs if (r >= 1.0 if higher_better else r <= 1.0))
                    wins.append(f"{won}/{len(rs)}")
                w(f"| {SCEN_TITLE.get(sc, sc)} | {p} | " + " | ".join(cells + wins) + " |")
        w("")

    w("## Noise indicators (medians)\n")
    w(
        "core-0 other % = busy time on the proxy's core not charged to the proxy "
        "(other processes, e.g. a concurrent compile, plus interrupt work); "
        "core-1 busy % = utilisation of the load-generator/backend core "
        "(near 100 % means the load side, not the proxy, may be the limit); "
        "new upstream conns = connections the backends accepted during a run "
        "(0 = pure keepalive reuse; more = the proxy's idle pool is smaller than "
        "its concurrency and it reconnects); load avg = 1-min load average at the end of a run; "
        "ctx sw/kreq = context switches per 1,000 requests, whole machine and the backends alone "
        "(a backend that finds several requests queued when woken switches less).\n"
    )
    w("| scenario | proxy | runs | requests (all runs) | protocol | TLS | core-0 other % | core-1 busy % | new upstream conns/run | load avg | ctx sw/kreq | backends' ctx sw/kreq |")
    w("| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for sc in scens:
        for p in proxies:
            a = agg.get((p, sc))
            if not a:
                continue
            w(
                f"| {sc} | {p} | {a['n']} | {a['requests']:,} | {a['proto']} | {a['tls'] or '-'} "
                f"| {fmt(a['core0_other_pct'], 1)} | {fmt(a['core1_busy_pct'], 1)} "
                f"| {fmt(a['upstream_conns'], 0)} | {fmt(a['loadavg'], 2)} "
                f"| {fmt(a['ctxsw_per_kreq'], 0)} | {fmt(a['backend_ctxsw_per_kreq'], 0)} |"
            )
    w("")

    w("## Every run\n")
    w("| round | scenario | proxy | req/s | p50 ms | p99 ms | CPU µs/req | of it kernel | proxy CPU % | core-0 other % | core-1 busy % | new upstream conns | errors |")
    w("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in sorted(runs, key=lambda m: (m["round"],)):
        w(
            f"| {m['round']} | {m['scenario']} | {m['proxy']} | {fmt(m['rps'])} | {fmt(m.get('p50_ms'), 3)} "
            f"| {fmt(m.get('p99_ms'), 3)} | {fmt(m['cpu_us_per_req'], 1)} | {fmt(m.get('sys_us_per_req'), 1)} | {fmt(m['proxy_cpu_pct'], 0)} "
            f"| {fmt(m['core0_other_pct'], 1)} | {fmt(m['core1_busy_pct'], 1)} | {m['upstream_conns']} | {m['errors']} |"
        )
    print("\n".join(out))


if __name__ == "__main__":
    main()
