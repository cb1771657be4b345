//! The request pipeline, one for every front door (HTTP/1.1, HTTP/2,
//! HTTP/3).
//!
//! Phases, in order (the order is the architecture):
//! 1. **admit**: load the runtime once; pick the request id; check
//!    the head (size, Host rules, 425 for a non-GET/HEAD request in TLS
//!    early data);
//!    refuse a miscased standard method; normalise the path ([`path`]):
//!    what routing matches and what goes upstream;
//! 2. **route**: find the route by listener, host, path and method;
//! 3. **cors**: on a route with a CORS policy, answer preflights at the
//!    edge and note what the response owes the request's origin
//!    ([`cors`]);
//! 4. **authenticate**: the client's hop-by-hop headers (and any upgrade
//!    but WebSocket), every spelling of any policy's claim headers and the
//!    `_` spellings of the headers the proxy sets are removed first, so nothing the client sends can remove or fake a
//!    header the proxy sets; then, on a route with `auth`, the route's JWT
//!    policy checks the bearer token and sets the claim headers
//!    (`crate::auth`);
//! 5. **respond** (a `respond` route) or **forward** ([`forward`]): rewrite
//!    the head (hop-by-hop, x-forwarded-*, Host, path), choose a server
//!    round-robin, send on a pooled connection, retry where safe, bounded by
//!    the route's timeout;
//! 6. **finish**: every response, the proxy's own included, carries the
//!    request id (and the CORS headers its route's policy owes it); when its
//!    body ends the upstream connection returns to its pool, the request is
//!    counted in the route's metrics and the access log line is written. A
//!    request dropped before it has a response (the client cancelled it) is
//!    finished too, with status 499.
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
pub mod path;
pub mod routing;
pub mod runtime;

use crate::body::{Completion, ProxyBody, RequestBody};
use crate::listener::ConnActivity;
use crate::listener::ListenerSettings;
use crate::observe::access_log::{AccessLog, LogEntry};
use crate::observe::metrics::{ConnGauge, ConnProtocol, Metrics};
use crate::observe::request_id;
use crate::upstream::PoolReturn;
use arc_swap::ArcSwap;
use error::ProxyError;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, REFERER, USER_AGENT};
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use routing::Action;
use runtime::Runtime;
use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tracing::Instrument;

/// State shared by every connection of the process.
pub struct Shared {
    /// What requests read of the config in force; swapped whole on reload.
    pub runtime: ArcSwap<Runtime>,
    /// The metrics registry: the one every runtime carries.
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
    /// The TCP connection's max_connections permit and drain guard (QUIC
    /// connections hold theirs in their own task): released with the last
    /// holder of this ConnInfo, a tunnel included.
    pub slot: Option<crate::listener::ConnSlot>,
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
    /// Where the route is in `runtime.routes`.
    route_index: Option<usize>,
    /// What the route's CORS policy owes the response.
    cors: Option<cors::Pending>,
    upstream: Option<Arc<str>>,
    pooled: Option<PoolReturn>,
    bytes_in: Option<Arc<AtomicU64>>,
    /// The connection is becoming a tunnel (WebSocket): both sides'
    /// upgrades, for the tunnel task that then ends the request.
    tunnel: Option<forward::Tunnel>,
}

/// The status logged and counted for a request the client cancelled before
/// its response head (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// Serves one request from any front door. Never fails: errors become the
/// proxy's own responses.
///
/// The finish phase ([`Done`]) exists from the first line: if the front
/// door drops this future before a response exists (an HTTP/2 or HTTP/3
/// stream reset, a closed HTTP/1.1 connection), dropping it logs and counts
/// the request as [`CLIENT_CLOSED`] and gives back what it held (the
/// connection's in-flight count; an upstream exchange under way is dropped
/// with the pipeline, which aborts it).
pub async fn handle(
    req: Request<RequestBody>,
    conn: Arc<ConnInfo>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let seq = conn.activity.request_started();
    conn.gauge.set_protocol(ConnProtocol::of(req.version()));
    let snap = conn.shared.runtime.load_full();

    let request_id = match req.headers().get(&snap.request_id_header) {
        Some(v) if snap.trust_request_id && request_id::is_well_formed(v.as_bytes()) => v.clone(),
        _ => request_id::generate(),
    };
    let grpc = is_grpc(&req);
    let log = snap.access_log.enabled().then(|| {
        let mut l = log_entry(&req, &conn, &snap.access_log);
        l.request_id = request_id.to_str().unwrap_or("").to_string();
        l
    });
    let count_bytes = log.is_some();

    // One allocation: this box goes on to be the response body's completion.
    let mut done = Box::new(Done {
        conn,
        snap,
        trace: Trace::default(),
        status: CLIENT_CLOSED,
        log,
        start,
        tunnel: false,
        finished: false,
    });
    let d = &mut *done;
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
            &d.snap,
            &d.conn,
            &request_id,
            &mut d.trace,
            count_bytes,
        )
        .instrument(span),
    );
    let mut resp = match pipeline.await {
        Ok(r) => r,
        Err(e) => {
            if let Some(l) = done.log.as_mut() {
                l.error = std::borrow::Cow::Borrowed(e.reason());
            }
            e.response(grpc)
        }
    };
    resp.headers_mut()
        .insert(done.snap.request_id_header.clone(), request_id);
    if let Some(pending) = done.trace.cors.take() {
        if let Some(policy) = done
            .trace
            .route_index
            .and_then(|i| done.snap.routes.get(i))
            .and_then(|r| r.cors.as_deref())
        {
            pending.finish(policy, resp.headers_mut());
        }
    }
    if let Some(t) = done.trace.tunnel.take() {
        // The tunnel holds the connection (its ConnInfo: slot, gauge) and
        // ends the request when it closes.
        done.tunnel = true;
        forward::spawn_tunnel(t, done.conn.clone());
    }
    done.status = resp.status().as_u16();
    resp.body_mut().on_complete(done);
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
        error: std::borrow::Cow::Borrowed(""),
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    mut req: Request<RequestBody>,
    seq: u64,
    snap: &Runtime,
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
    if headers::miscased_method(req.method()) {
        return Err(ProxyError::BadRequest("method in the wrong case"));
    }
    // "*" (OPTIONS *) and "" (CONNECT's authority-form) have no path to
    // normalise; the access log keeps the path as the client sent it.
    if !matches!(req.uri().path(), "*" | "") {
        if let Cow::Owned(mut p) =
            path::normalize(req.uri().path()).map_err(|e| ProxyError::BadRequest(e.reason()))?
        {
            if let Some(q) = req.uri().query() {
                p.push('?');
                p.push_str(q);
            }
            let bad = |_| ProxyError::BadRequest("bad request target");
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.path_and_query = Some(PathAndQuery::try_from(p).map_err(bad)?);
            *req.uri_mut() =
                Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("bad request target"))?;
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
                .ok()
                .and_then(routing::route_host)
                .ok_or(ProxyError::BadRequest("bad Host header"))?,
        ),
        None => None,
    };

    // route (a CORS preflight by the method it announces, when that finds
    // a route with a policy: see cors)
    let listener = &conn.listener.name;
    let path = req.uri().path();
    let preflight = cors::preflight_method(&req);
    let find = |path: &str| {
        preflight
            .as_ref()
            .and_then(|m| snap.routes.find_indexed(listener, host, path, m))
            .filter(|(_, r)| r.cors.is_some())
            .or_else(|| snap.routes.find_indexed(listener, host, path, req.method()))
    };
    let (index, route) = find(path).ok_or(ProxyError::NotFound)?;
    // Upstreams that drop path parameters (`/admin;x/y` is `/admin/y` to
    // Tomcat) must not reach a route, or miss an auth, that the path
    // without them would not.
    if let Cow::Owned(plain) =
        path::without_params(path).map_err(|e| ProxyError::BadRequest(e.reason()))?
    {
        if find(&plain).map(|(i, _)| i) != Some(index) {
            return Err(ProxyError::BadRequest("path parameters change the route"));
        }
    }
    trace.route = Some(route.name.clone());
    trace.route_index = Some(index);

    // cors
    if let Some(policy) = &route.cors {
        match &preflight {
            Some(method) => return cors::preflight(policy, &req, method),
            None => trace.cors = Some(cors::actual(policy, &req)),
        }
    }

    // authenticate: first what the client sent is cleaned, so that its
    // Connection header cannot remove what the proxy sets below, nor a
    // header it sends pass for one the proxy sets.
    let websocket = headers::websocket_upgrade(req.version(), req.headers());
    headers::strip_client_hop_by_hop(
        req.headers_mut(),
        route.auth.as_ref().map(|_| &http::header::AUTHORIZATION),
    );
    snap.claim_headers.strip(req.headers_mut());
    headers::strip_underscore_spellings(req.headers_mut(), &snap.request_id_header);
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
                websocket,
                trace,
                count_bytes,
            )
            .await
        }
    }
}

/// The finish phase: run once, when the response body ends or is dropped,
/// or when the request is dropped before it has a response (then with
/// status [`CLIENT_CLOSED`]). It gives the upstream connection back to its
/// pool (only after a complete exchange), ends the request on its
/// connection, counts it in the route's metrics and writes its access log
/// line.
struct Done {
    conn: Arc<ConnInfo>,
    /// The runtime the request started with, for its route's metrics.
    snap: Arc<Runtime>,
    trace: Trace,
    /// The status sent to the client.
    status: u16,
    log: Option<LogEntry>,
    start: Instant,
    /// A tunnel task took the request over: it ends the request.
    tunnel: bool,
    finished: bool,
}

impl Done {
    fn finish(&mut self, bytes_out: u64, ended: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let trace = &mut self.trace;
        if let Some(p) = trace.pooled.take() {
            if ended {
                p.release();
            } else {
                p.discard();
            }
        }
        if !self.tunnel {
            self.conn.activity.request_finished();
        }
        let elapsed = self.start.elapsed();
        match trace.route_index.and_then(|i| self.snap.routes.get(i)) {
            Some(r) => r.metrics.record(self.status, elapsed),
            None => self.snap.metrics.no_route.record(self.status, elapsed),
        }
        if let Some(mut l) = self.log.take() {
            l.status = self.status;
            l.route = trace.route.take();
            l.upstream = trace.upstream.take();
            l.bytes_out = bytes_out;
            l.bytes_in = trace
                .bytes_in
                .as_ref()
                .map_or(0, |c| c.load(Ordering::Relaxed));
            l.duration = elapsed;
            self.snap.access_log.write(l);
        }
    }
}

impl Completion for Done {
    fn complete(mut self: Box<Self>, bytes_out: u64, ended: bool) {
        self.finish(bytes_out, ended);
    }
}

impl Drop for Done {
    /// Reached unfinished only when the request's future was dropped before
    /// its response existed: the client cancelled it.
    fn drop(&mut self) {
        self.finish(0, false);
    }
}
