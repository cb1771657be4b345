//! [`Runtime`]: everything the pipeline reads per request, compiled from one
//! config.
//!
//! A runtime is immutable. Requests load the one in force once, at their
//! start, and keep that `Arc` to their end: a later swap never changes a
//! request in flight. It is built from the config and the parts other
//! modules built for the same generation (upstream pools, JWT policies, the
//! metrics registry), so a route forwards to exactly the pool and checks
//! exactly the policy of its own generation.

use crate::auth::AuthSet;
use crate::config::{AccessLogFormat, ConfigError, LoadedConfig, RouteConfig};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::upstream::UpstreamPool;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;

use super::cors::CorsPolicy;
use super::header_rules::{self, HeaderRules, Template};
use super::headers::{ClaimHeaders, TrailerRules};
use super::routing::{Action, Canned, HostMatch, Route, RouteTable};
use crate::config::headers::Side;

/// What a build may do besides computing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildMode {
    /// For serving: opens the access log.
    Run,
    /// For `portico check`: reads every file, opens nothing for writing.
    Check,
}

/// What the pipeline reads per request.
pub struct Runtime {
    /// The generation of the config this runtime was built from.
    pub generation: u64,
    pub routes: RouteTable,
    pub request_id_header: HeaderName,
    pub trust_request_id: bool,
    /// Where access log lines go; reused across reloads while
    /// server.access_log and access_log_format stay the same.
    pub access_log: Arc<AccessLog>,
    /// The access log settings `access_log` was opened with.
    log_settings: (String, AccessLogFormat),
    /// Every header any policy's forward_claims sets: removed, in any
    /// spelling, from every request on every route.
    pub claim_headers: ClaimHeaders,
    /// What request trailers may not carry (claim headers among them).
    pub trailer_rules: Arc<TrailerRules>,
    /// The metrics registry of the process (for requests that match no
    /// route; routes hold their own handles).
    pub metrics: Arc<Metrics>,
}

/// What other modules built for the generation a runtime is built for.
pub struct Parts<'a> {
    pub generation: u64,
    pub pools: &'a HashMap<String, Arc<UpstreamPool>>,
    pub auth: &'a AuthSet,
    pub metrics: &'a Arc<Metrics>,
}

impl Runtime {
    /// Compiles the routes (with their CORS policies) of `lc` onto `parts`,
    /// and takes the access log of `previous` while the log settings are
    /// the same.
    pub fn build(
        lc: &LoadedConfig,
        parts: Parts<'_>,
        previous: Option<&Runtime>,
        mode: BuildMode,
    ) -> Result<Runtime, ConfigError> {
        let c = &lc.config;
        let cors = cors_policies(lc)?;
        let routes = c
            .routes
            .iter()
            .map(|r| compile_route(lc, r, &parts, &cors))
            .collect::<Result<Vec<_>, _>>()?;
        let claims = || {
            parts
                .auth
                .policies()
                .flat_map(|(_, p)| p.forward_claim_headers())
                .map(HeaderName::as_str)
        };
        let claim_headers = ClaimHeaders::new(claims());
        let request_id_header = request_id_header(lc)?;
        let trailer_rules = Arc::new(TrailerRules::new(claims(), &request_id_header));
        let log_settings = (c.server.access_log.clone(), c.server.access_log_format);
        let access_log = match previous {
            Some(p) if p.log_settings == log_settings => p.access_log.clone(),
            _ => open_access_log(lc, mode)?,
        };
        Ok(Runtime {
            generation: parts.generation,
            routes: RouteTable::new(routes),
            request_id_header,
            trust_request_id: c.server.trust_request_id,
            access_log,
            log_settings,
            claim_headers,
            trailer_rules,
            metrics: parts.metrics.clone(),
        })
    }
}

/// server.request_id_header, as the lower-case header name requests and
/// responses carry.
pub fn request_id_header(lc: &LoadedConfig) -> Result<HeaderName, ConfigError> {
    let h = &lc.config.server.request_id_header;
    HeaderName::from_bytes(h.get_ref().to_ascii_lowercase().as_bytes())
        .map_err(|_| lc.error_at(h, "bad header name"))
}

/// Every `[cors.NAME]` policy, by name.
fn cors_policies(lc: &LoadedConfig) -> Result<HashMap<&str, Arc<CorsPolicy>>, ConfigError> {
    let mut cors = HashMap::new();
    for (name, p) in &lc.config.cors {
        cors.insert(name.as_str(), Arc::new(CorsPolicy::build(lc, name, p)?));
    }
    Ok(cors)
}

/// One `[[route]]`, with its pool, JWT policy, CORS policy and metrics
/// handle resolved.
fn compile_route(
    lc: &LoadedConfig,
    r: &RouteConfig,
    parts: &Parts<'_>,
    cors: &HashMap<&str, Arc<CorsPolicy>>,
) -> Result<Route, ConfigError> {
    Ok(Route {
        name: Arc::from(r.name.get_ref().as_str()),
        listeners: r.listeners.iter().map(|l| l.get_ref().clone()).collect(),
        host: HostMatch::parse(r.matcher.host.get_ref()),
        path_prefix: r.matcher.path_prefix.get_ref().clone(),
        methods: r
            .matcher
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.get_ref().as_bytes()).map_err(|_| lc.error_at(m, "bad method"))
            })
            .collect::<Result<_, _>>()?,
        action: route_action(lc, r, parts.pools)?,
        strip_prefix: r.strip_prefix,
        timeout: r.timeout.0,
        retries: r.retries,
        auth: match r.auth.get_ref().as_str() {
            "" => None,
            name => Some(
                parts
                    .auth
                    .policy(name)
                    .ok_or_else(|| lc.error_at(&r.auth, "unknown auth policy"))?,
            ),
        },
        request_headers: HeaderRules::build(lc, Side::Request, &r.request_headers)?,
        response_headers: HeaderRules::build(lc, Side::Response, &r.response_headers)?,
        metrics: parts.metrics.route(r.name.get_ref()),
        cors: match r.cors.get_ref().as_str() {
            "" => None,
            name => Some(
                cors.get(name)
                    .cloned()
                    .ok_or_else(|| lc.error_at(&r.cors, "unknown cors policy"))?,
            ),
        },
    })
}

/// What a route does: forward to its upstream's pool, or answer itself.
fn route_action(
    lc: &LoadedConfig,
    r: &RouteConfig,
    pools: &HashMap<String, Arc<UpstreamPool>>,
) -> Result<Action, ConfigError> {
    match (&r.upstream, &r.respond) {
        (Some(u), _) => Ok(Action::Forward(
            pools
                .get(u.get_ref())
                .cloned()
                .ok_or_else(|| lc.error_at(u, "unknown upstream"))?,
        )),
        (None, Some(resp)) => {
            let c = resp.get_ref();
            let location = match c.location.as_str() {
                "" => None,
                t => Some(Template::parse(t).map_err(|e| lc.error_at(resp, e))?),
            };
            Ok(Action::Respond(Canned {
                status: StatusCode::from_u16(c.status)
                    .map_err(|_| lc.error_at(&r.name, "bad respond.status"))?,
                body: Bytes::from(c.body.clone()),
                content_type: HeaderValue::from_str(&c.content_type)
                    .map_err(|_| lc.error_at(&r.name, "bad respond.content_type"))?,
                headers: header_rules::pairs(lc, Side::Response, resp, &c.headers)?,
                location,
            }))
        }
        (None, None) => Err(lc.error_at(&r.name, "route needs `upstream` or `respond`")),
    }
}

/// A new access log as server.access_log says (a file path resolved
/// against the config's folder); one that writes nothing in
/// [`BuildMode::Check`].
fn open_access_log(lc: &LoadedConfig, mode: BuildMode) -> Result<Arc<AccessLog>, ConfigError> {
    let s = &lc.config.server;
    if mode == BuildMode::Check {
        return Ok(Arc::new(AccessLog::off()));
    }
    let target = match s.access_log.as_str() {
        t @ ("stdout" | "off") => t.to_string(),
        path => lc.resolve(path).to_string_lossy().into_owned(),
    };
    let log = AccessLog::open(&target, s.access_log_format).map_err(|e| {
        lc.source
            .error_at(0, format!("cannot open access log {}: {e}", s.access_log))
    })?;
    Ok(Arc::new(log))
}
