//! Parked HTTP/1.x connections: an idle keepalive connection gives its
//! HTTP state and buffers back and is served again, byte for byte, when
//! the client sends; a request body left unread never becomes a head; a
//! parked connection still ends at its idle timeout and at a stop.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::raw::content_length;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longer than the time an idle connection waits before it is parked.
const IDLE_PAST_PARK: Duration = Duration::from_millis(500);

/// portico with debug logs (the park is logged), a listener (both HTTP
/// versions, so the first bytes tell the protocol) and `routes`.
fn start(listener_extra: &str, routes: &str) -> (SocketAddr, Portico) {
    let (addr, l) = listener_toml("web", listener_extra);
    let cfg = format!("{l}\n{routes}");
    let p = Portico::start_custom(tempfile::tempdir().unwrap(), &cfg, |cmd| {
        cmd.env("RUST_LOG", "portico=debug");
    });
    (addr, p)
}

fn proxy_routes(b: &Backend) -> String {
    format!(
        "[[route]]\nname = \"all\"\nupstream = \"a\"\n{}",
        upstream_toml("a", &[b], "")
    )
}

fn parks(p: &Portico) -> usize {
    p.stderr().matches("idle connection parked").count()
}

async fn wait_for_parks(p: &Portico, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while parks(p) < n {
        assert!(Instant::now() < deadline, "no park logged: {}", p.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads one answer (head and Content-Length body) from `s`, keeping what
/// follows it in `buf`: (status, body).
async fn answer<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> (u16, String) {
    let go = async {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed before an answer: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len = content_length(&head);
        while buf.len() < end + len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed in a body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[end..end + len]).into_owned();
        buf.drain(..end + len);
        (parse_status(&head).expect("a status line"), body)
    };
    tokio::time::timeout(Duration::from_secs(15), go)
        .await
        .expect("no answer in time")
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

/// The same requests over one connection, with an idle spell past the
/// park between them, pipelined after it, then once more after a second
/// park: every answer right, and the upstream saw each request once.
async fn requests_across_parks<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    p: &Portico,
    b: &Backend,
) {
    let mut buf = Vec::new();
    s.write_all(&get("/one")).await.unwrap();
    assert_eq!(answer(s, &mut buf).await, (200, "a GET /one".into()));
    tokio::time::sleep(IDLE_PAST_PARK).await;
    wait_for_parks(p, 1).await;

    // Two requests in one write, the second head in pieces.
    let mut two = get("/two");
    two.extend_from_slice(b"GET /three HTTP/1.1\r\nHo");
    s.write_all(&two).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"st: x\r\n\r\n").await.unwrap();
    assert_eq!(answer(s, &mut buf).await, (200, "a GET /two".into()));
    assert_eq!(answer(s, &mut buf).await, (200, "a GET /three".into()));

    tokio::time::sleep(IDLE_PAST_PARK).await;
    wait_for_parks(p, 2).await;
    s.write_all(&get("/four")).await.unwrap();
    assert_eq!(answer(s, &mut buf).await, (200, "a GET /four".into()));
    assert!(buf.is_empty(), "bytes beyond the answers: {buf:?}");
    for path in ["/one", "/two", "/three", "/four"] {
        assert_eq!(b.count_path(path), 1, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_parked_and_then_served_again() {
    let b = Backend::start("a").await;
    let (addr, p) = start("", &proxy_routes(&b));
    let mut s = TcpStream::connect(addr).await.unwrap();
    requests_across_parks(&mut s, &p, &b).await;
    assert_eq!(b.accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_is_parked_and_then_served_again() {
    let b = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml(
        "web",
        "tls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let p = Portico::start_custom(dir, &format!("{l}\n{}", proxy_routes(&b)), |cmd| {
        cmd.env("RUST_LOG", "portico=debug");
    });
    let cfg = pki.client_config(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    requests_across_parks(&mut s, &p, &b).await;
}

/// Blank lines after a request (which a server ignores before the next
/// head) do not keep a connection from parking, nor get lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_lines_before_a_head_survive_a_park() {
    let b = Backend::start("a").await;
    let (addr, p) = start("", &proxy_routes(&b));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let mut first = get("/one");
    first.extend_from_slice(b"\r\n\r\n");
    s.write_all(&first).await.unwrap();
    assert_eq!(answer(&mut s, &mut buf).await, (200, "a GET /one".into()));
    tokio::time::sleep(IDLE_PAST_PARK).await;
    wait_for_parks(&p, 1).await;
    s.write_all(&get("/two")).await.unwrap();
    assert_eq!(answer(&mut s, &mut buf).await, (200, "a GET /two".into()));
}

/// The attacker's side: an answer that leaves the request body unread
/// (a `respond` route), a pause past the park, then the rest of the body,
/// which is a request of its own. The body must stay a body: the request
/// hidden in it never reaches the upstream. (hyper closes such a
/// connection itself today; the byte layer would not park it either, as
/// its framing is mid-body.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_left_unread_never_becomes_a_request_after_idling() {
    for expect in ["", "Expect: 100-continue\r\n"] {
        body_left_unread(expect).await;
    }
}

async fn body_left_unread(expect: &str) {
    let b = Backend::start("a").await;
    let routes = format!(
        "[[route]]\nname = \"early\"\nmatch.path_prefix = \"/early\"\nrespond = {{ status = 200, body = \"early\" }}\n\n{}",
        proxy_routes(&b)
    );
    let (addr, p) = start("", &routes);
    let hidden = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let body_len = 20 + hidden.len();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head =
        format!("POST /early HTTP/1.1\r\nHost: x\r\n{expect}Content-Length: {body_len}\r\n\r\n")
            .into_bytes();
    if expect.is_empty() {
        head.extend_from_slice(&[b'a'; 20]);
    }
    s.write_all(&head).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(answer(&mut s, &mut buf).await, (200, "early".into()));
    tokio::time::sleep(IDLE_PAST_PARK).await;
    if !expect.is_empty() {
        // The body the client may send anyway, unasked (RFC 9110 10.1.1).
        let _ = s.write_all(&[b'a'; 20]).await;
    }
    let _ = s.write_all(hidden).await;
    // Whatever portico does with the connection, no answer to the hidden
    // request, and the upstream never sees it.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
    rest.extend_from_slice(&buf);
    assert!(
        !String::from_utf8_lossy(&rest).contains("smuggled"),
        "the hidden request was answered: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(b.count_path("/smuggled"), 0);
    assert_eq!(parks(&p), 0, "a connection in a body was parked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_still_closes_at_its_idle_timeout() {
    let b = Backend::start("a").await;
    let (addr, p) = start("idle_timeout = \"3s\"\n", &proxy_routes(&b));
    parked_then_closed_at_3s(addr, &p, "a GET /one").await;
}

/// One request on a connection of a listener whose idle_timeout is 3 s,
/// answered `body`; the connection is parked, then closed 3 s after the
/// answer.
async fn parked_then_closed_at_3s(addr: SocketAddr, p: &Portico, body: &str) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(&get("/one")).await.unwrap();
    let answered = Instant::now();
    assert_eq!(answer(&mut s, &mut buf).await, (200, body.into()));
    wait_for_parks(p, 1).await;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the parked connection was not closed at its idle timeout")
        .unwrap();
    assert_eq!(n, 0, "bytes on an idle connection: {rest:?}");
    let after = answered.elapsed();
    assert!(
        (Duration::from_millis(2800)..Duration::from_secs(6)).contains(&after),
        "closed after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_parked_connections_at_once() {
    let b = Backend::start("a").await;
    let (addr, mut p) = start(
        "",
        &format!("[server]\nshutdown_timeout = \"30s\"\n{}", proxy_routes(&b)),
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(&get("/one")).await.unwrap();
    assert_eq!(answer(&mut s, &mut buf).await, (200, "a GET /one".into()));
    wait_for_parks(&p, 1).await;
    stop_closes_at_once(&mut p, &mut s).await;
}

/// A connection parked after a plain request can still be upgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_can_become_a_websocket_tunnel() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let b = Backend::start("a").await;
    let ws = ws_echo().await;
    let routes = format!(
        "[[route]]\nname = \"ws\"\nmatch.path_prefix = \"/chat\"\nupstream = \"ws\"\n\n{}\n[upstream.ws]\nservers = [\"{ws}\"]\n",
        proxy_routes(&b)
    );
    let (addr, p) = start("", &routes);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(&get("/one")).await.unwrap();
    assert_eq!(answer(&mut s, &mut buf).await, (200, "a GET /one".into()));
    wait_for_parks(&p, 1).await;
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/chat"), s)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("after a park")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("no echo")
        .expect("tunnel closed")
        .expect("tunnel failed");
    assert_eq!(got, Message::text("after a park"));
}

/// On a listener that serves both versions, the first bytes tell the
/// protocol even when they come in pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_is_told_from_first_bytes_in_pieces() {
    let b = Backend::start("a").await;
    let (addr, _p) = start("", &proxy_routes(&b));
    // HTTP/1.1 whose first bytes are a prefix of the HTTP/2 preface.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"X /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(answer(&mut s, &mut buf).await, (200, "a PRIX /x".into()));
    // HTTP/1.1 in pieces.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"G").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&get("/split")[1..]).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(answer(&mut s, &mut buf).await, (200, "a GET /split".into()));
    // HTTP/2 whose preface comes in pieces: h2's client over a relay that
    // cuts the first bytes up.
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut c, _) = relay.accept().await.unwrap();
        let mut up = TcpStream::connect(addr).await.unwrap();
        let mut first = vec![0u8; 24];
        c.read_exact(&mut first).await.unwrap();
        for piece in first.chunks(5) {
            up.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
    });
    let tcp = TcpStream::connect(relay_addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/h2"))
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(15), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(b.count_path("/h2"), 1);
}

/// An answer portico gives at once (a `respond` route) starts and ends
/// the request between two reads of the connection: its idle clock must
/// still start at the answer, not at the next read (which, with no bytes
/// coming, is the head timeout's, much later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_at_once_starts_the_idle_clock() {
    let routes = "[[route]]\nname = \"r\"\nmatch.path_prefix = \"/\"\nrespond = { status = 200, body = \"ok\" }\n";
    let (addr, p) = start(
        "idle_timeout = \"3s\"\nheader_read_timeout = \"60s\"\n",
        routes,
    );
    parked_then_closed_at_3s(addr, &p, "ok").await;
}

/// A request that asks for an upgrade portico does not make (`Upgrade:
/// h2c`, what `curl --http2` sends over plain HTTP) leaves hyper holding
/// the upgrade to the end of its connection: such a connection is not
/// parked (ending hyper's connection would drop the stream), and stays
/// open for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_asked_for_an_upgrade_stays_open_when_idle() {
    let b = Backend::start("a").await;
    let (addr, p) = start("", &proxy_routes(&b));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(answer(&mut s, &mut buf).await, (200, "a GET /one".into()));
    tokio::time::sleep(IDLE_PAST_PARK).await;
    s.write_all(&get("/two")).await.unwrap();
    assert_eq!(answer(&mut s, &mut buf).await, (200, "a GET /two".into()));
    assert_eq!(parks(&p), 0);
}

/// An upstream that answers every request on its connections with `size`
/// bytes in chunks (no length).
async fn chunked_upstream(size: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while support::raw::read_head(&mut s, &mut buf).await.is_some() {
                    buf.clear();
                    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "c".repeat(64 * 1024));
                    let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                    for _ in 0..size / (64 * 1024) {
                        out.extend_from_slice(chunk.as_bytes());
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP/1.0 client that asks for keep-alive, reading slowly, gets an
/// answer of unknown length: hyper must close the connection after it (the
/// close is the answer's end). Portico's part of the answer ends, and the
/// connection goes idle, before hyper has written it all; the close must
/// still come, not a park that keeps the connection open. (hyper's write
/// buffer is small, so that window is short here; HTTP/1.0 connections are
/// never parked, and a park during which hyper closed for a reason of its
/// own is not kept.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http10_client_still_gets_its_close() {
    let size = 8 << 20;
    let up = chunked_upstream(size).await;
    let routes = format!(
        "[[route]]\nname = \"all\"\nupstream = \"c\"\n\n[upstream.c]\nservers = [\"{up}\"]\n"
    );
    let (addr, p) = start("idle_timeout = \"30s\"\n", &routes);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    // Read slowly: portico's side ends while hundreds of kilobytes of the
    // answer are still in hyper's and the sockets' buffers.
    let mut all = Vec::new();
    let read_all = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&chunk[..n]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(25), read_all)
        .await
        .expect("the connection was not closed after the close-delimited answer");
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&all[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert_eq!(all.len() - head_end, size, "{head}");
    assert_eq!(parks(&p), 0);
}

/// A stop ends a plain connection that has not yet sent a byte (its
/// protocol not yet known) at once, not at its head timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_a_connection_that_has_not_spoken() {
    let b = Backend::start("a").await;
    let (addr, mut p) = start(
        "header_read_timeout = \"30s\"\n",
        &format!("[server]\nshutdown_timeout = \"30s\"\n{}", proxy_routes(&b)),
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Accepted before the stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_closes_at_once(&mut p, &mut s).await;
}

/// SIGTERM: portico exits within 5 s (its shutdown_timeout is longer) and
/// `s` is closed.
async fn stop_closes_at_once(p: &mut Portico, s: &mut TcpStream) {
    let started = Instant::now();
    let status = p.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("still open after the stop")
        .unwrap_or(0);
    assert_eq!(n, 0);
}
