//! Request trailers, from the attacker's side: a client that cannot send a
//! claim header, a token or a forwarding header in the header section tries
//! the trailer section instead (HTTP/2 trailing HEADERS, HTTP/1.1 chunked
//! trailers). An HTTP/2 upstream (gRPC servers, most often) receives
//! trailers as they come; one that merges them into the header section
//! would take the client's copies for the proxy's. What the upstream
//! received is recorded by a real HTTP/2 server.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use support::raw::exchange;
use support::*;

/// What an HTTP/2 upstream received of each request: body and trailers.
type Got = Arc<Mutex<Vec<(Bytes, Option<http::HeaderMap>)>>>;

/// An h2c server on 127.0.0.1 that reads each request body to its end
/// and records it with its trailers.
async fn h2_upstream() -> (SocketAddr, Got) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Got = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let g = g.clone();
                    async move {
                        let c = req.into_body().collect().await;
                        let n = match c {
                            Ok(c) => {
                                let trailers = c.trailers().cloned();
                                let body = c.to_bytes();
                                let n = body.len();
                                g.lock().unwrap().push((body, trailers));
                                n
                            }
                            Err(_) => 0,
                        };
                        Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                            Bytes::from(format!("got {n}")),
                        )))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

/// portico on a plain listener (HTTP/1.1 and h2c) with a JWT policy that
/// forwards `sub` as x-user-id, one open route to the HTTP/2 upstream.
fn start(up: SocketAddr) -> (SocketAddr, Portico) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secret"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    let (addr, l) = listener_toml("web", "protocols = [\"http1\", \"http2\"]");
    let config = format!(
        r#"[server]
access_log = "off"
{l}
[auth.jwt]
type = "jwt"
algorithms = ["HS256"]
secret_file = "secret"
forward_claims = {{ sub = "x-user-id" }}

[upstream.grpc]
servers = ["{up}"]
protocol = "http2"

[[route]]
name = "open"
match.path_prefix = "/"
upstream = "grpc"
"#
    );
    (addr, Portico::start_in(dir, &config))
}

/// Trailer fields a client might try, and the one harmless field that
/// must pass.
const FORGED: &[(&str, &str)] = &[
    ("x-user-id", "admin"),
    ("x_user_id", "admin"),
    ("X-USER-ID", "admin"),
    ("authorization", "Bearer forged"),
    ("x-forwarded-for", "10.9.9.9"),
    ("x_forwarded_for", "10.9.9.9"),
    ("x-request-id", "forged-id"),
    ("host", "internal.example"),
    ("content-length", "999"),
    ("cookie", "session=forged"),
    ("connection", "x-checksum"),
    ("keep-alive", "timeout=5"),
    ("te", "trailers"),
];

fn assert_only_checksum(got: &Got) {
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1, "one request upstream");
    let (body, trailers) = &got[0];
    assert_eq!(&body[..], b"hello");
    let t = trailers.as_ref().expect("the harmless trailer arrives");
    let names: Vec<&str> = t.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["x-checksum"], "trailers upstream: {t:?}");
    assert_eq!(t["x-checksum"], "abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_request_trailers_cannot_carry_what_the_edge_owns() {
    let (up, got) = h2_upstream().await;
    let (addr, _p) = start(up);

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    // Connection-specific fields are malformed in HTTP/2 trailers too; h2
    // refuses to send them, so this client sends the rest.
    for (n, v) in FORGED
        .iter()
        .filter(|(n, _)| !["connection", "keep-alive", "te"].contains(n))
    {
        trailers.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"hello"))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let req = http::Request::post(format!("http://{addr}/t"))
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&text[..], b"got 5");
    assert_only_checksum(&got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_trailers_cannot_carry_what_the_edge_owns() {
    let (up, got) = h2_upstream().await;
    let (addr, _p) = start(up);

    let mut wire = String::from(
        "POST /t HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n",
    );
    for (n, v) in FORGED {
        wire.push_str(&format!("{n}: {v}\r\n"));
    }
    wire.push_str("x-checksum: abc\r\n\r\n");
    let (status, _head, body) = exchange(addr, wire.as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(body, "got 5");
    assert_only_checksum(&got);
}
