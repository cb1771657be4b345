//! CORS at the edge: the pipeline's "cors" phase, right after route and
//! before auth.
//!
//! Only routes with a `cors = "NAME"` policy are touched; on the others a
//! preflight is an ordinary OPTIONS request and goes upstream.
//!
//! On a route with a policy:
//! - a **preflight** (OPTIONS with `Origin` and
//!   `Access-Control-Request-Method`) is answered here and never forwarded:
//!   `204` with `Access-Control-Allow-Origin`, `-Allow-Methods`,
//!   `-Allow-Headers` (when the policy lists any), `-Max-Age`,
//!   `-Allow-Credentials: true` (when allowed) and `Vary: Origin`; or `403`
//!   when the origin, the requested method or one of the requested headers
//!   is not allowed. A preflight is routed by the method it announces, so
//!   the route that will serve the actual request (say one matching only
//!   POST) is the one whose policy answers it;
//! - any other request from an allowed origin gets, on whatever answers it
//!   (the upstream, a `respond` route, the proxy's own errors),
//!   `Access-Control-Allow-Origin`, `-Allow-Credentials` and
//!   `-Expose-Headers` as the policy says; a request without `Origin` or from
//!   another origin gets none of them (those an upstream set are removed: the
//!   route's policy is the only one the client sees);
//! - every response of the route carries `Vary: Origin`, since its headers
//!   depend on the Origin;
//! - `Access-Control-Allow-Origin` is the request's own origin, or `*` for
//!   a policy with `allow_origins = ["*"]`, which config validation never
//!   lets pair with credentials.
//!
//! Origins compare ASCII case-insensitively against the configured list; all
//! header values are built once, with the snapshot.

use super::error::ProxyError;
use crate::body::ProxyBody;
use crate::config::{ConfigError, CorsConfig, LoadedConfig};
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};

/// One compiled `[cors.NAME]` policy.
#[derive(Debug)]
pub struct CorsPolicy {
    any_origin: bool,
    /// Allowed origins, lower-case.
    origins: Vec<String>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// Allowed request headers, lower-case.
    headers: Vec<HeaderName>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

fn header_true() -> HeaderValue {
    HeaderValue::from_static("true")
}

fn star() -> HeaderValue {
    HeaderValue::from_static("*")
}

fn vary_origin() -> HeaderValue {
    HeaderValue::from_static("Origin")
}

impl CorsPolicy {
    /// Compiles a validated `[cors.NAME]` table.
    pub fn build(lc: &LoadedConfig, name: &str, c: &CorsConfig) -> Result<CorsPolicy, ConfigError> {
        let bad = |at: &toml::Spanned<String>| {
            lc.error_at(
                at,
                format!("cors.{name}: \"{}\" is not allowed here", at.get_ref()),
            )
        };
        let list = |items: &[toml::Spanned<String>]| -> Result<Option<HeaderValue>, ConfigError> {
            if items.is_empty() {
                return Ok(None);
            }
            let joined = items
                .iter()
                .map(|i| i.get_ref().as_str())
                .collect::<Vec<_>>()
                .join(", ");
            HeaderValue::from_str(&joined)
                .map(Some)
                .map_err(|_| bad(&items[0]))
        };
        let methods = c
            .allow_methods
            .iter()
            .map(|m| Method::from_bytes(m.get_ref().as_bytes()).map_err(|_| bad(m)))
            .collect::<Result<Vec<_>, _>>()?;
        let headers = c
            .allow_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.get_ref().to_ascii_lowercase().as_bytes())
                    .map_err(|_| bad(h))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CorsPolicy {
            any_origin: c.any_origin(),
            origins: c
                .allow_origins
                .iter()
                .map(|o| o.get_ref().to_ascii_lowercase())
                .collect(),
            methods,
            allow_methods: list(&c.allow_methods)?.unwrap_or_else(|| HeaderValue::from_static("")),
            headers,
            allow_headers: list(&c.allow_headers)?,
            expose_headers: list(&c.expose_headers)?,
            credentials: *c.allow_credentials.get_ref(),
            max_age: HeaderValue::from(c.max_age.0.as_secs()),
        })
    }

    /// The Access-Control-Allow-Origin value for `origin`, if it is allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin {
            return Some(star());
        }
        let o = origin.as_bytes();
        self.origins
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(o))
            .then(|| origin.clone())
    }
}

/// The method a CORS preflight asks about, if `req` is one.
pub fn preflight_method<B>(req: &Request<B>) -> Option<Method> {
    if req.method() != Method::OPTIONS || !req.headers().contains_key(ORIGIN) {
        return None;
    }
    let m = req.headers().get(ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(m.as_bytes()).ok()
}

/// Answers a preflight (`method`: what it asks about) on a route with
/// `policy`: 204 with the allow headers, or 403.
pub fn preflight<B>(
    policy: &CorsPolicy,
    req: &Request<B>,
    method: &Method,
) -> Result<Response<ProxyBody>, ProxyError> {
    let h = req.headers();
    let allow_origin = h
        .get(ORIGIN)
        .and_then(|o| policy.allow_origin(o))
        .ok_or(ProxyError::CorsRejected)?;
    if !policy.methods.contains(method) {
        return Err(ProxyError::CorsRejected);
    }
    for value in h.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
        let value = value.to_str().map_err(|_| ProxyError::CorsRejected)?;
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !policy
                .headers
                .iter()
                .any(|a| a.as_str().eq_ignore_ascii_case(name))
            {
                return Err(ProxyError::CorsRejected);
            }
        }
    }
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let out = r.headers_mut();
    out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    out.insert(ACCESS_CONTROL_ALLOW_METHODS, policy.allow_methods.clone());
    if let Some(v) = &policy.allow_headers {
        out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
    }
    out.insert(ACCESS_CONTROL_MAX_AGE, policy.max_age.clone());
    if policy.credentials {
        out.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, header_true());
    }
    out.insert(VARY, vary_origin());
    Ok(r)
}

/// What the finish phase owes a request (not a preflight) on a route with a
/// CORS policy: the Access-Control-Allow-Origin value when its origin is
/// allowed.
pub struct Pending {
    allow_origin: Option<HeaderValue>,
}

/// The cors phase of a request that is not a preflight.
pub fn actual<B>(policy: &CorsPolicy, req: &Request<B>) -> Pending {
    Pending {
        allow_origin: req
            .headers()
            .get(ORIGIN)
            .and_then(|o| policy.allow_origin(o)),
    }
}

impl Pending {
    /// Sets the response's CORS headers (see the module docs).
    pub fn finish(self, policy: &CorsPolicy, h: &mut HeaderMap) {
        match self.allow_origin {
            Some(origin) => {
                h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                if policy.credentials {
                    h.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, header_true());
                } else {
                    h.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
                }
                match &policy.expose_headers {
                    Some(v) => {
                        h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
                    }
                    None => {
                        h.remove(ACCESS_CONTROL_EXPOSE_HEADERS);
                    }
                }
            }
            None => {
                for n in [
                    ACCESS_CONTROL_ALLOW_ORIGIN,
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    ACCESS_CONTROL_EXPOSE_HEADERS,
                    ACCESS_CONTROL_ALLOW_METHODS,
                    ACCESS_CONTROL_ALLOW_HEADERS,
                    ACCESS_CONTROL_MAX_AGE,
                ] {
                    h.remove(n);
                }
            }
        }
        add_vary_origin(h);
    }
}

/// Adds `Vary: Origin` unless the response already varies on it (or on `*`).
fn add_vary_origin(h: &mut HeaderMap) {
    let covered = h.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.eq_ignore_ascii_case("origin"))
        })
    });
    if !covered {
        h.append(VARY, vary_origin());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn policy(toml_table: &str) -> CorsPolicy {
        let text =
            format!("[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[cors.p]\n{toml_table}\n");
        let lc = crate::config::parse(Path::new("/p.toml"), text).unwrap();
        CorsPolicy::build(&lc, "p", &lc.config.cors["p"]).unwrap()
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn defaults_and_preflight_answer() {
        let p =
            policy("allow_origins = [\"https://App.example.com\"]\nallow_headers = [\"X-Token\"]");
        let r = req(
            "OPTIONS",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-token"),
            ],
        );
        let m = preflight_method(&r).unwrap();
        let resp = preflight(&p, &r, &m).unwrap();
        assert_eq!(resp.status(), 204);
        let h = resp.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD, POST");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "X-Token");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert!(h.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        assert_eq!(h[VARY], "Origin");
    }

    #[test]
    fn preflight_denials() {
        let p = policy("allow_origins = [\"https://a.example\"]");
        let deny = |hs: &[(&str, &str)]| {
            let r = req("OPTIONS", hs);
            let m = preflight_method(&r).unwrap();
            match preflight(&p, &r, &m) {
                Err(e) => e,
                Ok(resp) => panic!("allowed: {:?}", resp.headers()),
            }
        };
        let o = ("origin", "https://a.example");
        assert_eq!(
            deny(&[
                ("origin", "https://b.example"),
                ("access-control-request-method", "GET")
            ]),
            ProxyError::CorsRejected
        );
        assert_eq!(
            deny(&[o, ("access-control-request-method", "DELETE")]),
            ProxyError::CorsRejected
        );
        assert_eq!(
            deny(&[
                o,
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-a")
            ]),
            ProxyError::CorsRejected
        );
    }

    #[test]
    fn not_a_preflight() {
        assert!(preflight_method(&req("OPTIONS", &[("origin", "https://a")])).is_none());
        assert!(preflight_method(&req(
            "GET",
            &[
                ("origin", "https://a"),
                ("access-control-request-method", "GET")
            ]
        ))
        .is_none());
    }

    #[test]
    fn actual_requests() {
        let p = policy("allow_origins = [\"*\"]\nexpose_headers = [\"x-id\"]");
        let mut h = HeaderMap::new();
        actual(&p, &req("GET", &[("origin", "https://any.example")])).finish(&p, &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "x-id");
        assert_eq!(h[VARY], "Origin");

        let p = policy("allow_origins = [\"https://a.example\"]\nallow_credentials = true");
        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, star());
        h.insert(VARY, HeaderValue::from_static("accept-encoding, origin"));
        actual(&p, &req("GET", &[("origin", "https://evil.example")])).finish(&p, &mut h);
        assert!(h.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(h.get_all(VARY).iter().count(), 1);

        let mut h = HeaderMap::new();
        actual(&p, &req("GET", &[("origin", "https://a.example")])).finish(&p, &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    }
}
