//! The admit phase: what a request must be before it is routed.
//!
//! Guarantees, once [`admit`] returned `Ok`:
//! - the head fits `max_header_bytes` (else 431) and its framing is sound
//!   ([`framing`](super::framing));
//! - a request in TLS early data ([`EarlyData`]) is a GET or HEAD (else 425);
//! - HTTP/1.x: the Host rules hold and the raw head did not carry both
//!   Content-Length and Transfer-Encoding ([`LengthAndChunked`]) (else 400);
//! - the method is not a miscased standard one (else 400);
//! - the path is normalised ([`path`](super::path)): what routing matches
//!   and what goes upstream;
//! - the context knows the host the client named.

use super::conn::{EarlyData, LengthAndChunked};
use super::context::RequestCtx;
use super::error::ProxyError;
use super::framing;
use super::headers;
use super::path;
use super::routing;
use super::runtime::Runtime;
use crate::body::RequestBody;
use crate::observe::request_id;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Uri, Version};
use std::borrow::Cow;

/// The request's id: the client's, when trusted and well formed, else a
/// new one.
pub(super) fn request_id<B>(req: &Request<B>, runtime: &Runtime) -> HeaderValue {
    let mut id = match req.headers().get(&runtime.request_id_header) {
        Some(v) if runtime.trust_request_id && request_id::is_well_formed(v.as_bytes()) => {
            v.clone()
        }
        _ => request_id::generate(),
    };
    // A value unique to each request: HPACK (HTTP/2 clients and upstreams)
    // then sends it as a literal that is never indexed. Indexed, every id
    // entered the dynamic table, evicting what repeats (and each new one
    // was compared with all the ids still in it: 2 % of CPU under HTTP/2
    // load).
    id.set_sensitive(true);
    id
}

/// The admit phase (see the module docs).
pub(super) fn admit(
    req: &mut Request<RequestBody>,
    ctx: &mut RequestCtx<'_>,
) -> Result<(), ProxyError> {
    let max_header_bytes = ctx.conn.listener.max_header_bytes;
    if headers::head_size(req.headers()) > max_header_bytes {
        return Err(ProxyError::HeaderTooLarge);
    }
    framing::admit(req, max_header_bytes)?;
    let early = req.extensions().get::<EarlyData>().is_some();
    if early && !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(ProxyError::TooEarly);
    }
    if req.version() <= Version::HTTP_11 {
        if let Some(why) = headers::host_header_error(req.headers(), req.version()) {
            return Err(ProxyError::BadRequest(why));
        }
        if req.headers().contains_key(http::header::TRANSFER_ENCODING)
            && req.extensions().get::<LengthAndChunked>().is_some()
        {
            return Err(ProxyError::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
    }
    if headers::miscased_method(req.method()) {
        return Err(ProxyError::BadRequest("method in the wrong case"));
    }
    normalize_path(req)?;
    ctx.host = named_host(req)?;
    Ok(())
}

/// Normalises the request's path, keeping its query.
fn normalize_path<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    // "*" (OPTIONS *) and "" (CONNECT's authority-form) have no path to
    // normalise; the access log keeps the path as the client sent it.
    if matches!(req.uri().path(), "*" | "") {
        return Ok(());
    }
    let bad = || ProxyError::BadRequest("bad request target");
    if let Cow::Owned(mut p) =
        path::normalize(req.uri().path()).map_err(|e| ProxyError::BadRequest(e.reason()))?
    {
        if let Some(q) = req.uri().query() {
            p.push('?');
            p.push_str(q);
        }
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(p).map_err(|_| bad())?);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| bad())?;
    }
    Ok(())
}

/// The host the client named: the absolute-form target (HTTP/1.1) or
/// :authority (HTTP/2, HTTP/3), otherwise the Host header; checked to be
/// one routing can match.
fn named_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let host = match req.uri().authority() {
        Some(a) => Some(
            HeaderValue::from_str(a.as_str())
                .map_err(|_| ProxyError::BadRequest("bad authority"))?,
        ),
        None => req.headers().get(HOST).cloned(),
    };
    if let Some(v) = &host {
        v.to_str()
            .ok()
            .and_then(routing::route_host)
            .ok_or(ProxyError::BadRequest("bad Host header"))?;
    }
    Ok(host)
}
