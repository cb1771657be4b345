//! Framing checks of the admit phase that the protocol layers below do not
//! make for every front door.
//!
//! Guarantees, once [`admit`] returned `Ok`:
//! - HTTP/1.x: the request line plus the names and values of the head fit
//!   in `max_header_bytes` (else 431);
//! - HTTP/2 and HTTP/3 (RFC 9113 8.1.1 and 8.2.2, RFC 9114 4.1.2 and 4.2):
//!   no connection-specific field (Connection, Keep-Alive,
//!   Proxy-Connection, Transfer-Encoding, Upgrade, TE other than
//!   "trailers"); every Content-Length is digits only, all agree, and a body
//!   already known to be empty agrees with them; at most one Host, equal to
//!   `:authority` when both are present. The request then carries at most
//!   one Content-Length, so the upstream gets one. A violation is a 400.
//!
//! h2 enforces part of this for HTTP/2 (connection-specific fields,
//! Content-Length syntax and agreement); h3 none of it. The checks are the
//! same for both so that neither depends on what a library happens to do.

use super::error::ProxyError;
use crate::body::RequestBody;
use http::header::{CONTENT_LENGTH, HOST, TE};
use http::{HeaderMap, HeaderValue, Request, Version};
use http_body::Body;

/// Checks the request's framing as described in the module docs; may drop
/// duplicate (agreeing) Content-Length fields.
pub fn admit(req: &mut Request<RequestBody>, max_header_bytes: usize) -> Result<(), ProxyError> {
    if req.version() <= Version::HTTP_11 {
        // The header part was counted already; over the limit with the
        // request line it is 431 all the same.
        if request_line_len(req) + super::headers::head_size(req.headers()) > max_header_bytes {
            return Err(ProxyError::HeaderTooLarge);
        }
        return Ok(());
    }
    if let Some(why) = connection_specific(req.headers()) {
        return Err(ProxyError::BadRequest(why));
    }
    host_rules(req)?;
    content_length(req)
}

/// Method, target and version with their two spaces, as on the wire.
fn request_line_len<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) => s.len() + 3 + a.as_str().len(),
        (None, Some(a)) => a.as_str().len(),
        _ => 0,
    } + uri.path_and_query().map_or(0, |p| p.as_str().len());
    req.method().as_str().len() + target + " HTTP/1.1".len() + 1
}

fn connection_specific(h: &HeaderMap) -> Option<&'static str> {
    // One pass over the names (a request has a handful) rather than a
    // hashed lookup per field; the first field of this order is named.
    let mut found: Option<(u8, &'static str)> = None;
    for name in h.keys() {
        let (rank, why) = match name.as_str() {
            "connection" => (0, "connection-specific field Connection"),
            "keep-alive" => (1, "connection-specific field Keep-Alive"),
            "proxy-connection" => (2, "connection-specific field Proxy-Connection"),
            "transfer-encoding" => (3, "connection-specific field Transfer-Encoding"),
            "upgrade" => (4, "connection-specific field Upgrade"),
            "te" if h
                .get_all(TE)
                .iter()
                .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers")) =>
            {
                (5, "TE other than \"trailers\"")
            }
            _ => continue,
        };
        if found.is_none_or(|(r, _)| rank < r) {
            found = Some((rank, why));
        }
    }
    found.map(|(_, why)| why)
}

fn host_rules<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let Some(host) = hosts.next() else {
        return Ok(());
    };
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let Some(authority) = req.uri().authority() else {
        return Ok(());
    };
    // Compared as RFC 3986 6.2 normalises them: case-insensitively, and
    // with the scheme's default port the same as no port.
    let default_port = match req.uri().scheme_str() {
        Some("http") => ":80",
        _ => ":443",
    };
    let port = default_port.as_bytes();
    if !without_suffix(authority.as_str().as_bytes(), port)
        .eq_ignore_ascii_case(without_suffix(host.as_bytes(), port))
    {
        return Err(ProxyError::BadRequest("Host differs from :authority"));
    }
    Ok(())
}

fn content_length(req: &mut Request<RequestBody>) -> Result<(), ProxyError> {
    let mut fields = req.headers().get_all(CONTENT_LENGTH).iter();
    let Some(first) = fields.next() else {
        return Ok(());
    };
    let len = parse_length(first).ok_or(ProxyError::BadRequest("bad Content-Length"))?;
    let mut several = false;
    for v in fields {
        several = true;
        if parse_length(v) != Some(len) {
            return Err(ProxyError::BadRequest("differing Content-Length fields"));
        }
    }
    if len > 0 && req.body().is_end_stream() {
        return Err(ProxyError::BadRequest(
            "Content-Length does not match the body",
        ));
    }
    if several {
        req.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(())
}

fn without_suffix<'a>(v: &'a [u8], suffix: &[u8]) -> &'a [u8] {
    v.strip_suffix(suffix).unwrap_or(v)
}

/// A Content-Length value: one or more ASCII digits, nothing else.
fn parse_length(v: &HeaderValue) -> Option<u64> {
    let b = v.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, headers: &[(&str, &str)]) -> Request<RequestBody> {
        let mut b = Request::builder()
            .version(version)
            .uri("https://a.example/x");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(RequestBody::full(bytes::Bytes::from_static(b"0123456789")))
            .unwrap()
    }

    #[test]
    fn http2_and_http3_rules() {
        for v in [Version::HTTP_2, Version::HTTP_3] {
            let bad: &[&[(&str, &str)]] = &[
                &[("content-length", "10"), ("content-length", "11")],
                &[("content-length", "+10")],
                &[("content-length", "1 0")],
                &[("connection", "close")],
                &[("keep-alive", "1")],
                &[("proxy-connection", "x")],
                &[("transfer-encoding", "chunked")],
                &[("upgrade", "h2c")],
                &[("te", "gzip")],
                &[("te", "trailers"), ("te", "gzip")],
                &[("host", "a.example"), ("host", "a.example")],
                &[("host", "b.example")],
            ];
            for h in bad {
                assert!(admit(&mut req(v, h), 1 << 20).is_err(), "{v:?} {h:?}");
            }
            let mut r = req(
                v,
                &[
                    ("content-length", "10"),
                    ("content-length", "010"),
                    ("te", "Trailers"),
                    ("host", "A.example"),
                ],
            );
            assert!(admit(&mut r, 1 << 20).is_ok());
            assert_eq!(r.headers().get_all(CONTENT_LENGTH).iter().count(), 1);
            assert!(admit(&mut req(v, &[("host", "a.example:443")]), 1 << 20).is_ok());
            assert!(admit(&mut req(v, &[("host", "a.example:8443")]), 1 << 20).is_err());
        }
    }

    #[test]
    fn request_line_counts_on_http1() {
        let uri = format!("/{}", "a".repeat(3000));
        let mut r = Request::builder()
            .uri(uri.as_str())
            .body(RequestBody::empty())
            .unwrap();
        assert!(matches!(
            admit(&mut r, 2048),
            Err(ProxyError::HeaderTooLarge)
        ));
        assert!(admit(&mut r, 4096).is_ok());
    }
}
