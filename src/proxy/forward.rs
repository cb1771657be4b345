//! The forward phase: rewrite the head, choose a server, send, retry.
//!
//! Guarantees:
//! - hop-by-hop headers are removed both ways; x-forwarded-* and the request
//!   id are set; Host is the client's host (the absolute-form or
//!   :authority one when given);
//! - the whole exchange, retries included, is bounded by the route's
//!   timeout until a response head: then 504;
//! - a request is retried (at most `route.retries` more times, always on a
//!   server not tried yet, within the pool's retry budget) when nothing of
//!   it reached a server (connect failure: any method), or when it is
//!   retry-safe (GET, HEAD, OPTIONS, PUT, DELETE, or any method with an
//!   Idempotency-Key) and the connection broke before a response head or the
//!   server answered 502/503; a retry-safe body is replayed only if it is
//!   known in full (Content-Length at most 64 KiB, read before sending);
//! - no server in rotation (every one failed its active checks): 503;
//! - an HTTP/1.1 WebSocket upgrade (the only upgrade tunnelled; others
//!   were removed by `serve`) that the server accepts with 101
//!   with a valid WebSocket handshake (`Upgrade: websocket` and the
//!   Sec-WebSocket-Accept of the client's key; else 502) becomes a byte
//!   tunnel between client and server, closed after the
//!   listener's idle_timeout without a byte moving either way (a side that
//!   stops reading does not keep it open); it holds the client
//!   connection's max_connections slot and drain place until it closes.

use super::error::ProxyError;
use super::runtime::Runtime;
use super::{headers, ConnInfo, Trace};
use crate::body::{ProxyBody, RequestBody};
use crate::config::UpstreamProtocol;
use crate::observe::metrics::UpstreamOutcome;
use crate::proxy::routing::Route;
use crate::upstream::{NoServer, UpstreamError, UpstreamPool};
use bytes::Bytes;
use http::header::{CONNECTION, HOST, UPGRADE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bodies up to this size are kept so a retry-safe request can be replayed.
const REPLAY_LIMIT: u64 = 64 * 1024;

static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// What is needed to send a request again.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Replay {
    fn request(&self) -> Request<RequestBody> {
        let mut r = Request::new(RequestBody::full(self.body.clone()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = self.version;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

fn retry_safe(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || headers.contains_key(&IDEMPOTENCY_KEY)
}

/// Servers tried for one request, in order: inline for the usual few, on
/// the heap beyond that, so a pool of any size is never tried twice.
struct Tried {
    inline: [usize; 8],
    len: usize,
    spilled: Vec<usize>,
}

impl Tried {
    fn new() -> Tried {
        Tried {
            inline: [0; 8],
            len: 0,
            spilled: Vec::new(),
        }
    }
    fn as_slice(&self) -> &[usize] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
    /// How many attempts were made.
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn push(&mut self, i: usize) {
        if self.spilled.is_empty() && self.len < self.inline.len() {
            self.inline[self.len] = i;
            self.len += 1;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline);
            }
            self.spilled.push(i);
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    mut req: Request<RequestBody>,
    snap: &Runtime,
    route: &Route,
    pool: &UpstreamPool,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    host_value: Option<HeaderValue>,
    websocket: Option<HeaderValue>,
    trace: &mut Trace,
    count_bytes: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let deadline = tokio::time::Instant::now() + route.timeout;
    let upgrade = match websocket {
        Some(proto) if pool.definition.protocol == UpstreamProtocol::Http1 => {
            Some((hyper::upgrade::on(&mut req), Some(proto)))
        }
        _ => None,
    };

    // The client's hop-by-hop headers are gone already (see `serve`).
    let (mut parts, mut body) = req.into_parts();
    headers::strip_request_only(&mut parts.headers);
    headers::set_forwarded(
        &mut parts.headers,
        &conn.client_ip,
        conn.https,
        host_value.as_ref(),
    );
    parts
        .headers
        .insert(snap.request_id_header.clone(), request_id.clone());
    if parts.extensions.get::<super::EarlyData>().is_some() {
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
    // What the server's 101 must carry for the tunnel to open.
    let websocket_accept = upgrade.as_ref().and_then(|_| {
        parts
            .headers
            .get("sec-websocket-key")
            .map(headers::websocket_accept)
    });
    if let Some((_, Some(proto))) = &upgrade {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, proto.clone());
    }
    parts.uri = upstream_uri(
        std::mem::take(&mut parts.uri),
        route,
        pool,
        host_value.as_ref(),
    )?;
    parts.version = match pool.definition.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };

    // Keep what a replay needs, for retry-safe requests whose body is small
    // and known in full (read now, within the route's deadline).
    let mut replay = None;
    if route.retries > 0 && upgrade.is_none() && retry_safe(&parts.method, &parts.headers) {
        let small = http_body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n <= REPLAY_LIMIT);
        if http_body::Body::is_end_stream(&body) || small {
            let bytes = if http_body::Body::is_end_stream(&body) {
                Bytes::new()
            } else {
                match tokio::time::timeout_at(deadline, body.collect()).await {
                    Ok(Ok(c)) => c.to_bytes(),
                    Ok(Err(_)) => return Err(ProxyError::BadRequest("malformed request body")),
                    Err(_) => return Err(ProxyError::GatewayTimeout),
                }
            };
            body = RequestBody::full(bytes.clone());
            replay = Some(Replay {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                version: parts.version,
                headers: parts.headers.clone(),
                body: bytes,
            });
        }
    }
    if count_bytes && !http_body::Body::is_end_stream(&body) {
        let counter = Arc::new(AtomicU64::new(0));
        trace.bytes_in = Some(counter.clone());
        body.count_into(counter);
    }
    let mut req = Some(Request::from_parts(parts, body));

    pool.retry_budget.request();
    let mut tried = Tried::new();
    let mut last_error = ProxyError::BadGateway;
    // One view of the servers for every attempt: `tried` indexes into it.
    let members = pool.members();
    loop {
        let Some(request) = req.take() else {
            return Err(last_error);
        };
        let idx = match members.pick(tried.as_slice()) {
            Ok(i) => i,
            Err(NoServer::Unhealthy) => return Err(ProxyError::ServiceUnavailable),
            Err(NoServer::AllTried) => return Err(last_error),
        };
        tried.push(idx);
        let server = &members.servers[idx];
        trace.upstream = Some(server.label.clone());
        let attempts_left = tried.len() <= route.retries as usize;

        let failure = match tokio::time::timeout_at(deadline, pool.send(server, request)).await {
            Err(_) => {
                server.metrics.record(UpstreamOutcome::Timeout);
                return Err(ProxyError::GatewayTimeout);
            }
            Ok(Ok(ex)) => {
                let status = ex.response.status();
                server.metrics.record(if status.is_server_error() {
                    UpstreamOutcome::Http5xx
                } else {
                    UpstreamOutcome::Ok
                });
                // Only when another server may answer: else the server's
                // own 502/503 is the answer.
                if matches!(
                    status,
                    StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                ) && attempts_left
                    && members.servers.len() > tried.len()
                {
                    if let Some(r) = &replay {
                        if pool.retry_budget.try_retry() {
                            tracing::info!(upstream = %pool.name, server = %server.label, %status, "retrying on another server");
                            req = Some(r.request());
                            continue;
                        }
                    }
                }
                trace.pooled = ex.pooled;
                let mut response = ex.response;
                if let (StatusCode::SWITCHING_PROTOCOLS, Some((client_upgrade, _))) =
                    (status, upgrade)
                {
                    if !headers::is_websocket_handshake(
                        response.headers(),
                        websocket_accept.as_ref(),
                    ) {
                        // Not a WebSocket server's answer: tunnelling would
                        // hand the client the upstream's HTTP parser.
                        if let Some(p) = trace.pooled.take() {
                            p.discard();
                        }
                        tracing::warn!(upstream = %pool.name, server = %server.label, "101 without a valid WebSocket handshake");
                        return Err(ProxyError::BadGateway);
                    }
                    // The upstream connection now belongs to the tunnel.
                    trace.pooled = None;
                    trace.tunnel = Some(Tunnel {
                        client: client_upgrade,
                        upstream: hyper::upgrade::on(&mut response),
                    });
                    let (mut rp, _) = response.into_parts();
                    let upgrade_value = rp.headers.get(UPGRADE).cloned();
                    headers::strip_hop_by_hop(&mut rp.headers);
                    rp.headers
                        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                    if let Some(v) = upgrade_value {
                        rp.headers.insert(UPGRADE, v);
                    }
                    return Ok(Response::from_parts(rp, ProxyBody::empty()));
                }
                let (mut rp, body) = response.into_parts();
                headers::strip_hop_by_hop(&mut rp.headers);
                rp.version = Version::HTTP_11;
                return Ok(Response::from_parts(rp, ProxyBody::upstream(body)));
            }
            Ok(Err(f)) => {
                server.metrics.record(f.error.outcome());
                f
            }
        };
        pool.record_failure(server, &failure.error);
        tracing::warn!(upstream = %pool.name, server = %server.label, error = %failure.error, "upstream request failed");
        if let UpstreamError::ClientBody(_) = failure.error {
            return Err(ProxyError::BadRequest("malformed request body"));
        }
        last_error = ProxyError::BadGateway;
        if !attempts_left {
            return Err(last_error);
        }
        // Nothing reached the server: any method may go elsewhere. Otherwise
        // only a retry-safe request whose body we still have.
        req = failure
            .unsent
            .or_else(|| replay.as_ref().map(Replay::request));
        if req.is_some() && !pool.retry_budget.try_retry() {
            tracing::warn!(upstream = %pool.name, "retry budget exhausted: not retrying");
            return Err(last_error);
        }
    }
}

/// Both sides of a connection that is becoming a tunnel, once the 101 is
/// on its way to the client.
pub(super) struct Tunnel {
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
}

/// Joins the client's and the server's upgraded connections. The task owns
/// `conn` until the tunnel closes, so the client connection keeps its
/// max_connections slot, its place in portico_connections_active and in
/// the shutdown drain (which ends it after shutdown_timeout) for as long.
pub(super) fn spawn_tunnel(t: Tunnel, conn: Arc<ConnInfo>) {
    let idle = conn.listener.idle_timeout;
    tokio::spawn(async move {
        match tokio::try_join!(t.client, t.upstream) {
            Ok((c, u)) => {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                if let Err(e) = copy_with_idle_timeout(&mut c, &mut u, idle).await {
                    tracing::debug!(error = %e, "tunnel ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
        conn.activity.request_finished();
    });
}

/// One direction of a tunnel: bytes read from one side, waiting to be
/// written to the other.
struct OneWay {
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    /// Written bytes not flushed yet (TLS buffers them).
    unflushed: bool,
    /// The source ended; its end is passed on as a write shutdown.
    eof: bool,
    done: bool,
}

impl OneWay {
    fn new() -> OneWay {
        OneWay {
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            pos: 0,
            len: 0,
            unflushed: false,
            eof: false,
            done: false,
        }
    }

    /// Moves what it can from `from` to `to` without waiting; whether any
    /// byte moved (read or written).
    fn pump<R, W>(&mut self, cx: &mut Context<'_>, from: &mut R, to: &mut W) -> io::Result<bool>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut moved = false;
        while !self.done {
            if self.pos < self.len {
                match Pin::new(&mut *to).poll_write(cx, &self.buf[self.pos..self.len]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.unflushed = true;
                        moved = true;
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Ok(moved),
                }
            } else if self.unflushed {
                match Pin::new(&mut *to).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Ok(moved),
                }
            } else if self.eof {
                match Pin::new(&mut *to).poll_shutdown(cx) {
                    Poll::Ready(Ok(())) => self.done = true,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Ok(moved),
                }
            } else {
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *from).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            (self.pos, self.len) = (0, n);
                            moved = true;
                        }
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => return Ok(moved),
                }
            }
        }
        Ok(moved)
    }
}

/// Copies both ways, each direction on its own, until both sides have
/// closed, or until no byte moved either way for `idle`: a write the peer
/// does not take is no movement, so a side that stops reading cannot hold
/// the tunnel (and both sockets) open.
async fn copy_with_idle_timeout<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ab, mut ba) = (OneWay::new(), OneWay::new());
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    std::future::poll_fn(|cx| {
        let moved = ab.pump(cx, a, b)? | ba.pump(cx, b, a)?;
        if ab.done && ba.done {
            return Poll::Ready(Ok(()));
        }
        if moved {
            // A duration too far out to add is no timeout at all (as
            // `tokio::time::sleep` has it).
            if let Some(at) = tokio::time::Instant::now().checked_add(idle) {
                timer.as_mut().reset(at);
            }
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!("tunnel idle: closing");
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The request target to send upstream: origin-form for HTTP/1.1 (the
/// client's own URI when nothing changes), absolute for HTTP/2 (which needs
/// :scheme and :authority).
fn upstream_uri(
    uri: Uri,
    route: &Route,
    pool: &UpstreamPool,
    host: Option<&HeaderValue>,
) -> Result<Uri, ProxyError> {
    if pool.definition.protocol == UpstreamProtocol::Http1
        && !route.strip_prefix
        && uri.scheme().is_none()
        && uri.authority().is_none()
    {
        return Ok(uri);
    }
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
        UpstreamProtocol::Http1 => Ok(Uri::from(PathAndQuery::try_from(pq).map_err(bad)?)),
        UpstreamProtocol::Http2 => {
            let authority = match host.and_then(|h| h.to_str().ok()) {
                Some(h) => Authority::try_from(h).map_err(bad)?,
                None => Authority::from_static("localhost"),
            };
            Uri::builder()
                .scheme(if pool.is_https() {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                })
                .authority(authority)
                .path_and_query(pq)
                .build()
                .map_err(|_| ProxyError::BadRequest("bad request target"))
        }
    }
}
