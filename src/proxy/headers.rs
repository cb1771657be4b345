//! Header rules of forwarding: hop-by-hop removal, x-forwarded-*, limits.

use http::header::{
    CONNECTION, EXPECT, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers (RFC 9110 7.6.1): Connection and the headers
/// it names, Keep-Alive, Proxy-*, TE (except "trailers", which gRPC needs),
/// Trailer, Transfer-Encoding and Upgrade.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the names decides.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    if h.contains_key(CONNECTION) {
        let listed: Vec<HeaderValue> = h.get_all(CONNECTION).iter().cloned().collect();
        h.remove(CONNECTION);
        for v in listed {
            if let Ok(s) = v.to_str() {
                for name in s.split(',') {
                    let name = name.trim();
                    if !name.is_empty() {
                        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                            h.remove(n);
                        }
                    }
                }
            }
        }
    }
    if h.contains_key(TE) {
        let trailers = h.get_all(TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        h.remove(TE);
        if trailers {
            h.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &TRANSFER_ENCODING,
        &TRAILER,
        &UPGRADE,
        &PROXY_AUTHORIZATION,
        &PROXY_AUTHENTICATE,
    ] {
        h.remove(name);
    }
}

fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == CONNECTION
        || n == TE
        || n == TRANSFER_ENCODING
        || n == TRAILER
        || n == UPGRADE
        || n == KEEP_ALIVE
        || n.as_str().starts_with("proxy-")
}

/// Removes what a client sends that the proxy itself answers (Expect is
/// answered by the proxy's own 100 Continue).
pub fn strip_request_only(h: &mut HeaderMap) {
    h.remove(EXPECT);
}

/// Sets x-forwarded-for (appended), x-forwarded-proto and x-forwarded-host
/// (replacing any client copies).
/// `client` is the client's IP as a header value (made once per connection).
pub fn set_forwarded(
    h: &mut HeaderMap,
    client: &HeaderValue,
    https: bool,
    host: Option<&HeaderValue>,
) {
    let appended = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            let mut s = String::with_capacity(prev.len() + 2 + client.len());
            s.push_str(prev);
            s.push_str(", ");
            s.push_str(client.to_str().unwrap_or(""));
            HeaderValue::from_str(&s).ok()
        }
        _ => None,
    };
    match appended {
        Some(v) => {
            h.remove(&X_FORWARDED_FOR);
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
        None => {
            h.insert(X_FORWARDED_FOR.clone(), client.clone());
        }
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    match host {
        Some(v) => {
            h.insert(X_FORWARDED_HOST.clone(), v.clone());
        }
        None => {
            h.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Names plus values of every header, the measure max_header_bytes limits.
pub fn head_size(h: &HeaderMap) -> usize {
    h.iter().map(|(n, v)| n.as_str().len() + v.len()).sum()
}

/// Checks RFC 9112 Host rules for an HTTP/1.x request: exactly one Host
/// header on HTTP/1.1 (none allowed on 1.0), never two.
pub fn host_header_error(h: &HeaderMap, version: http::Version) -> Option<&'static str> {
    let mut hosts = h.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some("more than one Host header"),
        (None, _) if version == http::Version::HTTP_11 => Some("missing Host header"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[TE], "trailers");
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        set_forwarded(
            &mut h,
            &HeaderValue::from_static("127.0.0.1"),
            true,
            Some(&HeaderValue::from_static("a.example")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.example");
    }

    #[test]
    fn host_rules() {
        let mut h = HeaderMap::new();
        assert!(host_header_error(&h, http::Version::HTTP_11).is_some());
        assert!(host_header_error(&h, http::Version::HTTP_10).is_none());
        h.append(HOST, HeaderValue::from_static("a"));
        assert!(host_header_error(&h, http::Version::HTTP_11).is_none());
        h.append(HOST, HeaderValue::from_static("b"));
        assert!(host_header_error(&h, http::Version::HTTP_11).is_some());
    }
}
