//! TLS configs built from PEM files: listeners' server configs, the one
//! client config builder, and the one client connector (TCP, then TLS when
//! configured, under one timeout) that upstreams and JWKS fetches share.
//!
//! Guarantees: TLS 1.3 only unless a listener asks for 1.2 (its QUIC side
//! is always 1.3); certificates are chosen by SNI ([`SniResolver`]); TLS
//! 1.3 session tickets come from a ticketer a listener keeps across
//! reloads; ALPN offers exactly the listener's protocols (h2 before
//! http/1.1 over TCP, h3 over QUIC); a key that does not
//! match its certificate, an unreadable or empty file, or a bad client CA is
//! a [`ConfigError`] at the position of the offending setting. The crypto
//! provider is ring, which builds with the toolchain and a C compiler alone,
//! or aws-lc-rs with the `aws-lc-rs` feature.

use crate::config::{ConfigError, ListenerTls, LoadedConfig, Protocol, TlsVersion};
use crate::sys::Tcp;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::client::TlsStream;
use toml::Spanned;

// The rustls crypto provider module every TLS config of portico uses.
#[cfg(feature = "aws-lc-rs")]
use rustls::crypto::aws_lc_rs as crypto;
#[cfg(not(feature = "aws-lc-rs"))]
use rustls::crypto::ring as crypto;

/// The crypto provider every TLS config of portico uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(crypto::default_provider())
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

/// Builds the rustls config of one TLS listener's TCP side: certificates
/// by SNI from `certs`, TLS 1.3 session tickets from `ticketer` (`None`:
/// no tickets, so no resumption).
pub fn server_config(
    lc: &LoadedConfig,
    t: &ListenerTls,
    protocols: &[Protocol],
    certs: &Arc<SniResolver>,
    ticketer: Option<Arc<dyn ProducesTickets>>,
) -> Result<Arc<ServerConfig>, ConfigError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match t.min_version {
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut cfg = base_config(lc, t, versions, certs)?;
    cfg.alpn_protocols = alpn(protocols);
    match ticketer {
        Some(t) => cfg.ticketer = t,
        None => {
            // Neither tickets nor the default session cache: no resumption.
            cfg.send_tls13_tickets = 0;
            cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
    }
    Ok(Arc::new(cfg))
}

/// The ticketer of a listener with `tls.session_tickets`: `previous` (the
/// one the listener had before a reload) when given, so tickets issued
/// before the reload still resume; else a new rotating one (the crypto
/// provider's, keys rotated every 6 hours, each valid for 12).
pub fn ticketer(
    lc: &LoadedConfig,
    t: &ListenerTls,
    previous: Option<&Arc<dyn ProducesTickets>>,
) -> Result<Option<Arc<dyn ProducesTickets>>, ConfigError> {
    if !t.session_tickets {
        return Ok(None);
    }
    if let Some(p) = previous {
        return Ok(Some(p.clone()));
    }
    crypto::Ticketer::new()
        .map(Some)
        .map_err(|e| lc.error_at(&t.cert, format!("cannot make TLS session tickets: {e}")))
}

/// Builds the rustls config of one listener's QUIC side (HTTP/3), from the
/// same certificates and client CA as its TCP side.
///
/// Guarantees: TLS 1.3 only (QUIC has no other version), ALPN exactly `h3`.
/// 0-RTT is off unless `tls.early_data`: then `max_early_data_size` is
/// `u32::MAX`, the only non-zero value QUIC allows (RFC 9001 4.6.1). Session
/// resumption is stateful (rustls's in-memory cache, no ticketer, whatever
/// `tls.session_tickets` says), which is
/// what rustls requires for early data: a ticket is taken from the cache once,
/// so one instance never accepts the same 0-RTT ticket twice. Replays against
/// other instances are not possible either, since a ticket only resumes on
/// the instance that issued it. Which early requests may run is the
/// pipeline's decision (425 for all but GET/HEAD, see `crate::proxy`).
pub fn quic_server_config(
    lc: &LoadedConfig,
    t: &ListenerTls,
    certs: &Arc<SniResolver>,
) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, ConfigError> {
    let mut cfg = base_config(lc, t, &[&rustls::version::TLS13], certs)?;
    cfg.alpn_protocols = vec![b"h3".to_vec()];
    cfg.max_early_data_size = if t.early_data { u32::MAX } else { 0 };
    quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map(Arc::new)
        .map_err(|e| lc.error_at(&t.cert, format!("QUIC TLS setup failed: {e}")))
}

/// Certificates and client authentication of a listener, with the given
/// protocol versions and no ALPN yet.
fn base_config(
    lc: &LoadedConfig,
    t: &ListenerTls,
    versions: &[&'static rustls::SupportedProtocolVersion],
    certs: &Arc<SniResolver>,
) -> Result<ServerConfig, ConfigError> {
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
    Ok(builder.with_cert_resolver(certs.clone()))
}

/// The certificates of a listener, chosen by the name the client asks for
/// (SNI): a certificate whose DNS names (subjectAltName) include it
/// exactly, else one with a wildcard (`*.example.com` covers one label:
/// `a.example.com`, not `example.com` nor `a.b.example.com`), else the
/// default (`tls.cert`), which also answers clients that send no name.
/// Among `tls.certs`, the first that names a host wins; the default's own
/// names come last.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// Reads and checks every pair of `t` (each key must match its cert).
    pub fn build(lc: &LoadedConfig, t: &ListenerTls) -> Result<Arc<SniResolver>, ConfigError> {
        let default = certified_key(lc, &t.cert, &t.key)?;
        let mut r = SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: default.clone(),
        };
        for pair in &t.certs {
            let ck = certified_key(lc, &pair.cert, &pair.key)?;
            let names = cert_dns_names(&ck.cert[0]);
            if names.is_empty() {
                return Err(lc.error_at(
                    &pair.cert,
                    "certificate has no DNS name in its subjectAltName, so no SNI can pick it",
                ));
            }
            r.add(names, &ck);
        }
        r.add(cert_dns_names(&default.cert[0]), &default);
        Ok(Arc::new(r))
    }

    fn add(&mut self, names: Vec<String>, ck: &Arc<CertifiedKey>) {
        for n in names {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_string()),
                None => self.exact.entry(n),
            }
            .or_insert_with(|| ck.clone());
        }
    }

    /// The certificate for a client asking for `name` (lower case, as
    /// rustls hands it over).
    pub fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        self.exact
            .get(name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// One certificate chain and its key, checked to match.
fn certified_key(
    lc: &LoadedConfig,
    cert: &Spanned<String>,
    key: &Spanned<String>,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let certs = load_certs(lc, cert)?;
    let k = load_key(lc, key)?;
    CertifiedKey::from_der(certs, k, &provider())
        .map(Arc::new)
        .map_err(|e| {
            lc.error_at(
                key,
                format!("key does not fit the certificate, or is unusable: {e}"),
            )
        })
}

/// The DNS names of a DER certificate's subjectAltName extension (empty
/// when it has none, or the DER cannot be read).
pub fn cert_dns_names(cert: &[u8]) -> Vec<String> {
    san_dns_names(cert).unwrap_or_default()
}

/// One DER element: its tag, its contents, and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Walks Certificate → tbsCertificate → [3] extensions → subjectAltName
/// (2.5.29.17) → dNSName ([2]) entries.
fn san_dns_names(cert: &[u8]) -> Option<Vec<String>> {
    const SEQUENCE: u8 = 0x30;
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
    let (_, certificate, _) = der_element(cert).filter(|(t, _, _)| *t == SEQUENCE)?;
    let (_, mut tbs, _) = der_element(certificate).filter(|(t, _, _)| *t == SEQUENCE)?;
    let mut extensions = None;
    while let Some((tag, content, rest)) = der_element(tbs) {
        if tag == 0xa3 {
            extensions = Some(der_element(content)?.1);
        }
        tbs = rest;
    }
    let mut exts = extensions?;
    while let Some((_, ext, rest)) = der_element(exts) {
        exts = rest;
        let (_, oid, mut fields) = der_element(ext)?;
        if oid != SAN_OID {
            continue;
        }
        // critical BOOLEAN DEFAULT FALSE, then the OCTET STRING.
        while let Some((tag, value, rest)) = der_element(fields) {
            if tag == 0x04 {
                let (_, mut general_names, _) = der_element(value)?;
                let mut names = Vec::new();
                while let Some((tag, name, rest)) = der_element(general_names) {
                    if tag == 0x82 {
                        names.push(String::from_utf8_lossy(name).into_owned());
                    }
                    general_names = rest;
                }
                return Some(names);
            }
            fields = rest;
        }
    }
    None
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
        let tcp = Tcp::from(TcpStream::connect(addr).await?);
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
    Plain(Tcp),
    Tls(Box<TlsStream<Tcp>>),
}

impl ClientIo {
    /// Wraps `tcp` in TLS when `tls` is set. `host` (brackets of an IPv6
    /// literal allowed) is the SNI name when no server_name is configured.
    async fn establish(tcp: Tcp, tls: Option<&ClientTls>, host: &str) -> io::Result<ClientIo> {
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

/// Makes [`provider`] the process-wide default rustls provider, for client
/// libraries that build their own rustls configs from it (the Redis
/// client's rediss:// connections). Without it rustls would panic there
/// whenever more than one provider is compiled in. Idempotent.
pub fn install_default_provider() {
    // Err means a provider is installed already: whichever, it is kept.
    let _ = crypto::default_provider().install_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn certified(names: &[&str]) -> Arc<CertifiedKey> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        Arc::new(CertifiedKey::from_der(vec![cert.der().clone()], der, &provider()).unwrap())
    }

    #[test]
    fn san_names_are_read() {
        let ck = certified(&["a.test", "*.b.test"]);
        assert_eq!(cert_dns_names(&ck.cert[0]), ["a.test", "*.b.test"]);
        assert!(cert_dns_names(b"\x30\x03\x02\x01").is_empty());
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let default = certified(&["default.test"]);
        let wild = certified(&["*.w.test"]);
        let exact = certified(&["x.w.test", "A.test"]);
        let mut r = SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: default.clone(),
        };
        for ck in [&wild, &exact, &default] {
            r.add(cert_dns_names(&ck.cert[0]), ck);
        }
        let pick = |n| Arc::as_ptr(r.pick(n));
        assert_eq!(pick(Some("x.w.test")), Arc::as_ptr(&exact));
        assert_eq!(pick(Some("y.w.test")), Arc::as_ptr(&wild));
        assert_eq!(pick(Some("y.w.test.")), Arc::as_ptr(&wild));
        assert_eq!(pick(Some("a.test")), Arc::as_ptr(&exact));
        assert_eq!(pick(Some("z.y.w.test")), Arc::as_ptr(&default));
        assert_eq!(pick(Some("w.test")), Arc::as_ptr(&default));
        assert_eq!(pick(Some("unknown.test")), Arc::as_ptr(&default));
        assert_eq!(pick(None), Arc::as_ptr(&default));
    }
}
