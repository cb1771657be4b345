//! Config → Snapshot: the one place that builds runtime state.
//!
//! A [`Snapshot`] is immutable. Building one does every check and every bit
//! of file I/O a run needs (TLS certs and keys), so a snapshot that exists is
//! one that can serve. Requests load the current snapshot once, at their
//! start, and keep that `Arc` to their end: a later swap never changes a
//! request in flight.
//!
//! Metrics: the snapshot carries the process's one [`Metrics`] registry,
//! taken from `previous` (a new one only for the first snapshot), and every
//! route, listener and upstream server holds its metric handle from it, so
//! counters of what a reload keeps go on counting.

use crate::admin::AdminToken;
use crate::config::{ConfigError, LoadedConfig, Protocol};
use crate::observe::metrics::{ListenerMetrics, Metrics};
use crate::proxy::cors::CorsPolicy;
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
    pub tls: Option<Arc<rustls::ServerConfig>>,
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
    /// The metrics registry of the process (the same for every snapshot).
    pub metrics: Arc<Metrics>,
    /// What POST admin requests must present, when admin.token_file is set.
    pub admin_token: Option<AdminToken>,
}

impl Snapshot {
    /// Builds a snapshot, reusing pools of `previous` whose definition did
    /// not change (with their keepalive connections), and the metrics
    /// registry of `previous` (pass the snapshot in force on every reload).
    /// Must run inside the runtime when `spawn_tasks` is true; `portico check` builds with
    /// `spawn_tasks = false` and no runtime tasks are started.
    pub fn build(
        lc: Arc<LoadedConfig>,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        let c = &lc.config;
        let metrics = previous.map_or_else(Metrics::new, |p| p.metrics.clone());
        let admin_token = AdminToken::load(&lc)?;
        let mut listeners = Vec::new();
        for l in &c.listeners {
            let protocols = l.protocols.get_ref();
            let tls = match &l.tls {
                Some(t) => Some(crate::tls::server_config(&lc, t, protocols)?),
                None => None,
            };
            listeners.push(Arc::new(ListenerSettings {
                name: Arc::from(l.name.get_ref().as_str()),
                bind: l
                    .bind
                    .get_ref()
                    .parse()
                    .map_err(|_| lc.error_at(&l.bind, "bad bind address"))?,
                http1: protocols.contains(&Protocol::Http1),
                http2: protocols.contains(&Protocol::Http2),
                tls,
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
            let reused = previous
                .and_then(|p| p.pools.get(name))
                .filter(|p| &p.definition == def)
                .cloned();
            pools.insert(
                name.clone(),
                reused.unwrap_or_else(|| UpstreamPool::new(name, def, &metrics)),
            );
        }

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
            metrics,
            admin_token,
            config: lc,
        })
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerSettings>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}
