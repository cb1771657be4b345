//! An attacker's review of the edge rules: ways an upstream could read a
//! request differently from portico (Host spellings, path parameters,
//! overlong UTF-8), each from the attacker's side: the exact bytes on the
//! wire, and what a raw TCP upstream received.

mod support;

use jsonwebtoken::EncodingKey;
use std::net::SocketAddr;
use std::time::Duration;
use support::jwt::*;
use support::raw::*;
use support::*;
use tokio::io::AsyncWriteExt;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A status the client picks (as some test and health endpoints allow),
/// answered as an HTTP server that stays HTTP: a bare 101 without the
/// WebSocket handshake, after which it goes on reading requests.
fn reflect_101(head: &str) -> Option<(&'static str, bool)> {
    request_line(head).contains("status=101").then_some((
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        false,
    ))
}

fn token(sub: &str) -> String {
    mint_with(
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
        None,
        &claims(sub),
    )
}

/// Routes: host `admin.example.com` behind a JWT policy (upstream
/// "admin"), `/admin/` behind the same policy (upstream "admin"), and a
/// catch-all `/` without auth (upstream "all").
async fn start() -> (SocketAddr, Portico, RawBackend, RawBackend) {
    let admin = RawBackend::start_with("admin", reflect_101).await;
    let all = RawBackend::start_with("all", reflect_101).await;
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
name = "admin-host"
match.host = "admin.example.com"
upstream = "admin"
auth = "jwt"

[[route]]
name = "admin"
match.path_prefix = "/admin/"
upstream = "admin"
auth = "jwt"

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

async fn send(addr: SocketAddr, head: &str) -> (u16, String, String) {
    exchange(addr, head.as_bytes()).await
}

/// One request over prior-knowledge h2c with the h2 crate, with
/// `:authority` exactly as given: the status.
async fn h2_status(addr: SocketAddr, authority: &str, token: Option<&str>) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut req = http::Request::builder().uri(format!("http://{authority}/"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (resp, _) = send.send_request(req.body(()).unwrap(), true).unwrap();
    resp.await.unwrap().status().as_u16()
}

/// A Host an upstream reads as `admin.example.com` (a trailing dot, or
/// through a URL parser: `evil@admin.example.com`) must never reach the
/// catch-all route that has no auth: the trailing dot routes as the host
/// without it, and a Host (or authority) that is not `host[:port]` is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_spellings_cannot_leave_the_authenticated_host() {
    let (addr, _p, admin, all) = start().await;

    for host in [
        "admin.example.com.",
        "admin.example.com.:80",
        "ADMIN.example.com.",
    ] {
        let (status, head, _) =
            send(addr, &format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
        assert_eq!(status, 401, "{host}: {head}");
    }
    let (status, head, _) = send(
        addr,
        "GET http://admin.example.com./ HTTP/1.1\r\nHost: public.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401, "{head}");
    assert_eq!(h2_status(addr, "admin.example.com.", None).await, 401);

    for host in [
        "evil@admin.example.com",
        "admin.example.com, public.example.com",
        "public.example.com/admin.example.com",
        "admin.example.com:80:80",
        "admin%2eexample.com",
        "admin..example.com",
    ] {
        let (status, head, _) =
            send(addr, &format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
        assert_eq!(status, 400, "{host}: {head}");
    }
    let (status, head, _) = send(
        addr,
        "GET http://evil@admin.example.com/ HTTP/1.1\r\nHost: evil@admin.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{head}");
    assert_eq!(h2_status(addr, "evil@admin.example.com", None).await, 400);
    assert_eq!(all.count(), 0, "the catch-all saw {:?}", all.heads());
    assert_eq!(admin.count(), 0, "{:?}", admin.heads());

    // With a token the trailing-dot Host is served, passed on as sent.
    let auth = format!("Authorization: Bearer {}\r\n", token("alice"));
    let (status, _, body) = send(
        addr,
        &format!("GET /x HTTP/1.1\r\nHost: admin.example.com.\r\n{auth}\r\n"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "admin"));
    assert_eq!(
        header_values(&admin.last(), "host"),
        vec!["admin.example.com.".to_string()]
    );
    // An ordinary Host with a port still routes by its name.
    let (status, _, body) = send(
        addr,
        "GET /x HTTP/1.1\r\nHost: public.example.com:8080\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "all"));
}

/// Upstreams such as Tomcat drop path parameters (`;...` in a segment):
/// `/admin;x/y` is `/admin/y` to them and `/public/..;/admin/x` is
/// `/admin/x`. Such a path must not reach a route other than the one the
/// path without parameters reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_parameters_cannot_move_a_request_to_another_route() {
    let (addr, _p, admin, all) = start().await;
    for target in [
        "/admin;x/y",
        "/admin;/y",
        "/public/..;/admin/x",
        "/public/.%2e;x/admin/x",
        "/%2e%2e;/admin/x",
    ] {
        let (status, head, _) =
            send(addr, &format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_eq!(status, 400, "{target}: {head}");
    }
    assert_eq!(all.count(), 0, "the catch-all saw {:?}", all.heads());
    assert_eq!(admin.count(), 0);

    // Parameters that do not change the route go upstream as sent.
    let (status, _, body) = send(addr, "GET /public;v=1/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, "all"));
    assert_eq!(request_line(&all.last()), "GET /public;v=1/x HTTP/1.1");
    let auth = format!("Authorization: Bearer {}\r\n", token("alice"));
    let (status, _, body) = send(
        addr,
        &format!("GET /admin/x;jsessionid=1 HTTP/1.1\r\nHost: x\r\n{auth}\r\n"),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "admin"));
    assert_eq!(
        request_line(&admin.last()),
        "GET /admin/x;jsessionid=1 HTTP/1.1"
    );
}

/// An overlong UTF-8 encoding of `.` or `/` (`%C0%AE`, `%E0%80%AE`,
/// `%C0%AF`) is a dot to a lax decoder: 400, never forwarded. Valid
/// multi-byte escapes pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_utf8_in_the_path_is_refused() {
    let (addr, _p, admin, all) = start().await;
    for target in [
        "/static/%C0%AE%C0%AE/admin/x",
        "/static/%c0%ae%c0%ae/admin/x",
        "/static/%E0%80%AE%E0%80%AE/admin/x",
        "/static%C0%AFadmin/x",
    ] {
        let (status, head, _) =
            send(addr, &format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        assert_eq!(status, 400, "{target}: {head}");
    }
    assert_eq!(all.count(), 0, "the catch-all saw {:?}", all.heads());
    assert_eq!(admin.count(), 0);
    let (status, _, body) = send(addr, "GET /caf%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, "all"));
    assert_eq!(request_line(&all.last()), "GET /caf%C3%A9 HTTP/1.1");
}

/// An upstream that maps `_` to `-` in header names (CGI, WSGI, NGINX with
/// underscores_in_headers) reads `X_Forwarded_Host` as x-forwarded-host: a
/// client must not pass such a spelling of a header portico sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_of_the_headers_portico_sets_are_removed() {
    let (addr, _p, _admin, all) = start().await;
    let (status, head, _) = send(
        addr,
        "GET /x HTTP/1.1\r\nHost: public.example.com\r\nX_Forwarded_Host: admin.example.com\r\n\
         X_Forwarded_Proto: https\r\nX-Forwarded_For: 10.9.9.9\r\nx_request_id: forged\r\n\
         X_Other: kept\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let up = all.last();
    let names: Vec<String> = up
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.contains('_')).collect::<Vec<_>>(),
        vec!["x_other"],
        "{up}"
    );
    assert_eq!(
        header_values(&up, "x-forwarded-host"),
        vec!["public.example.com".to_string()]
    );
    assert_eq!(
        header_values(&up, "x-forwarded-proto"),
        vec!["http".to_string()]
    );
    assert_eq!(
        header_values(&up, "x-forwarded-for"),
        vec!["127.0.0.1".to_string()]
    );
}

/// A 101 that is not a WebSocket handshake (an endpoint that answers the
/// status a client asks for) must not open a tunnel: through it the client
/// would talk to the upstream's HTTP parser directly, past routing and auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_without_the_websocket_handshake_opens_no_tunnel() {
    let (addr, _p, admin, all) = start().await;
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"GET /reflect?status=101 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(20), read_head(&mut c, &mut buf))
        .await
        .unwrap()
        .expect("an answer to the upgrade");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    // The smuggled request: if a tunnel were open it would go straight to
    // the catch-all's upstream; otherwise portico reads it (and asks for
    // a token) or has closed the connection.
    let _ = c
        .write_all(b"GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let body = content_length(&head);
    while buf.len() < end + body && fill(&mut c, &mut buf).await {}
    buf.drain(..(end + body).min(buf.len()));
    let second = tokio::time::timeout(Duration::from_secs(20), read_head(&mut c, &mut buf)).await;
    assert!(
        !all.heads().iter().any(|h| h.contains("/admin/secret")),
        "the smuggled request reached the upstream: {:?}",
        all.heads()
    );
    assert_eq!(parse_status(&head), Some(502), "{head}");
    if let Ok(Some(end)) = second {
        let h = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert_eq!(parse_status(&h), Some(401), "{h}");
    }
    assert_eq!(all.count(), 1, "{:?}", all.heads());
    assert_eq!(admin.count(), 0);
}
