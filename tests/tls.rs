//! TLS listeners over real handshakes: versions, ALPN, mTLS.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_config(listener_extra: &str, upstream: &Backend) -> (SocketAddr, String) {
    let (addr, l) = listener_toml(
        "https",
        &format!(
            "tls.cert = \"certs/server.crt\"\ntls.key = \"certs/server.key\"\n{listener_extra}"
        ),
    );
    (
        addr,
        format!(
            "{l}\n[[route]]\nname = \"all\"\nupstream = \"app\"\n{}",
            upstream_toml("app", &[upstream], "")
        ),
    )
}

async fn handshake(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_is_negotiated_and_alpn_picks_h2() {
    let b = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, cfg) = tls_config("", &b);
    let _p = Portico::start_in(dir, &cfg);

    let all = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let s = handshake(addr, pki.client_config(&[b"h2", b"http/1.1"], all))
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(s);
    let s = handshake(addr, pki.client_config(&[b"http/1.1"], all))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(s);

    // Real clients over both protocols.
    let r = pki
        .reqwest_client(true)
        .get(format!("https://localhost:{}/x", addr.port()))
        .send()
        .await;
    // reqwest resolves "localhost" itself; make sure it went to 127.0.0.1.
    let r = match r {
        Ok(r) => r,
        Err(_) => pki
            .reqwest_client(true)
            .get(format!("https://127.0.0.1:{}/x", addr.port()))
            .send()
            .await
            .unwrap(),
    };
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2);
    let r = pki
        .reqwest_client(false)
        .get(format!("https://127.0.0.1:{}/y", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_11);
    let seen = b.last_seen();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_is_refused_by_default_and_allowed_on_request() {
    let b = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, cfg) = tls_config("", &b);
    let _p = Portico::start_in(dir, &cfg);
    let only12 = &[&rustls::version::TLS12];
    assert!(
        handshake(addr, pki.client_config(&[b"http/1.1"], only12))
            .await
            .is_err(),
        "a TLS 1.2-only client must be refused"
    );

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, cfg) = tls_config("tls.min_version = \"1.2\"\n", &b);
    let _p2 = Portico::start_in(dir, &cfg);
    let s = handshake(addr, pki.client_config(&[b"http/1.1"], only12))
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_only_listener_offers_no_h2() {
    let b = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, cfg) = tls_config("protocols = [\"http1\"]\n", &b);
    let _p = Portico::start_in(dir, &cfg);
    let all = &[&rustls::version::TLS13];
    let s = handshake(addr, pki.client_config(&[b"h2", b"http/1.1"], all))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_listener_requires_a_client_certificate() {
    let b = Backend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let (addr, cfg) = tls_config("tls.client_ca = \"certs/ca.crt\"\n", &b);
    let _p = Portico::start_in(dir, &cfg);

    // Without a certificate: the handshake (or, in TLS 1.3, the first read) fails.
    let no_cert = pki.client_config(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let refused = match handshake(addr, no_cert).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
            let mut buf = [0u8; 64];
            !matches!(s.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate got an answer");
    assert_eq!(b.request_count(), 0);

    // With a certificate from the CA: served.
    let identity = reqwest::Identity::from_pem(
        format!("{}{}", pki.read("client.crt"), pki.read("client.key")).as_bytes(),
    )
    .unwrap();
    let c = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .identity(identity)
        .build()
        .unwrap();
    let r = c
        .get(format!("https://127.0.0.1:{}/m", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(b.request_count(), 1);
}
