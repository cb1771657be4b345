//! The finish phase.
//!
//! Guarantees: every response, the proxy's own included, carries the
//! request id (and the CORS headers its route's policy owes it); every
//! answer on a request that matched a route, the proxy's own included, has
//! the route's `response_headers` applied (before the request id and CORS
//! headers, which they cannot change); when its
//! body ends (or is dropped) the request ends on its connection, is
//! counted in the route's metrics and its access log line is written. A
//! request dropped before it has a response (the client cancelled it) is
//! finished too, with status [`CLIENT_CLOSED`]. A request whose connection
//! became a tunnel is ended by the tunnel.

use super::conn::ConnInfo;
use super::context::Trace;
use super::error::ProxyError;
use super::runtime::Runtime;
use super::tunnel;
use crate::body::{Completion, ProxyBody, RequestBody};
use crate::config::Protocol;
use crate::observe::access_log::LogEntry;
use crate::observe::trace::TraceId;
use http::header::{HOST, REFERER, USER_AGENT};
use http::{HeaderValue, Request, Response};
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The status logged and counted for a request the client cancelled before
/// its response head (nginx's "client closed request").
pub const CLIENT_CLOSED: u16 = 499;

/// What the finish phase owns: run once, when the response body ends or is
/// dropped, or when the request is dropped before it has a response (then
/// with status [`CLIENT_CLOSED`]). It exists from the start of the request,
/// boxed: the one allocation of the pipeline, which goes on to be the
/// response body's completion.
pub(super) struct Done {
    pub conn: Arc<ConnInfo>,
    /// The runtime the request started with, for its route's metrics.
    pub runtime: Arc<Runtime>,
    pub trace: Trace,
    /// The status sent to the client.
    status: u16,
    pub log: Option<LogEntry>,
    start: Instant,
    /// A tunnel task took the request over: it ends the request.
    tunnel: bool,
    finished: bool,
}

impl Done {
    pub fn new(
        conn: Arc<ConnInfo>,
        runtime: Arc<Runtime>,
        log: Option<LogEntry>,
        start: Instant,
    ) -> Box<Done> {
        Box::new(Done {
            conn,
            runtime,
            trace: Trace::default(),
            status: CLIENT_CLOSED,
            log,
            start,
            tunnel: false,
            finished: false,
        })
    }

    fn finish(&mut self, bytes_out: u64) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let trace = &mut self.trace;
        if !self.tunnel {
            self.conn.activity.request_finished();
        }
        let elapsed = self.start.elapsed();
        // Counted here only when the body counted for this request alone;
        // otherwise it counted into the route's total as it went.
        let bytes_in = trace
            .bytes_in
            .as_ref()
            .map_or(0, |c| c.load(Ordering::Relaxed));
        let metrics = &self.runtime.metrics;
        let route = match trace.route_index.and_then(|i| self.runtime.routes.get(i)) {
            Some(r) => &*r.metrics,
            None => &metrics.no_route,
        };
        route.record(self.status, elapsed);
        route.record_bytes(bytes_in, bytes_out);
        if let Some(mut l) = self.log.take() {
            l.status = self.status;
            l.route = trace.route.take();
            l.upstream = trace.upstream.take();
            if let Some(ip) = trace.client {
                l.client = std::net::SocketAddr::new(ip, l.client.port());
            }
            l.upstream_status = trace.upstream_answer.map(|(s, _)| s);
            l.upstream_duration = trace.upstream_answer.map(|(_, d)| d);
            l.attempts = trace.attempts;
            l.bytes_out = bytes_out;
            l.bytes_in = bytes_in;
            l.duration = elapsed;
            if !self.runtime.access_log.write(l) {
                metrics.access_log_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Completion for Done {
    fn complete(mut self: Box<Self>, bytes_out: u64, _ended: bool) {
        // An upstream connection went back to its pool (or closed) with
        // the upstream body itself.
        self.finish(bytes_out);
    }
}

impl Drop for Done {
    /// Reached unfinished only when the request's future was dropped before
    /// its response existed: the client cancelled it.
    fn drop(&mut self) {
        self.finish(0);
    }
}

/// The finish phase's part at the response head: the answer (the
/// pipeline's, or its error's), with the request id and the CORS headers
/// owed; the tunnel started if the connection became one; `done` handed to
/// the response body, which completes it.
pub(super) fn respond(
    mut done: Box<Done>,
    result: Result<Response<ProxyBody>, ProxyError>,
    request_id: HeaderValue,
    grpc: bool,
) -> Response<ProxyBody> {
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(l) = done.log.as_mut() {
                l.error = Cow::Borrowed(e.reason());
            }
            e.response(grpc)
        }
    };
    let route = done
        .trace
        .route_index
        .and_then(|i| done.runtime.routes.get(i));
    if let Some(r) = route.filter(|r| !r.response_headers.is_empty()) {
        r.response_headers.apply(resp.headers_mut());
    }
    resp.headers_mut()
        .insert(done.runtime.request_id_header.clone(), request_id);
    if let Some(pending) = done.trace.cors.take() {
        if let Some(policy) = done
            .trace
            .route_index
            .and_then(|i| done.runtime.routes.get(i))
            .and_then(|r| r.cors.as_deref())
        {
            pending.finish(policy, resp.headers_mut());
        }
    }
    if let Some(t) = done.trace.tunnel.take() {
        // The tunnel holds the connection (its ConnInfo: slot, gauge) and
        // ends the request when it closes.
        done.tunnel = true;
        tunnel::spawn(t, done.conn.clone());
    }
    done.status = resp.status().as_u16();
    resp.body_mut().on_complete(done);
    resp
}

/// The request's access log line as far as known at its start.
pub(super) fn log_entry(
    req: &Request<RequestBody>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    trace_id: Option<TraceId>,
) -> LogEntry {
    let header = |n| {
        req.headers()
            .get(n)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let host = match req.uri().authority() {
        Some(a) => Some(a.as_str().to_string()),
        None => header(HOST),
    };
    LogEntry {
        time: SystemTime::now(),
        request_id: request_id.to_str().unwrap_or("").to_string(),
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
        host,
        referer: header(REFERER),
        user_agent: header(USER_AGENT),
        upstream_status: None,
        upstream_duration: None,
        attempts: 0,
        tls: tls_version(conn),
        trace_id,
        error: Cow::Borrowed(""),
    }
}

/// The TLS version of the request's connection, "" on plain HTTP.
fn tls_version(conn: &ConnInfo) -> &'static str {
    match conn.activity.tls_version.get() {
        Some(v) => v,
        // QUIC is TLS 1.3 only.
        None if conn.protocol == Some(Protocol::Http3) => "TLSv1.3",
        None => "",
    }
}
