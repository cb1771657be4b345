//! The route table: which route serves a request.
//!
//! Precedence (SPEC): the most specific host first (exact, then `*.suffix`
//! with longer suffixes first, then any host), then the longest
//! `path_prefix`, then file order. The table is sorted once at build time, so
//! a lookup is a scan that stops at the first route that matches listener,
//! host, path and method.

use crate::observe::metrics::RouteMetrics;
use crate::proxy::cors::CorsPolicy;
use crate::proxy::header_rules::{HeaderRules, Template};
use crate::upstream::UpstreamPool;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use std::sync::Arc;
use std::time::Duration;

/// How a route matches the request's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lower-case host name without port.
    Exact(String),
    /// Lower-case suffix including the leading dot (".example.com").
    Suffix(String),
}

impl HostMatch {
    pub fn parse(s: &str) -> HostMatch {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() {
            HostMatch::Any
        } else if let Some(rest) = s.strip_prefix('*') {
            HostMatch::Suffix(rest.to_string())
        } else {
            HostMatch::Exact(s)
        }
    }

    fn matches(&self, host: Option<&str>) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => host.is_some_and(|x| x.eq_ignore_ascii_case(h)),
            HostMatch::Suffix(sfx) => host.is_some_and(|x| {
                x.len() > sfx.len()
                    && x.is_char_boundary(x.len() - sfx.len())
                    && x[x.len() - sfx.len()..].eq_ignore_ascii_case(sfx)
            }),
        }
    }

    /// Sort key: smaller is more specific.
    fn rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            HostMatch::Exact(_) => (0, std::cmp::Reverse(0)),
            HostMatch::Suffix(s) => (1, std::cmp::Reverse(s.len())),
            HostMatch::Any => (2, std::cmp::Reverse(0)),
        }
    }
}

/// What a route does with a request it matched.
pub enum Action {
    Forward(Arc<UpstreamPool>),
    Respond(Canned),
}

/// The answer of a `respond` route.
pub struct Canned {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: HeaderValue,
    /// respond.headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// respond.location, expanded per request.
    pub location: Option<Template>,
}

/// One compiled `[[route]]`.
pub struct Route {
    pub name: Arc<str>,
    pub listeners: Vec<String>,
    pub host: HostMatch,
    pub path_prefix: String,
    pub methods: Vec<Method>,
    pub action: Action,
    pub strip_prefix: bool,
    pub timeout: Duration,
    pub retries: u32,
    /// The route's JWT policy, if it has `auth`.
    pub auth: Option<Arc<crate::auth::JwtPolicy>>,
    /// portico_requests_total and _duration_seconds of this route.
    pub metrics: Arc<RouteMetrics>,
    /// The route's `[cors.NAME]` policy, if any.
    pub cors: Option<Arc<CorsPolicy>>,
    /// request_headers: applied last to the upstream request.
    pub request_headers: HeaderRules,
    /// response_headers: applied to every answer of the route (the
    /// upstream's, the `respond` one, the proxy's own errors).
    pub response_headers: HeaderRules,
}

impl Route {
    fn matches(&self, listener: &str, host: Option<&str>, path: &str, method: &Method) -> bool {
        (self.listeners.is_empty() || self.listeners.iter().any(|l| l == listener))
            && path.starts_with(self.path_prefix.as_str())
            && self.host.matches(host)
            && (self.methods.is_empty() || self.methods.contains(method))
    }
}

/// All routes in precedence order.
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Sorts routes by precedence; `routes` must be in file order.
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let mut indexed: Vec<(usize, Route)> = routes.into_iter().enumerate().collect();
        indexed.sort_by(|(ia, a), (ib, b)| {
            a.host
                .rank()
                .cmp(&b.host.rank())
                .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
                .then(ia.cmp(ib))
        });
        RouteTable {
            routes: indexed.into_iter().map(|(_, r)| r).collect(),
        }
    }

    /// The route for a request, if any. `host` is without port.
    pub fn find(
        &self,
        listener: &str,
        host: Option<&str>,
        path: &str,
        method: &Method,
    ) -> Option<&Route> {
        self.find_indexed(listener, host, path, method)
            .map(|(_, r)| r)
    }

    /// As [`RouteTable::find`], with the route's place for [`RouteTable::get`].
    pub fn find_indexed(
        &self,
        listener: &str,
        host: Option<&str>,
        path: &str,
        method: &Method,
    ) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(listener, host, path, method))
    }

    /// The route at a place [`RouteTable::find_indexed`] returned.
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

/// The host a request routes on, from its Host header or authority
/// (`host[:port]`): port removed, IPv6 brackets kept, one trailing dot
/// removed (`a.example.` is the fully qualified `a.example`, and upstreams
/// read it so). `None` when the value is not `host[:port]` (RFC 9110 7.2):
/// userinfo (`a@b`), a second port, a `/`, `,`, `%` or space, an empty
/// label: spellings that routing would read as one host and an upstream's
/// URL parser as another.
pub fn route_host(h: &str) -> Option<&str> {
    let b = h.as_bytes();
    if b.first() == Some(&b'[') {
        return bracketed_host(h);
    }
    // One pass (it runs on every request): labels, then `:port`.
    let mut label = 0usize;
    let mut end = b.len();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'.' if label == 0 => return None,
            b'.' => label = 0,
            b':' => {
                if !b[i + 1..].iter().all(u8::is_ascii_digit) {
                    return None;
                }
                end = i;
                break;
            }
            c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'~') => label += 1,
            _ => return None,
        }
    }
    // An empty Host (allowed by RFC 9112 3.2 when the target has no
    // authority) names no host.
    let host = &h[..end];
    Some(host.strip_suffix('.').unwrap_or(host))
}

/// [`route_host`] of an IPv6 literal: `[hex:...]`, then `:port` or nothing.
fn bracketed_host(h: &str) -> Option<&str> {
    let close = h.find(']')?;
    let (host, port) = h.split_at(close + 1);
    if !(port.is_empty() || port.starts_with(':') && port[1..].bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let inner = &host[1..close];
    (!inner.is_empty()
        && inner
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')))
    .then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: &str, prefix: &str, methods: &[&str]) -> Route {
        Route {
            name: Arc::from(name),
            listeners: vec![],
            host: HostMatch::parse(host),
            path_prefix: prefix.into(),
            methods: methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                .collect(),
            action: Action::Respond(Canned {
                status: StatusCode::OK,
                body: Bytes::new(),
                content_type: HeaderValue::from_static("text/plain"),
                headers: Vec::new(),
                location: None,
            }),
            strip_prefix: false,
            timeout: Duration::from_secs(1),
            retries: 0,
            auth: None,
            metrics: Default::default(),
            cors: None,
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
        }
    }

    fn find<'a>(t: &'a RouteTable, host: Option<&str>, path: &str) -> Option<&'a str> {
        t.find("l", host, path, &Method::GET).map(|r| &*r.name)
    }

    #[test]
    fn host_specificity_beats_path_length() {
        let t = RouteTable::new(vec![
            route("any-long", "", "/api/v1/", &[]),
            route("wild", "*.example.com", "/", &[]),
            route("exact", "api.example.com", "/", &[]),
            route("wild-deeper", "*.eu.example.com", "/", &[]),
        ]);
        assert_eq!(
            find(&t, Some("api.example.com"), "/api/v1/x"),
            Some("exact")
        );
        assert_eq!(find(&t, Some("API.Example.COM"), "/"), Some("exact"));
        assert_eq!(find(&t, Some("www.example.com"), "/api/v1/x"), Some("wild"));
        assert_eq!(find(&t, Some("a.eu.example.com"), "/"), Some("wild-deeper"));
        assert_eq!(find(&t, Some("example.com"), "/api/v1/x"), Some("any-long"));
        assert_eq!(find(&t, Some("example.com"), "/other"), None);
    }

    #[test]
    fn longest_prefix_then_file_order() {
        let t = RouteTable::new(vec![
            route("root", "", "/", &[]),
            route("api", "", "/api", &[]),
            route("api2", "", "/api", &[]),
        ]);
        assert_eq!(find(&t, None, "/apiv2"), Some("api"));
        assert_eq!(find(&t, None, "/x"), Some("root"));
    }

    #[test]
    fn methods_filter() {
        let t = RouteTable::new(vec![
            route("post", "", "/", &["POST"]),
            route("all", "", "/", &[]),
        ]);
        assert_eq!(find(&t, None, "/"), Some("all"));
        assert_eq!(
            t.find("l", None, "/", &Method::POST).map(|r| &*r.name),
            Some("post")
        );
    }

    #[test]
    fn route_hosts() {
        for (h, want) in [
            ("a.example.com", "a.example.com"),
            ("a.example.com:8443", "a.example.com"),
            ("a.example.com:", "a.example.com"),
            ("a.example.com.", "a.example.com"),
            ("A.Example.com.:80", "A.Example.com"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("[::ffff:127.0.0.1]:", "[::ffff:127.0.0.1]"),
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.1:18443", "127.0.0.1"),
            ("a-b_c~d.e.:1", "a-b_c~d.e"),
            (":80", ""),
            ("my_host", "my_host"),
            ("", ""),
        ] {
            assert_eq!(route_host(h), Some(want), "{h}");
        }
        for h in [
            "evil@a.example.com",
            "a.example.com:80:80",
            "a.example.com, b",
            "b/a.example.com",
            "a%2eexample.com",
            "a..example.com",
            ".a.example.com",
            "a.example.com..",
            ".",
            "a b",
            "[::1",
            "[]",
            "[::1]x",
            "[a@b]",
            "a.example.com:8x",
            "a.example.com:80:",
            "a.example.com:-1",
            "a.exaémple.com",
            "a.example.com.:80.",
            "..",
            ".:80",
            "[::1]:80:80",
            "[::1]]",
        ] {
            assert_eq!(route_host(h), None, "{h}");
        }
    }
}
