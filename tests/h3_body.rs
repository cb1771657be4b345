//! HTTP/3 request bodies that portico does not read to their end: a
//! request whose end of stream (the QUIC FIN) reaches portico after its
//! response was made must still succeed at the client, and a body that goes
//! on is stopped once the response is out (RFC 9114 4.1.2).

mod support;

use bytes::{Buf, Bytes};
use h3::error::StreamError;
use std::net::SocketAddr;
use std::sync::Arc;
use support::http3::request;
use support::*;

type Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// An h3 connection of our own, to drive a request stream by hand.
struct Raw {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
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
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .unwrap();
        let driver = tokio::spawn(async move {
            let _ = driver.wait_idle().await;
        });
        Raw {
            send,
            _driver: driver,
            _endpoint: endpoint,
        }
    }

    /// Sends the head of a request, leaving its body open.
    async fn open(&mut self, method: &str, path: &str, extra: &[(&str, &str)]) -> Stream {
        let mut req = request(method, path);
        for (k, v) in extra {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        self.send.send_request(req).await.unwrap()
    }
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

fn start(backend: &Backend) -> (Portico, SocketAddr, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, l) = listener_toml("web", "");
    let cfg = format!(
        "{l}protocols = [\"http1\", \"http3\"]\ntls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n[[route]]\nname = \"fixed\"\nmatch.path_prefix = \"/fixed\"\nrespond = {{ status = 200, body = \"fixed\" }}\n[[route]]\nname = \"all\"\nupstream = \"app\"\n{}",
        upstream_toml("app", &[backend], "")
    );
    (Portico::start_in(dir, &cfg), addr, pki)
}

/// The client's FIN comes only after it read the whole response, on the
/// first request of a connection (where h3 also sends a GREASE frame before
/// the FIN): the write must not meet a stopped stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_ended_after_its_response_succeeds() {
    let b = Backend::start("a").await;
    let (_p, addr, pki) = start(&b);

    // Forwarded: the upstream gets a GET without a body.
    let mut c = Raw::connect(&pki, addr).await;
    let mut s = c.open("GET", "/late", &[]).await;
    assert_eq!(response(&mut s).await, (200, "a GET /late".to_string()));
    s.finish().await.unwrap();
    let seen = b.last_seen();
    assert!(seen.headers.get("transfer-encoding").is_none());
    assert!(seen
        .headers
        .get("content-length")
        .is_none_or(|v| v.as_bytes() == b"0"));

    // Answered by the proxy itself, on a new connection.
    let mut c = Raw::connect(&pki, addr).await;
    let mut s = c.open("GET", "/fixed", &[]).await;
    assert_eq!(response(&mut s).await, (200, "fixed".to_string()));
    s.finish().await.unwrap();

    // With content-length: 0, on a new connection.
    let mut c = Raw::connect(&pki, addr).await;
    let mut s = c.open("GET", "/zero", &[("content-length", "0")]).await;
    assert_eq!(response(&mut s).await, (200, "a GET /zero".to_string()));
    s.finish().await.unwrap();

    // The connection goes on serving.
    let mut s = c.open("GET", "/again", &[]).await;
    s.finish().await.unwrap();
    assert_eq!(response(&mut s).await, (200, "a GET /again".to_string()));
}

/// A body portico does not need and the client keeps sending is read for a
/// while after the response, then stopped: the client is not left writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unneeded_body_that_goes_on_is_stopped() {
    let b = Backend::start("a").await;
    let (_p, addr, pki) = start(&b);
    let mut c = Raw::connect(&pki, addr).await;
    let mut s = c.open("POST", "/fixed", &[]).await;
    assert_eq!(response(&mut s).await, (200, "fixed".to_string()));
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    // Far more than portico reads and discards: the writes must end with
    // the stream stopped.
    let mut stopped = None;
    for _ in 0..4096 {
        if let Err(e) = s.send_data(chunk.clone()).await {
            stopped = Some(e);
            break;
        }
    }
    assert!(
        matches!(stopped, Some(StreamError::RemoteTerminate { .. })),
        "expected the stream stopped, got {stopped:?}"
    );
    assert_eq!(b.request_count(), 0);
}
