//! Edge rules for the request head, from the attacker's side: exact bytes
//! on the wire, and what the upstream received (a raw TCP backend that
//! records the request heads it got, as bytes, before any parser could
//! tidy them).
//!
//! Paths are normalised before routing and forwarding; encoded separators,
//! NULs and climbs above the root are 400; methods are case-sensitive; only
//! WebSocket upgrades are tunnelled; the client's Connection header cannot
//! remove a header portico sets; claim headers cannot be sent by a client
//! in any spelling; several X-Forwarded-For lines make one list.

mod support;

use jsonwebtoken::EncodingKey;
use std::net::SocketAddr;
use support::jwt::*;
use support::raw::*;
use support::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The answer of an h2c-capable server to an upgrade request (then HTTP/2
/// would follow, so the raw backend closes).
fn h2c_upgrade(head: &str) -> Option<(&'static str, bool)> {
    header_values(head, "upgrade")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("h2c"))
        .then_some((
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            true,
        ))
}

async fn get(addr: SocketAddr, target: &str, extra: &str) -> (u16, String, String) {
    exchange(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").as_bytes(),
    )
    .await
}

fn token(sub: &str) -> String {
    mint_with(
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
        None,
        &claims(sub),
    )
}

/// Routes: `/admin/` behind a JWT policy that forwards `sub` as x-user-id
/// (upstream "admin"), `/m/` for POST only, `/open/` without auth, and a
/// catch-all `/` (upstream "all").
async fn start() -> (SocketAddr, Portico, RawBackend, RawBackend) {
    let admin = RawBackend::start_with("admin", h2c_upgrade).await;
    let all = RawBackend::start_with("all", h2c_upgrade).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "secret", SECRET);
    let (addr, l) = listener_toml("web", "");
    let config = format!(
        r#"[server]
access_log = "off"
{l}
[auth.jwt]
type = "jwt"
algorithms = ["HS256"]
secret_file = "secret"
forward_claims = {{ sub = "x-user-id" }}

[upstream.admin]
servers = ["{}"]

[upstream.all]
servers = ["{}"]

[[route]]
name = "admin"
match.path_prefix = "/admin/"
upstream = "admin"
auth = "jwt"

[[route]]
name = "post-only"
match.path_prefix = "/m/"
match.methods = ["POST"]
upstream = "all"

[[route]]
name = "open"
match.path_prefix = "/open/"
upstream = "all"

[[route]]
name = "all"
match.path_prefix = "/"
upstream = "all"
"#,
        admin.addr, all.addr
    );
    let p = Portico::start_in(dir, &config);
    (addr, p, admin, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_routing_and_forwarding() {
    let (addr, _p, admin, all) = start().await;

    // Spellings of /admin/x: each must meet the admin route's auth, never
    // reach the catch-all.
    for target in [
        "/%61dmin/x",
        "//admin/x",
        "/./admin/x",
        "/static/../admin/x",
    ] {
        let (status, head, _) = get(addr, target, "").await;
        assert_eq!(status, 401, "{target}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{target}: {head}"
        );
    }
    assert_eq!(all.count(), 0, "the catch-all saw {:?}", all.heads());
    assert_eq!(admin.count(), 0);

    // With a token, the upstream gets the normalised path and the query
    // exactly as sent.
    let auth = format!("Authorization: Bearer {}\r\n", token("alice"));
    let (status, _, body) = get(addr, "/static/..//%61dmin/./x/?q=%2e%2E/../a", &auth).await;
    assert_eq!((status, body.as_str()), (200, "admin"));
    assert_eq!(
        request_line(&admin.last()),
        "GET /admin/x/?q=%2e%2E/../a HTTP/1.1"
    );
    // Other escapes are kept (hex in upper case).
    let (status, _, _) = get(addr, "/open/caf%c3%a9%20x", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        request_line(&all.last()),
        "GET /open/caf%C3%A9%20x HTTP/1.1"
    );
    // A normal path goes as it is.
    let (status, _, _) = get(addr, "/open/a.b/%7Bc%7D", "").await;
    assert_eq!(status, 200);
    assert_eq!(request_line(&all.last()), "GET /open/a.b/%7Bc%7D HTTP/1.1");
    let seen = all.count();

    // Refused outright: nothing reaches any upstream.
    for target in [
        "/%2e%2e/x",
        "/%2E%2E/admin/x",
        "/a/%2F/b",
        "/admin%2fx",
        "/a%5cb",
        "/a%5Cb",
        "/a%00b",
        "/../x",
        "/open/../../x",
        "/a\\b",
        "/open/%zz",
    ] {
        let (status, head, _) = get(addr, target, &auth).await;
        assert_eq!(status, 400, "{target}: {head}");
    }
    assert_eq!(all.count(), seen, "{:?}", all.heads());
    assert_eq!(admin.count(), 1, "{:?}", admin.heads());

    // OPTIONS * has no path to normalise: it is not a 400.
    let (status, head, _) = exchange(addr, b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_ne!(status, 400, "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_normalised_path_goes_upstream_with_strip_prefix_and_over_http2() {
    let h1 = RawBackend::start_with("h1", h2c_upgrade).await;
    let h2 = Backend::start("h2").await;
    let (addr, l) = listener_toml("web", "");
    let _p = Portico::start(&format!(
        r#"[server]
access_log = "off"
{l}
[upstream.h1]
servers = ["{}"]

[upstream.h2]
servers = ["{}"]
protocol = "http2"

[[route]]
name = "h1"
match.path_prefix = "/v1/"
strip_prefix = true
upstream = "h1"

[[route]]
name = "h2"
match.path_prefix = "/v2/"
strip_prefix = true
upstream = "h2"
"#,
        h1.addr, h2.addr
    ));
    let (status, _, _) = get(addr, "/x/../v1//%61b/./c?q=%2e", "").await;
    assert_eq!(status, 200);
    assert_eq!(request_line(&h1.last()), "GET /ab/c?q=%2e HTTP/1.1");
    let (status, _, _) = get(addr, "/%76%32/a/../%62", "").await;
    assert_eq!(status, 200);
    let seen = h2.last_seen();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert!(seen.uri.ends_with("/b"), "{seen:?}");
    assert!(
        !seen.uri.contains("v2") && !seen.uri.contains(".."),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_are_case_sensitive() {
    let (addr, _p, _admin, all) = start().await;
    for m in ["post", "Post", "pOST"] {
        let (status, head, _) = exchange(
            addr,
            format!("{m} /m/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{m}: {head}");
    }
    // `get` would reach the catch-all as an extension method, which an
    // upstream folding case would serve as GET: refused too.
    let (status, _, _) = exchange(addr, b"get /open/x HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(status, 400);
    assert_eq!(all.count(), 0, "{:?}", all.heads());

    let (status, _, _) = exchange(
        addr,
        b"POST /m/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(request_line(&all.last()), "POST /m/x HTTP/1.1");
}

/// One request over prior-knowledge h2c with the h2 crate (which sends
/// `:path` exactly as given): status and body.
async fn h2_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut req = http::Request::builder().uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (resp, _) = send.send_request(req.body(()).unwrap(), true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_route_on_the_normalised_path() {
    let (addr, _p, admin, all) = start().await;
    for path in [
        "/%61dmin/x",
        "//admin/x",
        "/./admin/x",
        "/static/../admin/x",
    ] {
        assert_eq!(h2_get(addr, path, None).await.0, 401, "{path}");
    }
    for path in ["/%2e%2e/x", "/a/%2F/b", "/a%00b", "/../x"] {
        assert_eq!(h2_get(addr, path, None).await.0, 400, "{path}");
    }
    assert_eq!(all.count(), 0, "{:?}", all.heads());
    let t = token("alice");
    assert_eq!(
        h2_get(addr, "/static/../%61dmin//x?a=1", Some(&t)).await,
        (200, "admin".to_string())
    );
    assert_eq!(request_line(&admin.last()), "GET /admin/x?a=1 HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_forwarded_as_a_plain_request() {
    let (addr, _p, _admin, all) = start().await;
    let (status, head, body) = exchange(
        addr,
        b"GET /open/x HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "all"), "{head}");
    let seen = all.last().to_ascii_lowercase();
    assert!(!seen.contains("upgrade"), "{seen}");
    assert!(!seen.contains("http2-settings"), "{seen}");
    assert!(header_values(&seen, "connection").is_empty(), "{seen}");

    // HTTP2-Settings is removed even when Connection does not name it.
    let (status, _, _) = exchange(
        addr,
        b"GET /open/y HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
          Upgrade: H2C\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let seen = all.last().to_ascii_lowercase();
    assert!(
        !seen.contains("upgrade") && !seen.contains("http2-settings"),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_connection_header_cannot_remove_what_portico_sets() {
    let (addr, _p, admin, _all) = start().await;
    let t = token("alice");
    let (status, head, _) = get(
        addr,
        "/admin/x",
        &format!(
            "Connection: x-user-id, x-request-id, x-forwarded-for, authorization\r\n\
             Authorization: Bearer {t}\r\nX-User-Id: mallory\r\nX-Forwarded-For: 10.9.9.9\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let seen = admin.last();
    assert_eq!(header_values(&seen, "x-user-id"), ["alice"], "{seen}");
    assert_eq!(
        header_values(&seen, "authorization"),
        [format!("Bearer {t}")],
        "{seen}"
    );
    let id = header_values(&seen, "x-request-id");
    assert_eq!(id.len(), 1, "{seen}");
    assert_eq!(header_values(&head, "x-request-id"), id, "{head}");
    let xff = header_values(&seen, "x-forwarded-for");
    assert_eq!(xff.len(), 1, "{seen}");
    assert!(xff[0].ends_with("127.0.0.1"), "{seen}");
    assert!(header_values(&seen, "connection").is_empty(), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_headers_cannot_be_sent_by_the_client_in_any_spelling() {
    let (addr, _p, admin, all) = start().await;
    let fakes = "x-user-id: admin\r\nx_user_id: admin\r\nX-User_Id: admin\r\nX_USER-ID: admin\r\n";
    let is_claim = |l: &str| {
        l.split_once(':')
            .is_some_and(|(n, _)| n.trim().to_ascii_lowercase().replace('_', "-") == "x-user-id")
    };

    // Routes without auth.
    for path in ["/open/x", "/x"] {
        let (status, head, _) = get(addr, path, fakes).await;
        assert_eq!(status, 200, "{head}");
        let seen = all.last();
        assert!(!seen.split("\r\n").any(is_claim), "{path}: {seen}");
        assert!(request_line(&seen).contains(path));
    }

    // The auth route: only portico's value, once.
    let (status, head, _) = get(
        addr,
        "/admin/x",
        &format!("{fakes}Authorization: Bearer {}\r\n", token("alice")),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let seen = admin.last();
    let claims: Vec<&str> = seen.split("\r\n").filter(|l| is_claim(l)).collect();
    assert_eq!(claims.len(), 1, "{seen}");
    assert_eq!(header_values(&seen, "x-user-id"), ["alice"], "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_x_forwarded_for_lines_are_one_list() {
    let (addr, _p, _admin, all) = start().await;
    let (status, _, _) = get(
        addr,
        "/open/x",
        "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let seen = all.last();
    assert_eq!(
        header_values(&seen, "x-forwarded-for"),
        ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"],
        "{seen}"
    );
}
