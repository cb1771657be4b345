#!/usr/bin/env python3
"""Summarises `perf report --no-children --sort dso,sym --stdio -g none`.

usage: perf_summary.py REPORT_TXT [TOP]

Prints self time grouped by category (kernel, hyper/h2/http, allocator, TLS,
tokio, portico's own code, std/core, libc, other), by DSO, and the TOP
symbols. Categories come from the symbol's crate path, so code inlined into
a caller counts for the caller's crate (e.g. http::HeaderMap code inlined into
portico::proxy::forward is "portico").
"""
import re
import sys
from collections import defaultdict

LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$")

ALLOC_PREFIXES = ("mi_", "_mi_", "__rust_alloc", "__rust_dealloc", "__rust_realloc",
                  "__rdl_", "malloc", "free", "realloc", "calloc", "cfree",
                  "_int_malloc", "_int_free", "mimalloc")


def crate_of(sym):
    s = sym.strip()
    # drop_in_place<T> / generic wrappers: attribute to T's crate.
    m = re.match(r"^core::ptr::drop_in_place<(.*)>$", s)
    if m:
        return crate_of(m.group(1))
    s = s.lstrip("<&*").removeprefix("mut ").removeprefix("dyn ").lstrip("<&*")
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)::", s)
    return m.group(1) if m else None


def category(dso, kind, sym):
    if kind == "k" or dso.startswith("[kernel"):
        return "kernel"
    if sym.startswith(ALLOC_PREFIXES) or "mimalloc" in dso or "mi_" == sym[:3]:
        return "allocator"
    c = crate_of(sym)
    if c in ("hyper", "h2", "http", "httparse", "hyper_util", "http_body", "http_body_util", "want"):
        return "hyper/h2/http"
    if c in ("rustls", "ring", "tokio_rustls") or sym.startswith(("ring_core", "aes_", "gcm_", "GFp", "ChaCha", "x25519", "ecp_nistz256", "aes_gcm", "_aesni", "aesni_")):
        return "TLS (rustls/ring)"
    if c in ("tokio", "mio"):
        return "tokio/mio"
    if c == "portico":
        return "portico"
    if c in ("core", "alloc", "std", "bytes", "futures_util", "futures_core", "arc_swap", "fastrand", "tracing", "tracing_core", "hashbrown", "slab", "smallvec", "indexmap", "pin_project_lite"):
        return "std/core/bytes/misc crates"
    if "libc" in dso or dso.startswith("ld-"):
        return "libc (memcpy, syscalls wrappers)"
    return "other/unknown"


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    rows = []
    with open(path) as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            m = LINE.match(line)
            if m:
                rows.append((float(m.group(1)), m.group(2), m.group(3), m.group(4)))
    total = sum(r[0] for r in rows) or 1.0
    cats, dsos = defaultdict(float), defaultdict(float)
    for pct, dso, kind, sym in rows:
        cats[category(dso, kind, sym)] += pct
        dsos[dso] += pct
    print(f"## Self time by category (sum of symbols = {total:.1f}%)")
    for k, v in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"{v:7.2f}%  {k}")
    print()
    print("## Self time by DSO")
    for k, v in sorted(dsos.items(), key=lambda kv: -kv[1])[:10]:
        print(f"{v:7.2f}%  {k}")
    print()
    print(f"## Top {top} symbols (perf report --no-children --sort dso,sym)")
    for pct, dso, kind, sym in rows[:top]:
        print(f"{pct:7.2f}%  {dso:<20} [{kind}] {sym}   <{category(dso, kind, sym)}>")


if __name__ == "__main__":
    main()
