//! The request pipeline, one for every front door (HTTP/1.1, HTTP/2).
//!
//! Phases, in order (the order is the architecture):
//! 1. **admit**: load the config snapshot once; pick the request id; check
//!    the head (size, Host rules);
//! 2. **route**: find the route by listener, host, path and method;
//! 3. **cors**: on a route with a CORS policy, answer preflights at the
//!    edge and note what the response owes the request's origin
//!    ([`cors`]);
//! 4. **respond** (a `respond` route) or **forward**: rewrite the head
//!    (hop-by-hop, x-forwarded-*, Host, path), choose a server round-robin,
//!    send on a pooled connection, bounded by the route's timeout;
//! 5. **finish**: every response, the proxy's own included, carries the
//!    request id (and the CORS headers its route's policy owes it); when its
//!    body ends the upstream connection returns to its pool, the request is
//!    counted in the route's metrics and the access log line is written.
//!
//! Errors of any phase are a [`ProxyError`], answered by one function.
//!
//! Logs: the phases run inside a `request` tracing span that carries
//! `request_id`, so every log line about a request names it. The span is an
//! ERROR-level one so that it is enabled whenever any log line is; with
//! logging off it costs one filter check.

pub mod cors;
pub mod error;
pub mod headers;
pub mod routing;

use crate::body::{Completion, ProxyBody, RequestBody};
use crate::listener::ConnActivity;
use crate::observe::access_log::{AccessLog, LogEntry};
use crate::observe::metrics::{ConnGauge, ConnProtocol, Metrics, UpstreamOutcome};
use crate::observe::request_id;
use crate::snapshot::{ListenerSettings, Snapshot};
use crate::upstream::{PoolReturn, UpstreamError, UpstreamPool};
use arc_swap::ArcSwap;
use error::ProxyError;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, REFERER, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use routing::{Action, Route};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tracing::Instrument;

/// State shared by every connection of the process.
pub struct Shared {
    /// The config in force; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    pub access_log: AccessLog,
    /// The metrics registry: the one every snapshot carries.
    pub metrics: Arc<Metrics>,
}

/// What a request knows about the connection it came on.
pub struct ConnInfo {
    pub listener: Arc<ListenerSettings>,
    pub peer: SocketAddr,
    pub https: bool,
    pub shared: Arc<Shared>,
    pub activity: Arc<ConnActivity>,
    /// The connection's place in portico_connections_active.
    pub gauge: ConnGauge,
}

/// What the pipeline learned on the way, for the finish phase.
#[derive(Default)]
struct Trace {
    route: Option<Arc<str>>,
    /// Where the route is in `snapshot.routes`.
    route_index: Option<usize>,
    /// What the route's CORS policy owes the response.
    cors: Option<cors::Pending>,
    upstream: Option<Arc<str>>,
    pooled: Option<PoolReturn>,
    bytes_in: Option<Arc<AtomicU64>>,
}

/// Serves one request from any front door. Never fails: errors become the
/// proxy's own responses.
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let seq = conn.activity.request_started();
    conn.gauge.set_protocol(ConnProtocol::of(req.version()));
    let snap = conn.shared.snapshot.load_full();

    let request_id = match req.headers().get(&snap.request_id_header) {
        Some(v) if snap.trust_request_id && request_id::is_well_formed(v.as_bytes()) => v.clone(),
        _ => request_id::generate(),
    };
    let grpc = is_grpc(&req);
    let mut log = conn
        .shared
        .access_log
        .enabled()
        .then(|| log_entry(&req, &conn));

    let mut trace = Trace::default();
    let span = tracing::error_span!("request", request_id = %RequestIdField(&request_id));
    let mut resp = match serve(
        req,
        seq,
        &snap,
        &conn,
        &request_id,
        &mut trace,
        log.is_some(),
    )
    .instrument(span)
    .await
    {
        Ok(r) => r,
        Err(e) => e.response(grpc),
    };
    resp.headers_mut()
        .insert(snap.request_id_header.clone(), request_id.clone());
    if let Some(pending) = trace.cors.take() {
        if let Some(policy) = trace
            .route_index
            .and_then(|i| snap.routes.get(i))
            .and_then(|r| r.cors.as_deref())
        {
            pending.finish(policy, resp.headers_mut());
        }
    }

    if let Some(l) = log.as_mut() {
        l.status = resp.status().as_u16();
        l.route = trace.route.take();
        l.upstream = trace.upstream.take();
        l.request_id = request_id.to_str().unwrap_or("").to_string();
        l.duration = start.elapsed();
    }
    let status = resp.status().as_u16();
    resp.body_mut().on_complete(Box::new(Done {
        conn,
        snap,
        route_index: trace.route_index,
        status,
        pooled: trace.pooled,
        bytes_in: trace.bytes_in,
        log: log.map(Box::new),
        start,
    }));
    Ok(resp)
}

/// Shows a request id in logs (ids are ASCII by construction).
struct RequestIdField<'a>(&'a HeaderValue);

impl std::fmt::Display for RequestIdField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.to_str().unwrap_or("-"))
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn log_entry(req: &Request<Incoming>, conn: &ConnInfo) -> LogEntry {
    let agent = conn.shared.access_log.wants_agent();
    let header = |n| {
        agent
            .then(|| {
                req.headers()
                    .get(n)
                    .and_then(|v: &HeaderValue| v.to_str().ok())
                    .map(str::to_string)
            })
            .flatten()
    };
    LogEntry {
        time: SystemTime::now(),
        request_id: String::new(),
        listener: conn.listener.name.clone(),
        route: None,
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string(),
        version: req.version(),
        status: 0,
        upstream: None,
        duration: Default::default(),
        bytes_in: 0,
        bytes_out: 0,
        client: conn.peer,
        referer: header(REFERER),
        user_agent: header(USER_AGENT),
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    req: Request<Incoming>,
    seq: u64,
    snap: &Snapshot,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    trace: &mut Trace,
    count_bytes: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    // admit
    if headers::head_size(req.headers()) > conn.listener.max_header_bytes {
        return Err(ProxyError::HeaderTooLarge);
    }
    if req.version() <= Version::HTTP_11 {
        if let Some(why) = headers::host_header_error(req.headers(), req.version()) {
            return Err(ProxyError::BadRequest(why));
        }
        if req.headers().contains_key(http::header::TRANSFER_ENCODING)
            && conn.activity.head_has_length_and_chunked(seq)
        {
            return Err(ProxyError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
    }
    // The absolute-form target (HTTP/1.1) or :authority (HTTP/2) names the
    // host; otherwise the Host header does.
    let host_value = match req.uri().authority() {
        Some(a) => Some(
            HeaderValue::from_str(a.as_str())
                .map_err(|_| ProxyError::BadRequest("bad authority"))?,
        ),
        None => req.headers().get(HOST).cloned(),
    };
    let host = match &host_value {
        Some(v) => Some(
            v.to_str()
                .map(routing::host_without_port)
                .map_err(|_| ProxyError::BadRequest("bad Host header"))?,
        ),
        None => None,
    };

    // route (a CORS preflight by the method it announces, when that finds
    // a route with a policy: see cors)
    let listener = &conn.listener.name;
    let path = req.uri().path();
    let preflight = cors::preflight_method(&req);
    let (index, route) = preflight
        .as_ref()
        .and_then(|m| snap.routes.find_indexed(listener, host, path, m))
        .filter(|(_, r)| r.cors.is_some())
        .or_else(|| snap.routes.find_indexed(listener, host, path, req.method()))
        .ok_or(ProxyError::NotFound)?;
    trace.route = Some(route.name.clone());
    trace.route_index = Some(index);

    // cors
    if let Some(policy) = &route.cors {
        match &preflight {
            Some(method) => return cors::preflight(policy, &req, method),
            None => trace.cors = Some(cors::actual(policy, &req)),
        }
    }

    match &route.action {
        Action::Respond {
            status,
            body,
            content_type,
        } => {
            let mut r = Response::new(if req.method() == Method::HEAD {
                ProxyBody::empty()
            } else {
                ProxyBody::full(body.clone())
            });
            *r.status_mut() = *status;
            r.headers_mut().insert(CONTENT_TYPE, content_type.clone());
            if req.method() == Method::HEAD {
                r.headers_mut()
                    .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            Ok(r)
        }
        Action::Forward(pool) => {
            forward(
                req,
                snap,
                route,
                pool,
                conn,
                request_id,
                host_value,
                trace,
                count_bytes,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    req: Request<Incoming>,
    snap: &Snapshot,
    route: &Route,
    pool: &UpstreamPool,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    host_value: Option<HeaderValue>,
    trace: &mut Trace,
    count_bytes: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_request_only(&mut parts.headers);
    headers::set_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        conn.https,
        host_value.as_ref(),
    );
    parts
        .headers
        .insert(snap.request_id_header.clone(), request_id.clone());
    if let Some(h) = &host_value {
        if parts.headers.get(HOST) != Some(h) {
            parts.headers.insert(HOST, h.clone());
        }
    }
    parts.uri = upstream_uri(&parts.uri, route, pool, host_value.as_ref())?;
    parts.version = match pool.definition.protocol {
        crate::config::UpstreamProtocol::Http1 => Version::HTTP_11,
        crate::config::UpstreamProtocol::Http2 => Version::HTTP_2,
    };

    let body = if count_bytes && !http_body::Body::is_end_stream(&body) {
        let counter = Arc::new(AtomicU64::new(0));
        trace.bytes_in = Some(counter.clone());
        RequestBody::Counted(body, counter)
    } else {
        RequestBody::Incoming(body)
    };
    let mut req = Request::from_parts(parts, body);

    let deadline = tokio::time::Instant::now() + route.timeout;
    let mut tried: u32 = 0;
    loop {
        let server = pool.pick();
        trace.upstream = Some(server.label.clone());
        let sent = tokio::time::timeout_at(deadline, pool.send(server, req)).await;
        let failure = match sent {
            Err(_) => {
                server.metrics.record(UpstreamOutcome::Timeout);
                return Err(ProxyError::GatewayTimeout);
            }
            Ok(Ok(ex)) => {
                server
                    .metrics
                    .record(if ex.response.status().is_server_error() {
                        UpstreamOutcome::Http5xx
                    } else {
                        UpstreamOutcome::Ok
                    });
                trace.pooled = ex.pooled;
                let (mut rp, body) = ex.response.into_parts();
                headers::strip_hop_by_hop(&mut rp.headers);
                rp.version = Version::HTTP_11;
                return Ok(Response::from_parts(rp, ProxyBody::upstream(body)));
            }
            Ok(Err(f)) => {
                server.metrics.record(f.error.outcome());
                f
            }
        };
        tracing::warn!(upstream = %pool.name, server = %server.label, error = %failure.error, "upstream request failed");
        match (failure.error, failure.unsent) {
            (UpstreamError::ClientBody(_), _) => {
                return Err(ProxyError::BadRequest("malformed request body"))
            }
            // Nothing reached the server (connect failed): another server
            // may take it, whatever the method.
            (UpstreamError::Connect(_) | UpstreamError::ConnectTimeout, Some(r))
                if tried < route.retries && pool.servers.len() > 1 =>
            {
                tried += 1;
                req = r;
            }
            _ => return Err(ProxyError::BadGateway),
        }
    }
}

/// The request target to send upstream: origin-form for HTTP/1.1 (the
/// client's own URI when nothing changes), absolute for HTTP/2 (which needs
/// :scheme and :authority).
fn upstream_uri(
    uri: &Uri,
    route: &Route,
    pool: &UpstreamPool,
    host: Option<&HeaderValue>,
) -> Result<Uri, ProxyError> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let rewritten;
    let pq = if route.strip_prefix {
        let rest = &pq[route.path_prefix.len().min(pq.len())..];
        rewritten = if rest.starts_with('/') {
            rest.to_string()
        } else {
            let mut s = String::with_capacity(rest.len() + 1);
            s.push('/');
            s.push_str(rest);
            s
        };
        rewritten.as_str()
    } else {
        pq
    };
    let bad = |_| ProxyError::BadRequest("bad request target");
    match pool.definition.protocol {
        crate::config::UpstreamProtocol::Http1 => {
            if !route.strip_prefix && uri.scheme().is_none() && uri.authority().is_none() {
                return Ok(uri.clone());
            }
            Ok(Uri::from(PathAndQuery::try_from(pq).map_err(bad)?))
        }
        crate::config::UpstreamProtocol::Http2 => {
            let authority = match host.and_then(|h| h.to_str().ok()) {
                Some(h) => Authority::try_from(h).map_err(bad)?,
                None => Authority::from_static("localhost"),
            };
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(pq)
                .build()
                .map_err(|_| ProxyError::BadRequest("bad request target"))
        }
    }
}

/// The finish phase, run when the response body ends or is dropped.
struct Done {
    conn: Arc<ConnInfo>,
    /// The snapshot the request started with, for its route's metrics.
    snap: Arc<Snapshot>,
    route_index: Option<usize>,
    /// The status sent to the client.
    status: u16,
    pooled: Option<PoolReturn>,
    bytes_in: Option<Arc<AtomicU64>>,
    log: Option<Box<LogEntry>>,
    start: Instant,
}

impl Completion for Done {
    fn complete(self: Box<Self>, bytes_out: u64, ended: bool) {
        let Done {
            conn,
            snap,
            route_index,
            status,
            pooled,
            bytes_in,
            log,
            start,
        } = *self;
        if let Some(p) = pooled {
            if ended {
                p.release();
            }
        }
        conn.activity.request_finished();
        let elapsed = start.elapsed();
        match route_index.and_then(|i| snap.routes.get(i)) {
            Some(r) => r.metrics.record(status, elapsed),
            None => snap.metrics.no_route.record(status, elapsed),
        }
        if let Some(mut l) = log {
            l.bytes_out = bytes_out;
            l.bytes_in = bytes_in.map_or(0, |c| c.load(Ordering::Relaxed));
            l.duration = elapsed;
            conn.shared.access_log.write(*l);
        }
    }
}
