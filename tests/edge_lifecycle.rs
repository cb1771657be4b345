//! Request and connection lifecycle at the edge: requests the client
//! cancels, WebSocket tunnels and the connection limits, and when an
//! upstream connection may be reused.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::prom::scrape_until;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn config(listener: &str, upstream: &str, route_extra: &str) -> String {
    format!(
        "[server]\naccess_log = \"stdout\"\n{listener}\n[[route]]\nname = \"r\"\nupstream = \"a\"\n{route_extra}\n[upstream.a]\nservers = [\"{upstream}\"]\n"
    )
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

async fn count_499(p: &Portico) -> f64 {
    scrape_until(p.admin, |m| {
        m.value_or_zero("portico_requests_total", &[("route", "r"), ("code", "499")]) >= 1.0
    })
    .await
    .value_or_zero("portico_requests_total", &[("route", "r"), ("code", "499")])
}

/// Polls `ok` until it holds (at most 15 s).
async fn wait_for(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_stream_reset_before_the_head_is_a_499_and_the_connection_goes_idle() {
    let a = Backend::start("a").await;
    let (addr, l) = listener_toml("web", "idle_timeout = \"1s\"\n");
    let p = Portico::start(&config(&l, &a.addr.to_string(), "timeout = \"60s\"\n"));

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let mut conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/slow/30000"))
        .header("x-request-id", "cancelled-h2-stream")
        .body(())
        .unwrap();
    let (resp, mut stream) = h2.send_request(req, false).unwrap();
    wait_for("the upstream to get the request", || {
        a.count_path("/slow/30000") == 1
    })
    .await;
    stream.send_reset(h2::Reason::CANCEL);
    drop(resp);

    let line = log_line(&p, "cancelled-h2-stream").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["route"], "r", "{line}");
    assert_eq!(count_499(&p).await, 1.0);
    // The upstream exchange was given up: its connection is closed.
    wait_for("the upstream connection to close", || {
        a.open.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
    // Nothing is in flight any more, so idle_timeout ends the connection
    // (GOAWAY), although the client keeps its handle open.
    let ended = tokio::time::timeout(Duration::from_secs(20), &mut conn).await;
    assert!(
        ended.is_ok(),
        "the HTTP/2 connection was not closed by idle_timeout"
    );
    drop(h2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_closing_while_waiting_is_a_499_and_aborts_upstream() {
    // A raw upstream: reads the head, never answers, reports the close.
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let (got_tx, mut got_rx) = tokio::sync::mpsc::channel::<String>(4);
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel::<()>(4);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = up.accept().await {
            let (got_tx, closed_tx) = (got_tx.clone(), closed_tx.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                let _ = got_tx.send(head).await;
                let mut b = [0u8; 1024];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed_tx.send(()).await;
            });
        }
    });
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&config(&l, &up_addr.to_string(), "timeout = \"60s\"\n"));

    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"GET /wait HTTP/1.1\r\nHost: localhost\r\nx-request-id: cancelled-h1-request\r\n\r\n",
    )
    .await
    .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(15), got_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("GET /wait "), "{head}");
    drop(c);

    let line = log_line(&p, "cancelled-h1-request").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(count_499(&p).await, 1.0);
    let closed = tokio::time::timeout(Duration::from_secs(15), closed_rx.recv()).await;
    assert!(
        closed.is_ok(),
        "the upstream connection stayed open after the client left"
    );
}

/// An HTTP/1.1 upstream that answers every request at once, without reading
/// any request body: `/upload` gets "early", anything else "next". It keeps
/// every connection open (and unread) until the test ends.
async fn early_answering_upstream() -> SocketAddr {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = up.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = up.accept().await {
            let Some(head) = read_head(&mut s).await else {
                continue;
            };
            let body = if head.starts_with("POST /upload ") {
                "early"
            } else {
                "next"
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(answer.as_bytes()).await.is_ok() {
                // Never read again: an upload sent here stalls.
                held.push(s);
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_with_an_unsent_upload_is_not_reused() {
    let up = early_answering_upstream().await;
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&format!(
        "{}max_idle_per_server = 4\n",
        config(&l, &up.to_string(), "timeout = \"5s\"\n")
    ));

    // A client that streams an upload without end.
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let (mut cr, mut cw) = c.into_split();
    let writer = tokio::spawn(async move {
        let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
        while cw.write_all(chunk.as_bytes()).await.is_ok() {}
    });
    let mut answer = Vec::new();
    let mut b = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("early") {
        let n = tokio::time::timeout(Duration::from_secs(15), cr.read(&mut b))
            .await
            .expect("no answer to the upload")
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&b[..n]);
    }
    assert_eq!(parse_status(&String::from_utf8_lossy(&answer)), Some(200));

    // The next request to the same server gets its own answer, not the
    // route's timeout on a connection still busy with the upload.
    let r = client()
        .get(format!("http://{addr}/next"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "next");
    writer.abort();
    drop(p);
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(addr: SocketAddr) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/chat"), tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo(ws: &mut Ws, text: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("no echo")
        .expect("tunnel closed")
        .expect("tunnel failed");
    assert_eq!(got, Message::text(text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_holds_its_connection_slot_and_is_counted_active() {
    let ws_addr = ws_echo().await;
    let (addr, l) = listener_toml("web", "max_connections = 1\n");
    let p = Portico::start(&config(&l, &ws_addr.to_string(), ""));
    let mut ws = ws_connect(addr).await;
    echo(&mut ws, "one").await;

    let active = |m: &support::prom::Prom| {
        m.value_or_zero(
            "portico_connections_active",
            &[("listener", "web"), ("protocol", "http1")],
        )
    };
    assert_eq!(
        active(&scrape_until(p.admin, |m| active(m) == 1.0).await),
        1.0
    );

    // A second client is not served while the tunnel holds the only slot.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(1500), second.read(&mut b)).await;
    assert!(
        early.is_err(),
        "served while the tunnel was open: {early:?} {}",
        String::from_utf8_lossy(&b)
    );
    echo(&mut ws, "two").await;
    assert_eq!(active(&scrape_until(p.admin, |_| true).await), 1.0);

    // Once the tunnel closes, the waiting client is served.
    drop(ws);
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), second.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "not served after the tunnel closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(parse_status(&answer).is_some(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_tunnel_then_closes_it() {
    use futures_util::StreamExt;
    let ws_addr = ws_echo().await;
    let (addr, l) = listener_toml("web", "idle_timeout = \"60s\"\n");
    let mut p = Portico::start(
        &config(&l, &ws_addr.to_string(), "")
            .replace("[server]\n", "[server]\nshutdown_timeout = \"3s\"\n"),
    );
    let mut ws = ws_connect(addr).await;
    echo(&mut ws, "before").await;

    p.signal("TERM");
    // The drain does not cut the tunnel short...
    echo(&mut ws, "draining").await;
    // ...and shutdown_timeout ends it with the process.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "portico did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}: {}", p.stderr());
    let end = tokio::time::timeout(Duration::from_secs(15), ws.next()).await;
    assert!(
        matches!(end, Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(_)))),
        "{end:?}"
    );
    assert!(
        !matches!(
            end,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_))))
        ),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_backend_stops_reading_is_closed_after_idle_timeout() {
    // A backend that accepts the upgrade, then never reads again.
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = up.accept().await {
            if read_head(&mut s).await.is_none() {
                continue;
            }
            let _ = s
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                )
                .await;
            held.push(s);
        }
    });
    let (addr, l) = listener_toml("web", "idle_timeout = \"1s\"\n");
    let _p = Portico::start(&config(&l, &up_addr.to_string(), ""));

    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"GET /chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut c).await.expect("no answer to the upgrade");
    assert_eq!(parse_status(&head), Some(101), "{head}");

    // The client writes for ever; the backend reads nothing, so buffers fill
    // and nothing moves. The tunnel must give up: the client's writes fail.
    let chunk = vec![0x42u8; 64 * 1024];
    let wrote = tokio::time::timeout(Duration::from_secs(60), async {
        while c.write_all(&chunk).await.is_ok() {}
    })
    .await;
    assert!(
        wrote.is_ok(),
        "the tunnel stayed open with a backend that does not read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_client_closing_while_waiting_is_a_499() {
    let a = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml(
        "web",
        "protocols = [\"http1\", \"http2\", \"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n",
    );
    let p = Portico::start_in(dir, &config(&l, &a.addr.to_string(), "timeout = \"60s\"\n"));
    let c = support::http3::H3Client::new(&pki, false)
        .connect(addr)
        .await
        .unwrap();
    let mut req = support::http3::request("GET", "/slow/30000");
    req.headers_mut()
        .insert("x-request-id", "cancelled-h3-request".parse().unwrap());
    let waiting = {
        let mut c = c.clone();
        tokio::spawn(async move { c.request(req, bytes::Bytes::new()).await })
    };
    wait_for("the upstream to get the request", || {
        a.count_path("/slow/30000") == 1
    })
    .await;
    c.close();
    let _ = waiting.await;

    let line = log_line(&p, "cancelled-h3-request").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(count_499(&p).await, 1.0);
    wait_for("the upstream connection to close", || {
        a.open.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
    drop(c);
}
