//! The forward phase: build the upstream head, choose a server, send,
//! retry, and open the tunnel of an accepted WebSocket upgrade.
//!
//! Guarantees:
//! - hop-by-hop headers are removed both ways; the upstream head is the one
//!   [`upstream_head`](super::upstream_head) describes;
//! - the whole exchange, retries included, is bounded by the route's
//!   timeout until a response head: then 504;
//! - a request is retried (at most `route.retries` more times, always on a
//!   server not tried yet, within the pool's retry budget) when nothing of
//!   it reached a server (connect failure: any method), or when it is
//!   retry-safe and kept for a replay ([`replay`](super::replay)) and the
//!   connection broke before a response head or the server answered
//!   502/503;
//! - no server in rotation (every one failed its active checks): 503;
//! - an HTTP/1.1 WebSocket upgrade (the only upgrade tunnelled; others
//!   were removed by the authenticate phase) that the server accepts with
//!   101 with a valid WebSocket handshake (`Upgrade: websocket` and the
//!   Sec-WebSocket-Accept of the client's key; else 502) becomes a byte
//!   tunnel between client and server ([`tunnel`](super::tunnel)).

use super::context::RequestCtx;
use super::context::RequestIdField;
use super::error::ProxyError;
use super::headers;
use super::replay::{retry_safe, Replay, Tried};
use super::routing::Route;
use super::tunnel::Tunnel;
use super::upstream_head;
use crate::body::{ProxyBody, RequestBody};
use crate::config::UpstreamProtocol;
use crate::observe::metrics::UpstreamOutcome;
use crate::upstream::{
    CurrentMembers, Exchange, NoServer, ResponseBody, Upgraded, UpstreamError, UpstreamPool,
    UpstreamServer,
};
use http::header::{CONNECTION, UPGRADE};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The client's side of a WebSocket upgrade asked for upstream.
struct ClientUpgrade {
    on: OnUpgrade,
    /// The Sec-WebSocket-Accept the server's 101 must carry.
    accept: Option<HeaderValue>,
}

/// Forwards `req` to `pool` on `route` (see the module docs).
pub(super) async fn forward(
    mut req: Box<Request<RequestBody>>,
    ctx: &mut RequestCtx<'_>,
    route: &Route,
    pool: &UpstreamPool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let deadline = crate::sys::coarse_now() + route.timeout;
    let websocket = ctx
        .websocket
        .take()
        .filter(|_| pool.definition.protocol == UpstreamProtocol::Http1);
    let client_upgrade = websocket.is_some().then(|| hyper::upgrade::on(&mut *req));

    let (mut parts, mut body) = req.into_parts();
    limit_body(&mut body, ctx)?;
    let accept = upstream_head::build(&mut parts, ctx, route, pool, websocket)?;
    let upgrade = client_upgrade.map(|on| ClientUpgrade { on, accept });

    // Keep what a replay needs, for retry-safe requests whose body is small
    // and known in full (read now, within the route's deadline).
    let mut replay = None;
    if route.retries > 0 && upgrade.is_none() && retry_safe(&parts.method, &parts.headers) {
        (body, replay) = Replay::keep(body, deadline).await?;
    }
    if !http_body::Body::is_end_stream(&body) {
        let counter = if ctx.count_bytes {
            let c = Arc::new(AtomicU64::new(0));
            ctx.trace.bytes_in = Some(c.clone());
            c
        } else {
            route.metrics.request_bytes.clone()
        };
        body.count_into(counter);
    }
    let attempts = Attempts {
        route,
        pool,
        // One view of the servers for every attempt: `tried` indexes into it.
        members: pool.members(),
        deadline,
        replay,
        tried: Tried::new(),
    };
    attempts.run(&parts, body, ctx, upgrade).await
}

/// The listener's body limits on `body`: a body whose length is known to
/// be over max_body_bytes is refused before anything is sent (413); any
/// other fails when it crosses it, or stalls for body_timeout.
fn limit_body(body: &mut RequestBody, ctx: &RequestCtx<'_>) -> Result<(), ProxyError> {
    let l = &ctx.conn.listener;
    if http_body::Body::is_end_stream(body) {
        return Ok(());
    }
    if l.max_body_bytes > 0 && http_body::Body::size_hint(body).lower() > l.max_body_bytes {
        return Err(ProxyError::PayloadTooLarge);
    }
    body.limit(l.max_body_bytes, l.body_timeout);
    Ok(())
}

/// The sending of one request: to one server, then, where the rules allow,
/// to others.
struct Attempts<'r> {
    route: &'r Route,
    pool: &'r UpstreamPool,
    members: CurrentMembers<'r>,
    deadline: tokio::time::Instant,
    replay: Option<Replay>,
    tried: Tried,
}

impl Attempts<'_> {
    /// Sends the request `head` + `body`: the head is the same for every
    /// attempt, and only borrowed by each.
    async fn run(
        mut self,
        head: &Parts,
        body: RequestBody,
        ctx: &mut RequestCtx<'_>,
        upgrade: Option<ClientUpgrade>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let pool = self.pool;
        pool.retry_budget.request();
        let mut next = Some(body);
        let mut last_error = ProxyError::BadGateway;
        loop {
            let Some(body) = next.take() else {
                return Err(last_error);
            };
            let idx = match self.members.pick(self.tried.as_slice()) {
                Ok(i) => i,
                Err(NoServer::Unhealthy) => return Err(ProxyError::ServiceUnavailable),
                Err(NoServer::AllTried) => return Err(last_error),
            };
            self.tried.push(idx);
            let server = &self.members.servers[idx];
            ctx.trace.upstream = Some(server.label.clone());
            ctx.trace.attempts += 1;
            if ctx.trace.attempts > 1 {
                server.metrics.upstream.record_retry();
            }

            let sent_at = std::time::Instant::now();
            // The send's future is kilobytes: unboxed, it was copied into
            // the timeout and then into this future's state.
            let send = pin_in_place!(pool.send(server, head, body));
            let sent = tokio::time::timeout_at(self.deadline, send).await;
            let failure = match sent {
                Err(_) => {
                    server.metrics.record(UpstreamOutcome::Timeout);
                    return Err(ProxyError::GatewayTimeout);
                }
                Ok(Ok(ex)) => {
                    let status = ex.response.status();
                    let took = sent_at.elapsed();
                    server.metrics.upstream.duration.observe(took);
                    ctx.trace.upstream_answer = Some((status.as_u16(), took));
                    server.metrics.record(if status.is_server_error() {
                        UpstreamOutcome::Http5xx
                    } else {
                        UpstreamOutcome::Ok
                    });
                    next = self.retry_on_status(status, server, ctx.request_id);
                    if next.is_some() {
                        continue;
                    }
                    return self.answer(ctx, server, ex, upgrade);
                }
                Ok(Err(f)) => {
                    server.metrics.record(f.error.outcome());
                    f
                }
            };
            pool.record_failure(server, &failure.error);
            tracing::warn!(request_id = %RequestIdField(ctx.request_id), upstream = %pool.name, server = %server.label, error = %failure.error, "upstream request failed");
            match &failure.error {
                UpstreamError::ClientBody(e) => return Err(ProxyError::client_body(&**e)),
                UpstreamError::BodyLimit(f) => return Err(ProxyError::body_fault(*f)),
                _ => {}
            }
            last_error = ProxyError::BadGateway;
            if !self.attempts_left() {
                return Err(last_error);
            }
            // Nothing reached the server: any method may go elsewhere.
            // Otherwise only a retry-safe request whose body we still have.
            next = failure
                .unsent
                .or_else(|| self.replay.as_ref().map(Replay::body));
            if next.is_some() && !pool.retry_budget.try_retry() {
                tracing::warn!(request_id = %RequestIdField(ctx.request_id), upstream = %pool.name, "retry budget exhausted: not retrying");
                return Err(last_error);
            }
        }
    }

    /// Whether the route allows another attempt after those made.
    fn attempts_left(&self) -> bool {
        self.tried.len() <= self.route.retries as usize
    }

    /// The body to send to another server after `server` answered
    /// `status`, if that answer is to be retried: a 502 or 503 of a request
    /// kept for a replay, when another server may answer (else the
    /// server's own 502/503 is the answer).
    fn retry_on_status(
        &self,
        status: StatusCode,
        server: &UpstreamServer,
        request_id: &HeaderValue,
    ) -> Option<RequestBody> {
        let pool = self.pool;
        if !matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
        ) || !self.attempts_left()
            || self.members.servers.len() <= self.tried.len()
        {
            return None;
        }
        let r = self.replay.as_ref()?;
        if !pool.retry_budget.try_retry() {
            return None;
        }
        tracing::info!(request_id = %RequestIdField(request_id), upstream = %pool.name, server = %server.label, %status, "retrying on another server");
        Some(r.body())
    }

    /// The client's answer from the server's: hop-by-hop headers removed; a
    /// 101 to a WebSocket upgrade opens the tunnel.
    fn answer(
        &self,
        ctx: &mut RequestCtx<'_>,
        server: &UpstreamServer,
        ex: Exchange,
        upgrade: Option<ClientUpgrade>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let response = ex.response;
        if let (Some(upstream), Some(upgrade)) = (ex.upgraded, upgrade) {
            return self.open_tunnel(ctx, server, response, upstream, upgrade);
        }
        let (mut rp, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut rp.headers);
        rp.version = Version::HTTP_11;
        let mut body = match body {
            ResponseBody::H1(b) => ProxyBody::boxed(b),
            ResponseBody::H2(b) => ProxyBody::upstream(b),
        };
        body.read_timeout(self.pool.definition.read_timeout.0);
        Ok(Response::from_parts(rp, body))
    }

    /// The server accepted the client's WebSocket upgrade: the 101 for the
    /// client, and the tunnel for the finish phase to start.
    fn open_tunnel(
        &self,
        ctx: &mut RequestCtx<'_>,
        server: &UpstreamServer,
        response: Response<ResponseBody>,
        upstream: Upgraded,
        upgrade: ClientUpgrade,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if !headers::is_websocket_handshake(response.headers(), upgrade.accept.as_ref()) {
            // Not a WebSocket server's answer: tunnelling would hand the
            // client the upstream's HTTP parser (the connection closes
            // with `upstream`).
            tracing::warn!(request_id = %RequestIdField(ctx.request_id), upstream = %self.pool.name, server = %server.label, "101 without a valid WebSocket handshake");
            return Err(ProxyError::BadGateway);
        }
        ctx.trace.tunnel = Some(Tunnel {
            client: upgrade.on,
            upstream,
        });
        let (mut rp, _) = response.into_parts();
        let upgrade_value = rp.headers.get(UPGRADE).cloned();
        headers::strip_hop_by_hop(&mut rp.headers);
        rp.headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(v) = upgrade_value {
            rp.headers.insert(UPGRADE, v);
        }
        Ok(Response::from_parts(rp, ProxyBody::empty()))
    }
}
