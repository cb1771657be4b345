//! Per-route header rules (request_headers, response_headers), `respond`
//! headers and Location templates, and what `portico check` says of their
//! misuse and of bad `tls.certs` pairs.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use support::*;

fn route_config(listener: &str, routes: &str, backend: &Backend) -> String {
    format!(
        "{listener}\n{routes}\n{}",
        upstream_toml("app", &[backend], "")
    )
}

/// The value of header `name` in a raw HTTP/1.1 answer (first occurrence).
fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.split("\r\n\r\n").next()?.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn count_header(raw: &str, name: &str) -> usize {
    raw.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .count()
}

fn exchange(addr: SocketAddr, req: &str) -> String {
    raw_exchange(addr, req.as_bytes(), Duration::from_secs(10)).expect("an answer")
}

const ROUTES: &str = r#"
[[route]]
name = "app"
upstream = "app"
request_headers = { set = { "x-env" = "prod", "user-agent" = "portico-edge" }, remove = ["x-secret", "x-Drop"] }
response_headers = { set = { "strict-transport-security" = "max-age=63072000" }, remove = ["x-backend"] }

[[route]]
name = "down"
match.path_prefix = "/down"
upstream = "dead"
response_headers = { set = { "strict-transport-security" = "max-age=1" } }

[[route]]
name = "redirect"
match.host = "plain.test"
respond = { status = 308, location = "https://{host}{path_and_query}", headers = { "cache-control" = "no-store" } }
response_headers = { set = { "x-frame-options" = "DENY" } }

[[route]]
name = "moved"
match.host = "old.test"
respond = { status = 301, location = "https://new.test:8443{path}" }

[upstream.dead]
servers = ["127.0.0.1:1"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_rules_and_redirects() {
    let b = Backend::start("app").await;
    let (addr, l) = listener_toml("web", "");
    let p = Portico::start(&route_config(&l, ROUTES, &b));

    // The client's copies are replaced or removed; the upstream sees the rules.
    let raw = exchange(
        addr,
        "GET /x HTTP/1.1\r\nHost: app.test\r\nX-Env: client\r\nx-env: again\r\nX-Secret: s\r\nx-drop: d\r\nUser-Agent: curl\r\nX-Kept: k\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let seen = b.last_seen();
    let values = |n: &str| -> Vec<String> {
        seen.headers
            .get_all(n)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(values("x-env"), ["prod"]);
    assert_eq!(values("user-agent"), ["portico-edge"]);
    assert!(values("x-secret").is_empty());
    assert!(values("x-drop").is_empty());
    assert_eq!(values("x-kept"), ["k"]);
    // Portico's own headers are still there.
    assert_eq!(values("x-forwarded-host"), ["app.test"]);
    assert_eq!(values("x-request-id").len(), 1);

    // The answer: set and removed.
    assert_eq!(
        header(&raw, "strict-transport-security"),
        Some("max-age=63072000")
    );
    assert_eq!(count_header(&raw, "x-backend"), 0);
    assert_eq!(count_header(&raw, "x-request-id"), 1);

    // The proxy's own error on a route carries the route's response headers.
    let raw = exchange(
        addr,
        "GET /down HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 502"), "{raw}");
    assert_eq!(header(&raw, "strict-transport-security"), Some("max-age=1"));

    // One route redirects HTTP to HTTPS: host without port, path and query.
    let raw = exchange(
        addr,
        "GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: plain.test:8080\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 308"), "{raw}");
    assert_eq!(
        header(&raw, "location"),
        Some("https://plain.test/a/b?x=1&y=%20")
    );
    assert_eq!(header(&raw, "cache-control"), Some("no-store"));
    assert_eq!(header(&raw, "x-frame-options"), Some("DENY"));
    assert_eq!(count_header(&raw, "x-request-id"), 1);
    // The path is the normalised one (what routing saw), the query kept.
    let raw = exchange(
        addr,
        "GET /a/../c//d HTTP/1.1\r\nHost: old.test\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 301"), "{raw}");
    assert_eq!(header(&raw, "location"), Some("https://new.test:8443/c/d"));
    drop(p);
}

fn check(dir: &Path, text: &str) -> std::process::Output {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "--config", path.to_str().unwrap()])
        .current_dir(dir)
        .env_remove("PORTICO_CONFIG")
        .output()
        .unwrap()
}

/// `LINE:COL` (1-based) of the first `needle` in `text`.
fn at(text: &str, needle: &str) -> String {
    let off = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in config"));
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{line}:{col}")
}

const BASE: &str = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:18080"
tls.cert = "certs/server.crt"
tls.key = "certs/server.key"
LISTENER

[[route]]
name = "all"
upstream = "app"
ROUTE

[upstream.app]
servers = ["127.0.0.1:9001"]

[auth.users]
type = "jwt"
algorithms = ["HS256"]
secret_file = "certs/server.key"
forward_claims = { sub = "x-user-id" }
"#;

#[test]
fn check_reports_each_misuse_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    Pki::generate(dir.path());
    let path = dir.path().join("proxy.toml");
    let path = path.to_str().unwrap();
    let ok = BASE.replace("LISTENER", "").replace("ROUTE", "");
    let o = check(dir.path(), &ok);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // (what, listener lines, route lines, where the error points, message part)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "a cert without a key",
            r#"tls.certs = [{ cert = "certs/other.crt" }]"#,
            "",
            "{ cert",
            "key",
        ),
        (
            "an unreadable pair",
            r#"tls.certs = [{ cert = "certs/nope.crt", key = "certs/other.key" }]"#,
            "",
            "\"certs/nope.crt",
            "cannot read",
        ),
        (
            "a key that does not match its cert",
            r#"tls.certs = [{ cert = "certs/other.crt", key = "certs/server.key" }]"#,
            "",
            "\"certs/server.key\" }",
            "does not fit",
        ),
        (
            "an unknown placeholder",
            "",
            r#"respond = { status = 308, location = "https://{hots}{path}" }"#,
            "{ status = 308",
            "unknown placeholder \"{hots}\"",
        ),
        (
            "a bad header name",
            "",
            r#"request_headers = { set = { "x bad" = "1" } }"#,
            "{ \"x bad\"",
            "not a valid header name",
        ),
        (
            "a value with CR LF",
            "",
            r#"response_headers = { set = { "x-a" = "1\r\nx-b: 2" } }"#,
            "{ \"x-a\"",
            "not a valid header value",
        ),
        (
            "a hop-by-hop header",
            "",
            r#"request_headers = { remove = ["x-a", "Transfer-Encoding"] }"#,
            "\"Transfer-Encoding",
            "hop-by-hop",
        ),
        (
            "a header portico sets upstream",
            "",
            r#"request_headers = { set = { "x-forwarded-for" = "1.2.3.4" } }"#,
            "{ \"x-forwarded-for\"",
            "set by portico",
        ),
        (
            "a claim header, in another spelling",
            "",
            r#"request_headers = { set = { "X_User_Id" = "admin" } }"#,
            "{ \"X_User_Id\"",
            "claim header",
        ),
        (
            "the request id header",
            "",
            r#"response_headers = { remove = ["x-request-id"] }"#,
            "\"x-request-id",
            "request id",
        ),
    ];
    for (what, listener, route, needle, msg) in cases {
        let route = if route.contains("respond") {
            route.to_string()
        } else {
            format!("{route}\n")
        };
        let mut text = BASE.replace("LISTENER", listener).replace("ROUTE", &route);
        if route.contains("respond") {
            text = text.replace("upstream = \"app\"\nrespond", "respond");
        }
        let o = check(dir.path(), &text);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {e}");
        let want = format!("{path}:{}: ", at(&text, needle));
        assert!(e.starts_with(&want), "{what}: expected {want}..., got {e}");
        assert!(e.contains(msg), "{what}: expected \"{msg}\" in {e}");
    }
}
