//! Framing edge rules from the attacker's side: raw bytes on the wire (raw
//! HTTP/1.1, raw HTTP/2 frames with hand-written HPACK, an HTTP/3 client)
//! and a raw TCP upstream that records every byte it received, so nothing
//! hyper would normalise away can hide.

mod support;

use bytes::Bytes;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::h2frames::*;
use support::http3::*;
use support::*;

/// An HTTP/1.1 upstream on 127.0.0.1 that records the raw bytes of every
/// connection and answers each request it can frame (Content-Length or
/// chunked) with `200 ok`. A path starting with `/slow` is answered after
/// half a second.
struct RawUpstream {
    addr: SocketAddr,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let all = bytes.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve_raw(s, all.clone()));
            }
        });
        RawUpstream { addr, bytes }
    }

    fn seen(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
}

async fn serve_raw(mut s: tokio::net::TcpStream, all: Arc<Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        all.lock().unwrap().extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
        // Answer every complete request in `buf`.
        loop {
            let mut h = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut h);
            let Ok(httparse::Status::Complete(head)) = req.parse(&buf) else {
                break;
            };
            let slow = req.path.is_some_and(|p| p.starts_with("/slow"));
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|x| x.name.eq_ignore_ascii_case(name))
                    .map(|x| String::from_utf8_lossy(x.value).to_string())
            };
            let end = if header("transfer-encoding").is_some() {
                match find(&buf[head..], b"0\r\n\r\n") {
                    Some(i) => head + i + 5,
                    None => break,
                }
            } else {
                let cl: usize = header("content-length")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() < head + cl {
                    break;
                }
                head + cl
            };
            buf.drain(..end);
            if slow {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn count(hay: &str, needle: &str) -> usize {
    hay.to_ascii_lowercase().matches(needle).count()
}

/// A plain listener (HTTP/1.1 and h2c) with `extra`, one route to `up`.
fn start_plain(up: SocketAddr, extra: &str, server: &str) -> (SocketAddr, Portico) {
    let (addr, l) = listener_toml("web", extra);
    let p = Portico::start(&format!(
        "[server]\n{server}\n{l}\n[[route]]\nname = \"r\"\nupstream = \"a\"\n[upstream.a]\nservers = [\"{up}\"]\n"
    ));
    (addr, p)
}

/// Reads from `s` until `done` says the bytes so far are enough, the peer
/// closes, or the read times out.
fn read_until(s: &mut impl Read, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !done(&got) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

// ---------------------------------------------------------------- HTTP/3

fn h3_start(up: SocketAddr) -> (Portico, SocketAddr, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml(
        "web",
        "protocols = [\"http1\", \"http2\", \"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let p = Portico::start_in(
        dir,
        &format!(
            "[server]\naccess_log = \"off\"\n{l}\n[[route]]\nname = \"r\"\nupstream = \"a\"\n[upstream.a]\nservers = [\"{up}\"]\n"
        ),
    );
    (p, addr, pki)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_framing_violations_never_reach_the_upstream() {
    let up = RawUpstream::start().await;
    let (_p, addr, pki) = h3_start(up.addr);
    let client = H3Client::new(&pki, false);

    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "/cl-0-and-50",
            &[("content-length", "0"), ("content-length", "50")],
        ),
        ("/cl-sign", &[("content-length", "+0")]),
        ("/cl-empty-body", &[("content-length", "50")]),
        ("/conn", &[("connection", "keep-alive")]),
        ("/keep-alive", &[("keep-alive", "timeout=5")]),
        ("/proxy-conn", &[("proxy-connection", "keep-alive")]),
        ("/te-chunked", &[("transfer-encoding", "chunked")]),
        ("/upgrade", &[("upgrade", "websocket")]),
        ("/te-gzip", &[("te", "gzip")]),
        ("/two-hosts", &[("host", "localhost"), ("host", "evil")]),
        ("/other-host", &[("host", "evil.example")]),
    ];
    for (path, headers) in cases {
        let mut c = client.connect(addr).await.unwrap();
        let mut req = request("GET", path);
        for (n, v) in *headers {
            req.headers_mut().append(*n, v.parse().unwrap());
        }
        match c.request(req, Bytes::new()).await {
            Ok(r) => assert_eq!(r.status, 400, "{path}: {}", r.text()),
            // A stream reset is an acceptable answer too.
            Err(e) => eprintln!("{path}: {e}"),
        }
        c.close();
    }
    let seen = up.seen();
    assert_eq!(seen, "", "the upstream received a malformed request");

    // The pool is clean: a normal request on it arrives alone and whole.
    let mut c = client.connect(addr).await.unwrap();
    let r = c.get("/clean").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let seen = up.seen();
    assert!(seen.starts_with("GET /clean HTTP/1.1\r\n"), "{seen}");
    assert_eq!(count(&seen, "\r\nhost:"), 1, "{seen}");
    assert!(count(&seen, "content-length") <= 1, "{seen}");
    assert_eq!(count(&seen, " http/1.1\r\n"), 1, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_agreeing_content_lengths_reach_the_upstream_as_one() {
    let up = RawUpstream::start().await;
    let (_p, addr, pki) = h3_start(up.addr);
    let client = H3Client::new(&pki, false);
    let mut c = client.connect(addr).await.unwrap();
    let mut req = request("POST", "/two-cl");
    req.headers_mut()
        .append("content-length", "5".parse().unwrap());
    req.headers_mut()
        .append("content-length", "5".parse().unwrap());
    req.headers_mut()
        .append("host", "localhost".parse().unwrap());
    let r = c.request(req, Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.seen();
    assert_eq!(count(&seen, "\r\ncontent-length:"), 1, "{seen}");
    assert_eq!(count(&seen, "\r\nhost:"), 1, "{seen}");
    assert!(seen.ends_with("\r\n\r\nhello"), "{seen}");
}

// ---------------------------------------------------------------- HTTP/2

/// HPACK: a literal field without indexing, new name (no Huffman).
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// A GET `path` HEADERS block (END_HEADERS | END_STREAM) on stream 1, with
/// :authority "a" and `extra` fields.
fn h2_get(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    // :method GET, :scheme http (static indices 2 and 6).
    let mut block = vec![0x82, 0x86];
    // :path and :authority as literals with indexed names (4 and 1).
    block.push(0x04);
    block.push(path.len() as u8);
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 0x01, b'a']);
    for (n, v) in extra {
        block.extend(hpack_literal(n, v));
    }
    h2_frame(0x1, 0x5, 1, &block)
}

/// Sends one request on a fresh h2c connection; the answer on stream 1:
/// Some(status) for a response whose status is in the static table (200,
/// 400...), None for a stream reset or a connection error.
fn h2_exchange(addr: SocketAddr, headers_frame: &[u8]) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(0x4, 0, 0, &[]));
    bytes.extend_from_slice(headers_frame);
    s.write_all(&bytes).unwrap();
    let answered = |got: &[u8]| {
        h2_frames(got)
            .iter()
            .any(|(k, st, _)| (*k == 0x1 || *k == 0x3) && *st == 1 || *k == 0x7)
    };
    let got = read_until(&mut s, answered);
    let frames = h2_frames(&got);
    let (_, _, block) = frames.iter().find(|(k, st, _)| *k == 0x1 && *st == 1)?;
    // :status from the static table: 8 = 200, 12 = 400, 13 = 404.
    match block.first()? {
        0x88 => Some(200),
        0x8c => Some(400),
        0x8d => Some(404),
        b => panic!("unexpected first HPACK byte {b:#x}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_framing_violations_never_reach_the_upstream() {
    let up = RawUpstream::start().await;
    let (addr, _p) = start_plain(up.addr, "", "access_log = \"off\"");
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "/cl-0-and-50",
            &[("content-length", "0"), ("content-length", "50")],
        ),
        ("/cl-sign", &[("content-length", "+0")]),
        ("/cl-empty-body", &[("content-length", "50")]),
        ("/conn", &[("connection", "keep-alive")]),
        ("/keep-alive", &[("keep-alive", "timeout=5")]),
        ("/proxy-conn", &[("proxy-connection", "keep-alive")]),
        ("/te-chunked", &[("transfer-encoding", "chunked")]),
        ("/upgrade", &[("upgrade", "websocket")]),
        ("/te-gzip", &[("te", "gzip")]),
        ("/two-hosts", &[("host", "a"), ("host", "evil")]),
        ("/other-host", &[("host", "evil.example")]),
    ];
    for (path, headers) in cases {
        let answer = h2_exchange(addr, &h2_get(path, headers));
        assert!(matches!(answer, None | Some(400)), "{path}: {answer:?}");
    }
    let seen = up.seen();
    assert_eq!(seen, "", "the upstream received a malformed request");

    // Agreeing duplicates and a Host equal to :authority are fine, and
    // arrive as one field each.
    let answer = h2_exchange(
        addr,
        &h2_get(
            "/clean",
            &[
                ("content-length", "0"),
                ("content-length", "0"),
                ("host", "a"),
            ],
        ),
    );
    assert_eq!(answer, Some(200));
    let seen = up.seen();
    assert!(seen.starts_with("GET /clean HTTP/1.1\r\n"), "{seen}");
    assert_eq!(count(&seen, "\r\nhost:"), 1, "{seen}");
    assert!(count(&seen, "\r\ncontent-length:") <= 1, "{seen}");
}

// ---------------------------------------------------------------- HTTP/1.1

const SMUGGLED: &[u8] = b"POST /smuggled HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_length_and_chunked_request_is_refused() {
    let up = RawUpstream::start().await;
    let (addr, _p) = start_plain(up.addr, "", "access_log = \"off\"");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Both requests in one write.
    let mut bytes = b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    bytes.extend_from_slice(SMUGGLED);
    s.write_all(&bytes).unwrap();
    let got = read_until(&mut s, |_| false);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 400"), "{text}");
    let seen = up.seen();
    assert!(seen.contains("GET /first"), "{seen}");
    assert!(!seen.contains("/smuggled"), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_and_chunked_request_sent_while_another_is_in_flight_is_refused() {
    let up = RawUpstream::start().await;
    let (addr, _p) = start_plain(up.addr, "", "access_log = \"off\"");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // The first request is at the upstream (answered in 500 ms).
    for _ in 0..200 {
        if up.seen().contains("/slow") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    s.write_all(SMUGGLED).unwrap();
    let got = read_until(&mut s, |_| false);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("HTTP/1.1 400"), "{text}");
    let seen = up.seen();
    assert!(!seen.contains("/smuggled"), "{seen}");

    // A kept-alive connection with chunked and sized bodies stays in step:
    // the check applies to the right request only.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n\
          POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 16\r\n\r\nContent-Length:1\
          POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let got = read_until(&mut s, |_| false);
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 4, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_counts_toward_max_header_bytes() {
    let up = RawUpstream::start().await;
    let (addr, _p) = start_plain(up.addr, "max_header_bytes = 2048\n", "access_log = \"off\"");
    let uri = format!("/{}", "u".repeat(3000));
    let raw = raw_exchange(
        addr,
        format!("GET {uri} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(parse_status(&raw), Some(431), "{raw}");
    assert_eq!(up.seen(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_h2c_preface_still_gets_the_flood_guard() {
    let up = RawUpstream::start().await;
    let (addr, _p) = start_plain(up.addr, "", "access_log = \"off\"");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PRI * HT").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut bytes = b"TP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(0x4, 0, 0, &[]));
    for _ in 0..500 {
        bytes.extend(h2_frame(0x6, 0, 0, &[1; 8]));
    }
    s.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/1"),
        "HTTP/1 bytes on an HTTP/2 connection"
    );
    let goaway = h2_frames(&got)
        .into_iter()
        .filter(|(kind, _, p)| *kind == 0x7 && p.len() >= 8)
        .map(|(_, _, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
        .next_back();
    assert_eq!(goaway, Some(0xb), "no GOAWAY(ENHANCE_YOUR_CALM)");
}

// ------------------------------------------------- closing after an error

/// A head of 4 MiB: far over any max_header_bytes.
fn huge_head() -> Vec<u8> {
    let mut h = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    h.resize(h.len() + 4 * 1024 * 1024, b'v');
    h.extend_from_slice(b"\r\n\r\n");
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_answer_is_readable_after_writing_it_all_plain() {
    let up = RawUpstream::start().await;
    let (addr, _p) = start_plain(up.addr, "", "access_log = \"off\"");
    let head = huge_head();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        if let Err(e) = s.write_all(&head) {
            panic!("writing the head failed: {e}");
        }
        String::from_utf8_lossy(&read_until(&mut s, |_| false)).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(parse_status(&answer), Some(431), "{answer:?}");
    assert_eq!(up.seen(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_answer_is_readable_after_writing_it_all_tls() {
    let up = RawUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml(
        "web",
        "tls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let _p = Portico::start_in(
        dir,
        &format!(
            "[server]\naccess_log = \"off\"\n{l}\n[[route]]\nname = \"r\"\nupstream = \"a\"\n[upstream.a]\nservers = [\"{}\"]\n",
            up.addr
        ),
    );
    let tls = Arc::new(pki.client_config(&[b"http/1.1"], &[&rustls::version::TLS13]));
    let head = huge_head();
    let answer = tokio::task::spawn_blocking(move || {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let conn = rustls::ClientConnection::new(tls, "localhost".try_into().unwrap()).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        if let Err(e) = s.write_all(&head).and_then(|_| s.flush()) {
            panic!("writing the head failed: {e}");
        }
        String::from_utf8_lossy(&read_until(&mut s, |_| false)).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(parse_status(&answer), Some(431), "{answer:?}");
    assert_eq!(up.seen(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_answers_are_logged_and_counted() {
    let up = RawUpstream::start().await;
    let (addr, p) = start_plain(up.addr, "", "");
    let raw = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(parse_status(&raw), Some(400), "{raw}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let out = p.stdout();
        if let Some(l) = out.lines().find(|l| l.contains("\"status\":400")) {
            break l.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no log line: {out}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(
        v["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{line}"
    );
    assert_eq!(v["route"], "", "{line}");
    let prom = support::prom::scrape(p.admin).await;
    assert_eq!(
        prom.value("portico_requests_total", &[("route", ""), ("code", "400")]),
        Some(1.0)
    );
    assert_eq!(up.seen(), "");
}

// ------------------------------------------------- HTTP/3 resource bounds

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_receive_windows_are_bounded_per_connection() {
    // An upstream whose one-slot accept queue is taken: portico's connect
    // to it hangs (the kernel drops its SYNs), so no request body is read
    // and the client can send only what QUIC flow control grants.
    let stuck = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stuck
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    stuck.listen(0).unwrap();
    let up = stuck.local_addr().unwrap().as_socket().unwrap();
    let _filler = std::net::TcpStream::connect(up).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml(
        "web",
        "protocols = [\"http1\", \"http2\", \"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let _p = Portico::start_in(
        dir,
        &format!(
            "[server]\naccess_log = \"off\"\n{l}\n[[route]]\nname = \"r\"\nupstream = \"a\"\ntimeout = \"60s\"\n[upstream.a]\nservers = [\"{up}\"]\nconnect_timeout = \"60s\"\n"
        ),
    );
    // A client of its own: the uploads need h3's request handle.
    let tls = pki.client_config(&[b"h3"], &[&rustls::version::TLS13]);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let quic = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            addr,
            "localhost",
        )
        .unwrap()
        .await
        .unwrap();
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = driver.wait_idle().await;
    });

    // Eight uploads at once, each writing until flow control stops it. Each
    // keeps its stream open until all are measured: a stream the client
    // drops is a cancelled request, whose buffered body portico frees,
    // which would hand its credit to the uploads still writing.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            // The head itself needs connection credit.
            let stall = Duration::from_secs(2);
            let req = request("POST", &format!("/upload/{i}"));
            let Ok(opened) = tokio::time::timeout(stall, send.send_request(req)).await else {
                return (0, None);
            };
            let mut stream = opened.unwrap();
            let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
            let mut sent = 0usize;
            while let Ok(Ok(())) =
                tokio::time::timeout(stall, stream.send_data(chunk.clone())).await
            {
                sent += chunk.len();
                assert!(sent <= 64 << 20, "no flow control at all");
            }
            (sent, Some(stream))
        }));
    }
    let mut total = 0;
    let mut open = Vec::new();
    for t in tasks {
        let (sent, stream) = t.await.unwrap();
        open.push(stream);
        // 1 MiB per stream, plus what portico read before forwarding.
        assert!(
            sent <= (1 << 20) + (256 << 10),
            "one stream took {sent} bytes"
        );
        total += sent;
    }
    // 4 MiB per connection (quinn's default has no connection limit: 8
    // streams of 1.25 MB would get 10 MB), plus what portico read.
    assert!(
        total <= (4 << 20) + (1 << 20),
        "the connection took {total} bytes"
    );
    assert!(
        total >= 1 << 20,
        "the uploads got almost no credit: {total}"
    );
    quic.close(quinn::VarInt::from_u32(0x100), b"");
    drop(open);
    driver.abort();
}
