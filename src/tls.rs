//! TLS server configs for listeners, built from PEM files.
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
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
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

/// Builds the TLS client settings of one upstream: roots from `ca` (or the
/// public web roots), an optional client certificate (mTLS), ALPN by
/// protocol, and the SNI name.
pub fn upstream_settings(
    lc: &LoadedConfig,
    t: &crate::config::UpstreamTls,
    protocol: crate::config::UpstreamProtocol,
) -> Result<crate::upstream::UpstreamTlsSettings, ConfigError> {
    use std::hash::{Hash, Hasher};
    let mut fingerprint = std::collections::hash_map::DefaultHasher::new();
    let mut roots = RootCertStore::empty();
    if t.ca.get_ref().is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        for c in load_certs(lc, &t.ca)? {
            c.as_ref().hash(&mut fingerprint);
            roots
                .add(c)
                .map_err(|e| lc.error_at(&t.ca, format!("bad CA certificate: {e}")))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| lc.error_at(&t.ca, format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let mut cfg = if t.client_cert.get_ref().is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = load_certs(lc, &t.client_cert)?;
        let key = load_key(lc, &t.client_key)?;
        for c in &certs {
            c.as_ref().hash(&mut fingerprint);
        }
        key.secret_der().hash(&mut fingerprint);
        builder.with_client_auth_cert(certs, key).map_err(|e| {
            lc.error_at(
                &t.client_key,
                format!("client key does not fit the client certificate, or is unusable: {e}"),
            )
        })?
    };
    cfg.alpn_protocols = match protocol {
        crate::config::UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        crate::config::UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
    };
    let server_name = if t.server_name.get_ref().is_empty() {
        None
    } else {
        Some(
            rustls_pki_types::ServerName::try_from(t.server_name.get_ref().clone())
                .map_err(|_| lc.error_at(&t.server_name, "not a valid TLS server name"))?,
        )
    };
    Ok(crate::upstream::UpstreamTlsSettings {
        config: Arc::new(cfg),
        server_name,
        fingerprint: fingerprint.finish(),
    })
}
