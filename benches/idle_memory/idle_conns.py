#!/usr/bin/env python3
"""Opens N connections to a proxy, makes one request on each, and leaves
them idle; prints the proxy's RSS growth per connection.

    idle_conns.py KIND HOST:PORT PID N

KIND: h1 (plain HTTP/1.1 keepalive), h1tls (TLS 1.3, ALPN http/1.1),
h2 (TLS 1.3, ALPN h2). Every request must get a 200 and the connections
must all still be open when RSS is read, or the script fails.
"""
import socket
import ssl
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def read_until(sock, pred, limit=1 << 16):
    data = b""
    while not pred(data):
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit(f"connection closed early after {data[:80]!r}")
        data += chunk
        if len(data) > limit:
            raise SystemExit("answer too long")
    return data


def h1_exchange(sock, host):
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = read_until(sock, lambda d: b"\r\n\r\n" in d)
    if not data.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"bad answer {data[:80]!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += read_until(sock, lambda d: len(d) > 0)


def frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def h2_exchange(sock, host):
    auth = host.encode()
    # HPACK: :method GET, :scheme https, :path /, :authority literal (indexed name 1).
    block = b"\x82\x87\x84" + b"\x41" + bytes([len(auth)]) + auth
    sock.sendall(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + frame(4, 0, 0)  # SETTINGS
        + frame(1, 0x5, 1, block)  # HEADERS, END_STREAM | END_HEADERS
    )
    buf = b""
    acked = ended = False
    while not ended:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = sock.recv(4096)
            if not chunk:
                raise SystemExit("h2 connection closed early")
            buf += chunk
        n = int.from_bytes(buf[:3], "big")
        kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        buf = buf[9 + n:]
        if kind == 4 and not flags & 1 and not acked:
            sock.sendall(frame(4, 1, 0))  # SETTINGS ACK
            acked = True
        elif kind == 7:
            raise SystemExit("GOAWAY")
        elif stream == 1 and kind in (0, 1) and flags & 1:
            ended = True


def main():
    kind, addr, pid, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    host, port = addr.rsplit(":", 1)
    ctx = None
    if kind != "h1":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_alpn_protocols(["h2" if kind == "h2" else "http/1.1"])
    # Warm up: the first connections grow the runtime's own structures.
    conns = []
    before = rss_kib(pid)
    for i in range(n):
        s = socket.create_connection((host, int(port)))
        if ctx is not None:
            s = ctx.wrap_socket(s, server_hostname="localhost")
            if s.selected_alpn_protocol() != ("h2" if kind == "h2" else "http/1.1"):
                raise SystemExit(f"ALPN gave {s.selected_alpn_protocol()}")
        (h2_exchange if kind == "h2" else h1_exchange)(s, addr)
        conns.append(s)
    time.sleep(2)
    after = rss_kib(pid)
    # Every connection must still be open: a peer that closed shows as readable EOF.
    for s in conns:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                raise SystemExit("a connection was closed while idle")
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
    per = (after - before) * 1024 / n
    print(f"{kind}: {n} idle connections, RSS {before} -> {after} KiB, {per / 1024:.1f} KiB per connection")
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
