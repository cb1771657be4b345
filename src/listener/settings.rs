//! A listener's runtime settings, compiled from its `[[listener]]` table.
//!
//! Building them does every check and every file read the listener needs
//! (bind address, TLS certificates and keys, the QUIC server config, the
//! Alt-Svc value), so settings that exist are settings that can serve. The
//! supervisor pushes them to the listener's accept loops (TCP and QUIC) on
//! one watch channel; each connection keeps the settings it was accepted
//! with.

use crate::config::{ConfigError, ListenerConfig, LoadedConfig, Protocol};
use crate::observe::metrics::{ListenerMetrics, Metrics};
use http::{HeaderName, HeaderValue};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Flow-control windows of a QUIC connection, the same as HTTP/2's on the
/// TCP side: what a client may send on one request stream, and on all of
/// them together, before portico reads it; `CONNECTION_WINDOW` also bounds
/// the response bytes buffered for a client that does not read.
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONNECTION_WINDOW: u32 = 4 << 20;

/// Runtime settings of one listener.
pub struct ListenerSettings {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub http1: bool,
    pub http2: bool,
    /// HTTP/3 over QUIC on UDP at `bind`; implies `quic` is `Some`.
    pub http3: bool,
    /// The TCP side's TLS config (ALPN h2/http/1.1).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The QUIC side's config: TLS 1.3 with ALPN h3 (0-RTT when
    /// `early_data`) and the transport limits; `Some` exactly when `http3`.
    pub quic: Option<quinn::ServerConfig>,
    /// The TLS 1.3 ticketer of the TCP side (tls.session_tickets), handed
    /// on to the next settings of the same listener so that a reload keeps
    /// resumption working.
    pub ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    /// tls.early_data: HTTP/3 0-RTT accepted (non-GET/HEAD get 425).
    pub early_data: bool,
    /// `Alt-Svc: h3=":PORT"; ma=86400` for the TCP side's responses when
    /// `http3` is on (PORT: alt_svc_port, else the bound port).
    pub alt_svc: Option<HeaderValue>,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub backlog: u32,
    pub h2_max_concurrent_streams: u32,
    /// server.request_id_header, which the byte layer reads from a head
    /// hyper refuses (so that its answer carries the id).
    pub request_id_header: HeaderName,
    /// portico_connections_active of this listener.
    pub metrics: Arc<ListenerMetrics>,
    /// TCP connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Peers whose X-Forwarded-* headers are believed (empty: none, and
    /// X-Forwarded-For is appended to as before).
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
    /// 0: no limit.
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
}

impl ListenerSettings {
    /// Compiles listener `l` of `lc`; its connection gauge is the handle of
    /// its name in `metrics`; `previous`: the settings the listener of the
    /// same name has now (a reload), whose ticketer it keeps.
    pub fn build(
        lc: &LoadedConfig,
        l: &ListenerConfig,
        metrics: &Metrics,
        previous: Option<&ListenerSettings>,
    ) -> Result<ListenerSettings, ConfigError> {
        let protocols = l.protocols.get_ref();
        let bind: SocketAddr = l
            .bind
            .get_ref()
            .parse()
            .map_err(|_| lc.error_at(&l.bind, "bad bind address"))?;
        let (mut tls, mut quic, mut ticketer) = (None, None, None);
        if let Some(t) = &l.tls {
            let certs = crate::tls::SniResolver::build(lc, t)?;
            ticketer = crate::tls::ticketer(lc, t, previous.and_then(|p| p.ticketer.as_ref()))?;
            tls = Some(crate::tls::server_config(
                lc,
                t,
                protocols,
                &certs,
                ticketer.clone(),
            )?);
            if protocols.contains(&Protocol::Http3) {
                quic = Some(quic_server_config(
                    crate::tls::quic_server_config(lc, t, &certs)?,
                    l.idle_timeout.0,
                    l.h2_max_concurrent_streams,
                ));
            }
        }
        let alt_svc = match &quic {
            Some(_) => Some(alt_svc(lc, l, bind)?),
            None => None,
        };
        Ok(ListenerSettings {
            name: Arc::from(l.name.get_ref().as_str()),
            bind,
            http1: protocols.contains(&Protocol::Http1),
            http2: protocols.contains(&Protocol::Http2),
            http3: quic.is_some(),
            tls,
            quic,
            ticketer,
            early_data: l.tls.as_ref().is_some_and(|t| t.early_data),
            alt_svc,
            max_header_bytes: l.max_header_bytes,
            header_read_timeout: l.header_read_timeout.0,
            idle_timeout: l.idle_timeout.0,
            max_connections: l.max_connections,
            backlog: l.backlog,
            h2_max_concurrent_streams: l.h2_max_concurrent_streams,
            request_id_header: crate::proxy::runtime::request_id_header(lc)?,
            metrics: metrics.listener(l.name.get_ref()),
            proxy_protocol: l.proxy_protocol,
            trusted_proxies: trusted_proxies(lc, l)?,
            max_body_bytes: l.max_body_bytes,
            body_timeout: l.body_timeout.0,
        })
    }
}

/// The parsed trusted_proxies of `l`.
fn trusted_proxies(
    lc: &LoadedConfig,
    l: &ListenerConfig,
) -> Result<Arc<[ipnet::IpNet]>, ConfigError> {
    l.trusted_proxies
        .iter()
        .map(|c| {
            crate::config::parse_cidr(c.get_ref())
                .ok_or_else(|| lc.error_at(c, "not an address or CIDR"))
        })
        .collect()
}

/// The Alt-Svc value of a listener with http3.
fn alt_svc(
    lc: &LoadedConfig,
    l: &ListenerConfig,
    bind: SocketAddr,
) -> Result<HeaderValue, ConfigError> {
    // Behind NAT or a port mapping the bound port is not the one clients
    // reach: alt_svc_port says which is.
    let port = match l.alt_svc_port {
        0 => bind.port(),
        p => p,
    };
    HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400"))
        .map_err(|_| lc.error_at(&l.name, "bad Alt-Svc value"))
}

/// The quinn server config of a listener's QUIC side: `tls` from
/// [`crate::tls::quic_server_config`] and the transport limits: the
/// windows above, `max_streams` requests at a time, keep-alives.
fn quic_server_config(
    tls: Arc<quinn::crypto::rustls::QuicServerConfig>,
    idle_timeout: Duration,
    max_streams: u32,
) -> quinn::ServerConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(max_streams));
    // Memory per connection is bounded as on HTTP/2: quinn's default
    // receive window has no connection-level limit (only 1.25 MB per
    // stream, times the stream limit).
    transport.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    transport.receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW));
    transport.send_window(u64::from(CONNECTION_WINDOW));
    // HTTP/3 needs 3 unidirectional streams per side (control, QPACK encoder
    // and decoder); a few more for extensions and grease, no push.
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(8));
    // idle_timeout means what it means on TCP: no request for that long.
    // QUIC's own idle timeout counts silence on the wire instead, which a
    // request waiting on a slow upstream also is; so portico keeps its
    // connections alive with PINGs (often enough for a client that
    // negotiated a shorter timeout too) and closes idle ones itself, in
    // `quic::serve_connection`. The transport timeout, reset by every packet
    // received, is left to detect peers that went away.
    // An idle_timeout beyond QUIC's range (2^62 ms) means "never", as does 0.
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    if !idle_timeout.is_zero() {
        transport.keep_alive_interval(Some(
            (idle_timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(10)),
        ));
    }
    let mut cfg = quinn::ServerConfig::with_crypto(tls);
    cfg.transport_config(Arc::new(transport));
    cfg.migration(true);
    cfg
}
