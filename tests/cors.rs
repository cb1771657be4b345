//! CORS at the edge over real sockets: preflights answered or refused
//! without reaching the upstream, the headers of actual requests,
//! credentials and "*", routes without a policy, and config errors.

mod support;

use reqwest::{Method, Response};
use std::net::SocketAddr;
use support::prom::{check, position};
use support::*;

const APP: &str = "https://app.example";
const OTHER: &str = "https://evil.example";

struct Setup {
    _p: Portico,
    backend: Backend,
    addr: SocketAddr,
}

async fn setup() -> Setup {
    let backend = Backend::start("a").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let (addr, l) = listener_toml("web", "");
    let cfg = format!(
        r#"{l}
[cors.web]
allow_origins = ["{APP}", "http://localhost:3000"]
allow_headers = ["X-Token", "content-type"]
expose_headers = ["x-backend", "x-request-id"]
max_age = "5m"

[cors.creds]
allow_origins = ["{APP}"]
allow_methods = ["GET", "PUT"]
allow_credentials = true

[cors.any]
allow_origins = ["*"]
allow_methods = ["GET", "PUT"]

[[route]]
name = "web"
match.path_prefix = "/web/"
upstream = "app"
cors = "web"

[[route]]
name = "post-only"
match.path_prefix = "/submit"
match.methods = ["POST"]
upstream = "app"
cors = "web"

[[route]]
name = "creds"
match.path_prefix = "/creds/"
upstream = "app"
cors = "creds"

[[route]]
name = "any"
match.path_prefix = "/any/"
upstream = "app"
cors = "any"

[[route]]
name = "fixed"
match.path_prefix = "/fixed"
respond = {{ status = 200, body = "fixed" }}
cors = "web"

[[route]]
name = "down"
match.path_prefix = "/down/"
upstream = "gone"
cors = "web"

[[route]]
name = "plain"
match.path_prefix = "/plain/"
upstream = "app"

{}
[upstream.gone]
servers = ["{dead}"]
"#,
        upstream_toml("app", &[&backend], "")
    );
    Setup {
        _p: Portico::start(&cfg),
        backend,
        addr,
    }
}

async fn send(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut r = client().request(method, format!("http://{addr}{path}"));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

async fn preflight(
    addr: SocketAddr,
    path: &str,
    origin: &str,
    method: &str,
    headers: Option<&str>,
) -> Response {
    let mut h = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if let Some(x) = headers {
        h.push(("access-control-request-headers", x));
    }
    send(addr, Method::OPTIONS, path, &h).await
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

fn varies_on_origin(r: &Response) -> bool {
    r.headers()
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().to_ascii_lowercase().contains("origin"))
}

const CORS_HEADERS: [&str; 6] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
];

fn assert_no_cors_headers(r: &Response) {
    for h in CORS_HEADERS {
        assert!(
            r.headers().get(h).is_none(),
            "unexpected {h}: {:?}",
            r.headers()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_is_answered_at_the_edge() {
    let s = setup().await;
    let r = preflight(
        s.addr,
        "/web/items",
        APP,
        "POST",
        Some("X-Token, Content-Type"),
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("GET, HEAD, POST")
    );
    assert_eq!(
        header(&r, "access-control-allow-headers"),
        Some("X-Token, content-type")
    );
    assert_eq!(header(&r, "access-control-max-age"), Some("300"));
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
    assert!(varies_on_origin(&r));
    assert!(r.headers().contains_key("x-request-id"));

    // Origins compare case-insensitively; the answer echoes the request's.
    let r = preflight(s.addr, "/web/items", "http://LOCALHOST:3000", "GET", None).await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("http://LOCALHOST:3000")
    );

    // A route that only matches POST answers the preflight for POST.
    let r = preflight(s.addr, "/submit", APP, "POST", None).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));

    assert_eq!(
        s.backend.request_count(),
        0,
        "no preflight reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallowed_preflights_get_403() {
    let s = setup().await;
    for (origin, method, headers, why) in [
        (OTHER, "GET", None, "origin"),
        ("null", "GET", None, "null origin"),
        ("https://app.example.evil", "GET", None, "origin suffix"),
        (APP, "DELETE", None, "method"),
        (APP, "POST", Some("x-token, x-other"), "header"),
    ] {
        let r = preflight(s.addr, "/web/items", origin, method, headers).await;
        assert_eq!(r.status(), 403, "{why}");
        assert_eq!(header(&r, "access-control-allow-origin"), None, "{why}");
    }
    assert_eq!(
        s.backend.request_count(),
        0,
        "no preflight reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actual_requests_get_headers_only_for_allowed_origins() {
    let s = setup().await;
    let r = send(s.addr, Method::GET, "/web/x", &[("origin", APP)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-backend"), Some("a"));
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        header(&r, "access-control-expose-headers"),
        Some("x-backend, x-request-id")
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
    assert!(varies_on_origin(&r));

    // Another origin, or none: served, without CORS headers.
    for h in [vec![("origin", OTHER)], vec![]] {
        let r = send(s.addr, Method::GET, "/web/x", &h).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-backend"), Some("a"));
        assert_no_cors_headers(&r);
        assert!(varies_on_origin(&r));
    }

    // A non-preflight OPTIONS (no Access-Control-Request-Method) is an
    // actual request: forwarded.
    let before = s.backend.request_count();
    let r = send(s.addr, Method::OPTIONS, "/web/x", &[("origin", APP)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(s.backend.request_count(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_answers_carry_cors_headers_too() {
    let s = setup().await;
    let r = send(s.addr, Method::GET, "/down/x", &[("origin", APP)]).await;
    assert_eq!(r.status(), 502);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert!(varies_on_origin(&r));
    let r = send(s.addr, Method::GET, "/fixed", &[("origin", APP)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(r.text().await.unwrap(), "fixed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_echo_the_origin_and_star_never_has_credentials() {
    let s = setup().await;
    let r = send(s.addr, Method::GET, "/creds/x", &[("origin", APP)]).await;
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    let r = preflight(s.addr, "/creds/x", APP, "PUT", None).await;
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&r, "access-control-allow-methods"), Some("GET, PUT"));
    let r = send(s.addr, Method::GET, "/creds/x", &[("origin", OTHER)]).await;
    assert_no_cors_headers(&r);

    // allow_origins = ["*"]: any origin gets "*", never with credentials.
    for origin in [APP, OTHER] {
        let r = send(s.addr, Method::GET, "/any/x", &[("origin", origin)]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&r, "access-control-allow-credentials"), None);
        let r = preflight(s.addr, "/any/x", origin, "PUT", None).await;
        assert_eq!(r.status(), 204);
        assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&r, "access-control-allow-credentials"), None);
    }
    let r = preflight(s.addr, "/any/x", APP, "DELETE", None).await;
    assert_eq!(r.status(), 403, "a method \"*\" does not list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_without_a_policy_pass_preflights_upstream() {
    let s = setup().await;
    let r = preflight(s.addr, "/plain/x", APP, "PUT", Some("x-token")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "a OPTIONS /plain/x");
    let seen = s.backend.last_seen();
    assert_eq!(seen.method, "OPTIONS");
    assert_eq!(seen.headers["origin"], APP);
    assert_eq!(seen.headers["access-control-request-method"], "PUT");
}

#[test]
fn star_with_credentials_and_unknown_policies_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let head = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:18080\"\n";

    let text = format!("{head}[cors.open]\nallow_origins = [\"*\"]\nallow_credentials = true\n");
    let (out, stderr) = check(dir.path(), &text);
    assert_eq!(out.status.code(), Some(1));
    let at = position(&path, &text, "true");
    assert!(
        stderr.starts_with(&at),
        "{stderr:?} should start with {at:?}"
    );
    assert!(stderr.contains("allow_credentials"), "{stderr}");

    let text =
        format!("{head}[[route]]\nname = \"r\"\nrespond = {{ status = 200 }}\ncors = \"nope\"\n");
    let (out, stderr) = check(dir.path(), &text);
    assert_eq!(out.status.code(), Some(1));
    let at = position(&path, &text, "\"nope\"");
    assert!(
        stderr.starts_with(&at),
        "{stderr:?} should start with {at:?}"
    );

    let text = format!("{head}[cors.bad]\nallow_origins = [\"https://a.example/\"]\n");
    let (out, stderr) = check(dir.path(), &text);
    assert_eq!(out.status.code(), Some(1));
    let at = position(&path, &text, "\"https://a.example/\"");
    assert!(
        stderr.starts_with(&at),
        "{stderr:?} should start with {at:?}"
    );

    let text = format!("{head}[cors.typo]\nallow_origin = [\"https://a.example\"]\n");
    let (out, stderr) = check(dir.path(), &text);
    assert_eq!(
        out.status.code(),
        Some(1),
        "unknown keys are errors: {stderr}"
    );

    let text = format!(
        "{head}[cors.ok]\nallow_origins = [\"https://a.example\"]\nallow_credentials = true\n\n[[route]]\nname = \"r\"\nrespond = {{ status = 200 }}\ncors = \"ok\"\n"
    );
    let (out, stderr) = check(dir.path(), &text);
    assert!(out.status.success(), "{stderr}");
}
