//! TLS listeners with several certificates chosen by SNI, and TLS 1.3
//! session resumption by tickets, across reloads, seen by a rustls client.

mod support;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::HandshakeKind;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA and the certificates it signed, as PEM files in `dir/certs`.
struct Certs {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    dir: std::path::PathBuf,
}

impl Certs {
    fn new(dir: &Path) -> Certs {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let dir = dir.join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        Certs { ca, ca_key, dir }
    }

    /// Writes `FILE.crt` / `FILE.key` for `names`; returns the cert's DER.
    fn issue(&self, file: &str, names: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        std::fs::write(self.dir.join(format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    fn client(&self, sni: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg.enable_sni = sni;
        Arc::new(cfg)
    }
}

fn config(listener_tls: &str, backend: &Backend) -> (SocketAddr, String) {
    let (addr, l) = listener_toml("https", listener_tls);
    (
        addr,
        format!(
            "{l}\n[[route]]\nname = \"all\"\nupstream = \"app\"\n{}",
            upstream_toml("app", &[backend], "")
        ),
    )
}

const THREE: &str = r#"protocols = ["http1"]
tls.cert = "certs/default.crt"
tls.key = "certs/default.key"
tls.certs = [{ cert = "certs/wild.crt", key = "certs/wild.key" }, { cert = "certs/a.crt", key = "certs/a.key" }]
"#;

/// One GET over TLS to `addr`, verifying the server as `name`: the
/// certificate the server showed, how the handshake went, and the status
/// line. Reading the answer also takes in the tickets the server sent.
async fn get(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    name: &str,
) -> (Vec<u8>, Option<HandshakeKind>, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let server = ServerName::try_from(name.to_string()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(server, tcp)
        .await
        .unwrap();
    let (_, conn) = s.get_ref();
    let cert: Vec<u8> = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c: &CertificateDer| c.to_vec())
        .unwrap();
    let kind = conn.handshake_kind();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    (cert, kind, text.lines().next().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_chosen_by_sni_and_swapped_by_reload() {
    let b = Backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let default = certs.issue("default", &["default.test", "*.y.wild.test"]);
    let wild = certs.issue("wild", &["*.wild.test"]);
    let a = certs.issue("a", &["a.test", "exact.wild.test"]);
    let (addr, cfg) = config(THREE, &b);
    let p = Portico::start_in(dir, &cfg);
    let sni = certs.client(true);

    let (c, _, status) = get(addr, &sni, "a.test").await;
    assert_eq!(c, a);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(get(addr, &sni, "x.wild.test").await.0, wild);
    // An exact name beats a wildcard, whatever the order of tls.certs.
    assert_eq!(get(addr, &sni, "exact.wild.test").await.0, a);
    assert_eq!(get(addr, &sni, "default.test").await.0, default);
    // A wildcard covers one label only.
    assert_eq!(get(addr, &sni, "x.y.wild.test").await.0, default);
    let no_sni = certs.client(false);
    assert_eq!(get(addr, &no_sni, "default.test").await.0, default);

    // A reload swaps the certificates.
    let a2 = certs.issue("a2", &["a.test"]);
    p.write_config(
        &cfg.replace("certs/a.crt", "certs/a2.crt")
            .replace("certs/a.key", "certs/a2.key"),
    );
    assert_eq!(p.reload().await.0, 200);
    // (A fresh client: a resumed session shows the certificate it began with.)
    assert_eq!(get(addr, &certs.client(true), "a.test").await.0, a2);
}

/// What a second connection of the same client is, after a first one.
async fn second_handshake(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> HandshakeKind {
    let (_, first, _) = get(addr, cfg, "a.test").await;
    assert_eq!(first, Some(HandshakeKind::Full));
    get(addr, cfg, "a.test").await.1.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tickets_resume_also_after_a_reload() {
    let b = Backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    certs.issue("default", &["default.test"]);
    certs.issue("wild", &["*.wild.test"]);
    certs.issue("a", &["a.test"]);
    let (addr, cfg) = config(THREE, &b);
    let p = Portico::start_in(dir, &cfg);

    let client = certs.client(true);
    assert_eq!(
        second_handshake(addr, &client).await,
        HandshakeKind::Resumed
    );

    // Tickets issued before a reload resume after it.
    p.write_config(&format!(
        "{cfg}\n[[route]]\nname = \"more\"\nmatch.path_prefix = \"/more\"\nupstream = \"app\"\n"
    ));
    assert_eq!(p.reload().await.0, 200);
    let (_, kind, status) = get(addr, &client, "a.test").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(kind, Some(HandshakeKind::Resumed));

    // session_tickets = false: no resumption at all.
    p.write_config(&cfg.replace("protocols", "tls.session_tickets = false\nprotocols"));
    assert_eq!(p.reload().await.0, 200);
    let fresh = certs.client(true);
    assert_eq!(second_handshake(addr, &fresh).await, HandshakeKind::Full);
}

/// The certificate an HTTP/3 (QUIC) handshake for `name` is shown.
async fn quic_cert(addr: SocketAddr, certs: &Certs, name: &str) -> Vec<u8> {
    let mut tls = Arc::unwrap_or_clone(certs.client(true));
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), addr, name)
        .unwrap()
        .await
        .unwrap();
    let chain = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<CertificateDer<'static>>>()
        .unwrap();
    conn.close(0u32.into(), b"");
    chain[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_chooses_certificates_by_sni_too() {
    let b = Backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(dir.path());
    let default = certs.issue("default", &["default.test"]);
    let wild = certs.issue("wild", &["*.wild.test"]);
    let a = certs.issue("a", &["a.test"]);
    let (addr, cfg) = config(&THREE.replace("\"http1\"", "\"http1\", \"http3\""), &b);
    let _p = Portico::start_in(dir, &cfg);
    assert_eq!(quic_cert(addr, &certs, "a.test").await, a);
    assert_eq!(quic_cert(addr, &certs, "b.wild.test").await, wild);
    assert_eq!(quic_cert(addr, &certs, "default.test").await, default);
}
