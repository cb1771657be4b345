//! An HTTP/3 request whose stream alone the client cancels, the QUIC
//! connection staying open: STOP_SENDING on the response direction (or a
//! reset of the request direction before the body's end and the response
//! head) gives the request
//! up as an HTTP/2 stream reset does. The upstream exchange is aborted, the
//! access log and metrics say 499 when no response head was sent, and the
//! other requests of the connection go on.

mod support;

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::http3::request;
use support::prom::scrape_until;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

type Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// An h3 connection of our own, to drive request streams by hand.
struct Raw {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    conn: quinn::Connection,
    _driver: tokio::task::JoinHandle<()>,
    _endpoint: quinn::Endpoint,
}

impl Raw {
    async fn connect(pki: &Pki, addr: SocketAddr) -> Raw {
        let tls = pki.client_config(&[b"h3"], &[&rustls::version::TLS13]);
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(crypto));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = endpoint
            .connect_with(config, addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .unwrap();
        let driver = tokio::spawn(async move {
            let _ = driver.wait_idle().await;
        });
        Raw {
            send,
            conn,
            _driver: driver,
            _endpoint: endpoint,
        }
    }

    /// Sends the head of a request with this request id (and, to
    /// a POST to the upstream, a Content-Length of 1000), leaving its body
    /// open.
    async fn open(&mut self, method: &str, path: &str, id: &str) -> Stream {
        let mut req = request(method, path);
        req.headers_mut()
            .insert("x-request-id", id.parse().unwrap());
        if path != "/fixed" && method == "POST" {
            req.headers_mut()
                .insert("content-length", "1000".parse().unwrap());
        }
        self.send.send_request(req).await.unwrap()
    }
}

/// Drops `s`'s request on the client's side only: STOP_SENDING on the
/// response direction and RESET_STREAM on the request direction, both
/// H3_REQUEST_CANCELLED (what a browser does when a fetch is aborted).
fn cancel(s: &mut Stream) {
    s.stop_sending(Code::H3_REQUEST_CANCELLED);
    s.stop_stream(Code::H3_REQUEST_CANCELLED);
}

/// The whole response (status, body) of a stream.
async fn response(s: &mut Stream) -> (u16, String) {
    let head = s.recv_response().await.unwrap();
    let mut body = Vec::new();
    while let Some(mut chunk) = s.recv_data().await.unwrap() {
        while chunk.has_remaining() {
            let c = chunk.chunk();
            body.extend_from_slice(c);
            let n = c.len();
            chunk.advance(n);
        }
    }
    (head.status().as_u16(), String::from_utf8(body).unwrap())
}

/// A raw HTTP/1.1 upstream. For `/hold` (and `/upload`) it reads the head
/// and never answers; for `/part` it sends a response head and the chunk
/// "first", then holds; for `/answer` it answers 401 "denied" at once
/// without reading the request body, then holds; for `/early` it sends a
/// 413 head with the first half of its body "early-rest", and the rest
/// once told (`go`), then holds; anything else gets "next" at once. It
/// reports each head it got, and the path of each held request whose
/// connection portico closed.
struct Upstream {
    addr: SocketAddr,
    got: mpsc::UnboundedReceiver<String>,
    closed: mpsc::UnboundedReceiver<String>,
    go: Arc<Notify>,
}

impl Upstream {
    async fn start() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (got_tx, got) = mpsc::unbounded_channel();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let go = Arc::new(Notify::new());
        let go2 = go.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let to = (got_tx.clone(), closed_tx.clone());
                tokio::spawn(serve_upstream(s, to, go2.clone()));
            }
        });
        Upstream {
            addr,
            got,
            closed,
            go,
        }
    }

    /// The next request head the upstream got.
    async fn next_head(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(15), self.got.recv())
            .await
            .expect("the upstream got no request")
            .unwrap()
    }

    /// The path of the next held request whose connection was closed.
    async fn next_closed(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(15), self.closed.recv())
            .await
            .expect("the upstream request was not aborted")
            .unwrap()
    }
}

type Reports = (mpsc::UnboundedSender<String>, mpsc::UnboundedSender<String>);

async fn serve_upstream(mut s: TcpStream, (got, closed): Reports, go: Arc<Notify>) {
    loop {
        let Some(head) = read_head(&mut s).await else {
            return;
        };
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let _ = got.send(head);
        match path.as_str() {
            "/hold" | "/upload" => {}
            "/part" => {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
                    )
                    .await;
            }
            "/answer" => {
                let _ = s
                    .write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 6\r\n\r\ndenied")
                    .await;
            }
            "/early" => {
                let head = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 10\r\n\r\nearly";
                let _ = s.write_all(head).await;
                go.notified().await;
                let _ = s.write_all(b"-rest").await;
            }
            _ => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext")
                    .await;
                continue;
            }
        }
        // Held: whatever else comes (a request body) is read until
        // portico closes the connection.
        let mut b = [0u8; 4096];
        while let Ok(n) = s.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
        let _ = closed.send(path);
        return;
    }
}

/// Reads one HTTP/1.1 request head from `s` (up to the blank line).
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// portico with an HTTP/3 listener, a route "fixed" answered by portico
/// itself (`/fixed`) and a route "r" to `upstream`.
fn start(upstream: SocketAddr) -> (Portico, SocketAddr, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml(
        "web",
        "protocols = [\"http1\", \"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let cfg = format!(
        "[server]\naccess_log = \"stdout\"\n{l}\n[[route]]\nname = \"fixed\"\nmatch.path_prefix = \"/fixed\"\nrespond = {{ status = 200, body = \"fixed\" }}\n[[route]]\nname = \"r\"\nupstream = \"a\"\ntimeout = \"60s\"\n[upstream.a]\nservers = [\"{upstream}\"]\n"
    );
    (Portico::start_in(dir, &cfg), addr, pki)
}

/// The access log line (JSON) of the request with this id.
async fn log_line(p: &Portico, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(l) = p.stdout().lines().find(|l| l.contains(id)) {
            return serde_json::from_str(l).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for {id}: {}",
            p.stdout()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests of route "r" counted with this status.
async fn count(p: &Portico, code: &str) -> f64 {
    let labels = [("route", "r"), ("code", code)];
    scrape_until(p.admin, |m| {
        m.value_or_zero("portico_requests_total", &labels) >= 1.0
    })
    .await
    .value_or_zero("portico_requests_total", &labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stopped_while_its_upstream_is_awaited_is_a_499_and_the_connection_goes_on() {
    let mut up = Upstream::start().await;
    let (p, addr, pki) = start(up.addr);
    let mut c = Raw::connect(&pki, addr).await;

    let mut s = c.open("GET", "/hold", "h3-stopped-waiting").await;
    s.finish().await.unwrap();
    assert!(up.next_head().await.starts_with("GET /hold "));
    cancel(&mut s);

    let line = log_line(&p, "h3-stopped-waiting").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["route"], "r", "{line}");
    assert_eq!(count(&p, "499").await, 1.0);
    assert_eq!(up.next_closed().await, "/hold");

    // Another request on the same QUIC connection.
    let mut s2 = c.open("GET", "/next", "h3-after-stop").await;
    s2.finish().await.unwrap();
    assert_eq!(response(&mut s2).await, (200, "next".to_string()));
    let line = log_line(&p, "h3-after-stop").await;
    assert_eq!(line["status"], 200, "{line}");
    drop(s);
}

/// STOP_SENDING right behind the head (often in the same packet, so
/// portico may learn of it before the request starts): still a request,
/// logged and counted as 499. (Only STOP_SENDING: a reset of the request
/// side that arrives with the head discards the head, so there would be no
/// request at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stopped_right_behind_its_head_is_logged_as_a_499() {
    let up = Upstream::start().await;
    let (p, addr, pki) = start(up.addr);
    let mut c = Raw::connect(&pki, addr).await;

    let mut s = c.open("GET", "/hold", "h3-stopped-at-once").await;
    s.stop_sending(Code::H3_REQUEST_CANCELLED);
    let line = log_line(&p, "h3-stopped-at-once").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(count(&p, "499").await, 1.0);

    let mut s2 = c.open("GET", "/next", "h3-after-early-stop").await;
    s2.finish().await.unwrap();
    assert_eq!(response(&mut s2).await, (200, "next".to_string()));
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stopped_while_its_body_streams_aborts_the_upstream() {
    let mut up = Upstream::start().await;
    let (p, addr, pki) = start(up.addr);
    let mut c = Raw::connect(&pki, addr).await;

    let mut s = c.open("GET", "/part", "h3-stopped-streaming").await;
    s.finish().await.unwrap();
    let head = s.recv_response().await.unwrap();
    assert_eq!(head.status(), 200);
    let mut first = s.recv_data().await.unwrap().unwrap();
    assert_eq!(first.copy_to_bytes(first.remaining()), "first");
    // h3-quinn cannot stop a stream with a read under way (h3 reads ahead
    // of the body), so the stream is dropped instead: quinn stops its
    // receiving side (STOP_SENDING, code 0); its sending side had ended.
    drop(s);

    assert_eq!(up.next_closed().await, "/part");
    // The response head was out: its status is logged, as for an HTTP/2
    // stream reset in the middle of a body.
    let line = log_line(&p, "h3-stopped-streaming").await;
    assert_eq!(line["status"], 200, "{line}");

    let mut s2 = c.open("GET", "/next", "h3-after-stream-stop").await;
    s2.finish().await.unwrap();
    assert_eq!(response(&mut s2).await, (200, "next".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_reset_before_its_end_is_a_499() {
    let mut up = Upstream::start().await;
    let (p, addr, pki) = start(up.addr);
    let mut c = Raw::connect(&pki, addr).await;

    // 10 of the 1000 bytes announced, then only the request direction is
    // reset (no STOP_SENDING).
    let mut s = c.open("POST", "/upload", "h3-body-reset").await;
    s.send_data(Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert!(up.next_head().await.starts_with("POST /upload "));
    s.stop_stream(Code::H3_REQUEST_CANCELLED);

    let line = log_line(&p, "h3-body-reset").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(count(&p, "499").await, 1.0);
    assert_eq!(up.next_closed().await, "/upload");

    let mut s2 = c.open("GET", "/next", "h3-after-reset").await;
    s2.finish().await.unwrap();
    assert_eq!(response(&mut s2).await, (200, "next".to_string()));
    drop(s);
}

/// A request body portico does not need and the client keeps sending is
/// stopped once the response is out, with H3_NO_ERROR (RFC 9114 4.1.2): the
/// request was served, not cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unneeded_request_body_is_stopped_with_h3_no_error() {
    let up = Upstream::start().await;
    let (_p, addr, pki) = start(up.addr);
    let mut c = Raw::connect(&pki, addr).await;
    let mut s = c.open("POST", "/fixed", "h3-unneeded-body").await;
    assert_eq!(s.recv_response().await.unwrap().status(), 200);
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    // Far more than the 1 MiB portico reads and discards.
    let mut stopped = None;
    for _ in 0..4096 {
        if let Err(e) = s.send_data(chunk.clone()).await {
            stopped = Some(e);
            break;
        }
    }
    assert!(
        matches!(&stopped, Some(StreamError::RemoteTerminate { code, .. }) if *code == Code::H3_NO_ERROR),
        "expected the stream stopped with H3_NO_ERROR, got {stopped:?}"
    );
}

/// The status a request stream ended with: its response head, or the code
/// of the reset that ended it first.
async fn reset_code(s: &mut Stream) -> Option<Code> {
    match s.recv_response().await {
        Err(StreamError::RemoteTerminate { code, .. }) => Some(code),
        r => panic!("expected the response reset, got {r:?}"),
    }
}

/// An upstream that answers early (401) without reading the request body,
/// then a client that resets its unfinished upload once it has the whole
/// answer (RFC 9114 4.1.2 allows it; Chromium does so with H3_NO_ERROR):
/// the upstream connection, whose request body will never end, is closed
/// rather than left waiting, and the QUIC connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reset_after_an_early_answer_ends_the_upstream_request() {
    let mut up = Upstream::start().await;
    let (p, addr, pki) = start(up.addr);
    let mut c = Raw::connect(&pki, addr).await;

    let mut s = c.open("POST", "/answer", "h3-reset-after-answer").await;
    s.send_data(Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert_eq!(response(&mut s).await, (401, "denied".to_string()));
    s.stop_stream(Code::H3_NO_ERROR);

    // The upstream sees its request body aborted: portico closes the
    // connection it was being sent on.
    assert_eq!(up.next_closed().await, "/answer");
    let line = log_line(&p, "h3-reset-after-answer").await;
    assert_eq!(line["status"], 401, "{line}");

    let mut s2 = c.open("GET", "/next", "h3-after-answer-reset").await;
    s2.finish().await.unwrap();
    assert_eq!(response(&mut s2).await, (200, "next".to_string()));
}

/// An upstream that answers 413 while the request body is still coming,
/// and a client that resets its upload once it sees that head: the
/// response is not a cancel; it goes on to its end and is logged with its
/// status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reset_after_the_response_head_does_not_cut_the_response() {
    let mut up = Upstream::start().await;
    let (p, addr, pki) = start(up.addr);
    let mut c = Raw::connect(&pki, addr).await;

    let mut s = c.open("POST", "/early", "h3-reset-after-head").await;
    s.send_data(Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    let head = s.recv_response().await.unwrap();
    assert_eq!(head.status(), 413);
    s.stop_stream(Code::H3_NO_ERROR);
    // Not an assertion: gives portico time to see the reset before the
    // rest of the body comes, so that a reset taken for a cancel would cut
    // the response.
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.go.notify_one();

    let mut body = Vec::new();
    while let Some(mut chunk) = s.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    assert_eq!(body, b"early-rest");
    let line = log_line(&p, "h3-reset-after-head").await;
    assert_eq!(line["status"], 413, "{line}");
    // Once the response is out, the body the upstream connection held
    // fails and that connection is closed.
    assert_eq!(up.next_closed().await, "/early");

    let mut s2 = c.open("GET", "/next", "h3-after-head-reset").await;
    s2.finish().await.unwrap();
    assert_eq!(response(&mut s2).await, (200, "next".to_string()));
}

/// Opens a POST to the upstream and resets its body (the request side
/// only, no STOP_SENDING) once the upstream has its head: portico gives the
/// request up and resets the stream, which quinn then remembers until the
/// connection ends.
async fn reset_upload(c: &mut Raw, up: &mut Upstream) {
    let mut s = c.open("POST", "/upload", "h3-upload-reset").await;
    s.send_data(Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    let head = up.next_head().await;
    assert!(head.starts_with("POST /upload "), "{head}");
    s.stop_stream(Code::H3_REQUEST_CANCELLED);
    assert_eq!(reset_code(&mut s).await, Some(Code::H3_REQUEST_CANCELLED));
    assert_eq!(up.next_closed().await, "/upload");
}

/// Streams portico resets without the client having stopped them are
/// bounded per connection: up to 1000 the connection is served as usual
/// (and cancels by STOP_SENDING, what clients do, are not counted at all);
/// one more closes it with H3_EXCESSIVE_LOAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_resets_upload_after_upload_is_closed_past_a_limit() {
    let mut up = Upstream::start().await;
    let (_p, addr, pki) = start(up.addr);
    let mut c = Raw::connect(&pki, addr).await;

    for _ in 0..50 {
        let mut s = c.open("GET", "/hold", "h3-stop-many").await;
        s.finish().await.unwrap();
        assert!(up.next_head().await.starts_with("GET /hold "));
        s.stop_sending(Code::H3_REQUEST_CANCELLED);
        assert_eq!(up.next_closed().await, "/hold");
    }
    for _ in 0..1000 {
        reset_upload(&mut c, &mut up).await;
    }
    let mut s = c.open("GET", "/next", "h3-under-the-limit").await;
    s.finish().await.unwrap();
    assert_eq!(response(&mut s).await, (200, "next".to_string()));
    assert!(up.next_head().await.starts_with("GET /next "));

    // One more.
    let mut s = c.open("POST", "/upload", "h3-upload-reset-over").await;
    s.send_data(Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert!(up.next_head().await.starts_with("POST /upload "));
    s.stop_stream(Code::H3_REQUEST_CANCELLED);
    let closed = tokio::time::timeout(Duration::from_secs(15), c.conn.closed())
        .await
        .expect("the connection was not closed");
    match closed {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(a.error_code.into_inner(), Code::H3_EXCESSIVE_LOAD.value())
        }
        e => panic!("expected H3_EXCESSIVE_LOAD, got {e}"),
    }
}

/// An HTTP/2 (h2c) upstream. For `/answer` it answers 401 "denied" at once
/// and keeps reading the request body, reporting how it ended ("end", or
/// "error: ..." for a reset); anything else gets "next".
async fn h2_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    tokio::spawn(h2_answer(req, respond, tx.clone()));
                }
            });
        }
    });
    (addr, rx)
}

async fn h2_answer(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    ended: mpsc::UnboundedSender<String>,
) {
    let answer = req.uri().path() == "/answer";
    let (status, body) = if answer {
        (401, "denied")
    } else {
        (200, "next")
    };
    let resp = http::Response::builder().status(status).body(()).unwrap();
    let Ok(mut send) = respond.send_response(resp, false) else {
        return;
    };
    let _ = send.send_data(Bytes::from_static(body.as_bytes()), true);
    if !answer {
        return;
    }
    let mut body = req.into_body();
    loop {
        match body.data().await {
            Some(Ok(d)) => {
                let _ = body.flow_control().release_capacity(d.len());
            }
            Some(Err(e)) => {
                let _ = ended.send(format!("error: {e}"));
                return;
            }
            None => {
                let _ = ended.send("end".to_string());
                return;
            }
        }
    }
}

/// As [`an_upload_reset_after_an_early_answer_ends_the_upstream_request`],
/// with an HTTP/2 upstream, where the request body is sent by a task of its
/// own that outlives the response: once the client resets its upload, the
/// upstream sees the request body reset rather than waiting for it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reset_after_an_early_answer_resets_the_h2_upstream_request_body() {
    let (up, mut ended) = h2_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml(
        "web",
        "protocols = [\"http1\", \"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let cfg = format!(
        "[server]\naccess_log = \"stdout\"\n{l}\n[[route]]\nname = \"r\"\nupstream = \"a\"\n[upstream.a]\nprotocol = \"http2\"\nservers = [\"{up}\"]\n"
    );
    let p = Portico::start_in(dir, &cfg);
    let mut c = Raw::connect(&pki, addr).await;

    let mut s = c.open("POST", "/answer", "h3-reset-after-h2-answer").await;
    s.send_data(Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert_eq!(response(&mut s).await, (401, "denied".to_string()));
    s.stop_stream(Code::H3_NO_ERROR);

    let end = tokio::time::timeout(Duration::from_secs(15), ended.recv())
        .await
        .expect("the upstream request body neither ended nor was reset")
        .unwrap();
    assert!(end.starts_with("error"), "{end}");
    let line = log_line(&p, "h3-reset-after-h2-answer").await;
    assert_eq!(line["status"], 401, "{line}");

    let mut s2 = c.open("GET", "/next", "h3-after-h2-answer-reset").await;
    s2.finish().await.unwrap();
    assert_eq!(response(&mut s2).await, (200, "next".to_string()));
}

/// A request given up on STOP_SENDING alone, its body still coming: the
/// request side is stopped too, with H3_REQUEST_CANCELLED (not quinn's
/// default code 0, which HTTP/3 reads as H3_NO_ERROR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_side_of_a_request_given_up_is_stopped_as_cancelled() {
    let mut up = Upstream::start().await;
    let (p, addr, pki) = start(up.addr);
    let mut c = Raw::connect(&pki, addr).await;

    let mut s = c.open("POST", "/upload", "h3-stop-request-side").await;
    let chunk = Bytes::from_static(b"0123456789");
    s.send_data(chunk.clone()).await.unwrap();
    assert!(up.next_head().await.starts_with("POST /upload "));
    s.stop_sending(Code::H3_REQUEST_CANCELLED);
    assert_eq!(up.next_closed().await, "/upload");
    let line = log_line(&p, "h3-stop-request-side").await;
    assert_eq!(line["status"], 499, "{line}");

    // Well under the stream's flow-control window: the writes fail only
    // once portico's STOP_SENDING has arrived.
    let stopped = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Err(e) = s.send_data(chunk.clone()).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the request side was not stopped");
    assert!(
        matches!(&stopped, StreamError::RemoteTerminate { code, .. } if *code == Code::H3_REQUEST_CANCELLED),
        "expected the request side stopped with H3_REQUEST_CANCELLED, got {stopped:?}"
    );
}
