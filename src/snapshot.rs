//! Config → Snapshot: the one place that builds runtime state.
//!
//! A [`Snapshot`] is immutable. Building one does every check and every bit
//! of file I/O a run needs (TLS certs and keys, JWT keys, JWKS files and
//! secrets; never a jwks_url fetch), so a snapshot that exists is
//! one that can serve. Requests load the current snapshot once, at their
//! start, and keep that `Arc` to their end: a later swap never changes a
//! request in flight.
//!
//! Metrics: the snapshot carries the process's one [`Metrics`] registry,
//! taken from `previous` (a new one only for the first snapshot), and every
//! route, listener and upstream server holds its metric handle from it, so
//! counters of what a reload keeps go on counting.

use crate::auth::AdminToken;
use crate::config::{ConfigError, LoadedConfig, Protocol};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{ListenerMetrics, Metrics};
use crate::proxy::cors::CorsPolicy;
use crate::proxy::headers::ClaimHeaders;
use crate::proxy::routing::{Action, HostMatch, Route, RouteTable};
use crate::upstream::UpstreamPool;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    /// portico_connections_active of this listener.
    pub metrics: Arc<ListenerMetrics>,
}

/// Everything a request needs, compiled from one config.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<LoadedConfig>,
    pub listeners: Vec<Arc<ListenerSettings>>,
    pub routes: RouteTable,
    pub pools: HashMap<String, Arc<UpstreamPool>>,
    pub request_id_header: HeaderName,
    pub trust_request_id: bool,
    /// Where access log lines go; reused across reloads while
    /// server.access_log and access_log_format stay the same.
    pub access_log: Arc<AccessLog>,
    /// JWT policies and the revocation store.
    pub auth: crate::auth::AuthSet,
    /// Every header any policy's forward_claims sets: removed, in any
    /// spelling, from every request on every route.
    pub claim_headers: ClaimHeaders,
    /// The metrics registry of the process (the same for every snapshot).
    pub metrics: Arc<Metrics>,
    /// What POST admin requests must present, when admin.token_file is set.
    pub admin_token: Option<AdminToken>,
}

/// What a snapshot build may do besides computing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    /// For serving: opens the access log, starts pool reapers.
    Run,
    /// For `portico check`: reads every file, opens nothing for writing.
    Check,
}

/// The access log target with a file path resolved against the config's folder.
fn log_target(lc: &LoadedConfig) -> String {
    match lc.config.server.access_log.as_str() {
        t @ ("stdout" | "off") => t.to_string(),
        path => lc.resolve(path).to_string_lossy().into_owned(),
    }
}

impl Snapshot {
    /// Builds a snapshot, reusing pools of `previous` whose definition did
    /// not change (with their keepalive connections and health state), and
    /// its access log while the log settings are the same. Must run inside
    /// the runtime.
    pub fn build(
        lc: Arc<LoadedConfig>,
        generation: u64,
        previous: Option<&Snapshot>,
        mode: BuildMode,
    ) -> Result<Snapshot, ConfigError> {
        let c = &lc.config;
        let metrics = previous.map_or_else(Metrics::new, |p| p.metrics.clone());
        let admin_token = AdminToken::load(&lc)?;
        let mut listeners = Vec::new();
        for l in &c.listeners {
            let protocols = l.protocols.get_ref();
            let bind: SocketAddr = l
                .bind
                .get_ref()
                .parse()
                .map_err(|_| lc.error_at(&l.bind, "bad bind address"))?;
            let tls = match &l.tls {
                Some(t) => Some(crate::tls::server_config(&lc, t, protocols)?),
                None => None,
            };
            let http3 = protocols.contains(&Protocol::Http3);
            let quic = match &l.tls {
                Some(t) if http3 => Some(crate::listener::quic::server_config(
                    crate::tls::quic_server_config(&lc, t)?,
                    l.idle_timeout.0,
                    l.h2_max_concurrent_streams,
                )),
                _ => None,
            };
            let alt_svc = match &quic {
                Some(_) => {
                    // Behind NAT or a port mapping the bound port is not the
                    // one clients reach: alt_svc_port says which is.
                    let port = match l.alt_svc_port {
                        0 => bind.port(),
                        p => p,
                    };
                    Some(
                        HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400"))
                            .map_err(|_| lc.error_at(&l.name, "bad Alt-Svc value"))?,
                    )
                }
                None => None,
            };
            listeners.push(Arc::new(ListenerSettings {
                name: Arc::from(l.name.get_ref().as_str()),
                bind,
                http1: protocols.contains(&Protocol::Http1),
                http2: protocols.contains(&Protocol::Http2),
                http3: quic.is_some(),
                tls,
                quic,
                early_data: l.tls.as_ref().is_some_and(|t| t.early_data),
                alt_svc,
                max_header_bytes: l.max_header_bytes,
                header_read_timeout: l.header_read_timeout.0,
                idle_timeout: l.idle_timeout.0,
                max_connections: l.max_connections,
                backlog: l.backlog,
                h2_max_concurrent_streams: l.h2_max_concurrent_streams,
                metrics: metrics.listener(l.name.get_ref()),
            }));
        }

        let mut pools = HashMap::new();
        for (name, def) in &c.upstreams {
            let tls = match &def.tls {
                Some(t) => Some(crate::tls::upstream_settings(&lc, t, def.protocol)?),
                None => None,
            };
            let prev = previous.and_then(|p| p.pools.get(name));
            let pool = match prev {
                Some(p) if p.reusable_for(def, tls.as_ref()) => p.clone(),
                _ => UpstreamPool::new(name, def, tls, prev.map(|p| &**p), &metrics),
            };
            pools.insert(name.clone(), pool);
        }

        let auth = crate::auth::AuthSet::build(&lc, previous.map(|p| &p.auth))?;
        let claim_headers = ClaimHeaders::new(
            auth.policies()
                .flat_map(|(_, p)| p.forward_claim_headers())
                .map(HeaderName::as_str),
        );

        let mut cors = HashMap::new();
        for (name, p) in &c.cors {
            cors.insert(name.as_str(), Arc::new(CorsPolicy::build(&lc, name, p)?));
        }

        let mut routes = Vec::new();
        for r in &c.routes {
            let action = match (&r.upstream, &r.respond) {
                (Some(u), _) => Action::Forward(
                    pools
                        .get(u.get_ref())
                        .cloned()
                        .ok_or_else(|| lc.error_at(u, "unknown upstream"))?,
                ),
                (None, Some(resp)) => {
                    let resp = resp.get_ref();
                    Action::Respond {
                        status: StatusCode::from_u16(resp.status)
                            .map_err(|_| lc.error_at(&r.name, "bad respond.status"))?,
                        body: Bytes::from(resp.body.clone()),
                        content_type: HeaderValue::from_str(&resp.content_type)
                            .map_err(|_| lc.error_at(&r.name, "bad respond.content_type"))?,
                    }
                }
                (None, None) => {
                    return Err(lc.error_at(&r.name, "route needs `upstream` or `respond`"))
                }
            };
            routes.push(Route {
                name: Arc::from(r.name.get_ref().as_str()),
                listeners: r.listeners.iter().map(|l| l.get_ref().clone()).collect(),
                host: HostMatch::parse(r.matcher.host.get_ref()),
                path_prefix: r.matcher.path_prefix.get_ref().clone(),
                methods: r
                    .matcher
                    .methods
                    .iter()
                    .map(|m| {
                        Method::from_bytes(m.get_ref().as_bytes())
                            .map_err(|_| lc.error_at(m, "bad method"))
                    })
                    .collect::<Result<_, _>>()?,
                action,
                strip_prefix: r.strip_prefix,
                timeout: r.timeout.0,
                retries: r.retries,
                auth: match r.auth.get_ref().as_str() {
                    "" => None,
                    name => Some(
                        auth.policy(name)
                            .ok_or_else(|| lc.error_at(&r.auth, "unknown auth policy"))?,
                    ),
                },
                metrics: metrics.route(r.name.get_ref()),
                cors: match r.cors.get_ref().as_str() {
                    "" => None,
                    name => Some(
                        cors.get(name)
                            .cloned()
                            .ok_or_else(|| lc.error_at(&r.cors, "unknown cors policy"))?,
                    ),
                },
            });
        }

        let log_cfg = (&c.server.access_log, c.server.access_log_format);
        let access_log = match previous {
            Some(p)
                if (
                    &p.config.config.server.access_log,
                    p.config.config.server.access_log_format,
                ) == log_cfg =>
            {
                p.access_log.clone()
            }
            _ if mode == BuildMode::Check => Arc::new(AccessLog::off()),
            _ => Arc::new(
                AccessLog::open(&log_target(&lc), c.server.access_log_format).map_err(|e| {
                    lc.source.error_at(
                        0,
                        format!("cannot open access log {}: {e}", c.server.access_log),
                    )
                })?,
            ),
        };
        let request_id_header = HeaderName::from_bytes(
            c.server
                .request_id_header
                .get_ref()
                .to_ascii_lowercase()
                .as_bytes(),
        )
        .map_err(|_| lc.error_at(&c.server.request_id_header, "bad header name"))?;
        Ok(Snapshot {
            generation,
            listeners,
            routes: RouteTable::new(routes),
            pools,
            request_id_header,
            trust_request_id: c.server.trust_request_id,
            access_log,
            auth,
            claim_headers,
            metrics,
            admin_token,
            config: lc,
        })
    }

    /// Called once this snapshot is the one in force (swapped in, or the
    /// first): stops the health checks of the pools of `previous` that it
    /// does not keep, then starts its own. So only the generation in force
    /// ever checks, and a build that is never swapped in sends no probe.
    pub fn take_over(&self, previous: Option<&Snapshot>) {
        if let Some(prev) = previous {
            for (name, old) in &prev.pools {
                if !self.pools.get(name).is_some_and(|p| Arc::ptr_eq(p, old)) {
                    old.retire();
                }
            }
        }
        for pool in self.pools.values() {
            pool.activate();
        }
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSettings>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}
