//! The phases between admit and forward: route, cors, authenticate, and
//! the answer of a `respond` route.

use super::context::RequestCtx;
use super::cors;
use super::error::ProxyError;
use super::headers;
use super::path;
use super::routing::{self, Canned, Route};
use crate::body::{ProxyBody, RequestBody};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderValue, Method, Request, Response};
use std::borrow::Cow;

/// The route phase: the route for the request's listener, host, path and
/// method (a CORS preflight's by the method it announces, when that finds
/// a route with a policy: see [`cors`]), and the method a preflight
/// announces. A path whose parameters (`;x`) change the route is refused:
/// upstreams that drop them (`/admin;x/y` is `/admin/y` to Tomcat) must
/// not reach a route, or miss an auth, that the path without them would
/// not.
pub(super) fn route<'a>(
    req: &Request<RequestBody>,
    ctx: &mut RequestCtx<'a>,
) -> Result<(&'a Route, Option<Method>), ProxyError> {
    let (runtime, conn) = (ctx.runtime, ctx.conn);
    let listener = &conn.listener.name;
    let host = ctx
        .host
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(routing::route_host);
    let path = req.uri().path();
    let preflight = cors::preflight_method(req);
    let find = |path: &str| {
        preflight
            .as_ref()
            .and_then(|m| runtime.routes.find_indexed(listener, host, path, m))
            .filter(|(_, r)| r.cors.is_some())
            .or_else(|| {
                runtime
                    .routes
                    .find_indexed(listener, host, path, req.method())
            })
    };
    let (index, route) = find(path).ok_or(ProxyError::NotFound)?;
    if let Cow::Owned(plain) =
        path::without_params(path).map_err(|e| ProxyError::BadRequest(e.reason()))?
    {
        if find(&plain).map(|(i, _)| i) != Some(index) {
            return Err(ProxyError::BadRequest("path parameters change the route"));
        }
    }
    ctx.trace.route = Some(route.name.clone());
    ctx.trace.route_index = Some(index);
    Ok((route, preflight))
}

/// The cors phase, on a route with a CORS policy: a preflight
/// (`preflight`: the method it announces) is answered here; for any other
/// request the finish phase is told what the response owes its origin.
pub(super) fn cors(
    req: &Request<RequestBody>,
    ctx: &mut RequestCtx<'_>,
    route: &Route,
    preflight: Option<Method>,
) -> Result<Option<Response<ProxyBody>>, ProxyError> {
    let Some(policy) = &route.cors else {
        return Ok(None);
    };
    match &preflight {
        Some(method) => cors::preflight(policy, req, method).map(Some),
        None => {
            ctx.trace.cors = Some(cors::actual(policy, req));
            Ok(None)
        }
    }
}

/// The authenticate phase: first what the client sent is cleaned, so that
/// its Connection header cannot remove what the proxy sets later, nor a
/// header it sends pass for one the proxy sets (its hop-by-hop headers, any
/// upgrade but WebSocket, every spelling of any policy's claim headers, the
/// `_` spellings of the headers the proxy sets; the same, and more, of its
/// trailers when the body brings some); then, on a route with
/// `auth`, the route's JWT policy checks the bearer token and sets the
/// claim headers.
pub(super) async fn authenticate(
    req: &mut Request<RequestBody>,
    ctx: &mut RequestCtx<'_>,
    route: &Route,
) -> Result<(), ProxyError> {
    ctx.websocket = headers::websocket_upgrade(req.version(), req.headers());
    headers::strip_client_hop_by_hop(
        req.headers_mut(),
        route.auth.as_ref().map(|_| &http::header::AUTHORIZATION),
    );
    ctx.runtime.claim_headers.strip(req.headers_mut());
    headers::strip_underscore_spellings(req.headers_mut(), &ctx.runtime.request_id_header);
    if !http_body::Body::is_end_stream(req.body()) {
        req.body_mut()
            .filter_trailers(ctx.runtime.trailer_rules.clone());
    }
    if let Some(policy) = &route.auth {
        if let Err(f) = policy.authenticate(req.headers_mut()).await {
            if let crate::auth::AuthFailure::Invalid(why) = f {
                tracing::debug!(request_id = %super::context::RequestIdField(ctx.request_id), policy = %policy.name, reason = why, "token refused");
            }
            return Err(f.into());
        }
    }
    Ok(())
}

/// The answer of a `respond` route: its status, content type, headers
/// and `Location` (the template expanded for the request's host and
/// path), the body left out for HEAD, its length given.
pub(super) fn respond(
    req: &Request<RequestBody>,
    ctx: &RequestCtx<'_>,
    canned: &Canned,
) -> Result<Response<ProxyBody>, ProxyError> {
    let head = req.method() == Method::HEAD;
    let mut r = Response::new(if head {
        ProxyBody::empty()
    } else {
        ProxyBody::full(canned.body.clone())
    });
    *r.status_mut() = canned.status;
    let h = r.headers_mut();
    for (n, v) in &canned.headers {
        h.insert(n.clone(), v.clone());
    }
    if let Some(t) = &canned.location {
        let host = ctx
            .host
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(routing::route_host)
            .unwrap_or("");
        let location = t
            .expand(host, req.uri())
            .ok_or(ProxyError::BadRequest("no host to redirect to"))?;
        h.insert(LOCATION, location);
    }
    h.insert(CONTENT_TYPE, canned.content_type.clone());
    if head {
        h.insert(CONTENT_LENGTH, HeaderValue::from(canned.body.len()));
    }
    Ok(r)
}
