//! The request pipeline, one for every front door (HTTP/1.1, HTTP/2,
//! HTTP/3).
//!
//! Phases, in order (the order is the architecture):
//! 1. **admit**: load the config snapshot once; pick the request id; check
//!    the head (size, Host rules, 425 for a non-GET/HEAD request in TLS
//!    early data);
//! 2. **route**: find the route by listener, host, path and method;
//! 3. **cors**: on a route with a CORS policy, answer preflights at the
//!    edge and note what the response owes the request's origin
//!    ([`cors`]);
//! 4. **authenticate** (a route with `auth`): the route's JWT policy checks
//!    the bearer token and rewrites the claim headers (`crate::auth`);
//! 5. **respond** (a `respond` route) or **forward** ([`forward`]): rewrite
//!    the head (hop-by-hop, x-forwarded-*, Host, path), choose a server
//!    round-robin, send on a pooled connection, retry where safe, bounded by
//!    the route's timeout;
//! 6. **finish**: every response, the proxy's own included, carries the
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
mod forward;
mod framing;
pub mod headers;
pub mod routing;

use crate::body::{Completion, ProxyBody, RequestBody};
use crate::listener::ConnActivity;
use crate::observe::access_log::{AccessLog, LogEntry};
use crate::observe::metrics::{ConnGauge, ConnProtocol, Metrics};
use crate::observe::request_id;
use crate::snapshot::{ListenerSettings, Snapshot};
use crate::upstream::PoolReturn;
use arc_swap::ArcSwap;
use error::ProxyError;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, REFERER, USER_AGENT};
use http::{HeaderValue, Method, Request, Response, Version};
use routing::Action;
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
    /// The metrics registry: the one every snapshot carries.
    pub metrics: Arc<Metrics>,
}

/// The peer's IP as a header value (x-forwarded-for), made once per connection.
pub fn client_ip_value(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// What a request knows about the connection it came on.
pub struct ConnInfo {
    pub listener: Arc<ListenerSettings>,
    pub peer: SocketAddr,
    /// The peer's IP as a header value, for x-forwarded-for.
    pub client_ip: HeaderValue,
    pub https: bool,
    /// The connection's protocol when the front door knows it at accept
    /// (ALPN, a one-protocol listener, QUIC); `None` on a plain listener
    /// that tells HTTP/1.1 from HTTP/2 by the first bytes (each request's
    /// version says which).
    pub protocol: Option<crate::config::Protocol>,
    pub shared: Arc<Shared>,
    pub activity: Arc<ConnActivity>,
    /// The connection's place in portico_connections_active.
    pub gauge: ConnGauge,
}

/// Request extension set by a front door on a request that arrived in TLS
/// early data (HTTP/3 0-RTT) on a connection whose handshake was not yet
/// complete: such a request may be a replay (RFC 8470).
#[derive(Debug, Clone, Copy)]
pub struct EarlyData;

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
    /// The connection became a tunnel (WebSocket): the tunnel task, not the
    /// response body, ends the request.
    tunnel: bool,
}

/// Serves one request from any front door. Never fails: errors become the
/// proxy's own responses.
pub async fn handle(
    req: Request<RequestBody>,
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
    let mut log = snap
        .access_log
        .enabled()
        .then(|| log_entry(&req, &conn, &snap.access_log));

    let mut trace = Trace::default();
    let span = tracing::error_span!("request", request_id = %RequestIdField(&request_id));
    // Boxed: the pipeline's future is several KB, and the front doors move
    // the request's future around (into a task per HTTP/2 or HTTP/3 stream,
    // into hyper's HTTP/1.1 dispatcher, through each state change of the
    // task). Behind a box only a pointer moves; one allocation is cheaper
    // than those copies.
    let pipeline = Box::pin(
        serve(
            req,
            seq,
            &snap,
            &conn,
            &request_id,
            &mut trace,
            log.is_some(),
        )
        .instrument(span),
    );
    let mut resp = match pipeline.await {
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
    let log = log.map(|l| (Box::new(l), snap.access_log.clone()));
    resp.body_mut().on_complete(Box::new(Done {
        conn,
        snap,
        route_index: trace.route_index,
        status,
        pooled: trace.pooled,
        bytes_in: trace.bytes_in,
        log,
        tunnel: trace.tunnel,
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

fn log_entry(req: &Request<RequestBody>, conn: &ConnInfo, sink: &AccessLog) -> LogEntry {
    let agent = sink.wants_agent();
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
    mut req: Request<RequestBody>,
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
    framing::admit(&mut req, conn.listener.max_header_bytes)?;
    let early = req.extensions().get::<EarlyData>().is_some();
    if early && !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(ProxyError::TooEarly);
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

    // authenticate
    if let Some(policy) = &route.auth {
        policy.authenticate(req.headers_mut()).await?;
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
            forward::forward(
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
    log: Option<(Box<LogEntry>, Arc<AccessLog>)>,
    start: Instant,
    tunnel: bool,
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
            tunnel,
        } = *self;
        if let Some(p) = pooled {
            if ended {
                p.release();
            }
        }
        if !tunnel {
            conn.activity.request_finished();
        }
        let elapsed = start.elapsed();
        match route_index.and_then(|i| snap.routes.get(i)) {
            Some(r) => r.metrics.record(status, elapsed),
            None => snap.metrics.no_route.record(status, elapsed),
        }
        if let Some((mut l, sink)) = log {
            l.bytes_out = bytes_out;
            l.bytes_in = bytes_in.map_or(0, |c| c.load(Ordering::Relaxed));
            l.duration = elapsed;
            sink.write(*l);
        }
    }
}
