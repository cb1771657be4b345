//! Behind an L4 balancer: the PROXY protocol header, trusted_proxies and
//! X-Forwarded-*, request body limits and stall timeouts, the upstream
//! read_timeout. Raw sockets on the client side: the exact bytes a
//! balancer or an attacker writes.

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::raw::{content_length, fill, read_head, RawBackend};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n";

/// portico with one listener (`extra` in its table) routing everything to
/// `upstream` (its servers' TOML given whole).
fn start(extra: &str, upstream: &str) -> (Portico, SocketAddr) {
    let (addr, l) = listener_toml("edge", extra);
    let p = Portico::start(&format!(
        "{l}\n[[route]]\nname = \"all\"\nupstream = \"up\"\n\n{upstream}"
    ));
    (p, addr)
}

/// Writes `bytes` on a fresh connection and reads until portico closes it
/// (bounded, so a test fails instead of hanging): all it got.
async fn send_all(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_to_close(&mut s).await
}

async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("portico kept the connection open");
    out
}

fn status_of(raw: &[u8]) -> Option<u16> {
    parse_status(&String::from_utf8_lossy(raw))
}

/// Waits until portico's stdout (the access log) contains `needle`.
async fn log_has(p: &Portico, needle: &str) -> bool {
    for _ in 0..200 {
        if p.stdout().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

fn xff(b: &Backend) -> String {
    let seen = b.last_seen();
    seen.headers
        .get("x-forwarded-for")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// A v2 header: `command` 0 LOCAL / 1 PROXY, `family` byte, addresses.
fn v2_header(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    h.extend_from_slice(addrs);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_gives_the_client_address() {
    let b = Backend::start("up").await;
    let (p, addr) = start("proxy_protocol = true", &upstream_toml("up", &[&b], ""));

    // v1: the text line, then HTTP on the very next byte.
    let mut req = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".to_vec();
    req.extend_from_slice(GET);
    assert_eq!(status_of(&send_all(addr, &req).await), Some(200));
    assert_eq!(xff(&b), "203.0.113.7");
    assert!(
        log_has(&p, "203.0.113.7").await,
        "access log: {}",
        p.stdout()
    );

    // v2: IPv6 over TCP (0x21), 2001:db8::5 port 4242 -> ::1 port 80.
    let mut addrs = Vec::new();
    addrs.extend_from_slice(
        &"2001:db8::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    addrs.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    addrs.extend_from_slice(&4242u16.to_be_bytes());
    addrs.extend_from_slice(&80u16.to_be_bytes());
    let mut req = v2_header(1, 0x21, &addrs);
    req.extend_from_slice(GET);
    assert_eq!(status_of(&send_all(addr, &req).await), Some(200));
    assert_eq!(xff(&b), "2001:db8::5");
    assert!(
        log_has(&p, "2001:db8::5").await,
        "access log: {}",
        p.stdout()
    );

    // v2 LOCAL (the balancer's health check): the socket's own address.
    let mut req = v2_header(0, 0x00, &[]);
    req.extend_from_slice(GET);
    assert_eq!(status_of(&send_all(addr, &req).await), Some(200));
    assert_eq!(xff(&b), "127.0.0.1");
    assert_eq!(b.request_count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_proxy_header_is_closed_unserved() {
    let up = RawBackend::start("up").await;
    let (_p, addr) = start(
        "proxy_protocol = true",
        &format!("[upstream.up]\nservers = [\"{}\"]\n", up.addr),
    );
    // A client that reaches the listener directly, forging the header's
    // place with its own request (and an X-Forwarded-For).
    let got = send_all(
        addr,
        b"GET /x HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    )
    .await;
    assert!(
        got.is_empty(),
        "answered: {}",
        String::from_utf8_lossy(&got)
    );
    // A malformed v1 line.
    let mut req = b"PROXY TCP4 203.0.113.7\r\n".to_vec();
    req.extend_from_slice(GET);
    assert!(send_all(addr, &req).await.is_empty());
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_a_trusted_peer_are_kept() {
    let b = Backend::start("up").await;
    let (p, addr) = start(
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &upstream_toml("up", &[&b], ""),
    );
    let got = send_all(
        addr,
        b"GET /x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\
          X-Forwarded-For: 198.51.100.1, 127.0.0.1\r\n\
          X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&got), Some(200));
    let seen = b.last_seen();
    assert_eq!(
        seen.headers["x-forwarded-for"],
        "198.51.100.1, 127.0.0.1, 127.0.0.1"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example");
    // The rightmost untrusted entry is the client.
    assert!(
        log_has(&p, "198.51.100.1").await,
        "access log: {}",
        p.stdout()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_peer_are_reset() {
    let b = Backend::start("up").await;
    let (p, addr) = start(
        "trusted_proxies = [\"10.0.0.0/8\"]",
        &upstream_toml("up", &[&b], ""),
    );
    let got = send_all(
        addr,
        b"GET /x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\
          X-Forwarded-For: 198.51.100.1\r\n\
          X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&got), Some(200));
    let seen = b.last_seen();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "app");
    assert!(log_has(&p, "\"GET").await || log_has(&p, "GET").await);
    assert!(!p.stdout().contains("198.51.100.1"), "{}", p.stdout());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_bytes_is_refused() {
    let up = RawBackend::start("up").await;
    let (_p, addr) = start(
        "max_body_bytes = 100",
        &format!("[upstream.up]\nservers = [\"{}\"]\n", up.addr),
    );
    // By Content-Length: at once, with only part of the body sent.
    let got = send_all(
        addr,
        b"POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: 1000\r\n\r\nabcdef",
    )
    .await;
    assert_eq!(
        status_of(&got),
        Some(413),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(up.count(), 0);
    // Within the limit: forwarded.
    let mut ok =
        b"POST /x HTTP/1.1\r\nHost: app\r\nConnection: close\r\nContent-Length: 100\r\n\r\n"
            .to_vec();
    ok.extend_from_slice(&[b'a'; 100]);
    assert_eq!(status_of(&send_all(addr, &ok).await), Some(200));
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_crossing_max_body_bytes_is_aborted() {
    let b = Backend::start("up").await;
    let (_p, addr) = start("max_body_bytes = 100", &upstream_toml("up", &[&b], ""));
    // /upload answers only after the whole body: the limit trips before
    // any response head.
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"3c\r\n");
        req.extend_from_slice(&[b'z'; 60]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let got = send_all(addr, &req).await;
    assert_eq!(
        status_of(&got),
        Some(413),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408() {
    let b = Backend::start("up").await;
    let (_p, addr) = start("body_timeout = \"300ms\"", &upstream_toml("up", &[&b], ""));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'h'; 50]).await.unwrap();
    // ...and nothing more: the connection stays open on our side.
    let got = read_to_close(&mut s).await;
    assert_eq!(
        status_of(&got),
        Some(408),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// An upstream that answers a head and 10 of the 100 body bytes it
/// announces, then holds the connection without a byte more.
async fn stalling_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_head(&mut s, &mut buf).await.is_none() {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
                // Hold the connection until portico drops it.
                while fill(&mut s, &mut buf).await {}
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_body_is_aborted_after_read_timeout() {
    let up = stalling_upstream().await;
    let (_p, addr) = start(
        "",
        &format!("[upstream.up]\nservers = [\"{up}\"]\nread_timeout = \"300ms\"\n"),
    );
    let got = send_all(addr, GET).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(status_of(&got), Some(200), "{text}");
    let end = text.find("\r\n\r\n").expect("a head") + 4;
    assert_eq!(content_length(&text[..end]), 100);
    // The connection ended with the 10 bytes sent: a short body.
    assert_eq!(&got[end..], b"0123456789");
}

#[test]
fn check_reports_edge_settings_at_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let run = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let base = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\n";
    let err = run(&format!(
        "{base}trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.300/8\"]\n"
    ));
    assert!(err.contains("proxy.toml:4:"), "{err}");
    assert!(err.contains("10.0.0.300/8"), "{err}");
    let err = run(&format!("{base}body_timeout = \"0s\"\n"));
    assert!(err.contains("body_timeout"), "{err}");
    assert!(err.contains("proxy.toml:2:"), "{err}");
    let err = run(&format!(
        "{base}\n[upstream.up]\nservers = [\"127.0.0.1:1\"]\nread_timeout = \"0s\"\n"
    ));
    assert!(err.contains("read_timeout"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_body_crossing_max_body_bytes_gets_413() {
    let b = Backend::start("up").await;
    let (_p, addr) = start("max_body_bytes = 100", &upstream_toml("up", &[&b], ""));
    // No content-length: the body is counted as it streams.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..3).map(|_| Ok(vec![b'q'; 60])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = h2c_client()
        .post(format!("http://{addr}/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 413);
    // Within the limit, the same way: forwarded whole.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..2).map(|_| Ok(vec![b'q'; 50])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = h2c_client()
        .post(format!("http://{addr}/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().starts_with("100 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_header_comes_before_tls() {
    let b = Backend::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml(
        "edge",
        "proxy_protocol = true\nprotocols = [\"http1\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let _p = Portico::start_in(
        dir,
        &format!(
            "{l}\n[[route]]\nname = \"all\"\nupstream = \"up\"\n\n{}",
            upstream_toml("up", &[&b], "")
        ),
    );
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.44 127.0.0.1 1234 443\r\n")
        .await
        .unwrap();
    let cfg = pki.client_config(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(GET).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut got))
        .await
        .expect("portico kept the connection open");
    assert_eq!(
        status_of(&got),
        Some(200),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(xff(&b), "192.0.2.44");
    let seen = b.last_seen();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h3_body_crossing_max_body_bytes_gets_413() {
    let b = Backend::start("up").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml(
        "edge",
        "max_body_bytes = 100\nprotocols = [\"http1\", \"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let _p = Portico::start_in(
        dir,
        &format!(
            "{l}\n[[route]]\nname = \"all\"\nupstream = \"up\"\n\n{}",
            upstream_toml("up", &[&b], "")
        ),
    );
    let client = support::http3::H3Client::new(&pki, false);
    let mut c = client.connect(addr).await.unwrap();
    // No content-length: counted as it streams.
    let req = support::http3::request("POST", "/upload");
    let r = c
        .request(req, bytes::Bytes::from(vec![b'w'; 300]))
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    let req = support::http3::request("POST", "/upload");
    let r = c
        .request(req, bytes::Bytes::from(vec![b'w'; 100]))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
