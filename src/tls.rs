//! TLS configs built from PEM files: listeners' server configs, the one
//! client config builder, and the one client connector (TCP, then TLS when
//! configured, under one timeout) that upstreams and JWKS fetches share.
//!
//! Guarantees: TLS 1.3 only unless a listener asks for 1.2 (its QUIC side
//! is always 1.3); ALPN offers exactly the listener's protocols (h2 before
//! http/1.1 over TCP, h3 over QUIC); a key that does not
//! match its certificate, an unreadable or empty file, or a bad client CA is
//! a [`ConfigError`] at the position of the offending setting. The crypto
//! provider is ring, which builds with the toolchain and a C compiler alone.

use crate::config::{ConfigError, ListenerTls, LoadedConfig, Protocol, TlsVersion};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::client::TlsStream;
use toml::Spanned;

/// The crypto provider every TLS config of portico uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain named at `at` in the config.
pub fn load_certs(
    lc: &LoadedConfig,
    at: &Spanned<String>,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let path = lc.resolve(at.get_ref());
    let certs: Result<Vec<_>, _> = match CertificateDer::pem_file_iter(&path) {
        Ok(it) => it.collect(),
        Err(e) => {
            return Err(lc.error_at(
                at,
                format!("cannot read certificate file {}: {e}", path.display()),
            ))
        }
    };
    let certs = certs
        .map_err(|e| lc.error_at(at, format!("bad certificate file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(lc.error_at(at, format!("no certificate found in {}", path.display())));
    }
    Ok(certs)
}

/// Reads a PEM private key named at `at` in the config.
pub fn load_key(
    lc: &LoadedConfig,
    at: &Spanned<String>,
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let path = lc.resolve(at.get_ref());
    PrivateKeyDer::from_pem_file(&path).map_err(|e| {
        lc.error_at(
            at,
            format!("cannot read private key {}: {e}", path.display()),
        )
    })
}

/// Builds the rustls config of one TLS listener's TCP side.
pub fn server_config(
    lc: &LoadedConfig,
    t: &ListenerTls,
    protocols: &[Protocol],
) -> Result<Arc<ServerConfig>, ConfigError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut cfg = base_config(lc, t, versions)?;
    cfg.alpn_protocols = alpn(protocols);
    Ok(Arc::new(cfg))
}

/// Builds the rustls config of one listener's QUIC side (HTTP/3), from the
/// same certificate, key and client CA as its TCP side.
///
/// Guarantees: TLS 1.3 only (QUIC has no other version), ALPN exactly `h3`.
/// 0-RTT is off unless `tls.early_data`: then `max_early_data_size` is
/// `u32::MAX`, the only non-zero value QUIC allows (RFC 9001 4.6.1). Session
/// resumption is stateful (rustls's in-memory cache, no ticketer), which is
/// what rustls requires for early data: a ticket is taken from the cache once,
/// so one instance never accepts the same 0-RTT ticket twice. Replays against
/// other instances are not possible either, since a ticket only resumes on
/// the instance that issued it. Which early requests may run is the
/// pipeline's decision (425 for all but GET/HEAD, see `crate::proxy`).
pub fn quic_server_config(
    lc: &LoadedConfig,
    t: &ListenerTls,
) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, ConfigError> {
    let mut cfg = base_config(lc, t, &[&rustls::version::TLS13])?;
    cfg.alpn_protocols = vec![b"h3".to_vec()];
    cfg.max_early_data_size = if t.early_data { u32::MAX } else { 0 };
    quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map(Arc::new)
        .map_err(|e| lc.error_at(&t.cert, format!("QUIC TLS setup failed: {e}")))
}

/// Certificate, key and client authentication of a listener, with the
/// given protocol versions and no ALPN yet.
fn base_config(
    lc: &LoadedConfig,
    t: &ListenerTls,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<ServerConfig, ConfigError> {
    let certs = load_certs(lc, &t.cert)?;
    let key = load_key(lc, &t.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| lc.error_at(&t.cert, format!("TLS setup failed: {e}")))?;
    let builder = if t.client_ca.get_ref().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for c in load_certs(lc, &t.client_ca)? {
            roots.add(c).map_err(|e| {
                lc.error_at(&t.client_ca, format!("bad client CA certificate: {e}"))
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| lc.error_at(&t.client_ca, format!("bad client CA: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    builder.with_single_cert(certs, key).map_err(|e| {
        lc.error_at(
            &t.key,
            format!("key does not fit the certificate, or is unusable: {e}"),
        )
    })
}

fn alpn(protocols: &[Protocol]) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    if protocols.contains(&Protocol::Http2) {
        v.push(b"h2".to_vec());
    }
    if protocols.contains(&Protocol::Http1) {
        v.push(b"http/1.1".to_vec());
    }
    v
}

/// The system's trust roots (the platform store, or the files named by
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`), read through rustls-native-certs.
/// Read afresh on every call, so a reload sees an updated store.
/// Unreadable or unparsable entries are logged and left out; an empty
/// store is logged too (every handshake will then fail, as it should).
pub fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading the system trust roots");
    }
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "system trust roots that are not usable certificates were left out"
        );
    }
    if roots.is_empty() {
        tracing::warn!("no system trust roots found: TLS to servers verified by them will fail");
    }
    roots
}

/// A trust store of exactly `certs` (a configured CA bundle).
pub fn roots_of(certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// The one builder of portico's TLS client configs (upstreams and JWKS
/// fetches): ring, TLS 1.3 and 1.2, servers verified against `roots` by
/// webpki, an optional client certificate (mTLS), ALPN exactly `alpn`.
pub fn client_config(
    roots: RootCertStore,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, ClientConfigError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(ClientConfigError::Setup)?
        .with_root_certificates(roots);
    let mut cfg = match client_auth {
        None => builder.with_no_client_auth(),
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(ClientConfigError::ClientCert)?,
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Why [`client_config`] failed.
#[derive(Debug)]
pub enum ClientConfigError {
    /// The provider refused the protocol versions (a build problem).
    Setup(rustls::Error),
    /// The client key does not fit the client certificate, or is unusable.
    ClientCert(rustls::Error),
}

impl std::fmt::Display for ClientConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientConfigError::Setup(e) => write!(f, "TLS setup failed: {e}"),
            ClientConfigError::ClientCert(e) => write!(
                f,
                "client key does not fit the client certificate, or is unusable: {e}"
            ),
        }
    }
}

/// Builds the TLS client settings of one upstream: roots from `ca` (or the
/// system's trust roots), an optional client certificate (mTLS), ALPN by
/// protocol, and the SNI name.
pub fn upstream_settings(
    lc: &LoadedConfig,
    t: &crate::config::UpstreamTls,
    protocol: crate::config::UpstreamProtocol,
) -> Result<ClientTls, ConfigError> {
    use std::hash::{Hash, Hasher};
    let mut fingerprint = std::collections::hash_map::DefaultHasher::new();
    let roots = if t.ca.get_ref().is_empty() {
        system_roots()
    } else {
        let certs = load_certs(lc, &t.ca)?;
        for c in &certs {
            c.as_ref().hash(&mut fingerprint);
        }
        roots_of(certs).map_err(|e| lc.error_at(&t.ca, e))?
    };
    let client_auth = if t.client_cert.get_ref().is_empty() {
        None
    } else {
        let certs = load_certs(lc, &t.client_cert)?;
        let key = load_key(lc, &t.client_key)?;
        for c in &certs {
            c.as_ref().hash(&mut fingerprint);
        }
        key.secret_der().hash(&mut fingerprint);
        Some((certs, key))
    };
    let alpn: &[u8] = match protocol {
        crate::config::UpstreamProtocol::Http1 => b"http/1.1",
        crate::config::UpstreamProtocol::Http2 => b"h2",
    };
    let cfg = client_config(roots, client_auth, &[alpn]).map_err(|e| match e {
        ClientConfigError::Setup(_) => lc.error_at(&t.ca, e.to_string()),
        ClientConfigError::ClientCert(_) => lc.error_at(&t.client_key, e.to_string()),
    })?;
    let server_name = if t.server_name.get_ref().is_empty() {
        None
    } else {
        Some(
            rustls_pki_types::ServerName::try_from(t.server_name.get_ref().clone())
                .map_err(|_| lc.error_at(&t.server_name, "not a valid TLS server name"))?,
        )
    };
    Ok(ClientTls {
        config: Arc::new(cfg),
        server_name,
        fingerprint: fingerprint.finish(),
    })
}

/// TLS settings of one client side (an upstream, a JWKS URL): the client
/// config (roots, client certificate, ALPN) and the name to verify and send
/// as SNI (`None`: the host connected to).
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: Option<ServerName<'static>>,
    /// Hash of every file the config was built from, so a reload rebuilds
    /// the pool when a certificate changed under the same path.
    pub fingerprint: u64,
}

/// Why [`connect`] failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Resolving, the TCP connect, or the TLS handshake failed.
    Io(io::Error),
    /// It all took longer than the timeout.
    Timeout,
}

/// Opens a client connection: TCP to `addr` (each address it resolves to,
/// in turn), with Nagle off, then TLS when `tls` is set, verifying and
/// sending as SNI `tls.server_name` or else `host`. All of it within
/// `timeout`.
pub async fn connect(
    addr: impl ToSocketAddrs,
    tls: Option<&ClientTls>,
    host: &str,
    timeout: Duration,
) -> Result<ClientIo, ConnectError> {
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        ClientIo::establish(tcp, tls, host).await
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r.map_err(ConnectError::Io),
        Err(_) => Err(ConnectError::Timeout),
    }
}

/// A client connection, plain or TLS.
pub enum ClientIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientIo {
    /// Wraps `tcp` in TLS when `tls` is set. `host` (brackets of an IPv6
    /// literal allowed) is the SNI name when no server_name is configured.
    async fn establish(
        tcp: TcpStream,
        tls: Option<&ClientTls>,
        host: &str,
    ) -> io::Result<ClientIo> {
        let Some(tls) = tls else {
            return Ok(ClientIo::Plain(tcp));
        };
        let name = match &tls.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            )
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("\"{host}\" is not a TLS server name"),
                )
            })?,
        };
        let s = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(name, tcp)
            .await?;
        Ok(ClientIo::Tls(Box::new(s)))
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(s) => s.is_write_vectored(),
            ClientIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Makes ring the process-wide default rustls provider, for client
/// libraries that build their own rustls configs from it (the Redis
/// client's rediss:// connections). Without it rustls would panic there
/// whenever more than one provider is compiled in. Idempotent.
pub fn install_default_provider() {
    // Err means a provider is installed already: whichever, it is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A PEM CA bundle named at `at` for a client that takes PEM bytes (the
/// Redis client): checked as [`load_certs`] checks it (readable, at least
/// one certificate, each one usable as a trust anchor), returned as read.
pub fn ca_pem(lc: &LoadedConfig, at: &Spanned<String>) -> Result<Vec<u8>, ConfigError> {
    let certs = load_certs(lc, at)?;
    roots_of(certs).map_err(|e| lc.error_at(at, e))?;
    let path = lc.resolve(at.get_ref());
    std::fs::read(&path)
        .map_err(|e| lc.error_at(at, format!("cannot read {}: {e}", path.display())))
}
