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
