//! portico's HTTP/1.1 upstream client (`upstream::h1`) reading whatever a
//! server sends: the fuzz input is the server's side of one connection
//! (interim answers, the response head, the body, anything after it). A
//! real loopback TCP connection carries it: the server reads the request
//! head, writes the input in up to three pieces (cut where the input says,
//! a short pause between them, so a head or a chunk line split across
//! reads is in reach), closes its side and drains. The client sends a GET
//! (a HEAD for one input in four) and reads the answer to its end.
//!
//! Properties, beyond "never panics" and "always ends":
//! - an answer the client takes never carries Content-Length beside
//!   Transfer-Encoding (the chunks frame it; RFC 9112 6.3), and is never
//!   a 101 (the request asked for no upgrade);
//! - a body that ends without error is exactly as long as the
//!   Content-Length it came with (when no Transfer-Encoding did), and is
//!   empty for a HEAD, a 204 and a 304;
//! - the connection goes back to the pool only after its body ended
//!   without error, and never when that body was framed by the close of
//!   the connection.
#![no_main]

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use portico::body::RequestBody;
use portico::tls::ClientIo;
use portico::upstream::h1_fuzzing::{H1Conn, Home};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Far beyond any exchange here: reaching it means the client hung.
const HANG: Duration = Duration::from_secs(5);

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    static LISTENER: std::net::TcpListener = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        l.set_nonblocking(true).expect("nonblocking");
        l
    };
}

/// Records whether the client gave its connection back.
#[derive(Default)]
struct Pool(AtomicBool);

impl Home for Pool {
    fn put_idle(&self, _conn: H1Conn) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the client made of the server's bytes.
struct Outcome {
    status: StatusCode,
    headers: http::HeaderMap,
    upgraded: bool,
    body: Result<Bytes, String>,
    released: bool,
}

fuzz_target!(|data: &[u8]| {
    let head = data.len() % 4 == 3;
    let listener = LISTENER.with(|l| l.try_clone().expect("listener"));
    let out = RT.with(|rt| {
        rt.block_on(async {
            let listener = TcpListener::from_std(listener).expect("listener");
            tokio::time::timeout(HANG, exchange(listener, data, head))
                .await
                .expect("the exchange hung")
        })
    });
    if let Some(out) = out {
        check(&out, head);
    }
});

/// Serves `data` to one client exchange; `None` when the client took no
/// answer (an error before or at the head: refused, closed, invalid).
async fn exchange(listener: TcpListener, data: &[u8], head: bool) -> Option<Outcome> {
    let addr = listener.local_addr().expect("addr");
    let server = async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        // The request head first, so that the answer comes after it.
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let cut = |b: Option<&u8>| usize::from(b.copied().unwrap_or(0));
        let a = cut(data.first()).min(data.len());
        let b = (a + cut(data.last())).min(data.len());
        for piece in [&data[..a], &data[a..b], &data[b..]] {
            if piece.is_empty() {
                continue;
            }
            if s.write_all(piece).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
        let _ = s.shutdown().await;
        // Drain until the client closes, so that nothing it sends resets
        // the connection under the answer.
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let client = async move {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let pool = Arc::new(Pool::default());
        let (head, body) = Request::builder()
            .method(if head { Method::HEAD } else { Method::GET })
            .uri("/fuzz")
            .header(HOST, "upstream.test")
            .body(RequestBody::empty())
            .expect("request")
            .into_parts();
        let answer = H1Conn::new(ClientIo::Plain(tcp.into()))
            .send(&head, body, pool.clone())
            .await
            .ok()?;
        let (parts, body) = answer.response.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string());
        Some(Outcome {
            status: parts.status,
            headers: parts.headers,
            upgraded: answer.upgraded.is_some(),
            body,
            released: pool.0.load(Ordering::SeqCst),
        })
    };
    let ((), out) = tokio::join!(server, client);
    out
}

fn check(out: &Outcome, head: bool) {
    let te = out.headers.contains_key(TRANSFER_ENCODING);
    let lengths: Vec<_> = out.headers.get_all(CONTENT_LENGTH).iter().collect();
    assert!(
        !(te && !lengths.is_empty()),
        "Content-Length beside Transfer-Encoding"
    );
    assert!(
        !out.upgraded && out.status != StatusCode::SWITCHING_PROTOCOLS,
        "a 101 taken"
    );
    let bodiless = head
        || out.status.is_informational()
        || out.status == StatusCode::NO_CONTENT
        || out.status == StatusCode::NOT_MODIFIED;
    if let Ok(body) = &out.body {
        if bodiless {
            assert!(
                body.is_empty(),
                "a body on a {} to a {}",
                out.status,
                if head { "HEAD" } else { "GET" }
            );
        } else if !te {
            if let Some(v) = lengths.first() {
                let n: u64 = v
                    .to_str()
                    .ok()
                    .and_then(|s| s.split(',').next())
                    .and_then(|s| s.trim().parse().ok())
                    .expect("a Content-Length the client took is a number");
                assert_eq!(body.len() as u64, n, "body length against Content-Length");
            }
        }
    }
    if out.released {
        assert!(out.body.is_ok(), "connection pooled after a failed body");
        assert!(
            bodiless || te || !lengths.is_empty(),
            "connection pooled after a body framed by its close"
        );
    }
}
