//! The upstream head: the request as the server gets it.
//!
//! Guarantees (the client's hop-by-hop headers are gone already: see the
//! authenticate phase):
//! - the request-only headers are removed; x-forwarded-* and the request id
//!   are set; a request in TLS early data says so (`Early-Data: 1`, RFC
//!   8470 5.1); Host is the client's host (the absolute-form or :authority
//!   one when given);
//! - a WebSocket upgrade is asked for again, hop by hop, with the client's
//!   protocol;
//! - the route's `request_headers` rules apply after all of that (they
//!   cannot name a header set above: see `crate::config::headers`);
//! - the target is origin-form for an HTTP/1.1 upstream (the client's own
//!   URI when nothing changes), absolute for HTTP/2 (which needs :scheme
//!   and :authority), without the route's prefix when it strips it; the
//!   version is the upstream's.

use super::conn::EarlyData;
use super::context::RequestCtx;
use super::error::ProxyError;
use super::headers;
use super::routing::Route;
use crate::config::UpstreamProtocol;
use crate::upstream::UpstreamPool;
use http::header::{CONNECTION, HOST, UPGRADE};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri, Version};

/// Rewrites `parts` into the upstream head; `websocket`: the upgrade to ask
/// for. Returns the Sec-WebSocket-Accept the server's 101 must carry (when
/// asking for an upgrade with a key).
pub(super) fn build(
    parts: &mut Parts,
    ctx: &mut RequestCtx<'_>,
    route: &Route,
    pool: &UpstreamPool,
    websocket: Option<HeaderValue>,
) -> Result<Option<HeaderValue>, ProxyError> {
    let host = ctx.host.as_ref();
    headers::strip_request_only(&mut parts.headers);
    let conn = ctx.conn;
    if conn.listener.trusted_proxies.is_empty() {
        headers::set_forwarded(&mut parts.headers, &conn.client_ip, conn.https, host);
    } else {
        let peer = headers::Peer {
            ip: conn.peer.ip(),
            value: &conn.client_ip,
            https: conn.https,
            trusted: &conn.listener.trusted_proxies,
        };
        let client = headers::set_forwarded_trusting(&mut parts.headers, peer, host);
        ctx.trace.client = Some(client);
    }
    parts.headers.insert(
        ctx.runtime.request_id_header.clone(),
        ctx.request_id.clone(),
    );
    if parts.extensions.get::<EarlyData>().is_some() {
        // RFC 8470 5.1: an intermediary forwarding early data says so, so
        // the origin can answer 425 itself.
        parts
            .headers
            .insert("early-data", HeaderValue::from_static("1"));
    }
    if let Some(h) = host {
        if parts.headers.get(HOST) != Some(h) {
            parts.headers.insert(HOST, h.clone());
        }
    }
    if !route.request_headers.is_empty() {
        route.request_headers.apply(&mut parts.headers);
    }
    // What the server's 101 must carry for the tunnel to open.
    let websocket_accept = websocket.as_ref().and_then(|_| {
        parts
            .headers
            .get("sec-websocket-key")
            .map(headers::websocket_accept)
    });
    if let Some(proto) = websocket {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, proto);
    }
    parts.uri = upstream_uri(std::mem::take(&mut parts.uri), route, pool, host)?;
    parts.version = match pool.definition.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    Ok(websocket_accept)
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
