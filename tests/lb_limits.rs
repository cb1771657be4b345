//! Limits while a request is in flight, seen from both sides: a stalled
//! upload or upstream body ends within its timeout and portico closes both
//! connections; a streamed body crossing max_body_bytes never reaches the
//! upstream complete; route header rules remove what they name. The
//! upstream is a raw TCP socket that records every byte it gets and sees
//! how its connection ended.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::raw::{content_length, exchange, header_values, RawBackend};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A sanity bound on a stall that portico must end within ~300 ms: far
/// above any scheduling noise, far below "never".
const WELL_WITHIN: Duration = Duration::from_secs(10);

/// What a [`Tap`]'s connection got and how it ended.
#[derive(Default)]
struct Tapped {
    bytes: Vec<u8>,
    connections: usize,
    /// The connection ended (EOF or an error such as a reset).
    closed: bool,
}

/// A raw upstream that records the bytes of each connection, writes
/// `answer` once it has a request head, and then holds the socket open
/// (reading on) until portico closes it.
struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Tapped>>,
}

impl Tap {
    async fn start(answer: Option<&'static [u8]>) -> Tap {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Tapped::default()));
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                s2.lock().unwrap().connections += 1;
                tokio::spawn(tap_one(s, s2.clone(), answer));
            }
        });
        Tap { addr, seen }
    }

    fn bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap().bytes.clone()
    }

    /// Waits (bounded) until `cond` holds on what the tap saw.
    async fn wait_for(&self, what: &str, cond: impl Fn(&Tapped) -> bool) {
        for _ in 0..1000 {
            if cond(&self.seen.lock().unwrap()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = self.seen.lock().unwrap();
        panic!(
            "the upstream never saw {what}: {} connection(s), closed {}, got {:?}",
            t.connections,
            t.closed,
            String::from_utf8_lossy(&t.bytes)
        );
    }

    /// Waits until portico closed the upstream connection.
    async fn wait_closed(&self) {
        self.wait_for("its connection closed", |t| t.closed).await;
    }
}

async fn tap_one(mut s: TcpStream, seen: Arc<Mutex<Tapped>>, answer: Option<&'static [u8]>) {
    let mut answered = answer.is_none();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let has_head = {
                    let mut t = seen.lock().unwrap();
                    t.bytes.extend_from_slice(&buf[..n]);
                    t.bytes.windows(4).any(|w| w == b"\r\n\r\n")
                };
                if !answered && has_head {
                    answered = true;
                    if s.write_all(answer.unwrap_or_default()).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    seen.lock().unwrap().closed = true;
}

/// portico with one listener (`extra` in its table), a route to the pool
/// `up` of `upstream` (`up_extra` in its table), and `/ping` answered at
/// the edge.
fn start(extra: &str, upstream: SocketAddr, up_extra: &str) -> (Portico, SocketAddr) {
    let (addr, l) = listener_toml("edge", extra);
    let p = Portico::start(&format!(
        "{l}\n[[route]]\nname = \"all\"\nupstream = \"up\"\n\n\
         [[route]]\nname = \"ping\"\nmatch.path_prefix = \"/ping\"\nrespond = {{ status = 200 }}\n\n\
         [upstream.up]\nservers = [\"{upstream}\"]\n{up_extra}\n"
    ));
    (p, addr)
}

/// Reads until portico closes the connection (bounded): all it got.
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
        .expect("portico kept the client connection open");
    out
}

/// The request body bytes of a chunked request as the upstream got them
/// (chunk framing removed), and whether its terminating chunk came.
fn dechunk(raw: &[u8]) -> (Vec<u8>, bool) {
    let Some(start) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (Vec::new(), false);
    };
    let mut rest = &raw[start + 4..];
    let mut body = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(&String::from_utf8_lossy(&rest[..eol]), 16).unwrap();
        if size == 0 {
            return (body, true);
        }
        let data = &rest[eol + 2..];
        body.extend_from_slice(&data[..size.min(data.len())]);
        if data.len() < size + 2 {
            break;
        }
        rest = &data[size + 2..];
    }
    (body, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_and_both_connections_close() {
    // An upstream that, like most, answers only after the whole body.
    let up = Tap::start(None).await;
    let (_p, addr) = start("body_timeout = \"300ms\"", up.addr, "");
    let began = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // The head and the 10 bytes go upstream; then nothing more comes.
    up.wait_for("the 10 body bytes", |t| t.bytes.ends_with(b"0123456789"))
        .await;
    // 408, then the client connection closes (README: 408 closes).
    let got = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(parse_status(&text), Some(408), "{text}");
    let end = text.find("\r\n\r\n").expect("a head") + 4;
    assert_eq!(got.len(), end + content_length(&text[..end]), "{text}");
    // The upstream's half-sent request is not kept open.
    up.wait_closed().await;
    assert!(began.elapsed() < WELL_WITHIN, "{:?}", began.elapsed());
    let raw = up.bytes();
    assert!(raw.ends_with(b"\r\n\r\n0123456789"), "{raw:?}");
    assert_eq!(up.seen.lock().unwrap().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_h2_upload_gets_408_and_the_connection_stays_usable() {
    let up = Tap::start(None).await;
    let (_p, addr) = start("body_timeout = \"300ms\"", up.addr, "");
    let began = Instant::now();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::post(format!("http://{addr}/upload"))
        .body(())
        .unwrap();
    let (answer, mut body) = h2.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"0123456789"), false)
        .unwrap();
    // ...and the stream stays open without another byte.
    let answer = tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("no answer to the stalled upload")
        .unwrap();
    assert_eq!(answer.status().as_u16(), 408);
    up.wait_closed().await;
    assert!(began.elapsed() < WELL_WITHIN, "{:?}", began.elapsed());
    // Sent on chunked (no length), and never ended.
    assert_eq!(dechunk(&up.bytes()), (b"0123456789".to_vec(), false));
    // Only the stream ended: the same connection takes the next request.
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::get(format!("http://{addr}/ping"))
        .body(())
        .unwrap();
    let (answer, _) = h2.send_request(req, true).unwrap();
    assert_eq!(answer.await.unwrap().status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_body_closes_both_connections() {
    let up = Tap::start(Some(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
    ))
    .await;
    let (_p, addr) = start("", up.addr, "read_timeout = \"300ms\"");
    let began = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    // The head and the 10 bytes, then the connection closes: a short body
    // the client cannot take for a whole one.
    let got = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(parse_status(&text), Some(200), "{text}");
    let end = text.find("\r\n\r\n").expect("a head") + 4;
    assert_eq!(content_length(&text[..end]), 100);
    assert_eq!(&got[end..], b"0123456789");
    up.wait_closed().await;
    assert!(began.elapsed() < WELL_WITHIN, "{:?}", began.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_body_resets_the_h2_stream_and_closes_upstream() {
    let up = Tap::start(Some(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
    ))
    .await;
    let (_p, addr) = start("", up.addr, "read_timeout = \"300ms\"");
    let began = Instant::now();
    let c = h2c_client();
    let r = c.get(format!("http://{addr}/x")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 200);
    let body = tokio::time::timeout(Duration::from_secs(20), r.bytes())
        .await
        .expect("the stream was neither ended nor reset");
    assert!(body.is_err(), "a short body taken for a whole one");
    up.wait_closed().await;
    assert!(began.elapsed() < WELL_WITHIN, "{:?}", began.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_crossing_max_body_bytes_never_completes_upstream() {
    let up = Tap::start(None).await;
    let (_p, addr) = start("max_body_bytes = 100", up.addr, "");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut first =
        b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n3c\r\n".to_vec();
    first.extend_from_slice(&[b'a'; 60]);
    first.extend_from_slice(b"\r\n");
    s.write_all(&first).await.unwrap();
    // The first 60 bytes, under the limit, go upstream as they come.
    up.wait_for("the first chunk", |t| dechunk(&t.bytes).0.len() == 60)
        .await;
    // Then 60 more (120 in all) and the end of the body.
    let mut more = b"3c\r\n".to_vec();
    more.extend_from_slice(&[b'b'; 60]);
    more.extend_from_slice(b"\r\n0\r\n\r\n");
    s.write_all(&more).await.unwrap();
    // The upstream's connection closes with the request unfinished: no
    // terminating chunk, and no more than the limit of body bytes.
    up.wait_closed().await;
    let (body, complete) = dechunk(&up.bytes());
    assert!(!complete, "{:?}", String::from_utf8_lossy(&up.bytes()));
    assert!(body.len() <= 100, "{} body bytes went upstream", body.len());
    assert!(body.starts_with(&[b'a'; 60]));
    assert_eq!(up.seen.lock().unwrap().connections, 1);
    // No response head was sent yet: 413, and the connection closes.
    let got = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(parse_status(&text), Some(413), "{text}");
}

/// A raw upstream answer carrying a `Server` header.
fn with_server(_: &str) -> Option<(&'static str, bool)> {
    Some((
        "HTTP/1.1 200 OK\r\nServer: backend/1.0\r\nX-Kept: yes\r\ncontent-length: 2\r\n\r\nok",
        false,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_remove_server_and_a_client_header() {
    let up = RawBackend::start_with("up", with_server).await;
    let (addr, l) = listener_toml("edge", "");
    let _p = Portico::start(&format!(
        "{l}\n\
         [[route]]\nname = \"ruled\"\nmatch.path_prefix = \"/ruled\"\nupstream = \"up\"\n\
         response_headers = {{ remove = [\"server\"] }}\n\
         request_headers = {{ remove = [\"X-Internal-Token\"] }}\n\n\
         [[route]]\nname = \"plain\"\nupstream = \"up\"\n\n\
         [upstream.up]\nservers = [\"{}\"]\n",
        up.addr
    ));
    let req = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: app\r\nx-internal-token: t0ken\r\n\
             X-Internal-Token: again\r\nX-Other: o\r\nConnection: close\r\n\r\n"
        )
    };

    // Without rules both pass: the checks below can fail.
    let (status, head, body) = exchange(addr, req("/plain").as_bytes()).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(header_values(&head, "server"), ["backend/1.0"]);
    assert_eq!(
        header_values(&up.last(), "x-internal-token"),
        ["t0ken", "again"]
    );

    let (status, head, body) = exchange(addr, req("/ruled").as_bytes()).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(header_values(&head, "server").is_empty(), "{head}");
    assert_eq!(header_values(&head, "x-kept"), ["yes"]);
    let seen = up.last();
    assert!(
        header_values(&seen, "x-internal-token").is_empty(),
        "{seen}"
    );
    assert_eq!(header_values(&seen, "x-other"), ["o"]);
    assert_eq!(up.count(), 2);
}

/// An HTTP/2 upstream (prior knowledge) that reports, for each request,
/// how its stream ended. `stall_answer`: it answers a head announcing 100
/// bytes and sends 10, then waits for the stream to be reset; otherwise it
/// reads the request body to its end, or its error.
async fn h2_upstream(
    stall_answer: bool,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(h2_exchange(req, respond, stall_answer, tx.clone()));
                }
            });
        }
    });
    (addr, rx)
}

async fn h2_exchange(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    stall_answer: bool,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) {
    if stall_answer {
        let head = http::Response::builder()
            .header("content-length", "100")
            .body(())
            .unwrap();
        let mut send = respond.send_response(head, false).unwrap();
        send.send_data(bytes::Bytes::from_static(b"0123456789"), false)
            .unwrap();
        let reason = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
        let _ = tx.send(format!("reset {reason:?}"));
        return;
    }
    let mut body = req.into_body();
    let mut got = 0;
    let end = loop {
        match body.data().await {
            Some(Ok(d)) => {
                got += d.len();
                let _ = body.flow_control().release_capacity(d.len());
            }
            Some(Err(e)) => break format!("error after {got}: {e}"),
            None => break format!("end after {got}"),
        }
    };
    let _ = tx.send(end);
}

/// The passive ejections of the server at `up` of pool `up`.
async fn ejections(p: &Portico, up: SocketAddr) -> f64 {
    support::prom::scrape(p.admin).await.value_or_zero(
        "portico_upstream_ejections_total",
        &[("upstream", "up"), ("server", &up.to_string())],
    )
}

/// Sends a chunked upload `body` (its head and chunks, no end) to portico
/// in front of an HTTP/2 upstream, reads the answer to the close: its
/// status, and how the upstream saw its request stream end.
async fn upload_to_h2(listener: &str, body: &[u8]) -> (Option<u16>, String, f64) {
    let (up, mut ends) = h2_upstream(false).await;
    let (p, addr) = start(listener, up, "protocol = \"http2\"");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(body);
    s.write_all(&req).await.unwrap();
    let got = read_to_close(&mut s).await;
    let end = tokio::time::timeout(WELL_WITHIN, ends.recv())
        .await
        .expect("the upstream's request stream was left open")
        .unwrap();
    let status = parse_status(&String::from_utf8_lossy(&got));
    (status, end, ejections(&p, up).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_h2_upstream_a_stalled_upload_gets_408_and_resets_the_stream() {
    // Chunked: a clean end upstream would look like a whole body.
    let (status, end, ejected) =
        upload_to_h2("body_timeout = \"300ms\"", b"a\r\n0123456789\r\n").await;
    assert!(end.starts_with("error after 10"), "{end}");
    assert_eq!(status, Some(408));
    // The client's stall is not the server's failure.
    assert_eq!(ejected, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_h2_upstream_a_body_crossing_max_body_bytes_gets_413_and_resets_the_stream() {
    let mut body = b"3c\r\n".to_vec();
    body.extend_from_slice(&[b'a'; 60]);
    body.extend_from_slice(b"\r\n3c\r\n");
    body.extend_from_slice(&[b'b'; 60]);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, end, ejected) = upload_to_h2("max_body_bytes = 100", &body).await;
    assert!(end.starts_with("error after"), "{end}");
    assert_eq!(status, Some(413));
    assert_eq!(ejected, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_h2_upstream_a_stalled_response_body_resets_the_stream() {
    let (up, mut ends) = h2_upstream(true).await;
    let (_p, addr) = start("", up, "protocol = \"http2\"\nread_timeout = \"300ms\"");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert_eq!(parse_status(&text), Some(200), "{text}");
    assert!(text.ends_with("\r\n\r\n0123456789"), "{text}");
    let end = tokio::time::timeout(WELL_WITHIN, ends.recv())
        .await
        .expect("the upstream stream was left open")
        .unwrap();
    assert!(end.starts_with("reset"), "{end}");
}
