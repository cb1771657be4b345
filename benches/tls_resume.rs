//! CPU of a TLS 1.3 handshake, full against resumed by a session ticket,
//! with the server config portico builds for a listener (ring, tickets from
//! `tls.session_tickets`, an ECDSA P-256 certificate as rcgen makes). Both
//! sides run in memory on one thread, so the numbers are client plus
//! server CPU, with no network.
//!
//! Run: `cargo bench --bench tls_resume`.

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der: CertificateDer<'static> = cert.der().clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    server.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
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
