//! CPU of a TLS 1.3 handshake, full against resumed by a session ticket,
//! with the server config portico builds for a TLS listener: the config
//! text is parsed and checked as `portico check` does, and the listener's
//! rustls config comes from `portico::tls` (certificate by SNI, ALPN,
//! the ticketer of `tls.session_tickets`, the crate's crypto provider), with
//! an ECDSA P-256 certificate as rcgen makes. Both sides run in memory on
//! one thread, so the numbers are client plus server CPU, with no network.
//!
//! Run: `cargo bench --bench tls_resume`.

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;

/// A listener as a proxy.toml names it: TLS 1.3 (the default minimum),
/// session tickets on (the default).
const CONFIG: &str = r#"
[[listener]]
name = "bench"
bind = "127.0.0.1:8443"
protocols = ["http1", "http2"]
tls.cert = "bench.crt"
tls.key = "bench.key"
"#;

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bench.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("bench.key"), key.serialize_pem()).unwrap();
    let lc = portico::config::parse(&dir.path().join("proxy.toml"), CONFIG.to_string()).unwrap();
    let listener = &lc.config.listeners[0];
    let t = listener.tls.as_ref().unwrap();
    let certs = portico::tls::SniResolver::build(&lc, t).unwrap();
    let ticketer = portico::tls::ticketer(&lc, t, None).unwrap();
    assert!(ticketer.is_some(), "tls.session_tickets is on by default");
    let server =
        portico::tls::server_config(&lc, t, listener.protocols.get_ref(), &certs, ticketer)
            .unwrap();
    let der: CertificateDer<'static> = cert.der().clone();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = ClientConfig::builder_with_provider(portico::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, Arc::new(client))
}

/// One handshake in memory, then the tickets read by the client.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> HandshakeKind {
    let name = ServerName::try_from("bench.test").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut buf = Vec::new();
    // Until both are done and nothing is left to send (the tickets).
    for _ in 0..10 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets().unwrap();
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets().unwrap();
        if !c.is_handshaking() && !s.is_handshaking() && !s.wants_write() && !c.wants_write() {
            break;
        }
    }
    c.handshake_kind().unwrap()
}

fn bench(c: &mut Criterion) {
    let (server, client) = configs();
    let mut plain = (*client).clone();
    plain.resumption = rustls::client::Resumption::disabled();
    let no_resumption = Arc::new(plain);
    c.bench_function("tls13 full handshake", |b| {
        b.iter(|| {
            assert_eq!(handshake(&server, &no_resumption), HandshakeKind::Full);
        })
    });
    // Each resumption consumes a ticket and receives new ones.
    assert_eq!(handshake(&server, &client), HandshakeKind::Full);
    c.bench_function("tls13 resumed handshake (ticket)", |b| {
        b.iter(|| assert_eq!(handshake(&server, &client), HandshakeKind::Resumed))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
