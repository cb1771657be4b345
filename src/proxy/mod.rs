//! The request pipeline, one for every front door (HTTP/1.1, HTTP/2,
//! HTTP/3).
//!
//! Phases, in order (the order is the architecture):
//! 1. **admit**: load the config snapshot once; pick the request id; check
//!    the head (size, Host rules, 425 for a non-GET/HEAD request in TLS
//!    early data);
//! 2. **route**: find the route by listener, host, path and method;
//! 3. **respond** (a `respond` route) or **forward**: rewrite the head
//!    (hop-by-hop, x-forwarded-*, Host, path), choose a server round-robin,
//!    send on a pooled connection, bounded by the route's timeout;
//! 4. **finish**: every response, the proxy's own included, carries the
//!    request id; when its body ends the upstream connection returns to its
//!    pool and the access log line is written.
//!
//! Errors of any phase are a [`ProxyError`], answered by one function.

pub mod error;
pub mod headers;
pub mod routing;

use crate::body::{Completion, ProxyBody, RequestBody};
use crate::listener::ConnActivity;
use crate::observe::access_log::{AccessLog, LogEntry};
use crate::observe::request_id;
use crate::snapshot::{ListenerSettings, Snapshot};
use crate::upstream::{PoolReturn, UpstreamError, UpstreamPool};
use arc_swap::ArcSwap;
use error::ProxyError;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, REFERER, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use routing::{Action, Route};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// State shared by every connection of the process.
pub struct Shared {
    /// The config in force; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
}

/// What a request knows about the connection it came on.
pub struct ConnInfo {
    pub listener: Arc<ListenerSettings>,
    pub peer: SocketAddr,
    pub https: bool,
    /// The connection's protocol when the front door knows it at accept
    /// (ALPN, a one-protocol listener, QUIC); `None` on a plain listener
    /// that tells HTTP/1.1 from HTTP/2 by the first bytes (each request's
    /// version says which).
    pub protocol: Option<crate::config::Protocol>,
    pub shared: Arc<Shared>,
    pub activity: Arc<ConnActivity>,
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
    upstream: Option<Arc<str>>,
    pooled: Option<PoolReturn>,
    bytes_in: Option<Arc<AtomicU64>>,
}

/// Serves one request from any front door. Never fails: errors become the
/// proxy's own responses.
pub async fn handle(
    req: Request<RequestBody>,
    conn: Arc<ConnInfo>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let seq = conn.activity.request_started();
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
    let mut resp = match serve(
        req,
        seq,
        &snap,
        &conn,
        &request_id,
        &mut trace,
        log.is_some(),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => e.response(grpc),
    };
    resp.headers_mut()
        .insert(snap.request_id_header.clone(), request_id.clone());

    if let Some(l) = log.as_mut() {
        l.status = resp.status().as_u16();
        l.route = trace.route.take();
        l.upstream = trace.upstream.take();
        l.request_id = request_id.to_str().unwrap_or("").to_string();
        l.duration = start.elapsed();
    }
    resp.body_mut().on_complete(Box::new(Done {
        conn,
        pooled: trace.pooled,
        bytes_in: trace.bytes_in,
        log: log.map(|l| (Box::new(l), snap.access_log.clone())),
        start,
    }));
    Ok(resp)
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
    req: Request<RequestBody>,
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

    // route
    let route = snap
        .routes
        .find(&conn.listener.name, host, req.uri().path(), req.method())
        .ok_or(ProxyError::NotFound)?;
    trace.route = Some(route.name.clone());

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
    req: Request<RequestBody>,
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
    let early = parts.extensions.get::<EarlyData>().is_some();
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
    if early {
        // RFC 8470 5.1: an intermediary forwarding early data says so, so
        // the origin can answer 425 itself.
        parts
            .headers
            .insert("early-data", HeaderValue::from_static("1"));
    }
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
        let mut body = body;
        body.count_into(counter);
        body
    } else {
        body
    };
    let mut req = Request::from_parts(parts, body);

    let deadline = tokio::time::Instant::now() + route.timeout;
    let mut tried: u32 = 0;
    loop {
        let server = pool.pick();
        trace.upstream = Some(server.label.clone());
        let sent = tokio::time::timeout_at(deadline, pool.send(server, req)).await;
        let failure = match sent {
            Err(_) => return Err(ProxyError::GatewayTimeout),
            Ok(Ok(ex)) => {
                trace.pooled = ex.pooled;
                let (mut rp, body) = ex.response.into_parts();
                headers::strip_hop_by_hop(&mut rp.headers);
                rp.version = Version::HTTP_11;
                return Ok(Response::from_parts(rp, ProxyBody::upstream(body)));
            }
            Ok(Err(f)) => f,
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
    pooled: Option<PoolReturn>,
    bytes_in: Option<Arc<AtomicU64>>,
    log: Option<(Box<LogEntry>, Arc<AccessLog>)>,
    start: Instant,
}

impl Completion for Done {
    fn complete(self: Box<Self>, bytes_out: u64, ended: bool) {
        let Done {
            conn,
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
        if let Some((mut l, sink)) = log {
            l.bytes_out = bytes_out;
            l.bytes_in = bytes_in.map_or(0, |c| c.load(Ordering::Relaxed));
            l.duration = start.elapsed();
            sink.write(*l);
        }
    }
}
