//! The request pipeline, one for every front door (HTTP/1.1, HTTP/2,
//! HTTP/3).
//!
//! Phases, in order (the order is the architecture), each a function over
//! one request context ([`context`]: the config loaded once, the
//! connection, the request id, what the phases learn):
//! 1. **admit** ([`admit`]): load the runtime once; pick the
//!    request id; check the head (size, framing, Host rules, 425 for a
//!    non-GET/HEAD request in TLS early data); refuse a miscased standard
//!    method; normalise the path ([`path`]): what routing matches and what
//!    goes upstream;
//! 2. **route** ([`phases`]): find the route by listener, host, path and
//!    method;
//! 3. **cors**: on a route with a CORS policy, answer preflights at the
//!    edge and note what the response owes the request's origin
//!    ([`cors`]);
//! 4. **authenticate**: the client's hop-by-hop headers (and any upgrade
//!    but WebSocket), every spelling of any policy's claim headers and the
//!    `_` spellings of the headers the proxy sets are removed first, so
//!    nothing the client sends can remove or fake a header the proxy sets;
//!    then, on a route with `auth`, the route's JWT policy checks the
//!    bearer token and sets the claim headers (`crate::auth`);
//! 5. **respond** (a `respond` route) or **forward** ([`forward`]): build
//!    the upstream head ([`upstream_head`]: hop-by-hop, x-forwarded-*,
//!    Host, path), choose a server round-robin, send on a pooled
//!    connection, retry where safe ([`replay`]), bounded by the route's
//!    timeout; an accepted WebSocket upgrade becomes a [`tunnel`];
//! 6. **finish** ([`finish`]): every response, the proxy's own included,
//!    carries the request id (and the CORS headers its route's policy owes
//!    it); when its body ends the upstream connection returns to its pool,
//!    the request is counted in the route's metrics and the access log line
//!    is written. A request dropped before it has a response (the client
//!    cancelled it) is finished too, with status 499.
//!
//! The front doors hand the pipeline one [`ConnInfo`] per connection and
//! what they know about a request as request extensions ([`conn`]).
//!
//! Errors of any phase are a [`ProxyError`], answered by one function.
//!
//! Logs: each line the pipeline writes about one request (an upstream
//! failure, a retry, a refused token) carries `request_id` as a field of
//! its own. There is no per-request span: entering and leaving one on every
//! poll, and formatting its field at every request, cost more than the few
//! lines that need the id.

mod admit;
pub mod conn;
mod context;
pub mod cors;
pub mod error;
mod finish;
mod forward;
mod framing;
pub mod header_rules;
pub mod headers;
pub mod path;
mod phases;
mod replay;
pub mod routing;
pub mod runtime;
mod tunnel;
mod upstream_head;

pub use conn::{ConnActivity, ConnInfo, EarlyData, LengthAndChunked, ListenerFacts, Shared};
pub use finish::CLIENT_CLOSED;

use crate::body::{ProxyBody, RequestBody};
use crate::observe::metrics::ConnProtocol;
use context::RequestCtx;
use error::ProxyError;
use finish::Done;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use routing::Action;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

/// Serves one request from any front door. Never fails: errors become the
/// proxy's own responses.
///
/// The finish phase ([`Done`]) exists from the first line: if the front
/// door drops this future before a response exists (an HTTP/2 or HTTP/3
/// stream reset, a closed HTTP/1.1 connection), dropping it logs and counts
/// the request as [`CLIENT_CLOSED`] and gives back what it held (the
/// connection's in-flight count; an upstream exchange under way is dropped
/// with the pipeline, which aborts it).
///
/// The request comes boxed: it is 344 bytes, and each layer of the pipeline
/// that took it by value copied it (about 600 instructions per request).
pub async fn handle(
    mut req: Box<Request<RequestBody>>,
    conn: Arc<ConnInfo>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    conn.activity.request_started();
    conn.gauge.set_protocol(ConnProtocol::of(req.version()));
    let runtime = conn.shared.runtime.load_full();

    let request_id = admit::request_id(&req, &runtime);
    let grpc = is_grpc(&req);
    let trace_id = crate::observe::trace::check(req.headers_mut());
    let log = runtime
        .access_log
        .enabled()
        .then(|| finish::log_entry(&req, &conn, &request_id, trace_id));
    let mut done = Done::new(conn, runtime, log, start);
    let d = &mut *done;
    let ctx = RequestCtx {
        runtime: &d.runtime,
        conn: &d.conn,
        request_id: &request_id,
        count_bytes: d.log.is_some(),
        trace: &mut d.trace,
        host: None,
        websocket: None,
    };
    // The pipeline's future is several KB, and the front doors move the
    // request's future around.
    let result = pin_in_place!(serve(req, ctx)).await;
    Ok(finish::respond(done, result, request_id, grpc))
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The phases from admit to respond or forward, in order.
async fn serve(
    mut req: Box<Request<RequestBody>>,
    mut ctx: RequestCtx<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    admit::admit(&mut req, &mut ctx)?;
    let (route, preflight) = phases::route(&req, &mut ctx)?;
    if let Some(answer) = phases::cors(&req, &mut ctx, route, preflight)? {
        return Ok(answer);
    }
    phases::authenticate(&mut req, &mut ctx, route).await?;
    match &route.action {
        Action::Respond(canned) => phases::respond(&req, &ctx, canned),
        Action::Forward(pool) => forward::forward(req, &mut ctx, route, pool).await,
    }
}
