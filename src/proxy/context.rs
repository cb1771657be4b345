//! The request context: what every phase of one request reads, and what
//! the phases learn on the way for the finish phase.
//!
//! Guarantees: the runtime a request uses is the one loaded when it started
//! ([`RequestCtx::runtime`]), for every phase; the context borrows what the
//! finish phase owns, so building it costs no allocation.

use super::conn::ConnInfo;
use super::cors;
use super::runtime::Runtime;
use super::tunnel::Tunnel;
use http::HeaderValue;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// One request on its way through the phases.
pub(super) struct RequestCtx<'a> {
    /// What the request reads of the config in force: loaded once, when
    /// it started.
    pub runtime: &'a Runtime,
    pub conn: &'a ConnInfo,
    pub request_id: &'a HeaderValue,
    /// The access log wants the request body's bytes counted.
    pub count_bytes: bool,
    /// What the finish phase needs to know.
    pub trace: &'a mut Trace,
    /// admit: the host the client named (the absolute-form target or
    /// :authority, else the Host header), as the upstream gets it.
    pub host: Option<HeaderValue>,
    /// authenticate: the protocol of the WebSocket upgrade the request
    /// asks for (the only upgrade tunnelled).
    pub websocket: Option<HeaderValue>,
}

/// What the pipeline learned on the way, for the finish phase.
#[derive(Default)]
pub(super) struct Trace {
    pub route: Option<Arc<str>>,
    /// Where the route is in `runtime.routes`.
    pub route_index: Option<usize>,
    /// What the route's CORS policy owes the response.
    pub cors: Option<cors::Pending>,
    pub upstream: Option<Arc<str>>,
    /// The status of the upstream's answer, and the time from sending the
    /// attempt that got it to its head.
    pub upstream_answer: Option<(u16, Duration)>,
    /// Attempts sent upstream, retries included.
    pub attempts: u32,
    /// The request body's bytes, counted for this request alone (for its
    /// access log line); without a log they count into the route's total.
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// The connection is becoming a tunnel (WebSocket): both sides'
    /// upgrades, for the tunnel task that then ends the request.
    pub tunnel: Option<Tunnel>,
    /// The client address trusted_proxies made out of X-Forwarded-For,
    /// when it is not the connection's peer.
    pub client: Option<std::net::IpAddr>,
}

/// Shows a request id in logs (ids are ASCII by construction).
pub(super) struct RequestIdField<'a>(pub &'a HeaderValue);

impl std::fmt::Display for RequestIdField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.to_str().unwrap_or("-"))
    }
}
